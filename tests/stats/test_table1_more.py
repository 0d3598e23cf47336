"""Table 1 beyond two groups and large counts, against R (tests/stats/fixtures/make_reference_edges.R): one-way
ANOVA, Fisher's exact test on 2x2 and 3x2 tables, the Monte Carlo Fisher test on a 3x3 table; and the cells, missing
rows, p formatting, group order, printed, JSON and HTML forms, and messages (issue 16)."""
from __future__ import annotations

import json
import statistics
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats import TMBRBStatsInputError, table1
from TMBRBLib.stats.table1 import categorical_test, fisher_exact_2xc

from _stats_testdata import FIXTURES


@lru_cache(maxsize=None)
def ref() -> dict:
    with open(FIXTURES / "reference_table1.json") as f:
        return json.load(f)


def _by_level(result):
    return result.table.set_index(["variable", "level"])


def test_three_groups_use_anova_as_r():
    r = ref()
    df = pd.DataFrame({"g": r["group"], "age": r["age"]})
    res = table1(df, "g", continuous=["age"])
    row = _by_level(res).loc[("age", "mean±SD")]
    assert row["test"] == "ANOVA" and row["p"] == pytest.approx(r["anova_p"], rel=1e-9)
    assert row["p_text"] == "0.002"
    a = r["age"][:6]
    assert row["A (n=6)"] == f"{statistics.mean(a):.1f}±{statistics.stdev(a):.1f}" == "63.8±6.6"
    assert row["All (n=15)"] == f"{statistics.mean(r['age']):.1f}±{statistics.stdev(r['age']):.1f}"
    assert list(res.table.columns) == ["variable", "level", "All (n=15)", "A (n=6)", "B (n=5)", "C (n=4)", "p", "p_text",
                                       "test"]
    assert res.groups == ["A", "B", "C"] and res.group == "g"


def _stage_cohort():
    # stage by group: high I 3, II 1; low II 2, III 4 (R: matrix(c(3, 1, 0, 0, 2, 4), nrow = 3)); one row without group
    return pd.DataFrame({"g": ["high"] * 4 + ["low"] * 6 + [None],
                         "stage": ["I", "I", "I", "II", "II", "II", "III", "III", "III", "III", "I"]})


def test_small_counts_use_fishers_exact_test_as_r():
    res = table1(_stage_cohort(), "g", categorical=["stage"])
    cells = _by_level(res)
    head = cells.loc[("stage", "")]
    assert head["test"] == "Fisher" and head["p"] == pytest.approx(ref()["fisher_3x2"]["p"], rel=1e-9)
    assert head["p_text"] == "0.033"
    assert cells.loc[("stage", "I"), "high (n=4)"] == "3 (75.0)" and cells.loc[("stage", "III"), "low (n=6)"] == "4 (66.7)"
    assert cells.loc[("stage", "III"), "high (n=4)"] == "0 (0.0)" and cells.loc[("stage", "II"), "All (n=10)"] == "3 (30.0)"
    assert res.n_missing_group == 1
    t = np.array(ref()["fisher_3x2"]["table"]).reshape(2, 3).T  # R fills by column
    assert fisher_exact_2xc(t) == pytest.approx(ref()["fisher_3x2"]["p"], rel=1e-9)
    assert fisher_exact_2xc(t.T) == fisher_exact_2xc(t)  # 3 x 2 or 2 x 3, the same test
    f22 = np.array(ref()["fisher_2x2"]["table"]).reshape(2, 2).T
    assert categorical_test(f22) == ("Fisher", pytest.approx(ref()["fisher_2x2"]["p"], rel=1e-9))


def test_larger_tables_with_small_counts_sample_fishers_test():
    t = np.array(ref()["fisher_3x3"]["table"]).reshape(3, 3).T
    test, p = categorical_test(t)
    assert test == "Fisher (Monte Carlo)"
    assert p == pytest.approx(ref()["fisher_3x3"]["p"], abs=0.01)  # 20,000 draws: standard error 0.002
    assert categorical_test(t) == (test, p)  # seeded
    with pytest.raises(ValueError, match="two rows or two columns"):
        fisher_exact_2xc(t)
    assert fisher_exact_2xc(np.array([[3, 1, 0], [0, 2, 4]]), max_tables=1) is None  # too many tables to enumerate


