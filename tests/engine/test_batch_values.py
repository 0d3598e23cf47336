"""Batch values a user relies on (issue 16): a manifest row as read (seed and box frames, paths, case ids), the
resume key and the reason a case is scored again, summary.csv's cells, whole-folder replacement, and the merge of
several processes' summaries. Most tests need no model; the last ones score a small CT with a tiny bundle."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib import batch
from TMBRBLib.batch import (INPUTS_KEY_VERSION, SUMMARY_FIELDS, RankFiles, case_inputs, dist_env, failed_row,
                            file_identity, inputs_key, plan_cases, rank_device, read_manifest, reserved_case_id,
                            resume_decision, row_to_case, run_batch, run_token, summary_names, summary_row,
                            write_summary)
from TMBRBLib.errors import TMBRBInputError

from .synthetic import make_ct
from .test_batch_resume import _manifest

BASE = Path("/data/study")
TUMOUR = (10.0, -20.0, 30.0)
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TMBRB_RUN_ID", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
       "SLURM_JOB_ID", "SLURM_STEP_ID")


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """The paper's metadata (a demo placeholder: its notice is shown) with a four-layer network: a case scores in
    about a second, so the scoring tests are cheap enough for a mutation run (what the batch records does not depend
    on the network's size; tests/engine/test_batch_resume.py scores with the full-size placeholder)."""
    from .test_pipeline_values import _tiny

    return _tiny(tmp_path_factory.mktemp("tiny") / "tiny")


def _case(**row):
    return row_to_case({"ct": "ct.nrrd", "seed_lps": "1,2,3", **row}, BASE, 7)


# ------------------------------------------------------------------------------------------------ a manifest row
@pytest.mark.parametrize("row, seed", [
    ({"seed_lps": "1,2,3"}, (1.0, 2.0, 3.0)),
    ({"seed_lps": "", "seed_ras": "10,20,30"}, (-10.0, -20.0, 30.0)),       # RAS -> LPS: x and y negated
    ({"seed_lps": " 1;2;3 ", "seed_ras": "10,20,30"}, (1.0, 2.0, 3.0)),     # seed_lps first
    ({"seed_lps": "", "seed_lps_x": "4", "seed_lps_y": "5", "seed_lps_z": "6"}, (4.0, 5.0, 6.0)),
    ({"seed_lps": "", "seed_ras_x": "4", "seed_ras_y": "5", "seed_ras_z": "6"}, (-4.0, -5.0, 6.0)),
    ({"seed_lps": "", "seed_ras": "10,20,30", "seed_lps_x": "4", "seed_lps_y": "5", "seed_lps_z": "6"},
     (-10.0, -20.0, 30.0)),
])
def test_a_row_seed_in_either_frame_is_the_lps_point(row, seed):
    assert _case(**row)["seed_lps"] == seed


@pytest.mark.parametrize("row", [{"seed_lps": ""}, {"seed_lps": "", "seed_lps_x": "4", "seed_lps_y": "5"},
                                 {"seed_lps": "", "seed_ras_x": "4", "seed_ras_z": "6"}])
def test_a_row_without_a_whole_seed_is_refused_saying_what_to_fill(row):
    with pytest.raises(TMBRBInputError) as e:
        _case(**row)
    assert str(e.value).startswith("The row has no seed.") and "'seed_ras' or 'seed_lps'" in str(e.value)


@pytest.mark.parametrize("row, lo, hi", [
    ({"box_lps": "0,-5,2,10,20,30"}, (0, -5, 2), (10, 20, 30)),
    ({"box_ras": "1,2,3,11,12,13"}, (-11, -12, 3), (-1, -2, 13)),
    ({"box_lps": "0,0,0,1,1,1", "box_ras": "1,2,3,11,12,13"}, (0, 0, 0), (1, 1, 1)),
    ({"box_lps_min_x": "1", "box_lps_min_y": "2", "box_lps_min_z": "3", "box_lps_max_x": "4", "box_lps_max_y": "5",
      "box_lps_max_z": "6"}, (1, 2, 3), (4, 5, 6)),
    ({"box_ras": "1,2,3,11,12,13", "box_lps_min_x": "1", "box_lps_min_y": "2", "box_lps_min_z": "3",
      "box_lps_max_x": "4", "box_lps_max_y": "5", "box_lps_max_z": "6"}, (-11, -12, 3), (-1, -2, 13)),
])
def test_a_row_box_in_either_frame_is_the_lps_box(row, lo, hi):
    box = _case(**row)["box"]
    assert tuple(box.min) == lo and tuple(box.max) == hi


def test_a_row_with_only_one_box_corner_has_no_box():
    assert _case(box_lps_min_x="1", box_lps_min_y="2", box_lps_min_z="3")["box"] is None
    assert _case(box_lps_max_x="1", box_lps_max_y="2", box_lps_max_z="3")["box"] is None


def test_a_row_paths_ecog_and_dicom_out_as_read():
    c = row_to_case({"case_id": " LUNG1 001/x ", "image": " cts/a.nrrd ", "seed_lps": "1,2,3",
                     "segmentation": "/masks/a.nii.gz", "ecog_ps": " 2 ", "dicom_out": "Yes"}, BASE, 3)
    assert c == {"case_id": "LUNG1_001_x", "ct": BASE / "cts" / "a.nrrd", "seed_lps": (1.0, 2.0, 3.0), "box": None,
                 "mask": Path("/masks/a.nii.gz"), "ecog": "2", "dicom_out": True}
    c = row_to_case({"ct_path": "a.nrrd", "seed_lps": "1,2,3", "tumour_mask": "m.nrrd", "ecog": "",
                     "dicom_out": " NO "}, BASE, 3)
    assert (c["ct"], c["mask"], c["ecog"], c["dicom_out"]) == (BASE / "a.nrrd", BASE / "m.nrrd", None, False)
    assert _case()["mask"] is None and _case()["dicom_out"] is False
    for word in ("1", "y", "true", "TRUE"):
        assert _case(dicom_out=word)["dicom_out"] is True
    for word in ("0", "n", "false", ""):
        assert _case(dicom_out=word)["dicom_out"] is False


def test_a_row_with_a_bad_dicom_out_or_no_ct_is_refused_naming_it():
    with pytest.raises(TMBRBInputError) as e:
        _case(dicom_out="maybe")
    assert str(e.value).startswith("The row's dicom_out is 'maybe'.") and "Write yes" in str(e.value)
    with pytest.raises(TMBRBInputError) as e:
        row_to_case({"ct": "  ", "seed_lps": "1,2,3"}, BASE, 1)
    assert str(e.value).startswith("The row has no CT path.") and "Fill the 'ct' column." in str(e.value)


@pytest.mark.parametrize("row, case_id", [
    ({"case_id": "LUNG1-001"}, "LUNG1-001"), ({"case_id": "a b/../c"}, "a_b_.._c"), ({"case_id": "..x"}, "x"),
    ({"case_id": ".."}, "case0012"), ({}, "case0012"), ({"case": "P 1"}, "P_1"), ({"id": "p.2"}, "p.2"),
    ({"case_id": "", "case": "", "id": "Z"}, "Z"), ({"case_id": "é"}, "_"),
])
def test_case_ids_are_safe_folder_names(row, case_id):
    assert row_to_case({"ct": "ct.nrrd", "seed_lps": "1,2,3", **row}, BASE, 12)["case_id"] == case_id


def test_reserved_case_ids_are_the_batch_files_and_over_long_names():
    assert summary_names(2) == ["summary.csv", "summary.csv.part", "summary.rank0.csv", "summary.rank0.json",
                                "summary.rank0.csv.part", "summary.rank0.json.part", "summary.rank1.csv",
                                "summary.rank1.json", "summary.rank1.csv.part", "summary.rank1.json.part"]
    assert summary_names(0) == summary_names(1) == summary_names() == summary_names(2)[:6]
    for name in summary_names(3) + ["Summary.CSV", "a.error.log", "summary-old.json"]:
        assert "is the name of a file the batch writes" in reserved_case_id(name)
    for name in ("summary", "summary.txt", "mysummary.csv.bak", "error.logs", "x" * 120):
        assert reserved_case_id(name) is None
    why = reserved_case_id("x" * 121)
    assert why == f"The case id '{'x' * 40}...' is 121 characters long; use at most 120."


def test_plan_cases_refuses_duplicate_and_reserved_ids_on_their_row():
    rows = [{"case_id": "A", "ct": "a", "seed_lps": "1,2,3"}, {"case_id": "a", "ct": "b", "seed_lps": "1,2,3"},
            {"case_id": "summary.csv", "ct": "c", "seed_lps": "1,2,3"}, {"ct": "d"},
            {"case_id": "B", "ct": "e", "seed_ras": "1,2,3"}]
    plans = plan_cases(rows, BASE)
    assert [p[1] for p in plans] == ["A", "a", "summary.csv", "case0004", "B"]
    assert [p[0] is None for p in plans] == [False, True, True, True, False]
    assert plans[0][2] == plans[4][2] == ""
    assert plans[1][2].startswith("The case id 'a' appears twice in the manifest") and "Make case ids unique" in \
        plans[1][2]
    assert "is the name of a file the batch writes" in plans[2][2]
    assert plans[3][2].startswith("The row has no seed.")
    assert plans[4][0]["ct"] == BASE / "e" and plans[4][0]["seed_lps"] == (-1.0, -2.0, 3.0)


def test_read_manifest_refuses_what_has_no_cases_or_no_ct_column(tmp_path):
    with pytest.raises(TMBRBInputError, match="The manifest '.*nope.csv' does not exist."):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("ct,seed_lps\n")
    with pytest.raises(TMBRBInputError, match="has no rows"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "noct.csv").write_text("case_id,seed\na,1\n")
    with pytest.raises(TMBRBInputError) as e:
        read_manifest(tmp_path / "noct.csv")
    assert "has no 'ct' column (columns: ['case_id', 'seed'])" in str(e.value)
    for column in ("ct", "ct_path", "image"):
        (tmp_path / "ok.csv").write_bytes(f"\ufeff{column},seed_lps\nx.nrrd,\"1,2,3\"\n".encode("utf-8"))
        assert read_manifest(tmp_path / "ok.csv") == [{column: "x.nrrd", "seed_lps": "1,2,3"}]


# ------------------------------------------------------------------------------------------------ the resume key
def test_file_identity_of_a_file_a_folder_and_a_missing_path(tmp_path):
    f = tmp_path / "ct.nrrd"
    f.write_bytes(b"12345")
    os.utime(f, ns=(1, 1_600_000_000_123_456_789))
    where = {"name": "ct.nrrd", "path_sha256": hashlib.sha256(str(f.resolve()).encode()).hexdigest()}
    assert file_identity(f) == {**where, "size": 5, "mtime_ns": 1_600_000_000_123_456_789}
    assert file_identity(str(tmp_path / "." / "ct.nrrd")) == file_identity(f)
    gone = tmp_path / "gone.nrrd"
    assert file_identity(gone) == {"name": "gone.nrrd", "missing": True,
                                   "path_sha256": hashlib.sha256(str(gone).encode()).hexdigest()}

    d = tmp_path / "dicom"
    d.mkdir()
    for i, n in enumerate((3, 1)):
        (d / f"s{i}.dcm").write_bytes(b"x" * n)
        os.utime(d / f"s{i}.dcm", ns=(1, 1000 + i))
    listing = [["s0.dcm", 3, 1000], ["s1.dcm", 1, 1001]]
    ident = file_identity(d)
    assert ident == {"name": "dicom", "path_sha256": hashlib.sha256(str(d).encode()).hexdigest(), "files": 2,
                     "listing_sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}
    (d / "sub").mkdir()  # a sub-folder is not a slice
    assert file_identity(d) == ident
    os.utime(d / "s1.dcm", ns=(1, 2000))  # a slice rewritten
    assert file_identity(d)["listing_sha256"] != ident["listing_sha256"]


@pytest.fixture(scope="module")
def bare_bundle(tmp_path_factory):
    """A bundle (a tiny network) without a regions section nor a tta shift count: the engine's defaults apply."""
    import torch

    from TMBRBLib.bundle import default_metadata, save_bundle
    from TMBRBLib.model import build_model

    from .test_pipeline_values import TINY

    meta = default_metadata()
    meta["tmbrb"].pop("regions")
    meta["tmbrb"]["tta"].pop("n_shifts")
    meta["tmbrb"]["training"] = {"note": "untrained", "seed": 0}
    arch = {**{k: v for k, v in meta["tmbrb"]["architecture"].items() if k != "n_features"}, **TINY}
    torch.manual_seed(0)
    net = build_model(arch)
    meta["tmbrb"]["architecture"] = {**arch, "n_features": net.n_features}
    return save_bundle(net, tmp_path_factory.mktemp("bare") / "b", meta)


def test_case_inputs_are_the_canonical_values_the_key_hashes(tmp_path, tiny_bundle, bare_bundle):
    from TMBRBLib.crop import DEFAULT_N_SHIFTS

    (tmp_path / "ct.nrrd").write_bytes(b"ct")
    (tmp_path / "m.nrrd").write_bytes(b"mask")
    case = row_to_case({"ct": "ct.nrrd", "seed_lps": "1.00000049,2,-3.1234567", "mask": "m.nrrd", "ecog": "1",
                        "box_lps": "0,0,0,1.23456789,2,3"}, tmp_path, 1)
    got = case_inputs(case, tiny_bundle)
    info = tiny_bundle.info()
    assert got == {"key_version": INPUTS_KEY_VERSION, "ct": file_identity(tmp_path / "ct.nrrd"),
                   "seed_lps": [1.0, 2.0, -3.123457], "box_lps": [0.0, 0.0, 0.0, 1.234568, 2.0, 3.0],
                   "mask": file_identity(tmp_path / "m.nrrd"), "ecog": 1,
                   "model": {"sha256": info["sha256"], "metadata_sha256": info["metadata_sha256"]},
                   "n_shifts": tiny_bundle.tmbrb["tta"]["n_shifts"],
                   "ring_width_mm": tiny_bundle.tmbrb["regions"]["ring_width_mm"]}
    assert INPUTS_KEY_VERSION == 2
    bare = case_inputs({**case, "box": None, "mask": None, "ecog": "x"}, bare_bundle, None, None)
    assert (bare["box_lps"], bare["mask"], bare["ecog"], bare["n_shifts"], bare["ring_width_mm"]) == \
        (None, None, "x", DEFAULT_N_SHIFTS, 10.0)
    given = case_inputs(case, bare_bundle, 3, 6)
    assert (given["n_shifts"], given["ring_width_mm"]) == (3, 6.0) and isinstance(given["ring_width_mm"], float)
    assert case_inputs({**case, "ecog": None}, bare_bundle)["ecog"] is None


def test_inputs_key_is_the_sha256_of_the_compact_sorted_json():
    """A key written by an earlier run must still match: its form is fixed (sorted keys, no spaces)."""
    inputs = {"b": [1.5, None], "a": {"y": "é", "x": 1}}
    assert inputs_key(inputs) == hashlib.sha256('{"a":{"x":1,"y":"\\u00e9"},"b":[1.5,null]}'.encode()).hexdigest()


def _write_result(case_out: Path, inputs: dict):
    case_out.mkdir(parents=True, exist_ok=True)
    (case_out / "result.json").write_text(json.dumps({"score": 0.25, "inputs": inputs}), encoding="utf-8")


def test_resume_decision_says_why_a_case_is_scored_again(tmp_path):
    now = {"key_version": 2, "ct": {"name": "a"}, "seed_lps": [1, 2, 3], "ecog": 1, "n_shifts": 4, "extra": 0}
    key = inputs_key(now)
    case_out = tmp_path / "c"
    assert resume_decision(case_out, key, now) == (None, "")                     # never started
    case_out.mkdir()
    (case_out / "cam.nrrd").write_bytes(b"half")
    assert resume_decision(case_out, key, now) == (None, "")                     # half written: no result.json
    (case_out / "result.json").write_text('{"score": 0.2', encoding="utf-8")
    assert resume_decision(case_out, key, now) == (None, "re-scored: the earlier result.json could not be read")
    _write_result(case_out, {"ct_path": "x"})
    assert resume_decision(case_out, key, now) == (
        None, "re-scored: inputs changed (the earlier result.json has no inputs key: written by an older version)")
    (case_out / "result.json").write_text('{"score": 0.25}', encoding="utf-8")
    assert resume_decision(case_out, key, now)[1].startswith("re-scored: inputs changed (the earlier result.json has")
    _write_result(case_out, {"inputs_key": key, "keyed_inputs": now})
    old, why = resume_decision(case_out, key, now)
    assert why == "" and old == {"score": 0.25, "inputs": {"inputs_key": key, "keyed_inputs": now}}
    before = {**now, "seed_lps": [1, 2, 4], "ecog": 0, "extra": 1}
    _write_result(case_out, {"inputs_key": inputs_key(before), "keyed_inputs": before})
    assert resume_decision(case_out, key, now) == (None, "re-scored: seed, ECOG, extra changed")
    _write_result(case_out, {"inputs_key": "other", "keyed_inputs": now})  # same values, another key
    assert resume_decision(case_out, key, now) == (None, "re-scored: inputs changed")
    _write_result(case_out, {"inputs_key": "other"})  # no keyed inputs: everything counts as changed
    assert resume_decision(case_out, key, now) == (
        None, "re-scored: the inputs key's format, CT file, seed, ECOG, shift count, extra changed")


def test_input_labels_name_every_keyed_input(tiny_bundle, tmp_path):
    (tmp_path / "ct.nrrd").write_bytes(b"ct")
    keyed = case_inputs(_case(ct=str(tmp_path / "ct.nrrd")), tiny_bundle)
    assert [batch.INPUT_LABELS[k] for k in keyed] == ["the inputs key's format", "CT file", "seed", "box",
                                                      "mask file", "ECOG", "model", "shift count", "ring width"]


# ------------------------------------------------------------------------------------------------ folders
def test_replace_folder_puts_the_new_case_in_place_whole(tmp_path, monkeypatch):
    final, new = tmp_path / "c", tmp_path / ".c.part-1"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "result.json").write_text("new")
    stale = tmp_path / f".c.old-{os.getpid()}"
    stale.mkdir()
    (stale / "x").write_text("stale")
    batch._replace_folder(new, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert [p.name for p in final.iterdir()] == ["result.json"] and (final / "result.json").read_text() == "new"
    new.mkdir()
    (new / "a").write_text("first")
    batch._replace_folder(new, tmp_path / "d")  # no earlier folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "d"]


def test_clear_leftovers_removes_only_this_cases_temporary_folders(tmp_path):
    for name in (".c.part-12", ".c.old-3", ".cc.part-1", "c", ".d.part-1", "c.part-1"):
        (tmp_path / name).mkdir()
    batch._clear_leftovers(tmp_path, "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cc.part-1", ".d.part-1", "c", "c.part-1"]


def test_an_input_inside_its_case_folder_is_named(tmp_path):
    out = tmp_path / "out" / "c"
    assert batch._inputs_inside({"ct": tmp_path / "ct.nrrd", "mask": None}, out) is None
    assert batch._inputs_inside({"ct": tmp_path / "out" / "ct.nrrd", "mask": None}, out) is None
    msg = batch._inputs_inside({"ct": tmp_path / "ct.nrrd", "mask": out / "sub" / "m.nrrd"}, out)
    assert msg == (f"The case's mask '{out / 'sub' / 'm.nrrd'}' lies in its output folder '{out}', which the batch "
                   "replaces. Keep inputs outside --out.")
    assert batch._inputs_inside({"ct": out, "mask": None}, out).startswith(f"The case's ct '{out}' lies in")


# ------------------------------------------------------------------------------------------------ summary.csv
RESULT = {"score": 0.61, "tta": {"mean": 0.6, "std": 0.02}, "warnings": ["a", "b"],
          "risk": {"os": {"group": "low"}, "pfs": {"group": "high"}, "ecog": 1,
                   "ecog_combined": {"os": {"relative_hazard": 1.5}, "pfs": {"relative_hazard": 2.5}}},
          "attention": {"tumour": 0.3, "ring": 0.5}, "inputs": {"inputs_key": "k" * 64},
          "model": {"path": "models/b", "modified": False}}


def test_summary_row_carries_the_results_values(tmp_path):
    row = summary_row("c1", RESULT, "ok", 1.23456, tmp_path / "out" / "c1")
    assert row == {"case_id": "c1", "status": "ok", "score": 0.61, "tta_mean": 0.6, "tta_std": 0.02,
                   "os_group": "low", "pfs_group": "high", "ecog": 1, "os_relative_hazard": 1.5,
                   "pfs_relative_hazard": 2.5, "attention_tumour": 0.3, "attention_ring": 0.5, "n_warnings": 2,
                   "seconds": 1.23, "error": "", "inputs_key": "k" * 64, "output_dir": "c1", "note": ""}
    assert summary_row("c1", RESULT, "ok", 0, tmp_path / "out" / "c1", tmp_path)["output_dir"] == "out/c1"
    bare = {**RESULT, "risk": {"os": {"group": "low"}, "pfs": {"group": "low"}, "ecog_combined": None},
            "model": {"path": "models/b", "modified": True}}
    del bare["warnings"], bare["inputs"]
    row = summary_row("c1", bare, "done-before", 0.0, tmp_path / "c1")
    assert (row["ecog"], row["os_relative_hazard"], row["pfs_relative_hazard"], row["n_warnings"],
            row["inputs_key"]) == (None, None, None, 0, "")
    assert row["note"] == "model bundle models/b MODIFIED after export"
    assert set(row) | {"row"} == set(SUMMARY_FIELDS)


def test_failed_row_is_empty_but_its_id_status_error_and_time(tmp_path):
    row = failed_row("c1", f"The CT '{tmp_path / 'cts' / 'c1.nrrd'}' does not exist.", 2.345, tmp_path,
                     note="re-scored: seed changed", inputs_key="k")
    assert row == {**{k: "" for k in SUMMARY_FIELDS}, "case_id": "c1", "status": "failed",
                   "error": "The CT 'cts/c1.nrrd' does not exist.", "seconds": 2.35,
                   "note": "re-scored: seed changed", "inputs_key": "k"}


def test_write_summary_writes_every_field_safely_and_whole(tmp_path):
    rows = [{**summary_row("=cmd", RESULT, "ok", 1.0, tmp_path / "x"), "row": 1, "unknown": "dropped"},
            {**failed_row("c2", "-bad", 0.0), "row": 2, "score": None}]
    write_summary(tmp_path / "summary.csv", rows)
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]
    with open(tmp_path / "summary.csv", newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == SUMMARY_FIELDS
        f.seek(0)
        got = list(csv.DictReader(f))
    assert got[0]["case_id"] == "'=cmd" and got[0]["score"] == "0.61" and got[0]["row"] == "1"
    assert got[0]["ecog"] == "1" and got[0]["os_relative_hazard"] == "1.5" and got[0]["n_warnings"] == "2"
    assert got[1] == {**{k: "" for k in SUMMARY_FIELDS}, "row": "2", "case_id": "c2", "status": "failed",
                      "error": "'-bad", "seconds": "0.0"}


# ------------------------------------------------------------------------------------------------ several processes
@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1, 0)), ({"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "1"}, (2, 3, 1)),
    ({"WORLD_SIZE": "2", "RANK": "1"}, (1, 2, 0)),
])
def test_dist_env_reads_torchruns_variables(env, expected, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dist_env() == expected


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 does not fit WORLD_SIZE=2."),
    ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK=-1 does not fit WORLD_SIZE=2."),
    ({"WORLD_SIZE": "0"}, "RANK=0 does not fit WORLD_SIZE=0."),
    ({"LOCAL_RANK": "a"}, "RANK, WORLD_SIZE or LOCAL_RANK is not an integer."),
    ({"RANK": "1.0"}, "RANK, WORLD_SIZE or LOCAL_RANK is not an integer."),
])
def test_dist_env_refuses_variables_that_do_not_fit(env, message, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(TMBRBInputError) as e:
        dist_env()
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("env, token", [
    ({}, None), ({"TMBRB_RUN_ID": "r1", "TORCHELASTIC_RUN_ID": "t"}, "tmbrb:r1"),
    ({"TORCHELASTIC_RUN_ID": "t9", "SLURM_JOB_ID": "5"}, "torchrun:t9:0"),
    ({"TORCHELASTIC_RUN_ID": "t9", "TORCHELASTIC_RESTART_COUNT": "2"}, "torchrun:t9:2"),
    ({"TORCHELASTIC_RUN_ID": "none", "SLURM_JOB_ID": "5", "SLURM_STEP_ID": "1"}, "slurm:5.1:0"),
    ({"TORCHELASTIC_RUN_ID": "", "SLURM_JOB_ID": "5", "TORCHELASTIC_RESTART_COUNT": "1"}, "slurm:5.:1"),
    ({"TMBRB_RUN_ID": ""}, None),
])
def test_run_token_tells_runs_apart(env, token, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert run_token() == token


def test_rank_device_gives_each_process_its_gpu_or_keeps_a_named_device(monkeypatch):
    import torch

    assert [rank_device(d, 1, 3) for d in ("auto", "cuda", None, "cpu")] == ["auto", "cuda", None, "cpu"]
    assert [rank_device(d, 2, 1) for d in ("cpu", "cuda:1")] == ["cpu", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [rank_device(d, 2, 1) for d in ("auto", "", None, "cuda")] == ["cpu", "cpu", "cpu", "cuda"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [rank_device(d, 4, 3) for d in ("auto", "cuda", "cuda:0")] == ["cuda:1", "cuda:1", "cuda:0"]


def test_rank_files_publish_state_and_merge_in_manifest_order(tmp_path):
    files = RankFiles(tmp_path, 3, "tmbrb:now")
    plans = [(None, f"c{i}", "") for i in range(1, 7)]
    files.publish(1, [{**failed_row("c2", "x", 0), "row": 2, "status": "ok"}], 2, finished=True)
    files.publish(2, [], 2, finished=True, error="RuntimeError: boom")
    assert json.loads((tmp_path / "summary.rank1.json").read_text()) == {
        "run": "tmbrb:now", "rank": 1, "world": 3, "share": 2, "done": 1, "finished": True, "error": None}
    assert files.state(2)["error"] == "RuntimeError: boom" and files.others_done() == 1
    assert not list(tmp_path.glob("*.part"))
    assert RankFiles(tmp_path, 3, "tmbrb:earlier").state(1) is None  # another run's file
    assert RankFiles(tmp_path, 2, "tmbrb:now").state(1) is None      # another world size
    assert files.state(0) is None
    states = files.wait_for_others(5.0)
    assert states[1]["done"] == 1 and states[2]["finished"]
    own = [{**failed_row("c1", "", 0), "row": 1, "status": "ok"}, {**failed_row("c4", "", 0), "row": 4}]
    merged = files.merge(own, plans, 5.0, {1: states[1], 2: states[2]})
    assert [r["case_id"] for r in merged] == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert [r["status"] for r in merged] == ["ok", "ok", "failed", "failed", "failed", "failed"]
    assert merged[2]["error"] == "not scored: process 2 stopped: RuntimeError: boom" and merged[2]["row"] == 3
    assert merged[4]["error"] == "not scored: process 1 of 3 did not finish (no news from any process for 5 s)"
    assert merged[5]["error"] == merged[2]["error"]
    # an unfinished process's rows are not merged
    files.publish(1, [{**failed_row("c2", "x", 0), "row": 2, "status": "ok"}], 2, finished=False)
    merged = files.merge(own, plans, 0.5, {1: files.state(1), 2: None})
    assert merged[1]["error"] == "not scored: process 1 of 3 did not finish (no news from any process for 0.5 s)"
    assert merged[2]["error"] == "not scored: process 2 of 3 did not finish (no news from any process for 0.5 s)"


def test_process_0_waits_until_the_others_finish_or_fall_silent(tmp_path):
    files = RankFiles(tmp_path, 2, "tmbrb:now")
    polls = []

    def finish_on_third_poll():
        polls.append(1)
        files.publish(1, [], 1, finished=len(polls) >= 3)

    states = files.wait_for_others(30.0, finish_on_third_poll, poll_s=0.01)
    assert states[1]["finished"] and 3 <= len(polls) <= 4  # the state is read before each poll
    silent = RankFiles(tmp_path / "none", 2, "tmbrb:now")
    (tmp_path / "none").mkdir()
    assert silent.wait_for_others(0.05, poll_s=0.01) == {1: None}


# ------------------------------------------------------------------------------------------------ a scored batch
@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct")
    ct, _ = make_ct(size=(48, 48, 24), spacing=(1.0, 1.0, 2.0), tumour_lps=TUMOUR, radius_mm=6, noise=10)
    sitk.WriteImage(ct, str(d / "ct.nrrd"), True)
    return d / "ct.nrrd"


def _read_summary(out):
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_batch_scores_resumes_and_replaces_a_half_written_case(small_ct, tiny_bundle, tmp_path):
    seed = ",".join(map(str, TUMOUR))
    man = _manifest(tmp_path / "m.csv", [["a", str(small_ct), seed, "1"], ["far", str(small_ct), "900,0,0", ""],
                                         ["b", str(small_ct), seed, ""]])
    out = tmp_path / "out"
    seen = []
    path = run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, pictures=False, ring_width_mm=6.0,
                     progress_bar=False, on_case=lambda i, n, row: seen.append((i, n, row["case_id"], row["status"])))
    assert path == out / "summary.csv"
    assert seen == [(1, 3, "a", "ok"), (2, 3, "far", "failed"), (3, 3, "b", "ok")]
    rows = _read_summary(out)
    assert [(r["row"], r["case_id"], r["status"]) for r in rows] == [("1", "a", "ok"), ("2", "far", "failed"),
                                                                     ("3", "b", "ok")]
    res = json.loads((out / "a" / "result.json").read_text())
    assert res["model"]["sha256"] == tiny_bundle.sha256 and res["device"] == "cpu"  # the model given
    assert res["attention"]["ring_width_mm"] == 6.0
    a = rows[0]
    assert float(a["score"]) == res["score"] and float(a["tta_mean"]) == res["tta"]["mean"]
    assert a["os_group"] == res["risk"]["os"]["group"] and a["ecog"] == "1" and rows[2]["ecog"] == ""
    assert float(a["attention_tumour"]) == res["attention"]["tumour"] and int(a["n_warnings"]) == len(res["warnings"])
    assert a["output_dir"] == "a" and a["inputs_key"] == res["inputs"]["inputs_key"] and a["error"] == ""
    assert res["inputs"]["case_id"] == "a" and res["inputs"]["n_shifts"] == 0 and res["inputs"]["mask_path"] is None
    assert res["inputs"]["ct_path"]["path_sha256"] == hashlib.sha256(str(small_ct.resolve()).encode()).hexdigest()
    assert "outside" in rows[1]["error"] and rows[1]["score"] == "" and len(rows[1]["inputs_key"]) == 64
    assert not (out / "far").exists()
    assert sorted(p.name for p in (out / "a").iterdir()) == sorted(
        ["result.json", "cam.nrrd", "crop.nrrd", "tumour.nrrd", "ring.nrrd"])

    # an interrupted run: b's folder holds a stale file and no result.json, and a temporary folder is left
    (out / "b" / "result.json").unlink()
    (out / "b" / "stale.txt").write_text("from a killed run")
    (out / ".b.part-99999").mkdir()
    a_bytes = (out / "a" / "result.json").read_bytes()
    run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, pictures=False, progress_bar=False,
              ring_width_mm=6.0)
    rows = _read_summary(out)
    assert [(r["case_id"], r["status"]) for r in rows] == [("a", "done-before"), ("far", "failed"), ("b", "ok")]
    assert rows[0]["score"] == a["score"] and rows[0]["seconds"] == "0.0" and rows[0]["note"] == ""
    assert (out / "a" / "result.json").read_bytes() == a_bytes
    assert not (out / "b" / "stale.txt").exists() and (out / "b" / "result.json").is_file()
    assert rows[2]["note"] == ""
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_batch_never_deletes_an_input_inside_its_case_folder(small_ct, tiny_bundle, tmp_path):
    out = tmp_path / "out"
    (out / "c").mkdir(parents=True)
    ct = out / "c" / "ct.nrrd"
    ct.write_bytes(small_ct.read_bytes())
    man = _manifest(tmp_path / "m.csv", [["c", str(ct), ",".join(map(str, TUMOUR)), ""]])
    run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, pictures=False, progress_bar=False)
    row = _read_summary(out)[0]
    assert row["status"] == "failed" and row["error"].startswith("The case's ct 'c/ct.nrrd' lies in its output "
                                                                 "folder")
    assert row["note"] == "" and len(row["inputs_key"]) == 64 and 0 <= float(row["seconds"]) < 60
    assert ct.read_bytes() == small_ct.read_bytes()


def test_a_row_with_a_mask_box_ecog_and_ring_width_is_scored_with_them(tiny_bundle, tmp_path):
    from TMBRBLib.errors import TMBRBCancelled
    from TMBRBLib.pipeline import Scorer

    ct, mask = make_ct(size=(48, 48, 14), spacing=(1.0, 1.0, 3.5), tumour_lps=TUMOUR, radius_mm=6, noise=10)
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"), True)
    sitk.WriteImage(mask, str(tmp_path / "mask.nrrd"), True)
    row = {"case_id": "c", "ct": "ct.nrrd", "mask": "mask.nrrd", "seed_lps": "10,-20,30",
           "box_lps": "2,-28,22,18,-12,38", "ecog": "2"}
    plan = plan_cases([row], tmp_path)[0]
    out = tmp_path / "out"
    out.mkdir()
    scorer = Scorer(tiny_bundle, "cpu")
    with pytest.raises(TMBRBCancelled):  # cancelled: raised, not a failed row, and nothing written
        batch.run_case(plan, out, scorer, tiny_bundle, 0, 6.0, False, cancel=lambda: True)
    assert list(out.iterdir()) == []
    got = batch.run_case(plan, out, scorer, tiny_bundle, 0, 6.0, False)
    res = json.loads((out / "c" / "result.json").read_text())
    assert got["status"] == "ok" and got["ecog"] == 2 and res["risk"]["ecog"] == 2
    assert got["note"] == ""  # no DICOM export unless asked
    assert res["attention"]["ring_width_mm"] == 6.0 and res["inputs"]["keyed_inputs"]["ring_width_mm"] == 6.0
    assert res["box"]["proposed"] is False
    assert (res["box"]["lps_min"], res["box"]["lps_max"]) == ([2.0, -28.0, 22.0], [18.0, -12.0, 38.0])
    assert res["inputs"]["segmentation_given"] is True and res["model"]["sha256"] == tiny_bundle.sha256
    assert res["inputs"]["mask_path"] == {  # two folders up: recorded by name and path sha256
        "name": "mask.nrrd", "path_sha256": hashlib.sha256(str((tmp_path / "mask.nrrd").resolve()).encode()).hexdigest()}
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c" / "tumour.nrrd"))),
                          sitk.GetArrayFromImage(mask))
    thick = [w for w in res["warnings"] if w.startswith("3.5 mm slices")]
    assert len(thick) == 1  # said when reading and when scoring: once
    assert res["warnings"][0] == tiny_bundle.notice


