"""Pascal-5i few-shot segmentation episodes (T1) from the VOC2012 + SBD layout.

Layout under `root`: `JPEGImages/<id>.jpg`, `<mask_dir>/<id>.png` (class index per pixel, palette
or grey, 255 = void; `SegmentationClassAug` holds the SBD-augmented masks) and
`ImageSets/Segmentation/<split>.txt`. Episodes (query + `shots` supports of one class of the fold,
all from `split`) are drawn once by seed and kept in `episodes/*.json`, so every run and every
model sees the same list.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imagekv.datasets.files import DatasetFileError, read_index_png, read_json, read_lines, require
from imagekv.datasets.schema import VOID, ImageRef, OracleTruth, SegEpisode
from imagekv.io import write_json

VOC_CLASSES = tuple(
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person"
    " pottedplant sheep sofa train tvmonitor".split()
)
CLASSES_PER_FOLD = 5


def fold_classes(fold: int) -> list[int]:
    """VOC class indices of a Pascal-5i fold: fold f holds classes 5f+1 .. 5f+5."""
    if fold not in range(4):
        raise ValueError(f"Pascal-5i fold must be 0..3, got {fold}")
    return list(range(CLASSES_PER_FOLD * fold + 1, CLASSES_PER_FOLD * fold + CLASSES_PER_FOLD + 1))


def build_episodes(presence: dict[str, set[int]], fold: int, shots: int, count: int, seed: int) -> list[dict]:
    """`count` episodes of `fold`: a class, then `shots`+1 distinct images holding it (query first)."""
    rng = np.random.default_rng([seed, fold])
    holders = {c: sorted(name for name, present in presence.items() if c in present) for c in fold_classes(fold)}
    usable = [c for c, names in holders.items() if len(names) > shots]
    if not usable:
        raise ValueError(f"fold {fold}: no class has {shots + 1} images, cannot draw {shots}-shot episodes")
    episodes = []
    for _ in range(count):
        class_index = usable[int(rng.integers(len(usable)))]
        names = holders[class_index]
        picked = [names[i] for i in rng.choice(len(names), size=shots + 1, replace=False)]
        episodes.append({"class_index": class_index, "query": picked[0], "support": picked[1:]})
    return episodes


def episode_file(root: Path, fold: int, split: str, shots: int, count: int, seed: int) -> Path:
    """Where the fixed episode list of one fold and setting lives."""
    return Path(root) / "episodes" / f"fold{fold}_{split}_{shots}shot_{count}ep_seed{seed}.json"


def binary_mask(labels: np.ndarray, class_index: int) -> np.ndarray:
    """1 where the class is, 255 where VOC marks void, 0 elsewhere."""
    return np.where(labels == VOID, VOID, labels == class_index).astype(np.uint8)


class Pascal5i:
    name = "pascal5i"
    task = "fewshot_seg"

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        self.folds = [int(f) for f in cfg.get("folds", [0, 1, 2, 3])]
        self.shots = int(cfg.get("shots", 5))
        self.episodes_per_fold = int(cfg.get("episodes_per_fold", 250))
        self.seed = int(cfg.get("seed", 0))
        self.split = cfg.get("split", "val")
        self.mask_dir = self.root / cfg.get("mask_dir", "SegmentationClassAug")
        self._episodes = {fold: self._episode_list(fold) for fold in self.folds}

    def _episode_list(self, fold: int) -> list[dict]:
        path = episode_file(self.root, fold, self.split, self.shots, self.episodes_per_fold, self.seed)
        if not path.exists():  # drawn once, then fixed on disk for every later run
            write_json(
                path,
                {
                    "fold": fold,
                    "episodes": build_episodes(self._presence(), fold, self.shots, self.episodes_per_fold, self.seed),
                },
            )
        episodes = read_json(path).get("episodes")
        if not isinstance(episodes, list):
            raise DatasetFileError(f"{path} has no 'episodes' list")
        return episodes

    def _presence(self) -> dict[str, set[int]]:
        names = read_lines(self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt")
        return {name: set(np.unique(self._labels(name)).tolist()) for name in names}

    def _labels(self, name: str) -> np.ndarray:
        path = self.mask_dir / f"{name}.png"
        labels = read_index_png(path)
        unknown = np.setdiff1d(np.unique(labels), [*range(len(VOC_CLASSES)), VOID])
        if unknown.size:
            raise DatasetFileError(f"{path} holds labels {unknown.tolist()} outside VOC's 0..20 and 255")
        return labels

    def images(self) -> list[ImageRef]:
        names = {e["query"] for eps in self._episodes.values() for e in eps}
        names |= {s for eps in self._episodes.values() for e in eps for s in e["support"]}
        return [ImageRef(name, require(self.root / "JPEGImages" / f"{name}.jpg")) for name in sorted(names)]

    def texts(self) -> list[str]:
        return []

    def samples(self) -> Iterator[SegEpisode]:
        for fold, episodes in self._episodes.items():
            for index, episode in enumerate(episodes):
                class_index = int(episode["class_index"])
                yield SegEpisode(
                    episode_id=f"fold{fold}_{index:04d}",
                    fold=fold,
                    class_name=VOC_CLASSES[class_index],
                    query=episode["query"],
                    query_mask=binary_mask(self._labels(episode["query"]), class_index),
                    support=tuple(episode["support"]),
                    support_masks=tuple(binary_mask(self._labels(s), class_index) for s in episode["support"]),
                )

    def oracle_truth(self, image_id: str) -> OracleTruth:
        labels = self._labels(image_id).astype(np.int64)
        return OracleTruth(labels=np.where(labels == VOID, 0, labels), num_ids=len(VOC_CLASSES))
