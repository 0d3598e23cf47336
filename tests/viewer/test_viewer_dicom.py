"""The viewer's Save DICOM (issue 15): a CT opened from its DICOM series folder on the server, scored, and saved as
a DICOM Segmentation, parametric map and structured report in the case folder's dicom/, referencing the series; a
save before Apply, and one for a CT that is not a DICOM series the viewer keeps, say why nothing was written. Also
`--seed-ras`, which places the seed at start. Driven over the websocket as the page would, no browser needed."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from conftest import ARTIFACTS, ViewerServer, engine_env
from test_viewer_demo import _apply_trigger, _button_trigger
from test_viewer_security import run_session


@pytest.fixture(scope="module")
def dicom_data(tmp_path_factory):
    """The demo phantom's CT cut to 80 x 80 x 24 voxels around its tumour, as a DICOM series (a file per slice) and as
    a NRRD file, in one data folder; the seed as RAS text."""
    from TMBRBLib.dicom_out import write_ct_series
    from TMBRBLib.geometry import lps_to_ras
    from TMBRBLib.phantom import make_phantom

    if importlib.util.find_spec("highdicom") is None:
        from _prereq import require
        require("dev-package", "Save DICOM needs highdicom (pip install 'tmbrb[dicom]')")
    case = make_phantom(0)
    idx = case.ct.TransformPhysicalPointToIndex(case.seed_lps)
    size = [80, 80, 24]
    start = [max(0, min(int(i) - s // 2, n - s)) for i, s, n in zip(idx, size, case.ct.GetSize())]
    ct = sitk.RegionOfInterest(case.ct, size, start)
    data = tmp_path_factory.mktemp("viewer-dicom-data")
    series = write_ct_series(ct, data / "series")
    sitk.WriteImage(ct, str(data / "ct.nrrd"))
    return data, series, ",".join(f"{v:.3f}" for v in lps_to_ras(case.seed_lps))


def _server(viewer_bundle, tmp_path_factory, dicom_data, ct_name):
    from conftest import require_browser_stack

    require_browser_stack()
    data, _series, seed = dicom_data
    work = tmp_path_factory.mktemp("viewer-dicom")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = ViewerServer(["--ct", str(data / ct_name), f"--seed-ras={seed}", "--data-dir", str(data), "--device",
                           "cpu", "--shifts", "0", "--out", str(work / "out")], engine_env(viewer_bundle), work,
                          ARTIFACTS / f"server-dicom-{ct_name}.log", timeout_s=240)
    server.work = work
    return server


@pytest.fixture(scope="module")
def dicom_server(viewer_bundle, tmp_path_factory, dicom_data):
    server = _server(viewer_bundle, tmp_path_factory, dicom_data, "series")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nrrd_server(viewer_bundle, tmp_path_factory, dicom_data):
    server = _server(viewer_bundle, tmp_path_factory, dicom_data, "ct.nrrd")
    yield server
    server.stop()


async def _wait(client, done, seconds):
    deadline = time.monotonic() + seconds
    st = await client.state()
    while time.monotonic() < deadline and not done(st):
        await asyncio.sleep(0.5)
        st = await client.state()
    return st


async def _apply(client):
    st = await client.state()
    await client.trigger(_apply_trigger(st), "1")
    await _wait(client, lambda s: s.get("running"), 10)
    return await _wait(client, lambda s: s.get("r_score") and not s.get("running"), 300)


def test_save_dicom_writes_the_three_objects_for_a_series(dicom_server, dicom_data):
    async def steps(client, hello):
        seen = {}
        st = await client.state()
        seen["seed"] = st.get("seed_text")
        save = _button_trigger(st, "tmbrb-save-dicom")
        await client.trigger(save)
        seen["early"] = (await client.state())["message"]
        st = await _apply(client)
        seen["score"] = st.get("r_score")
        await client.trigger(save)
        seen["saved"] = (await _wait(client, lambda s: "Saved the DICOM" in (s.get("saved_text") or ""), 120)
                         )["saved_text"]
        return seen

    seen = run_session(dicom_server, steps)
    assert "seed RAS" in (seen["seed"] or ""), seen["seed"]  # --seed-ras placed it
    assert "no result to save yet" in seen["early"], seen["early"]
    assert seen["score"], seen
    assert "Saved the DICOM" in seen["saved"], seen["saved"]
    folder = Path(seen["saved"].rsplit(" in ", 1)[1].strip())
    assert sorted(p.name for p in folder.iterdir()) == ["cam_pm.dcm", "report_sr.dcm", "seg.dcm"]
    assert (folder.parent / "result.json").is_file() and (folder.parent / "cam.nrrd").is_file()
    import pydicom

    seg = pydicom.dcmread(folder / "seg.dcm")
    series = dicom_data[1]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID


def test_save_dicom_of_a_ct_that_is_not_a_series_says_why_and_writes_nothing(nrrd_server):
    async def steps(client, hello):
        st = await _apply(client)
        await client.trigger(_button_trigger(st, "tmbrb-save-dicom"))
        return st, await client.state()

    scored, st = run_session(nrrd_server, steps)
    assert scored.get("r_score"), scored.get("message")
    assert "not opened from a DICOM series folder" in st["message"], st["message"]
    assert not (nrrd_server.work / "out").exists() or not list((nrrd_server.work / "out").rglob("*.dcm"))