def test_empty_rows_and_single_levels():
    t = np.array([[3, 1, 0], [0, 0, 0], [0, 2, 4]]).T  # a level nobody has
    assert categorical_test(t) == categorical_test(t[:, [0, 2]])
    assert categorical_test(np.array([[3, 4]]))[0] == "none" and np.isnan(categorical_test(np.array([[3, 4]]))[1])
    res = table1(pd.DataFrame({"g": ["a", "a", "b", "b"], "s": ["x"] * 4}), "g", categorical=["s"])
    head = _by_level(res).loc[("s", "")]
    assert head["test"] == "none" and head["p_text"] == ""


def test_missing_values_get_their_own_row_and_tiny_groups_no_test():
    df = pd.DataFrame({"g": ["A", "A", "B", "B", "B"], "x": [1, 2, 3, np.nan, 5], "c": ["u", None, "v", "v", "u"]})
    res = table1(df, "g", continuous=["x"], categorical=["c"])
    cells = _by_level(res)
    assert cells.loc[("x", "missing"), "All (n=5)"] == "1" and cells.loc[("x", "missing"), "B (n=3)"] == ""
    assert cells.loc[("c", "missing"), "All (n=5)"] == "1"
    assert cells.loc[("c", "u"), "A (n=2)"] == "1 (100.0)"  # percentages of the non-missing values
    assert cells.loc[("x", "mean±SD"), "B (n=3)"] == "4.0±1.4"
    assert "missing" not in table1(df.fillna({"x": 0, "c": "u"}), "g", continuous=["x"], categorical=["c"]).table["level"].tolist()
    # a group with one value has no SD and no test
    one = pd.DataFrame({"g": ["A", "B", "B"], "x": [1.0, 2.0, 4.0]})
    row = _by_level(table1(one, "g", continuous=["x"])).loc[("x", "mean±SD")]
    assert (row["A (n=1)"], row["B (n=2)"], row["test"], row["p_text"]) == ("", "3.0±1.4", "none", "")
    assert np.isnan(row["p"])


def test_tiny_p_reads_below_one_in_a_thousand():
    df = pd.DataFrame({"g": ["a"] * 5 + ["b"] * 5, "x": [10, 11, 12, 10.5, 11.5, 20, 21, 19, 20.5, 22]})
    row = _by_level(table1(df, "g", continuous=["x"])).loc[("x", "mean±SD")]
    assert row["p"] == pytest.approx(ref()["welch_small_p"], rel=1e-9) and row["p_text"] == "<0.001"


def test_group_order_is_the_one_given():
    res = table1(_stage_cohort(), "g", categorical=["stage"], group_order=["low", "high"])
    assert res.groups == ["low", "high"]
    assert list(res.table.columns)[2:5] == ["All (n=10)", "low (n=6)", "high (n=4)"]
    # the test does not depend on the order
    assert res.table["p"].iloc[0] == table1(_stage_cohort(), "g", categorical=["stage"]).table["p"].iloc[0]


def test_printed_json_and_html_forms():
    df = pd.DataFrame({"g": ["A", "A", "B", "B"], "c": ["<b>x</b>", "y", "y", "<b>x</b>"]})
    res = table1(df, "g", categorical=["c"])
    assert str(res) == res.table.to_string(index=False)
    assert str(res).splitlines()[0].split() == ["variable", "level", "All", "(n=4)", "A", "(n=2)", "B", "(n=2)", "p",
                                                "p_text", "test"]
    d = res.to_dict()
    assert (d["group"], d["groups"], d["n_missing_group"]) == ("g", ["A", "B"], 0)
    assert [row["level"] for row in d["table"]] == ["", "<b>x</b>", "y"] and d["table"][1]["p"] is None
    html = res.to_html()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html  # a cell cannot inject markup into the report
    assert "<th>p_text</th>" in html and "NaN" not in html and "nan" not in html


def test_messages():
    df = pd.DataFrame({"g": ["A", "A", "B"], "x": [1, 2, 3]})
    with pytest.raises(TMBRBStatsInputError) as e:
        table1(df, "g")
    assert str(e.value) == "Table 1 needs at least one --continuous or --categorical variable."
    with pytest.raises(TMBRBStatsInputError) as e:
        table1(df[df["g"] == "A"], "g", continuous=["x"])
    assert str(e.value) == "Table 1: group column 'g' has a single value; it needs two or more groups."
    with pytest.raises(TMBRBStatsInputError, match=r"^Table 1: missing column\(s\) \['age'\]"):
        table1(df, "g", continuous=["age"])
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'x' must be numeric"):
        table1(df.assign(x=["1", "two", "3"]), "g", continuous=["x"])


