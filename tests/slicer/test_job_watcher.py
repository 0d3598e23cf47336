"""The one polling loop for background runs (JobWatcher), as the Slicer panel's QTimer and the viewer drive it."""

from __future__ import annotations

import sys
import time

import pytest

from conftest import add_ct, add_seed, node_ids
from test_slicer_logic import oblique_ct

from TMBRBLib.errors import TMBRBError
from TMBRBLib.geometry import lps_to_ras
from TMBRBLib.slicer import mrml as ma
from TMBRBLib.slicer.logic import JobWatcher, SceneResult
from TMBRBLib.slicer.runner import EngineJob, EngineProcess, JobInputs

SEED_LPS = (14.0, -16.0, 33.0)


class Recorder:
    def __init__(self):
        self.progress, self.results, self.errors, self.cancelled = [], [], [], 0

    def callbacks(self):
        return dict(onProgress=lambda f, m: self.progress.append((f, m)), onResult=self.results.append,
                    onError=self.errors.append, onCancelled=self._cancelled)

    def _cancelled(self):
        self.cancelled += 1


def drive(watcher, timeout=240.0):
    """What the timer does: step until the watcher says there is nothing more to watch."""
    deadline = time.time() + timeout
    steps = 0
    while watcher.step():
        steps += 1
        assert time.time() < deadline, "the background run did not finish"
        time.sleep(0.05)
    assert not watcher.step(), "a finished watcher must stay finished"
    return steps


def case(scene):
    return add_ct(scene, oblique_ct()[0]), add_seed(scene, lps_to_ras(SEED_LPS))


def test_a_run_reports_progress_then_its_result_once(scene, logic, tmp_path):
    ct, seed = case(scene)
    rec = Recorder()
    job = logic.startBackground(ct, seed, None, None, "2", numberOfShifts=1, device="cpu")
    work = job.workDir
    watcher = JobWatcher(logic, job, showResult=False, **rec.callbacks())
    assert drive(watcher) > 0
    assert rec.errors == [] and rec.cancelled == 0 and len(rec.results) == 1
    result = rec.results[0]
    assert isinstance(result, SceneResult) and result.risk["ecog"] == 2 and 0 <= result.score <= 1
    assert float(ma.table_rows(result.nodes["table"])["TMBRB score"]) == pytest.approx(result.score, abs=1e-4)
    fractions = [f for f, _ in rec.progress]
    assert fractions == sorted(fractions)
    assert job.state == "done" and not work.exists()  # the job's own temporary folder is removed
    with pytest.raises(TMBRBError, match="cam.nrrd is no longer in"):
        result.cam


def test_with_on_scores_the_score_comes_one_step_before_the_map_is_placed(scene, logic, tmp_path):
    # the browser viewer shows the score and risk groups while its views still render the map: onScores gets
    # result.json's content at the step that sees the run done, and the nodes come into the scene at the next step
    ct, seed = case(scene)
    rec, seen = Recorder(), []

    def on_scores(result):
        seen.append((result, len(rec.results), node_ids(scene)))

    before = node_ids(scene)
    job = logic.startBackground(ct, seed, None, None, "1", numberOfShifts=0, device="cpu")
    watcher = JobWatcher(logic, job, showResult=False, onScores=on_scores, **rec.callbacks())
    drive(watcher)
    assert len(seen) == 1 and len(rec.results) == 1 and rec.errors == []
    scores, results_then, nodes_then = seen[0]
    assert results_then == 0 and nodes_then == before, "the map was placed before the score was shown"
    assert scores["score"] == pytest.approx(rec.results[0].score, abs=1e-9)
    assert scores["risk"] == rec.results[0].result["risk"] and scores["warnings"] == rec.results[0].result["warnings"]
    assert node_ids(scene) != before


