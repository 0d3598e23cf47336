"""A new result for the same CT rewrites the class activation map's node in place (issue 12: placing a result on a
512x512x300 CT was mostly one full-size write); what the views show must be exactly what a fresh node shows."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from conftest import add_ct, add_seed
from test_slicer_logic import oblique_ct

from TMBRBLib.geometry import Box, lps_to_ras
from TMBRBLib.slicer import mrml as ma
from TMBRBLib.volumes import RegionVolume

SEED_LPS = (14.0, -16.0, 33.0)


def grid_ct(size=(30, 24, 16)):
    img = sitk.GetImageFromArray(np.full(size[::-1], -800, np.int16))
    img.SetSpacing((0.8, 0.9, 2.0))
    img.SetOrigin((-10.0, 5.0, 20.0))
    return img


def region(ct_node, lo, shape, value):
    data = np.full(shape, value, np.float32)
    data[0, 0, 0] = value / 2  # not uniform: a transposed write would show
    return RegionVolume(data, lo, ma.node_geometry(ct_node))


def expected(ct_node, reg):
    nx, ny, nz = ct_node.GetImageData().GetDimensions()
    out = np.zeros((nz, ny, nx), np.float32)
    x, y, z = reg.lo
    dz, dy, dx = reg.data.shape
    out[z:z + dz, y:y + dy, x:x + dx] = reg.data
    return out


def test_second_map_on_the_same_grid_is_written_in_place_and_equals_a_fresh_one(scene):
    ct = add_ct(scene, grid_ct())
    first = region(ct, (2, 3, 1), (4, 5, 6), 0.6)
    node = ma.add_map_on_grid(scene, ct, first, "map")
    image = node.GetImageData()
    events = []
    node.AddObserver(node.ImageDataModifiedEvent, lambda *a: events.append(1))

    second = region(ct, (12, 10, 5), (3, 7, 9), 0.9)  # elsewhere, another shape
    assert ma.add_map_on_grid(scene, ct, second, "map", node=node) is node
    assert node.GetImageData() is image  # no new full-size image
    assert events, "the views must be told that the map changed"
    got = ma.volume_array(node)
    np.testing.assert_array_equal(got, expected(ct, second))  # the first region is cleared, the second written
    fresh = ma.add_map_on_grid(scene, ct, second, "fresh")
    np.testing.assert_array_equal(ma.volume_array(fresh), got)
    np.testing.assert_array_equal(ma.ijk_to_ras(fresh), ma.ijk_to_ras(node))


def test_a_node_on_another_grid_or_not_made_here_gets_a_new_full_image(scene):
    small = add_ct(scene, grid_ct((10, 8, 6)), name="small")
    big = add_ct(scene, grid_ct())
    node = ma.add_map_on_grid(scene, small, region(small, (1, 1, 1), (2, 2, 2), 0.5), "map")
    reg = region(big, (5, 6, 7), (3, 3, 3), 0.7)
    ma.add_map_on_grid(scene, big, reg, "map", node=node)  # another CT: its grid, not the old image
    assert node.GetImageData().GetDimensions() == big.GetImageData().GetDimensions()
    np.testing.assert_array_equal(ma.volume_array(node), expected(big, reg))

    # a volume node of the user's (no record of a region written here) is never patched: all of it is replaced
    own = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "own")
    ma.set_volume_from_array(own, np.ones((16, 24, 30), np.float32), ma.ijk_to_ras(big, world=False))
    ma.add_map_on_grid(scene, big, reg, "map", node=own)
    np.testing.assert_array_equal(ma.volume_array(own), expected(big, reg))


def test_two_applies_with_other_boxes_show_the_map_of_the_last_one_only(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras(SEED_LPS))
    p = logic.getParameterNode()
    boxes = []
    for centre in ((14.0, -16.0, 33.0), (10.0, -20.0, 30.0)):
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
        ma.set_roi_from_box(roi, Box.from_center_size(centre, (18.0, 18.0, 18.0)))
        boxes.append(roi)
    first = logic.process(ct, seed, boxes[0], numberOfShifts=0, device="cpu", parameterNode=p)
    image = first.nodes["cam"].GetImageData()
    second = logic.process(ct, seed, boxes[1], numberOfShifts=0, device="cpu", parameterNode=p)
    assert second.nodes["cam"] is first.nodes["cam"] and second.nodes["cam"].GetImageData() is image  # in place
    shown = ma.volume_array(second.nodes["cam"])

    ct2 = add_ct(scene, oblique_ct()[0], name="CT again")
    alone = logic.process(ct2, seed, boxes[1], numberOfShifts=0, device="cpu")
    assert alone.nodes["cam"] is not second.nodes["cam"]
    np.testing.assert_allclose(shown, ma.volume_array(alone.nodes["cam"]), atol=1e-6)


def test_3d_crop_region_searches_the_written_region_and_equals_the_whole_map_search(scene):
    ct = add_ct(scene, grid_ct())
    data = np.zeros((6, 7, 8), np.float32)
    data[2:4, 1:6, 3:5] = 0.7  # non-zero in part of the region only
    reg = RegionVolume(data, (9, 4, 3), ma.node_geometry(ct))
    written = ma.add_map_on_grid(scene, ct, reg, "map")
    plain = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "same voxels, not written here")
    ma.set_volume_from_array(plain, ma.volume_array(written), ma.ijk_to_ras(ct, world=False))
    a, b = ma.cam_region_roi(written), ma.cam_region_roi(plain)
    np.testing.assert_allclose(a.GetCenter(), b.GetCenter(), atol=1e-6)
    np.testing.assert_allclose(a.GetSize(), b.GetSize(), atol=1e-6)
    # the ROI holds exactly the non-zero block with one voxel of margin: (2+2) x (5+2) x (2+2) voxels
    np.testing.assert_allclose(sorted(a.GetSize()), sorted([4 * 0.8, 7 * 0.9, 4 * 2.0]), atol=1e-6)
    # an empty map written here: no region to render
    assert ma.cam_region_roi(ma.add_map_on_grid(scene, ct, RegionVolume(np.zeros((2, 2, 2), np.float32), (1, 1, 1),
                                                                        ma.node_geometry(ct)), "empty")) is None
