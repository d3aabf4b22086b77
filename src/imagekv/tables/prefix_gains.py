"""R-T3: per MLM, task and text-prefix condition, the best layer of the image-value probe and its
gain over the condition's baseline (no prefix; for the in-context variant, no prefix with the query
in context), with a paired-bootstrap 95 % interval over units (SPEC E5; imagekv.interventions.prefix).
The scores are means over units of the headline metric (an image's queries, an episode, a set, a
pair, a clip), so they can differ slightly from the pooled metric of the figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imagekv.interventions.prefix import condition_order
from imagekv.labels import MODEL_LABELS, Provenance
from imagekv.probes.headline import TASK_ORDER
from imagekv.results import read_table
from imagekv.tables import write_table

CAPTION = ("Image-value probes with a text prefix before the image: best layer (mean over units) and gain over "
           "the baseline, paired-bootstrap 95% interval")


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    order = condition_order(frame["prefix"])
    table = pd.DataFrame({
        "model": frame["model"].map(lambda m: MODEL_LABELS.get(m, m)),
        "task": frame["task"],
        "metric": frame["metric"],
        "prefix": frame["prefix"],
        "baseline": frame["baseline"],
        "units": frame["units"].astype(int),
        "best_layer": frame["best_layer"].astype(int),
        "best": frame["best"].astype(float),
        "baseline_best": frame["baseline_best"].astype(float),
        "gain": frame["gain"].astype(float),
        "95% CI": [f"[{low:+.3f}, {high:+.3f}]" for low, high in zip(frame["low"], frame["high"])],
    })
    keys = [table["task"].map(TASK_ORDER.index), table["model"], table["prefix"].map(order.index)]
    return table.assign(_t=keys[0], _p=keys[2]).sort_values(["_t", "model", "_p"]).drop(columns=["_t", "_p"])


def write(results: str | Path, stem: str | Path, run: str, scale: str) -> None:
    frame = read_table(results)
    provenance = Provenance(
        run=run, scale=scale, models=sorted(frame["model"].unique()), grid="each store's",
        prefix=", ".join(condition_order(frame["prefix"])),
        samples=", ".join(f"{t}={n}" for t, n in frame.groupby("task")["units"].max().items()) + " units",
    )
    write_table(summarise(frame).reset_index(drop=True), stem, CAPTION, provenance)
