import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.cli import main
from TMBRBLib.geometry import lps_to_ras
from TMBRBLib.outputs import path_record

from .synthetic import make_ct

TUMOUR = (10.0, -20.0, 30.0)


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct")
    ct, mask = make_ct(size=(80, 80, 40), tumour_lps=TUMOUR, radius_mm=7, noise=10)
    sitk.WriteImage(ct, str(d / "ct.nrrd"), True)
    sitk.WriteImage(mask, str(d / "mask.nii.gz"), True)
    return d


def _ras(p):
    return ",".join(f"{v:.3f}" for v in lps_to_ras(p))


def test_score_writes_all_outputs_aligned_with_the_ct(ct_file, placeholder_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["score", "--ct", str(ct_file / "ct.nrrd"), "--seed-ras", _ras(TUMOUR), "--ecog", "2",
               "--segmentation", str(ct_file / "mask.nii.gz"), "--model", str(placeholder_bundle.path),
               "--shifts", "2", "--out", str(out), "--progress", "none"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "PLACEHOLDER MODEL" in text and "TMBRB score" in text and "research use only" in text
    res = json.loads((out / "result.json").read_text())
    assert res["inputs"]["segmentation_given"] is True and res["risk"]["ecog"] == 2
    assert res["model"]["sha256"] == placeholder_bundle.sha256
    ct = sitk.ReadImage(str(ct_file / "ct.nrrd"))
    for name in ("cam.nrrd", "tumour.nrrd", "ring.nrrd"):
        img = sitk.ReadImage(str(out / name))
        assert img.GetSize() == ct.GetSize() and np.allclose(img.GetOrigin(), ct.GetOrigin())
        assert np.allclose(img.GetSpacing(), ct.GetSpacing()) and np.allclose(img.GetDirection(), ct.GetDirection())
    # the tumour written is the given segmentation
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "tumour.nrrd"))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(ct_file / "mask.nii.gz"))))
    for png in ("overlay_axial.png", "overlay_coronal.png", "overlay_sagittal.png", "summary.png"):
        assert (out / png).stat().st_size > 10_000


def test_seed_given_as_lps_ras_or_index_gives_the_same_score(ct_file, placeholder_bundle, tmp_path):
    ct = sitk.ReadImage(str(ct_file / "ct.nrrd"))
    idx = ",".join(str(v) for v in ct.TransformPhysicalPointToContinuousIndex(TUMOUR))
    scores = []
    for flag, val in (("--seed-lps", ",".join(map(str, TUMOUR))), ("--seed-ras", _ras(TUMOUR)), ("--seed-index", idx)):
        out = tmp_path / flag.strip("-")
        assert main(["score", "--ct", str(ct_file / "ct.nrrd"), flag, val, "--model", str(placeholder_bundle.path),
                     "--shifts", "0", "--out", str(out), "--no-pictures", "--progress", "none"]) == 0
        scores.append(json.loads((out / "result.json").read_text())["score"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) and scores[0] == pytest.approx(scores[2], abs=1e-4)


@pytest.mark.parametrize("args,message", [
    (["--seed-ras", "1,2"], "three finite numbers"),
    (["--seed-ras", "0,0,0", "--seed-lps", "0,0,0"], "exactly once"),
    (["--seed-ras", "0,0,9999"], "outside the CT"),
    (["--seed-lps", "10,-20,30", "--ecog", "4"], "ECOG"),
    (["--seed-lps", "10,-20,30", "--box-lps", "1,2,3,4,5"], "six finite numbers"),
])
def test_bad_command_lines_exit_2_with_a_message_and_no_traceback(args, message, ct_file, placeholder_bundle,
                                                                  tmp_path, capsys):
    rc = main(["score", "--ct", str(ct_file / "ct.nrrd"), "--model", str(placeholder_bundle.path),
               "--out", str(tmp_path / "o"), "--progress", "none"] + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_missing_bundle_is_a_clear_error(ct_file, tmp_path, capsys):
    rc = main(["score", "--ct", str(ct_file / "ct.nrrd"), "--seed-lps", "10,-20,30", "--model",
               str(tmp_path / "nobundle"), "--out", str(tmp_path / "o"), "--progress", "none"])
    assert rc == 2 and "not a folder" in capsys.readouterr().err


def test_jsonl_progress_for_a_background_process(ct_file, placeholder_bundle, tmp_path):
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "TMBRBLib.cli", "score", "--ct", str(ct_file / "ct.nrrd"),
                        "--seed-lps", "10,-20,30", "--model", str(placeholder_bundle.path), "--shifts", "0",
                        "--no-pictures", "--out", str(out), "--progress", "jsonl"],
                       capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    fractions = [line["progress"] for line in lines if "progress" in line]
    assert p.returncode == 0 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert lines[-1] == {"done": True, "result": str(out / "result.json")}
    bad = subprocess.run([sys.executable, "-m", "TMBRBLib.cli", "score", "--ct", str(tmp_path / "none.nrrd"),
                          "--seed-lps", "0,0,0", "--out", str(out), "--progress", "jsonl"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "does not exist" in json.loads(bad.stdout.splitlines()[-1])["error"]


def test_batch_is_resumable_and_a_failed_case_does_not_stop_the_others(ct_file, placeholder_bundle, tmp_path):
    man = tmp_path / "manifest.csv"
    with open(man, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "ct", "seed_ras", "box_ras", "mask", "ecog"])
        w.writerow(["good1", str(ct_file / "ct.nrrd"), _ras(TUMOUR), "", "", "0"])
        w.writerow(["missing", str(tmp_path / "nope.nrrd"), _ras(TUMOUR), "", "", ""])
        w.writerow(["badecog", str(ct_file / "ct.nrrd"), _ras(TUMOUR), "", "", "7"])
        w.writerow(["good2", str(ct_file / "ct.nrrd"), _ras(TUMOUR), "-20,10,20,0,30,40", "", "1"])
    out = tmp_path / "batch"
    args = ["batch", str(man), "--out", str(out), "--model", str(placeholder_bundle.path), "--shifts", "0",
            "--no-pictures", "--quiet"]
    assert main(args) == 3  # some cases failed
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert [rows[k]["status"] for k in ("good1", "missing", "badecog", "good2")] == ["ok", "failed", "failed", "ok"]
    assert "does not exist" in rows["missing"]["error"] and "ECOG" in rows["badecog"]["error"]
    assert float(rows["good2"]["os_relative_hazard"]) > 0
    recorded = json.loads((out / "good1" / "result.json").read_text())["inputs"]["ct_path"]
    assert recorded == path_record(ct_file / "ct.nrrd", out / "good1")  # in another tree: by name and path hash
    assert recorded["name"] == "ct.nrrd" and str(tmp_path) not in json.dumps(recorded)
    first_mtime = (out / "good1" / "result.json").stat().st_mtime_ns
    assert main(args) == 3
    rows2 = {r["case_id"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows2["good1"]["status"] == "done-before" and rows2["good1"]["score"] == rows["good1"]["score"]
    assert (out / "good1" / "result.json").stat().st_mtime_ns == first_mtime


def test_batch_manifest_without_ct_column(tmp_path, placeholder_bundle, capsys):
    man = tmp_path / "m.csv"
    man.write_text("path,seed\nx,1\n")
    assert main(["batch", str(man), "--out", str(tmp_path / "o"), "--model", str(placeholder_bundle.path)]) == 2
    assert "no 'ct' column" in capsys.readouterr().err
