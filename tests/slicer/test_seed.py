"""The seed is the last placed point (each click in single-place mode adds one), and the list keeps one point."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import add_ct, add_seed
from test_slicer_logic import oblique_ct

from TMBRBLib.geometry import lps_to_ras
from TMBRBLib.slicer import mrml as ma

FIRST_LPS, SECOND_LPS = (14.0, -16.0, 33.0), (18.0, -12.0, 36.0)


def two_point_seed(scene):
    seed = add_seed(scene, lps_to_ras(FIRST_LPS))  # the first click
    seed.AddControlPoint([float(v) for v in lps_to_ras(SECOND_LPS)])  # the seed placed again
    return seed


def test_the_last_placed_point_is_the_seed(scene):
    seed = two_point_seed(scene)
    assert np.allclose(ma.seed_lps(seed), SECOND_LPS)
    seed.UnsetNthControlPointPosition(1)  # being placed again: not a seed yet
    assert np.allclose(ma.seed_lps(seed), FIRST_LPS)


def test_the_logic_proposes_and_scores_at_the_second_point(scene, logic):
    ct = add_ct(scene, oblique_ct()[0])
    seed = two_point_seed(scene)
    roi, _w = logic.proposeBoxWithWarnings(ct, seed)
    box = ma.box_from_roi(roi)
    assert np.all(np.asarray(box.min) <= SECOND_LPS) and np.all(np.asarray(SECOND_LPS) <= np.asarray(box.max))
    result = logic.process(ct, seed, None, None, "1", numberOfShifts=0, device="cpu", showResult=False)
    assert np.allclose(result.result["seed"]["lps"], SECOND_LPS, atol=1e-3)


def test_keeping_one_point_keeps_the_last_one(scene):
    seed = two_point_seed(scene)
    seed.AddControlPoint([0.0, 0.0, 0.0])
    seed.UnsetNthControlPointPosition(2)  # a point still being placed
    assert ma.keep_last_seed_point(seed)
    assert seed.GetNumberOfControlPoints() == 2 and np.allclose(ma.seed_lps(seed), SECOND_LPS)
    assert seed.GetNthControlPointPositionStatus(1) == seed.PositionUndefined
    assert not ma.keep_last_seed_point(seed) and not ma.keep_last_seed_point(None)


@pytest.mark.parametrize("points", [0, 1])
def test_nothing_to_remove(scene, points):
    seed = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seed")
    for _ in range(points):
        seed.AddControlPoint([1.0, 2.0, 3.0])
    assert not ma.keep_last_seed_point(seed) and seed.GetNumberOfControlPoints() == points
