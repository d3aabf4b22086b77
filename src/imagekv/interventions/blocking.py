"""E4 blocking: forbid attention from the queries after the image block to chosen image keys.

One mechanism for every architecture and attention backend: a forward pre-hook on the LM attention
module of each blocked layer rewrites the `attention_mask` it is about to receive (every decoder
layer of the three LMs passes it by keyword). The blocked columns of the rows at or after
`query_start` are set to the mask's "forbidden" value (False, or the dtype minimum of an additive
mask), so the softmax renormalises over the remaining keys in every head (GQA heads share key
positions). When sdpa is given no mask (its `is_causal` shortcut), the hook builds the causal
additive mask itself. Layers with nothing to block get no hook, so an empty block is the unmodified
forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn


def decoder_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every LM decoder layer, indexed by layer."""
    modules = [layer.self_attn for layer in model.get_decoder().layers]
    for index, module in enumerate(modules):
        if getattr(module, "layer_idx", index) != index:
            raise ValueError(f"decoder layer {index} holds attention with layer_idx {module.layer_idx}")
    return modules


@contextlib.contextmanager
def block_attention(
    model: nn.Module, blocked: Mapping[int, torch.Tensor], query_start: int
) -> Iterator[None]:
    """Within the block, layer l's queries at positions >= query_start cannot see keys blocked[l]."""
    modules = decoder_attention_modules(model)
    handles = []
    try:
        for layer, positions in sorted(blocked.items()):
            positions = torch.as_tensor(positions, dtype=torch.long).flatten().unique()
            _check_layer_block(layer, positions, query_start, len(modules))
            if positions.numel():
                hook = _mask_rewriter(positions, query_start)
                handles.append(modules[layer].register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_layer_block(layer: int, positions: torch.Tensor, query_start: int, num_layers: int) -> None:
    if not 0 <= layer < num_layers:
        raise ValueError(f"blocked layer {layer} outside the LM's {num_layers} layers")
    if positions.numel() and (positions.min() < 0 or positions.max() >= query_start):
        raise ValueError(
            f"layer {layer}: blocked key positions must lie in [0, query_start={query_start}), "
            f"got {positions.min().item()}..{positions.max().item()}"
        )


def _mask_rewriter(positions: torch.Tensor, query_start: int):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length(module.layer_idx) if cache is not None else 0
        query_positions = past + torch.arange(hidden.shape[1], device=hidden.device)
        mask = kwargs.get("attention_mask")
        kv_length = mask.shape[-1] if mask is not None else past + hidden.shape[1]
        columns = torch.zeros(kv_length, dtype=torch.bool, device=hidden.device)
        columns[positions[positions < kv_length].to(hidden.device)] = True
        block = (query_positions >= query_start)[:, None] & columns[None, :]  # [q, kv]
        if mask is None:
            mask = _causal_additive_mask(query_positions, kv_length, hidden.dtype)
        kwargs["attention_mask"] = _forbid(mask, block)
        return args, kwargs

    return hook


def _causal_additive_mask(query_positions: torch.Tensor, kv_length: int, dtype: torch.dtype) -> torch.Tensor:
    keys = torch.arange(kv_length, device=query_positions.device)
    future = keys[None, :] > query_positions[:, None]
    return torch.zeros(future.shape, dtype=dtype, device=keys.device).masked_fill(future, torch.finfo(dtype).min)[
        None, None
    ]


def _forbid(mask: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """`mask` ([batch, 1 or heads, q, kv], boolean allow-mask or additive) with `block` forbidden."""
    if mask.dtype == torch.bool:
        return mask & ~block
    return mask.masked_fill(block, torch.finfo(mask.dtype).min)


def random_control(
    blocked: Mapping[int, torch.Tensor], candidates: Sequence[int] | torch.Tensor, seed: int
) -> dict[int, torch.Tensor]:
    """Variant (c): per layer, as many positions as `blocked` has, drawn uniformly from `candidates`."""
    candidates = torch.as_tensor(candidates, dtype=torch.long).unique()
    generator = torch.Generator().manual_seed(seed)
    control = {}
    for layer, positions in sorted(blocked.items()):
        count = torch.as_tensor(positions).unique().numel()
        if count > candidates.numel():
            raise ValueError(f"layer {layer}: {count} blocked positions but only {candidates.numel()} candidates")
        control[layer] = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]].sort().values
    return control


def all_image_keys(layers: Sequence[int], image_positions: Sequence[int] | torch.Tensor) -> dict[int, torch.Tensor]:
    """Variant (d): every image key position in each of `layers`."""
    positions = torch.as_tensor(image_positions, dtype=torch.long)
    return {int(layer): positions for layer in layers}
