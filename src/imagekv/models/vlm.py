"""What the three multimodal LMs share: image keys and values read from the LM's own KV cache.

One forward pass per image, on the model's own chat-template prompt for one image, `prefix` where
the image part begins, tokenized as the processor's own chat-template path does (imagekv.models.prompts,
SPEC 3.2): under causal attention nothing after the image changes its KV, so the sequence stops
there; likewise the forward itself stops once the deepest layer read has written its cache. The
cache holds, per LM layer, keys after RoPE and values of shape
[batch, kv_heads, seq, head_dim]; at the image positions that the adapter puts on a raster grid, the
KV heads are concatenated per token into [layers, rows, cols, kv_heads*head_dim]. The projection is
the LM's input embedding at the same positions (what `hidden_states[0]` holds, SPEC 2.3a). The tower
is the input of the model's own projector, captured in the same forward: its fine-tuned vision
tower's output at the layer the projector reads, on the same grid (issue 17.3).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from PIL import Image
from transformers import AutoProcessor, DynamicCache, PreTrainedModel, ProcessorMixin

from imagekv.grid import TokenGrid
from imagekv.models.anyres import AnyresGeometry
from imagekv.models.base import Backbone, BackboneOutput
from imagekv.models.partial_forward import forward_until
from imagekv.models.prompts import image_prompt, image_query_prompt, processor_inputs, text_ids, text_prompt
from imagekv.models.planted import build_planted
from imagekv.models.tiny import build_tiny

KEY_MODES = ("post_rope", "pre_rope")  # as the cache holds them (default), or k_proj's output


class VlmBackbone(Backbone):
    """A multimodal LM; subclasses say which tiny twin and model class, and where its grid lies."""

    architecture: str  # tiny twin name in imagekv.models.tiny
    model_class: type[PreTrainedModel]

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, cfg: dict):
        self.model = model.eval()
        self.processor = processor
        self.cfg = cfg
        self.key_mode = cfg.get("keys", "post_rope")
        if self.key_mode not in KEY_MODES:
            raise ValueError(f"{self.name} config key 'keys' must be one of {KEY_MODES}, got {self.key_mode!r}")
        self.decoder_layers = model.get_decoder().layers
        self.num_layers = len(self.decoder_layers)
        self.image_token_id = processor.image_token_id
        image_prompt(processor)  # a template that cannot hold an image fails here, naming the processor

    @classmethod
    def from_config(cls, cfg: dict, *, device: str, dtype: torch.dtype, dataset=None) -> "VlmBackbone":
        source = cfg.get("source", "hub")
        if source == "hub":
            checkpoint, revision = cfg["checkpoint"], cfg["revision"]
            model = cls.model_class.from_pretrained(checkpoint, revision=revision, dtype=dtype)
            processor = AutoProcessor.from_pretrained(checkpoint, revision=revision)
        elif source == "tiny":
            model, processor = build_tiny(cls.architecture, seed=cfg.get("seed", 0))
        elif source == "planted":
            model, processor = build_planted(cls.architecture, seed=cfg.get("seed", 0))
        else:
            raise ValueError(f"{cls.name} config key 'source' must be 'hub', 'tiny' or 'planted', got {source!r}")
        return cls(model.to(device=device, dtype=dtype), processor, cfg)

    def prompt_text(self, prefix: str = "") -> str:
        """The exact text the processor receives for one image (its placeholder expands to its tokens;
        the tokenizer may add its BOS token before it)."""
        return image_prompt(self.processor, prefix)

    def model_inputs(self, image: Image.Image, prefix: str = "") -> dict:
        """The processor's tensors for one image after `prefix`, on the model's device."""
        return self._inputs(image, self.prompt_text(prefix))

    def _inputs(self, image: Image.Image, prompt: str) -> dict:
        inputs = processor_inputs(self.processor, prompt, [self.prepare_image(image)])
        return {name: tensor.to(self.model.device) for name, tensor in inputs.items()}

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """The image as handed to the processor; Qwen2.5-VL's fixed-resolution option resizes here."""
        return image

    def question_images(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """The prepared images of one multi-image question (BLINK), as handed to the processor."""
        return list(images)

    @property
    @abstractmethod
    def projector(self) -> torch.nn.Module:
        """The module mapping the vision tower's output to the LM's input width."""

    @abstractmethod
    def tower_tokens(
        self, projector_input: torch.Tensor, inputs: dict, token_index: torch.Tensor
    ) -> torch.Tensor | None:
        """[len(token_index), C]: the projector's input (as its forward receives it, for one image)
        belonging to the grid tokens `token_index`, in their order; None where the view has no
        one-to-one counterpart."""

    @abstractmethod
    def grid_tokens(self, inputs: dict, image: Image.Image, num_image_tokens: int) -> tuple[torch.Tensor, TokenGrid]:
        """Which of the image's tokens (indices into its run of image tokens) form the probed grid,
        in raster order, and the grid they form over the original image."""

    @torch.no_grad()
    def encode(
        self, images: Sequence[Image.Image], prefix: str = "", layers: Sequence[int] | None = None
    ) -> list[BackboneOutput]:
        layers = tuple(range(self.num_layers)) if layers is None else tuple(layers)
        prompt = self.prompt_text(prefix)
        with self._pre_rope_keys(layers) as pre_rope, self._lm_input() as lm_input:
            return [self._encode_one(image, prompt, layers, pre_rope, lm_input)[0] for image in images]

    @torch.no_grad()
    def encode_items(
        self, images: Sequence[Image.Image], prefixes: Sequence[str], queries: Sequence[str],
        layers: Sequence[int] | None = None,
    ) -> list[tuple[BackboneOutput, torch.Tensor]]:
        """Each image after its own prefix, its query after it in the same sequence: the image's
        features and the query's last-token value per layer [layers, C], from one forward."""
        layers = tuple(range(self.num_layers)) if layers is None else tuple(layers)
        with self._pre_rope_keys(layers) as pre_rope, self._lm_input() as lm_input:
            prompts = [image_query_prompt(self.processor, prefix, query)
                       for prefix, query in zip(prefixes, queries, strict=True)]
            return [self._encode_one(image, prompt, layers, pre_rope, lm_input)
                    for image, prompt in zip(images, prompts, strict=True)]

    def _encode_one(
        self, image: Image.Image, prompt: str, layers: tuple[int, ...], pre_rope: dict, lm_input: dict
    ) -> tuple[BackboneOutput, torch.Tensor]:
        """One forward on `prompt` (an image prompt, maybe followed by text); `pre_rope` and
        `lm_input` (LM input, projector input) are what the hooks capture during it. Also the last
        token's value per layer."""
        inputs = self._inputs(image, prompt)
        cache = self._fill_cache(inputs, max(layers)).layers
        image_positions = torch.nonzero(inputs["input_ids"][0] == self.image_token_id).squeeze(1)
        token_index, grid = self.grid_tokens(inputs, image, len(image_positions))
        positions = image_positions[token_index.to(image_positions.device)]
        if self.key_mode == "post_rope":
            keys = heads_per_token([cache[layer].keys[0] for layer in layers], positions)
        else:
            keys = torch.stack([pre_rope[layer][0, positions] for layer in layers])
        values = heads_per_token([cache[layer].values[0] for layer in layers], positions)
        last_token = torch.tensor([inputs["input_ids"].shape[1] - 1])
        last = heads_per_token([cache[layer].values[0] for layer in layers], last_token)
        tower = self.tower_tokens(lm_input["projector_input"], inputs, token_index)
        shape = (grid.rows, grid.cols, -1)
        output = BackboneOutput(
            values=values.reshape(len(layers), *shape).cpu(),
            keys=keys.reshape(len(layers), *shape).cpu(),
            projection=lm_input["inputs_embeds"][0, positions].reshape(*shape).cpu(),
            grid=grid,
            layers=layers,
            tower=None if tower is None else tower.reshape(*shape).cpu(),
        )
        return output, last[:, 0].cpu()

    def _fill_cache(self, inputs: dict, deepest: int) -> DynamicCache:
        """The model's own cache of a forward on `inputs`, run until attention of layer `deepest` has
        written to it: its MLP, the layers above, the final norm and the LM head (logits at every
        position) cannot change what is read."""
        cache = DynamicCache(config=self.model.config)
        stop_after = self.decoder_layers[deepest].self_attn
        forward_until(self.model, stop_after, {**inputs, "past_key_values": cache, "use_cache": True})
        return cache

    @contextmanager
    def _lm_input(self):
        """Collect the embeddings the LM receives (image features merged in): the projection; and
        what the projector receives: the tower. Hooks rather than output_hidden_states, which would
        keep every layer's hidden states."""
        captured: dict[str, torch.Tensor] = {}

        def keep(module, args, kwargs):
            captured["inputs_embeds"] = kwargs["inputs_embeds"]

        def keep_projector_input(module, args):
            captured["projector_input"] = args[0]

        handles = [
            self.model.get_decoder().register_forward_pre_hook(keep, with_kwargs=True),
            self.projector.register_forward_pre_hook(keep_projector_input),
        ]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def _pre_rope_keys(self, layers: Sequence[int]):
        """Collect k_proj's output (keys before RoPE, KV heads already side by side) of `layers`."""
        captured: dict[int, torch.Tensor] = {}
        if self.key_mode != "pre_rope":
            yield captured
            return

        def keep(layer: int):
            return lambda module, args, output: captured.__setitem__(layer, output)

        handles = [self.decoder_layers[layer].self_attn.k_proj.register_forward_hook(keep(layer)) for layer in layers]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], prefix: str = "", layers: Sequence[int] | None = None) -> torch.Tensor:
        """Value of each text's last token per layer, `prefix + text` alone in the template's user turn."""
        layers = tuple(range(self.num_layers)) if layers is None else tuple(layers)
        rows = []
        for text in texts:
            ids = text_ids(self.processor, text_prompt(self.processor, prefix + text))
            cache = self._fill_cache({"input_ids": ids.to(self.model.device)}, max(layers))
            last = torch.tensor([ids.shape[1] - 1])
            rows.append(heads_per_token([cache.layers[layer].values[0] for layer in layers], last)[:, 0])
        return torch.stack(rows).cpu()


