"""The calibration backbones: oracle features are hand-computable coverages, noise is seeded by id."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagekv.datasets.schema import ImageRef, OracleTruth
from imagekv.grid import TokenGrid
from imagekv.models.registry import build_backbone

# A 4x4 image on a 2x2 grid: every cell is 2x2 pixels.
LABELS = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [2, 0, 0, 0], [2, 2, 0, 0]])
# Fraction of each cell covered by ids 0, 1, 2, worked out by hand.
EXPECTED = torch.tensor([[[0, 1, 0], [1, 0, 0]], [[0.25, 0, 0.75], [1, 0, 0]]])


class FakeDataset:
    name = "fake"

    def __init__(self, truths: dict[str, OracleTruth]):
        self.truths = truths

    def images(self) -> list[ImageRef]:
        return [ImageRef(image_id, Path(f"{image_id}.png")) for image_id in sorted(self.truths)]

    def oracle_truth(self, image_id: str) -> OracleTruth:
        return self.truths[image_id]


def build(name: str, dataset=None, **cfg):
    return build_backbone(name, {"grid": [2, 2], **cfg}, device="cpu", dtype=torch.float32, dataset=dataset)


def blank(height: int = 4, width: int = 4) -> Image.Image:
    return Image.new("RGB", (width, height))


@pytest.fixture
def dataset() -> FakeDataset:
    return FakeDataset({
        "a": OracleTruth(LABELS, num_ids=3, text_ids={"cat": 1, "left man": 2}),
        "b": OracleTruth(np.zeros((4, 4), dtype=int), num_ids=3, text_ids={"left man": 1}),
    })


def test_oracle_features_are_the_coverage_of_each_id(dataset):
    (output,) = build("oracle", dataset).encode_with_ids([blank()], ["a"])
    torch.testing.assert_close(output.values, EXPECTED.unsqueeze(0))
    assert output.grid == TokenGrid(2, 2, 4, 4) and output.layers == (0,)


def test_oracle_text_is_the_indicator_of_its_id_averaged_over_conflicting_images(dataset):
    texts = build("oracle", dataset).encode_text(["cat", "left man"])
    torch.testing.assert_close(texts, torch.tensor([[[0.0, 1, 0]], [[0, 0.5, 0.5]]]))


def test_oracle_refuses_an_unknown_text_and_a_truth_of_another_size(dataset):
    oracle = build("oracle", dataset)
    with pytest.raises(KeyError, match="dog"):
        oracle.encode_text(["dog"])
    with pytest.raises(ValueError, match="does not match"):
        oracle.encode_with_ids([blank(4, 5)], ["a"])


def test_oracle_noise_is_small_seeded_and_centred_on_the_truth(dataset):
    noisy = build("oracle", dataset, noise_std=0.01, grid=[4, 4]).encode_with_ids([blank()], ["a"])[0].values
    again = build("oracle", dataset, noise_std=0.01, grid=[4, 4]).encode_with_ids([blank()], ["a"])[0].values
    exact = build("oracle", dataset, grid=[4, 4]).encode_with_ids([blank()], ["a"])[0].values
    assert torch.equal(noisy, again)
    deviation = noisy - exact
    assert 0.005 < deviation.std() < 0.02 and deviation.abs().max() < 0.06


def test_noise_depends_on_the_image_id_only():
    noise = build("noise", width=8)
    alone = noise.encode_with_ids([blank()], ["a"])[0].values
    batch = noise.encode_with_ids([blank(), blank(6, 6)], ["b", "a"])
    assert alone.shape == (1, 2, 2, 8)
    assert torch.equal(alone, batch[1].values) and not torch.equal(alone, batch[0].values)
    assert batch[1].grid == TokenGrid(2, 2, 6, 6)
    texts = noise.encode_text(["x", "y", "x"])
    assert texts.shape == (3, 1, 8) and torch.equal(texts[0], texts[2]) and not torch.equal(texts[0], texts[1])


def test_noise_seed_is_the_same_in_another_process_with_another_hash_seed():
    code = "from imagekv.models.calibration import seeded_gaussian; print(seeded_gaussian((4,), 0, 'image:a').tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    here = build("noise", width=4, grid=[1, 1]).encode_with_ids([blank()], ["a"])[0].values.flatten().tolist()
    assert other.strip() == str(here)


def test_calibration_backbones_need_image_ids_and_a_valid_grid(dataset):
    with pytest.raises(TypeError, match="encode_with_ids"):
        build("noise").encode([blank()])
    with pytest.raises(ValueError, match="'grid'"):
        build("noise", grid=[16])
    with pytest.raises(ValueError, match="dataset"):
        build("oracle")
