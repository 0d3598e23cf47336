"""A shown result is marked outdated once its inputs change (issue 11, 'no stale results'), on the scene logic."""

from __future__ import annotations

from conftest import add_ct, add_seed
from test_slicer_logic import oblique_ct

from TMBRBLib.geometry import Box, lps_to_ras
from TMBRBLib.slicer import mrml as ma

SEED_LPS = (14.0, -16.0, 33.0)


def test_the_result_is_current_until_an_input_changes(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras(SEED_LPS))
    result = logic.process(ct, seed, None, None, "1", numberOfShifts=0, device="cpu", showResult=False)
    table, roi = result.nodes["table"], result.nodes["roi"]  # the box was proposed: the shown ROI is its box

    def current(ecog="1", box=roi):
        return logic.isResultCurrent(table, ct, seed, box, None, ecog)

    assert current() and current(ecog=1)  # "1" from the panel and 1 from a script are the same ECOG
    assert not current(ecog="2") and not current(ecog="not given")

    seed.SetNthControlPointPosition(0, *lps_to_ras((15.0, -16.0, 33.0)))  # the seed moved by 1 mm
    assert not current()
    seed.SetNthControlPointPosition(0, *lps_to_ras(SEED_LPS))
    assert current()

    old = ma.box_from_roi(roi)
    ma.set_roi_from_box(roi, Box(old.min, tuple(v + 2.0 for v in old.max)))  # a handle dragged
    assert not current()
    ma.set_roi_from_box(roi, old)
    assert current()

    arr = ma.volume_array(ct).copy()
    arr[0, 0, 0] += 100  # the CT's voxels edited
    ma.set_volume_from_array(ct, arr, ma.ijk_to_ras(ct, world=False))
    assert not current()


def test_a_table_without_a_recorded_result_is_never_current(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras(SEED_LPS))
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "someone else's table")
    assert not logic.isResultCurrent(table, ct, seed) and not logic.isResultCurrent(None, ct, seed)


def test_the_panel_state_follows_the_parameter_node(scene, logic):
    """What the Widget greys its result on: resultState of the module's parameter node."""
    p = logic.getParameterNode(scene)
    assert logic.resultState(p) == "none"
    p.inputVolume = add_ct(scene, oblique_ct()[0])
    p.seedPoint = add_seed(scene, lps_to_ras(SEED_LPS))
    p.ecog = "1"
    logic.process(p.inputVolume, p.seedPoint, p.boxRoi, None, p.ecog, numberOfShifts=0, device="cpu",
                  showResult=False, parameterNode=p)
    assert p.boxRoi is not None and logic.resultState(p) == "current"
    p.ecog = "2"
    assert logic.resultState(p) == "outdated"
    p.ecog = "1"
    assert logic.resultState(p) == "current"
    p.seedPoint.AddControlPoint(lps_to_ras((16.0, -16.0, 33.0)))  # the seed placed again: the last point counts
    assert logic.resultState(p) == "outdated"
    ma.keep_last_seed_point(p.seedPoint)
    assert logic.resultState(p) == "outdated"
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumour")
    p.seedPoint.SetNthControlPointPosition(0, *lps_to_ras(SEED_LPS))
    assert logic.resultState(p) == "current"
    p.tumourSegmentation = seg
    assert logic.resultState(p) == "outdated"


def test_painting_the_given_tumour_segmentation_makes_the_result_outdated(scene, logic):
    """Segment Editor rewrites a segment's label map, not the segmentation's own modification time: the key must
    see it (the attention shares depend on that mask)."""
    import numpy as np
    import slicer  # the real slicer-core package, imported by this folder's conftest (a conftest import here would
    # find tests/viewer's conftest when the whole suite runs)

    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras(SEED_LPS))
    shape = ma.volume_array(ct).shape
    tumour = np.zeros(shape, np.uint8)
    tumour[shape[0] // 2 - 2:shape[0] // 2 + 2, 10:20, 10:20] = 1
    given = ma.regions_segmentation(scene, ct, tumour, np.zeros(shape, np.uint8), name="given", show3d=False)
    before = logic.inputsKey(ct, seed, None, given, "1")
    assert logic.inputsKey(ct, seed, None, given, "1") == before  # nothing changed: the same key

    sid = given.GetSegmentation().GetSegmentIdBySegmentName(ma.TUMOUR_SEGMENT_NAME)
    painted = tumour.copy()
    painted[shape[0] // 2, 20:25, 10:20] = 1  # a stroke of the paint brush
    image = ma._oriented_image(painted, ma.ijk_to_ras(ct, world=False))
    seg_logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert seg_logic.SetBinaryLabelmapToSegment(image, given, sid, seg_logic.MODE_REPLACE)
    assert logic.inputsKey(ct, seed, None, given, "1") != before
