"""The warm engine (TMBRBLib.worker behind runner.EngineWorker) as the Logic drives it on real MRML scenes: one
process for many Apply, the same score as the one-process-per-case path, cancel, a killed or timed-out worker,
refused input, and the CT file written once per volume state. The engine runs for real with the placeholder bundle."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import add_ct, add_seed, node_ids
from test_job_watcher import Recorder, drive
from test_slicer_logic import oblique_ct

import TMBRB
from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.geometry import lps_to_ras
from TMBRBLib.outputs import path_record, path_sha256
from TMBRBLib.slicer import mrml as ma
from TMBRBLib.slicer.logic import JobWatcher
from TMBRBLib.slicer.runner import EXIT_CANCELLED, EngineJob, EngineWorker, JobInputs

SEED_LPS = (14.0, -16.0, 33.0)


@pytest.fixture(scope="module")
def worker():
    """One worker for this module's tests (starting one costs the import of torch): the tests check its pid."""
    w = EngineWorker(timeout_s=600.0)
    yield w
    w.shutdown()
    assert not w.alive


@pytest.fixture()
def wlogic(scene, placeholder_bundle, worker):
    lg = TMBRB.TMBRBLogic(scene)
    lg.bundle = placeholder_bundle
    lg.useEngineWorker(worker)
    yield lg
    lg.shutdown()


def case(scene, ct=None):
    return add_ct(scene, ct if ct is not None else oblique_ct()[0]), add_seed(scene, lps_to_ras(SEED_LPS))


def apply(logic, ct, seed, timeout=300.0, **options):
    """What Apply does: start the case in the background and let a JobWatcher drive it to the end."""
    rec = Recorder()
    options = dict({"device": "cpu", "numberOfShifts": 1}, **options)
    watcher = JobWatcher(logic, logic.startBackground(ct, seed, None, None, "1", **options), showResult=False,
                         **rec.callbacks())
    drive(watcher, timeout=timeout)
    return rec, watcher.job


def test_two_applies_reuse_one_worker_and_give_the_cold_score(scene, wlogic, worker):
    ct, seed = case(scene)
    first, job1 = apply(wlogic, ct, seed)
    pid = worker.pid
    second, job2 = apply(wlogic, ct, seed)
    assert first.errors == [] and second.errors == [] and len(first.results) == len(second.results) == 1
    assert worker.alive and worker.pid == pid, "the second Apply must reuse the worker process"
    assert job1.process.proc is job2.process.proc
    cold, job3 = apply(wlogic, ct, seed, useWorker=False)
    assert cold.errors == [] and type(job3.process).__name__ == "EngineProcess"
    warm1, warm2, cold1 = (r.results[0].result for r in (first, second, cold))
    assert warm1["score"] == warm2["score"] == cold1["score"]
    assert warm1["tta"] == cold1["tta"] and warm1["attention"] == cold1["attention"]
    assert float(ma.table_rows(second.results[0].nodes["table"])["TMBRB score"]) == pytest.approx(warm2["score"],
                                                                                                  abs=1e-4)


def test_cancel_mid_case_then_a_good_case_on_the_same_worker(scene, wlogic, worker, tmp_path):
    ct, seed = case(scene)
    apply(wlogic, ct, seed)  # the worker is warm
    pid = worker.pid
    before = node_ids(scene)
    rec = Recorder()
    job = wlogic.startBackground(ct, seed, device="cpu", numberOfShifts=8, workDir=tmp_path / "cancelled")
    watcher = JobWatcher(wlogic, job, **rec.callbacks())
    deadline = time.time() + 120
    while not any(m.startswith("model") for _, m in rec.progress):  # the worker is inside the case
        assert watcher.step() and time.time() < deadline, "the case never reached the model"
        time.sleep(0.01)
    job.process.cancel(grace_s=120)  # generous: a loaded machine must not turn this into a kill
    watcher.cancel()
    assert rec.cancelled == 1 and rec.results == [] and node_ids(scene) == before
    assert job.process.returncode == EXIT_CANCELLED, "the worker itself answered 'cancelled'"
    assert not (tmp_path / "cancelled" / "out" / "result.json").exists()
    assert worker.alive and worker.pid == pid
    good, _ = apply(wlogic, ct, seed)
    assert good.errors == [] and len(good.results) == 1 and worker.pid == pid


