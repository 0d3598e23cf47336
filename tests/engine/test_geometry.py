import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.crop import crop_for_model, crop_grid
from TMBRBLib.bundle import default_tmbrb_metadata
from TMBRBLib.geometry import Box, lps_to_ras, ras_to_lps, point_inside, image_bounds_lps
from TMBRBLib.proposal import mask_extent_lps, propose_box

from .synthetic import DIRECTIONS, make_ct

POLICY = default_tmbrb_metadata()["preprocessing"]


def test_ras_lps_flip_is_its_own_inverse():
    p = (21.86, 120.54, -611.5)
    assert ras_to_lps(p) == (-21.86, -120.54, -611.5)
    assert lps_to_ras(ras_to_lps(p)) == p


def test_box_from_corners_orders_and_rejects_flat_boxes():
    b = Box.from_corners((5, 0, 0), (0, 5, 5))
    assert b.min == (0, 0, 0) and b.max == (5, 5, 5) and b.center == (2.5, 2.5, 2.5)
    with pytest.raises(ValueError, match="zero size"):
        Box.from_corners((0, 0, 0), (1, 0, 1))
    ras = Box.from_ras_corners((1, 2, 3), (4, 5, 6))
    assert ras.min == (-4, -5, 3) and ras.max == (-1, -2, 6)


def _bright_centroid_lps(crop_img: sitk.Image, threshold=-400):
    arr = sitk.GetArrayFromImage(crop_img)
    zz, yy, xx = np.nonzero(arr > threshold)
    ci = np.array([xx.mean(), yy.mean(), zz.mean()])
    return np.array(crop_img.TransformContinuousIndexToPhysicalPoint(ci.tolist()))


@pytest.mark.parametrize("name", list(DIRECTIONS))
@pytest.mark.parametrize("spacing", [(0.8, 0.8, 1.0), (0.7, 0.7, 5.0)])
def test_crop_is_centred_on_the_box_for_any_direction(name, spacing):
    tumour = np.array([14.0, -25.0, 28.0])
    size = (96, 96, 64) if spacing[2] < 2 else (96, 96, 16)
    ct, mask = make_ct(DIRECTIONS[name], spacing, size, center_lps=(10, -20, 30), tumour_lps=tumour, radius_mm=9)
    box = Box.from_center_size(tumour, (24, 24, 24))
    arr, crop_img, grid = crop_for_model(ct, box, POLICY)
    assert arr.shape == tuple(POLICY["shape"])
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    np.testing.assert_allclose(grid.center, box.center, atol=1e-9)
    # the tumour (bright) sits at the crop centre, within a crop voxel (and a CT voxel for thick slices)
    centroid = _bright_centroid_lps(crop_img)
    tol = max(grid.spacing[0], 0.6 * spacing[2] if spacing[2] > 2 else 0)
    assert np.linalg.norm(centroid - box.center) <= tol + 1e-6, (name, centroid, box.center)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_seed_alone_gives_a_box_and_crop_that_hold_the_tumour(name):
    tumour = np.array([4.0, -15.0, 33.0])
    ct, mask = make_ct(DIRECTIONS[name], (0.8, 0.8, 1.0), (96, 96, 64), tumour_lps=tumour, radius_mm=7, noise=15)
    seed = tumour + np.array([1.5, -1.0, 1.0])  # annotator's seed is near, not at, the centre
    box, warnings = propose_box(ct, seed)
    assert not warnings
    ext = mask_extent_lps(mask)
    assert np.all(np.asarray(box.min) <= np.asarray(ext.min) + 0.5)
    assert np.all(np.asarray(box.max) >= np.asarray(ext.max) - 0.5)
    # and not absurdly large: within 4 mm margin + 1 voxel of the true extent
    assert np.all(np.asarray(box.size) <= np.asarray(ext.size) + 2 * 3.0 + 2.5)
    grid = crop_grid(box, POLICY)
    assert np.all(np.asarray(grid.box.min) <= np.asarray(ext.min)) and np.all(np.asarray(grid.box.max) >= ext.max)
    assert np.all(np.asarray(grid.box.min) <= seed) and np.all(seed <= np.asarray(grid.box.max))


def test_field_of_view_follows_the_policy():
    small = Box.from_center_size((0, 0, 0), (10, 12, 8))
    big = Box.from_center_size((0, 0, 0), (60, 40, 50))
    huge = Box.from_center_size((0, 0, 0), (300, 40, 50))
    assert crop_grid(small, POLICY).spacing[0] * 64 == pytest.approx(POLICY["min_fov_mm"])
    assert crop_grid(big, POLICY).spacing[0] * 64 == pytest.approx(60 + 2 * POLICY["margin_mm"])
    assert crop_grid(huge, POLICY).spacing[0] * 64 == pytest.approx(POLICY["max_fov_mm"])
    fixed = dict(POLICY, mode="fixed_fov", fov_mm=64.0)
    assert crop_grid(big, fixed).spacing == (1.0, 1.0, 1.0)


def test_crop_pads_outside_the_scan_with_air():
    ct, _ = make_ct(size=(40, 40, 20), background_hu=40)  # a small all-soft-tissue scan
    b = image_bounds_lps(ct)
    box = Box.from_center_size(b.max, (20, 20, 20))  # centred on a corner: 7/8 of the crop is outside
    arr, crop_img, grid = crop_for_model(ct, box, POLICY)
    hu = sitk.GetArrayFromImage(crop_img)
    assert hu.min() == -1000 and (hu == -1000).mean() > 0.7
    assert point_inside(ct, b.center) and not point_inside(ct, np.asarray(b.max) + 1)


def test_require_point_inside_names_the_point_the_ct_and_the_fix():
    from TMBRBLib.errors import TMBRBInputError
    from TMBRBLib.geometry import POINT_OUTSIDE_HINT, require_point_inside
    ct, _ = make_ct(size=(20, 20, 10), spacing=(1.0, 1.0, 2.0), center_lps=(0.0, 0.0, 0.0))
    require_point_inside(ct, (0.0, 0.0, 0.0))
    require_point_inside(ct, (9.4, -9.4, 9.9))  # inside the outer voxel edges
    with pytest.raises(TMBRBInputError) as e:
        require_point_inside(ct, (0.0, 0.0, 30.0))
    assert e.value.problem == ("The seed (LPS (0.0, 0.0, 30.0) mm, RAS (-0.0, -0.0, 30.0) mm, voxel (9.5, 9.5, 19.5)) "
                               "lies outside the CT (size (20, 20, 10)).")
    assert e.value.hint == POINT_OUTSIDE_HINT and str(e.value).endswith(POINT_OUTSIDE_HINT)
    hint = "Place the seed on the tumour inside this CT (check that the right CT is selected)."
    with pytest.raises(TMBRBInputError, match=r"^The target \(LPS .*\) lies outside the CT 'chest' \(size .*\)\. "
                                              r"Place the seed on the tumour inside this CT") as e:
        require_point_inside(ct, (50.0, 0.0, 0.0), what="The target", ct_name="chest", hint=hint)
    assert e.value.hint == hint
