"""The workflow as a user runs it: lint, format, both configs' DAGs, and the smoke run end to end."""

import pytest
import yaml

from workflow_runs import (  # noqa: F401
    BIN,
    ROOT,
    failure_details,
    fresh_copy,
    jobs_run,
    run_tool,
    snakemake,
    tool_env,
)


def test_lint_is_clean():
    result = snakemake(["--lint"], ROOT, timeout=120)
    assert result.returncode == 0, failure_details(result)


def test_snakefmt_is_clean():
    result = run_tool([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/"], ROOT)
    assert result.returncode == 0, failure_details(result)


def test_paper_run_downloads_real_data_and_takes_nothing_from_the_smoke_config(tmp_path):
    result = snakemake(
        ["--dry-run", "--printshellcmds", "--configfile", "config/paper.yaml"], fresh_copy(tmp_path / "project"), timeout=120
    )
    assert result.returncode == 0, failure_details(result)
    jobs = jobs_run(result)
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    assert jobs["download_dataset"] == len(paper["datasets"]) and "synthesize_dataset" not in jobs
    assert "results/paper/" in result.stdout and "results/smoke/" not in result.stdout
    assert '"source":"tiny"' not in result.stdout and '"source":"synthetic"' not in result.stdout


def test_a_wrong_config_key_stops_the_run_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config" / "config.yaml").read_text().replace("batch_size: 4", "batch_sise: 4"))
    result = snakemake(["--dry-run", "--configfile", str(bad)], ROOT, timeout=120)
    assert result.returncode != 0
    assert "extraction.batch_sise: unknown key" in result.stdout + result.stderr


@pytest.mark.slow
def test_smoke_run_writes_figures_and_tables_stamped_smoke(reference_run):
    project, _ = reference_run
    figures = {p.name for p in (project / "figures" / "smoke").iterdir()}
    tables = {p.name for p in (project / "paper_tables" / "smoke").iterdir()}
    assert {"layerwise_probes.png", "layerwise_probes.pdf"} <= figures
    assert {"best_layers.csv", "best_layers.md", "best_layers.tex"} <= tables
    assert "smoke scale" in (project / "paper_tables" / "smoke" / "best_layers.md").read_text()


@pytest.mark.slow
def test_second_run_has_nothing_to_do(reference_run):
    project, _ = reference_run
    result = snakemake(["--cores", "all", "--dry-run"], project, timeout=120)
    assert result.returncode == 0, failure_details(result)
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_report_builds(reference_report):
    report, _ = reference_report
    assert report.stat().st_size > 10_000


@pytest.mark.slow
def test_extraction_is_taken_from_the_between_workflow_cache(tmp_path):
    """A second clone with the same spec and data takes the feature store from the shared cache
    instead of running the extraction job."""
    target = "results/smoke/oracle/pascal5i/features/none"
    (tmp_path / "cache").mkdir()
    env = {**tool_env(), "SNAKEMAKE_OUTPUT_CACHE": str(tmp_path / "cache")}
    projects = [fresh_copy(tmp_path / name) for name in ("first", "second")]
    for project in projects:
        result = snakemake([target, "--cores", "all", "--cache"], project, env=env, timeout=300)
        assert result.returncode == 0, failure_details(result)
    first, second = projects
    log = "logs/smoke/extract/oracle/pascal5i/none.log"
    assert (first / log).stat().st_size > 0 and (second / log).stat().st_size == 0  # the job never ran
    stored = sorted(path.relative_to(first / target) for path in (first / target).rglob("*") if path.is_file())
    assert len(stored) >= 3  # manifest, shards/spec.json, a shard
    for path in stored:  # the second clone's outputs are links into the cache: read through them
        assert (second / target / path).read_bytes() == (first / target / path).read_bytes(), path
