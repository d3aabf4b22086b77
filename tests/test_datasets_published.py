"""RefCOCO, SPair-71k, DAVIS and BLINK as their publishers ship them: the twins in the published
layouts and encodings, read by the loaders through the published root, and every malformed
annotation refused by `load_dataset` with a message naming the file and the item.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagekv import plan
from imagekv.datasets import load_dataset
from imagekv.datasets.files import DatasetFileError
from imagekv.datasets.synthetic import synthesize
from imagekv.interventions.multiple_choice import DEFAULT_ANSWER_INSTRUCTION, question_text

from smoke_config import SMOKE_CONFIG
from smoke_config import SMOKE_DATASETS as SMOKE
from workflow_runs import tool_env

NAMES = ("refcoco", "spair", "davis", "blink")


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """name -> the twin's root, written once for the module (tests change copies only)."""
    base = tmp_path_factory.mktemp("published")
    for name in NAMES:
        synthesize(name, base / name, SMOKE[name], seed=11)
    return {name: base / name for name in NAMES}


def copy_of(twins, tmp_path: Path, name: str) -> Path:
    shutil.copytree(twins[name], tmp_path / name)
    return tmp_path / name


def load(name: str, root: Path, **changes):
    cfg = {**SMOKE[name], "derived_dir": str(root.with_name(f"{root.name}-derived")), **changes}
    dataset = load_dataset(name, root, cfg)
    return dataset, list(dataset.samples()), dataset.images()


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(match: str):
    return pytest.raises(DatasetFileError, match=match)


def escaped(path: Path) -> str:
    return str(path).replace("(", r"\(").replace(")", r"\)")


# --- BLINK --------------------------------------------------------------------------------------


def rewrite_parquet(path: Path, change) -> None:
    """Apply `change(rows)` to a parquet file, keeping its schema and metadata."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    change(rows)
    pq.write_table(table.from_pylist(rows, schema=table.schema), path)


def blink_file(root: Path, subtask: str) -> Path:
    return root / subtask / "val-00000-of-00001.parquet"


def test_blink_twin_has_the_hub_schema(twins):
    path = blink_file(twins["blink"], "Art_Style")
    schema = pq.read_schema(path)
    assert schema.names == [
        "idx", "question", "sub_task", "image_1", "image_2", "image_3", "image_4",
        "choices", "answer", "prompt", "explanation",
    ]
    assert json.loads(schema.metadata[b"huggingface"])["info"]["features"]["image_1"] == {"_type": "Image"}
    row = pq.read_table(path).to_pylist()[0]
    assert row["image_1"]["bytes"][:3] == b"\xff\xd8\xff" and row["image_1"]["path"].endswith(".jpg")
    assert row["prompt"].endswith(f"(A) {row['choices'][0]}\n(B) {row['choices'][1]}")


def test_blink_images_go_to_the_run_and_the_dataset_folder_is_untouched(twins, tmp_path):
    root = copy_of(twins, tmp_path, "blink")
    before = file_bytes(root)
    dataset, samples, refs = load("blink", root)
    derived = tmp_path / "blink-derived"
    assert refs and all(ref.path.is_relative_to(derived) for ref in refs)
    assert file_bytes(root) == before
    # The instruction is added once to the published prompt.
    assert all(question_text(item).count(DEFAULT_ANSWER_INSTRUCTION) == 1 for item in samples)


def test_blink_rerun_clears_a_crashed_staging_folder(twins, tmp_path):
    root = copy_of(twins, tmp_path, "blink")
    _, _, refs = load("blink", root)
    folder = refs[0].path.parent
    shutil.rmtree(folder)
    staging = folder.with_name(f"{folder.name}.partial")
    staging.mkdir()
    (staging / "half-written.jpg").write_bytes(b"\xff\xd8")
    _, _, again = load("blink", root)
    assert [r.image_id for r in again] == [r.image_id for r in refs]
    assert not staging.exists() and not (folder / "half-written.jpg").exists()


def test_blink_idx_that_would_escape_the_folder_is_refused(twins, tmp_path):
    root = copy_of(twins, tmp_path, "blink")
    path = blink_file(root, "Counting")

    def escape(rows):
        rows[0]["idx"] = "../../../../../x"

    rewrite_parquet(path, escape)
    with refused(rf"{path}: item idx '../../../../../x' is not a plain name"):
        load("blink", root)
    assert not list(tmp_path.parent.rglob("x_image_1*")), "nothing is written anywhere, five levels up included"


def test_extraction_command_refuses_the_escaping_idx_and_writes_nothing(twins, tmp_path):
    """Issue 16's case through `python -m imagekv extract`, the command the workflow runs."""
    root = copy_of(twins, tmp_path, "blink")
    path = blink_file(root, "Counting")
    rewrite_parquet(path, lambda rows: rows[0].update(idx="../../../../../x"))
    spec = plan.extraction_spec(SMOKE_CONFIG, "oracle", "blink", "none")
    spec |= {"dataset_root": str(root), "dataset_cfg": {**spec["dataset_cfg"], "derived_dir": str(tmp_path / "run")}}
    result = subprocess.run(
        [sys.executable, "-m", "imagekv", "extract", "--spec", json.dumps(spec), "--output", str(tmp_path / "store")],
        capture_output=True, text=True, cwd=tmp_path, env=tool_env(), timeout=300,
    )
    assert result.returncode != 0
    assert f"{path}: item idx '../../../../../x' is not a plain name" in result.stderr
    assert not (tmp_path / "store").exists() and not list(tmp_path.parent.rglob("x_image_1*"))