def test_rank_files_count_only_the_other_processes_and_show_paths_relative(tmp_path):
    files = RankFiles(tmp_path, 3, "tmbrb:now")
    files.publish(0, [{"row": 1}], 1, finished=False)
    files.publish(1, [{"row": 2}, {"row": 5}], 2, finished=False)
    assert files.others_done() == 2  # process 0's own rows and the silent process 2 are not counted
    assert [r["row"] for r in files.rows(1)] == ["2", "5"]
    files.publish(2, [], 1, finished=True,
                  error=f"TMBRBInputError: The CT '{tmp_path / 'cts' / 'x.nrrd'}' does not exist.")
    merged = files.merge([], [(None, "c1", ""), (None, "c2", ""), (None, "c3", "")], 1.0,
                         {1: None, 2: files.state(2)})
    assert merged[2]["error"] == "not scored: process 2 stopped: TMBRBInputError: The CT 'cts/x.nrrd' does not exist."
    assert merged[2]["seconds"] == 0.0 and merged[2]["status"] == "failed" and merged[2]["case_id"] == "c3"


def test_a_row_that_could_not_be_planned_is_a_failed_row_without_scoring(tmp_path):
    error = f"The row has no seed. (in '{tmp_path / 'm.csv'}')"
    row = batch.run_case((None, "c7", error), tmp_path, None, None, None, None, False)
    assert row == {**{k: "" for k in SUMMARY_FIELDS}, "case_id": "c7", "status": "failed",
                   "error": "The row has no seed. (in 'm.csv')", "seconds": 0.0}
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- a batch that scores nothing
def _unscored_manifest(tmp_path):
    """Rows that run_batch settles without the model: no seed (not planned), a CT that does not exist (fails when
    read), no seed again."""
    return _manifest(tmp_path / "m.csv", [["c1", "cts/c1.nrrd", "", ""], ["c2", "cts/c2.nrrd", "1,2,3", "1"],
                                          ["c3", "cts/c3.nrrd", "", "0"]])


