"""Update attention (issue 13): the Tumour segment of a result edited in the scene -> shares, ring, table and
result.json again, without running the model; the stale-result state in between."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import add_ct, add_seed, slicer

from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.geometry import lps_to_ras
from TMBRBLib.io import array_to_image, write_image
from TMBRBLib.phantom import make_phantom
from TMBRBLib.regions import attention_shares, ring_from_tumour
from TMBRBLib.slicer import mrml as ma


def _edit_tumour(regions, ct, change):
    """Replace the Tumour segment's label map (as Segment Editor does) with change(its array)."""
    sid = regions.GetSegmentation().GetSegmentIdBySegmentName(ma.TUMOUR_SEGMENT_NAME)
    new = change(ma.segment_array(regions, ma.TUMOUR_SEGMENT_NAME, ct))
    image = ma._oriented_image(new.astype(np.uint8), ma.ijk_to_ras(ct, world=False))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, regions, sid, logic.MODE_REPLACE)
    return new


def _eroded(arr):
    img = sitk.BinaryErode(sitk.GetImageFromArray(arr.astype(np.uint8)), [2, 2, 2])
    return sitk.GetArrayFromImage(img)


def _no_model(monkeypatch):
    from TMBRBLib import pipeline
    from TMBRBLib.slicer import runner

    def boom(*a, **k):
        raise AssertionError("the model was run")

    monkeypatch.setattr(pipeline.Scorer, "run", boom)
    monkeypatch.setattr(pipeline, "score_case", boom)
    monkeypatch.setattr(runner.EngineWorker, "submit", boom)


def _expected(ct, cam_node, tumour, width):
    ring = sitk.GetArrayFromImage(ring_from_tumour(array_to_image(tumour.astype(np.uint8),
                                                                  ma.volume_node_to_sitk(ct)), width))
    return attention_shares(ma.volume_array(cam_node), tumour, ring), ring


@pytest.fixture()
def scored(scene, logic):
    """A phantom scored in the scene by the bundled demo model (its map is not zero), seed only."""
    logic.bundle = None
    case = make_phantom(0)
    p = logic.getParameterNode(scene)
    p.inputVolume = add_ct(scene, case.ct)
    p.seedPoint = add_seed(scene, lps_to_ras(case.seed_lps))
    logic.process(p.inputVolume, p.seedPoint, None, None, None, numberOfShifts=0, device="cpu", showResult=False,
                  parameterNode=p)
    return p


def test_update_attention_from_an_eroded_tumour_segment(scored, logic, monkeypatch):
    p = scored
    before = json.loads(p.resultTable.GetAttribute("TMBRB.result"))
    assert before["tumour_mask"]["source"] == "proposed" and logic.resultState(p) == "current"
    eroded = _edit_tumour(p.regionsSegmentation, p.inputVolume, _eroded)
    # the score still holds (it does not depend on the mask); the attention waits for Update attention
    assert logic.isResultCurrent(p.resultTable, p.inputVolume, p.seedPoint, p.boxRoi, None, None)
    assert logic.resultState(p) == "attention-outdated"

    _no_model(monkeypatch)
    updated = logic.updateAttentionOf(p)
    width = before["attention"]["ring_width_mm"]
    want, ring = _expected(p.inputVolume, p.camVolume, eroded, width)
    for k in ("tumour", "ring", "elsewhere"):
        assert updated.attention[k] == pytest.approx(want[k], abs=1e-9)
    assert updated.attention["tumour"] < before["attention"]["tumour"]
    assert updated.score == before["score"]
    assert updated.result["tumour_mask"]["source"] == "proposed_edited"
    assert json.loads(p.resultTable.GetAttribute("TMBRB.result"))["attention"] == updated.attention
    assert ma.table_rows(p.resultTable)["Tumour mask"] == "proposed from the seed, then edited"
    assert np.array_equal(ma.segment_array(p.regionsSegmentation, ma.RING_SEGMENT_NAME, p.inputVolume), ring)
    assert np.array_equal(ma.segment_array(p.regionsSegmentation, ma.TUMOUR_SEGMENT_NAME, p.inputVolume), eroded)
    assert logic.resultState(p) == "current"
    assert updated.outputDir is None  # an in-process result keeps no folder


def test_update_attention_of_a_result_loaded_from_its_folder_updates_result_json(scene, logic, tmp_path,
                                                                                  monkeypatch):
    from TMBRBLib.pipeline import score_to_folder

    case = make_phantom(0)
    write_image(case.ct, tmp_path / "ct.nrrd")
    score_to_folder(case.ct, case.seed_lps, tmp_path / "out", ct_path=tmp_path / "ct.nrrd", pictures=False,
                    n_shifts=0, device="cpu")
    loaded = logic.loadCaseResult(tmp_path / "out")
    n = loaded.nodes
    eroded = _edit_tumour(n["regions"], n["volume"], _eroded)
    _no_model(monkeypatch)
    updated = logic.updateAttention(n["volume"], n["cam"], n["regions"], n["table"], showResult=False)
    on_disk = json.loads((tmp_path / "out" / "result.json").read_text())
    assert on_disk["tumour_mask"]["source"] == "proposed_edited" and on_disk["attention"] == updated.attention
    assert updated.outputDir == (tmp_path / "out").resolve()
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "tumour.nrrd")))
    assert np.array_equal(tumour, eroded)


def test_an_empty_or_missing_tumour_segment_is_refused_and_nothing_changes(scored, logic):
    p = scored
    text = p.resultTable.GetAttribute("TMBRB.result")
    _edit_tumour(p.regionsSegmentation, p.inputVolume, np.zeros_like)
    with pytest.raises(TMBRBInputError, match="empty"):
        logic.updateAttentionOf(p)
    seg = p.regionsSegmentation.GetSegmentation()
    seg.RemoveSegment(seg.GetSegmentIdBySegmentName(ma.TUMOUR_SEGMENT_NAME))
    with pytest.raises(TMBRBInputError, match="no 'Tumour' segment"):
        logic.updateAttentionOf(p)
    assert p.resultTable.GetAttribute("TMBRB.result") == text
