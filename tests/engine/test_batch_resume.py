"""`tmbrb batch`: resume keyed on each case's inputs, whole-folder replacement, and several processes."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from TMBRBLib.batch import file_identity, run_batch
from TMBRBLib.cli import main

from .synthetic import make_ct

REPO = Path(__file__).resolve().parents[2]
TUMOUR = (10.0, -20.0, 30.0)
SEED = "10,-20,30"
COMPARED = ["row", "case_id", "status", "score", "tta_mean", "tta_std", "os_group", "pfs_group", "ecog",
            "attention_tumour", "error", "note", "inputs_key"]


@pytest.fixture(scope="module")
def ct_master(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct")
    ct, _ = make_ct(size=(64, 64, 32), tumour_lps=TUMOUR, radius_mm=7, noise=10)
    sitk.WriteImage(ct, str(d / "ct.nrrd"), True)
    return d / "ct.nrrd"


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TMBRB_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def _manifest(path: Path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "ct", "seed_lps", "ecog"])
        w.writerows(rows)
    return path


def _cases(tmp_path, ct_master, names):
    """One CT file per case (so that one can be edited alone), and a manifest with relative paths."""
    (tmp_path / "cts").mkdir(exist_ok=True)
    rows = []
    for name in names:
        shutil.copy2(ct_master, tmp_path / "cts" / f"{name}.nrrd")
        rows.append([name, f"cts/{name}.nrrd", SEED, "1"])
    return rows


def _summary(out):
    with open(out / "summary.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _batch(man, out, bundle, *extra, quiet=True):
    return main(["batch", str(man), "--out", str(out), "--model", str(bundle.path), "--shifts", "0",
                 "--no-pictures", *(["--quiet"] if quiet else []), *extra])


def test_only_rows_whose_inputs_changed_are_scored_again(ct_master, placeholder_bundle, tmp_path):
    rows = _cases(tmp_path, ct_master, ["seed", "ecog", "ctfile", "same"])
    man = _manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    assert _batch(man, out, placeholder_bundle) == 0
    first = _summary(out)
    assert {r["status"] for r in first.values()} == {"ok"} and all(len(r["inputs_key"]) == 64 for r in first.values())
    res = json.loads((out / "seed" / "result.json").read_text())
    assert res["inputs"]["inputs_key"] == first["seed"]["inputs_key"]
    assert res["inputs"]["keyed_inputs"]["ct"] == file_identity(tmp_path / "cts" / "seed.nrrd")
    mtimes = {k: (out / k / "result.json").stat().st_mtime_ns for k in first}

    # unchanged manifest: all done before, nothing rewritten
    assert _batch(man, out, placeholder_bundle) == 0
    again = _summary(out)
    assert {r["status"] for r in again.values()} == {"done-before"}
    assert all(again[k]["inputs_key"] == first[k]["inputs_key"] and again[k]["score"] == first[k]["score"]
               for k in first)
    assert all((out / k / "result.json").stat().st_mtime_ns == mtimes[k] for k in first)

    # edit the seed of one row, the ECOG of another, rewrite a third's CT file (another mtime, same path)
    rows[0][2] = "11,-20,30"
    rows[1][3] = "2"
    ct_file = tmp_path / "cts" / "ctfile.nrrd"
    st = ct_file.stat()
    os.utime(ct_file, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    _manifest(man, rows)
    assert _batch(man, out, placeholder_bundle) == 0
    third = _summary(out)
    assert {k: r["status"] for k, r in third.items()} == {"seed": "ok", "ecog": "ok", "ctfile": "ok",
                                                          "same": "done-before"}
    assert third["seed"]["note"] == "re-scored: seed changed"
    assert third["ecog"]["note"] == "re-scored: ECOG changed" and third["ecog"]["ecog"] == "2"
    assert third["ctfile"]["note"] == "re-scored: CT file changed"
    assert third["same"]["note"] == "" and (out / "same" / "result.json").stat().st_mtime_ns == mtimes["same"]
    assert all(third[k]["inputs_key"] != first[k]["inputs_key"] for k in ("seed", "ecog", "ctfile"))
    assert json.loads((out / "seed" / "result.json").read_text())["seed"]["lps"] == [11.0, -20.0, 30.0]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left

    # another shift count and ring width: every row again, saying both
    assert _batch(man, out, placeholder_bundle, "--shifts", "1", "--ring-mm", "6") == 0
    fourth = _summary(out)
    assert {r["note"] for r in fourth.values()} == {"re-scored: shift count, ring width changed"}
    res = json.loads((out / "same" / "result.json").read_text())
    assert res["inputs"]["n_shifts"] == 1 and res["attention"]["ring_width_mm"] == 6.0


def test_another_model_bundle_rescores_every_case(ct_master, placeholder_bundle, tmp_path):
    from TMBRBLib.bundle import make_placeholder_bundle
    man = _manifest(tmp_path / "m.csv", _cases(tmp_path, ct_master, ["a", "b"]))
    out = tmp_path / "out"
    assert _batch(man, out, placeholder_bundle) == 0
    other = make_placeholder_bundle(tmp_path / "other", seed=1)
    assert _batch(man, out, other) == 0
    rows = _summary(out)
    assert [r["status"] for r in rows.values()] == ["ok", "ok"]
    assert {r["note"] for r in rows.values()} == {"re-scored: model changed"}
    assert json.loads((out / "a" / "result.json").read_text())["model"]["sha256"] == other.sha256


def test_a_result_without_inputs_key_counts_as_changed(ct_master, placeholder_bundle, tmp_path):
    man = _manifest(tmp_path / "m.csv", _cases(tmp_path, ct_master, ["old"]))
    out = tmp_path / "out"
    assert _batch(man, out, placeholder_bundle) == 0
    res_path = out / "old" / "result.json"
    res = json.loads(res_path.read_text())
    del res["inputs"]["inputs_key"], res["inputs"]["keyed_inputs"]  # as an older TMBRB wrote it
    res_path.write_text(json.dumps(res))
    assert _batch(man, out, placeholder_bundle) == 0
    row = _summary(out)["old"]
    assert row["status"] == "ok" and "no inputs key" in row["note"] and row["note"].startswith("re-scored: inputs")
    assert json.loads(res_path.read_text())["inputs"]["inputs_key"] == row["inputs_key"]


def test_a_failed_rescore_keeps_the_old_case_whole(ct_master, placeholder_bundle, tmp_path, monkeypatch):
    import TMBRBLib.outputs as outputs
    man = _manifest(tmp_path / "m.csv", _cases(tmp_path, ct_master, ["c"]))
    out = tmp_path / "out"
    run_batch(man, out, bundle=placeholder_bundle, device="cpu", n_shifts=0, pictures=False, progress_bar=False)
    before = {p.name: p.read_bytes() for p in (out / "c").iterdir()}
    real = outputs.write_outputs

    def crash_after_writing(result, out_dir, **kw):
        real(result, out_dir, **kw)
        raise OSError("disk full")  # the new files are all there, in the temporary folder

    monkeypatch.setattr(outputs, "write_outputs", crash_after_writing)
    run_batch(man, out, bundle=placeholder_bundle, device="cpu", n_shifts=1, pictures=False, progress_bar=False)
    row = _summary(out)["c"]
    assert row["status"] == "failed" and "disk full" in row["error"] and row["note"] == "re-scored: shift count changed"
    assert {p.name: p.read_bytes() for p in (out / "c").iterdir()} == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_case_id_cannot_leave_the_output_folder(ct_master, placeholder_bundle, tmp_path):
    man = _manifest(tmp_path / "m.csv", [["..", str(ct_master), SEED, ""], ["../x", str(ct_master), SEED, ""]])
    out = tmp_path / "deep" / "out"
    assert _batch(man, out, placeholder_bundle) == 0
    assert sorted(_summary(out)) == ["_x", "case0001"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]


# ------------------------------------------------------------------------------------------------ several processes
@pytest.fixture(scope="module")
def mixed(ct_master, placeholder_bundle, tmp_path_factory):
    """A manifest with three good rows, a failing one and a duplicate, and its single-process summary."""
    d = tmp_path_factory.mktemp("mixed")
    rows = _cases(d, ct_master, ["p1", "p2", "p3"])
    rows += [["outside", "cts/p1.nrrd", "900,900,900", ""], ["p1", "cts/p2.nrrd", SEED, ""]]  # failed, duplicate
    man = _manifest(d / "m.csv", rows)
    run_batch(man, d / "one", bundle=placeholder_bundle, device="cpu", n_shifts=0, pictures=False, progress_bar=False)
    return man, _compared(d / "one")


def _compared(out):
    with open(out / "summary.csv", newline="") as f:
        return [{k: r[k] for k in COMPARED} for r in csv.DictReader(f)]


def test_ranks_merge_into_the_single_process_summary(mixed, placeholder_bundle, tmp_path, monkeypatch, capsys):
    man, one = mixed
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TMBRB_RUN_ID", "run-a")
    monkeypatch.setenv("RANK", "1")
    capsys.readouterr()
    # process 1: its share, no summary.csv, no progress bar
    assert _batch(man, tmp_path / "two", placeholder_bundle, quiet=False) == 0
    assert "TMBRB batch" not in capsys.readouterr().err
    part = list(csv.DictReader(open(tmp_path / "two" / "summary.rank1.csv")))
    assert [r["row"] for r in part] == ["2", "4"] and not (tmp_path / "two" / "summary.csv").exists()
    monkeypatch.setenv("RANK", "0")
    assert _batch(man, tmp_path / "two", placeholder_bundle, quiet=False) == 3
    assert "TMBRB batch" in capsys.readouterr().err  # process 0's bar
    assert _compared(tmp_path / "two") == one
    assert [r["status"] for r in one] == ["ok", "ok", "ok", "failed", "failed"]


def test_process_0_stops_waiting_and_says_which_rows_were_not_scored(ct_master, placeholder_bundle, tmp_path,
                                                                      monkeypatch):
    man = _manifest(tmp_path / "m.csv", _cases(tmp_path, ct_master, ["a", "b"]))
    out = tmp_path / "out"
    out.mkdir()
    # an earlier run's finished state of process 1 is not this run's
    (out / "summary.rank1.json").write_text(json.dumps({"run": "tmbrb:earlier", "rank": 1, "world": 2, "share": 1,
                                                        "done": 1, "finished": True, "error": None}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TMBRB_RUN_ID", "now")
    assert _batch(man, out, placeholder_bundle, "--wait-timeout", "1") == 3
    rows = _summary(out)
    assert rows["a"]["status"] == "ok" and rows["b"]["status"] == "failed"
    assert rows["b"]["error"] == "not scored: process 1 of 2 did not finish (no news from any process for 1 s)"


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "2", "RANK": "0"}, "nothing identifies the run"),
    ({"WORLD_SIZE": "2", "RANK": "2", "TMBRB_RUN_ID": "x"}, "does not fit WORLD_SIZE=2"),
    ({"WORLD_SIZE": "two"}, "is not an integer"),
])
def test_bad_process_environment_is_a_clear_error(env, message, ct_master, placeholder_bundle, tmp_path,
                                                  monkeypatch, capsys):
    man = _manifest(tmp_path / "m.csv", [["a", str(ct_master), SEED, ""]])
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _batch(man, tmp_path / "out", placeholder_bundle) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "a").exists()


def test_two_processes_under_torchrun_give_the_single_process_summary(mixed, placeholder_bundle, tmp_path):
    man, one = mixed
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TMBRB_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "TMBRBModule"), str(REPO),
                                                                   os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "TMBRBLib.cli", "batch", str(man), "--out", str(tmp_path / "two"), "--model", str(placeholder_bundle.path),
           "--shifts", "0", "--no-pictures", "--quiet", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    # process 0 exits 3 (two rows failed), which torchrun reports as a failed worker
    assert r.returncode != 0 and "3 of 5 cases scored" in r.stdout, r.stderr[-3000:]
    assert "process 1 of 2: 1 of 2 cases of its share scored" in r.stdout
    assert _compared(tmp_path / "two") == one
    states = [json.loads((tmp_path / "two" / f"summary.rank{k}.json").read_text()) for k in (0, 1)]
    assert all(s["finished"] and s["run"].startswith("torchrun:") for s in states)
