"""One bad input of each kind issue 16 lists, through the entry point a user reaches it by: the
command line (`python -m imagekv ...`, run in process), Snakemake, a dataset check
(`check-dataset`'s `check_dataset`), a feature-store read, a download. Each case asserts the input is
refused (or, where there is a right answer, handled) with a message naming the file, key or item, and
that a refused command leaves no output or staging file behind.

Kinds, by outcome: 56 refused naming the file/key/item, 1 handled correctly (`HANDLED`); the count
is checked at the bottom so that a case added or removed updates it.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imagekv import cli
from imagekv.datasets import check_dataset, load_dataset
from imagekv.datasets.download import ChecksumError, DownloadError
from imagekv.datasets.safe_pickle import load_plain_pickle
from imagekv.datasets.synthetic import write_synthetic
from imagekv.images import load_rgb

import test_store_integrity as store_tampering
from smoke_config import SMOKE_DATASETS as SMOKE
from test_download import (  # noqa: F401 - fixtures
    davis_zip_source,
    fake_hub,
    fetch,
    make_tar,
    make_zip,
    retry,
    server,
    sleeps,
    unchecked,
)
from test_store_integrity import pristine, refcoco  # noqa: F401 - fixtures
from workflow_runs import ROOT, fresh_copy, snakemake

HANDLED = "handled"


@dataclass(frozen=True)
class Case:
    kind: str
    run: Callable[..., str]  # returns the refusal's message, or HANDLED
    names: str  # a regex the message must match: the file, key or item


def refused(call: Callable[[], object], *errors: type[BaseException]) -> str:
    with pytest.raises(errors or (Exception,)) as caught:
        call()
    return str(caught.value)


def command(argv: list[str], capsys) -> str:
    """`python -m imagekv ARGV` in process: the message of its refusal (argparse's or the error's)."""
    try:
        cli.main(argv)
    except SystemExit as stop:
        assert stop.code not in (0, None), "accepted"
        return capsys.readouterr().err + str(stop.code)
    except Exception as error:  # noqa: BLE001 - what the user would see as the last traceback line
        return f"{type(error).__name__}: {error}"
    raise AssertionError("accepted")


# --- Config -------------------------------------------------------------------------------------


def smoke_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))


def config_file(tmp_path: Path, edit: Callable[[dict], None] | None = None, text: str | bytes | None = None) -> Path:
    path = tmp_path / "run.yaml"
    if text is None:
        config = smoke_config()
        edit(config)
        text = yaml.safe_dump(config, allow_unicode=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def check_config(tmp_path, capsys, **kwargs) -> str:
    return command(["check-config", str(config_file(tmp_path, **kwargs))], capsys)


def prefix(name: str, value: str) -> Callable[[dict], None]:
    return lambda config: config["prefixes"].update({name: value})


CONFIG = [
    Case("config not UTF-8", lambda t, c: check_config(t, c, text=b"run: smoke\nseed: \xe9\n"), r"run.yaml: not UTF-8"),
    Case("config not YAML", lambda t, c: check_config(t, c, text="run: [smoke\n"), r"run.yaml: "),
    Case("config duplicate key", lambda t, c: check_config(t, c, text="run: smoke\nrun: paper\n"),
         r"run.yaml: line 2: key 'run' is given twice"),
    Case("config unknown key", lambda t, c: check_config(t, c, edit=lambda d: d["extraction"].update(layerz=1)),
         r"extraction"),
    Case("config wrong type", lambda t, c: check_config(t, c, edit=lambda d: d.update(seed="zero")), r"seed"),
    Case("prefix name escaping a path", lambda t, c: check_config(t, c, edit=prefix("a/../../x", "hi")),
         r"prefixes"),
    Case("prefix too long", lambda t, c: check_config(t, c, edit=prefix("long", "x" * 5000)), r"prefixes.long"),
    Case("prefix with a lone surrogate", lambda t, c: check_config(t, c, text='prefixes:\n  lone: "a\\ud800"\n'),
         r"run.yaml: (?s:.*)invalid Unicode character escape"),  # libyaml's parser refuses it (file, line, column)
    Case("preflight --configfile not UTF-8",
         lambda t, c: command(["preflight", "--configfile", str(config_file(t, text=b"seed: \xff\n"))], c),
         r"run.yaml: not UTF-8"),
    Case("--spec @FILE missing", lambda t, c: command(["synthesize", "--spec", "@gone.json", "--output", "x"], c),
         r"gone.json"),
    Case("--spec not JSON", lambda t, c: command(["synthesize", "--spec", "{oops", "--output", "x"], c),
         r"--spec: the job spec is not JSON"),
]


# --- Datasets, through the check every user copy gets before first use --------------------------


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    """Every smoke dataset in its publisher's layout (the synthetic twins)."""
    folder = tmp_path_factory.mktemp("twins")
    for name, cfg in SMOKE.items():
        write_synthetic(name, folder / name, cfg, seed=0)
    return folder


