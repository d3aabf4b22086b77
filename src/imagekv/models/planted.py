"""Planted twins: the tiny twins (imagekv.models.tiny) with effects of the paper's experiments (E4,
the probes, E6, E5, E2) put in by hand, at a known place and with a known size, so the controls run
(config/controls.yaml) can check that the experiments recover them (README, "Controls").

A planted twin is the same seeded random twin plus fixed forward hooks on its LM, installed in
code (`build_planted`); nothing is learned and nothing binary is stored. The effects are hooks
rather than edited weight matrices because they are tied to token positions (grid positions, the
answer position), which position-independent weights cannot single out in a random network. Every
hook rewrites the output of one projection of the real modules (E2's: the input projection's, the
image embeddings the LM receives), so the KV cache, the attention masks, the blocking hooks
(imagekv.interventions.blocking) and the extraction see the planted model exactly as they see any
other.

What is set, in every LM layer l >= PLANTED_FROM (the planted ell0), for each image's run of tokens
(a run = the image tokens of one image, adjacent images' runs cut at each image's token count; the
grid position is the offset in the run, which for the twins' fixed layouts, LLaVA's 8x8 base view
and Qwen2.5-VL's fixed 8x8 grid, is the raster index the detector and the blocking use):

- Keys at the PLANTED_OFFSETS grid positions (the "artifact" tokens): k_proj's output is a constant
  key, ARTIFACT_GAIN on one dimension, whatever the image. Same prompt layout, same RoPE angles, so
  their cached keys have zero cross-image variance: E4's detector must flag exactly these
  (layer, position) pairs and no others (the twins' other keys vary: nu >= 0.25 here, tau = 0.1).
- Values of KV head 0: 1 on one dimension at the artifact tokens, 0 at every other token.
  KV head 1 keeps the twin's own values.
- Queries at the positions after the last image (the question and answer tokens), in the query
  heads of KV head 0: ARTIFACT_GAIN on the key's dimension, 0 elsewhere. The score against an
  artifact key, ARTIFACT_GAIN**2 / sqrt(head_dim) = 400, drowns every other key, so these heads read
  the artifact tokens only: their output is ~1 (the "read") while any artifact token is visible,
  and 0 once the blocking hides all of them. The key and the query sit on the dimension RoPE turns
  slowest (the last of each rotated pair: well under a degree over the twins' prompts), so their
  dot product survives the rotation.
- Answer (the LM head at the last position, questions of a reference and two candidate images,
  letters A and B): a "perceived" vote is the share by which the first candidate's mean LM input
  embedding lies nearer the reference's than the second's (> 0 votes A), taken on the clean
  embeddings (before E2's hook, below) and on those the LM received (after it). The letter logits get
  +-ANSWER_GAIN * ((1 - read) * received vote - read * clean vote), which outweighs the twin's own
  logits: with the artifact tokens readable (read = 1) the answer is the reverse of the clean
  perceived one, with them blocked (read = 0) it is the one perceived through the projection.

Consequences the controls check (imagekv.interventions.controls): blocking the flagged keys in the
layers from ell0 raises BLINK accuracy from 1 - a to a_q, a = the accuracy of the clean perceived
answer on the questions and a_q that of the received one (E2); the planted gain a_q + a - 1 is > 0
whenever both beat chance (on the controls run's questions a is 0.875 to 1, a_q 0.625 to 1);
blocking as many random image positions leaves some artifact tokens of every image visible (it
would need all 4 of an image's 4 of ~64 among its picks), so the read stays 1 and nothing changes.
Blocking other positions, or the artifact positions in layers below ell0, changes nothing either:
the read happens in the planted layers.

Probes (`ProbePlant`): the image information of the values is left in one layer only. In every LM
layer but INFO_LAYER (the planted peak, below PLANTED_FROM), v_proj's output at the image tokens is
replaced by Gaussian noise of the replaced values' spread, drawn from a generator seeded by a hash
of the prompt's clean input embeddings (so it differs from image to image and is reproducible, yet no
probe can read the image from it); in the E4 layers only KV head 1 is replaced, head 0 keeping E4's
input-agnostic values. INFO_LAYER keeps the twin's own values, which carry the image (the residual
stream still holds the projected image tokens, E2's). In NULL_MODEL, INFO_LAYER is replaced too: its
image values carry no information in any layer. This plant leaves the keys, the projection, the
tower and the text tokens alone, and the E4 answer reads the input embeddings, so E4's controls are
unchanged.

E6 (not surfaced), in prompts of one image (the E6 value store holds one image per context, SPEC
E6; the BLINK questions' prompts of three images are left alone): the values of every image token
of LM layer NOT_SURFACED_LAYER, all KV heads, are the image's colour code, the share of its pixels
in each of the 27 colour bins (each RGB channel of the processor's input, un-normalised, cut in
thirds), scaled to unit norm; the value dimensions past the 27th are 0. This hook is installed
last, so in that layer the code replaces the probe plant's noise. Every image token of an image
gets the same code, so the mean value token is the code and the Gram matrix its outer product:
both read-outs compare the images' palettes.

E5 (a prefix adds task information to the image values; `PrefixPlant`), in one-image prompts whose
text before the image names an object the synthetic twins draw (`named_colours`: a drawing style's
name such as "red circle", which the RefCOCO twin's expressions hold, or an ImageNet-S class name,
whose twin draws each class in its own style), as "Find: {text}." does: in KV head PREFIX_HEAD of
PREFIX_LAYER, each image token whose mean input colour (the processor's pixels under its grid cell,
un-normalised) is a tone of that object's colour gets PREFIX_GAIN times the head's value spread
along the name's direction (`class_direction`, seeded by the name), as if it attended to a prefix
token whose value is that direction (another object of the same colour in the image gets it too:
the RefCOCO twin may draw two styles 10 apart, which share a colour). In text-only prompts that name an object (the T3/T4 queries'
text-only values, which E5 holds fixed) the last token's value in that head is the direction. So
with the task prefix the queried object's tokens score far above the rest against the query, where
without it that head holds the probe plant's noise. A prefix that names no object (the neutral
caption) adds nothing: its only effects are the twin's own, in INFO_LAYER, and a new spread of the
noise that replaces the other layers' image values (the replaced values'). The other experiments'
prompts (DAVIS frames, the key-variance pool, E6's one-image BLINK store) have no prefix, and the
BLINK questions hold three images, so E4, E6 and the probes are unchanged.

E2 (projection quality; `QualityPlant`): the image embeddings the LM receives (the decoder's input
embeddings at the image tokens, which the extraction stores as the projection) are replaced by
NOISE_SPREAD * (q * code + (1 - q) * noise), with q the twin's PROJECTION_QUALITY (0.9 Qwen2.5-VL,
0.65 LLaVA-OneVision, 0.45 LLaVA-NeXT: the null model lowest, see below). A grid token's code is
CODE_GAIN on the dimension of its colour bin (the mean input colour of its cell, binned as E6's
code); the tokens past the grid (LLaVA's crops and newlines) have none. The noise is standard
normal per token, seeded by the image's clean embeddings (as the probe plant's), plus PLACE_BIAS
times a vector seeded by the image's place in the prompt alone (first, second, third). What follows:

- Probes of the projection: tokens of one colour match across frames as far as the code outweighs
  the per-token noise, so DAVIS label propagation scores in the order of q (J&F 0.39, 0.34, 0.27 in the
  controls run; the twins' own projections scored 0.25, 0.17, 0.34, in no planted order).
- The vote on the received embeddings compares the images' mean codes (colour histograms: the right
  candidate shares the reference's palette, or its object's class and so its colour) with the place
  biases added, which are the same in every question: a question is voted right above a threshold
  quality of its own and below it by the letter the biases favour, whatever the images (the floor:
  the share of questions that letter answers, 5 of 8 in the controls run). The twins share the
  questions, the biases and nearly the codes, so their share of right votes a_q grows with q (1,
  0.875, 0.625 in the controls run): the flagged condition's accuracy follows the projection's
  quality. The unblocked answer reads the clean embeddings, so E4's baseline and E6 are unchanged.
- The LM sees no more of the twin's own projection: INFO_LAYER's values carry the code and noise.
  So the null model takes the lowest q, and no q is low enough to empty INFO_LAYER: the informed
  twins' peaks there (DAVIS J&F 0.36, 0.24) stay well above the noise bound of the null control
  (0.006), and the null model's, were it not nulled, would score 0.24, which that control flags.
  The per-token noise keeps every key varying from image to image; without it (q = 1) keys at grid
  positions that show the same backdrop colour in most images were flagged in layer 0.
- E5: at q = 0.9 INFO_LAYER's code lets the T3 probe segment with no prefix (mIoU 0.33 against 0.12
  at the noise layers), so the find prefix's gain over no prefix is smaller on T3 for the top twin
  (interval from +0.05 for Qwen2.5-VL; LLaVA-OneVision on top, its interval reached 0). The embeddings'
  spread, NOISE_SPREAD, outweighs what layer 0's attention adds at the image tokens, so the neutral
  prefix moves INFO_LAYER's image values little (its T3 gain within 0.01 of 0).

The layers, then, of the twins' 4 (every model; NULL_MODEL differs only in layer 1):

- input (E2): the image embeddings, q parts colour code, 1 - q parts noise.
- layer 0 (NOT_SURFACED_LAYER): one-image prompts, the colour code; other prompts, noise.
- layer 1 (INFO_LAYER): the twin's own values (NULL_MODEL: noise).
- layers 2-3 (PLANTED_FROM on, E4): KV head 0 E4's artifact values, KV head 1 noise; in layer 3
  (PREFIX_LAYER, E5) plus the named object's direction at its tokens, after a prefix naming it.

Consequences: the probes' best layer of every model but NULL_MODEL is INFO_LAYER. Their frames are
one-image prompts, so layer 0 holds the colour code, but it is the same at every token of a frame: a
probe of patch correspondence can tell no token from another by it, and it scores as the noise
layers do (DAVIS J&F 0 in the controls run). The null model's best score is therefore at the noise
backbone's (the calibration `noise`: random features). A synthetic Art_Style question's right
candidate shares the reference's palette and the wrong one does not
(imagekv.datasets.synthetic.blink), so E6's value read-out at NOT_SURFACED_LAYER answers every
Art_Style question right (cosine of the codes; checked over 300 drawn questions); layers 2-3 hold
noise and E4's input-agnostic values instead. The model's unblocked answer is the E4 plant's, the
reverse of the clean perceived one, so it is wrong on a share a of the questions, and the not-surfaced
rate at NOT_SURFACED_LAYER (read-out right, model wrong) is that share, 1 - the model's accuracy.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, ProcessorMixin

from imagekv.models.anyres import AnyresGeometry
from imagekv.models.tiny import TINY_LM, build_tiny

PLANTED_FROM = 2  # the planted ell0: layers 2 and 3 of the twins' 4
PLANTED_OFFSETS = (9, 18, 45, 54)  # grid positions (raster index in the 8x8 fixed layout)
ARTIFACT_GAIN = 40.0
ANSWER_GAIN = 100.0
HEAD_DIM = TINY_LM["hidden_size"] // TINY_LM["num_attention_heads"]
KV_HEADS = TINY_LM["num_key_value_heads"]
QUERY_HEADS_PER_KV = TINY_LM["num_attention_heads"] // KV_HEADS
NOT_SURFACED_LAYER = 0  # E6: the layer whose values carry each image's colour code (not INFO_LAYER)
COLOUR_LEVELS = 3  # per RGB channel: 3**3 = 27 colour bins, within the twins' 32 value dimensions
# RoPE rotates dims (i, i + head_dim/2) by position * theta_i; the last pair turns slowest (well
# under a degree over the twins' prompts), so a key and a query put there keep their dot product.
SLOW_PAIR = (HEAD_DIM // 2 - 1, HEAD_DIM - 1)
INFO_LAYER = 1  # the probes' planted peak: the only layer whose image values carry the image
NULL_MODEL = "llava_next"  # the planted twin whose image values carry no information in any layer
# E2: each twin's planted projection quality, the share of the image embeddings the LM receives that is
# the tokens' colour code (the rest noise). Ordered by construction; the null model is the lowest.
PROJECTION_QUALITY = {"qwen2_5_vl": 0.9, "llava_onevision": 0.65, "llava_next": 0.45}
CODE_GAIN = 8.0  # the colour code's norm, against the per-token noise's ~8 (64 dims of unit spread)
# The noise's spread per dimension in the embeddings: ten times the twins' own image embeddings'
# (~0.025), so that they outweigh what layer 0's attention adds to the residual stream (E5's neutral
# prefix then leaves INFO_LAYER's image values nearly as they are).
NOISE_SPREAD = 0.25
PLACE_BIAS = 2.0  # the spread of the noise shared by the images at one place, against the per-token noise's
QUALITY_TAG = 2**15  # image_noise's tag of E2's noise (no LM layer has it)


def planted_layers() -> tuple[int, ...]:
    return tuple(range(PLANTED_FROM, TINY_LM["num_hidden_layers"]))


def build_planted(architecture: str, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The tiny twin `architecture` with the planted hooks installed (they stay for its lifetime)."""
    model, processor = build_tiny(architecture, seed=seed)
    plant = Plant(model, processor)
    plant.install()
    QualityPlant(plant, PROJECTION_QUALITY[architecture]).install()
    ProbePlant(plant, null=architecture == NULL_MODEL).install()
    plant.install_colour_code()  # after the probe plant: its code replaces that layer's noise
    PrefixPlant(plant, processor).install()  # E5, after the probe plant: it adds to that layer's noise
    return model, processor


