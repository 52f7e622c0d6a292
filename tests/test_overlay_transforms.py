"""Coordinate maps and transformation sensitivity (overlay/transforms.py)."""
import math

import numpy as np
import pytest
import torch

from simtorch_semantic.overlay.transforms import (index_maps, sensitivity_from_activations,
                                                  transform_images, transform_index,
                                                  transform_points)


@pytest.mark.parametrize("n", [4, 7, 8])
def test_rotation_by_90_permutes_square_grid_exactly(n):
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    i2, j2 = transform_index(ii, jj, (n, n), "rotation", 90)
    # counter-clockwise quarter turn about the centre: (i, j) -> (n - 1 - j, i)
    np.testing.assert_array_equal(i2, n - 1 - jj)
    np.testing.assert_array_equal(j2, ii)
    # the mapped centres are exactly cell centres
    y, x = transform_points(ii + 0.5, jj + 0.5, (n, n), "rotation", 90)
    np.testing.assert_array_equal(y, n - 1 - jj + 0.5)
    np.testing.assert_array_equal(x, ii + 0.5)


def test_rotation_by_180_and_360_and_inverse():
    n = 6
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    i2, j2 = transform_index(ii, jj, (n, n), "rotation", 180)
    np.testing.assert_array_equal(i2, n - 1 - ii)
    np.testing.assert_array_equal(j2, n - 1 - jj)
    i3, j3 = transform_index(ii, jj, (n, n), "rotation", 360)
    np.testing.assert_array_equal(i3, ii)
    a, b = transform_index(*transform_index(ii, jj, (n, n), "rotation", 90), (n, n), "rotation",
                           90, inverse=True)
    np.testing.assert_array_equal(a, ii)
    np.testing.assert_array_equal(b, jj)


def test_rotation_general_angle_formula():
    y, x = transform_points(1.5, 5.5, (8, 8), "rotation", 30)
    dx, dy = 5.5 - 4, 1.5 - 4
    t = math.radians(30)
    assert x == pytest.approx(4 + dx * math.cos(t) + dy * math.sin(t), abs=1e-12)
    assert y == pytest.approx(4 - dx * math.sin(t) + dy * math.cos(t), abs=1e-12)


@pytest.mark.parametrize("zoom", [0.5, 2.0, 1.25])
def test_scaling_about_centre_is_exact(zoom):
    h, w = 8, 6
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    y, x = transform_points(ii + 0.5, jj + 0.5, (h, w), "scale", zoom)
    np.testing.assert_allclose(y, h / 2 + zoom * (ii + 0.5 - h / 2), atol=1e-12)
    np.testing.assert_allclose(x, w / 2 + zoom * (jj + 0.5 - w / 2), atol=1e-12)
    i2, j2 = transform_index(ii, jj, (h, w), "scale", zoom)
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    np.testing.assert_array_equal(i2 >= 0, inside)
    np.testing.assert_array_equal(i2[inside], np.floor(y[inside]).astype(int))
    np.testing.assert_array_equal(j2[inside], np.floor(x[inside]).astype(int))


def test_zoom_by_half_keeps_everything_in_frame_and_two_leaves_corners():
    ii, jj = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    i2, _ = transform_index(ii, jj, (8, 8), "scale", 0.5)
    assert (i2 >= 0).all()
    i3, j3 = transform_index(ii, jj, (8, 8), "scale", 2.0)
    assert i3[0, 0] == -1 and j3[0, 0] == -1          # corner leaves the frame
    # centre cell (4, 4): centre 4.5 -> 4 + 2 * 0.5 = 5
    assert (i3[4, 4], j3[4, 4]) == (5, 5)


