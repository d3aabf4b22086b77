"""Prompts against the published chat templates and the real tokenizers of the three checkpoints.

The twins carry the committed templates and the real tokenizers (src/imagekv/models/checkpoints/);
every expected sequence below is written out by hand from the template text and published token ids,
not produced by our prompt builder:
- Qwen2 ids: transformers tests/models/llava_onevision/test_processor_llava_onevision.py
  (`<|im_start|>user <video>\\nWhat is shown in this video?<|im_end|><|im_start|>assistant\\n` ->
  151644, 872, 220, 151647, 198, 3838, 374, 6839, 304, 419, 2766, 30, 151645, 151644, 77091, 198) and
  tests/models/qwen2_5_vl/test_modeling_qwen2_5_vl.py (the default system turn then
  `<|im_start|>user\\n<|vision_start|><|image_pad|>` -> 151644, 8948, 198, 2610, 525, 264, 10950,
  17847, 13, 151645, 198, 151644, 872, 198, 151652, 151655); vocab.json: " \\n" ("ĠĊ") 715,
  " What" ("ĠWhat") 3555.
- Llama-3 ids: <|begin_of_text|> 128000, <|start_header_id|> 128006, <|end_header_id|> 128007,
  <|eot_id|> 128009 (Meta's tokenizer_config.json), <image> 128256 (llava-hf's conversion adds it
  after the 128,256 Llama-3 tokens); "user" 882, "\\n\\n" 271, "\\n\\n\\n" 1432, "assistant" 78191,
  "What is your name?" 3923, 374, 701, 836, 30, " " 220, "\\n" 198 (the regular ranks of Meta's
  tokenizer.model, as in Llama-3 chat prompts quoted in many public projects).
Image token counts of the twins' geometry: LLaVA 192x96 px (w x h) matches the pinpoint 96x192, so
8x8 base tokens + 2 crops side by side, 8 rows of 16 tokens plus a newline each = 64 + 136 = 200;
Qwen2.5-VL at native resolution, 56x56 px = 4x4 patches of 14 px merged 2x2 = 4 tokens.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from imagekv.interventions.multiple_choice import prepare_question
from imagekv.datasets.schema import TextQuery
from imagekv.models.prompts import image_prompt, image_query_prompt, text_ids, text_prompt
from imagekv.prefixes import prefix_items
from imagekv.models.registry import build_backbone

OV_IMAGE, QWEN_IMAGE, NEXT_IMAGE = 151646, 151655, 128256
QWEN_SYSTEM_USER = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
QWEN_QUESTION = [3838, 374, 6839, 304, 419, 2766, 30]  # "What is shown in this video?"
LLAMA_USER = [128000, 128006, 882, 128007]  # BOS from the tokenizer; the template has none
LLAMA_QUESTION = [3923, 374, 701, 836, 30]  # "What is your name?"
QUESTIONS = {"llava_onevision": "What is shown in this video?", "qwen2_5_vl": "What is shown in this video?",
             "llava_next": "What is your name?"}

EXPECTED = {
    "llava_onevision": {
        "extraction": [151644, 872, 220, *[OV_IMAGE] * 200],
        "prefixed": [151644, 872, 3555, *QWEN_QUESTION[1:], 220, *[OV_IMAGE] * 200],  # "user " + "What": " What"
        "text": [151644, 872, 715, *QWEN_QUESTION],
        "blink": [151644, 872, 220, *[OV_IMAGE] * 200, 198, *QWEN_QUESTION, 151645, 151644, 77091, 198],
    },
    "qwen2_5_vl": {
        "extraction": [*QWEN_SYSTEM_USER, 151652, *[QWEN_IMAGE] * 4],
        "prefixed": [*QWEN_SYSTEM_USER, *QWEN_QUESTION, 220, 151652, *[QWEN_IMAGE] * 4],
        "text": [*QWEN_SYSTEM_USER, *QWEN_QUESTION],
        "blink": [*QWEN_SYSTEM_USER, 151652, *[QWEN_IMAGE] * 4, 151653, *QWEN_QUESTION, 151645, 198, 151644, 77091, 198],
    },
    "llava_next": {
        "extraction": [*LLAMA_USER, 271, *[NEXT_IMAGE] * 200],
        "prefixed": [*LLAMA_USER, 271, *LLAMA_QUESTION, 220, *[NEXT_IMAGE] * 200],
        "text": [*LLAMA_USER, 1432, *LLAMA_QUESTION],
        "blink": [*LLAMA_USER, 271, *[NEXT_IMAGE] * 200, 198, *LLAMA_QUESTION, 128009, 128006, 78191, 128007, 271],
    },
}


@pytest.fixture(scope="module", params=list(EXPECTED))
def backbone(request):
    cfg = {"source": "tiny", "resolution": "native"} if request.param == "qwen2_5_vl" else {"source": "tiny"}
    return build_backbone(request.param, cfg, device="cpu", dtype=torch.float32)


def _image(backbone) -> Image.Image:
    return Image.new("RGB", (56, 56) if backbone.name == "qwen2_5_vl" else (192, 96), "gray")


def test_extraction_prompt(backbone):
    ids = backbone.model_inputs(_image(backbone))["input_ids"][0].tolist()
    assert ids == EXPECTED[backbone.name]["extraction"]


def test_prefixed_prompt_puts_the_prefix_between_the_user_header_and_the_image(backbone):
    prefix = QUESTIONS[backbone.name] + " "
    ids = backbone.model_inputs(_image(backbone), prefix)["input_ids"][0].tolist()
    assert ids == EXPECTED[backbone.name]["prefixed"]


def test_text_query_prompt(backbone):
    ids = text_ids(backbone.processor, text_prompt(backbone.processor, QUESTIONS[backbone.name]))
    assert ids[0].tolist() == EXPECTED[backbone.name]["text"]


def test_a_per_item_prompt_fills_the_template_before_the_image_and_reads_the_query_after_it(backbone):
    """E5 per-item store: the real template's image turn with the item's own filled prefix before the
    image and its query after it; the expected ids join the hand-written "prefixed" sequence (the
    image part) and the "blink" one (what follows the image in the user turn)."""
    question = QUESTIONS[backbone.name]
    query = TextQuery("q1", "im", question, np.zeros((2, 2), np.uint8))
    (item,) = prefix_items([query], "{text} ", "test").values()
    assert item.prefix == question + " " and item.query == question
    prompt = image_query_prompt(backbone.processor, item.prefix, item.query)
    ids = backbone._inputs(_image(backbone), prompt)["input_ids"][0].tolist()
    prefixed, blink = EXPECTED[backbone.name]["prefixed"], EXPECTED[backbone.name]["blink"]
    after_image = {"qwen2_5_vl": [151653], "llava_onevision": [198], "llava_next": [198]}[backbone.name]  # vision_end, "\n"
    last_image = len(blink) - 1 - blink[::-1].index(backbone.image_token_id)
    assert blink[last_image + 1] == after_image[0]  # what the template puts between an image and its text
    assert ids == [*prefixed, *after_image, *(QWEN_QUESTION if backbone.name != "llava_next" else LLAMA_QUESTION)]


def test_blink_prompt(backbone):
    inputs, layout = prepare_question(backbone.processor, QUESTIONS[backbone.name], [_image(backbone)])
    expected = EXPECTED[backbone.name]["blink"]
    assert inputs["input_ids"][0].tolist() == expected
    image_id = backbone.image_token_id
    assert layout.image_starts == (expected.index(image_id),) and layout.answer_position == len(expected) - 1


def test_the_option_letters_are_single_tokens(backbone):
    """The multiple-choice scorer reads " A".." F" (and "A".."F") as single tokens of the real vocabulary."""
    tokenizer = backbone.processor.tokenizer
    for letter in "ABCDEF":
        assert len(tokenizer.encode(f" {letter}", add_special_tokens=False)) == 1
        assert len(tokenizer.encode(letter, add_special_tokens=False)) == 1


def test_a_template_without_the_image_placeholder_is_refused(backbone):
    processor = backbone.processor
    original = processor.chat_template
    processor.chat_template = "{% for message in messages %}{{ message['role'] }}: image{% endfor %}"
    try:
        with pytest.raises(ValueError, match="without the image placeholder"):
            image_prompt(processor)
    finally:
        processor.chat_template = original