def _process(monkeypatch, rank, world=2, run="t1"):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    if run:
        monkeypatch.setenv("TMBRB_RUN_ID", run)


NO_SEED = "The row has no seed. Fill 'seed_ras' or 'seed_lps' with x,y,z in mm."
NO_CT = "The CT '../cts/c2.nrrd' does not exist. Check the path."


def test_two_processes_share_the_rows_and_process_0_merges_them_in_manifest_order(tiny_bundle, tmp_path,
                                                                                 monkeypatch, capsys):
    man, out = _unscored_manifest(tmp_path), tmp_path / "out"
    seen = []
    _process(monkeypatch, 1)
    states = []
    path = run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, pictures=False,
                     on_case=lambda i, n, row: (seen.append((i, n, row["case_id"], row["status"])), states.append(
                         json.loads((out / "summary.rank1.json").read_text()))))
    assert path == out / "summary.rank1.csv" and not (out / "summary.csv").exists()
    assert seen == [(2, 3, "c2", "failed")]
    assert states == [{"run": "tmbrb:t1", "rank": 1, "world": 2, "share": 1, "done": 1, "finished": False,
                       "error": None}]  # published after each case, before the end
    assert capsys.readouterr().err == ""  # only process 0 shows a bar
    assert json.loads((out / "summary.rank1.json").read_text()) == {
        "run": "tmbrb:t1", "rank": 1, "world": 2, "share": 1, "done": 1, "finished": True, "error": None}
    files = RankFiles(out, 2, "tmbrb:t1")
    (c2,) = files.rows(1)
    assert (c2["row"], c2["case_id"], c2["status"], c2["error"]) == ("2", "c2", "failed", NO_CT)
    assert len(c2["inputs_key"]) == 64 and c2["score"] == ""

    _process(monkeypatch, 0)
    seen.clear()
    path = run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, pictures=False,
                     on_case=lambda i, n, row: seen.append((i, n, row["case_id"], row["status"])))
    assert path == out / "summary.csv"
    assert seen == [(1, 3, "c1", "failed"), (3, 3, "c3", "failed")]
    rows = _read_summary(out)
    assert [(r["row"], r["case_id"], r["status"], r["error"]) for r in rows] == [
        ("1", "c1", "failed", NO_SEED), ("2", "c2", "failed", NO_CT), ("3", "c3", "failed", NO_SEED)]
    assert rows[1] == c2  # process 1's row as it wrote it
    assert json.loads((out / "summary.rank0.json").read_text()) == {
        "run": "tmbrb:t1", "rank": 0, "world": 2, "share": 2, "done": 2, "finished": True, "error": None}
    bar = capsys.readouterr().err
    assert "TMBRB batch" in bar and "3/3" in bar and "c3: failed" in bar  # process 1's case counted in the bar
    assert bar.lstrip("\r").startswith("TMBRB batch: ") and ("case/s" in bar or "s/case" in bar)
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.rank0.csv", "summary.rank0.json",
                                                      "summary.rank1.csv", "summary.rank1.json"]


