"""The CPU preflight of a run (issue 14, point 6): every prompt checked before any GPU time.

For each MLM of the config it gets the checkpoint's non-weight files (downloaded at the pinned
revision, read from `--local-files DIR/<model name>/`, or for `source: tiny` the committed copies),
reports every difference from the committed copies (src/imagekv/models/checkpoints/<model>/) by file
and field, and builds the processor the run builds (AutoProcessor) with the model on the meta device
(config only, no weights). Then it builds every prompt the run uses: each extraction job's image
prompt with its prefix and its text queries (E5 per-item stores: each query's own prompt, the
query after the image), every BLINK question in the model's multi-image form,
and checks that the template renders an image placeholder, that the processor's image-token count of
every image size matches what the model config implies (imagekv.models.anyres; Qwen2.5-VL's merged
28 px cells), that every grid is the one the config asks for, and that every sequence fits the
context. It fails naming the checkpoint, the file or prompt, and the item; otherwise it prints and
writes, per model, the forwards, tokens and a projected GPU time.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaOnevisionProcessor, PretrainedConfig, ProcessorMixin
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from imagekv import plan
from imagekv.datasets import load_dataset
from imagekv.models.anyres import AnyresGeometry
from imagekv.models.prompts import image_prompt, image_query_prompt, processor_inputs, text_ids, text_prompt
from imagekv.models.published import CHECKPOINTS
from imagekv.prefixes import prefix_items

log = logging.getLogger(__name__)

# The files a checkpoint publishes beside its weights, as the hub names them (no *.safetensors/*.bin).
NON_WEIGHT_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.json", "chat_template.jinja",
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
)
# Projected GPU time (config key preflight.tokens_per_second overrides it). Assumption: one H100 SXM,
# a 7-8B LM in bfloat16, batch-1 prefill of prompts of ~1-5k tokens at ~12 % of the 989 TFLOPS dense
# bf16 peak (2 x 7.6e9 FLOPs per token -> 8,000 tokens/s); the vision tower is not counted. A greedy
# decoding step (BLINK cross-check) is memory-bound: ~15 GB of weights read at 3.35 TB/s plus Python
# overhead, taken as 30 ms.
DEFAULT_TOKENS_PER_SECOND = 8000
DECODE_STEP_SECONDS = 0.03
MAX_PROBLEMS_SHOWN = 30  # per model
UNLIMITED = 10**12  # tokenizers without a model_max_length report ~1e30


class PreflightError(RuntimeError):
    """Every problem found, each naming the checkpoint, the file or prompt, and the item."""


@dataclass
class ModelReport:
    model: str
    checkpoint: str
    files: str  # where the non-weight files came from
    context: int
    differences: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    forwards: Counter = field(default_factory=Counter)  # per stage
    tokens: Counter = field(default_factory=Counter)
    decode_steps: int = 0
    longest: tuple[int, str] = (0, "")

    def count(self, stage: str, length: int, item: str, times: int = 1) -> None:
        """`times` forwards of `length` tokens; one that overflows the context is a problem."""
        self.forwards[stage] += times
        self.tokens[stage] += length * times
        if length > self.longest[0]:
            self.longest = (length, item)
        if length > self.context:
            self.problems.append(f"{self.model}: {item}: {length} tokens, beyond the context of {self.context}")

    def summary(self, tokens_per_second: float) -> dict:
        seconds = sum(self.tokens.values()) / tokens_per_second + self.decode_steps * DECODE_STEP_SECONDS
        return {
            "checkpoint": self.checkpoint, "files": self.files, "context": self.context,
            "forwards": dict(sorted(self.forwards.items())), "tokens": dict(sorted(self.tokens.items())),
            "decode_steps": self.decode_steps, "longest_sequence": {"tokens": self.longest[0], "item": self.longest[1]},
            "gpu_hours": round(seconds / 3600, 3), "differences": self.differences,
        }


# --- the non-weight files ----------------------------------------------------------------------------


def checkpoint_files(model: str, cfg: dict, local_files: Path | None) -> Path:
    """The folder holding `model`'s non-weight files: DIR/<model name>/ when given, else a download
    of exactly those files at the pinned revision (huggingface_hub's cache)."""
    if local_files is not None:
        folder = Path(local_files) / model
        if not (folder / "config.json").is_file():
            raise PreflightError(
                f"{model}: {folder} holds no config.json; --local-files DIR needs one folder per model named as "
                f"in the config (e.g. {Path(local_files) / model}), files named as on the hub"
            )
        return folder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(cfg["checkpoint"], revision=cfg["revision"], allow_patterns=list(NON_WEIGHT_FILES)))