def test_on_scores_is_not_called_for_a_failed_run(scene, logic, tmp_path):
    ct, seed = case(scene)
    rec, seen = Recorder(), []
    job = logic.startBackground(ct, seed, None, None, "1", numberOfShifts=0, device="cpu")
    watcher = JobWatcher(logic, job, showResult=False, onScores=seen.append, **rec.callbacks())
    deadline = time.time() + 240
    while job.poll() == "running":
        assert time.time() < deadline, "the background run did not finish"
        time.sleep(0.05)
    assert job.poll() == "done"
    job.resultPath.write_text("{not json", encoding="utf-8")  # outputs that cannot be read: an error, no score
    drive(watcher)
    assert seen == [] and rec.results == [] and len(rec.errors) == 1


def test_a_run_in_a_given_folder_keeps_its_outputs(scene, logic, tmp_path):
    ct, seed = case(scene)
    rec = Recorder()
    job = logic.startBackground(ct, seed, device="cpu", numberOfShifts=0, workDir=tmp_path / "run")
    drive(JobWatcher(logic, job, showResult=False, **rec.callbacks()))
    result = rec.results[0]
    assert result.outputDir == tmp_path / "run" / "out" and (result.outputDir / "result.json").is_file()
    assert result.cam.GetSize() == ct.GetImageData().GetDimensions()


def test_cancel_reports_cancelled_and_adds_nothing(scene, logic, tmp_path):
    ct, seed = case(scene)
    before = node_ids(scene)
    rec = Recorder()
    watcher = JobWatcher(logic, logic.startBackground(ct, seed, device="cpu", numberOfShifts=0), **rec.callbacks())
    watcher.step()
    watcher.cancel()
    assert rec.cancelled == 1 and rec.results == [] and rec.errors == []
    assert not watcher.step() and not watcher.job.process.running
    assert node_ids(scene) == before


def test_a_refused_input_reaches_on_error_with_the_engine_message(scene, logic, tmp_path):
    ct, seed = case(scene)
    rec = Recorder()
    job = logic.startBackground(ct, seed, device="cpu", numberOfShifts=0, bundle=tmp_path / "no-such-bundle")
    drive(JobWatcher(logic, job, **rec.callbacks()))
    assert len(rec.errors) == 1 and rec.results == []
    assert isinstance(rec.errors[0], TMBRBError) and "no-such-bundle" in str(rec.errors[0])


def test_gpu_out_of_memory_runs_the_case_again_on_the_cpu(scene, logic, tmp_path):
    """A GPU run that dies of out-of-memory (here a stand-in process that fails as torch does) is started again
    on the CPU from the same inputs, and its result arrives as if nothing had happened."""
    ct, seed = case(scene)
    rec = Recorder()
    failing = EngineProcess([sys.executable, "-c", "import sys; print('RuntimeError: CUDA out of memory. Tried to "
                             "allocate 2.00 GiB'); sys.exit(1)"]).start()
    inputs = JobInputs(volume=ct, seed=seed, ecog=1, numberOfShifts=0, device="cuda")
    gpu_job = EngineJob(failing, tmp_path / "gpu", tmp_path / "gpu" / "out", inputs)
    watcher = JobWatcher(logic, gpu_job, showResult=False, **rec.callbacks())
    drive(watcher)
    assert rec.errors == [] and len(rec.results) == 1
    assert any("running again on the CPU" in m for _, m in rec.progress)
    assert watcher.job is not gpu_job and watcher.job.inputs.device == "cpu"
    assert rec.results[0].result["device"] == "cpu" and rec.results[0].risk["ecog"] == 1


def test_a_failure_that_is_not_out_of_memory_is_not_retried(scene, logic, tmp_path):
    ct, seed = case(scene)
    rec = Recorder()
    failing = EngineProcess([sys.executable, "-c", "import sys; print('something else broke'); sys.exit(1)"]).start()
    job = EngineJob(failing, tmp_path / "w", tmp_path / "w" / "out", JobInputs(volume=ct, seed=seed, device="cuda"))
    watcher = JobWatcher(logic, job, **rec.callbacks())
    drive(watcher, timeout=30)
    assert watcher.job is job and len(rec.errors) == 1 and "something else broke" in str(rec.errors[0])
