"""Pascal-5i, MSRC and ImageNet-S read from their publishers' layouts: the twins write those layouts,
each malformed annotation stops the real entry point with a message naming the file, and copies of
these and of the other probed datasets placed anywhere are read in place through the config by a
workflow run (and left byte for byte as they were).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imagekv import plan
from imagekv.config import ConfigError, validate_config
from imagekv.datasets import load_dataset
from imagekv.datasets.files import DatasetFileError
from imagekv.datasets.imagenet_s import CATEGORIES, VALIDATION
from imagekv.datasets.pascal5i import fold_entries
from imagekv.datasets.synthetic import synthesize, write_synthetic

from smoke_config import SMOKE_CONFIG, SMOKE_DATASETS as SMOKE
from workflow_runs import fresh_copy, jobs_run, snakemake, tool_env

# Where each dataset sits inside the folder a user unpacked its archive(s) into.
PUBLISHED = {
    "pascal5i": "VOCdevkit/VOC2012",
    "msrc": "ObjectDiscovery-data/Data",
    "imagenet_s": "imagenet-s/ImageNetS50",
    # the other probed datasets, for the whole run below (their layouts: tests/test_datasets_published.py)
    "refcoco": "refer/data",
    "spair": "SPair-71k",
    "davis": "DAVIS",
    "blink": "BLINK",
}


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """name -> (root, truth), each twin written at its published place inside a user's folder."""
    base = tmp_path_factory.mktemp("user")
    return {name: (base / at, synthesize(name, base / at, SMOKE[name], seed=1)) for name, at in PUBLISHED.items()}


