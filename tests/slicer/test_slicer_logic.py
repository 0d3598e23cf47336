"""The module's Logic on real MRML scenes (slicer-core wheel): adapter geometry, the scored case's nodes, bad input,
scene bundles (.mrb), background process and batch. The engine runs for real with the placeholder bundle."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import add_ct, add_seed, label_points_ras, node_ids

import TMBRB
from TMBRBLib.slicer import dependencies
from TMBRBLib.slicer import mrml as ma
from TMBRBLib.errors import TMBRBCancelled, TMBRBInputError
from TMBRBLib.geometry import Box, lps_to_ras, ras_to_lps


def oblique_ct(size=(48, 44, 36), spacing=(0.9, 0.8, 1.5), tumour_lps=(14.0, -16.0, 33.0), radius=7.0):
    """A small CT with an oblique direction, a soft-tissue sphere in lung-like background. Returns (ct, mask)."""
    a, b = np.radians(17.0), np.radians(11.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    d = rz @ rx
    m = d @ np.diag(spacing)
    origin = np.array([10.0, -20.0, 30.0]) - m @ ((np.array(size) - 1) / 2)
    zz, yy, xx = np.indices(size[::-1])
    pts = np.stack([xx, yy, zz], -1).reshape(-1, 3) @ m.T + origin
    inside = (np.linalg.norm(pts - np.array(tumour_lps), axis=1) <= radius).reshape(size[::-1])
    rng = np.random.default_rng(0)
    arr = np.where(inside, 40.0, -850.0) + rng.normal(0, 15, inside.shape)
    arr[:, :, :3] = -1000.0
    ct = sitk.GetImageFromArray(arr.astype(np.int16))
    ct.SetSpacing(spacing)
    ct.SetOrigin(tuple(origin))
    ct.SetDirection(tuple(d.ravel()))
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(ct)
    return ct, mask


# ----------------------------------------------------------------------------------------------------------------------
# adapter


def test_volume_round_trip_keeps_voxels_and_oblique_geometry(scene):
    ct, _ = oblique_ct()
    node = add_ct(scene, ct)
    m = ma.ijk_to_ras(node)
    # a voxel's RAS position from the node matrix equals the LPS position from SimpleITK, flipped
    for idx in [(0, 0, 0), (47, 43, 35), (5, 30, 12)]:
        ras = m @ np.array([*idx, 1.0])
        assert np.allclose(ras[:3], lps_to_ras(ct.TransformIndexToPhysicalPoint(idx)), atol=1e-6)
    back = ma.volume_node_to_sitk(node)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ct))
    assert np.allclose(back.GetOrigin(), ct.GetOrigin()) and np.allclose(back.GetDirection(), ct.GetDirection())
    assert np.allclose(back.GetSpacing(), ct.GetSpacing())


def test_linear_parent_transform_is_applied_and_outputs_follow_it(scene):
    ct, _ = oblique_ct()
    node = add_ct(scene, ct)
    t = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    mat = np.eye(4)
    mat[:3, 3] = (5.0, -3.0, 2.0)
    t.SetMatrixTransformToParent(ma._numpy_to_matrix(mat))
    node.SetAndObserveTransformNodeID(t.GetID())
    world = ma.volume_node_to_sitk(node)
    assert np.allclose(np.array(world.GetOrigin()) - np.array(ct.GetOrigin()), ras_to_lps((5.0, -3.0, 2.0)))
    cam = ma.add_volume_on_grid(scene, node, np.zeros(sitk.GetArrayFromImage(ct).shape, np.float32), "cam")
    assert cam.GetParentTransformNode() is t
    assert np.allclose(ma.ijk_to_ras(cam), ma.ijk_to_ras(node))


def test_seed_and_roi_conversions(scene):
    seed = add_seed(scene, (10.0, 20.0, -30.0))
    assert ma.seed_lps(seed) == (-10.0, -20.0, -30.0)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    box = Box((-12.0, -25.0, -40.0), (8.0, -5.0, -20.0))
    ma.set_roi_from_box(roi, box)
    rmin, rmax = box.ras_corners()
    assert np.allclose(roi.GetCenter(), (np.array(rmin) + np.array(rmax)) / 2)
    back = ma.box_from_roi(roi)
    assert np.allclose(back.min, box.min) and np.allclose(back.max, box.max)


def test_user_segmentation_becomes_a_mask_on_the_ct_grid(scene):
    ct, mask = oblique_ct()
    node = add_ct(scene, ct)
    lab = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lab")
    ma.set_volume_from_array(lab, sitk.GetArrayFromImage(mask), ma.ijk_to_ras(node))
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user seg")
    import slicer
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lab, seg)
    seg.GetSegmentation().GetNthSegment(0).SetName("Lesion")
    before = node_ids(scene)
    out, warnings = ma.segmentation_to_mask(seg, node)
    assert node_ids(scene) == before  # the temporary export node is gone again
    assert np.array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(mask))
    assert warnings == []


# ----------------------------------------------------------------------------------------------------------------------
# the whole case on a real CT


def test_box_proposed_from_the_seed_encloses_the_tumour_label(scene, logic, real_case):
    ct = add_ct(scene, real_case["ct"], "lung2")
    seed = add_seed(scene, real_case["seed_ras"])
    roi = logic.proposeBox(ct, seed)
    b = [0.0] * 6
    roi.GetRASBounds(b)
    pts = label_points_ras(real_case["label"])
    half = np.abs(np.array(real_case["label"].GetSpacing())) / 2
    inside = np.all((pts >= np.array(b[0::2]) - half) & (pts <= np.array(b[1::2]) + half), axis=1)
    assert inside.mean() >= 0.95, f"only {100 * inside.mean():.1f}% of the tumour label is inside the proposed box"
    assert (np.array(b[1::2]) - np.array(b[0::2])).max() < 120  # a box around the tumour, not the whole chest


def test_proposal_warnings_reach_the_caller_when_no_lesion_is_at_the_seed(scene, logic):
    ct, _ = oblique_ct()
    node = add_ct(scene, ct)
    # a seed in the lung-like background, far from the sphere: no lesion there
    far = np.array(ct.TransformIndexToPhysicalPoint((40, 6, 30)), float)
    seed = add_seed(scene, lps_to_ras(far))
    roi, warnings = logic.proposeBoxWithWarnings(node, seed)
    assert roi is not None and any("No soft-tissue lesion" in w for w in warnings)
    tumour_seed = add_seed(scene, lps_to_ras((14.0, -16.0, 33.0)))
    roi2, warnings2 = logic.proposeBoxWithWarnings(node, tumour_seed)
    assert warnings2 == [] and roi2 is not roi


def test_process_creates_the_nodes_on_the_ct_geometry(scene, logic, real_case):
    import slicer

    ct = add_ct(scene, real_case["ct"], "lung2")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1"), "Chest CT")
    sh.CreateItem(study, ct)
    seed = add_seed(scene, real_case["seed_ras"])
    # a box centred on the seed: the crop's centre must be the seed (RAS -> LPS through the adapter)
    centre = ras_to_lps(real_case["seed_ras"])
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    ma.set_roi_from_box(roi, Box.from_center_size(centre, (60.0, 60.0, 60.0)))
    comp = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # one slice view
    p = logic.getParameterNode()
    result = logic.process(ct, seed, roi, ecog=1, numberOfShifts=2, device="cpu", camOpacity=0.4, parameterNode=p)
    nodes = result.nodes

    crop = result.crop
    crop_centre = crop.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in crop.GetSize()])
    assert np.allclose(crop_centre, centre, atol=0.01)

    cam = nodes["cam"]
    assert np.array_equal(ma.ijk_to_ras(cam, world=False), ma.ijk_to_ras(ct, world=False))
    assert cam.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
    cam_arr = ma.volume_array(cam)
    assert cam_arr.dtype == np.float32 and 0.0 <= cam_arr.min() and cam_arr.max() <= 1.0
    assert np.array_equal(cam_arr, sitk.GetArrayFromImage(result.cam))

    seg = nodes["regions"].GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == ["Tumour", "Peritumoral ring"]
    tum = ma.segment_array(nodes["regions"], "Tumour", ct)
    ring = ma.segment_array(nodes["regions"], "Peritumoral ring", ct)
    assert np.array_equal(tum, sitk.GetArrayFromImage(result.tumour_mask))
    assert ring.sum() > 0 and not np.any(tum & ring)
    assert nodes["regions"].GetDisplayNode().GetVisibility2DOutline() and \
        not nodes["regions"].GetDisplayNode().GetVisibility2DFill()

    rows = ma.table_rows(nodes["table"])
    assert float(rows["TMBRB score"]) == pytest.approx(result.score, abs=1e-4)
    assert rows["OS risk group"].startswith(result.risk["os"]["group"])
    assert rows["Demo model"] == ("yes" if result.model["demo"] else "no")
    assert "OS relative hazard" in rows  # ECOG given -> combined group
    assert json.loads(nodes["table"].GetAttribute("TMBRB.result"))["score"] == pytest.approx(result.score)

    # display: heat colours, low values transparent, CAM as foreground at the chosen opacity
    disp = cam.GetDisplayNode()
    assert disp.GetColorNode().GetName() == ma.CAM_COLOR_NODE_NAME and disp.GetApplyThreshold()
    assert comp.GetForegroundVolumeID() == cam.GetID() and comp.GetForegroundOpacity() == pytest.approx(0.4)
    assert comp.GetBackgroundVolumeID() == ct.GetID()
    assert slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(cam) is not None  # colour legend for the CAM
    lut = disp.GetColorNode().GetLookupTable()
    assert disp.GetLowerThreshold() > 0 and lut.GetTableValue(0)[3] == 0.0 and lut.GetTableValue(255)[3] == 1.0
    vr = ma._volume_rendering_logic(scene).GetFirstVolumeRenderingDisplayNode(cam)
    # 3D: cropped to the map's own region (tumour and ring), never to the bare box (tests/slicer/test_cam_display.py)
    assert vr is not None and vr.GetVisibility()
    if cam_arr.max() > 0:
        assert vr.GetCroppingEnabled() and vr.GetROINodeID() == nodes["camRegion"].GetID() != roi.GetID()
    else:  # the untrained model's map can be empty: nothing to render, no region, and the result says so
        assert "camRegion" not in nodes and any("zero everywhere" in w for w in result.warnings)

    # everything under the CT's study, and recorded in the parameter node
    for n in (cam, nodes["regions"], nodes["table"]):
        folder = sh.GetItemParent(sh.GetItemByDataNode(n))
        assert sh.GetItemName(folder) == "TMBRB results" and sh.GetItemParent(folder) == study
    assert p.camVolume is cam and p.regionsSegmentation is nodes["regions"] and p.resultTable is nodes["table"]


def test_scene_bundle_round_trip_restores_nodes_and_parameters(scene, logic, tmp_path):
    ct_img, _ = oblique_ct()
    ct = add_ct(scene, ct_img, "phantom CT")
    seed = add_seed(scene, lps_to_ras((14.0, -16.0, 33.0)))
    p = logic.getParameterNode()
    p.inputVolume, p.seedPoint, p.ecog, p.numberOfShifts, p.camOpacity, p.forceCpu = ct, seed, "2", 3, 0.7, True
    result = logic.process(ct, seed, None, ecog=p.ecog, numberOfShifts=0, device="cpu", parameterNode=p)
    assert p.boxRoi is result.nodes["roi"]  # the proposed box became the module's ROI
    mrb = tmp_path / "case.mrb"
    assert scene.WriteToMRB(str(mrb))

    s2 = ma.create_scene()
    try:
        assert s2.ReadFromMRB(str(mrb))
        p2 = TMBRB.TMBRBLogic(s2).getParameterNode()
        assert (p2.ecog, p2.numberOfShifts, p2.camOpacity, p2.forceCpu) == ("2", 3, 0.7, True)
        assert p2.inputVolume.GetName() == "phantom CT" and p2.seedPoint.GetName() == "seed"
        assert np.allclose(ma.seed_ras(p2.seedPoint), ma.seed_ras(seed))
        assert np.allclose(ma.ijk_to_ras(p2.camVolume), ma.ijk_to_ras(p2.inputVolume), atol=1e-6)
        assert np.allclose(ma.volume_array(p2.camVolume), ma.volume_array(result.nodes["cam"]), atol=1e-6)
        assert p2.regionsSegmentation.GetSegmentation().GetNumberOfSegments() == 2
        assert float(ma.table_rows(p2.resultTable)["TMBRB score"]) == pytest.approx(result.score, abs=1e-4)
        assert np.allclose(ma.box_from_roi(p2.boxRoi).min, ma.box_from_roi(p.boxRoi).min, atol=1e-4)
    finally:
        ma.release_scene(s2)


# ----------------------------------------------------------------------------------------------------------------------
# bad input: a clear exception, the scene left as it was


def _bad(logic, scene, match, *args, **kw):
    before = node_ids(scene)
    with pytest.raises(TMBRBInputError, match=match):
        logic.process(*args, device="cpu", numberOfShifts=0, **kw)
    assert node_ids(scene) == before


def test_no_ct_selected(scene, logic):
    _bad(logic, scene, "No CT volume is selected", None, add_seed(scene, (0, 0, 0)))


def test_seed_missing_or_not_placed(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    _bad(logic, scene, "No seed point", ct, None)
    empty = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty")
    _bad(logic, scene, "has no placed point", ct, empty)


def test_seed_outside_the_volume(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    _bad(logic, scene, "lies outside the CT", ct, add_seed(scene, (500.0, 500.0, 500.0)))


def test_roi_outside_the_volume(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras((14.0, -16.0, 33.0)))
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far box")
    ma.set_roi_from_box(roi, Box((400.0, 400.0, 400.0), (420.0, 420.0, 420.0)))
    _bad(logic, scene, "wholly outside the CT", ct, seed, roi)


def test_label_map_chosen_as_ct(scene, logic):
    img, mask = oblique_ct()
    lab = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "tumour label")
    ma.set_volume_from_array(lab, sitk.GetArrayFromImage(mask), ma.ijk_to_ras_from_sitk(mask))
    _bad(logic, scene, "is a label map", lab, add_seed(scene, lps_to_ras((14.0, -16.0, 33.0))))


def test_2d_volume(scene, logic):
    img = sitk.Image(64, 64, 1, sitk.sitkInt16) - 1000
    ct = add_ct(scene, img, "one slice")
    _bad(logic, scene, "is a 2D image", ct, add_seed(scene, (0, 0, 0)))


def test_cancel_mid_run_leaves_the_scene_as_it_was(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras((14.0, -16.0, 33.0)))
    before = node_ids(scene)
    seen = []

    def cancel():
        return len(seen) >= 2  # cancel after the engine reported progress twice

    with pytest.raises(TMBRBCancelled):
        logic.process(ct, seed, device="cpu", numberOfShifts=0, progress=lambda f, m: seen.append(f), cancel=cancel)
    assert len(seen) == 2 and node_ids(scene) == before


def test_missing_dependencies_declined_gives_a_clear_error(monkeypatch, logic):
    monkeypatch.setattr(dependencies, "readRequirements", lambda path=None, environment=None: ["tmbrb-no-such-package-xyz>=1.0", "numpy"])
    installs, asked = [], []
    monkeypatch.setattr(TMBRB.TMBRBLogic, "_pipInstall", staticmethod(lambda reqs: installs.append(reqs)))
    with pytest.raises(TMBRB.TMBRBDependencyError, match="tmbrb-no-such-package-xyz"):
        logic.ensureDependencies(confirm=lambda message: asked.append(message) or False)
    assert installs == [] and len(asked) == 1 and "tmbrb-no-such-package-xyz" in asked[0]
    with pytest.raises(TMBRB.TMBRBDependencyError, match="Missing Python packages"):
        logic.ensureDependencies(confirm=None)  # batch: no question, a clear exception
    assert dependencies.missingRequirements(["numpy>=1.0"]) == []


def test_requirements_file_skips_slicers_own_packages(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nmonai>=1.3\nnumpy>=2\nSimpleITK\ntorch>=2\nsafetensors  # weights\n")
    assert dependencies.readRequirements(req) == ["monai>=1.3", "safetensors"]


# ----------------------------------------------------------------------------------------------------------------------
# background process and batch


def test_background_run_and_import(scene, logic, tmp_path):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras((14.0, -16.0, 33.0)))
    job = logic.startBackground(ct, seed, None, None, "1", numberOfShifts=1, device="cpu", workDir=tmp_path / "job")
    events = []
    rc = job.process.wait(timeout=240, on_event=events.append)
    assert rc == 0, job.process.failure_message()
    fractions = [e["progress"] for e in events if "progress" in e]
    assert fractions and fractions == sorted(fractions) and any(e.get("done") for e in events)
    result = logic.importBackgroundResult(job, showResult=False)
    assert np.allclose(ma.ijk_to_ras(result.nodes["cam"]), ma.ijk_to_ras(ct))
    assert result.risk["ecog"] == 1
    assert float(ma.table_rows(result.nodes["table"])["TMBRB score"]) == pytest.approx(result.score, abs=1e-4)


def test_background_cancel_really_stops_the_process(scene, logic, tmp_path):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras((14.0, -16.0, 33.0)))
    before = node_ids(scene)
    job = logic.startBackground(ct, seed, device="cpu", numberOfShifts=0, workDir=tmp_path / "job", useWorker=False)
    proc = job.process
    proc.cancel()
    proc.wait(timeout=30)
    assert proc.outcome() == "cancelled" and not proc.running
    with pytest.raises(ProcessLookupError):
        os.kill(proc.proc.pid, 0)  # the process is gone (reaped), not just detached
    with pytest.raises(TMBRBCancelled):
        logic.importBackgroundResult(job)
    assert node_ids(scene) == before and not (tmp_path / "job" / "out" / "result.json").exists()


def test_background_bad_input_is_reported_as_input_error(scene, logic, tmp_path):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras((14.0, -16.0, 33.0)))
    job = logic.startBackground(ct, seed, device="cpu", numberOfShifts=0, workDir=tmp_path / "job",
                                bundle=tmp_path / "no-such-bundle")
    job.process.wait(timeout=120)
    with pytest.raises(TMBRB.TMBRBError, match="no-such-bundle"):
        logic.importBackgroundResult(job)


def test_process_cases_skips_finished_and_records_failures(scene, logic, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    ct, _ = oblique_ct()
    sitk.WriteImage(ct, str(cases / "a.nrrd"))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "ct", "seed_lps", "ecog"])
        w.writerow(["good", "cases/a.nrrd", "14,-16,33", "0"])
        w.writerow(["outside", "cases/a.nrrd", "400,400,400", ""])
        w.writerow(["missing", "cases/none.nrrd", "14,-16,33", ""])
    calls = []
    rows = logic.processCases(manifest, tmp_path / "out", device="cpu", numberOfShifts=0,
                              progress=lambda i, n, row: calls.append((i, n, row["status"])))
    status = {r["case_id"]: r for r in rows}
    assert status["good"]["status"] == "ok" and status["outside"]["status"] == "failed"
    assert "outside the CT" in status["outside"]["error"] and "does not exist" in status["missing"]["error"]
    assert calls == [(1, 3, "ok"), (2, 3, "failed"), (3, 3, "failed")]
    again = logic.processCases(manifest, tmp_path / "out", device="cpu", numberOfShifts=0, loadResults=True)
    assert {r["case_id"]: r["status"] for r in again}["good"] == "done-before"
    loaded = scene.GetFirstNodeByName("good TMBRB results")
    assert loaded is not None and float(ma.table_rows(loaded)["TMBRB score"]) == pytest.approx(
        float(status["good"]["score"]), abs=1e-4)


def test_seed_outside_the_box_is_refused(scene, logic):
    """Scoring a box that does not hold the seed gave a number (0.001) and 'Done'; now Apply says what to fix."""
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras((14.0, -16.0, 33.0)))
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box beside")
    ma.set_roi_from_box(roi, Box((-6.0, -36.0, 13.0), (4.0, -26.0, 23.0)))  # inside the CT, 10+ mm off the seed
    _bad(logic, scene, "The seed lies outside the box 'box beside'", ct, seed, roi)


def test_box_mostly_outside_the_scan_is_refused(scene, logic):
    ct_img = oblique_ct()[0]
    ct = add_ct(scene, ct_img)
    seed_lps = (14.0, -16.0, 33.0)
    seed = add_seed(scene, lps_to_ras(seed_lps))
    # a box around the seed that reaches far past the scan's edge: most of it is air the scan never saw
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "huge box")
    ma.set_roi_from_box(roi, Box.from_center_size(seed_lps, (200.0, 200.0, 200.0)))
    _bad(logic, scene, r"% of the box 'huge box' lies outside the CT", ct, seed, roi)
