"""Each synthetic twin, written in its dataset's real layout, read back by that dataset's loader.

The generator keeps what it drew in memory; the loader must return exactly those masks, keypoints,
boxes, texts and answers from the files alone.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagekv.datasets import DATASET_NAMES, TASK_OF_DATASET, load_dataset
from imagekv.datasets.files import DatasetFileError
from imagekv.datasets.pascal5i import VOC_CLASSES, fold_entries
from imagekv.datasets.synthetic import synthesize, write_synthetic

from smoke_config import SMOKE_DATASETS as SMOKE


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """name -> (root, truth) for every dataset, written once for the module."""
    base = tmp_path_factory.mktemp("synthetic")
    return {name: (base / name, synthesize(name, base / name, SMOKE[name], seed=3)) for name in DATASET_NAMES}


def loader_cfg(name: str, root: Path) -> dict:
    """The smoke settings of `name` plus a derived-files folder beside (never inside) its root."""
    return {**SMOKE[name], "derived_dir": str(root.with_name(f"{root.name}-derived"))}


def assert_same(got, expected, where: str = "") -> None:
    """Field-by-field equality where arrays must match exactly in values, shape and dtype."""
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype, where
        np.testing.assert_array_equal(got, expected, err_msg=where)
    elif dataclasses.is_dataclass(expected):
        assert type(got) is type(expected), where
        for field in dataclasses.fields(expected):
            assert_same(getattr(got, field.name), getattr(expected, field.name), f"{where}.{field.name}")
    elif isinstance(expected, (tuple, list)):
        assert type(got) is type(expected) and len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_loader_returns_exactly_what_the_generator_wrote(written, name):
    root, truth = written[name]
    dataset = load_dataset(name, root, {"source": "synthetic", **loader_cfg(name, root)})
    assert (dataset.name, dataset.task) == (name, TASK_OF_DATASET[name])
    samples = list(dataset.samples())
    assert len(samples) == len(truth.samples) > 0
    assert_same(samples, truth.samples, name)
    assert dataset.texts() == truth.texts
    refs = dataset.images()
    assert [ref.image_id for ref in refs] == truth.image_ids
    assert all(ref.path.is_file() for ref in refs)
    for image_id, pixels in truth.pixels.items():  # images the loader extracts itself must be lossless
        np.testing.assert_array_equal(
            np.array(Image.open(next(r.path for r in refs if r.image_id == image_id))), pixels
        )
    for image_id, labels in truth.oracle_labels.items():
        oracle = dataset.oracle_truth(image_id)
        assert_same(oracle.labels, labels, f"{name} oracle {image_id}")
        assert oracle.labels.max() < oracle.num_ids


@pytest.mark.parametrize("name", ["imagenet_s", "refcoco"])
def test_oracle_text_ids_name_the_queried_region(written, name):
    root, _ = written[name]
    dataset = load_dataset(name, root, loader_cfg(name, root))
    for query in dataset.samples():
        oracle = dataset.oracle_truth(query.image_id)
        scored = query.mask != 255
        np.testing.assert_array_equal((oracle.labels == oracle.text_ids[query.text])[scored], query.mask[scored] == 1)


def test_spair_oracle_regions_match_across_a_pair(written):
    root, _ = written["spair"]
    dataset = load_dataset("spair", root, loader_cfg("spair", root))
    for pair in dataset.samples():
        source, target = dataset.oracle_truth(pair.source).labels, dataset.oracle_truth(pair.target).labels
        source_ids = [source[int(y), int(x)] for x, y in pair.source_points]
        target_ids = [target[int(y), int(x)] for x, y in pair.target_points]
        assert source_ids == target_ids and len(set(source_ids)) == len(source_ids) and min(source_ids) > 0
        x0, y0, x1, y1 = (int(v) for v in pair.target_bbox)
        outside = np.ones_like(target, dtype=bool)
        outside[y0 : y1 + 1, x0 : x1 + 1] = False
        assert not target[outside].any()


def test_pascal_episodes_come_from_the_hsnet_lists_and_nothing_is_written(written):
    root, truth = written["pascal5i"]
    before = file_bytes(root)
    listed = {fold: set(fold_entries(fold)) for fold in (0, 1)}
    for episode in truth.samples:
        assert len(episode.support) == 2 and episode.query not in episode.support
        class_index = VOC_CLASSES.index(episode.class_name)
        assert {(name, class_index) for name in (episode.query, *episode.support)} <= listed[episode.fold]
        assert all((mask == 1).any() for mask in (episode.query_mask, *episode.support_masks))
    again = list(load_dataset("pascal5i", root, loader_cfg("pascal5i", root)).samples())
    assert_same(again, truth.samples)  # the same seeded draw at every load
    assert file_bytes(root) == before and not (root / "episodes").exists()


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_writing_twice_gives_identical_bytes(written, tmp_path, name):
    root, _ = written[name]
    again = tmp_path / name
    write_synthetic(name, again, SMOKE[name], seed=3)
    assert file_bytes(again) == file_bytes(root)
    assert not list(tmp_path.glob(".*partial"))


def test_rewriting_replaces_the_folder(tmp_path):
    write_synthetic("davis", tmp_path / "davis", {"clips": 1, "frames": 2}, seed=0)
    (tmp_path / "davis" / "stale.txt").write_text("old")
    write_synthetic("davis", tmp_path / "davis", {"clips": 1, "frames": 2}, seed=0)
    assert not (tmp_path / "davis" / "stale.txt").exists()


def _copy(written, tmp_path, name) -> Path:
    copy = tmp_path / name
    shutil.copytree(written[name][0], copy)
    return copy


BROKEN = {
    "pascal5i": lambda truth: f"SegmentationClass/{truth.samples[0].query}.png",
    "msrc": lambda truth: "MSRC/airplane/GroundTruth/1_1_s.png",
    "imagenet_s": lambda truth: f"validation-segmentation/{truth.image_ids[0]}.png",
    "davis": lambda truth: "Annotations/480p/clip-01/00001.png",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_corrupt_mask_is_reported_with_its_file(written, tmp_path, name):
    copy = _copy(written, tmp_path, name)
    broken = copy / BROKEN[name](written[name][1])
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated PNG
    with pytest.raises(DatasetFileError, match=str(broken).replace("\\", "\\\\")):
        list(load_dataset(name, copy, loader_cfg(name, copy)).samples())


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_missing_mask_is_reported_with_its_file(written, tmp_path, name):
    copy = _copy(written, tmp_path, name)
    missing = copy / BROKEN[name](written[name][1])
    missing.unlink()
    with pytest.raises(DatasetFileError, match=f"missing dataset file: {missing}"):
        list(load_dataset(name, copy, loader_cfg(name, copy)).samples())


@pytest.mark.parametrize(
    "name, relative",
    [
        ("refcoco", "refcoco/instances.json"),
        ("refcoco", "refcoco/refs(unc).p"),
        ("davis", "ImageSets/2017/val.txt"),
        ("spair", "Layout/large/test.txt"),
        ("pascal5i", "ImageSets/Segmentation/val.txt"),
    ],
)
def test_missing_annotation_file_is_named(written, tmp_path, name, relative):
    copy = _copy(written, tmp_path, name)
    (copy / relative).unlink()
    with pytest.raises(
        (DatasetFileError, FileNotFoundError), match=str(copy / relative).replace("(", r"\(").replace(")", r"\)")
    ):
        list(load_dataset(name, copy, loader_cfg(name, copy)).samples())


def test_spair_missing_pair_annotation_is_named(written, tmp_path):
    copy = _copy(written, tmp_path, "spair")
    pair_file = copy / "PairAnnotation" / "test" / f"{written['spair'][1].samples[0].pair_id}.json"
    pair_file.unlink()
    with pytest.raises(DatasetFileError, match=f"missing dataset file: {pair_file}"):
        list(load_dataset("spair", copy, loader_cfg("spair", copy)).samples())


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(KeyError, match="unknown dataset 'voc'"):
        load_dataset("voc", tmp_path, {})
    with pytest.raises(KeyError, match="no synthetic writer"):
        write_synthetic("voc", tmp_path / "voc", {}, seed=0)
