"""The smoke run's config, as the tests read it: dataset sizes come from config/config.yaml only."""

from pathlib import Path

import yaml

from imagekv import plan

SMOKE_CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
# Dataset -> its generator and loader settings in the smoke run (without `source`).
SMOKE_DATASETS = {name: plan.dataset_spec(SMOKE_CONFIG, name)["cfg"] for name in SMOKE_CONFIG["datasets"]}
