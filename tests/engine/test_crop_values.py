"""crop.py against values computed by hand (issue 16: mutation testing found shape-only checks here).

Every expected number below is worked out in the comment next to it from the formulas in the module's docstrings,
not by calling the module's own helpers.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.crop import (DEFAULT_N_SHIFTS, DEFAULT_TTA, MAX_SHIFTS, CropGrid, crop_for_model, crop_grid,
                           field_of_view_mm, fraction_outside_scan, n_shifts_of, normalise, resample_to_grid,
                           shift_offsets)
from TMBRBLib.geometry import Box


def _ramp_ct(size=(6, 5, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    """HU = 100 x + 10 y + z at voxel index (x, y, z): linear, so linear interpolation is exact inside."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in size[::-1]), indexing="ij")
    img = sitk.GetImageFromArray(100 * x + 10 * y + z)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def test_defaults_are_the_papers_tta():
    assert DEFAULT_N_SHIFTS == 8 and MAX_SHIFTS == 26
    assert DEFAULT_TTA == {"n_shifts": 8, "shift_fraction": 0.1, "max_shift_mm": 5.0, "seed": 0}


def test_crop_grid_centre_box_reference_image_and_dict():
    g = CropGrid((1.0, 2.0, 3.0), (0.5, 1.0, 2.0), (4, 3, 2))
    # centre = origin + spacing (n - 1) / 2 = (1 + 0.75, 2 + 1, 3 + 1)
    assert g.center == (1.75, 3.0, 4.0)
    # outer edges: origin - spacing / 2 and origin + spacing (n - 1/2) = (1 + 1.75, 2 + 2.5, 3 + 3)
    assert g.box.min == (0.75, 1.5, 2.0) and g.box.max == (2.75, 4.5, 6.0)
    ref = g.reference_image()
    assert ref.GetSize() == (4, 3, 2) and ref.GetOrigin() == (1.0, 2.0, 3.0) and ref.GetSpacing() == (0.5, 1.0, 2.0)
    assert ref.GetPixelID() == sitk.sitkUInt8 and ref.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert g.to_dict() == {"origin_lps": [1.0, 2.0, 3.0], "spacing_mm": [0.5, 1.0, 2.0], "size_xyz": [4, 3, 2],
                           "center_lps": [1.75, 3.0, 4.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}


def test_field_of_view_by_hand():
    box = Box((0, 0, 0), (10, 20, 30))  # largest side 30 mm
    assert field_of_view_mm(box, {"mode": "fixed_fov", "fov_mm": 64}) == 64.0
    assert field_of_view_mm(box, {"mode": "box_margin", "margin_mm": 5}) == 40.0  # 30 + 2 x 5
    assert field_of_view_mm(box, {"margin_mm": 2}) == 34.0  # box_margin is the default mode
    assert field_of_view_mm(box, {}) == 30.0  # no margin, no limits
    assert field_of_view_mm(box, {"margin_mm": 5, "min_fov_mm": 50}) == 50.0
    assert field_of_view_mm(box, {"margin_mm": 5, "max_fov_mm": 35}) == 35.0
    assert field_of_view_mm(Box((0, 0, 0), (1, 1, 2e9)), {}) == 1e9  # the default upper limit
    assert field_of_view_mm(Box((0, 0, 0), (0.5, 0.25, 0.5)), {}) == 0.5  # no default lower limit
    assert isinstance(field_of_view_mm(box, {"mode": "fixed_fov", "fov_mm": 64}), float)
    with pytest.raises(ValueError, match=r"^unknown crop mode 'cube' in the bundle's preprocessing metadata$"):
        field_of_view_mm(box, {"mode": "cube"})


def test_crop_grid_by_hand():
    box = Box((0, 0, 0), (10, 20, 30))  # centre (5, 10, 15)
    policy = {"mode": "fixed_fov", "fov_mm": 16, "shape": [4, 2, 8]}  # z, y, x -> size_xyz (8, 2, 4)
    g = crop_grid(box, policy)
    assert g.size_xyz == (8, 2, 4) and all(type(v) is int for v in g.size_xyz)
    assert g.spacing == (2.0, 8.0, 4.0)  # 16 / (8, 2, 4)
    # origin = centre - spacing (n - 1) / 2 = (5 - 7, 10 - 4, 15 - 6)
    assert g.origin == (-2.0, 6.0, 9.0)
    assert crop_grid(box, policy, center=(1, 1, 1)).origin == (-6.0, -3.0, -5.0)
    assert g.center == (5.0, 10.0, 15.0)


def test_resample_to_grid_linear_nearest_bspline_and_padding():
    ct = _ramp_ct()
    # two voxels along x at x = 0.4 and 1.4 (y = 2, z = 1): linear gives 100 x + 10 y + z exactly
    grid = CropGrid((0.4, 2.0, 1.0), (1.0, 1.0, 1.0), (2, 1, 1))
    lin = resample_to_grid(ct, grid)
    assert lin.GetPixelID() == sitk.sitkFloat32 and lin.GetSize() == (2, 1, 1)
    assert lin.GetOrigin() == (0.4, 2.0, 1.0) and lin.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    np.testing.assert_allclose(sitk.GetArrayFromImage(lin).ravel(), [61.0, 161.0], rtol=1e-6)
    near = resample_to_grid(ct, grid, interpolation="nearest")  # x = 0 and 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(near).ravel(), [21.0, 121.0])
    spline = resample_to_grid(ct, CropGrid((2.5, 2.0, 1.0), (1.0, 1.0, 1.0), (1, 1, 1)), interpolation="bspline")
    assert sitk.GetArrayFromImage(spline).ravel()[0] == pytest.approx(271.0, abs=1.0)
    with pytest.raises(KeyError):
        resample_to_grid(ct, grid, interpolation="cubic")
    # an integer CT still gives float32 HU: 100 x 0.405 + 21 = 61.5, not rounded
    as_int = resample_to_grid(sitk.Cast(ct, sitk.sitkInt16), CropGrid((0.405, 2.0, 1.0), (1.0, 1.0, 1.0), (1, 1, 1)))
    assert as_int.GetPixelID() == sitk.sitkFloat32
    assert sitk.GetArrayFromImage(as_int).ravel()[0] == pytest.approx(61.5)
    # along y and z too: the grid's direction is the identity, not a permutation or a flip
    gy = CropGrid((1.0, 0.5, 2.5), (1.0, 1.0, 1.0), (1, 2, 1))
    np.testing.assert_allclose(sitk.GetArrayFromImage(resample_to_grid(ct, gy)).ravel(), [107.5, 117.5], rtol=1e-6)
    # outside the scan (x from -0.5 to 5.5 is inside): the pad value, -1000 by default
    out = CropGrid((-3.0, 2.0, 1.0), (10.0, 1.0, 1.0), (2, 1, 1))  # x = -3 (outside) and 7 (outside)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resample_to_grid(ct, out)).ravel(), [-1000, -1000])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resample_to_grid(ct, out, pad_hu=-7.5)).ravel(), [-7.5, -7.5])


def test_normalise_clips_to_the_window_and_scales_to_0_1():
    hu = np.array([-2000.0, -1000.0, -300.0, 400.0, 1000.0])
    out = normalise(hu, {"hu_window": [-1000, 400]})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])  # (-300 + 1000) / 1400 = 0.5


