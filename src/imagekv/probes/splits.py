"""The held-out splits of a probe's samples, drawn once from a seed.

Each sample belongs to a unit (its image for T3/T4 queries, so that queries on one image stay
together; the episode, image set, pair or clip otherwise). Units are ranked by a seeded hash of
their id, which depends on nothing but the seed and the id: every model, layer and representation
sees the same split, and rerunning reproduces it. The first `tune` units form the tuning split
(T3/T4 threshold tuning, SPEC T3); the rest alternate between the validation split (layer choice)
and the test split (scored at the chosen layer), so both halves are as equal as the count allows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from imagekv.datasets.schema import CosegSet, KeypointPair, SegEpisode, TextQuery, VideoClip

SPLITS = ("tune", "validation", "test")
DEFAULT_SEED = 0  # [I] probing.split_seed


def unit_id(sample) -> str:
    """The id a sample is split by."""
    for kind, attribute in ((TextQuery, "image_id"), (SegEpisode, "episode_id"), (CosegSet, "set_id"),
                            (KeypointPair, "pair_id"), (VideoClip, "clip_id")):
        if isinstance(sample, kind):
            return getattr(sample, attribute)
    raise TypeError(f"probe splits: no unit id for a {type(sample).__name__} sample")


def split_samples(samples: Sequence, seed: int, tune: int = 0) -> dict[str, list]:
    """{"tune", "validation", "test"} -> the samples of each split, in their input order."""
    units = sorted({unit_id(s) for s in samples}, key=lambda unit: _rank(seed, unit))
    if tune and tune >= len(units):
        raise ValueError(f"probe splits: {tune} tuning units leave none of the {len(units)} to score")
    names = {unit: "tune" if i < tune else SPLITS[1 + (i - tune) % 2] for i, unit in enumerate(units)}
    parts = {name: [] for name in SPLITS}
    for sample in samples:
        parts[names[unit_id(sample)]].append(sample)
    return parts


def _rank(seed: int, unit: str) -> str:
    return hashlib.sha256(f"{seed}:{unit}".encode()).hexdigest()