def test_a_process_that_stops_says_why_and_process_0_names_it_in_the_summary(tiny_bundle, tmp_path,
                                                                             monkeypatch):
    from TMBRBLib.errors import TMBRBBundleError

    man, out = _unscored_manifest(tmp_path), tmp_path / "out"
    _process(monkeypatch, 1)
    with pytest.raises(TMBRBBundleError) as e:
        run_batch(man, out, bundle=tmp_path / "no-bundle", device="cpu", progress_bar=False)
    state = json.loads((out / "summary.rank1.json").read_text())
    assert state == {"run": "tmbrb:t1", "rank": 1, "world": 2, "share": 1, "done": 0, "finished": True,
                     "error": f"TMBRBBundleError: {e.value}"}
    _process(monkeypatch, 0)
    run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, progress_bar=False, wait_timeout_s=5)
    rows = _read_summary(out)
    assert [r["status"] for r in rows] == ["failed"] * 3 and rows[0]["error"] == NO_SEED
    assert rows[1]["error"].startswith("not scored: process 1 stopped: TMBRBBundleError: ")
    assert rows[1]["row"] == "2" and rows[1]["case_id"] == "c2"


def _bar_states(err, n):
    """(cases counted, last case shown) at each refresh of a tqdm bar over n cases, in order."""
    return re.findall(r"(\d+)/%d \[[^\]]*?(?:, (c\d): \w+)?\]" % n, err)