def test_blink_answer_beyond_the_choices_is_refused(twins, tmp_path):
    root = copy_of(twins, tmp_path, "blink")
    path = blink_file(root, "Art_Style")  # two choices per item

    def answer_d(rows):
        rows[1]["answer"] = "(D)"

    rewrite_parquet(path, answer_d)
    with refused(rf"{path}: item 'val_Art_Style_2': answer '\(D\)' names no option; the item has 2 choices"):
        load("blink", root)


def test_blink_missing_subtask_is_an_error_when_subtasks_are_discovered(twins, tmp_path):
    root = copy_of(twins, tmp_path, "blink")
    with refused(f"missing BLINK file: {root}/Forensic_Detection/val-\\*.parquet"):
        load("blink", root, subtasks=None)  # the paper config: all 14 published subtasks
    blink_file(root, "Counting").unlink()
    with refused(f"missing BLINK file: {root}/Counting/val-\\*.parquet"):
        load("blink", root)


# --- RefCOCO ------------------------------------------------------------------------------------


def test_refcoco_twin_is_the_refer_layout(twins):
    root = twins["refcoco"]
    assert sorted(p.name for p in (root / "refcoco").iterdir()) == ["instances.json", "refs(unc).p"]
    assert list((root / "images" / "mscoco" / "images" / "train2014").glob("COCO_train2014_*.jpg"))
    instances = json.loads((root / "refcoco" / "instances.json").read_text())
    assert all(isinstance(a["segmentation"], list) and a["segmentation"] for a in instances["annotations"])
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    assert set(refs[0]) == {
        "ref_id", "ann_id", "image_id", "split", "sentences", "category_id", "file_name", "sent_ids"
    }
    assert set(refs[0]["sentences"][0]) == {"tokens", "raw", "sent_id", "sent"}
    _, samples, refs_loaded = load("refcoco", root)
    images = root / "images" / "mscoco" / "images" / "train2014"
    assert samples and all(r.path.is_relative_to(images) for r in refs_loaded)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_refs(path: Path, change) -> None:
    refs = pickle.loads(path.read_bytes())
    change(refs)
    path.write_bytes(pickle.dumps(refs, protocol=2))


def used_ref(root: Path) -> dict:
    """The ref of the first sentence the smoke config uses."""
    dataset = load("refcoco", root)[0]
    return dataset.sentences[0][0]


