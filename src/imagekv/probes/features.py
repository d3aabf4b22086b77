"""Helpers shared by the probes: reading features, token labels from masks, scores back to pixels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from imagekv.datasets.schema import VOID
from imagekv.grid import TokenGrid

CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")  # Linux sysfs: index*/{level,type,size}
# Where sysfs does not say (not Linux, or hidden in a container): a small server L3 slice, so
# blocks err small (a too small block costs Python overhead; a too large one, DRAM bandwidth).
FALLBACK_CACHE_BYTES = 8 * 2**20


def last_level_cache_bytes(caches: Path = CPU_CACHES) -> int:
    """Size of the largest data cache CPU 0 uses (sysfs `size` such as "8192K"), or
    FALLBACK_CACHE_BYTES when sysfs does not say."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    sizes = []
    for index in sorted(caches.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if size[:-1].isdigit() and size[-1] in units:
            sizes.append(int(size[:-1]) * units[size[-1]])
        elif size.isdigit():
            sizes.append(int(size))
    return max(sizes, default=FALLBACK_CACHE_BYTES)


# Half the last-level cache (8 MB on the 2-core EPYC these runs are measured on, 32 MB on a
# larger server complex), leaving room for everything else the solver touches.
CACHE_BLOCK_BYTES = last_level_cache_bytes() // 2

if TYPE_CHECKING:
    from imagekv.probes import FeatureSource


def probe_device() -> torch.device:
    """Probes run on the GPU when there is one; results do not depend on it."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.normalize(x, dim=dim, eps=1e-12)


def token_features(source: "FeatureSource", image_id: str, normalize: bool = True) -> torch.Tensor:
    """[L, rows*cols, C] float32 features of one image on the probe device, raster order,
    L2-normalised per token unless `normalize` is False."""
    if normalize:
        return stacked_token_features(source, [image_id])
    values = source.features(image_id)
    return values.reshape(values.shape[0], -1, values.shape[-1]).to(probe_device(), torch.float32)


def stacked_token_features(
    source: "FeatureSource", image_ids: Sequence[str], keep: Sequence[np.ndarray] | None = None
) -> torch.Tensor:
    """[L, tokens, C]: the L2-normalised tokens of several images (only those where `keep` [rows*cols]
    is true, if given), concatenated."""
    return normalized_stack(token_rows(source, image_ids, keep))


def token_rows(
    source: "FeatureSource", image_ids: Sequence[str], keep: Sequence[np.ndarray] | None = None
) -> list[torch.Tensor]:
    """Per image, [L, tokens, C] features as the source holds them, raster order (only the tokens
    where `keep` [rows*cols] is true, if given); `normalized_stack` makes probe input of them."""
    rows = []
    for index, image_id in enumerate(image_ids):
        values = source.features(image_id)
        flat = values.reshape(values.shape[0], -1, values.shape[-1])
        if keep is not None and not keep[index].all():
            flat = flat[:, torch.from_numpy(keep[index]).to(flat.device)]
        rows.append(flat)
    return rows


def normalized_stack(rows: Sequence[torch.Tensor], layers: slice = slice(None)) -> torch.Tensor:
    """[layers, tokens, C] float32 on the probe device: `rows` (float32, `FeatureSource.features`)
    concatenated along the tokens and L2-normalised per token. Each part is divided by its norms
    straight into one buffer: on CPU every fresh large tensor costs page faults comparable to several
    solver passes, and a copy followed by a division in place moves the data twice (~2x slower)."""
    num_layers = len(range(*layers.indices(rows[0].shape[0])))
    out = torch.empty(num_layers, sum(r.shape[1] for r in rows), rows[0].shape[-1], device=probe_device())
    start = 0
    for part in rows:
        stored = part[layers].to(out.device)
        norms = torch.linalg.vector_norm(stored, dim=-1, keepdim=True).clamp_min_(1e-12)
        torch.div(stored, norms, out=out[:, start : start + part.shape[1]])
        start += part.shape[1]
    return out


# Layers per block at least: the solver's many small operations each cost ~2-10 us of Python and
# dispatch whatever the block, and two threads solving blocks at once contend for the GIL at each;
# on the T1 benchmark, two threads, one 512-d layer per block took ~12 % longer than two (1,024-d:
# the same), interleaved runs on a quiet machine.
MIN_BLOCK_LAYERS = 2


def layer_blocks(num_layers: int, layer_bytes: int) -> list[slice]:
    """Consecutive blocks of layers for a probe that makes many passes over its [L, n, C] input.
    On CPU a block holds at most CACHE_BLOCK_BYTES, so where layers are small enough it is built
    and then read from the last-level cache instead of DRAM for the whole computation (the
    batched T1 solve ran ~4x faster per pass with a 32 MB cache), and its buffer is small enough
    for the allocator to reuse without fresh page faults. Larger layers go MIN_BLOCK_LAYERS to a
    block, whose products the solver runs over cache-sized chunks of tokens (`chunk_tokens`).
    On the GPU all layers form one block."""
    if probe_device().type != "cpu":
        return [slice(0, num_layers)]
    per_block = max(MIN_BLOCK_LAYERS, CACHE_BLOCK_BYTES // max(1, layer_bytes))
    return [slice(start, min(start + per_block, num_layers)) for start in range(0, num_layers, per_block)]


def chunk_tokens(num_tokens: int, token_bytes: int) -> int:
    """Tokens per chunk for a pass that reads a block's tokens twice in a row (a product, then
    the transposed product with its result): on CPU a chunk holds at most half of
    CACHE_BLOCK_BYTES, so its second read comes from the cache while the other thread's chunk
    also fits; the GPU takes all tokens at once."""
    if probe_device().type != "cpu":
        return num_tokens
    return max(1, min(num_tokens, CACHE_BLOCK_BYTES // 2 // max(1, token_bytes)))


def solve_blocks(solve: Callable[[slice], None], blocks: Sequence[slice]) -> None:
    """Call solve(block) for every block. On CPU the blocks run concurrently, one per intra-op
    thread, each single-threaded: a multi-threaded product synchronises its threads after every
    call, which on a shared machine waits for a descheduled thread (a batch-2 product on 2 threads
    measured 2.5x slower than on 1 at load ~24), and the solver's many small operations run on one
    thread anyway. Torch releases the GIL inside its operations, so the blocks' work overlaps."""
    threads = torch.get_num_threads()
    if probe_device().type != "cpu" or threads == 1 or len(blocks) < 2:
        for block in blocks:
            solve(block)
        return
    torch.set_num_threads(1)  # read by each new worker thread at its first operation
    try:
        with ThreadPoolExecutor(min(threads, len(blocks))) as pool:
            for done in pool.map(solve, blocks):
                pass  # re-raises a worker's exception
    finally:
        torch.set_num_threads(threads)


