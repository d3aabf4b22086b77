"""The multiple-choice harness (SPEC 5.6): BLINK questions in each model's native multi-image prompt.

The answer is the option letter with the highest next-token log-likelihood at the answer position,
the last prompt token (the end of the assistant generation header). A letter's likelihood sums the
probabilities of its single-token spellings ("A" and " A"), so a tokenizer that prefers either one
is scored fairly. Greedy decoding plus a regex over the generated text is the cross-check.

A question's images go to the processor as one sample's image list, the processors' native
multi-image form: LLaVA-OneVision then gives each image its base view and one newline token (its
multi-image mode) rather than an anyres tiling each; Qwen2.5-VL and LLaVA-NeXT process each image as
they would alone. A prompt longer than the model's context is refused before any forward.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from imagekv.datasets.schema import OPTION_LETTERS, BlinkItem
from imagekv.interventions.blocking import block_attention
from imagekv.models.prompts import processor_inputs, user_turn

MIN_OPTIONS, MAX_OPTIONS = 2, 6
DEFAULT_ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
DEFAULT_GREEDY_TOKENS = 8
# Tokens that close an image block but belong to it: queries start after them (Qwen2.5-VL).
IMAGE_BLOCK_CLOSERS = ("<|vision_end|>",)


class AnswerPositionError(ValueError):
    """The prompt has no place where the answer letter is predicted, or its images do not match."""


@dataclass(frozen=True)
class AnswerLayout:
    """Where things are in one tokenised question. Positions index the sequence."""

    answer_position: int  # the logits here predict the first answer token
    query_start: int  # first position after the last image block (the blocked queries)
    image_starts: tuple[int, ...]  # first token of each image
    image_lengths: tuple[int, ...]  # number of image tokens of each image


@dataclass(frozen=True)
class LetterScores:
    log_likelihoods: tuple[float, ...]  # one per option, in option order
    choice: int  # index of the chosen option (first of the tied maxima)

    @property
    def letter(self) -> str:
        return OPTION_LETTERS[self.choice]


def _check_option_count(num_options: int) -> None:
    if not MIN_OPTIONS <= num_options <= MAX_OPTIONS:
        raise ValueError(f"{num_options} options; the scorer handles {MIN_OPTIONS} to {MAX_OPTIONS}")


def letter_token_ids(tokenizer, num_options: int) -> list[tuple[int, ...]]:
    """For each option letter, the ids of its single-token spellings among "A" and " A"."""
    _check_option_count(num_options)
    spellings = []
    for letter in OPTION_LETTERS[:num_options]:
        ids = [tokenizer.encode(text, add_special_tokens=False) for text in (letter, f" {letter}")]
        single = tuple(dict.fromkeys(tokens[0] for tokens in ids if len(tokens) == 1))
        if not single:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no single token for option {letter!r}")
        spellings.append(single)
    return spellings


def score_letters(logits: torch.Tensor, letter_ids: Sequence[Sequence[int]]) -> LetterScores:
    """Pick the option whose letter the next-token `logits` [vocab] make most likely."""
    _check_option_count(len(letter_ids))
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    scores = [float(torch.logsumexp(log_probs[list(ids)], dim=0)) for ids in letter_ids]
    best = max(scores)
    return LetterScores(tuple(scores), scores.index(best))


def extract_letter(text: str, num_options: int) -> str | None:
    """The option letter a generated answer names ("B", "(B)", "B. cat", "The answer is B"), or None."""
    _check_option_count(num_options)
    letters = OPTION_LETTERS[:num_options]
    patterns = (
        rf"^\s*\(?([{letters}])\)?(?![A-Za-z])",  # the answer starts with the letter
        rf"answer\s*(?:is|:)?\s*\(?([{letters}])\)?(?![A-Za-z])",
        rf"\(([{letters}])\)",
    )
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE if "answer" in pattern else 0)
        if match:
            return match.group(1).upper()
    return None


def question_text(item: BlinkItem, instruction: str = DEFAULT_ANSWER_INSTRUCTION) -> str:
    """The BLINK prompt (question plus lettered choices) followed by the answer instruction, once.

    BLINK's `prompt` ends with its choices (lmms-eval's blink task uses it as is and adds only a
    note before it); a prompt that already ends with `instruction` gets no second copy.
    """
    body = item.prompt or "\n".join(
        [item.question, *(f"({OPTION_LETTERS[i]}) {choice}" for i, choice in enumerate(item.choices))]
    )
    if not instruction or body.rstrip().endswith(instruction):
        return body
    return f"{body}\n{instruction}"


def chat_prompt(processor, text: str, num_images: int, add_generation_prompt: bool = True) -> str:
    """One user turn holding `num_images` images then `text`, in the processor's own chat template."""
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    return user_turn(processor, content, add_generation_prompt=add_generation_prompt)


def generation_header(processor) -> str:
    """The text the template appends for the assistant's turn (e.g. "<|im_start|>assistant\\n")."""
    with_header = chat_prompt(processor, "x", 0, add_generation_prompt=True)
    without = chat_prompt(processor, "x", 0, add_generation_prompt=False)
    if not with_header.startswith(without) or with_header == without:
        raise AnswerPositionError(f"{type(processor).__name__}: the chat template adds no generation header")
    return with_header[len(without) :]