class Plant:
    """The hooks of one planted twin and what they share during one forward pass."""

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin):
        self.model = model
        self.image_token_id = processor.image_token_id
        self.letter_ids = [_letter_ids(processor.tokenizer, letter) for letter in "AB"]
        self.runs: list[torch.Tensor] = []  # token positions of each image, in prompt order
        self.query_start = 0
        self.embeds: torch.Tensor | None = None  # the LM's input embeddings before E2's hook (clean)
        self.received: torch.Tensor | None = None  # and after it: what the LM receives
        self.last_heads: torch.Tensor | None = None  # o_proj input of the last layer
        image_processor = processor.image_processor
        self.pixel_mean = torch.tensor(image_processor.image_mean, dtype=torch.float32)
        self.pixel_std = torch.tensor(image_processor.image_std, dtype=torch.float32)
        self.colour_code: torch.Tensor | None = None  # E6: the code of a one-image prompt's image
        self.token_colours: list[torch.Tensor] = []  # per image, its grid tokens' colours (E2, E5)

    def install(self) -> None:
        self.model.register_forward_pre_hook(self._read_prompt, with_kwargs=True)
        decoder = self.model.get_decoder()
        decoder.register_forward_pre_hook(self._read_embeds, with_kwargs=True)
        for index in planted_layers():
            attention = decoder.layers[index].self_attn
            attention.q_proj.register_forward_hook(self._plant_queries)
            attention.k_proj.register_forward_hook(self._plant_keys)
            attention.v_proj.register_forward_hook(self._plant_values)
        decoder.layers[-1].self_attn.o_proj.register_forward_pre_hook(self._read_heads)
        self.model.get_output_embeddings().register_forward_hook(self._answer)

    def install_colour_code(self) -> None:
        """E6's hook; hooks run in the order installed, so installed last it has the last word."""
        layer = self.model.get_decoder().layers[NOT_SURFACED_LAYER]
        layer.self_attn.v_proj.register_forward_hook(self._plant_colour_code)

    # --- what the prompt holds -------------------------------------------------------------------
    def _read_prompt(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids")
        if input_ids is None or input_ids.shape[1] == 1:  # a decoding step keeps the prompt's record
            return None
        positions = torch.nonzero(input_ids[0] == self.image_token_id).squeeze(1)
        self.runs = self._image_runs(positions, kwargs.get("image_sizes"))
        self.query_start = int(positions[-1]) + 1 if len(positions) else input_ids.shape[1]
        pixels = kwargs.get("pixel_values")
        one_image = len(self.runs) == 1 and pixels is not None
        self.colour_code = colour_code(pixels, self.pixel_mean, self.pixel_std) if one_image else None
        self.token_colours = token_colours(self, kwargs) if pixels is not None and self.runs else []
        return None

    def _image_runs(self, positions: torch.Tensor, image_sizes) -> list[torch.Tensor]:
        """The image token positions of each image. Adjacent images form one run of tokens (the
        LLaVA family); it is cut at each image's token count (imagekv.models.anyres)."""
        if not len(positions):
            return []
        breaks = torch.nonzero(positions.diff() != 1).squeeze(1) + 1
        runs = list(torch.tensor_split(positions, breaks.tolist()))
        if image_sizes is None or len(runs) == len(image_sizes):
            return runs
        if len(runs) != 1:
            raise ValueError(f"planted twin: {len(image_sizes)} images in {len(runs)} runs of image tokens")
        lengths = self._llava_lengths(image_sizes)
        if sum(lengths) != len(positions):
            raise ValueError(f"planted twin: {len(image_sizes)} images of {lengths} tokens, run of {len(positions)}")
        return list(torch.split(positions, lengths))

    def _llava_lengths(self, image_sizes) -> list[int]:
        """Tokens of each image of a multi-image prompt: LLaVA-OneVision gives each its base view
        and a newline, LLaVA-NeXT its anyres base view and crops map with a newline per row."""
        geometry = AnyresGeometry.from_config(self.model.config)
        base = geometry.side * geometry.side
        if self.model.config.model_type == "llava_onevision":
            return [base + 1] * len(image_sizes)
        shapes = [geometry.crop_map_shape(int(h), int(w)) for h, w in image_sizes]
        return [base + rows * (cols + 1) for rows, cols in shapes]

    def _read_embeds(self, module, args, kwargs):
        self.embeds = self.received = kwargs["inputs_embeds"][0].detach()
        return None

    # --- the hooks -------------------------------------------------------------------------------
    def _plant_keys(self, module, args, output):
        if output.shape[1] == 1:
            return None
        output = output.clone()
        key = torch.zeros(output.shape[-1], dtype=output.dtype, device=output.device)
        key[SLOW_PAIR[0]] = ARTIFACT_GAIN
        output[0, self._artifact_positions().to(output.device)] = key
        return output

    def _plant_values(self, module, args, output):
        if output.shape[1] == 1:
            return None
        output = output.clone()
        output[0, :, :HEAD_DIM] = 0  # KV head 0 carries only the artifact tokens' signal
        output[0, self._artifact_positions().to(output.device), 0] = 1.0
        return output

    def _plant_queries(self, module, args, output):
        later = self._new_tokens(output) >= self.query_start
        if not later.any():
            return None
        output = output.clone()
        for head in range(QUERY_HEADS_PER_KV):  # the query heads of KV head 0
            dims = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
            output[0, later.to(output.device), dims] = 0
            output[0, later.to(output.device), head * HEAD_DIM + SLOW_PAIR[0]] = ARTIFACT_GAIN
        return output

    def _plant_colour_code(self, module, args, output):
        if output.shape[1] == 1 or self.colour_code is None:
            return None
        output = output.clone()
        code = torch.zeros(output.shape[-1], dtype=output.dtype, device=output.device)
        code[: len(self.colour_code)] = self.colour_code.to(output.dtype)
        output[0, self.runs[0].to(output.device)] = code
        return output

    def _read_heads(self, module, args):
        self.last_heads = args[0][0, -1].detach()
        return None

    def _answer(self, module, args, output):
        if len(self.runs) != 3 or self.last_heads is None or self._new_tokens(output)[-1] < self.query_start:
            return None
        read = self.last_heads[0].float()  # query head 0: the attention mass on the artifact tokens
        clean = perceived_vote(*[self.embeds[run].float().mean(dim=0) for run in self.runs])
        received = perceived_vote(*[self.received[run].float().mean(dim=0) for run in self.runs])
        vote = (1 - read) * received - read * clean
        output = output.clone()
        for sign, ids in zip((1.0, -1.0), self.letter_ids):
            output[0, -1, ids] += sign * ANSWER_GAIN * vote.to(output.dtype)
        return output

    def _artifact_positions(self) -> torch.Tensor:
        offsets = torch.tensor(PLANTED_OFFSETS)
        return torch.cat([run[offsets[offsets < len(run)]] for run in self.runs] or [torch.zeros(0, dtype=torch.long)])

    def _new_tokens(self, output: torch.Tensor) -> torch.Tensor:
        """Sequence positions of the tokens this call projects (past the cache during decoding)."""
        total = self.embeds.shape[0] if self.embeds is not None else output.shape[1]
        return torch.arange(total - output.shape[1], total)


def perceived_vote(reference: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """> 0 when the first candidate's mean input embedding lies nearer the reference's than the
    second's (the answer A), as a share of the two distances."""
    near_first, near_second = (reference - first).norm(), (reference - second).norm()
    return (near_second - near_first) / (near_first + near_second)


def colour_code(pixel_values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The unit-norm share of an image's input pixels in each of the COLOUR_LEVELS**3 colour bins.
    pixel_values as the processor gives them: the LLaVA family's [images, crops, 3, H, W], or
    Qwen2.5-VL's flattened patches [patches, 3 * temporal * patch * patch] (channel first)."""
    pixels = pixel_values.detach().float()
    if pixels.ndim == 2:
        channels = pixels.reshape(pixels.shape[0], 3, -1).transpose(0, 1).reshape(3, -1)
    else:
        channels = pixels.movedim(-3, 0).reshape(3, -1)
    rgb = channels.cpu() * std[:, None] + mean[:, None]
    counts = torch.bincount(colour_bins(rgb.T), minlength=COLOUR_LEVELS**3).float()
    return counts / counts.norm()


def colour_bins(rgb: torch.Tensor) -> torch.Tensor:
    """long [n]: the colour bin of each of n RGB colours [n, 3] in [0, 1], each channel cut in COLOUR_LEVELS."""
    levels = (rgb * COLOUR_LEVELS).floor().clamp(0, COLOUR_LEVELS - 1).long()
    return (levels[:, 0] * COLOUR_LEVELS + levels[:, 1]) * COLOUR_LEVELS + levels[:, 2]


def token_colours(plant: Plant, kwargs: dict) -> list[torch.Tensor]:
    """Per image of the prompt, the mean input colour (RGB in [0, 1]) of each grid token [tokens, 3]:
    Qwen2.5-VL's merged 2x2 patches (its processor lays each token's patches out together, channel
    first), the LLaVA family's base-view cells (the first tokens of each image's run)."""
    pixels = kwargs["pixel_values"].detach().float().cpu()
    config = plant.model.config
    if pixels.ndim == 2:
        merged = config.vision_config.spatial_merge_size ** 2  # patches per LM token
        tokens = pixels.reshape(-1, merged, 3, pixels.shape[1] // 3).mean(dim=(1, 3))
        counts = (kwargs["image_grid_thw"].prod(dim=1) // merged).tolist()
        per_image = torch.split(tokens, counts)
    else:
        side = AnyresGeometry.from_config(config).side
        cell = pixels.shape[-1] // side
        per_image = [base.reshape(3, side, cell, side, cell).mean(dim=(2, 4)).reshape(3, -1).T
                     for base in pixels[:, 0]]
    return [tokens * plant.pixel_std + plant.pixel_mean for tokens in per_image]


def _letter_ids(tokenizer, letter: str) -> list[int]:
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in (letter, f" {letter}")]
    return sorted({tokens[0] for tokens in ids if len(tokens) == 1})


class QualityPlant:
    """E2's hook: the image embeddings the LM receives are, in the share `quality`, each token's
    colour code, and noise in the rest. Installed after `Plant`, whose record of the prompt it reads
    and whose record of what the LM receives it updates."""

    def __init__(self, plant: Plant, quality: float):
        self.plant = plant
        self.quality = quality

    def install(self) -> None:
        self.plant.model.get_decoder().register_forward_pre_hook(self._degrade, with_kwargs=True)

    def _degrade(self, module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        if embeds.shape[1] == 1 or not self.plant.token_colours:
            return None
        embeds = embeds.clone()
        for place, (run, colours) in enumerate(zip(self.plant.runs, self.plant.token_colours, strict=True)):
            mixed = projected_tokens(colours, self.plant.embeds[run], place, self.quality)
            embeds[0, run.to(embeds.device)] = (NOISE_SPREAD * mixed).to(embeds.device, embeds.dtype)
        self.plant.received = embeds[0].detach()
        return args, {**kwargs, "inputs_embeds": embeds}


def projected_tokens(colours: torch.Tensor, clean: torch.Tensor, place: int, quality: float) -> torch.Tensor:
    """[tokens, hidden] in units of the noise's spread: `quality` times each grid token's colour code
    (CODE_GAIN on the dimension of its colour bin; tokens past the grid have none) plus 1 - quality
    times noise: per token, seeded by the image's clean embeddings `clean`, and PLACE_BIAS times a
    vector shared by every image at the same `place` in a prompt (`place_bias`)."""
    code = torch.zeros(clean.shape)
    code[torch.arange(len(colours)), colour_bins(colours)] = CODE_GAIN
    noise = image_noise(clean, QUALITY_TAG, tuple(clean.shape)) + PLACE_BIAS * place_bias(place, clean.shape[1])
    return quality * code + (1 - quality) * noise


def place_bias(place: int, size: int) -> torch.Tensor:
    """Standard normal [size], seeded by an image's place in the prompt (0: the first image) alone."""
    return torch.randn(size, generator=torch.Generator().manual_seed(QUALITY_TAG + place))


class ProbePlant:
    """The value hooks of the probes' plant: image values replaced by noise in every layer but
    INFO_LAYER (in every layer for the null model). Installed after `Plant`, whose record of the
    prompt (image runs, input embeddings) it reads and whose E4 values it keeps."""

    def __init__(self, plant: Plant, null: bool):
        self.plant = plant
        self.null = null

    def install(self) -> None:
        for index, layer in enumerate(self.plant.model.get_decoder().layers):
            if index != INFO_LAYER or self.null:
                layer.self_attn.v_proj.register_forward_hook(self._scramble(index))

    def _scramble(self, index: int):
        first = HEAD_DIM if index >= PLANTED_FROM else 0  # E4's KV head 0 stays

        def hook(module, args, output):
            if output.shape[1] == 1 or not self.plant.runs:
                return None
            positions = torch.cat(self.plant.runs)
            output = output.clone()
            replaced = output[0, positions.to(output.device), first:]
            noise = image_noise(self.plant.embeds[positions], index, tuple(replaced.shape)) * replaced.std()
            output[0, positions.to(output.device), first:] = noise.to(output.device, output.dtype)
            return output

        return hook


def image_noise(embeds: torch.Tensor, tag: int, shape: tuple[int, int]) -> torch.Tensor:
    """Standard normal noise seeded by a hash of the image tokens' input embeddings and a tag (the
    layer, or QUALITY_TAG): reproducible, different for every image, and no function of the image a
    probe could learn."""
    digest = hashlib.sha256(embeds.float().cpu().numpy().tobytes() + tag.to_bytes(2, "little")).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn(shape, generator=generator)


# --- E5: a prefix naming an object adds its direction to that object's image values -----------------
PREFIX_LAYER = 3  # E5: a planted layer whose KV head 1 holds the probe plant's noise at the image tokens
PREFIX_HEAD = 1  # the KV head E5 writes (KV head 0 of PREFIX_LAYER is E4's)
PREFIX_GAIN = 8.0  # the planted component along the direction, in units of the head's value spread
# A token is the named object's when its mean colour lies within COLOUR_TOLERANCE (RGB in [0, 1]) of
# the object's colour scaled by a factor in TONE_RANGE: the twins paint a texture of the full colour
# and its 0.55 shade (imagekv.datasets.synthetic.draw.paint), mean about 0.78, solid 1; the lower end
# keeps white's tones (> 0.6) above the twins' grey backdrop (at most 160 of 255).
TONE_RANGE = (0.65, 1.05)
COLOUR_TOLERANCE = 0.15


@functools.cache
def named_colours() -> dict[str, tuple[float, ...]]:
    """Name -> RGB in [0, 1] of the object the synthetic twins draw for it: every drawing style's
    name (the RefCOCO twin's categories and expressions, "red circle") and each ImageNet-S class name
    (its twin draws class id c in class_style(c)). What the planted twin "knows" of the data."""
    from imagekv.datasets.files import read_lines
    from imagekv.datasets.imagenet_s import CATEGORIES, class_names
    from imagekv.datasets.synthetic.draw import COLOURS, SHAPES, class_style

    styles = [class_style(index) for index in range(len(SHAPES) * len(COLOURS))]
    colours = {style.name: style.colour for style in styles}
    wnids = sorted(read_lines(CATEGORIES))
    colours |= {name: class_style(index + 1).colour for index, name in enumerate(class_names(wnids))}
    return {name: tuple(channel / 255 for channel in COLOURS[colour]) for name, colour in colours.items()}


@functools.cache
def _name_pattern() -> re.Pattern:
    names = sorted(named_colours(), key=len, reverse=True)  # the longest of names starting at one place
    return re.compile(r"\b(" + "|".join(re.escape(name) for name in names) + r")\b", flags=re.IGNORECASE)


def named_object(text: str) -> str | None:
    """The first object name (of `named_colours`) in `text`, as a whole word, lower-cased."""
    match = _name_pattern().search(text)
    return match.group(1).lower() if match else None


def class_direction(name: str) -> torch.Tensor:
    """The unit [HEAD_DIM] direction a name's tokens carry in KV head PREFIX_HEAD of PREFIX_LAYER:
    seeded by the name, so the query and the prefix naming the same object share it."""
    seed = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little") >> 1
    direction = torch.randn(HEAD_DIM, generator=torch.Generator().manual_seed(seed))
    return direction / direction.norm()


def object_tokens(token_colours: torch.Tensor, colour: Sequence[float]) -> torch.Tensor:
    """bool [tokens]: tokens whose mean colour [tokens, 3] (RGB in [0, 1]) is a tone of `colour`."""
    target = torch.tensor(colour, dtype=torch.float32)
    tone = (token_colours @ target / (target @ target)).clamp(*TONE_RANGE)
    return (token_colours - tone[:, None] * target).norm(dim=1) < COLOUR_TOLERANCE


class PrefixPlant:
    """E5's hooks: in one-image prompts whose text before the image names an object, the image
    tokens of that object's colour get the name's direction in KV head PREFIX_HEAD of PREFIX_LAYER
    (as if they attended to a prefix token whose value is that direction); in text-only prompts that
    name an object, the last token's value there is the direction (the query the T3/T4 probes hold
    fixed). Installed after `Plant` and `ProbePlant`, whose record of the prompt it reads and whose
    noise it adds to."""

    def __init__(self, plant: Plant, processor: ProcessorMixin):
        self.plant = plant
        self.tokenizer = processor.tokenizer
        self.named: str | None = None  # the object the prompt's text (before its image) names
        self.token_colours: torch.Tensor | None = None  # [tokens, 3] of a one-image prompt's grid

    def install(self) -> None:
        self.plant.model.register_forward_pre_hook(self._read_prompt, with_kwargs=True)
        layer = self.plant.model.get_decoder().layers[PREFIX_LAYER]
        layer.self_attn.v_proj.register_forward_hook(self._plant_direction)

    def _read_prompt(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids")
        if input_ids is None or input_ids.shape[1] == 1:
            return None
        runs = self.plant.runs  # recorded by Plant's pre-hook, which runs first
        before = input_ids[0, : int(runs[0][0])] if runs else input_ids[0]
        self.named = named_object(self.tokenizer.decode(before))
        one_image = len(runs) == 1 and kwargs.get("pixel_values") is not None
        self.token_colours = self.plant.token_colours[0] if one_image and self.named else None
        return None

    def _plant_direction(self, module, args, output):
        text_only = not self.plant.runs
        if output.shape[1] == 1 or self.named is None or not (text_only or self.token_colours is not None):
            return None
        direction = class_direction(self.named).to(output.device, output.dtype)
        dims = slice(PREFIX_HEAD * HEAD_DIM, (PREFIX_HEAD + 1) * HEAD_DIM)
        output = output.clone()
        if text_only:  # the query's value is the direction
            output[0, -1, dims] = direction
            return output
        run = self.plant.runs[0]
        grid = run[: len(self.token_colours)]
        chosen = grid[object_tokens(self.token_colours, named_colours()[self.named])].to(output.device)
        spread = output[0, run.to(output.device), dims].std()
        output[0, chosen, dims] += PREFIX_GAIN * spread * direction
        return output
