import shlex
import sys
from pathlib import Path

# All logic lives in the imagekv package (src/): importable here, and in every rule's shell
# whichever environment runs it (the project venv, or a per-rule conda env with --use-conda).
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
# (Braces are doubled because Snakemake formats the prefix like a shell command.)
shell.prefix(
    "export PYTHONPATH=" + shlex.quote(SRC) + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

from imagekv import plan
from imagekv.config import canonical_json, check_config_file, validate_config
from imagekv.jobspec import JobSpec

# Snakemake's own reader keeps the last of duplicate keys.
for path in workflow.configfiles:
    check_config_file(path)
validate_config(config)

RUN = config["run"]
BACKBONES = plan.backbones(config)
TASKS = plan.tasks(config)
PREFIXES = sorted(config["prefixes"])
NAME = r"[a-z0-9_]+"


wildcard_constraints:
    run=RUN,
    backbone="|".join(BACKBONES),
    dataset="|".join(config["datasets"]),
    prefix="|".join(PREFIXES),
    representation=NAME,
    figure=NAME,
    table=NAME,


# Threads of a job that runs a model (feature extraction, BLINK answers). A smoke job's tiny twin
# spends most of its time starting up (imports, tokenizer, model construction: one thread), so two
# one-thread jobs side by side finish sooner than one job on two threads, and on a busy machine two
# threads cost several times the CPU (a smoke BLINK job: 52 CPU-s on two, 13 on one, at load 5);
# a paper-scale job computes, on two. Outputs do not depend on it (stores:
# tests/test_reproducible_extraction.py; the smoke run's BLINK answers: the same bytes on one and two).
MODEL_THREADS = 1 if config["scale"] == "smoke" else 2


def as_json(spec):
    """A job's spec as one canonical JSON string: Snakemake reruns the job when it changes. In a
    shell command, `{params.spec:q}` becomes `@FILE` (a content-addressed copy), which `--spec` reads:
    a long spec would exceed the 128 KiB limit on one argument (imagekv.jobspec). Give it as a
    function (`spec=lambda wc: as_json(...)`): Snakemake copies a plain string param into a str.
    """
    return JobSpec(canonical_json(spec))


def dataset_input(wildcards):
    return plan.dataset_input(config, wildcards.dataset)


# Every figure and table file stem the run produces (tests compare this list with the outputs).
FIGURES = ["layerwise_probes"] + [f"task_curves_{task}" for task in TASKS]
if plan.qualitative_spec(config):
    FIGURES.append("qualitative_examples")
TABLES = ["best_layers", "paper_comparison"]
if plan.interventions(config):
    FIGURES += ["key_variance", "prefix_probes", "correlation"]
    FIGURES += [f"key_variance_maps_{model}" for model in sorted(config["models"])]
    FIGURES += [f"artifact_tokens_{model}" for model in sorted(config["models"])]
    TABLES += [
        "artifact_masking",
        "blocking",
        "prefix_gains",
        "not_surfaced",
        "correlation",
    ]


def figure_targets():
    return expand(
        "figures/{run}/{figure}.{ext}", run=RUN, figure=FIGURES, ext=["pdf", "png"]
    )


def table_targets():
    return expand(
        "paper_tables/{run}/{table}.{ext}",
        run=RUN,
        table=TABLES,
        ext=["csv", "md", "tex"],
    )


def final_targets():
    return figure_targets() + table_targets()
