"""Training end to end on a tiny cohort: reproducible, resumable, distributed in sync, exported bundle scored by
the engine, and clear messages for bad options."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cli import main
from .conftest import train_args

REPO = Path(__file__).resolve().parents[2]


def _run(args):
    assert main(args) == 0


def _weights(run: Path, name="last"):
    return torch.load(run / "checkpoints" / f"{name}.pt", map_location="cpu", weights_only=True)["model"]


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.bit_exact  # one torch thread (tests/conftest.py)
def test_same_command_twice_gives_same_auc_and_weights(tiny_manifest, tmp_path):
    for name in ("a", "b"):
        _run(train_args(tiny_manifest, tmp_path / name, "--epochs", "1", "--seed", "3"))
    sa = json.loads((tmp_path / "a" / "train_summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert sa["best_val_auc"] == sb["best_val_auc"]
    assert _same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    # a different seed gives a different model (the seed is used)
    _run(train_args(tiny_manifest, tmp_path / "c", "--epochs", "1", "--seed", "4"))
    assert not _same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "c"))
    # the log: CSV with one row per epoch, a plot, the cache (CT read once per case)
    rows = list(csv.DictReader(open(tmp_path / "a" / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1"] and {"train_loss", "val_loss", "val_auc"} <= set(rows[0])
    assert (tmp_path / "a" / "history.png").stat().st_size > 1000
    assert sa["ct_reads_rank0"] == sa["n_train"] + sa["n_val"]


@pytest.mark.bit_exact  # one torch thread (tests/conftest.py)
def test_resume_continues_exactly(tiny_manifest, tmp_path):
    _run(train_args(tiny_manifest, tmp_path / "full", "--epochs", "2"))
    _run(train_args(tiny_manifest, tmp_path / "part", "--epochs", "2", "--stop-after", "1"))
    assert len(list(csv.DictReader(open(tmp_path / "part" / "history.csv")))) == 1
    _run(train_args(tiny_manifest, tmp_path / "part", "--epochs", "2", "--resume"))
    assert _same_weights(_weights(tmp_path / "full"), _weights(tmp_path / "part"))
    h_full = list(csv.DictReader(open(tmp_path / "full" / "history.csv")))
    h_part = list(csv.DictReader(open(tmp_path / "part" / "history.csv")))
    key = lambda h: [(r["epoch"], r["train_loss"], r["val_auc"]) for r in h]  # noqa: E731
    assert key(h_full) == key(h_part)
    # resuming with another seed is refused with a clear message
    assert main(train_args(tiny_manifest, tmp_path / "part", "--epochs", "3", "--resume", "--seed", "9")) == 2


def test_early_stopping_rule():
    from training.trainer import should_stop
    assert not should_stop(epoch=5, best_epoch=4, patience=2, min_epochs=1)
    assert should_stop(epoch=7, best_epoch=4, patience=2, min_epochs=1)
    assert not should_stop(epoch=7, best_epoch=4, patience=2, min_epochs=8)   # not before min_epochs
    assert not should_stop(epoch=7, best_epoch=0, patience=2, min_epochs=1)   # no finite AUC yet


def test_two_processes_under_torchrun_stay_in_sync(tiny_manifest, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "TMBRBModule"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training",
           *train_args(tiny_manifest, tmp_path / "ddp", "--epochs", "1", "--max-steps-per-epoch", "2",
                       "--device", "cpu")]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert s["world_size"] == 2
    assert len(s["rank_param_checksums"]) == 2 and s["rank_param_checksums"][0] == s["rank_param_checksums"][1]
    assert s["ranks_in_sync"] is True
    # the weights moved (2 steps were taken) and the saved checkpoint is rank 0's
    from training.trainer import param_checksum
    from TMBRBLib.model import build_model
    net = build_model(s["metadata"]["tmbrb"]["architecture"])
    torch.manual_seed(0)
    net.load_state_dict(_weights(tmp_path / "ddp"))
    assert param_checksum(net) == s["rank_param_checksums"][0]


def test_export_then_engine_scores_and_evaluate_writes_predictions(tiny_manifest, tmp_path):
    from TMBRBLib.bundle import load_bundle
    from TMBRBLib.crop import crop_for_model
    from TMBRBLib.io import read_ct
    from TMBRBLib.pipeline import score_case
    from TMBRBLib.bundle import sha256_file
    from training.manifest import read_manifest
    run, bdir = tmp_path / "run", tmp_path / "bundle"
    _run(train_args(tiny_manifest, run, "--epochs", "2"))
    _run(["export", "--run", str(run), "--bundle", str(bdir), "--demo", "--model-id", "tiny-test"])
    b = load_bundle(bdir)
    t = b.tmbrb
    assert t["demo"] is True and t["placeholder"] is False and t["model_id"] == "tiny-test"
    assert "synthetic phantoms" in b.notice and "not for clinical or research conclusions" in b.notice
    assert t["training"]["manifest_sha256"] == sha256_file(tiny_manifest)
    assert t["training"]["seed"] == 0 and "python -m training train" in t["training"]["command"]
    assert t["preprocessing"]["shape"] == [32, 32, 32] and t["risk"]["os"]["cutoff"] == 0.61
    assert t["training"]["metrics"]["val_auc"] == json.loads((run / "train_summary.json").read_text())["best_val_auc"]
    # export stores the training data's summary (from the run's manifest: 6 train, 2 val cases)
    assert t["ood"]["n_train"] == 6 and t["ood"]["n_val"] == 2 and "crop_hu_p50" in t["acquisition"]["ranges"]
    # the engine's score for a case is the trained network's output on the training code's validation crop
    case = read_manifest(tiny_manifest)[0]
    ct, _ = read_ct(case.ct)
    res = score_case(ct, case.seed_lps, box_lps=(case.box.min, case.box.max), bundle=b, n_shifts=2, device="cpu")
    from TMBRBLib.model import build_model
    net = build_model(t["architecture"])
    net.load_state_dict(_weights(run, "best"))
    net.eval()
    x = torch.from_numpy(crop_for_model(ct, case.box, t["preprocessing"])[0])[None, None]
    with torch.no_grad():
        p = torch.softmax(net(x), 1)[0, 1].item()
    assert abs(res.score - p) < 5e-3  # float16 weights in the bundle
    assert any("synthetic phantoms" in w for w in res.warnings)
    assert res.to_dict()["ood"]["available"] is True
    # evaluate: predictions CSV for the statistics toolkit, metrics with the notice
    out = tmp_path / "eval"
    _run(["evaluate", "--bundle", str(bdir), "--manifest", str(tiny_manifest), "--out", str(out), "--split", "val",
          "--shifts", "2", "--no-progress"])
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["case"] for r in rows] == ["c6", "c7"]
    assert {"case", "tmb", "label", "score", "tta_std", "cam_share_signal"} <= set(rows[0])
    assert all(0 <= float(r["score"]) <= 1 and float(r["tta_std"]) >= 0 for r in rows)
    assert all(0 <= float(r["cam_share_signal"]) <= 1 for r in rows)
    assert all("synthetic phantoms" in r["model_notice"] for r in rows)
    m = json.loads((out / "metrics.json").read_text())
    # one High- and one Low-TMB case: the AUC is 1 when the High case scores higher, 0 when lower, 0.5 on a tie
    s_high, s_low = (next(float(r["score"]) for r in rows if r["label"] == lab) for lab in ("1", "0"))
    expected_auc = 1.0 if s_high > s_low else 0.0 if s_high < s_low else 0.5
    assert m["n"] == 2 and "synthetic phantoms" in m["notice"] and m["auc"]["auc"] == expected_auc
    # CAM shares are also summarised over the High-TMB cases alone (the map is the High-TMB class's)
    high = [float(r["cam_share_signal"]) for r in rows if r["label"] == "1"]
    assert m["cam_share_signal_high_tmb"]["n"] == len(high) == 1
    assert abs(m["cam_share_signal_high_tmb"]["mean"] - high[0]) < 1e-9
    # calibration of the score on the split, with its reliability diagram, and the bundle's temperature-scaled one
    y, p = np.array([float(r["label"]) for r in rows]), np.array([float(r["score"]) for r in rows])
    assert m["calibration"]["score"]["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert (out / "reliability_val.png").is_file() and m["calibration"]["score"]["n"] == 2
    assert all(0 <= float(r["calibrated_probability"]) <= 1 for r in rows)
    assert "temperature_scaled" in m["calibration"]


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--architecture", "{bad"], "--architecture is not valid JSON"),
    (["--architecture", '{"colour": 3}'], "a key the model does not know"),
    (["--architecture", '{"name": "ResNet-3D"}'], "'ResNet-3D' is not known"),
    (["--architecture", '{"n_features": 7}'], "says n_features 7, but the network it describes gives 1020"),
])
def test_bad_options_exit_2_with_message(tiny_manifest, tmp_path, capsys, extra, message):
    assert main(train_args(tiny_manifest, tmp_path / "x", *extra)) == 2
    assert message in capsys.readouterr().err


def test_missing_manifest_and_unfinished_run(tmp_path, capsys):
    assert main(["train", "--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path), "--bundle", str(tmp_path / "b")]) == 2
    assert "not a finished training run" in capsys.readouterr().err


def test_bench_reports_both_paths(tiny_manifest, tmp_path):
    from training.bench import bench
    from .conftest import TINY_ARCH, TINY_PRE
    r = bench(tiny_manifest, tmp_path, n=4, batch_size=2, preprocessing=json.loads(TINY_PRE),
              architecture=json.loads(TINY_ARCH))
    assert r["n_samples"] == 4 and r["input_shape"] == [32, 32, 32]
    for k in ("no_cache", "cache"):
        assert r[k]["data_samples_per_s"] > 0 and r[k]["train_samples_per_s"] > 0
    assert json.loads((tmp_path / "bench.json").read_text()) == r


def test_phantoms_command_writes_a_cohort_that_training_reads(tmp_path, capsys):
    """`python -m training phantoms` goes through the core library's cohort writer; its manifest reads as is."""
    from training.manifest import read_manifest
    assert main(["phantoms", "--out", str(tmp_path / "c"), "--n", "6", "--split", "4,1,1", "--seed", "3",
                 "--no-progress"]) == 0
    manifest = Path(capsys.readouterr().out.strip())
    cases = read_manifest(manifest)
    assert len(cases) == 6 and {c.split for c in cases} <= {"train", "val", "test"}
    assert all(c.tumour.is_file() and c.signal.is_file() and c.tmb is not None for c in cases)
    # bad sizes and fractions: exit code 2 and a message naming the problem
    assert main(["phantoms", "--out", str(tmp_path / "d"), "--n", "2", "--no-progress"]) == 2
    assert "n >= 4" in capsys.readouterr().err
    assert main(["phantoms", "--out", str(tmp_path / "d"), "--n", "8", "--split", "1,-1,1", "--no-progress"]) == 2
    assert "non-negative fractions" in capsys.readouterr().err


def test_evaluate_on_a_none_phantom_cohort_has_no_signal_share(tmp_path, placeholder_bundle):
    """A 'none' phantom has an empty signal mask: evaluate must say n/a, not fail and not report 0."""
    from TMBRBLib.phantom import write_cohort
    from training.evaluate import evaluate
    manifest = write_cohort(tmp_path / "c", n=4, fractions=(0, 0, 1), signal="none", seed=4, progress=False,
                            spacing=(1.0, 1.0, 2.5))
    m = evaluate(placeholder_bundle.path, manifest, tmp_path / "e", "test", n_shifts=0, limit=1, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "e" / "predictions.csv")))
    assert len(rows) == 1 and rows[0]["cam_share_signal"] == "" and "cam_share_signal" not in m
    assert 0 <= float(rows[0]["score"]) <= 1
