"""`python -m imagekv <command>`: the one entry point every Snakemake rule calls.

Each command takes the job's spec as canonical JSON (written by imagekv.plan) plus its input and
output paths, and hands over to the module that does the work.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
from pathlib import Path


FIGURES = {
    "layerwise_probes": "imagekv.figures.layerwise",
    "task_curves": "imagekv.figures.task_curves",
    "qualitative_examples": "imagekv.figures.qualitative",
    "key_variance": "imagekv.figures.key_variance",
    "key_variance_maps": "imagekv.figures.key_variance_maps",
    "artifact_tokens": "imagekv.figures.artifact_tokens",
    "prefix_probes": "imagekv.figures.prefix_probes",
    "correlation": "imagekv.figures.correlation",
    "controls": "imagekv.figures.controls",
}
TABLES = {
    "best_layers": "imagekv.tables.best_layers",
    "paper_comparison": "imagekv.tables.paper_comparison",
    "artifact_masking": "imagekv.tables.artifact_masking",
    "blocking": "imagekv.tables.blocking",
    "prefix_gains": "imagekv.tables.prefix_gains",
    "not_surfaced": "imagekv.tables.not_surfaced",
    "correlation": "imagekv.tables.correlation",
    "controls": "imagekv.tables.controls",
}


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def synthesize(args: argparse.Namespace) -> None:
    from imagekv.datasets.synthetic import write_synthetic

    spec = json.loads(args.spec)
    write_synthetic(spec["dataset"], Path(args.output), spec["cfg"], spec["seed"])


def download(args: argparse.Namespace) -> None:
    from imagekv.datasets.download import fetch_dataset

    spec = json.loads(args.spec)
    fetch_dataset(spec["dataset"], Path(args.output), user_files=spec["user_files"], require_pin=args.verify_lock)


def check_dataset(args: argparse.Namespace) -> None:
    from imagekv.datasets import check_dataset as check
    from imagekv.io import write_json

    spec = json.loads(args.spec)
    write_json(Path(args.output), check(spec["dataset"], Path(spec["root"]), spec["cfg"]))


def preflight(args: argparse.Namespace) -> None:
    """Check every prompt of a run on CPU before any GPU job (imagekv.preflight); exit 1 naming each problem."""
    from imagekv.config import check_config_file, validate_config
    from imagekv.io import write_json
    from imagekv.preflight import PreflightError, preflight as check, summary_lines

    if (args.configfile is None) == (args.spec is None):
        raise SystemExit("preflight takes --configfile FILE or --spec JSON (the run's config), not both")
    if args.spec:
        config = json.loads(args.spec)  # plan.preflight_spec of a validated config
    else:
        config = check_config_file(args.configfile)
        validate_config(config)
    _limit_threads(args.threads)
    try:
        report = check(config, Path(args.local_files) if args.local_files else None)
    except PreflightError as error:
        raise SystemExit(str(error)) from None
    print("\n".join(summary_lines(report)), flush=True)
    if args.output:
        write_json(Path(args.output), report)


def check_config(args: argparse.Namespace) -> None:
    """Read config files as Snakemake merges them (`--configfile A B`: B's keys over A's), strictly
    (UTF-8, no duplicate keys), and validate the result: Snakemake reads a --configfile itself, before
    the workflow starts, and its error for a file that is not UTF-8 names no file."""
    from imagekv.config import check_config_file, merge_configs, validate_config

    config = merge_configs([check_config_file(path) for path in args.files])
    validate_config(config)
    print(f"{' + '.join(args.files)}: a valid config")


def extract(args: argparse.Namespace) -> None:
    from imagekv.extract import extract_store

    _limit_threads(args.threads)
    extract_store(json.loads(args.spec), Path(args.output))


def probe(args: argparse.Namespace) -> None:
    from imagekv.datasets import load_dataset
    from imagekv.features import FeatureStore
    from imagekv.probes import run_probe
    from imagekv.results import tidy_rows, write_results

    _limit_threads(args.threads)
    spec = json.loads(args.spec)
    dataset = load_dataset(spec["dataset"], Path(spec["dataset_root"]), spec["dataset_cfg"])
    store = FeatureStore(Path(args.features))
    features = store.view(spec["stored"])
    rows = run_probe(spec["task"], dataset.samples(), features, spec["params"], split_seed=spec["split_seed"],
                     held_out=True)
    write_results(tidy_rows(spec, rows, grid=store.grid_label()), args.output)


def examples(args: argparse.Namespace) -> None:
    from imagekv.qualitative import write_examples

    _limit_threads(args.threads)
    write_examples(json.loads(args.spec), Path(args.probes), Path(args.output))


def collect(args: argparse.Namespace) -> None:
    from imagekv.results import collect as collect_results

    collect_results(args.inputs, args.output)


def key_variance(args: argparse.Namespace) -> None:
    from imagekv.interventions.key_variance_run import key_variance as run

    run(json.loads(args.spec), Path(args.features), Path(args.output_json), Path(args.output_csv))


def masked_probes(args: argparse.Namespace) -> None:
    from imagekv.interventions.masked_probes import masked_probes as run

    _limit_threads(args.threads)
    run(json.loads(args.spec), Path(args.flags), Path(args.output))


def prefix_probes(args: argparse.Namespace) -> None:
    from imagekv.interventions.prefix import prefix_probes as run

    _limit_threads(args.threads)
    run(json.loads(args.spec), Path(args.output), Path(args.units))


def prefix_gains(args: argparse.Namespace) -> None:
    from imagekv.interventions.prefix import prefix_gains as run

    run(json.loads(args.spec), args.inputs, Path(args.output))


def blink_answers(args: argparse.Namespace) -> None:
    from imagekv.interventions.blink_run import blink_answers as run

    _limit_threads(args.threads)
    run(json.loads(args.spec), Path(args.flags) if args.flags else None, Path(args.output))


def blink_accuracy(args: argparse.Namespace) -> None:
    from imagekv.interventions.blink_accuracy import blink_accuracy as run

    with _naming_inputs(args.inputs, "blink-accuracy"):
        run(json.loads(args.spec), args.inputs, Path(args.output))


def not_surfaced(args: argparse.Namespace) -> None:
    from imagekv.interventions.not_surfaced_run import not_surfaced as run

    run(json.loads(args.spec), Path(args.output))


def correlation(args: argparse.Namespace) -> None:
    from imagekv.interventions.correlation_run import correlation as run

    run(json.loads(args.spec), [Path(p) for p in args.probes], Path(args.accuracy), Path(args.output))


def controls(args: argparse.Namespace) -> None:
    from imagekv.interventions.controls import controls as run

    run(json.loads(args.spec), [Path(p) for p in args.flags], Path(args.accuracy), Path(args.output),
        [Path(p) for p in args.probes], Path(args.not_surfaced), Path(args.prefix_gains), Path(args.correlation))


def concat(args: argparse.Namespace) -> None:
    from imagekv.results import concat_tables

    concat_tables(args.inputs, args.output, args.sort.split(","))


def figure(args: argparse.Namespace) -> None:
    options = _options(args.option)
    with _naming_inputs([args.input], f"figure {args.name}"):
        importlib.import_module(FIGURES[args.name]).plot(args.input, args.output, args.run, args.scale, **options)


def table(args: argparse.Namespace) -> None:
    options = _options(args.option)
    with _naming_inputs([args.input], f"table {args.name}"):
        importlib.import_module(TABLES[args.name]).write(args.input, args.output, args.run, args.scale, **options)


@contextlib.contextmanager
def _naming_inputs(inputs: list[str], reader: str):
    """A KeyError while reading result tables is a column or entry an input lacks: say which inputs."""
    try:
        yield
    except KeyError as error:
        raise SystemExit(
            f"{', '.join(map(str, inputs))}: lacks {error}, a column or entry the {reader} reads "
            "(an input from another version of the workflow, or edited?)"
        ) from error


def _options(pairs: list[str]) -> dict[str, str]:
    """`--option KEY=VALUE` pairs: extra keyword arguments of one figure or table (e.g. task=coseg)."""
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        raise SystemExit(f"--option takes KEY=VALUE, got {bad}")
    return dict(pair.split("=", 1) for pair in pairs)


def _spec(value: str) -> str:
    """`--spec JSON` or `--spec @FILE` (what the workflow's rules pass: imagekv.jobspec)."""
    from imagekv.jobspec import read_spec

    try:
        return read_spec(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagekv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, handler, *, spec=True, threads=False):
        sub = commands.add_parser(name)
        sub.set_defaults(handler=handler)
        if spec:
            sub.add_argument("--spec", required=True, type=_spec, help="the job spec as JSON, or @FILE holding it")
        if threads:
            sub.add_argument("--threads", type=int, default=1)
        return sub

    command("synthesize", synthesize).add_argument("--output", required=True)
    sub = command("download", download)
    sub.add_argument("--output", required=True)
    sub.add_argument("--verify-lock", action="store_true", default=os.environ.get("IMAGEKV_VERIFY_LOCK") == "1",
                     help="refuse any file with neither a publisher checksum nor a pin in config/datasets.lock.json "
                     "(default on when IMAGEKV_VERIFY_LOCK=1, which reaches the workflow's download jobs)")
    command("check-dataset", check_dataset).add_argument("--output", required=True, help="the check's record (JSON)")
    sub = command("preflight", preflight, spec=False, threads=True)
    sub.add_argument("--configfile", help="the run's config file (e.g. config/paper.yaml)")
    sub.add_argument("--spec", type=_spec, help="the run's config as JSON or @FILE (what the workflow rule passes)")
    sub.add_argument("--local-files", help="offline: DIR/<model name>/ holds each checkpoint's non-weight files")
    sub.add_argument("--output", help="the report (JSON)")
    sub = command("check-config", check_config, spec=False)
    sub.add_argument("files", nargs="+", help="config files, in --configfile order")
    sub = command("extract", extract, threads=True)
    sub.add_argument("--output", required=True, help="the feature store's folder")
    sub = command("probe", probe, threads=True)
    sub.add_argument("--features", required=True)
    sub.add_argument("--output", required=True)
    sub = command("examples", examples, threads=True)
    sub.add_argument("--probes", required=True, help="the collected probe results")
    sub.add_argument("--output", required=True, help="examples.npz (examples.json beside it)")
    sub = command("collect", collect, spec=False)
    sub.add_argument("--output", required=True)
    sub.add_argument("inputs", nargs="+")
    sub = command("key-variance", key_variance)
    sub.add_argument("--features", required=True, help="the fixed-layout feature store of the image pool")
    sub.add_argument("--output-json", required=True)
    sub.add_argument("--output-csv", required=True)
    sub = command("masked-probes", masked_probes, threads=True)
    sub.add_argument("--flags", required=True, help="the model's key_variance.json")
    sub.add_argument("--output", required=True)
    sub = command("prefix-probes", prefix_probes, threads=True)
    sub.add_argument("--output", required=True, help="the tidy rows of every E5 condition")
    sub.add_argument("--units", required=True, help="the headline metric per unit and layer")
    sub = command("prefix-gains", prefix_gains)
    sub.add_argument("--output", required=True)
    sub.add_argument("inputs", nargs="+", help="prefix_units.csv of each model")
    sub = command("blink-answers", blink_answers, threads=True)
    sub.add_argument("--flags", help="the model's key_variance.json (needed to block)")
    sub.add_argument("--output", required=True)
    sub = command("blink-accuracy", blink_accuracy)
    sub.add_argument("--output", required=True)
    sub.add_argument("inputs", nargs="+", help="blink_answers.csv of each model")
    command("not-surfaced", not_surfaced).add_argument("--output", required=True)
    sub = command("correlation", correlation)
    sub.add_argument("--probes", required=True, nargs="+", help="the MLMs' projection and value probe results")
    sub.add_argument("--accuracy", required=True, help="the collected BLINK accuracy")
    sub.add_argument("--output", required=True)
    sub = command("controls", controls)
    sub.add_argument("--flags", required=True, nargs="+", help="key_variance.json of each planted model")
    sub.add_argument("--accuracy", required=True, help="the collected BLINK accuracy")
    sub.add_argument("--probes", required=True, nargs="+", help="probe results of the controls' tasks")
    sub.add_argument("--output", required=True)
    sub.add_argument("--not-surfaced", required=True, help="E6's not_surfaced.csv")
    sub.add_argument("--prefix-gains", required=True, help="E5's prefix_gains.csv")
    sub.add_argument("--correlation", required=True, help="E2's correlation.json")
    sub = command("concat", concat, spec=False)
    sub.add_argument("--output", required=True)
    sub.add_argument("--sort", required=True, help="comma-separated columns to sort the rows by")
    sub.add_argument("inputs", nargs="+")
    for name, handler, choices in (("figure", figure, FIGURES), ("table", table, TABLES)):
        sub = command(name, handler, spec=False)
        sub.add_argument("name", choices=sorted(choices))
        sub.add_argument("--input", required=True, help="tidy result table")
        sub.add_argument("--run", required=True)
        sub.add_argument("--scale", required=True, choices=["smoke", "paper"])
        sub.add_argument("--output", required=True, nargs="+" if name == "figure" else None)
        sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="passed to the module")
    return parser


def main(argv: list[str] | None = None) -> None:
    # Fixed thread counts in the math libraries (set before torch loads them): a library that
    # lowers its threads under load sums in another order, and outputs would differ in the last bit.
    for variable in ("MKL_DYNAMIC", "OMP_DYNAMIC"):
        os.environ.setdefault(variable, "FALSE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    args.handler(args)
