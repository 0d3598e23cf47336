"""geometry.py against values computed by hand (issue 16: mutation testing found shape-only checks here).

The expected numbers are worked out in the comments (origin + direction @ diag(spacing) @ index), never with the
module's own converters.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.geometry import (MAX_BOX_OUTSIDE_FRACTION, POINT_OUTSIDE_HINT, Box, box_overlap_fraction,
                               check_box_in_scan, image_bounds_lps, image_corners_lps, index_region_of_box,
                               index_to_physical, index_to_physical_matrix, lps_to_ras, parse_box, parse_triplet,
                               physical_points_to_index, physical_to_continuous_index, point_inside, ras_to_lps,
                               require_point_inside)

ROT_Z = (0, -1, 0, 1, 0, 0, 0, 0, 1)  # 90 degrees about z: index x runs along LPS +y, index y along LPS -x


def _image(size=(2, 3, 4), spacing=(1.0, 2.0, 3.0), origin=(10.0, 20.0, 30.0), direction=None):
    img = sitk.Image(list(size), sitk.sitkInt16)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _cube(n=10):
    return sitk.Image([n, n, n], sitk.sitkInt16)  # voxel centres 0..n-1 mm, outer edges -0.5 and n - 0.5


def test_ras_lps_values_and_types():
    assert ras_to_lps((1, 2, 3)) == (-1.0, -2.0, 3.0) and lps_to_ras([-4, 5, -6]) == (4.0, -5.0, -6.0)
    assert all(type(v) is float for v in ras_to_lps(np.array([1, 2, 3], dtype=np.int64)))


def test_box_constructors_and_properties():
    b = Box((1, 2, 3), (4, 6, 9))
    assert b.min == (1.0, 2.0, 3.0) and all(type(v) is float for v in b.min + b.max)
    assert b.center == (2.5, 4.0, 6.0) and b.size == (3.0, 4.0, 6.0)
    assert b.shifted((1, -1, 0.5)) == Box((2, 1, 3.5), (5, 5, 9.5))
    assert Box.from_center_size((0, 0, 0), (2, 4, 6)) == Box((-1, -2, -3), (1, 2, 3))
    assert Box.from_corners((0, 0, 0), (0.5, 0.25, 0.75)).size == (0.5, 0.25, 0.75)  # under 1 mm is a size too
    # RAS corners (1, 2, 3) and (4, 6, 9) are LPS (-1, -2, 3) and (-4, -6, 9)
    r = Box.from_ras_corners((1, 2, 3), (4, 6, 9))
    assert r == Box((-4, -6, 3), (-1, -2, 9))
    assert r.ras_corners() == ((1.0, 2.0, 3.0), (4.0, 6.0, 9.0))
    assert r.to_dict() == {"lps_min": [-4.0, -6.0, 3.0], "lps_max": [-1.0, -2.0, 9.0],
                           "ras_min": [1.0, 2.0, 3.0], "ras_max": [4.0, 6.0, 9.0],
                           "center_lps": [-2.5, -4.0, 6.0], "size_mm": [3.0, 4.0, 6.0]}


@pytest.mark.parametrize("a, b, size", [((0, 0, 0), (0, 1, 1), "(0, 1, 1)"),
                                        ((0, 0, 0), (1, 0, 1), "(1, 0, 1)"),
                                        ((0, 0, 5), (1, 1, 5), "(1, 1, 0)")])
def test_box_with_zero_size_along_any_axis_is_refused(a, b, size):
    # the size as plain numbers (it read "np.float64(0.0)" under numpy 2 before)
    with pytest.raises(TMBRBInputError) as e:
        Box.from_corners(a, b)
    assert e.value.problem == f"The box has zero size along an axis (size {size} mm)."
    assert e.value.hint == "Give two opposite corners that differ along every axis."


@pytest.mark.parametrize("a, b", [((np.nan, 0, 0), (1, 1, 1)), ((0, 0, 0), (1, np.inf, 1)),
                                  ((0, 0, -np.inf), (1, 1, 1)), ((0, 0, 0), (1, 1, np.nan))])
def test_box_with_a_non_finite_corner_is_refused(a, b):
    with pytest.raises(TMBRBInputError) as e:
        Box.from_corners(a, b)
    assert e.value.problem == "The box has a coordinate that is not a finite number."
    assert e.value.hint == "Give six finite numbers: xmin,ymin,zmin,xmax,ymax,zmax."


def test_image_corners_in_order_and_bounds():
    img = _image()  # x edges 10 + (-0.5, 1.5) x 1; y 20 + (-0.5, 2.5) x 2; z 30 + (-0.5, 3.5) x 3
    expected = [(x, y, z) for x in (9.5, 11.5) for y in (19.0, 25.0) for z in (28.5, 40.5)]
    np.testing.assert_allclose(image_corners_lps(img), expected)
    assert image_corners_lps(img).shape == (8, 3)
    assert image_bounds_lps(img) == Box((9.5, 19.0, 28.5), (11.5, 25.0, 40.5))
    # flipped along x: x = 10 - i for i in (-0.5, 1.5), so the bounds are 8.5 .. 10.5
    flipped = _image(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert image_bounds_lps(flipped) == Box((8.5, 19.0, 28.5), (10.5, 25.0, 40.5))


def test_index_and_physical_with_a_rotated_anisotropic_image():
    img = _image(direction=ROT_Z)
    m, o = index_to_physical_matrix(img)
    # direction @ diag(spacing): columns are the index axes scaled by their spacing
    np.testing.assert_array_equal(m, [[0, -2, 0], [1, 0, 0], [0, 0, 3]])
    np.testing.assert_array_equal(o, [10, 20, 30])
    # index (1, 1, 1): origin + (-2, 1, 3)
    assert index_to_physical(img, (1, 1, 1)) == (8.0, 21.0, 33.0)
    np.testing.assert_allclose(physical_to_continuous_index(img, (8, 21, 33)), [1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(physical_points_to_index(img, [[8, 21, 33], [10, 20, 30], [6, 20.5, 36]]),
                               [[1, 1, 1], [0, 0, 0], [0.5, 2, 2]], atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_point_inside_includes_the_outer_voxel_edges_on_every_axis(axis):
    img = _cube()
    for value, inside in [(-0.5, True), (-0.51, False), (9.5, True), (9.51, False), (4.0, True)]:
        p = [4.0, 4.0, 4.0]
        p[axis] = value
        assert point_inside(img, p) is inside, (axis, value)


def test_require_point_inside_message_by_hand():
    img = _image()  # LPS (9, 18, 27) is voxel (-1, -1, -1)
    require_point_inside(img, (9.5, 19.0, 28.5))
    with pytest.raises(TMBRBInputError) as e:
        require_point_inside(img, (9.04, 18.0, 27.0), what="The box centre")
    assert e.value.problem == ("The box centre (LPS (9.0, 18.0, 27.0) mm, RAS (-9.0, -18.0, 27.0) mm, voxel (-1.0, -1.0,"
                               " -1.0)) lies outside the CT (size (2, 3, 4)).")
    assert e.value.hint == POINT_OUTSIDE_HINT
    with pytest.raises(TMBRBInputError) as e:
        require_point_inside(img, (9.0, 18.0, 27.0), ct_name="chest", hint="Move it.")
    assert "lies outside the CT 'chest' (size (2, 3, 4))." in e.value.problem and e.value.hint == "Move it."


def test_box_overlap_fraction_by_hand():
    img = _cube()
    assert box_overlap_fraction(img, Box((-0.5, -0.5, -0.5), (9.5, 9.5, 9.5))) == 1.0  # edges count as inside
    # x from 5 to 13 in 9 samples (step 1): 5..9 inside
    assert box_overlap_fraction(img, Box((5, 0, 0), (13, 8, 8))) == pytest.approx(5 / 9)
    assert box_overlap_fraction(img, Box((0, 5, 0), (8, 13, 8))) == pytest.approx(5 / 9)
    assert box_overlap_fraction(img, Box((0, 0, -4.5), (8, 8, 3.5))) == pytest.approx(5 / 9)  # -0.5..3.5 inside
    assert box_overlap_fraction(img, Box((5, 0, 0), (13, 8, 8)), samples=3) == pytest.approx(2 / 3)  # 5, 9, 13
    assert box_overlap_fraction(img, Box((20, 0, 0), (28, 8, 8))) == 0.0


def test_check_box_in_scan_messages_by_hand():
    img = _cube()
    assert MAX_BOX_OUTSIDE_FRACTION == 0.25
    assert check_box_in_scan(img, Box((0, 0, 0), (8, 8, 8))) == []
    # x samples 2..10 (step 1): 8 of 9 inside, 11 % outside: accepted with a warning
    assert check_box_in_scan(img, Box((2, 0, 0), (10, 8, 8))) == [
        "11% of the box lies outside the scan; that part is padded with air (-1000 HU). Check the box."]
    with pytest.raises(TMBRBInputError) as e:  # 5 of 9 inside: 44 % outside
        check_box_in_scan(img, Box((5, 0, 0), (13, 8, 8)))
    assert e.value.problem == ("44% of the box (LPS (5.0, 0.0, 0.0) to (13.0, 8.0, 8.0) mm) lies outside the CT (at most"
                               " 25% is accepted: the model would see air where the scan ends).")
    assert e.value.hint == "Draw the box around the tumour inside the scan; check RAS vs LPS."
    with pytest.raises(TMBRBInputError) as e:  # 7, 8, 9 inside: 3 of 9, 67 % outside
        check_box_in_scan(img, Box((7, 0, 0), (15, 8, 8)), box_name="B", ct_name="chest", hint="Redraw.")
    assert e.value.problem == ("67% of the box 'B' lies outside the CT 'chest' (at most 25% is accepted: the model would"
                               " see air where the scan ends).") and e.value.hint == "Redraw."
    assert check_box_in_scan(img, Box((3.5, 0, 0), (11.5, 8, 8)))[0].startswith("22% of the box")
    with pytest.raises(TMBRBInputError) as e:
        check_box_in_scan(img, Box((20, 0, 0), (28, 8, 8)), box_name="B", ct_name="chest")
    assert e.value.problem == "The box 'B' lies wholly outside the CT 'chest'."
    with pytest.raises(TMBRBInputError) as e:
        check_box_in_scan(img, Box((20.04, 0, 0), (28.06, 8, 8)))
    assert e.value.problem == "The box (LPS (20.0, 0.0, 0.0) to (28.1, 8.0, 8.0) mm) lies wholly outside the CT."
    assert e.value.hint == "Draw the box around the tumour inside the scan; check RAS vs LPS."


def test_index_region_of_box_by_hand():
    img = _cube()
    box = Box((2.2, 3.5, 0.0), (4.7, 6.0, 9.9))
    lo, hi = index_region_of_box(img, box)
    # lo = floor(min) - 1 = (1, 2, -1) clipped to (1, 2, 0); hi = ceil(max) + 1 + 1 = (7, 8, 12) clipped to (7, 8, 10)
    np.testing.assert_array_equal(lo, [1, 2, 0])
    np.testing.assert_array_equal(hi, [7, 8, 10])
    lo, hi = index_region_of_box(img, box, pad=0)
    np.testing.assert_array_equal(lo, [2, 3, 0])
    np.testing.assert_array_equal(hi, [6, 7, 10])
    assert lo.dtype.kind == "i" and hi.dtype.kind == "i"
    # a box beyond the image on either side: an empty range at the image's edge, [10, 10) or [0, 0)
    lo, hi = index_region_of_box(img, Box((20, 20, 20), (25, 25, 25)))
    np.testing.assert_array_equal(lo, [10, 10, 10])
    np.testing.assert_array_equal(hi, [10, 10, 10])
    lo, hi = index_region_of_box(img, Box((-25, -25, -25), (-20, -20, -20)))
    np.testing.assert_array_equal(lo, [0, 0, 0])
    np.testing.assert_array_equal(hi, [0, 0, 0])
    # a rotated image: the box's corners map to index ranges along other axes
    rot = _image(size=(20, 20, 20), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=ROT_Z)
    # LPS (x, y, z) is index (y, -x, z): x in [-6, -4] -> index y in [4, 6]; y in [1, 2] -> index x in [1, 2]
    lo, hi = index_region_of_box(rot, Box((-6, 1, 3), (-4, 2, 5)), pad=0)
    np.testing.assert_array_equal(lo, [1, 4, 3])
    np.testing.assert_array_equal(hi, [3, 7, 6])


def test_parse_triplet_and_box():
    assert parse_triplet("1, 2;3.5", "The seed") == (1.0, 2.0, 3.5)
    assert parse_box("1,2,3;4,5,6", "The box") == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    cases = [(parse_triplet, "a,b,c", "The seed 'a,b,c' is not three numbers.", "Write it as x,y,z, e.g. 21.9,120.5,-611.5."),
             (parse_triplet, "1,2", "The seed '1,2' must be three finite numbers.", "Write it as x,y,z."),
             (parse_triplet, "1,2,3,4", "The seed '1,2,3,4' must be three finite numbers.", "Write it as x,y,z."),
             (parse_triplet, "1,2,nan", "The seed '1,2,nan' must be three finite numbers.", "Write it as x,y,z."),
             (parse_box, "1,2,3,4,5,x", "The box '1,2,3,4,5,x' is not six numbers.",
              "Write it as xmin,ymin,zmin,xmax,ymax,zmax."),
             (parse_box, "1,2,3,4,5", "The box '1,2,3,4,5' must be six finite numbers.",
              "Write it as xmin,ymin,zmin,xmax,ymax,zmax."),
             (parse_box, "1,2,3,4,5,inf", "The box '1,2,3,4,5,inf' must be six finite numbers.",
              "Write it as xmin,ymin,zmin,xmax,ymax,zmax.")]
    for parse, text, problem, hint in cases:
        what = "The seed" if parse is parse_triplet else "The box"
        with pytest.raises(TMBRBInputError) as e:
            parse(text, what)
        assert (e.value.problem, e.value.hint) == (problem, hint), text