def test_a_killed_worker_fails_its_case_and_is_restarted_with_a_message(scene, wlogic, worker):
    ct, seed = case(scene)
    apply(wlogic, ct, seed)
    pid, starts = worker.pid, worker.starts
    rec = Recorder()
    watcher = JobWatcher(wlogic, wlogic.startBackground(ct, seed, device="cpu", numberOfShifts=8),
                         **rec.callbacks())
    os.kill(pid, signal.SIGKILL)
    drive(watcher)
    assert len(rec.errors) == 1 and rec.results == []
    assert "engine worker ended unexpectedly" in str(rec.errors[0]) and "next Apply" in str(rec.errors[0])
    again, job = apply(wlogic, ct, seed)
    assert again.errors == [] and len(again.results) == 1
    assert worker.starts == starts + 1 and worker.pid != pid and worker.alive
    restart = [m for _, m in again.progress if "starting it again" in m]
    assert restart and "ended unexpectedly" in restart[0], again.progress[:3]


def test_a_case_past_its_timeout_fails_clearly_and_the_worker_is_replaced(scene, wlogic, worker):
    ct, seed = case(scene)
    apply(wlogic, ct, seed)
    pid = worker.pid
    wlogic.caseTimeoutS = 0.001
    timed_out, _ = apply(wlogic, ct, seed)
    assert len(timed_out.errors) == 1 and timed_out.results == []
    message = str(timed_out.errors[0])
    assert "did not finish within 0.001 s" in message and "starts again on the next Apply" in message
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker was killed (and reaped), not left running the case
    wlogic.caseTimeoutS = 600.0
    again, _ = apply(wlogic, ct, seed)
    assert again.errors == [] and len(again.results) == 1 and worker.pid != pid


def test_bad_input_is_an_input_error_and_the_worker_stays(scene, wlogic, worker, tmp_path):
    ct, seed = case(scene)
    apply(wlogic, ct, seed)
    pid = worker.pid
    ct_file = tmp_path / "ct.nrrd"
    sitk.WriteImage(oblique_ct()[0], str(ct_file))
    run = worker.submit({"ct": str(ct_file), "seed_lps": [900.0, 900.0, 900.0], "out": str(tmp_path / "out"),
                         "device": "cpu", "shifts": 0, "model": str(wlogic.bundle.path)})
    rec = Recorder()
    drive(JobWatcher(wlogic, EngineJob(run, tmp_path, tmp_path / "out", JobInputs(volume=ct, seed=seed,
                                                                                    device="cpu")),
                     **rec.callbacks()))
    assert run.outcome() == "input-error" and len(rec.errors) == 1
    assert isinstance(rec.errors[0], TMBRBInputError) and "lies outside the CT" in str(rec.errors[0])
    missing = worker.submit({"ct": str(tmp_path / "no-such-ct.nrrd"), "seed_lps": list(SEED_LPS),
                             "out": str(tmp_path / "out2")})
    missing.wait(timeout=120)
    assert missing.outcome() == "input-error" and "does not exist" in missing.failure_message()
    assert worker.alive and worker.pid == pid
    good, _ = apply(wlogic, ct, seed)
    assert good.errors == [] and len(good.results) == 1 and worker.pid == pid


def test_the_ct_file_is_written_once_per_volume_state(scene, wlogic, worker, tmp_path):
    ct, seed = case(scene)
    apply(wlogic, ct, seed, workDir=tmp_path / "a")
    path = wlogic._ctFiles[ct.GetID()][1]
    written = path.stat().st_mtime_ns
    apply(wlogic, ct, seed, workDir=tmp_path / "b")
    assert wlogic.ctFilesWritten == 1 and path.stat().st_mtime_ns == written
    assert wlogic.ctConversions == 1, "the volume is converted and checked once, not on every Apply"
    # change the voxels in place, as slicer.util.arrayFromVolumeModified does (the scalars are marked modified)
    scalars = ct.GetImageData().GetPointData().GetScalars()
    values = ma._numpy_support().vtk_to_numpy(scalars)
    values += 200
    scalars.Modified()
    rec, _ = apply(wlogic, ct, seed, workDir=tmp_path / "c")
    assert rec.errors == [] and wlogic.ctFilesWritten == 2 and not path.exists() and wlogic.ctConversions == 2
    crop_before = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / "out" / "crop.nrrd")))
    crop_after = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c" / "out" / "crop.nrrd")))
    inside = crop_before > -990  # the crop is padded with air outside the scan
    assert inside.any()
    assert float(np.median(crop_after[inside] - crop_before[inside])) == pytest.approx(200, abs=5), \
        "the worker scored the changed volume"
    inputs = json.loads((tmp_path / "c" / "out" / "result.json").read_text())["inputs"]
    assert inputs["ct_path"] == path_record(wlogic._ctFiles[ct.GetID()][1], tmp_path / "c" / "out")  # by path hash
    wlogic.shutdown()
    assert not wlogic._ctFiles and not path.parent.exists() and worker.alive  # a shared worker is left running
    assert np.isfinite(rec.results[0].score)