def test_a_single_process_bar_counts_its_own_cases_and_is_closed(tiny_bundle, tmp_path, monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TMBRB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    man, out = _unscored_manifest(tmp_path), tmp_path / "out"
    assert run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, pictures=False) == out / "summary.csv"
    err = capsys.readouterr().err
    shown = [s for s in _bar_states(err, 3) if s[1]]
    assert shown[0] == ("1", "c1") and shown[-1] == ("3", "c3") and ("2", "c2") in shown  # one a case, none ahead
    assert err.startswith("\rTMBRB batch: ") or err.startswith("TMBRB batch: ")
    assert err.endswith("\n")  # closed: the line is ended for what the caller prints next


def test_process_0s_bar_counts_the_others_cases_while_it_scores_and_while_it_waits(tiny_bundle, tmp_path,
                                                                                 monkeypatch, capsys):
    """Process 1 has scored one of its two rows when process 0 starts, and finishes while process 0 waits."""
    man = _manifest(tmp_path / "m.csv", [["c1", "cts/c1.nrrd", "", ""], ["c2", "cts/c2.nrrd", "1,2,3", "1"],
                                         ["c3", "cts/c3.nrrd", "", "0"], ["c4", "cts/c4.nrrd", "", ""]])
    out, half, whole = tmp_path / "out", tmp_path / "half", tmp_path / "whole"
    names = ("summary.rank1.csv", "summary.rank1.json")

    def keep(dst):
        dst.mkdir()
        for name in names:
            shutil.copy(out / name, dst / name)

    _process(monkeypatch, 1)
    run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, pictures=False,
              on_case=lambda i, n, row: keep(half) if i == 2 else None)
    keep(whole)
    assert json.loads((half / names[1]).read_text())["done"] == 1
    for name in names:  # process 1 as it was after its first row
        shutil.copy(half / name, out / name)

    def finish_later():
        time.sleep(0.5)
        for name in names:  # the rows, then the state that says finished
            shutil.copy(whole / name, out / (name + ".new"))
            os.replace(out / (name + ".new"), out / name)

    waiting = []

    def on_case(i, n, row):
        if i == 3:  # process 0's last row: process 1 finishes while process 0 waits for it
            waiting.append(threading.Thread(target=finish_later))
            waiting[0].start()

    _process(monkeypatch, 0)
    capsys.readouterr()
    run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, pictures=False, on_case=on_case,
              wait_timeout_s=60)
    waiting[0].join()
    err = capsys.readouterr().err
    shown = _bar_states(err, 4)
    # after c1: its own 1 + process 1's 1; after c3: 3; then process 1's second row, seen while waiting
    assert [s for s in shown if s[1]][:2] == [("2", "c1"), ("3", "c3")]
    assert shown[-1][0] == "4" and err.endswith("\n")
    assert [r["case_id"] for r in _read_summary(out)] == ["c1", "c2", "c3", "c4"]


