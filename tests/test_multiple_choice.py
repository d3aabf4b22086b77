import numpy as np
import pytest
import torch
from PIL import Image

from imagekv.interventions.blink_accuracy import accuracy_table, paired_bootstrap
from imagekv.interventions.blocking import all_image_keys
from imagekv.interventions.multiple_choice import (
    DEFAULT_ANSWER_INSTRUCTION,
    AnswerPositionError,
    answer_question,
    chat_prompt,
    extract_letter,
    generation_header,
    letter_token_ids,
    locate_answer,
    prepare_question,
    score_letters,
    tokens_per_image,
)

IMAGE = 99
HEADER = [7, 8]


@pytest.mark.parametrize("num_options", range(2, 7))
def test_scorer_picks_the_favoured_letter_for_two_to_six_options(num_options):
    # Letter i is spelled by tokens 10+i ("A") and 20+i (" A"); the favoured letter is the last one.
    letter_ids = [(10 + i, 20 + i) for i in range(num_options)]
    logits = torch.zeros(32)
    favoured = num_options - 1
    logits[20 + favoured] = 5.0  # only its " X" spelling is likely
    logits[10] = 4.0  # a distractor: "A" alone, less than the favoured letter
    scores = score_letters(logits, letter_ids)
    assert scores.choice == favoured and scores.letter == "ABCDEF"[favoured]
    # A letter's likelihood is the sum of its spellings' probabilities.
    probabilities = torch.softmax(logits.double(), dim=0)
    assert np.exp(scores.log_likelihoods[0]) == pytest.approx(float(probabilities[10] + probabilities[20]))


def test_scorer_breaks_ties_by_order_and_refuses_bad_option_counts():
    assert score_letters(torch.zeros(8), [(1,), (2,), (3,)]).choice == 0
    logits = torch.zeros(8)
    logits[[2, 3]] = 1.0
    assert score_letters(logits, [(1,), (2,), (3,)]).letter == "B"
    for count in (1, 7):
        with pytest.raises(ValueError, match="2 to 6"):
            score_letters(torch.zeros(8), [(i,) for i in range(count)])


def test_regex_cross_check():
    assert extract_letter("B", 4) == "B"
    assert extract_letter(" (C) a cat", 4) == "C"
    assert extract_letter("D. the third image", 4) == "D"
    assert extract_letter("The answer is (B).", 2) == "B"
    assert extract_letter("answer: a", 2) == "A"
    assert extract_letter("A", 2) == "A" and extract_letter("Apples", 2) is None
    assert extract_letter("E", 4) is None  # not one of the four options


def test_locate_answer_finds_images_query_start_and_answer_position():
    # [bos] [img img img] [sep] [img img] [closer] [text text] [header]
    ids = [1, IMAGE, IMAGE, IMAGE, 5, IMAGE, IMAGE, 50, 6, 6, *HEADER]
    layout = locate_answer(ids, IMAGE, [3, 2], HEADER, closer_ids=[50])
    assert layout.image_starts == (1, 5) and layout.image_lengths == (3, 2)
    assert layout.query_start == 8 and layout.answer_position == len(ids) - 1
    # Adjacent images form one run; the per-image lengths split it.
    adjacent = locate_answer([1, IMAGE, IMAGE, IMAGE, 6, *HEADER], IMAGE, [1, 2], HEADER)
    assert adjacent.image_starts == (1, 2) and adjacent.query_start == 4


@pytest.mark.parametrize(
    "ids, lengths, message",
    [
        ([1, IMAGE, 6], [1], "does not end with the assistant generation header"),
        ([1, IMAGE, 6, *HEADER, 4], [1], "does not end with the assistant generation header"),
        ([1, IMAGE, IMAGE, 6, *HEADER], [1, 2], "2 image tokens, but the 2 image"),
        ([1, 6, *HEADER], [], "0 image tokens"),
        ([1, 6, IMAGE, *HEADER], [3], "1 image tokens"),
    ],
)
def test_locate_answer_refuses_with_a_clear_error(ids, lengths, message):
    with pytest.raises(AnswerPositionError, match=message):
        locate_answer(ids, IMAGE, lengths, HEADER)


def test_accuracy_per_subtask_and_overall():
    table = accuracy_table(["Art", "Art", "Art", "IQ"], [True, False, True, False])
    assert table["per_subtask"] == {"Art": pytest.approx(2 / 3), "IQ": 0.0}
    assert table["overall"] == 0.5 and table["subtask_mean"] == pytest.approx(1 / 3)
    assert table["count"] == {"Art": 3, "IQ": 1}