def keep_tokens(source: "FeatureSource", image_id: str, keep: np.ndarray | None = None) -> np.ndarray:
    """bool [rows*cols]: the image's tokens a probe may use, `keep` (default all) minus the
    source's excluded tokens."""
    if keep is None:
        keep = np.ones(source.grid(image_id).num_tokens, dtype=bool)
    excluded = source.excluded(image_id)
    return keep if excluded is None else keep & ~excluded


def kept_tokens(source: "FeatureSource", image_id: str) -> torch.Tensor:
    """keep_tokens as a bool tensor on the probe device."""
    return torch.from_numpy(keep_tokens(source, image_id)).to(probe_device())


def token_labels(
    mask: np.ndarray, grid: TokenGrid, threshold: float = 0.5, ambiguous: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Binary token labels from a binary mask with void: (labels [rows*cols] in {0, 1}, usable
    [rows*cols] bool). A token is foreground when at least `threshold` of its non-void pixels are;
    cells made only of void pixels, and with `ambiguous=(lo, hi)` cells whose coverage lies strictly
    between lo and hi, are not usable."""
    coverage = grid.coverage(mask == 1, ignore=mask == VOID).ravel()
    usable = ~np.isnan(coverage)
    if ambiguous is not None:
        low, high = ambiguous
        usable &= ~((coverage > low) & (coverage < high))
    labels = np.where(usable, coverage >= threshold, False).astype(np.float32)
    return labels, usable


def soft_token_labels(label_map: np.ndarray, grid: TokenGrid, num_labels: int) -> np.ndarray:
    """[rows*cols, num_labels] fraction of each cell's non-void pixels carrying each label id
    0..num_labels-1 (rows of all-void cells are zero)."""
    void = label_map == VOID
    columns = [np.nan_to_num(grid.coverage(label_map == k, ignore=void).ravel()) for k in range(num_labels)]
    return np.stack(columns, axis=1).astype(np.float32)


def to_pixels(token_scores: torch.Tensor, grid: TokenGrid) -> np.ndarray:
    """Bilinearly upsample [..., rows*cols] token scores (raster order) to [..., H, W] pixels."""
    shaped = token_scores.reshape(*token_scores.shape[:-1], grid.rows, grid.cols)
    return grid.to_pixels(shaped).cpu().numpy()
