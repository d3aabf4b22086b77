"""The task keys, their display order and titles, each task's headline metric, and the headline rows
of the value probes that figures and tables both select."""

import pandas as pd

TASK_ORDER = ("fewshot_seg", "coseg", "semantic_seg", "referring_seg", "semantic_corr", "temporal_corr")
TASK_TITLES = {
    "fewshot_seg": "Few-shot seg. (Pascal-5i)",
    "coseg": "Co-seg. (MSRC)",
    "semantic_seg": "Semantic seg. (ImageNet-S)",
    "referring_seg": "Referring seg. (RefCOCO)",
    "semantic_corr": "Semantic corr. (SPair-71k)",
    "temporal_corr": "Temporal corr. (DAVIS)",
}
HEADLINE_METRICS = {
    "fewshot_seg": "miou",
    "coseg": "jaccard",
    "semantic_seg": "miou",
    "referring_seg": "miou",
    "semantic_corr": "pck@0.1",
    "temporal_corr": "j&f",
}


def headline_rows(frame: pd.DataFrame, prefix: str = "none") -> pd.DataFrame:
    """Rows of each task's headline metric, for one prefix."""
    wanted = frame["task"].map(HEADLINE_METRICS)
    return frame[(frame["metric"] == wanted) & (frame["prefix"] == prefix)]


def headline(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of each task's headline metric of the image-value probes, every prefix and condition."""
    return frame[(frame["metric"] == frame["task"].map(HEADLINE_METRICS)) & (frame["representation"] == "values")]