def test_process_0_gives_up_on_a_process_that_never_starts_after_the_wait_given(tiny_bundle, tmp_path, monkeypatch):
    man, out = _unscored_manifest(tmp_path), tmp_path / "out"
    _process(monkeypatch, 0)
    run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, pictures=False, progress_bar=False,
              wait_timeout_s=0.3)
    rows = _read_summary(out)
    assert [(r["case_id"], r["status"]) for r in rows] == [("c1", "failed"), ("c2", "failed"), ("c3", "failed")]
    assert rows[1]["error"] == "not scored: process 1 of 2 did not finish (no news from any process for 0.3 s)"
    assert rows[0]["error"] == rows[2]["error"] == NO_SEED


def test_a_process_says_it_has_started_before_it_loads_its_model(tiny_bundle, tmp_path, monkeypatch):
    """Process 0 reads the others' states while it waits: a process loading its model (seconds for a real bundle)
    is started, with its share of the rows, and not finished."""
    from TMBRBLib import bundle as bundle_module

    man, out = _unscored_manifest(tmp_path), tmp_path / "out"
    seen = []

    def load(path=None):
        seen.append(json.loads((out / "summary.rank1.json").read_text()))
        return tiny_bundle

    monkeypatch.setattr(bundle_module, "load_bundle", load)
    _process(monkeypatch, 1)
    run_batch(man, out, bundle=None, device="cpu", n_shifts=0, pictures=False, progress_bar=False)
    assert seen == [{"run": "tmbrb:t1", "rank": 1, "world": 2, "share": 1, "done": 0, "finished": False,
                     "error": None}]


