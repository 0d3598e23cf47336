"""Paths that leak (issues 12 and 17): what result.json and summary.csv record of where the inputs are.

A path is recorded relative to the record's folder only when it goes up at most one folder (``../ct.nrrd`` beside
``--out``); else by name and the sha256 of its path, so the folders above (which may name a patient) are not recorded.
Every writer of result.json (``tmbrb score``, ``tmbrb attention``, the warm worker's regions) goes through one helper.
"""

from __future__ import annotations

import csv
import json
import pathlib
from pathlib import Path

import pytest
import SimpleITK as sitk

from TMBRBLib.batch import SUMMARY_FIELDS, failed_row, write_summary
from TMBRBLib.cli import main
from TMBRBLib.io import write_image
from TMBRBLib.outputs import path_record, path_sha256, paths_in_message, relative_path, result_record
from TMBRBLib.phantom import make_phantom

PATIENT = "PAT-0012345_DOE_JOHN"  # a folder name as a hospital may give it


def _mentioning(folder: Path, *texts: str):
    """Files under ``folder`` whose bytes contain any of ``texts``."""
    return [p for p in folder.rglob("*") if p.is_file() and any(t.encode() in p.read_bytes() for t in texts)]


def test_a_path_in_another_tree_is_shown_by_name_and_path_hash_not_by_its_folders():
    shown = relative_path("/data/patients/DOE_JOHN_1234/ct.nrrd", "/home/me/results/case1")
    assert "DOE_JOHN_1234" not in shown and "data" not in shown and shown.startswith("ct.nrrd ")
    assert path_sha256("/data/patients/DOE_JOHN_1234/ct.nrrd")[:12] in shown  # tells two such files apart
    assert path_record("/data/patients/DOE_JOHN_1234/ct.nrrd", "/home/me/results/case1") == {
        "name": "ct.nrrd", "path_sha256": path_sha256("/data/patients/DOE_JOHN_1234/ct.nrrd")}
    # up to one folder up (beside --out), or below the folder: relative, so the result can be opened again
    assert relative_path("/data/study/ct.nrrd", "/data/study/out") == "../ct.nrrd"
    assert path_record("/data/study/ct/ct.nrrd", "/data/study/out") == "../ct/ct.nrrd"
    assert relative_path("/data/study/out/in/ct.nrrd", "/data/study/out") == "in/ct.nrrd"
    assert isinstance(path_record("/data/ct.nrrd", "/data/study/out"), dict)  # two folders up


@pytest.mark.parametrize("message", [
    "The CT '/data/patients/DOE_JOHN/ct.nrrd' cannot be read",
    'internal error: RuntimeError: The file "/data/patients/DOE_JOHN/ct.nrrd" does not exist',  # as ITK quotes
    "The file 'C:\\patients\\DOE_JOHN\\ct.nrrd' cannot be read",
])
def test_summary_error_cells_show_no_folder_of_a_quoted_path(message, tmp_path):
    row = failed_row("c1", message, 0.0, folder=tmp_path / "results")
    assert "DOE_JOHN" not in row["error"] and "ct.nrrd [path sha256 " in row["error"], row["error"]
    assert paths_in_message("The CT '/data/study/ct.nrrd' cannot be read", "/data/study/out") == \
        "The CT '../ct.nrrd' cannot be read"