def test_crop_for_model_uses_the_policys_pad_and_interpolation():
    ct = _ramp_ct()
    box = Box((0.9, 1.5, 0.5), (1.9, 2.5, 1.5))  # centre (1.4, 2, 1)
    policy = {"mode": "fixed_fov", "fov_mm": 1.0, "shape": [1, 1, 1], "hu_window": [0, 1000]}
    arr, img, grid = crop_for_model(ct, box, policy)
    assert grid.origin == (1.4, 2.0, 1.0) and grid.spacing == (1.0, 1.0, 1.0)
    assert sitk.GetArrayFromImage(img).ravel()[0] == pytest.approx(161.0)  # linear: 140 + 20 + 1
    assert arr.shape == (1, 1, 1) and arr.ravel()[0] == pytest.approx(0.161)
    arr, img, _ = crop_for_model(ct, box, dict(policy, interpolation="nearest"))
    assert sitk.GetArrayFromImage(img).ravel()[0] == 121.0  # x = 1
    # a crop centred outside the scan: padded with the policy's pad_hu, else -1000
    far = (50.0, 2.0, 1.0)
    _, img, _ = crop_for_model(ct, box, policy, center=far)
    assert sitk.GetArrayFromImage(img).ravel()[0] == -1000.0
    arr, img, _ = crop_for_model(ct, box, dict(policy, pad_hu=500.0), center=far)
    assert sitk.GetArrayFromImage(img).ravel()[0] == 500.0 and arr.ravel()[0] == pytest.approx(0.5)


