import pytest
import torch

from imagekv.figures import key_variance_maps
from imagekv.interventions.key_variance import KeyStatistics, KeyVarianceConfig
from imagekv.io import write_json


def test_hand_computed_small_case():
    # 3 images, 1 layer, 3 positions, 2 dims.
    keys = torch.tensor(
        [
            [[[1.0, 0.0], [0.0, 0.0], [2.0, 2.0]]],
            [[[3.0, 0.0], [0.0, 2.0], [2.0, 2.0]]],
            [[[5.0, 0.0], [0.0, 4.0], [2.0, 2.1]]],
        ]
    )
    stats = KeyStatistics(layers=[7])
    stats.update(keys)
    result = stats.result()
    # Population variances summed over dims: p0 = Var(1,3,5) = 8/3, p1 = Var(0,2,4) = 8/3,
    # p2 = Var(2,2,2.1) = 0.02/9 (deviations -1/30, -1/30, 2/30). Median = 8/3.
    expected_total = torch.tensor([[8 / 3, 8 / 3, 0.02 / 3 / 3]], dtype=torch.float64)
    assert torch.allclose(result.total_variance, expected_total)
    assert torch.allclose(result.nu, expected_total / (8 / 3))
    # Position 0 always points along +x: mean pairwise cosine 1. Position 1 has a zero vector in
    # image 0 (normalize keeps it zero): pairs (1,2) cos 1, pairs with image 0 cos 0 -> 2/6.
    assert result.mean_cosine[0, 0].item() == pytest.approx(1.0)
    assert result.mean_cosine[0, 1].item() == pytest.approx(2 / 6)
    assert result.flags(0.1).tolist() == [[False, False, True]]
    assert result.first_layer(0.1, 0.01) == 7


def test_constant_position_is_flagged_and_streaming_matches_one_batch():
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(40, 3, 16, 8, generator=generator)
    keys[:, 2, 5] = torch.randn(8, generator=generator)  # layer 2, position 5: same key in every image
    values = torch.randn(40, 3, 16, 4, generator=generator)
    values[:, 2, 5] *= 10  # a high-norm artifact value

    streamed = KeyStatistics(layers=[0, 1, 2])
    for start in range(0, 40, 7):  # uneven batches
        streamed.update(keys[start : start + 7], values[start : start + 7])
    whole = KeyStatistics(layers=[0, 1, 2])
    whole.update(keys, values)
    a, b = streamed.result(), whole.result()
    assert torch.allclose(a.nu, b.nu) and torch.allclose(a.mean_cosine, b.mean_cosine)

    expected_variance = keys.double().var(dim=0, unbiased=False).sum(dim=-1)
    assert torch.allclose(a.total_variance, expected_variance)
    flags = a.flags(0.1)
    assert flags.nonzero().tolist() == [[2, 5]]
    assert a.cosine_flags(0.95).nonzero().tolist() == [[2, 5]]
    assert a.first_layer(0.1, 0.01) == 2
    assert a.first_layer(0.1, 0.5) is None

    blocked = a.blocked_positions(0.1, 0.01, block_starts=[100, 300])
    assert list(blocked) == [2] and blocked[2].tolist() == [105, 305]

    summary = a.summary(KeyVarianceConfig())
    assert summary["flagged_count"] == [0, 0, 1]
    assert summary["flagged_fraction"][2] == pytest.approx(1 / 16)
    assert summary["value_norm"]["flagged"][:2] == [None, None]
    assert summary["value_norm"]["flagged"][2] > summary["value_norm"]["unflagged"][2]
    assert set(summary["sweep"]) == {"0.05", "0.1", "0.2"}


def test_layout_change_and_unknown_config_key_are_refused():
    stats = KeyStatistics(layers=[0])
    stats.update(torch.zeros(2, 1, 4, 2))
    with pytest.raises(ValueError, match="token layout changed"):
        stats.update(torch.zeros(2, 1, 5, 2))
    with pytest.raises(KeyError, match="interventions.key_variance"):
        KeyVarianceConfig.from_config({"taus": [0.1]})
    assert KeyVarianceConfig.from_config({"tau_sweep": [0.3]}).tau_sweep == (0.3,)


