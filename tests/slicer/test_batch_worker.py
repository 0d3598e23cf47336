"""Batch in Slicer (SceneLogic.processCases / startCases) through the engine worker: progress per case, Cancel
keeping the finished cases, a timed-out case reported and the next case scored, events processed while waiting."""

from __future__ import annotations

import csv
import os
import shutil

import SimpleITK as sitk

from test_slicer_logic import oblique_ct


def write_manifest(tmp_path, rows, encoding="utf-8"):
    cases = tmp_path / "cases"
    cases.mkdir(exist_ok=True)
    sitk.WriteImage(oblique_ct()[0], str(cases / "a.nrrd"))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(["case_id", "ct", "seed_lps", "ecog"])
        w.writerows(rows)
    return manifest


GOOD = ["cases/a.nrrd", "14,-16,33", "1"]


def test_progress_per_case_in_the_worker_while_events_are_processed(logic, tmp_path):
    # saved by Excel: a byte-order mark before the first column's name (the worker must see 'case_id', not '\ufeffcase_id')
    manifest = write_manifest(tmp_path, [["one"] + GOOD, ["bad-seed", "cases/a.nrrd", "x,y", ""], ["two"] + GOOD],
                              encoding="utf-8-sig")
    calls, events = [], []
    rows = logic.processCases(manifest, tmp_path / "out", device="cpu", numberOfShifts=0,
                              progress=lambda i, n, row: calls.append((i, n, row["case_id"], row["status"])),
                              processEvents=lambda: events.append(1))
    assert calls == [(1, 3, "one", "ok"), (2, 3, "bad-seed", "failed"), (3, 3, "two", "ok")]
    assert [(r["case_id"], r["status"]) for r in rows] == [(c[2], c[3]) for c in calls]  # what processCases returns
    assert events, "the blocking form must process events while it waits"
    worker = logic.engineWorker()
    assert worker.starts == 1 and worker.alive, "all cases go to one warm worker"
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [(r["case_id"], r["status"]) for r in summary] == [(c[2], c[3]) for c in calls]
    assert summary[0]["score"] == summary[2]["score"] != ""  # the same case twice: the same score
    assert (tmp_path / "out" / "one" / "result.json").is_file()
    again = logic.processCases(manifest, tmp_path / "out", device="cpu", numberOfShifts=0)
    assert [r["status"] for r in again] == ["done-before", "failed", "done-before"]


def test_cancel_mid_batch_keeps_the_finished_cases(logic, tmp_path):
    manifest = write_manifest(tmp_path, [[f"c{i}"] + GOOD for i in range(4)])
    progress = []
    job = logic.startCases(manifest, tmp_path / "out", device="cpu", numberOfShifts=0,
                           onProgress=lambda fraction, message: progress.append(message))
    rows = job.wait(cancel=lambda: len(job.rows) >= 1 and job.current is not None, processEvents=lambda: None)
    assert job.state == "cancelled"
    assert [(r["case_id"], r["status"]) for r in rows] == [("c0", "ok")]
    assert (tmp_path / "out" / "c0" / "result.json").is_file() and not (tmp_path / "out" / "c3").exists()
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        assert [r["case_id"] for r in csv.DictReader(f)] == ["c0"]
    assert any(m.startswith("case 1/4") for m in progress)
    rows = logic.processCases(manifest, tmp_path / "out", device="cpu", numberOfShifts=0)  # resume
    assert [r["status"] for r in rows] == ["done-before", "ok", "ok", "ok"]


HANG_HOOK = """
# the engine worker's start-up hook in this test: reading a CT called hang.nrrd never ends (a case that hangs)
import time
import TMBRBLib.io as io
_read_image = io.read_image
def read_image(path, *args, **kwargs):
    if str(path).endswith("hang.nrrd"):
        time.sleep(3600)
    return _read_image(path, *args, **kwargs)
io.read_image = read_image
"""


def test_a_timed_out_case_is_reported_and_the_next_case_is_scored(logic, tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path, [["hangs", "cases/hang.nrrd", "14,-16,33", "1"], ["next"] + GOOD])
    shutil.copy(tmp_path / "cases" / "a.nrrd", tmp_path / "cases" / "hang.nrrd")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_HOOK)  # Python imports it at start-up from PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p))
    calls = []
    # 25 s: the next case (a new worker's first, under a loaded CI machine) must fit in it too
    rows = logic.processCases(manifest, tmp_path / "out", device="cpu", numberOfShifts=0, caseTimeoutS=25,
                              progress=lambda i, n, row: calls.append((row["case_id"], row["status"])))
    assert calls == [("hangs", "failed"), ("next", "ok")], rows
    assert "timed out" in rows[0]["error"] and "25 s" in rows[0]["error"]
    assert logic.engineWorker().starts == 2, "the hung worker was stopped and a new one scored the next case"
    assert (tmp_path / "out" / "next" / "result.json").is_file()


SLOW_HOOK = """
# the engine worker's start-up hook in this test: a long case (10 s) that checks for cancel as the engine's steps do
import time
import TMBRBLib.pipeline as pipeline
from TMBRBLib.errors import TMBRBCancelled
_score_case = pipeline.score_case
def score_case(*args, cancel=None, **kwargs):
    for _ in range(100):
        if cancel is not None and cancel():
            raise TMBRBCancelled("Cancelled by the user.")
        time.sleep(0.1)
    return _score_case(*args, cancel=cancel, **kwargs)
pipeline.score_case = score_case
"""


def test_cancelling_a_batch_case_stops_it_and_keeps_the_warm_worker(logic, tmp_path, monkeypatch):
    """Cancel reaches the engine's steps in a batch case too: the case stops there, the worker is not killed (it
    used to be, after the GUI waited out the grace time)."""
    manifest = write_manifest(tmp_path, [["c0"] + GOOD, ["c1"] + GOOD])
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p))
    job = logic.startCases(manifest, tmp_path / "out", device="cpu", numberOfShifts=0)
    rows = job.wait(cancel=lambda: job.current is not None and job.current.message == "scoring",
                    processEvents=lambda: None)
    assert job.state == "cancelled" and rows == []
    worker = logic.engineWorker()
    assert worker.alive and worker.starts == 1, "cancelling a batch case killed the warm worker"
    assert not (tmp_path / "out" / "c0").exists()