def test_n_shifts_of():
    assert n_shifts_of({}) == 8
    assert n_shifts_of({"n_shifts": 3}) == 3
    assert n_shifts_of({"n_shifts": 3}, 0) == 0
    assert n_shifts_of({}, "5") == 5 and type(n_shifts_of({}, 2.0)) is int


def test_shift_offsets_are_bounded_seeded_draws():
    box = Box((0, 0, 0), (10, 100, 20))  # 10 % of the size is (1, 10, 2); capped at 5 mm: (1, 5, 2)
    assert shift_offsets(box, {}, 0) == [] and shift_offsets(box, {}, -1) == []
    offs = shift_offsets(box, {}, 3)
    assert len(offs) == 3
    # numpy's default_rng(0).uniform(-1, 1, 3), three times, scaled by (1, 5, 2); the draws written out
    expected = np.array([[0.27392337, -0.46042657, -0.91805295],
                         [-0.96694473, 0.62654048, 0.82551115],
                         [0.21327155, 0.45899312, 0.08724998]]) * [1, 5, 2]
    np.testing.assert_allclose(offs, expected, rtol=1e-6)
    # another seed, fraction and cap: default_rng(7).uniform(-1, 1, 3) scaled by min((1, 10, 2) x 2, 3) = (2, 3, 3)
    offs = shift_offsets(box, {"seed": 7, "shift_fraction": 0.2, "max_shift_mm": 3.0}, 1)
    np.testing.assert_allclose(offs[0], np.array([0.25019093, 0.79442760, 0.55137138]) * [2, 3, 3], rtol=1e-6)


def test_fraction_outside_scan_counts_edges_as_inside():
    ct = sitk.Image([10, 10, 10], sitk.sitkInt16)  # voxel centres 0..9, outer edges -0.5 and 9.5
    assert fraction_outside_scan(ct, CropGrid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (10, 10, 10))) == 0.0
    # 9 lattice points per axis from -4.5 to 3.5 (step 1): -0.5 .. 3.5 inside (5), -4.5 .. -1.5 outside (4)
    assert fraction_outside_scan(ct, CropGrid((-4.5, 0.0, 0.0), (1.0, 1.0, 1.0), (9, 9, 9))) == pytest.approx(4 / 9)
    # 5.5 .. 13.5 along y: 5.5 .. 9.5 inside (5), 10.5 .. 13.5 outside (4)
    assert fraction_outside_scan(ct, CropGrid((0.0, 5.5, 0.0), (1.0, 1.0, 1.0), (9, 9, 9))) == pytest.approx(4 / 9)
    # along z as well: outside when either is: 1 - (5/9)^2
    got = fraction_outside_scan(ct, CropGrid((0.0, 0.0, 5.5), (1.0, 1.0, 1.0), (9, 9, 9)))
    assert got == pytest.approx(4 / 9)
    assert fraction_outside_scan(ct, CropGrid((0.0, 5.5, 5.5), (1.0, 1.0, 1.0), (9, 9, 9))) == pytest.approx(
        1 - 25 / 81)
    assert fraction_outside_scan(ct, CropGrid((50.0, 0.0, 0.0), (1.0, 1.0, 1.0), (9, 9, 9))) == 1.0