def test_refcoco_image_size_differing_from_its_jpeg_is_refused(twins, tmp_path):
    root = copy_of(twins, tmp_path, "refcoco")
    image_id = used_ref(root)["image_id"]

    def taller(data):
        next(i for i in data["images"] if i["id"] == image_id)["height"] += 7

    edit_json(root / "refcoco" / "instances.json", taller)
    with refused(rf"{root}/refcoco/instances.json: image {image_id} has height, width .* but .*COCO_train2014_"):
        load("refcoco", root)


def test_refcoco_category_out_of_range_is_refused(twins, tmp_path):
    root = copy_of(twins, tmp_path, "refcoco")
    ref_id = used_ref(root)["ref_id"]

    def category_999(refs):
        next(r for r in refs if r["ref_id"] == ref_id)["category_id"] = 999

    edit_refs(root / "refcoco" / "refs(unc).p", category_999)
    with refused(escaped(f"{root}/refcoco/refs(unc).p: ref {ref_id} has category_id 999") + ".*instances.json"):
        load("refcoco", root)
    shutil.rmtree(root)
    root = copy_of(twins, tmp_path, "refcoco")
    ann_id = used_ref(root)["ann_id"]

    def annotation_999(data):
        next(a for a in data["annotations"] if a["id"] == ann_id)["category_id"] = 999

    edit_json(root / "refcoco" / "instances.json", annotation_999)
    with refused(rf"{root}/refcoco/instances.json: annotation {ann_id} has category_id 999"):
        load("refcoco", root)


def test_refcoco_unknown_ann_id_blames_the_refs_pickle(twins, tmp_path):
    root = copy_of(twins, tmp_path, "refcoco")
    ref_id = used_ref(root)["ref_id"]

    def unknown_ann(refs):
        next(r for r in refs if r["ref_id"] == ref_id)["ann_id"] = 424242

    edit_refs(root / "refcoco" / "refs(unc).p", unknown_ann)
    folder = root / "refcoco"
    with refused(escaped(f"{folder}/refs(unc).p: ref {ref_id} names ann_id 424242, which {folder}/instances.json")):
        load("refcoco", root)


# --- SPair-71k ----------------------------------------------------------------------------------


def first_pair_file(root: Path) -> Path:
    dataset = load("spair", root)[0]
    return root / "PairAnnotation" / "test" / f"{dataset.pair_names[0]}.json"


def test_spair_twin_has_the_published_keys_and_types(twins):
    root = twins["spair"]
    pair = json.loads(first_pair_file(root).read_text())
    assert set(pair) == {
        "pair_id", "filename", "src_imname", "trg_imname", "src_imsize", "trg_imsize", "src_bndbox", "trg_bndbox",
        "category", "src_pose", "trg_pose", "src_kps", "trg_kps", "kps_ids", "mirror", "viewpoint_variation",
        "scale_variation", "truncation", "occlusion",
    }
    assert all(isinstance(k, str) for k in pair["kps_ids"]) and isinstance(pair["pair_id"], int)
    assert all(isinstance(c, int) for point in pair["src_kps"] + pair["trg_kps"] for c in point)
    width, height, depth = pair["src_imsize"]
    category, stem = pair["category"], Path(pair["src_imname"]).stem
    assert Image.open(root / "JPEGImages" / category / pair["src_imname"]).size == (width, height) and depth == 3
    image = json.loads((root / "ImageAnnotation" / category / f"{stem}.json").read_text())
    expected = {"filename", "src_database", "image_width", "image_height", "pose", "bndbox", "kps", "azimuth_id"}
    assert expected <= set(image)
    assert Image.open(root / "Segmentation" / category / f"{stem}.png").mode == "P"
    assert (root / "Layout" / "small" / "test.txt").exists() and (root / "Layout" / "large" / "trn.txt").exists()


