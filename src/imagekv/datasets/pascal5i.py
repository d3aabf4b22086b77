"""Pascal-5i few-shot segmentation episodes (T1), read from VOC2012 as its trainval tar unpacks.

The root is the `VOCdevkit/VOC2012` folder of `VOCtrainval_11-May-2012.tar`. Read from it:
- `JPEGImages/<id>.jpg`; `ImageSets/Segmentation/val.txt`, which must list every image of the fold
  lists (read: VOC2012 devkit layout; hsnet's `data/pascal.py` opens the same image paths).
- `<mask_dir>/<id>.png`: VOC class index per pixel, 0 = background, 1..20 = `VOC_CLASSES`, 255 =
  void (object outlines). The default `SegmentationClass` holds palette (mode P) PNGs whose indices
  are the classes (VOC2012 devkit documentation). hsnet reads `SegmentationClassAug` (grey PNGs of
  the same indices, VOC's own mask for every VOC image; `mask_dir: SegmentationClassAug` reads it):
  every image of the val fold lists is a VOC2012 segmentation val image, so both give the same masks
  (checked against the lists, see `published/README.md`).

The fold lists are hsnet's test lists, committed under `published/pascal5i/` (source and licence
there): one `<image id>__<class 01..20>` per line, fold f listing the classes 5f+1 .. 5f+5.

Episodes [I]: hsnet evaluates 1000 episodes per fold, its queries cycling through the list and the
supports drawn at random among the list's images of the query's class. Here `episodes_per_fold`
queries are drawn from the list without replacement (the whole list in a seeded order, again if more
are asked), each with `shots` distinct supports of its class other than the query image. The draw is
a pure function of the lists, the seed and the fold: it is redone in memory at every load and
nothing is written anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from imagekv.datasets.files import DatasetFileError, check_same_size, read_index_png, read_lines, require
from imagekv.datasets.schema import VOID, ImageRef, OracleTruth, SegEpisode

PUBLISHED_ROOT = "the VOCdevkit/VOC2012 folder of VOCtrainval_11-May-2012.tar (JPEGImages/, SegmentationClass/, ...)"
VOC_CLASSES = tuple(
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person"
    " pottedplant sheep sofa train tvmonitor".split()
)
CLASSES_PER_FOLD = 5
LIST_LINE = re.compile(r"^(\d{4}_\d{6})__(\d{2})$")


def fold_classes(fold: int) -> list[int]:
    """VOC class indices of a Pascal-5i fold: fold f holds classes 5f+1 .. 5f+5."""
    if fold not in range(4):
        raise ValueError(f"Pascal-5i fold must be 0..3, got {fold}")
    return list(range(CLASSES_PER_FOLD * fold + 1, CLASSES_PER_FOLD * fold + CLASSES_PER_FOLD + 1))


def fold_list_path(fold: int) -> Path:
    return Path(str(resources.files("imagekv.datasets") / "published" / "pascal5i" / f"fold{fold}.txt"))


@cache
def fold_entries(fold: int) -> tuple[tuple[str, int], ...]:
    """(image id, VOC class index) of each line of hsnet's val list of `fold`, validated."""
    path = fold_list_path(fold)
    entries = []
    for number, line in enumerate(read_lines(path), start=1):
        match = LIST_LINE.match(line)
        if not match or int(match[2]) not in fold_classes(fold):
            raise DatasetFileError(f"{path} line {number}: {line!r} is not <image id>__<class of fold {fold}>")
        entries.append((match[1], int(match[2])))
    return tuple(entries)


def draw_episodes(entries: tuple[tuple[str, int], ...], fold: int, shots: int, count: int, seed: int) -> list[dict]:
    """`count` episodes: a query entry of the list, then `shots` other images listed for its class."""
    rng = np.random.default_rng([seed, fold])
    holders: dict[int, list[str]] = {}
    for name, class_index in entries:
        holders.setdefault(class_index, []).append(name)
    order = []
    while len(order) < count:
        order += rng.permutation(len(entries)).tolist()
    episodes = []
    for index in order[:count]:
        query, class_index = entries[index]
        others = [name for name in holders[class_index] if name != query]
        if len(others) < shots:
            raise ValueError(f"fold {fold}: {VOC_CLASSES[class_index]} has {len(others)} support images, not {shots}")
        support = [others[i] for i in rng.choice(len(others), size=shots, replace=False)]
        episodes.append({"class_index": class_index, "query": query, "support": support})
    return episodes


def binary_mask(labels: np.ndarray, class_index: int) -> np.ndarray:
    """1 where the class is, 255 where VOC marks void, 0 elsewhere."""
    return np.where(labels == VOID, VOID, labels == class_index).astype(np.uint8)


class Pascal5i:
    name = "pascal5i"
    task = "fewshot_seg"
    PUBLISHED_ROOT = PUBLISHED_ROOT

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        self.folds = [int(f) for f in cfg.get("folds", [0, 1, 2, 3])]
        self.shots = int(cfg.get("shots", 5))
        self.episodes_per_fold = int(cfg.get("episodes_per_fold", 250))
        self.seed = int(cfg.get("seed", 0))
        self.mask_dir = self.root / cfg.get("mask_dir", "SegmentationClass")
        self._check_split()
        self._episodes = {
            fold: draw_episodes(fold_entries(fold), fold, self.shots, self.episodes_per_fold, self.seed)
            for fold in self.folds
        }

    def _check_split(self) -> None:
        split_file = self.root / "ImageSets" / "Segmentation" / "val.txt"
        listed = set(read_lines(split_file))
        for fold in self.folds:
            missing = sorted({name for name, _ in fold_entries(fold)} - listed)
            if missing:
                raise DatasetFileError(
                    f"{split_file} lacks {len(missing)} image(s) of {fold_list_path(fold)}, e.g. {missing[0]}"
                )

    def _image(self, name: str) -> Path:
        return self.root / "JPEGImages" / f"{name}.jpg"

    def _labels(self, name: str) -> np.ndarray:
        path = self.mask_dir / f"{name}.png"
        labels = read_index_png(path)
        check_same_size(path, labels, self._image(name))
        unknown = np.setdiff1d(np.unique(labels), [*range(len(VOC_CLASSES)), VOID])
        if unknown.size:
            raise DatasetFileError(f"{path} holds labels {unknown.tolist()} outside VOC's 0..20 and 255")
        return labels

    def _class_mask(self, name: str, class_index: int, fold: int) -> np.ndarray:
        mask = binary_mask(self._labels(name), class_index)
        if not (mask == 1).any():
            raise DatasetFileError(
                f"{self.mask_dir / f'{name}.png'} has no pixel of {VOC_CLASSES[class_index]} (class {class_index}),"
                f" which {fold_list_path(fold)} lists for it"
            )
        return mask

    def images(self) -> list[ImageRef]:
        names = {e["query"] for eps in self._episodes.values() for e in eps}
        names |= {s for eps in self._episodes.values() for e in eps for s in e["support"]}
        return [ImageRef(name, require(self._image(name))) for name in sorted(names)]

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
                    query_mask=self._class_mask(episode["query"], class_index, fold),
                    support=tuple(episode["support"]),
                    support_masks=tuple(self._class_mask(s, class_index, fold) for s in episode["support"]),
                )

    def oracle_truth(self, image_id: str) -> OracleTruth:
        labels = self._labels(image_id).astype(np.int64)
        return OracleTruth(labels=np.where(labels == VOID, 0, labels), num_ids=len(VOC_CLASSES))
