"""Which reference encoders each MLM is compared with (issue 17.3), as figures and tables read it.

The config's `pairing:` (imagekv.plan.reference_pairing) maps each MLM to its own encoders before
MLM training (SigLIP for LLaVA-OneVision, CLIP ViT-L/14-336 for LLaVA-NeXT, none for Qwen2.5-VL)
and a note for the footers. The plotting and table rules receive it as JSON (`--option pairing=`).
Without a pairing every reference in the results is compared with every MLM, as before the pairing
existed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

CALIBRATION = ("oracle", "noise")
TOWER = "tower"  # the MLM's own vision tower output, a representation of the MLM (imagekv.plan)


def parse(pairing: str | dict | None) -> dict | None:
    """The pairing as the rules pass it (a JSON string) or as plan.reference_pairing returns it."""
    return json.loads(pairing) if isinstance(pairing, str) else pairing


def references_in(frame: pd.DataFrame) -> list[str]:
    """The reference encoders with rows in a result frame: backbones labelled by their own name."""
    names = frame.loc[frame["model"] == frame["representation"], "model"].unique()
    return sorted(name for name in names if name not in CALIBRATION)


def own_references(model: str, pairing: dict | None, available: Iterable[str]) -> list[str]:
    """The references `model` is compared with, among those `available`."""
    available = list(available)
    if not pairing or model not in pairing:
        return available
    return [name for name in pairing[model]["references"] if name in available]


def notes(pairing: dict | None, models: Iterable[str]) -> tuple[str, ...]:
    """The pairing notes of `models`, for a footer."""
    pairing = pairing or {}
    return tuple(pairing[m]["note"] for m in sorted(set(models)) if m in pairing and pairing[m].get("note"))
