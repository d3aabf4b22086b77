"""The calibration backbones through the real path (synthetic data in the real layout -> loader ->
extraction -> probe): `oracle` scores at least 0.95 of each metric's maximum (1.0 for all of them),
`noise` stays near chance.

Chance levels on the synthetic twins, for random token features: a probe then predicts masks
unrelated to the object, whose IoU with it is at most about the object's share of the image
(objects cover well under 30 % of a synthetic image), and a nearest neighbour lands on a random
cell, within 0.1 of the box size of the right keypoint for a few per cent of the keypoints.
"""

import pytest

from imagekv import plan
from imagekv.datasets import load_dataset
from imagekv.datasets.synthetic import write_synthetic
from imagekv.extract import extract_store
from imagekv.features import FeatureStore
from imagekv.probes import run_probe
from imagekv.probes.headline import HEADLINE_METRICS

from smoke_config import SMOKE_CONFIG as CONFIG

NOISE_CEILING = 0.3


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """Task -> backbone -> {metric: value} over the smoke config's synthetic datasets."""
    root = tmp_path_factory.mktemp("calibration")
    results = {}
    for task, section in CONFIG["probes"].items():
        name = section["dataset"]
        data = plan.dataset_spec(CONFIG, name)
        write_synthetic(name, root / name, data["cfg"], data["seed"])
        dataset = load_dataset(name, root / name, data["cfg"])
        for backbone in ("oracle", "noise"):
            spec = {**plan.extraction_spec(CONFIG, backbone, name, "none"), "dataset_root": str(root / name)}
            extract_store(spec, root / f"{name}-{backbone}")
            rows = run_probe(task, dataset.samples(), FeatureStore(root / f"{name}-{backbone}").view("values"), {})
            results.setdefault(task, {})[backbone] = {row["metric"]: row["value"] for row in rows}
    return results


@pytest.mark.parametrize("task", sorted(CONFIG["probes"]))
def test_oracle_reaches_the_maximum_and_noise_stays_at_chance(scores, task):
    metric = HEADLINE_METRICS[task]
    assert scores[task]["oracle"][metric] >= 0.95, scores[task]["oracle"]
    assert scores[task]["noise"][metric] <= NOISE_CEILING, scores[task]["noise"]
