"""The class activation map in 3D (issue 11): over the tumour AND its ring, transfer functions through the MRML
volume property node, tumour and ring translucent so the map inside them stays visible."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import add_ct, add_seed
from test_slicer_logic import oblique_ct

from TMBRBLib.geometry import Box, lps_to_ras
from TMBRBLib.slicer import mrml as ma

SEED_LPS = (14.0, -16.0, 33.0)


def voxel_centres_ras(volume_node, mask_kji):
    kji = np.argwhere(mask_kji)
    ijk1 = np.c_[kji[:, ::-1], np.ones(len(kji))]
    return (ijk1 @ ma.ijk_to_ras(volume_node).T)[:, :3]


def inside_roi(roi, pts_ras, tol=1e-3):
    c, size = np.array(roi.GetCenter()), np.array(roi.GetSize())
    return np.all(np.abs(pts_ras - c) <= size / 2 + tol, axis=1)


@pytest.fixture()
def scored(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras(SEED_LPS))
    box = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "tight box")
    ma.set_roi_from_box(box, Box.from_center_size(SEED_LPS, (16.0, 16.0, 16.0)))  # about the tumour, no ring
    result = logic.process(ct, seed, box, numberOfShifts=0, device="cpu")
    return ct, box, result


def test_3d_rendering_covers_the_map_and_the_ring_not_just_the_box(scored):
    ct, box, result = scored
    nodes = result.nodes
    region = nodes["camRegion"]
    vr = ma._volume_rendering_logic(ct.GetScene()).GetFirstVolumeRenderingDisplayNode(nodes["cam"])
    assert vr.GetVisibility() and vr.GetCroppingEnabled() and vr.GetROINodeID() == region.GetID()
    assert not region.GetDisplayNode().GetVisibility()  # a cropping region, not another box on screen
    cam = ma.volume_array(nodes["cam"])
    ring = ma.segment_array(nodes["regions"], "Peritumoral ring", ct) > 0
    mapped = voxel_centres_ras(nodes["cam"], cam > 0)
    assert inside_roi(region, mapped).all()  # every voxel the map covers is rendered ...
    assert inside_roi(region, voxel_centres_ras(ct, ring & (cam > 0))).all()  # ... the map over the ring included
    # the bare box would cut part of the map off (the map reaches beyond it, where the peritumoral ring lies)
    assert not inside_roi(box, mapped).all() and inside_roi(region, mapped).sum() > inside_roi(box, mapped).sum()


def test_transfer_functions_live_on_the_volume_property_node(scored):
    ct, _box, result = scored
    vr = ma._volume_rendering_logic(ct.GetScene()).GetFirstVolumeRenderingDisplayNode(result.nodes["cam"])
    prop_node = vr.GetVolumePropertyNode()
    opacity = prop_node.GetScalarOpacity()
    assert opacity.GetValue(ma.CAM_THRESHOLD * 0.5) == 0.0 and opacity.GetValue(1.0) > 0.5
    assert np.allclose(prop_node.GetColor().GetColor(1.0), ma.heat_rgb(1.0), atol=1e-6)
    seen = []
    tag = prop_node.AddObserver("ModifiedEvent", lambda caller, event: seen.append(event))
    try:
        ma.set_cam_transfer_functions(prop_node, threshold=0.5, opacity=0.3)
    finally:
        prop_node.RemoveObserver(tag)
    assert seen, "editing the transfer functions must modify the node (the 3D views listen to it)"
    assert prop_node.GetScalarOpacity().GetValue(0.45) == 0.0
    assert prop_node.GetScalarOpacity().GetValue(1.0) == pytest.approx(0.3)


def test_tumour_and_ring_are_translucent_in_3d(scored):
    _ct, _box, result = scored
    regions = result.nodes["regions"]
    display, seg = regions.GetDisplayNode(), regions.GetSegmentation()
    tumour = display.GetSegmentOpacity3D(seg.GetSegmentIdBySegmentName("Tumour"))
    ring = display.GetSegmentOpacity3D(seg.GetSegmentIdBySegmentName("Peritumoral ring"))
    assert 0 < ring < tumour < 1


def test_the_region_is_reused_on_the_next_run(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras(SEED_LPS))
    p = logic.getParameterNode()
    first = logic.process(ct, seed, numberOfShifts=0, device="cpu", parameterNode=p)
    second = logic.process(ct, seed, numberOfShifts=0, device="cpu", parameterNode=p)
    assert second.nodes["camRegion"] is first.nodes["camRegion"]
    assert len([n for n in scene.GetNodesByClass("vtkMRMLMarkupsROINode")
                if n.GetAttribute("TMBRB.kind") == "cam-region"]) == 1


def test_one_threshold_for_the_slice_overlay_and_the_3d_rendering(scored):
    _ct, _box, result = scored
    cam = result.nodes["cam"]
    assert ma.cam_threshold(cam) == pytest.approx(ma.CAM_THRESHOLD)
    ma.set_cam_threshold(cam, 0.4)
    assert cam.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.4)
    opacity = ma.cam_volume_rendering_node(cam).GetVolumePropertyNode().GetScalarOpacity()
    assert opacity.GetValue(0.39) == 0.0 and opacity.GetValue(1.0) == pytest.approx(ma.CAM_OPACITY_3D)
    ma.show_cam(cam)  # a new result on the same node keeps the setting
    assert cam.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="threshold"):
        ma.set_cam_threshold(cam, 1.5)


def test_visibility_toggles_2d_3d_and_regions(scored):
    ct, _box, result = scored
    scene, cam = ct.GetScene(), result.nodes["cam"]
    comp = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    ma.set_cam_visibility(cam, in_2d=True, in_3d=False, opacity_2d=0.7)
    assert comp.GetForegroundVolumeID() == cam.GetID() and comp.GetForegroundOpacity() == pytest.approx(0.7)
    assert not ma.cam_volume_rendering_node(cam).GetVisibility()
    ma.set_cam_visibility(cam, in_2d=False, in_3d=True)
    assert comp.GetForegroundVolumeID() is None and ma.cam_volume_rendering_node(cam).GetVisibility()
    regions = result.nodes["regions"]
    assert ma.set_region_visibility_3d(regions, "Tumour", False)
    seg = regions.GetSegmentation()
    display = regions.GetDisplayNode()
    assert not display.GetSegmentVisibility3D(seg.GetSegmentIdBySegmentName("Tumour"))
    assert display.GetSegmentVisibility3D(seg.GetSegmentIdBySegmentName("Peritumoral ring"))
    assert not ma.set_region_visibility_3d(regions, "no such segment", False)


def test_views_centre_on_the_result(scored):
    ct, box, result = scored
    scene = ct.GetScene()
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    camera = scene.AddNewNodeByClass("vtkMRMLCameraNode")
    camera.SetPosition(0.0, 500.0, 0.0)
    camera.SetFocalPoint(0.0, 0.0, 0.0)
    seed = lps_to_ras(SEED_LPS)
    assert ma.centre_views_on_result(scene, seed, box) == 1
    centre = np.array(box.GetCenter())
    assert np.allclose(camera.GetFocalPoint(), centre, atol=1e-6)
    direction = np.array(camera.GetPosition()) - centre
    assert direction[1] > 0 and np.allclose(direction[[0, 2]], 0, atol=1e-6)  # the same side (anterior), nearer
    assert np.linalg.norm(direction) < 500
    slice_to_ras = red.GetSliceToRAS()
    assert np.allclose([slice_to_ras.GetElement(i, 3) for i in range(3)], seed, atol=1e-3)


def test_the_box_moves_only_by_its_handles_in_the_slice_views(scored):
    ct, box, _result = scored
    scene = ct.GetScene()
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    threed = scene.AddNewNodeByClass("vtkMRMLViewNode")
    box.CreateDefaultDisplayNodes()
    for _ in range(2):  # reused, not added again
        ma.box_handles_in_slice_views_only(box, [threed.GetID()])
    assert box.GetNumberOfDisplayNodes() == 2
    main, outline = box.GetNthDisplayNode(0), box.GetNthDisplayNode(1)
    assert main.IsDisplayableInView(red.GetID()) and not main.IsDisplayableInView(threed.GetID())
    assert outline.IsDisplayableInView(threed.GetID()) and not outline.IsDisplayableInView(red.GetID())
    assert not outline.GetHandlesInteractive() and outline.GetVisibility()


def test_no_3d_legend_is_said_once(scene, logic, caplog):
    import logging

    ct = add_ct(scene, oblique_ct()[0])
    cam = ma.add_volume_on_grid(scene, ct, (ma.volume_array(ct) > 0).astype("float32"), "map")
    ma._LEGEND_3D_LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="tmbrb"):
        ma.show_cam_in_3d(cam)
        ma.show_cam_in_3d(cam)
    said = [r for r in caplog.records if "not drawn for volumes in 3D views" in r.getMessage()]
    assert len(said) == 1


def test_the_display_code_uses_the_volume_rendering_logic_it_is_given(scene):
    import slicer

    given = slicer.vtkSlicerVolumeRenderingLogic()
    given.SetMRMLScene(scene)
    ma.set_volume_rendering_logic(scene, given)
    try:
        assert ma._volume_rendering_logic(scene) is given
        ct = add_ct(scene, oblique_ct()[0])
        cam = ma.add_volume_on_grid(scene, ct, (ma.volume_array(ct) > 0).astype("float32"), "map")
        vr, _region = ma.show_cam_in_3d(cam)
        assert vr is not None and given.GetFirstVolumeRenderingDisplayNode(cam) is vr
    finally:
        given.SetMRMLScene(None)


def test_cam_region_roi_bounds_the_non_zero_voxels_of_the_map(scene):
    """The ROI that crops the map's 3D rendering: the non-zero voxels' index bounds, one voxel of margin, half a
    voxel out to the voxel edges, on an anisotropic grid (numbers worked out by hand); an empty map gives None."""
    import SimpleITK as sitk

    arr = np.zeros((10, 12, 14), np.float32)  # z, y, x
    arr[3:6, 4:9, 2:5] = 0.5
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 2.0, 3.0))
    node = ma.add_volume_node_from_sitk(scene, img, "map")
    box = ma.box_from_roi(ma.cam_region_roi(node))
    # x: voxels 2..4, with the margin 1..5, edges 0.5..5.5 mm; y: 4..8 -> 3..9 -> 2.5..9.5 voxels of 2 mm;
    # z: 3..5 -> 2..6 -> 1.5..6.5 voxels of 3 mm (LPS)
    assert np.allclose(box.min, (0.5, 5.0, 4.5)) and np.allclose(box.max, (5.5, 19.0, 19.5)), box
    arr[:] = 0
    empty = ma.add_volume_node_from_sitk(scene, sitk.GetImageFromArray(arr), "empty")
    assert ma.cam_region_roi(empty) is None