def file_differences(model: str, folder: Path, config: PretrainedConfig) -> list[str]:
    """Every committed field of CHECKPOINTS/<model>/ whose value the checkpoint's files do not hold.
    config.json is compared with the loaded config (hub files may leave defaults out); the chat
    template may be published as chat_template.jinja."""
    differences = []
    for committed in sorted((CHECKPOINTS / model).glob("*.json")):
        expected = json.loads(committed.read_text())
        actual = _published_json(folder, committed.name, config)
        if actual is None:
            differences.append(f"{model}: {committed.name}: missing from {folder}")
            continue
        differences += [f"{model}: {committed.name}: {line}" for line in _field_differences(expected, actual)]
    return differences


def token_differences(model: str, processor: ProcessorMixin) -> list[str]:
    """Every committed added token (tokenizer_config.json) that the checkpoint's tokenizer (its
    tokenizer.json) does not give the committed id."""
    committed = json.loads((CHECKPOINTS / model / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    tokenizer = processor.tokenizer
    ids = {index: tokenizer.convert_tokens_to_ids(token["content"]) for index, token in committed.items()}
    return [
        f"{model}: tokenizer.json: token {committed[index]['content']!r} has id {actual}, committed {index}"
        for index, actual in ids.items()
        if actual != int(index)
    ]


def _published_json(folder: Path, name: str, config: PretrainedConfig) -> dict | None:
    if name == "config.json":
        return config.to_dict()
    if (folder / name).is_file():
        return json.loads((folder / name).read_text())
    if name == "chat_template.json" and (folder / "chat_template.jinja").is_file():
        return {"chat_template": (folder / "chat_template.jinja").read_text()}
    return None


def _field_differences(expected, actual, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key, value in expected.items():
            where = f"{path}.{key}" if path else key
            out += [f"field {where}: missing"] if key not in actual else _field_differences(value, actual[key], where)
        return out
    if isinstance(expected, list) and isinstance(actual, (list, tuple)):
        actual = [list(a) if isinstance(a, tuple) else a for a in actual]
    if expected != actual:
        return [f"field {path}: committed {_shown(expected)}, checkpoint {_shown(actual)}"]
    return []


def _shown(value) -> str:
    """A value for a message: a long text (a chat template) by its length only."""
    if isinstance(value, str) and len(value) >= 80:
        return f"{len(value)} chars"
    return json.dumps(value)[:200]


# --- one model ---------------------------------------------------------------------------------------


@dataclass
class ModelUnderTest:
    """A backbone built with the model on the meta device: the run's processor and config, no weights."""

    backbone: object
    config: PretrainedConfig

    @property
    def processor(self) -> ProcessorMixin:
        return self.backbone.processor


def run_files(model: str, cfg: dict, folder: Path | None) -> tuple[type, PretrainedConfig, ProcessorMixin]:
    """The backbone class, model config and processor the run builds (the twin's for source: tiny)."""
    from imagekv.models.registry import backbone_class
    from imagekv.models.tiny import tiny_parts

    cls = backbone_class(model)
    if folder is None:
        return cls, *tiny_parts(cls.architecture)
    return cls, cls.model_class.config_class.from_pretrained(folder), AutoProcessor.from_pretrained(folder)


def model_under_test(cls: type, config: PretrainedConfig, processor: ProcessorMixin, cfg: dict) -> ModelUnderTest:
    """The backbone with its model on the meta device; raises ValueError on a config it refuses."""
    with torch.device("meta"):
        network = cls.model_class._from_config(config)
    return ModelUnderTest(cls(network, processor, cfg), config)


def context_length(config: PretrainedConfig, processor: ProcessorMixin) -> int:
    """The longest sequence: the LM's max_position_embeddings, or the tokenizer's model_max_length if shorter."""
    limits = [config.get_text_config().max_position_embeddings, processor.tokenizer.model_max_length]
    return min(int(limit) for limit in limits if limit and limit < UNLIMITED)


class ImageTokens:
    """An image's token count and grid, from the model config, checked against the processor's own count."""

    def __init__(self, tested: ModelUnderTest):
        self.tested, self.backbone, self.processor = tested, tested.backbone, tested.processor
        self.config = tested.config
        self.qwen = not hasattr(self.backbone, "geometry")

    @cache
    def single(self, height: int, width: int) -> tuple[int, tuple[int, int]]:
        """(image tokens, probed grid) of an image alone in its prompt; raises naming the size."""
        expected, grid = self._qwen(height, width) if self.qwen else self._anyres(height, width)
        counted = self.processor._get_num_multimodal_tokens(image_sizes=[[height, width]])["num_image_tokens"][0]
        if counted != expected:
            raise ValueError(f"image of {width}x{height} px: the processor gives {counted} image tokens, "
                             f"the model config implies {expected}")
        return expected, grid

    @cache
    def prepared(self, size: tuple[int, int]) -> Image.Image:
        """A blank image of `size` (width, height) as the backbone hands it to the processor."""
        return self.backbone.prepare_image(Image.new("RGB", size))

    def question(self, sizes: Sequence[tuple[int, int]]) -> list[int]:
        """Image tokens of each image of one multi-image question."""
        if len(sizes) > 1 and isinstance(self.processor, LlavaOnevisionProcessor):
            return [self.backbone.geometry.side ** 2 + 1] * len(sizes)  # base view plus one newline each
        return [self.single(h, w)[0] for h, w in sizes]

    def _anyres(self, height: int, width: int) -> tuple[int, tuple[int, int]]:
        geometry: AnyresGeometry = self.backbone.geometry
        rows, cols = geometry.crop_map_shape(height, width)
        if self.backbone.view == "crops" and (rows < 1 or cols < 1):
            raise ValueError(f"image of {width}x{height} px unpads to an empty {rows}x{cols} crops map")
        grid = (geometry.side, geometry.side) if self.backbone.view == "base" else (rows, cols)
        return geometry.side**2 + rows * (cols + 1), grid

    def _qwen(self, height: int, width: int) -> tuple[int, tuple[int, int]]:
        vision, image_processor = self.config.vision_config, self.processor.image_processor
        cell = vision.patch_size * vision.spatial_merge_size
        bounds = image_processor.size  # pixel counts: shortest_edge = min_pixels, longest_edge = max_pixels
        resized_h, resized_w = smart_resize(height, width, factor=cell, min_pixels=bounds["shortest_edge"],
                                            max_pixels=bounds["longest_edge"])
        grid = (resized_h // cell, resized_w // cell)
        fixed = self.backbone.fixed_grid
        if self.backbone.resolution == "fixed" and grid != (fixed, fixed):
            raise ValueError(
                f"image of {width}x{height} px gives a {grid[0]}x{grid[1]} grid, not the fixed {fixed}x{fixed}"
            )
        return grid[0] * grid[1], grid


def check_model(model: str, config: dict, local_files: Path | None) -> ModelReport:
    cfg = config["models"][model]
    tiny = cfg.get("source", "hub") in ("tiny", "planted")  # a planted twin is the tiny twin plus hooks
    folder = None if tiny else checkpoint_files(model, cfg, local_files)
    cls, model_config, processor = run_files(model, cfg, folder)
    report = ModelReport(model, cfg["checkpoint"], "committed copies (tiny twin)" if tiny else str(folder),
                         context_length(model_config, processor))
    if folder is not None:
        report.differences = file_differences(model, folder, model_config) + token_differences(model, processor)
        report.problems += report.differences
    if processor.image_token_id != model_config.image_token_id:
        report.problems.append(f"{model}: config.json: image_token_id {model_config.image_token_id}, but the "
                               f"processor's image token {processor.image_token!r} is {processor.image_token_id}")
    try:
        image_prompt(processor)
    except ValueError as error:
        report.problems.append(f"{model}: chat template ({_template_file(model, folder)}): {error}")
        return report
    try:
        tested = model_under_test(cls, model_config, processor, cfg)
    except ValueError as error:
        report.problems.append(f"{model}: models.{model} with {folder or 'the twin'}/config.json: {error}")
        return report
    tokens = ImageTokens(tested)
    _check_one_image_end_to_end(report, tested, tokens)
    for dataset, prefix in plan.extraction_jobs(config, model):
        _check_extraction(report, tested, tokens, config, dataset, prefix)
    for dataset, prefix in plan.item_extraction_jobs(config):
        _check_item_extraction(report, tested, tokens, config, dataset, prefix)
    if plan.interventions(config):
        section = plan.interventions(config)["blocking"]
        _check_blink(report, tested, tokens, config, "blink", section["conditions"])
        if model in plan.answer_override_models(config):  # its own answers (E2, E6) in other settings
            own = model_under_test(cls, model_config, processor, plan.answer_cfg(config, model))
            _check_blink(report, own, ImageTokens(own), config, "blink_own_answers", [plan.BASELINE_CONDITION])
    return report


def _template_file(model: str, folder: Path | None) -> str:
    if folder is None:
        return str(CHECKPOINTS / model / "chat_template.json")
    return str(folder / ("chat_template.jinja" if (folder / "chat_template.jinja").is_file() else "chat_template.json"))


def _prompt_length(processor: ProcessorMixin, text: str, image_tokens: Sequence[int]) -> int:
    """Tokens of a rendered prompt once each image placeholder expands to its image tokens."""
    ids = text_ids(processor, text)[0]
    placeholders = int((ids == processor.image_token_id).sum())
    if placeholders != len(image_tokens):
        raise ValueError(f"the rendered prompt holds {placeholders} image placeholders for {len(image_tokens)} images")
    return len(ids) - placeholders + sum(image_tokens)


def _check_one_image_end_to_end(report: ModelReport, tested: ModelUnderTest, tokens: ImageTokens) -> None:
    """The processor's real output for one image equals the arithmetic used for all the others."""
    backbone, processor = tested.backbone, tested.processor
    image = backbone.prepare_image(Image.new("RGB", (640, 480)))
    inputs = processor_inputs(processor, backbone.prompt_text(), [image])  # on CPU, not the meta model's device
    counted = int((inputs["input_ids"][0] == processor.image_token_id).sum())
    expected = tokens.single(image.height, image.width)[0]
    length = _prompt_length(processor, backbone.prompt_text(), [expected])
    if counted != expected or inputs["input_ids"].shape[1] != length:
        report.problems.append(
            f"{report.model}: processor: a {image.width}x{image.height} px image gives {counted} image tokens in a "
            f"{inputs['input_ids'].shape[1]}-token prompt; the model config implies {expected} in {length}")


def image_sizes(paths: Iterable[Path]) -> Counter:
    """(width, height) -> number of images, from each file's header."""
    sizes = Counter()
    for path in paths:
        with Image.open(path) as image:
            sizes[image.size] += 1
    return sizes


def _check_extraction(
    report: ModelReport, tested: ModelUnderTest, tokens: ImageTokens, config: dict, dataset: str, prefix: str
) -> None:
    processor, backbone = tested.processor, tested.backbone
    loaded = _dataset(config, dataset)
    job = f"extraction {dataset}/{prefix}"
    text = backbone.prompt_text(config["prefixes"][prefix])
    for (width, height), count in sorted(_sizes(config, dataset).items()):
        prepared = tokens.prepared((width, height))
        try:
            image_tokens = tokens.single(prepared.height, prepared.width)[0]  # raises on a wrong grid too
        except ValueError as error:
            report.problems.append(f"{report.model}: {job}: {error}")
            continue
        length = _prompt_length(processor, text, [image_tokens])
        report.count("extraction", length, f"{job}: {count} image(s) of {width}x{height} px", times=count)
    for query in loaded.texts() if not config["prefixes"][prefix] else ():  # E5 reads queries with no prefix
        ids = text_ids(processor, text_prompt(processor, query))
        report.count("text_queries", ids.shape[1], f"{job}: text query {query!r}")


def _check_item_extraction(
    report: ModelReport, tested: ModelUnderTest, tokens: ImageTokens, config: dict, dataset: str, prefix: str
) -> None:
    """E5 per-item stores: every query's prompt, its filled prefix, its image, the query after it."""
    processor = tested.processor
    job = f"per-item extraction {dataset}/{prefix}"
    loaded = _dataset(config, dataset)
    paths = {ref.image_id: ref.path for ref in loaded.images()}
    try:
        items = prefix_items(loaded.samples(), config["prefixes"][prefix], dataset)
    except ValueError as error:
        report.problems.append(f"{report.model}: {job}: {error}")
        return
    for key, item in items.items():
        prepared = tokens.prepared(next(iter(image_sizes([paths[item.image_id]]))))
        try:
            image_tokens = tokens.single(prepared.height, prepared.width)[0]
            text = image_query_prompt(processor, item.prefix, item.query)
        except ValueError as error:
            report.problems.append(f"{report.model}: {job}: item {key!r}: {error}")
            continue
        report.count("extraction", _prompt_length(processor, text, [image_tokens]), f"{job}: item {key!r}")


def _check_blink(
    report: ModelReport, tested: ModelUnderTest, tokens: ImageTokens, config: dict, stage: str, conditions: Sequence[str]
) -> None:
    """Every BLINK question as `stage` asks it, once per blocking condition in `conditions`."""
    from imagekv.interventions.multiple_choice import chat_prompt, question_text, tokens_per_image

    section = plan.interventions(config)["blocking"]
    backbone, processor = tested.backbone, tested.processor
    loaded = _dataset(config, section["dataset"])
    paths = {ref.image_id: ref.path for ref in loaded.images()}
    header_sizes = {}
    checked_real = False
    for item in loaded.samples():
        name = f"BLINK {item.item_id}"
        for image_id in item.image_ids:
            if image_id not in header_sizes:
                header_sizes[image_id] = next(iter(image_sizes([paths[image_id]])))
        images = backbone.question_images([tokens.prepared(header_sizes[i]) for i in item.image_ids])
        try:
            counts = tokens.question([(image.height, image.width) for image in images])
            if not checked_real and len(images) > 1:  # the processor's own multi-image packing, once
                real = tokens_per_image(processor, images)
                if real != counts:
                    raise ValueError(f"the processor gives {real} image tokens per image, the model config {counts}")
                checked_real = True
            length = _prompt_length(processor, chat_prompt(processor, question_text(item, section["answer_instruction"]),
                                                           len(images)), counts)
        except ValueError as error:
            report.problems.append(f"{report.model}: {name}: {error}")
            continue
        greedy = section["greedy_tokens"]
        for _condition in conditions:
            report.count(stage, length, name)
            if greedy:  # generate() runs the prompt again, then one step per token
                report.count(f"{stage}_greedy", length, name)
                report.decode_steps += greedy


@cache
def _dataset_cached(name: str, root: str, cfg_json: str):
    return load_dataset(name, Path(root), json.loads(cfg_json))


def _dataset_key(config: dict, name: str) -> tuple[str, str, str]:
    return name, plan.dataset_root(config, name), json.dumps(plan.loader_cfg(config, name), sort_keys=True)


def _dataset(config: dict, name: str):
    """The dataset's loader, built once per process (every model reads the same datasets)."""
    return _dataset_cached(*_dataset_key(config, name))


def _sizes(config: dict, name: str) -> Counter:
    return _sizes_cached(*_dataset_key(config, name))


@cache
def _sizes_cached(name: str, root: str, cfg_json: str) -> Counter:
    return image_sizes(ref.path for ref in _dataset_cached(name, root, cfg_json).images())


# --- the run -----------------------------------------------------------------------------------------


def preflight(config: dict, local_files: Path | None = None) -> dict:
    """Check every MLM of `config`; the report, or PreflightError listing every problem."""
    settings = config.get("preflight", {})
    local_files = local_files or (Path(settings["local_files"]) if settings.get("local_files") else None)
    rate = settings.get("tokens_per_second", DEFAULT_TOKENS_PER_SECOND)
    reports = [check_model(model, config, local_files) for model in sorted(config["models"])]
    problems = [problem for report in reports for problem in _first(report.problems)]
    if problems:
        raise PreflightError("preflight failed:\n" + "\n".join(f"  {problem}" for problem in problems))
    return {
        "run": config["run"],
        "tokens_per_second": rate,
        "assumption": f"{rate} prompt tokens/s (see imagekv.preflight.DEFAULT_TOKENS_PER_SECOND) and "
                      f"{DECODE_STEP_SECONDS} s per greedy decoding step; vision towers not counted",
        "models": {report.model: report.summary(rate) for report in reports},
    }


def _first(problems: list[str], shown: int = MAX_PROBLEMS_SHOWN) -> list[str]:
    """A model's problems, the first `shown` of them when there are many (one cause, many items)."""
    if len(problems) <= shown:
        return problems
    return [*problems[:shown], f"... and {len(problems) - shown} more of the same model"]


def summary_lines(report: dict) -> list[str]:
    lines = [f"preflight passed ({report['assumption']}):"]
    for model, entry in report["models"].items():
        forwards = ", ".join(f"{stage} {n:,}" for stage, n in entry["forwards"].items())
        lines.append(
            f"  {model}: {sum(entry['forwards'].values()):,} forwards ({forwards}), "
            f"{sum(entry['tokens'].values()):,} tokens, longest {entry['longest_sequence']['tokens']:,} of "
            f"{entry['context']:,}, projected {entry['gpu_hours']} GPU hours; files: {entry['files']}"
        )
    return lines
