"""The engine worker's protocol (TMBRBLib.worker) without a process: malformed lines, refused requests, a request
cancelled before it starts, and shutdown. (The worker process behind the Slicer Logic: tests/slicer/test_worker.py.)"""

from __future__ import annotations

import io
import json

from TMBRBLib.worker import Worker


def test_requests_are_answered_by_id_and_bad_ones_do_not_stop_the_worker(tmp_path):
    def score(rid, **fields):
        return json.dumps(dict({"id": rid, "ct": str(tmp_path / "no-such-ct.nrrd"), "seed_lps": [0, 0, 0],
                                "out": str(tmp_path / rid)}, **fields))

    lines = [score("a"), "this is not JSON", score("b"), json.dumps({"op": "cancel", "id": "b"}),
             json.dumps({"id": "c", "seed_lps": [0, 0, 0]}), score("e", ecog=7), json.dumps({"op": "shutdown"}),
             score("d")]
    out = io.StringIO()
    worker = Worker(io.StringIO("\n".join(lines) + "\n"), out)
    worker._read()  # what the reader thread does, here before the cases are served: b is cancelled before it starts
    assert worker.serve() == 0
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    by_id = {}
    for a in answers:
        by_id.setdefault(a.get("id"), []).append(a)
    assert "could not read the request line" in by_id[None][0]["error"]  # the malformed line
    assert any(a.get("ready") for a in by_id[None])
    assert by_id["a"][-1]["kind"] == "input" and "does not exist" in by_id["a"][-1]["error"]
    assert by_id["b"] == [{"id": "b", "cancelled": True}]  # answered at once, never scored
    assert "lacks ct, out" in by_id["c"][-1]["error"] and by_id["c"][-1]["kind"] == "input"
    assert by_id["e"][-1]["kind"] == "input" and "ECOG" in by_id["e"][-1]["error"]
    assert "d" not in by_id  # after shutdown nothing is read
    assert list(tmp_path.iterdir()) == []  # nothing written for refused or cancelled requests


def _serve(lines):
    out = io.StringIO()
    worker = Worker(io.StringIO("\n".join(json.dumps(x) for x in lines) + "\n"), out)
    worker._read()
    assert worker.serve() == 0
    return {a.get("id"): a for a in map(json.loads, out.getvalue().splitlines())}


def test_regions_answer_holds_the_full_volumes_as_regions_of_the_ct_grid(tmp_path, placeholder_bundle):
    """A front end that asks for ``volumes: regions`` gets the map, tumour and ring as the region of the CT's grid
    they live in (no full-grid files), and they are the full-grid outputs' voxels; the score is the same."""
    import numpy as np
    import SimpleITK as sitk

    from TMBRBLib.phantom import make_phantom
    from TMBRBLib.volumes import Geometry, RegionVolume
    from TMBRBLib.worker import REGION_FILES

    case = make_phantom(2)
    sitk.WriteImage(case.ct, str(tmp_path / "ct.nrrd"))
    common = {"ct": str(tmp_path / "ct.nrrd"), "seed_lps": list(case.seed_lps), "shifts": 1, "device": "cpu",
              "model": str(placeholder_bundle.path)}
    answers = _serve([dict(common, id="full", out=str(tmp_path / "full")),
                      dict(common, id="regions", out=str(tmp_path / "regions"), volumes="regions"),
                      dict(common, id="bad", out=str(tmp_path / "bad"), volumes="some")])
    assert answers["full"].get("done") and answers["regions"].get("done"), answers
    assert answers["bad"]["kind"] == "input" and "volumes" in answers["bad"]["error"]
    assert set(answers["regions"]["timings_s"]) == {"read_ct", "score", "write"}
    full, regions = json.loads((tmp_path / "full" / "result.json").read_text()), \
        json.loads((tmp_path / "regions" / "result.json").read_text())
    assert regions["score"] == full["score"] and regions["attention"] == full["attention"]
    names = sorted(p.name for p in (tmp_path / "regions").iterdir())
    assert names == sorted(list(REGION_FILES.values()) + ["result.json"])
    grid = Geometry.of(case.ct)
    lo = tuple(regions["region_index_lo"])
    for kind, full_name in (("cam", "cam.nrrd"), ("tumour", "tumour.nrrd"), ("ring", "ring.nrrd")):
        region = sitk.ReadImage(str(tmp_path / "regions" / regions["files"][kind]))
        assert region.GetSize() != case.ct.GetSize()  # a region, not the full grid
        assert np.allclose(region.GetOrigin(), case.ct.TransformIndexToPhysicalPoint(lo), atol=1e-6)
        pasted = RegionVolume(sitk.GetArrayFromImage(region), lo, grid).full_array()
        want = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "full" / full_name)))
        assert np.array_equal(pasted, want), kind
