"""The demo phantom as Sample Data (issue 15): generated on first use (nothing downloaded), loaded into a real
slicer-core scene with its seed and box, reused from the cache afterwards; registration does nothing, and says so,
where the application's SampleData module is absent (as on slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.geometry import lps_to_ras
from TMBRBLib.phantom import make_demo_case
from TMBRBLib.slicer import mrml as ma
from TMBRBLib.slicer import sampledata


@pytest.fixture(scope="module")
def demo():
    return make_demo_case()


def test_the_phantom_loads_with_its_seed_and_box_and_is_generated_once(scene, tmp_path, demo, monkeypatch):
    nodes = sampledata.loadPhantom(scene, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(sampledata.SAMPLE_NAME in f for f in files), files  # no partial file left
    loaded = ma.volume_node_to_sitk(nodes["ct"])
    arr = sitk.GetArrayFromImage(loaded)
    assert np.array_equal(arr, sitk.GetArrayFromImage(demo.ct))
    assert np.allclose(loaded.GetOrigin(), demo.ct.GetOrigin(), atol=1e-3)
    assert np.allclose(loaded.GetDirection(), demo.ct.GetDirection(), atol=1e-6)
    seed = [0.0, 0.0, 0.0]
    nodes["seed"].GetNthControlPointPosition(0, seed)
    assert np.allclose(seed, lps_to_ras(demo.seed_lps), atol=1e-4)
    box = ma.box_from_roi(nodes["roi"])
    assert np.allclose(box.min, demo.box_lps[0], atol=1e-3) and np.allclose(box.max, demo.box_lps[1], atol=1e-3)
    # second use: read from the cache, not generated again
    from TMBRBLib import phantom

    monkeypatch.setattr(phantom, "make_demo_case", lambda: pytest.fail("the phantom was generated again"))
    again = sampledata.loadPhantom(scene, tmp_path)
    assert again["ct"].GetID() != nodes["ct"].GetID()
    assert np.array_equal(sitk.GetArrayFromImage(ma.volume_node_to_sitk(again["ct"])), arr)


def test_registration_without_the_sample_data_module_registers_nothing():
    import importlib.util

    import TMBRB

    assert importlib.util.find_spec("SampleData") is None  # slicer-core has no SampleData module
    assert sampledata.registerSampleData() is False
    assert TMBRB.registerSampleData() is False