def test_several_processes_without_a_run_id_are_refused_before_writing(tiny_bundle, tmp_path, monkeypatch):
    man, out = _unscored_manifest(tmp_path), tmp_path / "out"
    _process(monkeypatch, 1, run=None)
    with pytest.raises(TMBRBInputError) as e:
        run_batch(man, out, bundle=tiny_bundle, device="cpu", progress_bar=False)
    assert str(e.value) == (
        "This is process 1 of 2 (WORLD_SIZE), but nothing identifies the run. Start the processes with torchrun "
        "--standalone, srun, or set TMBRB_RUN_ID to the same new value for every process.")
    assert not out.exists()


def test_a_single_process_writes_the_summary_after_each_case(tiny_bundle, tmp_path):
    man, out = _unscored_manifest(tmp_path), tmp_path / "new" / "out"  # folders made as needed
    sizes = []
    run_batch(man, out, bundle=tiny_bundle, progress_bar=False,  # device "auto": the CPU here
              on_case=lambda i, n, row: sizes.append(len(_read_summary(out))))
    assert sizes == [1, 2, 3]
    far = hashlib.sha256(str(tmp_path / "cts" / "c2.nrrd").encode()).hexdigest()[:12]  # two folders up: by name
    assert [(r["row"], r["error"]) for r in _read_summary(out)] == [
        ("1", NO_SEED), ("2", f"The CT 'c2.nrrd [path sha256 {far}]' does not exist. Check the path."), ("3", NO_SEED)]
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]


def _earlier_result(case_out: Path, keyed: dict, **extra):
    """A result.json as an earlier run wrote it for these inputs (the fields the summary reads)."""
    case_out.mkdir(parents=True)
    res = {"score": 0.625, "tta": {"mean": 0.6, "std": 0.05}, "warnings": ["w1", "w2"],
           "risk": {"os": {"group": "high"}, "pfs": {"group": "low"}, "ecog": 1,
                    "ecog_combined": {"os": {"relative_hazard": 2.5}, "pfs": {"relative_hazard": 1.5}}},
           "attention": {"tumour": 0.5, "ring": 0.25},
           "inputs": {"inputs_key": inputs_key(keyed), "keyed_inputs": keyed}, **extra}
    (case_out / "result.json").write_text(json.dumps(res), encoding="utf-8")
    return (case_out / "result.json").read_bytes()


def test_a_case_done_before_is_summarised_from_its_result_without_scoring(tiny_bundle, tmp_path):
    (tmp_path / "cts").mkdir()
    (tmp_path / "cts" / "c1.nrrd").write_bytes(b"not read: the case is done")
    man = _manifest(tmp_path / "m.csv", [["c1", "cts/c1.nrrd", "1,2,3", "1"]])
    out = tmp_path / "out"
    case = plan_cases(read_manifest(man), tmp_path)[0][0]
    before = _earlier_result(out / "c1", case_inputs(case, tiny_bundle, 0, None),
                             model={"path": "old/b", "modified": True})
    run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, progress_bar=False)
    (row,) = _read_summary(out)
    assert row == {"row": "1", "case_id": "c1", "status": "done-before", "score": "0.625", "tta_mean": "0.6",
                   "tta_std": "0.05", "os_group": "high", "pfs_group": "low", "ecog": "1",
                   "os_relative_hazard": "2.5", "pfs_relative_hazard": "1.5", "attention_tumour": "0.5",
                   "attention_ring": "0.25", "n_warnings": "2", "seconds": "0.0", "error": "",
                   "note": "model bundle old/b MODIFIED after export",
                   "inputs_key": inputs_key(case_inputs(case, tiny_bundle, 0, None)), "output_dir": "c1"}
    assert (out / "c1" / "result.json").read_bytes() == before
    # another shift count: scored again (the file is no CT: a failed row that says what changed), the old kept
    run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=1, progress_bar=False)
    (row,) = _read_summary(out)
    assert row["status"] == "failed" and row["note"] == "re-scored: shift count changed"
    assert row["error"].startswith("Could not read the CT '../cts/c1.nrrd'")
    assert row["inputs_key"] == inputs_key(case_inputs(case, tiny_bundle, 1, None))
    assert (out / "c1" / "result.json").read_bytes() == before
    # done before, with DICOM objects asked for: both notes, in order
    run_batch(man, out, bundle=tiny_bundle, device="cpu", n_shifts=0, progress_bar=False, dicom_out=True)
    (row,) = _read_summary(out)
    assert (row["status"], row["note"]) == ("done-before", "model bundle old/b MODIFIED after export; "
                                            + NOT_DICOM.replace("'ct.nrrd'", "'c1.nrrd'"))


def test_a_process_rows_are_merged_as_written_even_with_line_breaks_in_a_cell(tmp_path):
    """The csv module's rule (newline=""): a quoted cell keeps its \\r\\n; read without it, it would become \\n."""
    files = RankFiles(tmp_path, 2, "tmbrb:now")
    error = "Could not read the CT 'a.nrrd' (line 1\r\nline 2; é)"
    files.publish(1, [{**failed_row("c2", error, 1.5), "row": 2}], 1, finished=True)
    assert files.rows(1)[0]["error"] == error
    merged = files.merge([], [(None, "c1", ""), (None, "c2", "")], 1.0, {1: files.state(1)})
    assert merged[1]["error"] == error and merged[1]["seconds"] == "1.5"


