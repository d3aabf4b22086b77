"""SPair-71k semantic correspondence pairs (T5).

Layout under `root`, the folder SPair-71k.tar.gz unpacks to (read: the layouts quoted by public
SPair loaders and the 0jl/SPair-71k hub loading script, which reads these paths):
`JPEGImages/<category>/<name>.jpg`, `Segmentation/<category>/<name>.png`,
`ImageAnnotation/<category>/<name>.json`, `PairAnnotation/<split>/<pair name>.json` and
`Layout/{large,small}/<split>.txt` listing pair names "<pair_id>-<source>-<target>:<category>".

Pair JSON keys (read: that script's feature list and the keys public loaders use): pair_id, filename,
src_imname, trg_imname, src_imsize / trg_imsize ([width, height, depth]), src_bndbox / trg_bndbox
([x0, y0, x1, y1]), src_pose / trg_pose, src_kps / trg_kps ([[x, y], ...], integer pixels), kps_ids
(keypoint ids as strings), category, viewpoint_variation, scale_variation, truncation, occlusion and
mirror. Image JSON keys: filename, src_database, src_annotation, src_image, image_width,
image_height, image_depth, category, pose, truncated, occluded, difficult, bndbox, kps ({"<id>":
[x, y] or null}) and azimuth_id; only the oracle reads them. The value types (ints, string ids) are
read from public loaders' handling of them, not from the files themselves.

Checked, each error naming the JSON file: the category is one of JPEGImages/; the image sizes the
JSON states are the JPEGs'; every keypoint lies inside its image (0 <= x <= width, 0 <= y <= height:
whether the published integers are 0- or 1-based is not documented, so both ends are allowed).
A seeded fixed subset of `pairs_per_category` per category; a configured category without pairs is
an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from imagekv.datasets.files import DatasetFileError, image_size, read_json, read_lines, require, seeded_subset
from imagekv.datasets.schema import ImageRef, KeypointPair, OracleTruth


def keypoint_regions(
    size: tuple[int, int], points: dict[int, tuple[float, float]], box: list[float], first_id: int
) -> np.ndarray:
    """Label map: each pixel of `box` takes `first_id + k` of its nearest keypoint k; 0 outside.

    The regions tile the object, so a keypoint's own cell is dominated by its own id, which is what
    lets nearest-neighbour search on one-hot oracle features land on the matching keypoint.
    """
    labels = np.zeros(size, dtype=np.int64)
    if not points:
        return labels
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])) + 1, size[1]), min(int(np.ceil(box[3])) + 1, size[0])
    ys, xs = np.mgrid[y0:y1, x0:x1]
    ids = np.array(sorted(points))
    coords = np.array([points[k] for k in ids], dtype=np.float64)
    distance = (xs[..., None] - coords[:, 0]) ** 2 + (ys[..., None] - coords[:, 1]) ** 2
    labels[y0:y1, x0:x1] = first_id + ids[np.argmin(distance, axis=-1)]
    return labels


PUBLISHED_ROOT = "the SPair-71k folder of SPair-71k.tar.gz (JPEGImages/, ImageAnnotation/, PairAnnotation/, Layout/)"


class SPair:
    name = "spair"
    task = "semantic_corr"
    PUBLISHED_ROOT = PUBLISHED_ROOT

    def __init__(self, root: Path, cfg: dict):
        self.root = Path(root)
        self.split = cfg.get("split", "test")
        self.keypoints_per_category = int(cfg.get("keypoints_per_category", 30))
        self.categories = sorted(p.name for p in require(self.root / "JPEGImages").iterdir() if p.is_dir())
        layout = self.root / "Layout" / "large" / f"{self.split}.txt"
        by_category: dict[str, list[str]] = {}
        for line in read_lines(layout):
            by_category.setdefault(line.rpartition(":")[2], []).append(line)
        wanted = cfg.get("categories") or sorted(by_category)
        absent = [c for c in wanted if not by_category.get(c)]
        if absent:
            raise DatasetFileError(f"{layout} lists no pairs of the categories {absent}")
        per_category, seed = cfg.get("pairs_per_category", 100), int(cfg.get("seed", 0))
        self.pair_names = [n for c in wanted for n in seeded_subset(by_category[c], per_category, seed)]

    @cached_property
    def _pairs(self) -> list[KeypointPair]:
        return [self._read_pair(name) for name in self.pair_names]

    def _read_pair(self, pair_name: str) -> KeypointPair:
        path = self.root / "PairAnnotation" / self.split / f"{pair_name}.json"
        data = read_json(path)
        try:
            category = data["category"]
            if category not in self.categories:
                raise DatasetFileError(f"{path}: category {category!r} is not one of {self.root / 'JPEGImages'}'s")
            source, target = (f"{category}/{Path(data[key]).stem}" for key in ("src_imname", "trg_imname"))
            pair = KeypointPair(
                pair_id=pair_name,
                category=category,
                source=source,
                target=target,
                source_points=np.asarray(data["src_kps"], dtype=np.float64).reshape(-1, 2),
                target_points=np.asarray(data["trg_kps"], dtype=np.float64).reshape(-1, 2),
                keypoint_names=tuple(str(k) for k in data["kps_ids"]),
                target_bbox=tuple(float(v) for v in data["trg_bndbox"]),
                viewpoint_variation=int(data.get("viewpoint_variation", 0)),
            )
            for image, points, size in (
                (source, pair.source_points, data["src_imsize"]),
                (target, pair.target_points, data["trg_imsize"]),
            ):
                self._check_points(path, image, points, list(pair.keypoint_names), (int(size[1]), int(size[0])))
        except DatasetFileError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise DatasetFileError(f"{path} is not a SPair pair annotation: {error!r}") from error
        if not len(pair.source_points) == len(pair.target_points) == len(pair.keypoint_names):
            raise DatasetFileError(f"{path}: src_kps, trg_kps and kps_ids differ in length")
        return pair

    def _check_points(
        self, path: Path, image: str, points: np.ndarray, names: list[str], stated: tuple[int, int]
    ) -> tuple[int, int]:
        """The image's (height, width), which must be what JSON `path` states, with every keypoint inside."""
        jpeg = self.root / "JPEGImages" / f"{image}.jpg"
        height, width = image_size(jpeg)
        if stated != (height, width):
            raise DatasetFileError(
                f"{path}: states {image} is {stated} (height, width), but {jpeg} is {(height, width)}"
            )
        for name, (x, y) in zip(names, points):
            if not (0 <= x <= width and 0 <= y <= height):
                raise DatasetFileError(
                    f"{path}: keypoint {name} of {image} at ({x:g}, {y:g}) lies outside the {width}x{height} image"
                )
        return height, width

    def images(self) -> list[ImageRef]:
        ids = sorted({image for pair in self._pairs for image in (pair.source, pair.target)})
        return [ImageRef(i, require(self.root / "JPEGImages" / f"{i}.jpg")) for i in ids]

    def texts(self) -> list[str]:
        return []

    def samples(self) -> Iterator[KeypointPair]:
        yield from self._pairs

    def oracle_truth(self, image_id: str) -> OracleTruth:
        """Keypoint regions from the image's own annotation; ids are unique per (category, keypoint)."""
        category = image_id.split("/", 1)[0]
        path = self.root / "ImageAnnotation" / f"{image_id}.json"
        data = read_json(path)
        try:
            points = {int(k): (float(xy[0]), float(xy[1])) for k, xy in data["kps"].items() if xy is not None}
            stated = (int(data["image_height"]), int(data["image_width"]))
            box = data["bndbox"]
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise DatasetFileError(f"{path} is not a SPair image annotation: {error!r}") from error
        if any(k >= self.keypoints_per_category for k in points):
            raise DatasetFileError(
                f"{path} has keypoint ids beyond keypoints_per_category={self.keypoints_per_category}"
            )
        names = [str(k) for k in points]
        size = self._check_points(path, image_id, np.array(list(points.values())).reshape(-1, 2), names, stated)
        first_id = 1 + self.categories.index(category) * self.keypoints_per_category
        return OracleTruth(
            labels=keypoint_regions(size, points, box, first_id),
            num_ids=1 + len(self.categories) * self.keypoints_per_category,
            landmarks={first_id + k: point for k, point in points.items()},
        )
