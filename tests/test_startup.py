"""What a job imports and builds before its work: most of a smoke job's time (issue 19).

Figure and table jobs never import torch or transformers; a calibration or SigLIP extraction never
imports the MLM adapters; the composed tokenizers are cached on disk, identical to a fresh build."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imagekv.cli import FIGURES, TABLES
from imagekv.models import published
from imagekv.models.registry import BACKBONE_MODULES, backbone_names
from workflow_runs import tool_env

HEAVY = ("torch", "transformers", "sklearn")
PLOTTING = ("matplotlib", "seaborn", "scipy")


def modules_loaded_by(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The `heavy` modules a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([name for name in {heavy!r} if name in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", probe], env=tool_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_figure_and_table_jobs_never_import_torch():
    imports = "\n".join(f"import {module}" for module in sorted({*FIGURES.values(), *TABLES.values()}))
    assert modules_loaded_by(imports) == []


def test_table_jobs_never_import_the_plotting_libraries():
    imports = "\n".join(f"import {module}" for module in sorted(set(TABLES.values())))
    assert modules_loaded_by(imports, PLOTTING) == []


def test_the_snakefile_imports_neither_torch_nor_the_plotting_libraries():
    # What workflow/rules/*.smk import: every Snakemake run, a no-op too, parses them first.
    imports = "import imagekv.plan, imagekv.config, imagekv.jobspec, imagekv.tables.paper_comparison"
    assert modules_loaded_by(imports, HEAVY + PLOTTING) == []


def test_scoring_blink_answers_imports_neither_torch_nor_transformers():
    assert modules_loaded_by("import imagekv.interventions.blink_accuracy") == []
    assert "transformers" not in modules_loaded_by("import imagekv.interventions.not_surfaced_run")


def test_a_calibration_backbone_is_built_without_the_mlm_adapters():
    code = "import sys\nfrom imagekv.models.registry import backbone_class\nbackbone_class('oracle')\n" \
           "assert 'imagekv.models.vlm' not in sys.modules, 'the MLM adapters were imported'"
    assert "sklearn" not in modules_loaded_by(code)


def test_every_registered_backbone_is_named_with_its_module():
    assert backbone_names() == sorted(BACKBONE_MODULES)


@pytest.mark.parametrize("model", published.MODELS)
def test_cached_tokenizer_is_the_composed_one(model, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEKV_CACHE", str(tmp_path))
    config = published.published_file(model, "tokenizer_config.json")
    cached = published._composed_tokenizer_file(model, config)
    assert cached.parent == tmp_path / "tokenizers"
    assert cached.read_text(encoding="utf-8") == published._compose_tokenizer(model, config)
    assert published._composed_tokenizer_file(model, config) == cached  # reused, not rebuilt
    changed = published._composed_tokenizer_file(model, {**config, "model_max_length": 7})
    assert changed != cached  # any change to what it is made from makes a new file