def test_a_temporary_run_hands_back_regions_that_give_the_same_nodes(scene, wlogic, worker, tmp_path, monkeypatch):
    """An Apply into a temporary folder gets the volumes from the worker as regions of the CT's grid (no full-grid
    files written and read back); one into a kept folder gets the full outputs there and the regions beside them
    (read, then removed). The map, tumour and ring placed on the (oblique) CT's grid are the same either way."""
    read = []
    real_read = sitk.ReadImage
    monkeypatch.setattr(sitk, "ReadImage", lambda path, *a, **k: read.append(os.path.basename(str(path)))
                        or real_read(path, *a, **k))
    ct, seed = case(scene)
    seen = {}

    def onResult(result):  # the job's folder still exists here; it is removed right after
        seen["files"] = sorted(p.name for p in result.outputDir.iterdir())
        seen["result"] = result

    temporary = wlogic.startBackground(ct, seed, None, None, "1", device="cpu", numberOfShifts=1)
    drive(JobWatcher(wlogic, temporary, showResult=False, onResult=onResult))
    assert "cam_region.nrrd" in seen["files"] and "cam.nrrd" not in seen["files"], seen["files"]
    assert not temporary.workDir.exists()
    kept, _ = apply(wlogic, ct, seed, workDir=tmp_path / "kept")
    fast, full = seen["result"], kept.results[0]
    assert (full.outputDir / "cam.nrrd").is_file() and fast.score == full.score
    assert "cam.nrrd" not in read and read.count("cam_region.nrrd") == 2, read  # the scene never reads a full grid
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["out"]  # the regions' folder is gone
    assert not any("region" in p.name for p in full.outputDir.iterdir())  # the kept outputs are tmbrb score's
    assert np.array_equal(ma.volume_array(fast.nodes["cam"]), ma.volume_array(full.nodes["cam"]))
    assert np.allclose(ma.ijk_to_ras(fast.nodes["cam"]), ma.ijk_to_ras(ct))
    assert ma.volume_array(fast.nodes["cam"]).max() == pytest.approx(1.0)
    for name in (ma.TUMOUR_SEGMENT_NAME, ma.RING_SEGMENT_NAME):
        a, b = (ma.segment_array(r.nodes["regions"], name, ct) for r in (fast, full))
        assert a.shape == ma.volume_array(ct).shape and a.any() and np.array_equal(a, b), name


