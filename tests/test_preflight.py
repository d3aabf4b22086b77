"""The preflight through its real entry point, `python -m imagekv preflight`: it passes on a folder
holding each checkpoint's real non-weight files (the committed copies, as the hub names them, with the
real tokenizer.json the pinned packages give, as imagekv.models.published builds it) and fails naming
the checkpoint, the file and the item on a template without an image placeholder, on a context
overflow and on a changed config field. (The smoke config's preflight runs in the smoke workflow.)"""

import copy
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from imagekv.models.published import CHECKPOINTS, MODELS, published_tokenizer
from smoke_config import SMOKE_CONFIG
from workflow_runs import tool_env


@pytest.fixture(scope="module")
def project(tmp_path_factory, smoke_datasets):
    """A folder holding the smoke run's synthetic datasets (what the preflight reads image sizes from)."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(smoke_datasets, root / "data" / "synthetic")
    return root


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    """DIR/<model>/: the committed non-weight files plus the real tokenizer.json."""
    root = tmp_path_factory.mktemp("checkpoints")
    for model in MODELS:
        shutil.copytree(CHECKPOINTS / model, root / model, ignore=shutil.ignore_patterns("*.md"))
        saved = tmp_path_factory.mktemp(f"{model}_tokenizer")
        published_tokenizer(model).save_pretrained(saved)
        shutil.copy(saved / "tokenizer.json", root / model / "tokenizer.json")
    return root


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "imagekv", *args], cwd=cwd, env=tool_env(), capture_output=True,
                          text=True, timeout=900)


def hub_config(tmp_path, models=MODELS, **changes):
    """The smoke config with the real checkpoints instead of the twins."""
    config = copy.deepcopy(SMOKE_CONFIG)
    config["models"] = {name: {**config["models"][name], "source": "hub"} for name in models}
    for key, value in changes.items():
        config[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def preflight(project, config, files, output=None):
    args = ["preflight", "--configfile", str(config), "--local-files", str(files)]
    return run(args + (["--output", str(output)] if output else []), project)


def test_passes_on_the_real_non_weight_files_and_reports_forwards_and_time(project, real_files, tmp_path):
    report_path = tmp_path / "preflight.json"
    result = preflight(project, hub_config(tmp_path), real_files, report_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "preflight passed" in result.stdout
    report = json.loads(report_path.read_text())
    assert set(report["models"]) == set(MODELS)
    for model, entry in report["models"].items():
        assert entry["differences"] == [] and entry["files"] == str(real_files / model)
        assert entry["forwards"]["extraction"] > 0 and entry["forwards"]["blink"] > 0
        assert 0 < entry["longest_sequence"]["tokens"] <= entry["context"]
        assert f"{model}: " in result.stdout and "GPU hours" in result.stdout
    # Qwen2.5-VL's own answers (E2, E6) are asked again at native resolution, unblocked only
    assert report["models"]["qwen2_5_vl"]["forwards"]["blink_own_answers"] > 0
    assert "blink_own_answers" not in report["models"]["llava_next"]["forwards"]
    # the real geometry: LLaVA-NeXT's 24x24 base view plus its anyres map, over 8,192 positions
    assert report["models"]["llava_next"]["context"] == 8192


def changed_copy(real_files, tmp_path, model, changes):
    """A copy of the files with each `filename: change(content)` of `changes` applied to `model`'s."""
    files = tmp_path / "files"
    shutil.copytree(real_files, files)
    for filename, change in changes.items():
        path = files / model / filename
        content = json.loads(path.read_text())
        change(content)
        path.write_text(json.dumps(content))
    return files


def test_fails_on_a_template_without_an_image_placeholder(project, real_files, tmp_path):
    def text_only(content):
        content["chat_template"] = (
            "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
            "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
            "{% endfor %}<|eot_id|>{% endfor %}"
        )

    files = changed_copy(real_files, tmp_path, "llava_next", {"chat_template.json": text_only})
    result = preflight(project, hub_config(tmp_path, ["llava_next"]), files)
    assert result.returncode != 0
    message = result.stderr
    assert f"llava_next: chat template ({files / 'llava_next' / 'chat_template.json'})" in message
    assert "without the image placeholder '<image>'" in message
    assert "llava_next: chat_template.json: field chat_template" in message  # and the difference itself


def test_fails_on_a_context_overflow_naming_the_item(project, real_files, tmp_path):
    long_prefix = "\U0001d538" * 4000  # within the 4,096 characters a prefix may hold; 3 Llama-3 tokens each
    config = hub_config(tmp_path, ["llava_next"], prefixes={**SMOKE_CONFIG["prefixes"], "task": long_prefix})
    result = preflight(project, config, real_files)
    assert result.returncode != 0
    assert re.search(r"llava_next: extraction imagenet_s/task: \d+ image\(s\) of \d+x\d+ px: \d+ tokens", result.stderr)
    assert "beyond the context of 8192" in result.stderr
    assert "extraction imagenet_s/none" not in result.stderr  # only the prompts that overflow


def test_fails_on_a_changed_config_field_and_a_changed_special_token_id(project, real_files, tmp_path):
    def other_layer(content):
        content["vision_feature_layer"] = -1

    def other_pad_id(content):
        content["added_tokens_decoder"]["128300"] = content["added_tokens_decoder"].pop("128257")

    changes = {"config.json": other_layer, "tokenizer_config.json": other_pad_id}
    files = changed_copy(real_files, tmp_path, "llava_next", changes)
    result = preflight(project, hub_config(tmp_path, ["llava_next"]), files)
    assert result.returncode != 0
    assert "llava_next: config.json: field vision_feature_layer: committed -2, checkpoint -1" in result.stderr
    assert "llava_next: tokenizer_config.json: field added_tokens_decoder.128257: missing" in result.stderr


def test_names_the_missing_folder_of_a_checkpoint(project, tmp_path):
    result = preflight(project, hub_config(tmp_path, ["llava_next"]), tmp_path / "nothing")
    assert result.returncode != 0
    assert f"llava_next: {tmp_path / 'nothing' / 'llava_next'} holds no config.json" in result.stderr