def heads_per_token(cache_entries: Sequence[torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """Per layer [kv_heads, seq, head_dim] at `positions` -> [layers, tokens, kv_heads*head_dim], heads
    side by side in head order, as k_proj/v_proj lay them out before the per-head split."""
    index = positions.to(cache_entries[0].device)
    selected = torch.stack([entry[:, index] for entry in cache_entries])  # [layers, kv_heads, tokens, head_dim]
    return selected.permute(0, 2, 1, 3).reshape(len(cache_entries), len(positions), -1)


class AnyresBackbone(VlmBackbone):
    """LLaVA-OneVision and LLaVA-NeXT: the base view (the whole image squashed to one crop, side x
    side tokens, raster order, no newlines) comes first, then the unpadded high-resolution map of the
    anyres crops with one newline token after each row. Both grids' shapes and pixel footprints come
    from the image size and the model config (imagekv.models.anyres). Config key `view`: base
    (default) | crops."""

    VIEWS = ("base", "crops")

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, cfg: dict):
        super().__init__(model, processor, cfg)
        self.geometry = AnyresGeometry.from_config(model.config)
        self.side = self.geometry.side
        self.view = cfg.get("view", "base")
        if self.view not in self.VIEWS:
            raise ValueError(f"{self.name} config key 'view' must be one of {self.VIEWS}, got {self.view!r}")

    @property
    def projector(self) -> torch.nn.Module:
        return self.model.model.multi_modal_projector

    def tower_tokens(
        self, projector_input: torch.Tensor, inputs: dict, token_index: torch.Tensor
    ) -> torch.Tensor | None:
        """The projector receives [crops, tokens, C], the tower's selected layer (CLS dropped with
        strategy "default"), the base view first. Only the base view maps token for token onto the
        grid (the crops map is unpadded and joined after the projector)."""
        if self.view != "base":
            return None
        return projector_input[0, token_index.to(projector_input.device)]

    def grid_tokens(self, inputs: dict, image: Image.Image, num_image_tokens: int) -> tuple[torch.Tensor, TokenGrid]:
        base = self.side * self.side
        if self.view == "base":
            footprint = self.geometry.base_footprint(image.height, image.width)
            return torch.arange(base), TokenGrid(self.side, self.side, image.height, image.width, footprint)
        height, width = (int(size) for size in inputs["image_sizes"][0])  # what the model unpads with
        rows, cols = self.geometry.crop_map_shape(height, width)
        if rows < 1 or cols < 1:
            raise ValueError(
                f"{self.name}: image of {width}x{height} px unpads to an empty {rows}x{cols} crops map; use view: base"
            )
        if base + rows * (cols + 1) != num_image_tokens:
            raise ValueError(
                f"{self.name}: image of {width}x{height} px has {num_image_tokens} image tokens, but its base view "
                f"({base}) and a crops map of {rows}x{cols} tokens with a newline per row make "
                f"{base + rows * (cols + 1)}; the processor did not pack this image as one anyres image"
            )
        index = base + torch.arange(rows)[:, None] * (cols + 1) + torch.arange(cols)[None, :]
        footprint = self.geometry.crop_map_footprint(height, width)
        return index.flatten(), TokenGrid(rows, cols, image.height, image.width, footprint)