def test_paired_bootstrap():
    rng = np.random.default_rng(1)
    base = rng.random(400) < 0.5
    new = base.copy()
    flipped = rng.choice(400, size=60, replace=False)
    new[flipped] = True  # the intervention fixes some questions
    result = paired_bootstrap(base, new, resamples=4000, seed=3)
    assert result["delta"] == pytest.approx(new.mean() - base.mean())
    assert result["low"] < result["delta"] < result["high"]
    # The percentile interval matches the normal approximation of the mean paired difference.
    half_width = 1.96 * (new.astype(float) - base).std() / np.sqrt(400)
    assert result["high"] - result["low"] == pytest.approx(2 * half_width, rel=0.15)
    assert paired_bootstrap(base, new, resamples=4000, seed=3) == result
    same = paired_bootstrap(base, base, resamples=100)
    assert (same["delta"], same["low"], same["high"]) == (0.0, 0.0, 0.0)


# --- with each tiny twin's own processor and native multi-image chat template ---------------------


@pytest.fixture(scope="module", params=("llava_onevision", "qwen2_5_vl", "llava_next"))
def twin(request):
    from imagekv.models.tiny import build_tiny

    model, processor = build_tiny(request.param, seed=0)
    return request.param, model.eval(), processor


def _images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(count)
    return [Image.fromarray(rng.integers(0, 256, size=(36, 48, 3), dtype=np.uint8)) for _ in range(count)]


QUESTION = "Which image matches?\n(A) the second\n(B) the third\n(C) neither\n" + DEFAULT_ANSWER_INSTRUCTION


def test_native_multi_image_prompt_and_answer_position(twin):
    arch, model, processor = twin
    prompt = chat_prompt(processor, QUESTION, 3)
    placeholder = "<|vision_start|><|image_pad|><|vision_end|>" if arch == "qwen2_5_vl" else "<image>"
    assert prompt.count(placeholder) == 3
    inputs, layout = prepare_question(processor, QUESTION, _images(3))
    ids = inputs["input_ids"][0]
    assert len(layout.image_starts) == 3 and layout.answer_position == len(ids) - 1
    for start, length in zip(layout.image_starts, layout.image_lengths):
        assert torch.all(ids[start : start + length] == processor.image_token_id)
    assert not (ids[layout.query_start :] == processor.image_token_id).any()


def test_answer_question_scores_the_models_own_next_token_logits(twin):
    _, model, processor = twin
    images = _images(2)
    result = answer_question(model, processor, QUESTION, images, num_options=3, greedy_tokens=2)
    inputs, layout = prepare_question(processor, QUESTION, images)
    with torch.no_grad():
        logits = model(**inputs, logits_to_keep=1).logits[0, -1]
    expected = score_letters(logits, letter_token_ids(processor.tokenizer, 3))
    assert result.scores == expected
    assert isinstance(result.generated_text, str)

    def every_image_key(layout):
        return all_image_keys(range(2), torch.arange(layout.image_starts[0], layout.query_start))

    blocked = answer_question(model, processor, QUESTION, images, num_options=3, block_rule=every_image_key)
    assert blocked.scores.log_likelihoods != result.scores.log_likelihoods


def test_a_prompt_without_the_generation_header_is_refused(twin):
    _, _, processor = twin
    images = _images(1)
    text = chat_prompt(processor, QUESTION, 1, add_generation_prompt=False)
    ids = processor(text=text, images=images, return_tensors="pt")["input_ids"][0]
    header = processor.tokenizer.encode(generation_header(processor), add_special_tokens=False)
    with pytest.raises(AnswerPositionError, match="generation header"):
        locate_answer(ids, processor.image_token_id, tokens_per_image(processor, images), header)


def test_llava_onevision_gives_each_image_of_a_question_its_base_view(twin):
    """Several images in one question: LLaVA-OneVision's multi-image mode (base view plus one newline
    token per image, 8x8 + 1 for the twin), not an anyres tiling of each; the others as alone."""
    arch, _, processor = twin
    alone = [tokens_per_image(processor, [image])[0] for image in _images(3)]
    together = tokens_per_image(processor, _images(3))
    if arch == "llava_onevision":
        assert together == [8 * 8 + 1] * 3 and alone[0] > 8 * 8 + 1
    else:
        assert together == alone


def test_a_prompt_beyond_the_context_is_refused_before_any_forward(twin):
    _, _, processor = twin
    with pytest.raises(AnswerPositionError, match="beyond the model's context of 10"):
        prepare_question(processor, QUESTION, _images(2), max_length=10)


def test_llava_next_squashes_the_images_of_a_multi_image_question_to_one_crop():
    from imagekv.models.registry import build_backbone

    backbone = build_backbone("llava_next", {"source": "tiny"}, device="cpu", dtype=torch.float32)
    images = backbone.question_images(_images(3))
    # 96 px crop: 8x8 base tokens, then the best pinpoint 96x192 unpadded back to the square: 8 x (8 + 1)
    assert tokens_per_image(backbone.processor, images) == [64 + 8 * 9] * 3
    assert backbone.question_images(_images(1))[0].size == (48, 36)  # one image: as it is