def test_transform_images_matches_coordinate_map():
    """A bright block moved by torchvision lands where transform_index says."""
    n = 16
    img = torch.zeros(3, n, n)
    img[:, 2:4, 10:12] = 1.0          # cells of an 8x8 grid: (1, 5)
    for kind, value in (("rotation", 90), ("rotation", 180), ("scale", 0.5)):
        out = transform_images(img, kind, [value])[0]
        pooled = torch.nn.functional.avg_pool2d(out[None], 2)[0, 0]
        i2, j2 = transform_index(1, 5, (8, 8), kind, value)
        found = np.unravel_index(int(pooled.argmax()), pooled.shape)
        assert found == (int(i2), int(j2)), (kind, value, found, (i2, j2))


def _loop_sensitivity(ref, trans, kind, values):
    c, h, w = ref.shape
    out = np.full((len(values), h * w), np.nan)
    for t, v in enumerate(values):
        for i in range(h):
            for j in range(w):
                y, x = transform_points(i + 0.5, j + 0.5, (h, w), kind, v)
                yi, xi = int(math.floor(round(float(y), 9))), int(math.floor(round(float(x), 9)))
                if 0 <= yi < h and 0 <= xi < w:
                    u = ref[:, i, j].numpy()
                    z = trans[t, :, yi, xi].numpy()
                    out[t, i * w + j] = np.dot(u, z) / (np.linalg.norm(u) * np.linalg.norm(z))
    return out


@pytest.mark.parametrize("kind, values", [("rotation", [0, 45, 90, 135]),
                                          ("scale", [0.5, 1.0, 1.5, 2.0])])
def test_sensitivity_matches_loop_and_has_nan_gaps(kind, values):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 6, 6, generator=g, dtype=torch.float64)
    trans = torch.randn(len(values), 5, 6, 6, generator=g, dtype=torch.float64)
    s = sensitivity_from_activations(ref, trans, kind, values, layer="L")
    expected = _loop_sensitivity(ref, trans, kind, values)
    np.testing.assert_array_equal(np.isnan(s.curves), np.isnan(expected))
    np.testing.assert_allclose(s.curves, expected, atol=1e-12)
    if kind == "scale":
        assert np.isnan(s.curve(0, 0)[-1])                 # zoom 2 pushes the corner out
        assert not np.isnan(s.curve(0, 0)[0])              # zoom 0.5 keeps it
    else:
        assert np.isnan(s.curve(0, 0)[1])                  # 45 degrees: the corner leaves
        assert not np.isnan(s.curve(0, 0)[2])              # 90 degrees: corner to corner
    assert s.curves.shape == (len(values), 36)


def test_identity_transform_gives_one():
    ref = torch.rand(4, 5, 5, dtype=torch.float64) + 0.1
    s = sensitivity_from_activations(ref, ref[None].repeat(2, 1, 1, 1), "rotation", [0, 360])
    np.testing.assert_allclose(s.curves, 1.0, atol=1e-12)


def test_index_maps_forward_inverse_consistent():
    fwd, inv = index_maps((6, 6), "rotation", [90])
    # forward then inverse returns the original cell
    q = np.arange(36)
    np.testing.assert_array_equal(inv[0][fwd[0][q]], q)


def test_bad_inputs():
    with pytest.raises(ValueError, match="kind must be 'rotation'"):
        transform_index(0, 0, (4, 4), "shear", 1.0)
    with pytest.raises(ValueError, match="zoom factors must be > 0"):
        transform_images(torch.zeros(3, 4, 4), "scale", [0.0])
    with pytest.raises(ValueError, match="non-empty"):
        transform_images(torch.zeros(3, 4, 4), "rotation", [])
    with pytest.raises(ValueError, match="same C, H, W"):
        sensitivity_from_activations(torch.zeros(2, 3, 3), torch.zeros(1, 2, 4, 4), "rotation", [0])
    s = sensitivity_from_activations(torch.ones(2, 3, 3), torch.ones(1, 2, 3, 3), "rotation", [0])
    with pytest.raises(ValueError, match="outside the 3 x 3 grid"):
        s.curve(3, 0)