def test_spair_keypoint_outside_the_image_is_refused(twins, tmp_path):
    root = copy_of(twins, tmp_path, "spair")
    path = first_pair_file(root)

    def outside(data):
        data["trg_kps"][0] = [data["trg_imsize"][0] + 40, 3]

    edit_json(path, outside)
    with refused(rf"{path}: keypoint {json.loads(path.read_text())['kps_ids'][0]} of .* lies outside the"):
        load("spair", root)


def test_spair_unknown_category_names_the_pair_json(twins, tmp_path):
    root = copy_of(twins, tmp_path, "spair")
    path = first_pair_file(root)
    edit_json(path, lambda data: data.update(category="unicorn"))
    with refused(rf"{path}: category 'unicorn' is not one of"):
        load("spair", root)


def test_spair_configured_category_without_pairs_is_refused(twins, tmp_path):
    root = copy_of(twins, tmp_path, "spair")
    with refused(rf"{root}/Layout/large/test.txt lists no pairs of the categories \['unicorn'\]"):
        load("spair", root, categories=["circle", "unicorn"])


# --- DAVIS --------------------------------------------------------------------------------------


def test_davis_annotation_size_differing_from_its_frame_is_refused(twins, tmp_path):
    root = copy_of(twins, tmp_path, "davis")
    path = root / "Annotations" / "480p" / "clip-01" / "00001.png"
    with Image.open(path) as image:
        cropped = image.crop((0, 0, image.width - 5, image.height))
    cropped.save(path)
    with refused(rf"{path} is \d+x\d+, but its frame .*clip-01/00001.jpg is"):
        load("davis", root)


@pytest.mark.parametrize("name", NAMES)
def test_twin_is_read_through_its_published_root_and_left_unchanged(twins, tmp_path, name):
    """A copy placed anywhere loads as the twin does and keeps every byte (nothing written into it)."""
    root = copy_of(twins, tmp_path, name)
    before = file_bytes(root)
    dataset, samples, refs = load(name, root)
    assert samples and refs and all(ref.path.is_file() for ref in refs)
    for ref in refs[:3]:
        dataset.oracle_truth(ref.image_id)
    assert file_bytes(root) == before
    twin_samples = load(name, twins[name])[1]
    assert pickle.dumps(samples) == pickle.dumps(twin_samples)


def test_refcoco_mask_size_differing_from_its_image_is_refused(twins, tmp_path):
    from pycocotools import mask as mask_utils

    root = copy_of(twins, tmp_path, "refcoco")
    ref = used_ref(root)

    def wrong_size_rle(data):
        image = next(i for i in data["images"] if i["id"] == ref["image_id"])
        encoded = mask_utils.encode(np.asfortranarray(np.ones((image["height"] + 3, image["width"]), np.uint8)))
        annotation = next(a for a in data["annotations"] if a["id"] == ref["ann_id"])
        annotation["segmentation"] = {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}

    edit_json(root / "refcoco" / "instances.json", wrong_size_rle)
    with refused(rf"{root}/refcoco/instances.json: annotation {ref['ann_id']} is a \(\d+, \d+\) mask on image"):
        load("refcoco", root)


# --- A copy the user already has, through the config and `python -m imagekv check-dataset` -----


@pytest.mark.parametrize("name", NAMES)
def test_local_copy_is_checked_through_the_config_and_left_unchanged(twins, tmp_path, name):
    root = copy_of(twins, tmp_path, name)
    before = file_bytes(root)
    config = copy.deepcopy(SMOKE_CONFIG)
    config["datasets"][name] |= {"source": "local", "root": str(root)}
    spec = plan.check_spec(config, name)
    assert spec["root"] == str(root)
    result = subprocess.run(
        [sys.executable, "-m", "imagekv", "check-dataset", "--spec", json.dumps(spec), "--output", "check.json"],
        capture_output=True, text=True, cwd=tmp_path, env=tool_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "check.json").read_text())["images"] > 0
    assert file_bytes(root) == before
    if name == "blink":  # its images were taken out under the run's results, relative to the working directory
        assert list((tmp_path / "results" / "smoke" / "datasets" / "blink" / "images").glob("*/*/*.jpg"))