def _r_table(key):
    d = ref()[key]
    k = len(d["table"]) // 2 if len(d["table"]) == 4 else 3
    return np.array(d["table"]).reshape(-1, k).T, d["p"]  # R fills by column


def test_detail_rows_leave_the_test_cells_blank():
    df = pd.DataFrame({"g": ["A", "A", "B", "B", "B"], "x": [1, 2, 3, np.nan, 5], "c": ["u", None, "v", "v", "u"]})
    t = table1(df, "g", continuous=["x"], categorical=["c"]).table
    detail = t[t["level"].isin(["missing", "u", "v"])]
    assert len(detail) == 4
    assert detail["p_text"].tolist() == [""] * 4 and detail["test"].tolist() == [""] * 4 and detail["p"].isna().all()


def test_groups_and_levels_sort_as_text():
    df = pd.DataFrame({"g": [2, 2, 10, 10], "c": [10, 2, 2, 2]})
    res = table1(df, "g", categorical=["c"])
    assert res.groups == [10, 2] and list(res.table.columns)[2:5] == ["All (n=4)", "10 (n=2)", "2 (n=2)"]
    assert res.table["level"].tolist() == ["", "10", "2"]
    assert _by_level(res).loc[("c", "10"), "2 (n=2)"] == "1 (50.0)"


def test_a_group_without_values_of_a_variable_counts_zero():
    df = pd.DataFrame({"g": ["A", "A", "B", "B"], "c": ["u", "v", None, None]})
    cells = _by_level(table1(df, "g", categorical=["c"]))
    assert cells.loc[("c", "u"), "B (n=2)"] == "0" and cells.loc[("c", "u"), "A (n=2)"] == "1 (50.0)"
    assert cells.loc[("c", "missing"), "All (n=4)"] == "2"
    assert cells.loc[("c", ""), "test"] == "none"  # one group with values: nothing to compare


def test_rows_without_group_before_the_others_do_not_shift_values():
    # the first row has no group: the values must stay with their own patients
    df = pd.DataFrame({"g": [None, "A", "A", "B", "B"], "x": [100.0, 1, 2, 3, 5]})
    row = _by_level(table1(df, "g", continuous=["x"])).loc[("x", "mean±SD")]
    assert (row["A (n=2)"], row["B (n=2)"], row["All (n=4)"]) == ("1.5±0.7", "4.0±1.4", "2.8±1.7")
    assert row["p"] == pytest.approx(ref()["welch_two_each"], rel=1e-9)  # two values a group are enough


def test_chi_square_from_an_expected_count_of_five():
    for key in ("chisq_expected_5", "chisq_expected_5_5"):
        t, p = _r_table(key)
        assert categorical_test(t) == ("chi-square", pytest.approx(p, rel=1e-9)), key
        assert categorical_test(np.vstack([t, [0, 0]])) == categorical_test(t)  # a level nobody has is left out


def test_a_level_seen_once_is_kept_and_empty_rows_dropped():
    t, p = _r_table("fisher_row_of_one")
    assert categorical_test(t) == ("Fisher", pytest.approx(p, rel=1e-9))
    with_empty = np.vstack([t, [0, 0]])
    assert categorical_test(with_empty) == categorical_test(t)


def test_monte_carlo_seed_default_and_exact_message():
    t = np.array(ref()["fisher_3x3"]["table"]).reshape(3, 3).T
    assert categorical_test(t) == categorical_test(t, seed=0)
    with pytest.raises(ValueError) as e:
        fisher_exact_2xc(t)
    assert str(e.value) == "fisher_exact_2xc needs a table with two rows or two columns"


def test_html_has_no_index_column_and_blank_detail_cells():
    df = pd.DataFrame({"g": ["A", "A", "B", "B"], "c": ["x", "y", "y", "x"]})
    html = table1(df, "g", categorical=["c"]).to_html()
    assert "<th></th>" not in html and html.count("<th>") == 8  # the eight columns, no index
    rows = html.split("<tr>")[2:]  # header row first
    cells = [r.split("</td>")[:-1] for r in rows]
    assert [c.split(">")[-1] for c in cells[-1]] == ["c", "y", "2 (50.0)", "1 (50.0)", "1 (50.0)", "", "", ""]
