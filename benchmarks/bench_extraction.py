"""Extraction overhead on the tiny twins, side by side. Prints figures; asserts nothing.

For each backbone:
- time: extraction wall time (decode, input building, forward, slice, fp16 store) over the time of
  the same images through bare `model(**inputs, use_cache=True)` forwards, their inputs built the
  same way in the same order (decode, the adapter's resize, the stock processor), so that the ratio
  is what the extraction adds to running the model at all (target <= 1.05x). Both are timed warm
  (an untimed extraction first meets every input shape), in `--repeats` pairs of back-to-back runs;
  the figure is the median of the pairs' ratios (their range beside it), as the speed of these two
  shared cores drifts by tens of percent over seconds. Then the seconds the extraction spent
  building inputs: on the tiny twins a forward is milliseconds, so input building weighs far more
  than at full size;
- bytes: size of the shard files over the fp16 minimum of the tensors they hold (target <= 1.02x);
- memory: peak RSS of a whole extraction run in a fresh process at 10 and at 200 images (target flat,
  <= 1.1x).

    PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/bench_extraction.py [--images 100] [--repeats 7] [--models ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from imagekv import plan
from imagekv.datasets import load_dataset
from imagekv.datasets.synthetic import synthesize
import imagekv.extract as extract_module
from imagekv.extract import Extraction
from imagekv.features import MANIFEST
from imagekv.models.vlm import VlmBackbone

SMOKE_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
TINY_TWINS = ("llava_onevision", "qwen2_5_vl", "llava_next", "siglip")
RSS_SIZES = (10, 200)


def spec_for(model: str, root: Path, images: int) -> dict:
    """The smoke run's extraction spec of `model` (its tiny twin, batch size, shard size, store),
    on `images` images of a synthetic COCO pool at `root`, on the CPU in float32."""
    config = yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))
    spec = plan.extraction_spec(config, model, "coco_pool", "none")
    return {**spec, "dataset_root": str(root), "dataset_cfg": {"num_images": images}, "device": "cpu", "dtype": "float32"}


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


def time_and_bytes(model: str, root: Path, images: int, work: Path, repeats: int) -> tuple[float, float, float, list[float], float]:
    """`repeats` warm pairs of runs, an extraction and the bare side back to back (which goes first
    alternates, so a drift of the machine's speed within a pair cancels out): the medians of extraction
    seconds, of its seconds building inputs and of bare seconds, the pairs' time ratios, and shard
    bytes over the fp16 minimum."""
    spec = spec_for(model, root, images)
    dataset = load_dataset("coco_pool", root, spec["dataset_cfg"])
    warm_up = Extraction(spec, dataset, work / model / "warm-up" / MANIFEST)
    warm_up.run()  # untimed: builds the backbone and meets every input shape once
    backbone = warm_up.backbone
    timers = [TimedCalls.install(owner, name) for owner, name in input_steps(backbone)]
    extraction, inputs, bare = [], [], []
    for repeat in range(repeats):
        job = Extraction(spec, dataset, work / model / f"run{repeat}" / MANIFEST)
        job.backbone = backbone  # already built
        if repeat % 2:
            bare.append(bare_seconds(job))
        for timer in timers:
            timer.seconds = 0.0
        start = time.perf_counter()
        job.run()
        extraction.append(time.perf_counter() - start)
        inputs.append(sum(timer.seconds for timer in timers))
        if not repeat % 2:
            bare.append(bare_seconds(job))
    ratios = [e / b for e, b in zip(extraction, bare)]
    medians = (statistics.median(values) for values in (extraction, inputs, bare))
    return (*medians, ratios, bytes_ratio(job.shard_dir))


@torch.no_grad()
def bare_seconds(job: Extraction) -> float:
    """The job's images in its batches, decoded and made into inputs as the extraction does, through
    bare forwards and nothing else: the model run without the extraction."""
    start = time.perf_counter()
    for shard in job.plan():
        for first in range(0, len(shard.keys), job.batch_size) if shard.kind == "images" else ():
            ids = shard.keys[first : first + job.batch_size]
            bare_forward(job.backbone, [extract_module.load_rgb(job.refs[image_id].path) for image_id in ids])
    return time.perf_counter() - start


def bare_forward(backbone, images: list) -> None:
    """`model(**inputs, use_cache=True)` per image for the MLMs (one image per sequence, as extracted);
    SigLIP's `model(**inputs)` on the whole batch, as extracted."""
    if isinstance(backbone, VlmBackbone):
        for image in images:
            backbone.model(**backbone.model_inputs(image), use_cache=True)
    else:
        backbone.model(**backbone.processor(images=images, return_tensors="pt"))


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
    parser.add_argument("--repeats", type=int, default=7, help="timed pairs of runs; medians count")
    parser.add_argument("--models", nargs="+", default=list(TINY_TWINS), choices=TINY_TWINS)
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
        print(f"{'backbone':<16} {'extract s':>10} {'bare s':>8} {'time x':>7} {'pairs':>11} {'inputs s':>9} {'bytes x':>8} "
              f"{'RSS@10 MB':>10} {'RSS@200 MB':>11} {'RSS x':>6}")
        for model in args.models:
            extraction, inputs, bare, ratios, stored = time_and_bytes(model, root, args.images, work / "time", args.repeats)
            small, large = (peak_rss_mb(model, root, n, work / "rss") for n in RSS_SIZES)
            pairs = f"{min(ratios):.2f}-{max(ratios):.2f}"
            print(f"{model:<16} {extraction:>10.3f} {bare:>8.3f} {statistics.median(ratios):>7.3f} {pairs:>11} {inputs:>9.3f} "
                  f"{stored:>8.4f} {small:>10.0f} {large:>11.0f} {large / small:>6.3f}", flush=True)
    print("targets: time x <= 1.05, bytes x <= 1.02, RSS x <= 1.1")


if __name__ == "__main__":
    main()
