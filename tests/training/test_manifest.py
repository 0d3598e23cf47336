"""The manifest reader: what it accepts, and a clear message for each kind of bad input."""

from __future__ import annotations

import csv

import pytest

from TMBRBLib.errors import TMBRBInputError
from training.manifest import check_for_training, read_manifest


def _write(path, rows, header=None):
    header = header or list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture()
def ct_file(tmp_path):
    p = tmp_path / "ct.nrrd"
    p.write_bytes(b"not read by the manifest reader")
    return p


def _row(**kw):
    r = {"case": "a", "ct": "ct.nrrd", "seed": "1,2,3", "box": "0,0,0,10,10,10", "tmb": "12", "split": "train"}
    r.update(kw)
    return r


def test_reads_paths_relative_to_manifest_labels_from_tmb_and_ras(tmp_path, ct_file):
    rows = [_row(), _row(case="b", tmb="3.5", split="validation"),
            {"case": "c", "ct": "ct.nrrd", "seed_ras": "1,2,3", "box_ras": "0,0,0,10,10,10", "label": "High",
             "split": "test"}]
    header = ["case", "ct", "seed", "box", "tmb", "split", "seed_ras", "box_ras", "label"]
    cases = read_manifest(_write(tmp_path / "m.csv", rows, header))
    assert [c.label for c in cases] == [1, 0, 1]          # 12 >= 10 -> High; 3.5 -> Low; label column
    assert [c.split for c in cases] == ["train", "val", "test"]
    assert cases[0].ct == ct_file.resolve() or cases[0].ct.resolve() == ct_file.resolve()
    assert cases[2].seed_lps == (-1.0, -2.0, 3.0)        # RAS -> LPS
    assert cases[2].box.min == (-10.0, -10.0, 0.0) and cases[2].box.max == (0.0, 0.0, 10.0)
    # threshold is an option
    assert [c.label for c in read_manifest(tmp_path / "m.csv", tmb_threshold=13)][:2] == [0, 0]


@pytest.mark.parametrize("change, message", [
    ({"split": "holdout"}, "split 'holdout'"),
    ({"ct": "missing.nrrd"}, "does not exist"),
    ({"box": "0,0,0,10,10"}, "must be 6 finite numbers"),
    ({"box": "0,0,0,10,0,10"}, "zero size"),
    ({"seed": "a,b,c"}, "is not 3 numbers"),
    ({"tmb": "many"}, "is not a number"),
    ({"tmb": "-2"}, "non-negative"),
    ({"tmb": ""}, "neither a TMB value nor a label"),
])
def test_bad_rows_name_the_problem(tmp_path, ct_file, change, message):
    with pytest.raises(TMBRBInputError, match=message) as e:
        read_manifest(_write(tmp_path / "m.csv", [_row(**change)]))
    assert "line 2" in str(e.value)


def test_bad_files(tmp_path, ct_file):
    with pytest.raises(TMBRBInputError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(TMBRBInputError, match=r"lacks the column\(s\) \['split'\]"):
        read_manifest(_write(tmp_path / "m.csv", [{"case": "a", "ct": "ct.nrrd", "box": "0,0,0,1,1,1"}]))
    with pytest.raises(TMBRBInputError, match="used twice"):
        read_manifest(_write(tmp_path / "m.csv", [_row(), _row()]))
    (tmp_path / "e.csv").write_text("case,ct,split\n")
    with pytest.raises(TMBRBInputError, match="no cases"):
        read_manifest(tmp_path / "e.csv")
    with pytest.raises(TMBRBInputError, match="no bounding box"):
        read_manifest(_write(tmp_path / "m.csv", [_row(box="")]))


def test_training_needs_both_classes_in_train_and_val(tmp_path, ct_file):
    rows = [_row(case="a"), _row(case="b", tmb="1"), _row(case="c", split="val"), _row(case="d", split="val")]
    with pytest.raises(TMBRBInputError, match="'val' split holds only High-TMB"):
        check_for_training(read_manifest(_write(tmp_path / "m.csv", rows)))
    with pytest.raises(TMBRBInputError, match="no 'val' cases"):
        check_for_training(read_manifest(_write(tmp_path / "m.csv", rows[:2])))


def test_reads_the_phantom_generators_column_names(tmp_path, ct_file):
    (tmp_path / "t.nrrd").write_bytes(b"x")
    (tmp_path / "s.nrrd").write_bytes(b"x")
    row = {"case_id": "case_0001", "split": "validation", "ct": "ct.nrrd", "mask": "t.nrrd", "signal_mask": "s.nrrd",
           "seed_lps_x": "1", "seed_lps_y": "2", "seed_lps_z": "3", "box_min_x": "0", "box_min_y": "0",
           "box_min_z": "0", "box_max_x": "4", "box_max_y": "5", "box_max_z": "6", "tmb": "10", "label": "1",
           "signal": "peritumoral"}
    (c,) = read_manifest(_write(tmp_path / "m.csv", [row]))
    assert (c.case_id, c.split, c.label, c.seed_lps) == ("case_0001", "val", 1, (1.0, 2.0, 3.0))
    assert c.box.max == (4.0, 5.0, 6.0)
    assert c.tumour.name == "t.nrrd" and c.signal.name == "s.nrrd"  # 'signal' names the kind, not a file