def test_write_summary_writes_rows_as_made_without_resolving_paths(tmp_path, monkeypatch):
    """The rows' paths were made relative when the rows were made: rewriting summary.csv after each case resolves
    nothing (it used to resolve every row's paths on every rewrite: quadratic in the batch's size)."""
    rows = [failed_row(f"c{i}", f"The CT '{tmp_path}/data/{PATIENT}/c{i}.nrrd' does not exist.", 0.0,
                       folder=tmp_path / "results" / "batch") for i in range(200)]
    calls = []
    real = pathlib.Path.resolve
    monkeypatch.setattr(pathlib.Path, "resolve", lambda self, *a, **k: calls.append(self) or real(self, *a, **k))
    write_summary(tmp_path / "summary.csv", rows)
    assert calls == []
    with open(tmp_path / "summary.csv", encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert [r["error"] for r in written] == [r["error"] for r in rows]
    assert list(written[0]) == SUMMARY_FIELDS and not _mentioning(tmp_path, PATIENT)


def test_a_relative_manifest_in_a_patient_folder_leaves_no_folder_name_in_the_summary(tmp_path, monkeypatch,
                                                                                       placeholder_bundle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / PATIENT).mkdir()
    (tmp_path / PATIENT / "manifest.csv").write_text("case_id,ct,seed_lps\nc1,ct/missing.nrrd,\"1,2,3\"\n")
    assert main(["batch", f"{PATIENT}/manifest.csv", "--out", "results/batch", "--model",
                 str(placeholder_bundle.path), "--shifts", "0", "--no-pictures", "--quiet"]) == 3
    with open(tmp_path / "results" / "batch" / "summary.csv", encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    assert row["status"] == "failed" and "does not exist" in row["error"] and "missing.nrrd" in row["error"]
    assert not _mentioning(tmp_path / "results", PATIENT), row["error"]


@pytest.fixture()
def far_case(tmp_path):
    """A CT in a patient's folder of one tree, scored (with pictures) into a result folder of another tree."""
    case = make_phantom(0)  # the bundled demo model gives this phantom a map that is not zero
    ct = tmp_path / "data" / "patients" / PATIENT / "ct.nrrd"
    ct.parent.mkdir(parents=True)
    write_image(case.ct, ct)
    out = tmp_path / "home" / "results" / "case1"
    assert main(["score", "--ct", str(ct), "--seed-lps", ",".join(map(str, case.seed_lps)), "--out", str(out),
                 "--shifts", "0", "--device", "cpu", "--progress", "none"]) == 0
    return ct, out


def test_score_and_attention_record_a_far_ct_and_segmentation_by_name(far_case, tmp_path, capsys):
    ct, out = far_case
    result = json.loads((out / "result.json").read_text())
    assert result["inputs"]["ct_path"] == {"name": "ct.nrrd", "path_sha256": path_sha256(ct)}
    assert not _mentioning(out, PATIENT, str(tmp_path))
    edited = ct.parent / "tumour_edited.nrrd"  # edited beside the CT, in the patient's folder
    write_image(sitk.BinaryErode(sitk.ReadImage(str(out / "tumour.nrrd")), [1] * 3), edited)
    assert main(["attention", "--result", str(out), "--segmentation", str(edited)]) == 0
    after = json.loads((out / "result.json").read_text())
    assert after["attention_update"]["from"] == "tumour_edited.nrrd"
    assert not _mentioning(out, PATIENT, str(tmp_path))
    # where the CT is was not recorded: the old pictures are removed, saying how to draw them again
    assert not list(out.glob("*.png")) and any("give --ct" in w for w in after["warnings"]), after["warnings"]
    printed = capsys.readouterr().out
    assert PATIENT not in printed
    assert main(["attention", "--result", str(out), "--segmentation", str(edited), "--ct", str(ct),
                 "--no-pictures"]) == 0  # no pictures left to draw: the CT is not needed, and nothing leaks
    assert not _mentioning(out, PATIENT, str(tmp_path))


def test_attention_redraws_on_a_given_ct_and_names_a_missing_one_clearly(far_case, tmp_path, capsys):
    ct, out = far_case
    edited = tmp_path / "edited.nrrd"
    write_image(sitk.BinaryErode(sitk.ReadImage(str(out / "tumour.nrrd")), [1] * 3), edited)
    before = (out / "result.json").read_text()
    assert main(["attention", "--result", str(out), "--segmentation", str(edited), "--ct",
                 str(tmp_path / "nope.nrrd")]) == 2
    assert "--ct" in capsys.readouterr().err and (out / "result.json").read_text() == before
    pngs = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert pngs
    assert main(["attention", "--result", str(out), "--segmentation", str(edited), "--ct", str(ct)]) == 0
    assert {p.name for p in out.glob("*.png")} == set(pngs)  # drawn again on the given CT
    assert all((out / n).stat().st_mtime_ns != t for n, t in pngs.items())
    assert not _mentioning(out, PATIENT, str(tmp_path))


def test_result_record_relativises_warnings_and_leaves_the_result_alone(tmp_path):
    result = {"inputs": {"ct_path": str(tmp_path / "data" / PATIENT / "ct.nrrd"), "n_shifts": 0},
              "warnings": [f"The CT '{tmp_path / 'data' / PATIENT / 'ct.nrrd'}' has 3 slices."], "score": 0.5}
    kept = json.dumps(result)
    record = result_record(result, tmp_path / "results" / "case1")
    assert json.dumps(result) == kept  # the caller's result is not changed
    assert PATIENT not in json.dumps(record) and str(tmp_path) not in json.dumps(record)
    assert record["inputs"]["n_shifts"] == 0 and record["score"] == 0.5
    assert record["warnings"][0].startswith("The CT 'ct.nrrd [path sha256 ")


def test_the_warm_workers_region_answer_records_no_absolute_path(tmp_path, placeholder_bundle):
    import io

    from TMBRBLib.worker import Worker

    case = make_phantom(2)
    ct = tmp_path / "data" / PATIENT / "ct.nrrd"
    ct.parent.mkdir(parents=True)
    sitk.WriteImage(case.ct, str(ct))
    request = {"op": "score", "id": "r", "ct": str(ct), "seed_lps": list(case.seed_lps), "shifts": 0,
               "device": "cpu", "model": str(placeholder_bundle.path), "out": str(tmp_path / "scene" / "out"),
               "volumes": "regions"}
    out = io.StringIO()
    worker = Worker(io.StringIO(json.dumps(request) + "\n"), out)
    worker._read()
    assert worker.serve() == 0
    assert json.loads(out.getvalue().splitlines()[-1]).get("done"), out.getvalue()
    result = json.loads((tmp_path / "scene" / "out" / "result.json").read_text())
    assert "region_index_lo" in result
    assert result["inputs"]["ct_path"] == {"name": "ct.nrrd", "path_sha256": path_sha256(ct)}
    assert not _mentioning(tmp_path / "scene", PATIENT, str(tmp_path))