def test_pascal_twin_is_the_voc2012_folder(twins):
    root, truth = twins["pascal5i"]
    assert sorted(p.name for p in root.iterdir()) == ["ImageSets", "JPEGImages", "SegmentationClass"]
    listed = {name for fold in range(4) for name, _ in fold_entries(fold)}
    assert set((root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()) == listed
    for name in truth.image_ids:
        assert Image.open(root / "JPEGImages" / f"{name}.jpg").format == "JPEG"
        mask = Image.open(root / "SegmentationClass" / f"{name}.png")
        assert (mask.format, mask.mode) == ("PNG", "P") and len(mask.getpalette()) == 768
    episodes = list(load_dataset("pascal5i", root, SMOKE["pascal5i"]).samples())
    assert [e.episode_id for e in episodes] == [e.episode_id for e in truth.samples]


def test_msrc_twin_is_the_object_discovery_data_folder(twins):
    root, truth = twins["msrc"]
    assert [p.name for p in root.iterdir()] == ["MSRC"]
    for image_id in truth.image_ids:
        image = Image.open(root / "MSRC" / f"{image_id}.bmp")
        assert (image.format, image.mode) == ("BMP", "RGB")  # 24 bits per pixel
        mask = np.array(Image.open(root / "MSRC" / f"{image_id.replace('/', '/GroundTruth/')}.png"))
        assert set(np.unique(mask).tolist()) == {0, 255}
    sets = list(load_dataset("msrc", root, SMOKE["msrc"]).samples())
    assert [s.class_name for s in sets] == [s.class_name for s in truth.samples]


def test_imagenet_s_twin_is_the_imagenets50_folder_with_real_wnids(twins):
    root, truth = twins["imagenet_s"]
    assert sorted(p.name for p in root.iterdir()) == ["validation", "validation-segmentation"]
    wnids = set(CATEGORIES.read_text().split())
    chosen = SMOKE["imagenet_s"]["classes"]
    assert set(chosen) <= wnids and sorted(p.name for p in (root / "validation").iterdir()) == sorted(chosen)
    listed = [line.split() for line in VALIDATION.read_text().splitlines() if line.split("/")[0] in chosen]
    for image, annotation in listed:  # every listed image of the chosen classes, as the list names it
        assert Image.open(root / "validation" / image).format == "JPEG"
        assert Image.open(root / "validation-segmentation" / annotation).mode == "RGB"
    assert not list(root.rglob("*.txt")), "no list is written into the dataset: the loader reads the published ones"
    dataset = load_dataset("imagenet_s", root, SMOKE["imagenet_s"])
    assert [ref.image_id for ref in dataset.images()] == truth.image_ids and len(truth.image_ids) == 6
    assert dataset.texts() == ["goldfish", "siamese cat", "lemon"]


# --- The config: a copy the user already has --------------------------------------------------


def local_config(roots: dict[str, Path]) -> dict:
    config = copy.deepcopy(SMOKE_CONFIG)
    for name, root in roots.items():
        config["datasets"][name] |= {"source": "local", "root": str(root)}
    return config


def test_a_local_entry_takes_a_root_and_only_it_does(tmp_path):
    config = local_config({"msrc": tmp_path / "Data"})
    validate_config(config)
    assert plan.dataset_root(config, "msrc") == str(tmp_path / "Data")
    assert plan.dataset_input(config, "msrc") == "data/local/msrc.json"
    assert plan.check_spec(config, "msrc") == {"dataset": "msrc", "root": str(tmp_path / "Data"), "cfg": SMOKE["msrc"]}
    assert "root" not in plan.extraction_spec(config, "oracle", "msrc", "none")["dataset_cfg"]
    del config["datasets"]["msrc"]["root"]
    with pytest.raises(ConfigError, match="datasets.msrc: 'root' is a required property"):
        validate_config(config)
    config["datasets"]["msrc"] |= {"source": "synthetic", "root": "/elsewhere"}
    with pytest.raises(ConfigError, match=r"datasets.msrc: .* should not be valid under \{'required': \['root'\]\}"):
        validate_config(config)


# --- Malformed annotations, through `python -m imagekv check-dataset` --------------------------


def resave(path: Path, change) -> None:
    """Rewrite an annotation image in its own format and mode after `change(array) -> array`."""
    with Image.open(path) as image:
        fmt, mode, palette = image.format, image.mode, image.getpalette()
        array = change(np.array(image))
    out = Image.fromarray(array)
    if mode == "P":
        out = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        out.putpalette(palette)
    out.save(path, format=fmt)


def narrower(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array[:, :-1])


def with_value(value):
    def change(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array[0, 0] = value
        return array

    return change


def only_void(array: np.ndarray) -> np.ndarray:
    return np.where(array == 255, 255, 0).astype(np.uint8)


def drop_line(path: Path, line: str) -> Path:
    path.write_text("".join(f"{kept}\n" for kept in path.read_text().split() if kept != line))
    return path


def pascal_mask(root: Path, truth) -> Path:
    return root / "SegmentationClass" / f"{truth.samples[0].query}.png"


def imagenet_annotation(root: Path, truth) -> Path:
    return root / "validation-segmentation" / f"{truth.image_ids[0]}.png"


MSRC_MASK = "MSRC/airplane/GroundTruth/1_1_s.png"
# (dataset, rule) -> (break the copy and return the file the message must name, words of the message)
MALFORMED = {
    ("pascal5i", "size"): (lambda r, t: _break(pascal_mask(r, t), narrower), "pixels but its image"),
    ("pascal5i", "label"): (lambda r, t: _break(pascal_mask(r, t), with_value(21)), "outside VOC's 0..20 and 255"),
    ("pascal5i", "class"): (lambda r, t: _break(pascal_mask(r, t), only_void), "has no pixel of"),
    ("pascal5i", "split"): (lambda r, t: drop_line(r / "ImageSets/Segmentation/val.txt", t.samples[0].query), "lacks"),
    ("msrc", "size"): (lambda r, t: _break(r / MSRC_MASK, narrower), "pixels but its image"),
    ("msrc", "label"): (lambda r, t: _break(r / MSRC_MASK, with_value(7)), "grey levels [7]"),
    ("msrc", "mask"): (lambda r, t: _unlink(r / "MSRC/bicycle/GroundTruth/2_2_s.png"), "missing dataset file"),
    ("imagenet_s", "size"): (lambda r, t: _break(imagenet_annotation(r, t), narrower), "pixels but its image"),
    ("imagenet_s", "label"): (lambda r, t: _break(imagenet_annotation(r, t), with_value([51, 0, 0])), "class ids [51]"),
    ("imagenet_s", "listed"): (
        lambda r, t: _unlink(r / "validation" / VALIDATION.read_text().split()[0]),
        "missing dataset file",
    ),
}


def _break(path: Path, change) -> Path:
    resave(path, change)
    return path


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


def check_dataset(name: str, root: Path, output: Path) -> subprocess.CompletedProcess:
    spec = {"dataset": name, "root": str(root), "cfg": SMOKE[name]}
    command = [sys.executable, "-m", "imagekv", "check-dataset", "--spec", json.dumps(spec), "--output", str(output)]
    return subprocess.run(command, env=tool_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checked_twins(twins, tmp_path_factory):
    """The twins, after the entry point passed each one with a malformed case as it was written."""
    reports = tmp_path_factory.mktemp("intact")
    for name in sorted({name for name, _ in MALFORMED}):
        result = check_dataset(name, twins[name][0], reports / f"{name}.json")
        assert result.returncode == 0, result.stderr[-2000:]
    return twins


@pytest.mark.parametrize("name, rule", sorted(MALFORMED))
def test_a_malformed_annotation_stops_the_entry_point_naming_its_file(tmp_path, checked_twins, name, rule):
    intact, truth = checked_twins[name]
    root = tmp_path / PUBLISHED[name]
    shutil.copytree(intact, root)  # a copy to break: the twin itself stays intact for the other tests
    breaker, words = MALFORMED[(name, rule)]
    broken = breaker(root, truth)
    result = check_dataset(name, root, tmp_path / "broken.json")
    assert result.returncode != 0 and not (tmp_path / "broken.json").exists()
    assert str(broken) in result.stderr and words in result.stderr, result.stderr[-2000:]
    assert f"datasets.{name}.root must be" in result.stderr


def test_an_unknown_msrc_class_is_named(tmp_path):
    root = tmp_path / PUBLISHED["msrc"]
    write_synthetic("msrc", root, SMOKE["msrc"], seed=1)
    with pytest.raises(DatasetFileError, match=r"missing class folder\(s\) \['cow'\] in .*/Data/MSRC"):
        load_dataset("msrc", root, {**SMOKE["msrc"], "classes": ["airplane", "cow"]})


# --- A whole run on copies placed anywhere ----------------------------------------------------


@pytest.mark.slow
def test_copies_anywhere_on_disk_are_used_in_place_and_left_untouched(tmp_path, twins):
    project = fresh_copy(tmp_path / "project")
    roots = {name: root for name, (root, _) in twins.items()}
    before = {name: file_bytes(root) for name, root in roots.items()}
    (project / "local.yaml").write_text(yaml.safe_dump({"datasets": local_config(roots)["datasets"]}))
    probed = [name for name in roots if name != "blink"]
    targets = [plan.probe_path("smoke", "oracle", name, "none", "oracle") for name in probed]
    targets.append(plan.features_path("smoke", "llava_onevision", "blink", "none"))  # BLINK is read, not probed
    result = snakemake(
        ["--cores", "all", "--configfile", "config/config.yaml", "local.yaml", "--", *targets], project, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert jobs_run(result)["check_local_dataset"] == len(roots)  # and none synthesized (checked below)
    assert all((project / target).exists() for target in targets)
    for name, root in roots.items():
        record = json.loads((project / plan.local_check_path(name)).read_text())
        assert record["root"] == str(root) and record["images"] > 0
        assert not (project / "data" / "synthetic" / name).exists()
        assert file_bytes(root) == before[name], f"{root} changed"
