"""Extraction overhead on the tiny twins, side by side. Prints figures; asserts nothing.

For each backbone:
- time: extraction wall time (decode, input building, forward, slice, fp16 store) over the time of
  bare `model(**inputs, use_cache=True)` forwards replaying the very inputs the adapter built (target
  <= 1.05x). Both sides are timed warm (an untimed extraction first, so every input shape has been
  seen) and as the best of `--repeats` runs, which takes out most of the scheduling noise of two
  shared cores. Beside it, the seconds spent building inputs (image decode, the adapter's resize
  and the stock processor; the bare forward is handed them ready) and the ratio without them: what
  the extraction adds to a forward that any use of the model makes anyway. On tiny twins the
  forward is milliseconds, so input building weighs far more than at full size;
- bytes: size of the shard files over the fp16 minimum of the tensors they hold (target <= 1.02x);
- memory: peak RSS of a whole extraction run in a fresh process at 10 and at 200 images (target flat,
  <= 1.1x).

    PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/bench_extraction.py [--images 100] [--repeats 3] [--models ...]
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

from imagekv.datasets import load_dataset
from imagekv.datasets.synthetic import synthesize
import imagekv.extract as extract_module
from imagekv.extract import Extraction
from imagekv.features import MANIFEST

TINY_TWINS = {
    "llava_onevision": {"source": "tiny"},
    "qwen2_5_vl": {"source": "tiny"},
    "llava_next": {"source": "tiny"},
    "siglip": {"source": "tiny"},
}
RSS_SIZES = (10, 200)


def spec_for(model: str, root: Path, images: int) -> dict:
    return {
        "run": "bench", "model": model, "model_cfg": TINY_TWINS[model], "dataset": "coco_pool",
        "dataset_root": str(root), "dataset_cfg": {"num_images": images}, "prefix": "", "prefix_name": "none",
        "layers": "all", "store": ["values", "keys", "projection"] if model != "siglip" else ["values"],
        "batch_size": 4, "device": "cpu", "dtype": "float32", "store_dtype": "float16", "images_per_shard": 16,
    }


class TimedCalls:
    """Delegates to `target` and sums the seconds spent in calls of it."""

    def __init__(self, target):
        self.target, self.seconds = target, 0.0

    @classmethod
    def install(cls, owner, name: str) -> "TimedCalls":
        """Replace attribute `name` of `owner` (a module or an object) by a timed wrapper of it."""
        timer = cls(getattr(owner, name))
        setattr(owner, name, timer)
        return timer

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.target(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self.target, name)


def record_model_inputs(model: torch.nn.Module) -> tuple[list[dict], object]:
    """Collect the tensor inputs of every forward call of `model`; returns (calls, hook handle)."""
    calls: list[dict] = []
    signature = inspect.signature(model.forward)

    def hook(module, args, kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments
        calls.append({name: value for name, value in bound.items() if torch.is_tensor(value)})

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


@torch.no_grad()
def bare_forward_seconds(model: torch.nn.Module, calls: list[dict]) -> float:
    extra = {"use_cache": True} if "input_ids" in calls[0] else {}
    start = time.perf_counter()
    for inputs in calls:
        model(**inputs, **extra)
    return time.perf_counter() - start


def time_and_bytes(model: str, root: Path, images: int, work: Path, repeats: int) -> tuple[float, float, float, float]:
    """Best of `repeats` warm runs: (extraction seconds, of which building inputs, bare forward
    seconds), and shard bytes over the fp16 minimum."""
    spec = spec_for(model, root, images)
    dataset = load_dataset("coco_pool", root, spec["dataset_cfg"])
    warm_up = Extraction(spec, dataset, work / model / "warm-up" / MANIFEST)
    warm_up.run()  # untimed: builds the backbone and meets every input shape once
    backbone = warm_up.backbone
    timers = [TimedCalls.install(owner, name) for owner, name in input_steps(backbone)]
    best = None
    for repeat in range(repeats):
        job = Extraction(spec, dataset, work / model / f"run{repeat}" / MANIFEST)
        job.backbone = backbone  # already built
        for timer in timers:
            timer.seconds = 0.0
        calls, handle = record_model_inputs(backbone.model)
        start = time.perf_counter()
        job.run()
        seconds = time.perf_counter() - start
        handle.remove()
        if best is None or seconds < best[0]:
            best = (seconds, sum(timer.seconds for timer in timers), calls)
    seconds, inputs, calls = best
    forward = min(bare_forward_seconds(backbone.model, calls) for _ in range(repeats))
    return seconds, inputs, forward, bytes_ratio(job.shard_dir)


def input_steps(backbone) -> list[tuple[object, str]]:
    """Where the extraction builds model inputs: image decode, the adapter's own resize (Qwen2.5-VL's
    fixed resolution), the stock processor."""
    steps = [(extract_module, "load_rgb"), (backbone, "processor")]
    return steps + ([(backbone, "prepare_image")] if hasattr(backbone, "prepare_image") else [])


def bytes_ratio(shard_dir: Path) -> float:
    stored = minimum = 0
    for path in sorted(shard_dir.glob("*.safetensors")):
        stored += path.stat().st_size
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                minimum += 2 * torch.Size(handle.get_slice(name).get_shape()).numel()
    return stored / minimum


def peak_rss_mb(model: str, root: Path, images: int, work: Path) -> float:
    """Peak RSS of an extraction run in a fresh process."""
    command = [sys.executable, __file__, "--rss-child", model, str(root), str(images), str(work / f"{model}-{images}")]
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ)
    return float(result.stdout.split()[-1])


def rss_child(model: str, root: str, images: int, out: str) -> None:
    spec = spec_for(model, Path(root), images)
    Extraction(spec, load_dataset("coco_pool", Path(root), spec["dataset_cfg"]), Path(out) / "manifest.json").run()
    print(peak_rss_of_this_process_mb())


def peak_rss_of_this_process_mb() -> float:
    """VmHWM, the peak RSS of this process's own memory map. Not ru_maxrss: Linux carries that over
    from the parent across fork and exec, so a child forked from a large parent reports the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="images for the time and bytes figures")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the best counts")
    parser.add_argument("--models", nargs="+", default=list(TINY_TWINS), choices=list(TINY_TWINS))
    parser.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        model, root, images, out = args.rss_child
        rss_child(model, root, int(images), out)
        return
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "coco_pool"
        synthesize("coco_pool", root, {"images": max(RSS_SIZES + (args.images,))}, seed=0)
        print(f"{'backbone':<16} {'extract s':>10} {'inputs s':>9} {'forward s':>10} {'time x':>7} "
              f"{'x w/o inputs':>12} {'bytes x':>8} {'RSS@10 MB':>10} {'RSS@200 MB':>11} {'RSS x':>6}")
        for model in args.models:
            extraction, inputs, forward, stored = time_and_bytes(model, root, args.images, work / "time", args.repeats)
            small, large = (peak_rss_mb(model, root, n, work / "rss") for n in RSS_SIZES)
            print(f"{model:<16} {extraction:>10.3f} {inputs:>9.3f} {forward:>10.3f} {extraction / forward:>7.2f} "
                  f"{(extraction - inputs) / forward:>12.2f} {stored:>8.4f} {small:>10.0f} {large:>11.0f} "
                  f"{large / small:>6.3f}", flush=True)
    print("targets: time x <= 1.05, bytes x <= 1.02, RSS x <= 1.1")


if __name__ == "__main__":
    main()
