"""Bundles that lie and paths that leak (issue 17).

A bundle carries the sha256 of each of its files (checksums.sha256); one whose files differ is reported as MODIFIED in
result.json, the result's lines (CLI, Slicer, viewer), the batch summary and by `bundle verify`. The demo notice follows
the demo weights' sha256, not the editable `demo` flag. Bundles, result.json and summary.csv record no absolute path.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from TMBRBLib.bundle import (CHECKSUMS_PATH, DEMO_NOTICE, DEMO_WEIGHTS_SHA256, METADATA_PATH, check_files,
                             default_bundle_path, load_bundle)
from TMBRBLib.cli import main
from TMBRBLib.outputs import path_sha256
from TMBRBLib.present import result_lines

from .synthetic import make_ct

DEMO = default_bundle_path()
PATIENT = "PAT-0012345_DOE_JOHN"  # a folder name as a hospital may give it


@pytest.fixture()
def demo_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("TMBRB_MODEL", raising=False)
    dst = tmp_path / "demo_bundle"
    shutil.copytree(DEMO, dst)
    return dst


def _edit(bundle: Path, change) -> None:
    path = bundle / METADATA_PATH
    meta = json.loads(path.read_text(encoding="utf-8"))
    change(meta)
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


# one edit per kind of metadata value: numbers, strings, booleans, lists, nested sections, top-level fields
EDITS = {
    "os cut-off": _set("tmbrb", "risk", "os", "cutoff", 0.2),
    "pfs operator": _set("tmbrb", "risk", "pfs", "operator", "<"),
    "risk group names": _set("tmbrb", "risk", "os", "group_if_true", "high"),
    "hazard ratio": _set("tmbrb", "risk", "os", "hr", 0.1),
    "demo flag": _set("tmbrb", "demo", False),
    "notice": _set("tmbrb", "notice", "Validated for clinical use."),
    "name": _set("name", "TMBRB clinical 2.0"),
    "version": _set("version", "2.0.0"),
    "model id": _set("tmbrb", "model_id", "tmbrb-clinical"),
    "intended use": _set("intended_use", "Clinical decision support."),
    "HU window": _set("tmbrb", "preprocessing", "hu_window", [-900.0, 400.0]),
    "crop margin": _set("tmbrb", "preprocessing", "margin_mm", 20.0),
    "shift count": _set("tmbrb", "tta", "n_shifts", 2),
    "calibration": _set("tmbrb", "calibration", "temperature", 3.0),
    "training metrics": _set("tmbrb", "training", "metrics", "val_auc", 0.99),
    "section removed": lambda meta: meta["tmbrb"].pop("ood"),
    "key added": _set("tmbrb", "approved", True),
}


def test_the_shipped_demo_bundle_matches_its_checksums_and_keeps_its_weights():
    b = load_bundle(DEMO)
    assert b.sha256.startswith("23e3a9f4") and b.sha256 in DEMO_WEIGHTS_SHA256
    assert b.integrity["status"] == "verified" and not b.is_modified
    listed = (DEMO / CHECKSUMS_PATH).read_text().split()
    assert "configs/metadata.json" in listed and "models/model.safetensors" in listed and "docs/README.md" in listed


def test_an_untouched_copy_verifies(demo_copy, capsys):
    assert main(["bundle", "verify", str(demo_copy)]) == 0
    out = capsys.readouterr().out
    assert "bundle OK" in out and "match their checksums" in out
    info = load_bundle(demo_copy).info()
    assert info["modified"] is False and info["integrity"]["status"] == "verified"
    assert not [line for line in result_lines({"score": 0.5, "model": info}) if "MODIFIED" in line.value]


def test_loading_hashes_each_file_once(demo_copy, monkeypatch):
    """load_bundle hashes the weights for their metadata checksum and hands that digest to check_files."""
    import TMBRBLib.bundle as B
    hashed = []
    real = B.sha256_file
    monkeypatch.setattr(B, "sha256_file", lambda p: hashed.append(Path(p).relative_to(demo_copy).as_posix()) or real(p))
    b = load_bundle(demo_copy)
    assert b.integrity["status"] == "verified"
    assert sorted(hashed) == sorted(set(hashed)) and "models/model.safetensors" in hashed
    # a digest handed in is trusted as the file's: a wrong one is reported as a change, without hashing again
    hashed.clear()
    r = check_files(demo_copy, known={"models/model.safetensors": "0" * 64})
    assert r["changed"] == ["models/model.safetensors"] and "models/model.safetensors" not in hashed


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_each_kind_of_metadata_edit_is_reported_as_modified(demo_copy, capsys, edit):
    _edit(demo_copy, EDITS[edit])
    b = load_bundle(demo_copy)  # still loads (its values are valid), but says what it is
    assert b.is_modified and b.integrity["changed"] == ["configs/metadata.json"]
    info = b.info()
    assert info["modified"] is True and info["demo"] is True  # the demo weights stay a demo whatever was edited
    warnings = [line.value for line in result_lines({"score": 0.5, "model": info}) if line.key == "warning"]
    assert warnings and warnings[0].startswith("MODIFIED BUNDLE: configs/metadata.json")
    assert main(["bundle", "verify", str(demo_copy)]) == 2
    err = capsys.readouterr().err
    assert "bundle verify failed: MODIFIED BUNDLE" in err and "Traceback" not in err


def test_edited_model_card_missing_file_or_broken_checksums_are_modified(demo_copy):
    (demo_copy / "docs" / "README.md").write_text("# TMBRB, validated\n")
    assert check_files(demo_copy)["changed"] == ["docs/README.md"]
    (demo_copy / "docs" / "README.md").unlink()
    assert check_files(demo_copy)["missing"] == ["docs/README.md"]
    for text in ("not a checksum line\n", "0" * 64 + "  ../../etc/passwd\n"):
        (demo_copy / CHECKSUMS_PATH).write_text(text)
        assert check_files(demo_copy)["status"] == "modified"
    (demo_copy / CHECKSUMS_PATH).unlink()  # a bundle exported before checksums existed: said, not hidden
    assert check_files(demo_copy)["status"] == "unverified"
    assert load_bundle(demo_copy).is_modified  # but the demo weights were shipped with theirs


def test_the_demo_notice_survives_demo_false_and_an_edited_notice(demo_copy):
    _edit(demo_copy, lambda m: (_set("tmbrb", "demo", False)(m), _set("tmbrb", "notice", "Research use only.")(m)))
    b = load_bundle(demo_copy)
    assert b.is_demo and b.notice == DEMO_NOTICE
    lines = {line.key: line for line in result_lines({"score": 0.5, "model": b.info()})}
    assert lines["demo"].value == "yes" and lines["notice"].value == DEMO_NOTICE


def _case(folder: Path):
    ct, _ = make_ct(size=(80, 80, 40), tumour_lps=(10, -20, 30), radius_mm=7)
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct, str(folder / "ct.nrrd"), True)
    return folder / "ct.nrrd", "10,-20,30"


def _files_mentioning(folder: Path, text: str):
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_a_modified_bundle_is_flagged_in_result_json_cli_and_batch_summary(demo_copy, tmp_path, capsys):
    _edit(demo_copy, EDITS["os cut-off"])
    ct, seed = _case(tmp_path / "case")
    out = tmp_path / "out"
    assert main(["score", "--ct", str(ct), "--seed-lps", seed, "--out", str(out), "--model", str(demo_copy),
                 "--shifts", "0", "--no-pictures", "--progress", "none", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "warning: MODIFIED BUNDLE: configs/metadata.json" in printed
    model = json.loads((out / "result.json").read_text())["model"]
    assert model["modified"] is True and model["demo"] is True and model["notice"] == DEMO_NOTICE
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case_id,ct,seed_lps\nc1,{ct},\"{seed}\"\n")
    assert main(["batch", str(manifest), "--out", str(tmp_path / "batch"), "--model", str(demo_copy),
                 "--shifts", "0", "--no-pictures", "--quiet", "--device", "cpu"]) == 0
    row = next(csv.DictReader(open(tmp_path / "batch" / "summary.csv", encoding="utf-8")))
    assert row["status"] == "ok" and "MODIFIED" in row["note"]


def _load_tiny_cohort_module():
    spec = importlib.util.spec_from_file_location("tiny_cohort", Path(__file__).parents[1] / "training" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_exported_bundle_records_no_path_of_the_training_machine(tmp_path, monkeypatch):
    from training.cli import main as training_main

    tiny = _load_tiny_cohort_module()
    home = tmp_path / "x" / PATIENT
    manifest = tiny.write_tiny_cohort(home / "cohort", n=10, splits=["train"] * 6 + ["val"] * 2 + ["test"] * 2)
    run, bundle = home / "run", home / "bundle"
    assert training_main(tiny.train_args(manifest, run, "--epochs", "1")) == 0
    assert training_main(["export", "--run", str(run), "--bundle", str(bundle), "--model-id", "tiny"]) == 0
    b = load_bundle(bundle)
    assert b.integrity["status"] == "verified" and b.tmbrb.get("ood")  # the OOD summary was written, checksums kept
    assert not _files_mentioning(bundle, PATIENT), "the bundle names the training machine's folder"
    assert not _files_mentioning(bundle, str(tmp_path))
    t = b.tmbrb["training"]
    assert t["manifest"] == "manifest.csv" and "python -m training train" in t["command"]


def test_the_shipped_demo_bundle_records_no_absolute_path():
    def strings(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, str):
            yield v

    meta = json.loads((DEMO / METADATA_PATH).read_text(encoding="utf-8"))
    absolute = [s for s in strings(meta) if re.search(r"(^|[\s=])(/|~/|[A-Za-z]:\\)\w", s)]
    assert not absolute
    assert not re.search(r"\s/(work|tmp|home|data)/", (DEMO / "docs" / "README.md").read_text(encoding="utf-8"))


def test_result_json_and_batch_summary_record_no_absolute_path(placeholder_bundle, tmp_path):
    home = tmp_path / "x" / PATIENT
    ct, seed = _case(home / "ct")
    out = home / "out"
    assert main(["score", "--ct", str(ct), "--seed-lps", seed, "--out", str(out), "--model",
                 str(placeholder_bundle.path), "--shifts", "0", "--no-pictures", "--progress", "none"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["inputs"]["ct_path"] == "../ct/ct.nrrd"
    assert not _files_mentioning(out, PATIENT) and not _files_mentioning(out, str(tmp_path))
    manifest = home / "manifest.csv"
    manifest.write_text(f"case_id,ct,seed_lps\nc1,ct/ct.nrrd,\"{seed}\"\nc2,ct/missing.nrrd,\"{seed}\"\n")
    batch = home / "batch"
    assert main(["batch", str(manifest), "--out", str(batch), "--model", str(placeholder_bundle.path),
                 "--shifts", "0", "--no-pictures", "--quiet"]) == 3  # c2 fails: its message names its CT
    assert not _files_mentioning(batch, PATIENT), _files_mentioning(batch, PATIENT)
    rows = {r["case_id"]: r for r in csv.DictReader(open(batch / "summary.csv", encoding="utf-8"))}
    assert rows["c1"]["output_dir"] == "c1" and "'../ct/missing.nrrd'" in rows["c2"]["error"]
    # two folders above the case's folder: recorded by name and path sha256, not by the folders on the way
    recorded = json.loads((batch / "c1" / "result.json").read_text())["inputs"]["ct_path"]
    assert recorded == {"name": "ct.nrrd", "path_sha256": path_sha256(ct)}
