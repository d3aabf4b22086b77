import numpy as np
import pytest
import torch

from imagekv.grid import TokenGrid


def test_cell_geometry_hand_computed():
    grid = TokenGrid(rows=2, cols=4, height=10, width=20)
    assert grid.cell_box(1, 2) == (10.0, 5.0, 15.0, 10.0)
    assert grid.cell_center(0, 0) == (2.5, 2.5)
    assert grid.token_of_point(19.9, 9.9) == (1, 3)
    assert grid.token_of_point(-3, 50) == (1, 0)  # clamped
    np.testing.assert_allclose(grid.centers()[5], [7.5, 7.5])


def test_coverage_counts_fraction_and_ignores_void():
    grid = TokenGrid(rows=2, cols=2, height=4, width=4)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[0, 1] = mask[1, 0] = True  # 3 of 4 pixels of cell (0, 0)
    ignore = np.zeros((4, 4), bool)
    ignore[2:, 2:] = True  # cell (1, 1) entirely void
    ignore[1, 1] = True  # one void pixel in cell (0, 0)
    cover = grid.coverage(mask, ignore)
    assert cover[0, 0] == pytest.approx(1.0)
    assert cover[0, 1] == 0.0 and cover[1, 0] == 0.0
    assert np.isnan(cover[1, 1])


def test_coverage_matches_naive_loop_on_uneven_cells():
    rng = np.random.default_rng(0)
    grid = TokenGrid(rows=3, cols=5, height=17, width=23)
    mask = rng.random((17, 23)) > 0.5
    cover = grid.coverage(mask)
    for r in range(3):
        for c in range(5):
            y0, y1 = round(r * 17 / 3), round((r + 1) * 17 / 3)
            x0, x1 = round(c * 23 / 5), round((c + 1) * 23 / 5)
            assert cover[r, c] == pytest.approx(mask[y0:y1, x0:x1].mean())


def test_coverage_refuses_wrong_mask_size():
    with pytest.raises(ValueError, match="does not match"):
        TokenGrid(2, 2, 4, 4).coverage(np.zeros((4, 5), bool))


def test_to_pixels_keeps_leading_dims_and_constant_maps():
    grid = TokenGrid(rows=2, cols=3, height=8, width=9)
    scores = torch.full((4, 2, 3), 0.25)
    up = grid.to_pixels(scores)
    assert up.shape == (4, 8, 9)
    assert torch.allclose(up, torch.full_like(up, 0.25))


def test_to_pixels_of_a_whole_image_grid_is_the_standard_bilinear_resize():
    grid = TokenGrid(rows=5, cols=7, height=13, width=40)
    scores = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(scores[:, None], size=(13, 40), mode="bilinear", align_corners=False)
    assert torch.allclose(grid.to_pixels(scores), expected[:, 0], atol=1e-5)


def test_a_footprint_past_the_image_moves_the_cells_and_cuts_them_at_the_edge():
    """Four columns tiling x in [-2, 18) of a 16 px wide image: 5 px cells, the outer ones cut to 3 px."""
    grid = TokenGrid(rows=1, cols=4, height=2, width=16, footprint=[-2, 0, 18, 2])
    assert grid.cell_box(0, 0) == (-2.0, 0.0, 3.0, 2.0) and grid.token_of_point(3.5, 1) == (0, 1)
    np.testing.assert_allclose(grid.centers()[:, 0], [0.5, 5.5, 10.5, 15.5])
    mask = np.zeros((2, 16), bool)
    mask[:, :2] = True  # 2 of the 3 image columns of cell 0
    np.testing.assert_allclose(grid.coverage(mask), [[2 / 3, 0, 0, 0]])
    up = grid.to_pixels(torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(up[0].numpy(), np.clip((np.arange(16) + 0.5 + 2) / 5 - 0.5, 0, 3), atol=1e-6)
    assert TokenGrid(*grid.to_json()) == grid and TokenGrid(1, 4, 2, 16).to_json() == [1, 4, 2, 16]
    with pytest.raises(ValueError, match="not a rectangle"):
        TokenGrid(1, 1, 2, 2, footprint=(1, 0, 1, 2))