def used_image(name: str, root: Path) -> Path:
    """An image the run reads (a twin holds more than the smoke config selects)."""
    return load_dataset(name, root, cfg_of(name, root)).images()[0].path


def cfg_of(name: str, root: Path) -> dict:
    cfg = dict(SMOKE[name])
    if name == "blink":
        cfg["derived_dir"] = str(root.parent / "derived")
    return cfg


def resize(path: Path) -> None:
    image = Image.open(path)
    image.load()
    image.resize((7, 5)).save(path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def edit_json(path: Path, edit: Callable[[object], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def pascal_mask(root: Path) -> Path:
    return root / "SegmentationClass" / f"{used_image('pascal5i', root).stem}.png"


def imagenet_mask(root: Path) -> Path:
    image = used_image("imagenet_s", root)
    return root / "validation-segmentation" / image.parent.name / f"{image.stem}.png"


def davis_annotation(root: Path) -> Path:
    image = used_image("davis", root)
    return root / "Annotations" / "480p" / image.parent.name / f"{image.stem}.png"


def spair_pair(root: Path) -> Path:
    pair = load_dataset("spair", root, SMOKE["spair"]).pair_names[0]
    return root / "PairAnnotation" / SMOKE["spair"].get("split", "test") / f"{pair}.json"


def blink_parquet(root: Path) -> Path:
    return sorted(root.glob("*/val-*.parquet"))[0]


def rewrite_blink_idx(root: Path) -> None:
    import pyarrow.parquet as pq

    path = blink_parquet(root)
    table = pq.read_table(path)
    idx = table.column("idx").to_pylist()
    idx[0] = "../../../../../x"
    pq.write_table(table.set_column(table.schema.get_field_index("idx"), "idx", [idx]), path)


def refs_with_a_global(root: Path) -> None:
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": Path("/etc/passwd")}], protocol=2))


def dataset_case(kind: str, name: str, mutate: Callable[[Path], object], names: str) -> Case:
    def run(tmp_path, capsys, twins) -> str:
        root = tmp_path / name
        shutil.copytree(twins / name, root)
        mutate(root)
        return refused(lambda: check_dataset(name, root, cfg_of(name, root)))

    return Case(kind, run, names)


DATASETS = [
    dataset_case("dataset root missing", "msrc", lambda r: shutil.rmtree(r), r"msrc is not a folder"),
    dataset_case("image missing", "pascal5i", lambda r: used_image("pascal5i", r).unlink(), r"JPEGImages/\S+\.jpg"),
    dataset_case("mask of another size", "pascal5i", lambda r: resize(pascal_mask(r)),
                 r"SegmentationClass/\S+\.png is 7x5 pixels"),
    dataset_case("mask truncated", "pascal5i", lambda r: truncate(pascal_mask(r)), r"SegmentationClass/\S+\.png"),
    dataset_case("mask in RGB, not a palette", "pascal5i",
                 lambda r: Image.open(pascal_mask(r)).convert("RGB").save(pascal_mask(r)), r"has 3 channels"),
    dataset_case("RGB mask of another size", "imagenet_s", lambda r: resize(imagenet_mask(r)),
                 r"validation-segmentation/\S+\.png"),
    dataset_case("RGB mask saved grey", "imagenet_s",
                 lambda r: Image.open(imagenet_mask(r)).convert("L").save(imagenet_mask(r)),
                 r"validation-segmentation/\S+\.png is not an RGB"),
    dataset_case("MSRC ground truth of another size", "msrc",
                 lambda r: resize(sorted(r.glob("MSRC/*/GroundTruth/*"))[0]), r"GroundTruth/\S+ is 7x5"),
    dataset_case("video annotation of another size", "davis", lambda r: resize(davis_annotation(r)),
                 r"Annotations/480p/\S+\.png is 7x5"),
    dataset_case("split list names a missing video", "davis",
                 lambda r: (r / "ImageSets/2017/val.txt").write_text("ghost\n"), r"480p/ghost"),
    dataset_case("split list missing", "pascal5i", lambda r: shutil.rmtree(r / "ImageSets"), r"ImageSets"),
    dataset_case("COCO instances without annotations", "refcoco",
                 lambda r: edit_json(r / "refcoco/instances.json", lambda d: d.pop("annotations")),
                 r"instances.json is not a COCO instances file"),
    dataset_case("segmentation neither polygons nor RLE", "refcoco",
                 lambda r: edit_json(r / "refcoco/instances.json",
                                     lambda d: [a.update(segmentation="oops") for a in d["annotations"]]),
                 r"instances.json: annotation \d+ has no readable segmentation"),
    dataset_case("refs pickle truncated", "refcoco", lambda r: truncate(r / "refcoco/refs(unc).p"), r"refs\(unc\).p"),
    dataset_case("refs pickle naming a class", "refcoco", refs_with_a_global, r"refs\(unc\).p"),
    dataset_case("pair annotation not JSON", "spair", lambda r: spair_pair(r).write_text("{oops"), r"PairAnnotation/"),
    dataset_case("pair annotation missing keypoints", "spair",
                 lambda r: edit_json(spair_pair(r), lambda d: d.pop("src_kps")), r"PairAnnotation/\S+ is not a SPair"),
    dataset_case("keypoint outside its image", "spair",
                 lambda r: edit_json(spair_pair(r), lambda d: d.update(src_kps=[[9999, 9999]] * len(d["src_kps"]))),
                 r"PairAnnotation/\S+: keypoint \S+ of \S+ at \(9999, 9999\) lies outside"),
    dataset_case("keypoint lists of different lengths", "spair",
                 lambda r: edit_json(spair_pair(r), lambda d: d.update(trg_kps=d["trg_kps"][:-1])),
                 r"PairAnnotation/\S+: src_kps, trg_kps and kps_ids differ"),
    dataset_case("parquet truncated", "blink", lambda r: truncate(blink_parquet(r)), r"val-00000-of-00001.parquet"),
    dataset_case("question id escaping its folder", "blink", rewrite_blink_idx, r"\.\./\.\./"),
    Case("image truncated", lambda t, c, twins: truncated_image(t, twins), r"train2014/\S+\.jpg"),
]


def truncated_image(tmp_path: Path, twins: Path) -> str:
    """Extraction decodes each image (check_dataset only finds it): load_rgb names the file."""
    root = tmp_path / "refcoco"
    shutil.copytree(twins / "refcoco", root)
    path = used_image("refcoco", root)
    truncate(path)
    return refused(lambda: load_rgb(path))


def coco_pool_oracle(edit: Callable[[dict], None]) -> Callable:
    """The oracle calibration reads the pool's annotations (check_dataset does not)."""

    def run(tmp_path, capsys, twins) -> str:
        root = tmp_path / "coco_pool"
        shutil.copytree(twins / "coco_pool", root)
        edit_json(root / "annotations/instances_val2017.json", edit)
        dataset = load_dataset("coco_pool", root, SMOKE["coco_pool"])
        return refused(lambda: [dataset.oracle_truth(i) for i in dataset.image_ids])

    return run


DATASETS += [
    Case("COCO segmentation unreadable", coco_pool_oracle(lambda d: [a.update(segmentation="oops") for a in d["annotations"]]),
         r"instances_val2017.json: annotation \S+ of image \S+ has no readable segmentation"),
    Case("COCO annotation of an unlisted image", coco_pool_oracle(lambda d: d["annotations"][0].update(image_id=999)),
         r"instances_val2017.json: annotation \S+ is of image 999"),
]


# --- Images -------------------------------------------------------------------------------------


def sixteen_bit_png(tmp_path, capsys) -> str:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 30000, dtype=np.uint16)).save(path)
    assert np.asarray(load_rgb(path)).max() < 255  # scaled to 8 bits, not clipped to white
    return HANDLED


def too_many_pixels(tmp_path, capsys) -> str:
    path = tmp_path / "large.png"
    Image.new("RGB", (300, 200)).save(path)
    return refused(lambda: load_rgb(path, max_pixels=50_000))


IMAGES = [
    Case("16-bit PNG", sixteen_bit_png, HANDLED),
    Case("image over the pixel budget", too_many_pixels, r"large.png is 300x200 px"),
]


# --- Feature stores -------------------------------------------------------------------------------


def tampered_store(tamper: Callable[[Path], str]) -> Callable:
    def run(tmp_path, capsys, pristine) -> str:
        store = tmp_path / "store"
        shutil.copytree(pristine, store)
        tamper(store)
        return refused(lambda: store_tampering.read_everything(store))

    return run


STORES = [
    Case("shard bytes flipped", tampered_store(store_tampering.flip_data_bytes), r"00001.safetensors"),
    Case("token ranges swapped in the manifest", tampered_store(store_tampering.swap_token_ranges), r"safetensors"),
    Case("shard stored as int8", tampered_store(store_tampering.store_as_int8), r"\d{5}.safetensors"),
    Case("shard truncated", tampered_store(store_tampering.truncate), r"\d{5}.safetensors"),
    Case("shard header corrupt", tampered_store(store_tampering.corrupt_header), r"\d{5}.safetensors"),
    Case("manifest not JSON", tampered_store(lambda s: (s / "manifest.json").write_text("{")),
         r"manifest.json: corrupt manifest"),
]


# --- Downloads ------------------------------------------------------------------------------------


DAVIS_ZIP = {"DAVIS/ImageSets/2017/val.txt": b"bear\n"}


def served(tmp_path, server, retry, body: bytes, source) -> str:
    server.files["davis.zip"] = body
    return refused(lambda: fetch("davis", tmp_path / "real" / "davis", server, retry, source), DownloadError)


def html_for_a_zip(tmp_path, capsys, server, retry) -> str:
    return served(tmp_path, server, retry, b"<!DOCTYPE html><html>login</html>", davis_zip_source())


def wrong_checksum(tmp_path, capsys, server, retry) -> str:
    return served(tmp_path, server, retry, make_zip(DAVIS_ZIP), davis_zip_source(md5="0" * 32))


def member_escaping(tmp_path, capsys, server, retry) -> str:
    source = davis_zip_source()
    archive = source.archives[0]
    import dataclasses

    source = dataclasses.replace(source, archives=(dataclasses.replace(archive, kind="tar", strip=""),))
    return served(tmp_path, server, retry, make_tar({"../../evil.txt": b"x"}), source)


def hub_file_changed(tmp_path, capsys, monkeypatch, twins) -> str:
    from imagekv.datasets.download import fetch_dataset
    from imagekv.datasets.download import RetryPolicy

    fake_hub(monkeypatch, twins / "blink")
    target = tmp_path / "real" / "blink"
    return refused(lambda: fetch_dataset("blink", target, lock_path=tmp_path / "lock.json",
                                         retry=RetryPolicy(attempts=1, sleep=lambda s: None)), ChecksumError)


DOWNLOADS = [
    Case("HTML page served for an archive", html_for_a_zip, r"davis.zip: expected \S+ \(zip\), got an HTML"),
    Case("archive not matching its checksum", wrong_checksum, r"davis.zip: md5 [0-9a-f]+ does not match"),
    Case("archive member escaping the target", member_escaping, r"\.\./\.\./evil.txt"),
    Case("hub file not matching its LFS sha256", hub_file_changed, r"val-00000-of-00001.parquet: sha256"),
]


# --- Pickles ----------------------------------------------------------------------------------------


def cyclic_pickle(tmp_path, capsys) -> str:
    path = tmp_path / "cycle.p"
    cycle: list = []
    cycle.append(cycle)
    path.write_bytes(pickle.dumps(cycle, protocol=2))
    return refused(lambda: load_plain_pickle(path))


PICKLES = [Case("pickle with a cycle", cyclic_pickle, r"cycle.p")]


# --- Result tables, read by the collecting, figure, table and intervention commands ---------------


def table_file(tmp_path: Path, text: str, name: str = "results.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def reading(argv: Callable[[Path], list[str]]) -> Callable:
    return lambda tmp_path, capsys: command(argv(tmp_path), capsys)


FIGURE = ["--run", "smoke", "--scale", "smoke", "--output"]
RESULTS = [
    Case("probe results lacking columns", reading(lambda t: ["collect", "--output", "o.csv", table_file(t, "a,b\n1,2\n")]),
         r"results.csv: lacks the columns \['run'"),
    Case("result table empty", reading(lambda t: ["collect", "--output", "o.csv", table_file(t, "")]),
         r"results.csv: not a result table"),
    Case("sort column missing", reading(lambda t: ["concat", "--output", "o.csv", "--sort", "zzz",
                                                   table_file(t, "a,b\n1,2\n")]), r"results.csv: lacks the columns \['zzz'\]"),
    Case("figure input lacking columns", reading(lambda t: ["figure", "layerwise_probes", "--input",
                                                            table_file(t, "a,b\n1,2\n"), *FIGURE, "f.pdf"]),
         r"results.csv: lacks the columns"),
    Case("intervention table lacking a column", reading(lambda t: ["table", "blocking", "--input",
                                                                   table_file(t, "a,b\n1,2\n"), *FIGURE, "t"]),
         r"results.csv: lacks '\w+', a column or entry the table blocking reads"),
    Case("BLINK answers lacking a column", reading(lambda t: ["blink-accuracy", "--spec", "{}", "--output", "a.csv",
                                                              table_file(t, "a,b\n1,2\n", "answers.csv")]),
         r"answers.csv: lacks 'model'"),
    Case("key-variance flags not JSON", reading(lambda t: ["masked-probes", "--spec", "{}", "--output", "m.csv",
                                                           "--flags", table_file(t, '{"x":', "flags.json")]),
         r"flags.json: Expecting value"),
    Case("reported numbers not a mapping", reading(lambda t: ["table", "paper_comparison", "--input",
                                                              table_file(t, "- 1\n", "reported.yaml"), *FIGURE, "t"]),
         r"reported.yaml: expected a non-empty list under 'entries'"),
]


# --- The workflow ---------------------------------------------------------------------------------


def workflow_default_config_not_utf8(tmp_path, capsys) -> str:
    project = fresh_copy(tmp_path / "project")
    with open(project / "config" / "config.yaml", "ab") as handle:
        handle.write(b"# caf\xe9\n")
    result = snakemake(["--dry-run", "--cores", "1"], project, timeout=300)
    assert result.returncode != 0
    return result.stdout + result.stderr


WORKFLOW = [Case("the workflow's config not UTF-8", workflow_default_config_not_utf8, r"config/config.yaml: not UTF-8")]


ALL = CONFIG + DATASETS + IMAGES + STORES + DOWNLOADS + PICKLES + RESULTS + WORKFLOW
FIXTURES = {"twins", "pristine", "server", "retry", "monkeypatch"}


@pytest.mark.parametrize("case", ALL, ids=[case.kind for case in ALL])
def test_a_bad_input_is_refused_naming_what_is_wrong(case, tmp_path, capsys, request, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wanted = [name for name in case.run.__code__.co_varnames[: case.run.__code__.co_argcount][2:] if name in FIXTURES]
    message = case.run(tmp_path, capsys, *(request.getfixturevalue(name) for name in wanted))
    if case.names == HANDLED:
        assert message == HANDLED
    else:
        assert re.search(case.names, message), f"{case.kind}: the message names nothing expected:\n{message}"
        assert left_behind(tmp_path) == [], f"{case.kind}: a refused input left output behind"


# What the cases' commands are told to write, and the staging names of downloads and datasets.
OUTPUT_NAMES = {"o.csv", "a.csv", "m.csv", "f.pdf", "t.csv", "t.md", "t.tex", "x"}


def left_behind(root: Path) -> list[str]:
    """Outputs or staging files a refused command left: nothing half-written may look complete."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.name in OUTPUT_NAMES or path.name.endswith((".partial", ".unpacking")))


def test_the_suite_counts_its_kinds():
    assert len({case.kind for case in ALL}) == len(ALL) == 57
    assert sum(case.names == HANDLED for case in ALL) == 1