def test_a_batch_writes_the_pictures_unless_told_not_to(small_ct, tiny_bundle, tmp_path):
    man = _manifest(tmp_path / "m.csv", [["a", str(small_ct), ",".join(map(str, TUMOUR)), ""]])
    run_batch(man, tmp_path / "out", bundle=tiny_bundle, device="cpu", n_shifts=0, progress_bar=False)
    assert _read_summary(tmp_path / "out")[0]["status"] == "ok"
    assert {p.suffix for p in (tmp_path / "out" / "a").iterdir()} == {".json", ".nrrd", ".png"}


NOT_DICOM = ("no DICOM export: the CT 'ct.nrrd' is not a DICOM series folder (DICOM objects are made for DICOM inputs "
             "only; the results are in the case folder)")


def test_run_case_rows_say_their_time_why_a_case_was_scored_again_and_where_dicom_went(small_ct, tiny_bundle,
                                                                                    tmp_path):
    import time

    from TMBRBLib.pipeline import Scorer

    seed = ",".join(map(str, TUMOUR))
    plan = plan_cases([{"case_id": "c", "ct": str(small_ct), "seed_lps": seed}], tmp_path)[0]
    out, scorer = tmp_path / "out", Scorer(tiny_bundle, "cpu")
    out.mkdir()
    t0 = time.perf_counter()
    row = batch.run_case(plan, out, scorer, tiny_bundle, 0, None, False)
    wall = time.perf_counter() - t0
    assert (row["status"], row["note"]) == ("ok", "") and 0 < row["seconds"] <= round(wall, 2) + 0.01
    row = batch.run_case(plan, out, scorer, tiny_bundle, 1, None, False)  # another shift count: scored again
    assert (row["status"], row["note"]) == ("ok", "re-scored: shift count changed")
    assert json.loads((out / "c" / "result.json").read_text())["inputs"]["n_shifts"] == 1
    # asked for DICOM objects of a case done before: exported now (a CT that is no series: the note says so)
    row = batch.run_case(plan, out, scorer, tiny_bundle, 1, None, False, dicom_out=True)
    assert (row["status"], row["note"]) == ("done-before", NOT_DICOM)
    (out / "c" / "dicom").mkdir()
    (out / "c" / "dicom" / "seg.dcm").write_bytes(b"exported by an earlier run")
    row = batch.run_case(plan, out, scorer, tiny_bundle, 1, None, False, dicom_out=True)
    assert (row["status"], row["note"]) == ("done-before", "")  # already there: not again
    # the row's own dicom_out column asks for them too; scored again, both notes in order
    plan = plan_cases([{"case_id": "c", "ct": str(small_ct), "seed_lps": seed, "dicom_out": "yes"}], tmp_path)[0]
    row = batch.run_case(plan, out, scorer, tiny_bundle, 0, None, False)
    assert (row["status"], row["note"]) == ("ok", "re-scored: shift count changed; " + NOT_DICOM)


def test_an_unexpected_error_in_a_case_is_a_failed_row_with_its_traceback_in_a_log(small_ct, tiny_bundle, tmp_path,
                                                                                   monkeypatch):
    seed = ",".join(map(str, TUMOUR))
    (case, case_id, _), = plan = plan_cases([{"case_id": "c", "ct": str(small_ct), "seed_lps": seed}], tmp_path)
    out = tmp_path / "out"
    _earlier_result(out / "c", case_inputs(case, tiny_bundle, 0, None))
    before = (out / "c" / "result.json").read_bytes()

    def broken(*a, **k):
        raise ValueError(f"boom in '{out / 'c' / 'x.bin'}'")

    monkeypatch.setattr(batch, "score_into_folder", broken)
    row = batch.run_case(plan[0], out, None, tiny_bundle, 2, None, False)
    assert row == {**{k: "" for k in SUMMARY_FIELDS}, "case_id": "c", "status": "failed",  # paths shown relative
                   "error": "internal error: ValueError: boom in 'c/x.bin'", "seconds": row["seconds"],
                   "note": "re-scored: shift count changed",
                   "inputs_key": inputs_key(case_inputs(case, tiny_bundle, 2, None))}
    assert 0 <= row["seconds"] < 60
    log = (out / "c.error.log").read_text(encoding="utf-8")
    assert log.startswith("Traceback (most recent call last):")
    assert log.rstrip().endswith(f"ValueError: boom in '{out / 'c' / 'x.bin'}'")
    assert (out / "c" / "result.json").read_bytes() == before  # the earlier result stays


def test_a_dicom_series_case_gets_its_dicom_objects_in_its_folder(tiny_bundle, tmp_path):
    try:
        from TMBRBLib.dicom_out import DICOM_OUT_NAMES, write_ct_series
    except ImportError:
        from _prereq import require
        require("dev-package", "DICOM export needs highdicom and pydicom (pip install 'tmbrb[dicom]')")
    from TMBRBLib.pipeline import Scorer

    ct, _ = make_ct(size=(48, 48, 16), spacing=(1.0, 1.0, 2.0), tumour_lps=TUMOUR, radius_mm=6, noise=10)
    write_ct_series(ct, tmp_path / "series")
    row = {"case_id": "c", "ct": "series", "seed_lps": ",".join(map(str, TUMOUR)), "dicom_out": "yes"}
    out = tmp_path / "out"
    out.mkdir()
    got = batch.run_case(plan_cases([row], tmp_path)[0], out, Scorer(tiny_bundle, "cpu"), tiny_bundle, 0, None, False)
    assert (got["status"], got["note"]) == ("ok", "DICOM objects in dicom/ (seg.dcm, cam_pm.dcm, report_sr.dcm)")
    assert sorted(p.name for p in (out / "c" / "dicom").iterdir()) == sorted(DICOM_OUT_NAMES)
    assert sorted(p.name for p in out.iterdir()) == ["c"]  # no temporary folder left
    for p in (out / "c" / "dicom").iterdir():  # lost since: made again for the case done before
        p.unlink()
    got = batch.run_case(plan_cases([row], tmp_path)[0], out, None, tiny_bundle, 0, None, False)
    assert (got["status"], got["note"]) == ("done-before", "DICOM objects in dicom/ (seg.dcm, cam_pm.dcm, "
                                                           "report_sr.dcm)")
    assert sorted(p.name for p in (out / "c" / "dicom").iterdir()) == sorted(DICOM_OUT_NAMES)


def test_a_case_that_fails_while_written_leaves_no_folder(small_ct, tiny_bundle, tmp_path):
    from TMBRBLib.pipeline import Scorer

    (case, _, _), = plan_cases([{"case_id": "c", "ct": str(small_ct), "seed_lps": ",".join(map(str, TUMOUR))}],
                               tmp_path)
    out = tmp_path / "out"
    out.mkdir()

    def broken(folder, ct):
        assert (folder / "result.json").is_file()  # called once the outputs are written
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        batch.score_into_folder(case, out / "c", scorer=Scorer(tiny_bundle, "cpu"), keyed={}, key="k", n_shifts=0,
                                ring_width_mm=None, pictures=False, after_write=broken)
    assert list(out.iterdir()) == []  # neither the case folder nor its temporary one