def _absolute_strings(value):
    """The strings in a result dict that are absolute paths (or hold one)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _absolute_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _absolute_strings(v)]
    return [value] if isinstance(value, str) and re.search(r"(^|['\"\s])(/|[A-Za-z]:\\)\w", value) else []


def test_the_scene_result_records_no_absolute_path(scene, wlogic, worker, tmp_path):
    """The result table's ``TMBRB.result`` (saved with the scene) holds no absolute path: the worker's CT file in
    the temporary volumes' folder is recorded by name and path sha256, whether the volumes come as regions
    (temporary folder) or as the full outputs of a kept folder."""
    ct, seed = case(scene)
    temporary, _ = apply(wlogic, ct, seed)
    kept, _ = apply(wlogic, ct, seed, workDir=tmp_path / "kept")
    for rec in (temporary, kept):
        assert rec.errors == [] and len(rec.results) == 1
        text = rec.results[0].nodes["table"].GetAttribute("TMBRB.result")
        stored = json.loads(text)
        assert stored["inputs"]["ct_path"] == {"name": wlogic._ctFiles[ct.GetID()][1].name,
                                               "path_sha256": path_sha256(wlogic._ctFiles[ct.GetID()][1])}
        assert not _absolute_strings(stored) and "TMBRB-volumes" not in text and str(tmp_path) not in text


def test_regions_left_by_an_earlier_run_are_not_shown_for_the_next_one(scene, wlogic, worker, tmp_path):
    """A kept-folder worker run writes its regions beside the outputs; when the scene never reads them (the run is
    given up after the worker wrote them), the next Apply into the same folder, here a new engine process that
    writes full outputs only, shows its own map, tumour and ring, not the earlier case's."""
    work = tmp_path / "kept"
    ct1, seed1 = case(scene)
    first = wlogic.startBackground(ct1, seed1, None, None, "1", device="cpu", numberOfShifts=1, workDir=work)
    deadline = time.time() + 300
    while first.poll() == "running":
        assert time.time() < deadline, "the worker run did not finish"
        time.sleep(0.05)
    assert first.state == "done" and (work / "scene-regions" / "regions.json").is_file()
    first.cleanup()  # given up: its regions were never read into the scene
    assert (work / "scene-regions").is_dir()
    ct2 = add_ct(scene, oblique_ct(tumour_lps=(8.0, -22.0, 28.0))[0])  # same grid, the tumour elsewhere
    seed2 = add_seed(scene, lps_to_ras((8.0, -22.0, 28.0)))
    rec, job = apply(wlogic, ct2, seed2, workDir=work, useWorker=False)
    assert rec.errors == [] and type(job.process).__name__ == "EngineProcess"
    shown = rec.results[0].nodes
    own = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out" / "cam.nrrd")))
    assert np.array_equal(ma.volume_array(shown["cam"]), own), "the map shown is not this run's"
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out" / "tumour.nrrd")))
    assert np.array_equal(ma.segment_array(shown["regions"], ma.TUMOUR_SEGMENT_NAME, ct2) > 0, tumour > 0)
    assert not (work / "scene-regions").exists()


def test_saving_a_temporary_run_asks_the_worker_for_the_full_outputs(scene, wlogic, worker, tmp_path):
    """A temporary (regions-only) run writes no full-grid files; saveWorkerResult has the worker write tmbrb score's
    files from the result it holds: the same map the scene shows, the same score. A run the worker no longer holds
    (another case scored since) and a run in a process of its own are refused with a clear message."""
    ct, seed = case(scene)
    first, job1 = apply(wlogic, ct, seed)
    assert not job1.workDir.exists()  # nothing of the run is left on disk
    path = wlogic.saveWorkerResult(job1, tmp_path / "saved", pictures=False)
    saved = json.loads(path.read_text())
    assert path == (tmp_path / "saved" / "result.json").resolve() and saved["score"] == first.results[0].score
    cam = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "saved" / "cam.nrrd")))
    assert np.array_equal(cam, ma.volume_array(first.results[0].nodes["cam"]))
    assert not list((tmp_path / "saved").glob("*.png"))  # pictures=False
    apply(wlogic, ct, seed)
    with pytest.raises(TMBRBInputError, match="no longer holds"):
        wlogic.saveWorkerResult(job1, tmp_path / "again")
    _, cold = apply(wlogic, ct, seed, useWorker=False, workDir=tmp_path / "cold")
    with pytest.raises(TMBRBInputError, match="Press Apply again"):
        wlogic.saveWorkerResult(cold, tmp_path / "cold-saved")
    assert not (tmp_path / "again").exists() and not (tmp_path / "cold-saved").exists()


def test_the_engine_limits_openmp_spinning_unless_the_user_chose(scene, wlogic, worker, monkeypatch):
    # libgomp's default spinning made the model 6x slower beside busy programs: the worker and the process per case
    # get GOMP_SPINCOUNT (runner.OPENMP_SPIN_COUNT), and a spin count or wait policy set by the user is kept
    import psutil

    from TMBRBLib.slicer.runner import OPENMP_SPIN_COUNT, engine_environment

    ct, seed = case(scene)
    rec, _ = apply(wlogic, ct, seed, numberOfShifts=0)
    worker_env = psutil.Process(worker.pid).environ()
    assert rec.errors == [] and worker_env.get("GOMP_SPINCOUNT") == str(OPENMP_SPIN_COUNT) == "100000"
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert engine_environment()["GOMP_SPINCOUNT"] == "100000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    assert engine_environment()["GOMP_SPINCOUNT"] == "5"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert "GOMP_SPINCOUNT" not in engine_environment()
