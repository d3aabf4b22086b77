"""The typed samples every dataset loader yields, one type per task, and the loader contract.

Masks are numpy uint8 arrays of the original image size (H, W): for binary masks 1 = foreground,
0 = background, 255 = void (ignored by every metric). Label maps (DAVIS) hold 0 for background,
1..K for objects and 255 for void. Points are float (x, y) pixel coordinates of the original image.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Union

import numpy as np

VOID = 255


@dataclass(frozen=True)
class ImageRef:
    """One image that feature extraction must see. `image_id` is unique within its dataset."""

    image_id: str
    path: Path


@dataclass
class SegEpisode:
    """T1 few-shot foreground segmentation (Pascal-5i): binary masks of `class_name`."""

    episode_id: str
    fold: int
    class_name: str
    query: str
    query_mask: np.ndarray
    support: tuple[str, ...]
    support_masks: tuple[np.ndarray, ...]


@dataclass
class CosegSet:
    """T2 co-segmentation (MSRC): images sharing one object class, with its binary masks."""

    set_id: str
    class_name: str
    image_ids: tuple[str, ...]
    masks: tuple[np.ndarray, ...]


@dataclass
class TextQuery:
    """T3 (ImageNet-S class name) and T4 (RefCOCO expression): the region the text names."""

    query_id: str
    image_id: str
    text: str
    mask: np.ndarray
    category: str = ""
    # Store keys when they differ from image_id and text (E5 per-item prefixes, imagekv.prefixes):
    # the features extracted with this query's own prefix; its value read after the image.
    features_id: str = ""
    text_id: str = ""

    @property
    def features_key(self) -> str:
        return self.features_id or self.image_id

    @property
    def text_key(self) -> str:
        return self.text_id or self.text


@dataclass
class KeypointPair:
    """T5 semantic correspondence (SPair-71k): matching named keypoints on two images."""

    pair_id: str
    category: str
    source: str
    target: str
    source_points: np.ndarray  # [N, 2] (x, y)
    target_points: np.ndarray  # [N, 2] (x, y)
    keypoint_names: tuple[str, ...]
    target_bbox: tuple[float, float, float, float]  # (x0, y0, x1, y1)
    viewpoint_variation: int = 0


@dataclass
class VideoClip:
    """T6 temporal correspondence (DAVIS-2017): frames in order with their label maps."""

    clip_id: str
    frame_ids: tuple[str, ...]
    label_maps: tuple[np.ndarray, ...]


OPTION_LETTERS = string.ascii_uppercase  # a multiple-choice question's option letters, in the order of its choices


@dataclass
class BlinkItem:
    """A BLINK multiple-choice question. `answer` is the option letter, e.g. "(A)" -> "A"
    (OPTION_LETTERS: A for the first choice, B for the second...)."""

    item_id: str
    subtask: str
    question: str
    choices: tuple[str, ...]
    answer: str
    image_ids: tuple[str, ...]
    prompt: str = ""


Sample = Union[SegEpisode, CosegSet, TextQuery, KeypointPair, VideoClip, BlinkItem]


@dataclass(frozen=True)
class OracleTruth:
    """Ground truth the `oracle` calibration backbone turns into features.

    `labels` is an int map of the image (H, W) whose ids name the same thing across images of the
    dataset (a class, an object instance, a keypoint region); `text_ids` maps a query text to the
    id it refers to. `landmarks`, for keypoint datasets, maps an id to its point (x, y) in pixels:
    the oracle adds one channel per id peaking at that point, so nearest-neighbour matching lands on
    the keypoint and not anywhere in its region.
    """

    labels: np.ndarray
    num_ids: int
    text_ids: dict[str, int] = field(default_factory=dict)
    landmarks: dict[int, tuple[float, float]] | None = None


class Dataset(Protocol):
    """What a dataset loader provides. Loaders parse the real on-disk layout under `root`."""

    name: str  # registry key, e.g. "pascal5i"
    task: str  # probe task key, e.g. "fewshot_seg"

    def images(self) -> list[ImageRef]:
        """Every image feature extraction must see, unique and sorted by image_id."""

    def texts(self) -> list[str]:
        """Every query text whose per-layer values the probes need (T3, T4); else empty."""

    def samples(self) -> Iterator[Sample]:
        """The task's samples in a fixed, seeded order."""

    def oracle_truth(self, image_id: str) -> OracleTruth:
        """Ground truth for the `oracle` backbone."""
