"""Where two feature stores of the same spec differ, value by value: the failure message of the
reproducibility tests (issue 20).

A bare "bytes differ" cannot tell the causes apart; the pattern can. Per differing tensor it lists,
per layer, how many stored values differ, in which keys (images or texts) and by how many steps of
the stored dtype at most. For an MLM store, a difference in the rotary cos/sin (shared by all
layers) moves the keys of every layer about equally; one in layer 0's key projection moves layer
0's keys and only a few deeper ones; one in the LM's input moves layer 0's values as well.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from imagekv.features import SHARD_DIR, key_rows, read_shard_metadata


def store_differences(expected: Path, actual: Path) -> list[str]:
    """One line per differing tensor of each shard both stores hold, and per file only one holds."""
    lines = []
    expected_shards, actual_shards = _shards(expected), _shards(actual)
    for name in sorted(expected_shards.keys() ^ actual_shards.keys()):
        lines.append(f"{name}: only in {expected if name in expected_shards else actual}")
    for name in sorted(expected_shards.keys() & actual_shards.keys()):
        lines += shard_differences(expected_shards[name], actual_shards[name])
    return lines


def shard_differences(expected: Path, actual: Path) -> list[str]:
    """Per tensor and layer of two shards: differing values, the keys holding them, the largest step."""
    meta = read_shard_metadata(expected)
    if read_shard_metadata(actual) != meta:
        return [f"{expected.name}: metadata differs"]
    rows = key_rows(meta)
    want, got = load_file(str(expected)), load_file(str(actual))
    lines = []
    for name in sorted(want.keys() | got.keys()):
        if name not in want or name not in got or want[name].shape != got[name].shape:
            lines.append(f"{expected.name} {name}: missing or of another shape")
            continue
        differs = want[name] != got[name]  # [layers, rows, C]
        layers = meta.get("layers")
        for row in torch.nonzero(differs.flatten(1).any(1)).flatten().tolist():
            label = f"layer {layers[row]}" if layers and len(layers) == len(differs) else f"row {row}"
            keys = [key for key, (start, stop) in zip(meta["keys"], rows) if differs[row, start:stop].any()]
            steps = _steps(want[name][row], got[name][row]).max().item()
            lines.append(f"{expected.name} {name} {label}: {int(differs[row].sum())} of {differs[row].numel()} "
                         f"values differ, in {keys}, by up to {steps} step(s)")
    return lines


def _shards(store: Path) -> dict[str, Path]:
    return {path.name: path for path in sorted((store / SHARD_DIR).glob("*.safetensors"))}


def _steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in representable values of a float dtype (same-sign values; a sign change counts big)."""
    bits = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return (a.view(bits).to(torch.int64) - b.view(bits).to(torch.int64)).abs()