def test_nu_maps_show_the_grid_in_raster_order_and_mark_the_flagged_positions(tmp_path, monkeypatch):
    """A 2x3 grid whose position (row 1, col 0) never changes: its cell is the darkest and the only dot."""
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(8, 2, 6, 4, generator=generator)
    keys[:, :, 3] = 1.0  # layout position 3 = row 1, col 0 of a 2x3 grid
    stats = KeyStatistics(layers=(0, 5))
    stats.update(keys)
    result = stats.result()
    record = {"model": "llava_onevision", "grid": "2x3", "layers": [0, 5], "tau": 0.1, "num_images": 8,
              "nu": result.nu.tolist(), "spec": {"dataset": "coco_pool", "prefix": "none"}}
    panel = _first_panel(key_variance_maps, record, tmp_path, monkeypatch)
    image = panel.images[0].get_array()
    assert image.shape == (2, 3) and image.argmin() == 3
    assert panel.collections[0].get_offsets().tolist() == [[0.0, 1.0]]  # x = col 0, y = row 1
    assert key_variance_maps.shown_rows(28) == [0, 5, 11, 16, 22, 27]
    assert key_variance_maps.shown_rows(2) == [0, 1]
    with pytest.raises(ValueError, match="variable"):
        key_variance_maps.grid_shape("variable", "kv.json")


def test_calibration_picks_the_tau_whose_flagged_set_survives_resampling():
    """Positions 0-1 are constant (nu = 0: flagged at any tau, in every resample); the others vary
    with nearly equal spreads (nu near 1), so tau = 1 flags a set that changes between resamples."""
    generator = torch.Generator().manual_seed(1)
    keys = torch.randn(40, 1, 12, 8, generator=generator) * torch.linspace(0.95, 1.05, 12)[None, None, :, None]
    keys[:, :, :2] = 3.0
    cfg = KeyVarianceConfig(tau=0.5, tau_sweep=(1.0, 0.05), calibration_resamples=30, calibration_seed=0)
    stats = KeyStatistics(layers=(0,), resamples=cfg.calibration_resamples, seed=cfg.calibration_seed)
    for batch in keys.split(7):
        stats.update(batch)
    result = stats.result()
    assert result.bootstrap_nu.shape == (30, 1, 12)
    calibration = result.calibrate(cfg)
    assert calibration["stability"]["0.05"] == 1.0 and calibration["stability"]["1.0"] < 0.9
    assert (calibration["tau"], calibration["calibrated"], calibration["configured_tau"]) == (0.05, True, 0.5)
    at_once = KeyStatistics(layers=(0,), resamples=30, seed=0)
    at_once.update(keys)
    assert torch.allclose(at_once.result().bootstrap_nu, result.bootstrap_nu)
    varying = KeyStatistics(layers=(0,), resamples=30, seed=0)
    varying.update(keys[:, :, 2:])
    kept = varying.result().calibrate(KeyVarianceConfig(tau=0.5, tau_sweep=(0.01,), calibration_resamples=30))
    assert (kept["tau"], kept["calibrated"]) == (0.5, False)  # nothing flagged: the configured tau stays


def test_artifact_tokens_show_each_positions_value_norm_and_mark_the_flagged_ones(tmp_path, monkeypatch):
    """Position 3 (row 1, col 0 of a 2x3 grid) has the same key and a value 10x the others' in every
    image: it is the only flagged position, the brightest cell and the only red point of the scatter."""
    from imagekv.figures import artifact_tokens

    generator = torch.Generator().manual_seed(0)
    keys, values = torch.randn(8, 2, 6, 4, generator=generator), torch.ones(8, 2, 6, 4)
    keys[:, :, 3] = 1.0
    values[:, :, 3] = 10.0
    stats = KeyStatistics(layers=(0, 5))
    stats.update(keys, values=values)
    result = stats.result()
    record = {"model": "llava_onevision", "grid": "2x3", "layers": [0, 5], "tau": 0.1, "num_images": 8,
              "nu": result.nu.tolist(), "value_norm_map": result.value_norm.tolist(),
              "spec": {"dataset": "coco_pool", "prefix": "none"}}
    panel = _first_panel(artifact_tokens, record, tmp_path, monkeypatch)
    image = panel.images[0].get_array()
    assert image.shape == (2, 3) and image.argmax() == 3 and image.max() == pytest.approx(20.0)  # ||(10,10,10,10)||
    assert panel.collections[0].get_offsets().tolist() == [[0.0, 1.0]]
    assert "‖v‖ 20 flagged, 2 other" in panel.get_title()
    del record["value_norm_map"]
    write_json(tmp_path / "kv.json", record)
    with pytest.raises(ValueError, match="no value_norm_map"):
        artifact_tokens.plot(tmp_path / "kv.json", [tmp_path / "tokens.png"], "smoke", "smoke")


def _first_panel(figure_module, record: dict, tmp_path, monkeypatch):
    """The first panel of the figure `figure_module` draws from a key-variance record."""
    write_json(tmp_path / "kv.json", record)
    drawn = []
    monkeypatch.setattr(figure_module, "save", lambda fig, outputs, provenance: drawn.append(fig))
    figure_module.plot(tmp_path / "kv.json", [tmp_path / "figure.png"], "smoke", "smoke")
    (fig,) = drawn
    return fig.axes[0]
