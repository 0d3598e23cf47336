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


def test_save_writes_the_full_outputs_of_the_last_case_scored_as_regions(tmp_path, placeholder_bundle):
    """``save`` after a ``volumes: regions`` case writes what a ``volumes: full`` case writes (same files, same
    voxels, same result.json apart from its timings); a save of another request, or into the CT's own folder, is
    refused with a clear message and writes nothing."""
    import numpy as np
    import SimpleITK as sitk

    from TMBRBLib.phantom import make_phantom

    case = make_phantom(2)
    (tmp_path / "in").mkdir()
    ct = tmp_path / "in" / "cam.nrrd"  # a CT that the map of a save into its folder would replace
    sitk.WriteImage(case.ct, str(ct))
    common = {"ct": str(ct), "seed_lps": list(case.seed_lps), "shifts": 1, "device": "cpu",
              "model": str(placeholder_bundle.path)}
    answers = _serve([{"op": "save", "id": "early", "of": "r", "out": str(tmp_path / "early")},
                      dict(common, id="full", out=str(tmp_path / "full")),
                      dict(common, id="r", out=str(tmp_path / "regions"), volumes="regions"),
                      {"op": "save", "id": "s", "of": "r", "out": str(tmp_path / "saved"), "pictures": False},
                      {"op": "save", "id": "old", "of": "full", "out": str(tmp_path / "old")},
                      {"op": "save", "id": "onto-ct", "of": "r", "out": str(tmp_path / "in"), "pictures": False}])
    assert answers["early"]["kind"] == "input" and "Press Apply again" in answers["early"]["error"]
    assert answers["old"]["kind"] == "input" and "no longer holds" in answers["old"]["error"]
    assert answers["onto-ct"]["kind"] == "input" and "cam.nrrd" in answers["onto-ct"]["error"], answers["onto-ct"]
    assert not (tmp_path / "early").exists() and not (tmp_path / "old").exists()
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["cam.nrrd"]
    assert answers["s"].get("done") and answers["s"]["result"].endswith("result.json"), answers["s"]
    saved, full = tmp_path / "saved", tmp_path / "full"
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in full.iterdir())
    for name in ("cam.nrrd", "tumour.nrrd", "ring.nrrd", "crop.nrrd"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / name))) for f in (saved, full))
        assert np.array_equal(a, b), name
    got, want = (json.loads((f / "result.json").read_text()) for f in (saved, full))
    for d in (got, want):
        d.pop("timings_s", None)
    assert got == want
