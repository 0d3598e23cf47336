"""Input handling every statistics function shares: CSV files, numbers, missing rows, labels, events and times.

Each kind of bad input is checked by its whole message (it names the problem and what to do), and the accepted
inputs by the values that come out of the public functions.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats import TMBRBStatsInputError, kaplan_meier, roc_analysis
from TMBRBLib.stats._input import (binarize_labels, drop_nan_rows, read_csv, require_columns, require_unique,
                                   to_numeric)


# ------------------------------------------------------------------------------------------ CSV files
def test_read_csv_reads_a_table(tmp_path):
    p = tmp_path / "cohort.csv"
    p.write_text("case,score\na,0.5\nb,0.25\n")
    df = read_csv(p)
    assert df["case"].tolist() == ["a", "b"] and df["score"].tolist() == [0.5, 0.25]


def test_read_csv_missing_file_or_folder(tmp_path):
    for p in (tmp_path / "none.csv", tmp_path):
        with pytest.raises(TMBRBStatsInputError) as exc:
            read_csv(str(p))
        assert str(exc.value) == f"CSV file not found: {p}. Check the path given on the command line."


def test_read_csv_header_only_and_malformed(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("case,score\n")
    with pytest.raises(TMBRBStatsInputError) as exc:
        read_csv(p)
    assert str(exc.value) == f"{p} has a header but no data rows. Add the cohort rows and try again."
    bad = tmp_path / "bad.csv"
    bad.write_text("case,score\na,1\nb,2,3,4\n")
    with pytest.raises(TMBRBStatsInputError) as exc:
        read_csv(bad)
    # pandas' own text ends with a line break: the message stays on one line
    assert str(exc.value) == (f"Could not read {bad} as CSV (Error tokenizing data. C error: Expected 2 fields in line 3, "
                              "saw 4). Save it as comma-separated text with a header row.")
    empty = tmp_path / "nothing.csv"
    empty.write_text("")
    with pytest.raises(TMBRBStatsInputError, match=r"^Could not read .*nothing\.csv as CSV"):
        read_csv(empty)


def test_missing_columns_are_named_with_the_ones_there():
    with pytest.raises(TMBRBStatsInputError) as exc:
        require_columns(pd.DataFrame({"a": [1], "b": [2]}), ["a", "c", "d"])
    assert str(exc.value) == ("input: missing column(s) ['c', 'd']; the table has columns ['a', 'b']. Name the right "
                              "columns with the command-line flags (e.g. --score, --label, --time, --event).")
    require_columns(pd.DataFrame({"a": [1]}), ["a"])  # present: no error


def test_duplicated_ids_are_counted_after_stripping_spaces():
    require_unique(pd.DataFrame({"case": ["a", "b", "c"]}), "case")
    with pytest.raises(TMBRBStatsInputError) as exc:
        require_unique(pd.DataFrame({"case": ["a", " a", "b", "b", "b", "c"]}), "case", "predictions CSV")
    assert str(exc.value) == ("predictions CSV: 2 case id(s) appear on several rows ('b' 3 times, 'a' 2 times); each "
                              "patient must appear once, or they would be counted twice. Keep one row per patient.")
    many = pd.DataFrame({"id": [f"p{i}" for i in range(7)] * 2})
    with pytest.raises(TMBRBStatsInputError, match=r"^input: 7 id id\(s\) appear on several rows \(('p\d' 2 times, ){4}"
                                                   r"'p\d' 2 times, \.\.\.\); "):
        require_unique(many, "id")


# ------------------------------------------------------------------------------------------ numbers
def test_numbers_from_text_bools_and_empty_cells():
    np.testing.assert_array_equal(to_numeric(pd.Series([True, False]), "b"), [1.0, 0.0])
    got = to_numeric(pd.Series(["1.5", "", "  ", None, "2", "-3e1"], dtype=object), "x")
    np.testing.assert_array_equal(got, [1.5, np.nan, np.nan, np.nan, 2.0, -30.0])
    assert got.dtype == float
    ints = to_numeric(pd.Series([1, 2], dtype="Int64").astype("Int64"), "i")
    assert ints.dtype == float and ints.tolist() == [1.0, 2.0]


def test_non_numeric_values_listed_once_each_up_to_five():
    values = ["1", "n/a", "n/a", "x", " ", "a", "b", "c", "d"]
    with pytest.raises(TMBRBStatsInputError) as exc:
        to_numeric(values, "tmb")
    assert str(exc.value) == ("column 'tmb' must be numeric but has non-numeric value(s) ['n/a', 'x', 'a', 'b', 'c'] "
                              "(7 row(s)). Fix or remove these entries (empty cells are treated as missing).")


def test_missing_rows_dropped_in_every_column_and_counted():
    cols = {"f": np.array([1.0, np.nan, 3.0, 4.0]), "o": np.array(["a", "b", None, "d"], dtype=object),
            "i": np.array([1, 2, 3, 4])}
    out, dropped = drop_nan_rows(cols)
    assert dropped == 2
    assert out["f"].tolist() == [1.0, 4.0] and out["o"].tolist() == ["a", "d"] and out["i"].tolist() == [1, 4]
    assert drop_nan_rows({}) == ({}, 0)
    with pytest.raises(TMBRBStatsInputError) as exc:
        drop_nan_rows({"a": np.zeros(3), "b": np.zeros(2)})
    assert str(exc.value) == "column 'b' has 2 values but others have 3; give arrays of equal length."


# ------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize("labels,positive,case,control,y", [
    ([0, 1, 1, 0], None, 1, 0, [0, 1, 1, 0]),
    ([0.0, 1.0, 1.0], 0, 0, 1, [1, 0, 0]),
    (["Good", "Poor", "Good"], None, "Poor", "Good", [0, 1, 0]),
    (["Good", "Poor", "Good"], "Good", "Good", "Poor", [1, 0, 1]),
    ([1, 2, 2], "2", 2, 1, [0, 1, 1]),
    ([1, 2, 2], 1.0, 1, 2, [1, 0, 0]),
    ([0.5, 1.5, 0.5], None, 1.5, 0.5, [0, 1, 0]),
    (["1", "0", "1"], None, 1, 0, [1, 0, 1]),
])
def test_labels_to_cases_and_controls(labels, positive, case, control, y):
    b = binarize_labels(labels, "label", positive)
    assert b.y.tolist() == y
    assert (b.case_level, b.control_level) == (case, control)
    assert type(b.case_level) is type(case) and type(b.control_level) is type(control)


@pytest.mark.parametrize("labels,positive,message", [
    ([0, 1, None], None, "column 'outcome' has missing values; drop those rows first."),
    ([1, 1, 1], None, "column 'outcome' has a single class (1.0 for all 3 rows); ROC/AUC needs both cases and "
                      "controls. Check the label column and the cut-off used to make it."),
    (["a", "b", "c"], None, "column 'outcome' must have exactly two classes but has 3 (['a', 'b', 'c']...). "
                            "Binarise it first (e.g. TMB >= 10) or pick the label column."),
    (["Good", "Poor"], "poor", "positive class 'poor' is not one of the values ['Good', 'Poor'] of column 'outcome'."),
    ([0, 1], "yes", "positive class 'yes' is not one of the values [0.0, 1.0] of column 'outcome'."),
])
def test_bad_labels(labels, positive, message):
    with pytest.raises(TMBRBStatsInputError) as exc:
        binarize_labels(labels, "outcome", positive)
    assert str(exc.value) == message


def test_roc_reports_the_levels_it_took_as_case_and_control():
    r = roc_analysis(["Good", "Poor", "Good", "Poor"], [0.1, 0.7, 0.4, 0.3])
    assert (r.case_level, r.control_level, r.n_cases, r.n_controls) == ("Poor", "Good", 2, 2)
    assert r.auc == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------ events and times
@pytest.mark.parametrize("time,event,message", [
    ([1, 2, 3], [1, 2, 1], "column 'event' must be 0 (censored) or 1 (event) but has value(s) [2.0]. Recode it "
                           "(e.g. R's lung status 1/2 -> 0/1)."),
    ([1, 2, 3], [-1, 0.5, 1], "column 'event' must be 0 (censored) or 1 (event) but has value(s) [-1.0, 0.5]. Recode "
                              "it (e.g. R's lung status 1/2 -> 0/1)."),
    ([1, -2, 3], [1, 0, 1], "column 'time' has negative survival times; times must be >= 0."),
    ([1, 2, 3], [0, 0, 0], "Kaplan-Meier: all 3 observations are censored (no events), so survival cannot be "
                           "estimated or compared. Check the event column coding (1 = event) or use a cohort with "
                           "events."),
])
def test_bad_survival_input(time, event, message):
    with pytest.raises(TMBRBStatsInputError) as exc:
        kaplan_meier(time, event)
    assert str(exc.value) == message


def test_time_zero_and_float_events_are_accepted():
    r = kaplan_meier([0.0, 2.0, 3.0], [1.0, 0.0, 1.0])
    assert r.curves[0].table["surv"].tolist()[:1] == [pytest.approx(2 / 3)]


# ------------------------------------------------------------------------------------------ limits of the lists shown
def test_duplicated_ids_list_ends_with_dots_only_past_five():
    five = pd.DataFrame({"case": [f"p{i}" for i in range(5)] * 2})
    with pytest.raises(TMBRBStatsInputError) as exc:
        require_unique(five, "case")
    assert "('p0' 2 times, 'p1' 2 times, 'p2' 2 times, 'p3' 2 times, 'p4' 2 times); " in str(exc.value)
    six = pd.DataFrame({"case": [f"p{i}" for i in range(6)] * 2})
    with pytest.raises(TMBRBStatsInputError) as exc:
        require_unique(six, "case")
    assert str(exc.value).startswith("input: 6 case id(s) appear on several rows (") and "2 times, ...); " in str(exc.value)


def test_whole_numbers_given_as_text_come_back_as_floats():
    got = to_numeric(pd.Series(["1", "2", "30"], dtype=object), "ecog")
    assert got.dtype == float and got.tolist() == [1.0, 2.0, 30.0]


def test_seven_label_classes_show_the_first_six():
    with pytest.raises(TMBRBStatsInputError) as exc:
        binarize_labels(list("abcdefg"), "stage")
    assert str(exc.value) == ("column 'stage' must have exactly two classes but has 7 (['a', 'b', 'c', 'd', 'e', 'f']...). "
                              "Binarise it first (e.g. TMB >= 10) or pick the label column.")


@pytest.mark.parametrize("event,shown", [
    ([0, 2, 1, 0], "[2.0]"),                                 # 0 and 1 are never listed
    ([2, 3, 4, 5, 6, 7, 1], "[2.0, 3.0, 4.0, 5.0, 6.0]"),    # at most five
])
def test_bad_event_values_are_listed_without_the_good_ones(event, shown):
    with pytest.raises(TMBRBStatsInputError) as exc:
        kaplan_meier(list(range(1, len(event) + 1)), event)
    assert str(exc.value).startswith(f"column 'event' must be 0 (censored) or 1 (event) but has value(s) {shown}. ")
