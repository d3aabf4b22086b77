"""Job specs longer than one command-line argument may be (128 KiB on Linux) reach their jobs.

A rule's `--spec {params.spec:q}` becomes `--spec @FILE`, a content-addressed copy of the spec, while
the params keep the spec itself, so Snakemake still reruns a job whose spec changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from imagekv.jobspec import JobSpec, read_spec, spec_file

from workflow_runs import failure_details, fresh_copy, jobs_run, snakemake

MAX_ARG_STRLEN = 32 * 4096  # linux/binfmts.h: the longest single argument execve accepts


def test_a_job_spec_formats_as_a_file_holding_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = json.dumps({"prefix": "é" * 10})
    argument = f"{JobSpec(text)}"
    assert argument.startswith("@.snakemake/imagekv_specs/") and read_spec(argument) == text
    assert str(JobSpec(text)) == text and json.dumps(JobSpec(text)) == json.dumps(text)  # params see the JSON
    assert spec_file(text) == spec_file(text)  # one file per content


@pytest.mark.parametrize(
    "argument, message",
    [("@missing.json", "cannot read the job spec file missing.json"), ("{not json", "--spec: the job spec is not JSON")],
)
def test_a_bad_spec_argument_is_refused_naming_it(tmp_path, argument, message):
    result = subprocess.run(
        [sys.executable, "-m", "imagekv", "synthesize", "--spec", argument, "--output", "out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_spec_over_the_argument_limit_goes_through_a_real_rule(tmp_path, smoke_datasets):
    project = fresh_copy(tmp_path / "project")
    # the preflight's inputs, already synthesized: only the preflight itself runs
    shutil.copytree(smoke_datasets, project / "data" / "synthetic")
    sentence = "Describe the picture and every object in it carefully. "
    prefixes = {f"long{i:02d}": (sentence * 80)[:4000] for i in range(40)}
    assert sum(map(len, prefixes.values())) > MAX_ARG_STRLEN  # the preflight's spec holds every prefix
    (project / "long.yaml").write_text(yaml.safe_dump({"prefixes": prefixes}))
    config = ["--configfile", "config/config.yaml", "long.yaml"]
    target = ["--", "results/smoke/preflight.json"]

    result = snakemake(["--cores", "1", *config, *target], project)
    assert result.returncode == 0, failure_details(result)
    assert jobs_run(result) == {"preflight": 1}
    assert "Argument list too long" not in (project / "logs/smoke/preflight.log").read_text()
    spec_files = list((project / ".snakemake/imagekv_specs").glob("*.json"))
    assert max(len(path.read_bytes()) for path in spec_files) > MAX_ARG_STRLEN

    prefixes["long07"] = prefixes["long07"][:-1] + "!"  # the params hold the spec: a change reruns the job
    (project / "long.yaml").write_text(yaml.safe_dump({"prefixes": prefixes}))
    dry = snakemake(["-n", "--cores", "1", *config, *target], project)
    assert dry.returncode == 0 and "Params have changed since last execution" in dry.stdout + dry.stderr, (
        failure_details(dry)
    )