def tokens_per_image(processor, images: Sequence[Image.Image]) -> list[int]:
    """How many image tokens the processor gives each image of one question (in a prompt adjacent
    images form one run; here a newline after each placeholder keeps the runs apart)."""
    text = "".join(processor.image_token + "\n" for _ in images)
    ids = processor(text=text, images=[list(images)], return_tensors="pt")["input_ids"][0]
    is_image = torch.cat([torch.zeros(1), (ids == processor.image_token_id).float(), torch.zeros(1)])
    edges = torch.diff(is_image).nonzero().flatten()  # run starts and ends alternate
    counts = (edges[1::2] - edges[::2]).tolist()
    if len(counts) != len(images):
        raise AnswerPositionError(f"{len(images)} images gave {len(counts)} runs of image tokens")
    return counts


def locate_answer(
    input_ids: Sequence[int],
    image_token_id: int,
    image_lengths: Sequence[int],
    header_ids: Sequence[int],
    closer_ids: Sequence[int] = (),
) -> AnswerLayout:
    """Find the answer position and the image blocks, or raise AnswerPositionError saying why."""
    ids = torch.as_tensor(input_ids).flatten()
    header = torch.as_tensor(list(header_ids), dtype=ids.dtype)
    if len(header) == 0 or len(ids) < len(header) or not torch.equal(ids[-len(header) :], header):
        raise AnswerPositionError(
            "the prompt does not end with the assistant generation header "
            f"{header.tolist()}; build it with add_generation_prompt=True and no answer text"
        )
    image_positions = (ids == image_token_id).nonzero().flatten()
    if len(image_positions) != sum(image_lengths) or not image_lengths:
        raise AnswerPositionError(
            f"the prompt holds {len(image_positions)} image tokens, but the {len(image_lengths)} "
            f"image(s) need {sum(image_lengths)}"
        )
    offsets = np.cumsum([0, *image_lengths[:-1]]).tolist()
    starts = tuple(int(image_positions[offset]) for offset in offsets)
    query_start = int(image_positions[-1]) + 1
    while query_start < len(ids) and int(ids[query_start]) in closer_ids:
        query_start += 1
    answer_position = len(ids) - 1
    if answer_position < query_start:
        raise AnswerPositionError("the prompt ends inside its last image block: no answer position")
    return AnswerLayout(answer_position, query_start, starts, tuple(int(n) for n in image_lengths))


def prepare_question(
    processor, text: str, images: Sequence[Image.Image], max_length: int | None = None
) -> tuple[Mapping, AnswerLayout]:
    """Model inputs for one question with its images (one sample: the native multi-image form), and
    their AnswerLayout; a prompt longer than `max_length` tokens is refused."""
    tokenizer = processor.tokenizer
    inputs = processor_inputs(processor, chat_prompt(processor, text, len(images)), [list(images)])
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError("the harness scores one question at a time (batch size 1)")
    length = inputs["input_ids"].shape[1]
    if max_length is not None and length > max_length:
        raise AnswerPositionError(
            f"the prompt with {len(images)} image(s) is {length} tokens, beyond the model's context of {max_length}"
        )
    header_ids = tokenizer.encode(generation_header(processor), add_special_tokens=False)
    closer_ids = [tokenizer.convert_tokens_to_ids(token) for token in IMAGE_BLOCK_CLOSERS]
    closer_ids = [i for i in closer_ids if i is not None and i != tokenizer.unk_token_id]
    layout = locate_answer(
        inputs["input_ids"][0], processor.image_token_id, tokens_per_image(processor, images), header_ids, closer_ids
    )
    return inputs, layout


BlockRule = Callable[[AnswerLayout], Mapping[int, torch.Tensor]]


@dataclass(frozen=True)
class QuestionResult:
    scores: LetterScores
    generated_text: str | None  # greedy continuation, when asked for
    generated_letter: str | None


@torch.no_grad()
def answer_question(
    model: nn.Module,
    processor,
    text: str,
    images: Sequence[Image.Image],
    num_options: int,
    block_rule: BlockRule | None = None,
    greedy_tokens: int = 0,
) -> QuestionResult:
    """Score one question, with attention blocked as `block_rule` says for this prompt's layout."""
    context = model.config.get_text_config().max_position_embeddings
    inputs, layout = prepare_question(processor, text, images, max_length=context)
    blocked = block_rule(layout) if block_rule else {}
    letter_ids = letter_token_ids(processor.tokenizer, num_options)
    with block_attention(model, blocked, layout.query_start):
        # The answer is read at the last position only (layout.answer_position): the LM head runs
        # there alone, as in generate()'s prefill, not over the 128k-152k vocabulary at every position.
        logits = model(**inputs, logits_to_keep=1).logits[0, -1]
        generated = None
        if greedy_tokens:
            output = model.generate(**inputs, max_new_tokens=greedy_tokens, do_sample=False)
            new_tokens = output[0, inputs["input_ids"].shape[1] :]
            generated = processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
    letter = extract_letter(generated, num_options) if generated is not None else None
    return QuestionResult(score_letters(logits, letter_ids), generated, letter)
