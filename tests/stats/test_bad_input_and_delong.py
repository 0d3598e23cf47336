"""Bad input gives TMBRBStatsInputError with a clear message; NaN rows are counted; fast DeLong equals naive."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats import (TMBRBStatsInputError, TMBRBStatsWarning, auc_by_cutoff, cox_ph, decision_curve,
                            delong_test, kaplan_meier, logrank_test, maxstat_cutpoint, roc_analysis, spearman, table1)
from TMBRBLib.stats.roc import delong_placements, delong_placements_naive

from _stats_testdata import fixture_csv


def test_error_is_valueerror():
    assert issubclass(TMBRBStatsInputError, ValueError)


def test_missing_column_names_it_and_lists_existing():
    lung = fixture_csv("lung.csv")
    with pytest.raises(TMBRBStatsInputError, match=r"missing column\(s\) \['ecog'\].*'ph_ecog'"):
        cox_ph(lung, "time", "status", ["ecog"])


def test_non_numeric_values_are_listed():
    with pytest.raises(TMBRBStatsInputError, match=r"'score' must be numeric.*'n/a'"):
        roc_analysis([0, 1, 0, 1], ["0.1", "n/a", "0.3", "0.9"], name="score")


def test_single_class():
    with pytest.raises(TMBRBStatsInputError, match="single class"):
        roc_analysis([1, 1, 1], [0.1, 0.2, 0.3])


def test_three_classes():
    with pytest.raises(TMBRBStatsInputError, match="exactly two classes"):
        roc_analysis([0, 1, 2], [0.1, 0.2, 0.3])


def test_all_censored():
    with pytest.raises(TMBRBStatsInputError, match="all 4 observations are censored"):
        kaplan_meier([1, 2, 3, 4], [0, 0, 0, 0], ["a", "a", "b", "b"])
    with pytest.raises(TMBRBStatsInputError, match="censored"):
        maxstat_cutpoint([1, 2, 3, 4], [0, 0, 0, 0], [1, 2, 3, 4])


def test_bad_event_coding():
    with pytest.raises(TMBRBStatsInputError, match="0 \\(censored\\) or 1 \\(event\\).*2"):
        kaplan_meier([1, 2, 3], [1, 2, 1])


def test_logrank_single_group():
    with pytest.raises(TMBRBStatsInputError, match="at least two groups"):
        logrank_test(np.array([1.0, 2.0]), np.array([1, 1]), np.array(["a", "a"]))


def test_nan_rows_dropped_and_counted():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.random(50) + y
    r_full = roc_analysis(y, s)
    s2, y2 = np.concatenate([s, [np.nan, 0.5]]), np.concatenate([y, [1, np.nan]])
    r = roc_analysis(y2, s2)
    assert r.n_dropped == 2 and r.auc == r_full.auc
    km = kaplan_meier([5, 6, np.nan, 8], [1, 0, 1, 1], ["a", "b", "a", None])
    assert km.n_dropped == 2
    assert spearman([1, 2, 3, np.nan, 5], [2, 1, 4, 3, 5]).n_dropped == 1


def test_few_events_warns_but_fits():
    ov = fixture_csv("ovarian.csv")
    with pytest.warns(TMBRBStatsWarning, match="only 8 events"):
        r = cox_ph(ov.iloc[:20], "time", "status", ["age"])
    assert r.warnings and r.n_events == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error", TMBRBStatsWarning)
        cox_ph(ov, "time", "status", ["age"])  # 12 events: no warning


def test_constant_covariate_and_scores():
    lung = fixture_csv("lung.csv").assign(one=1.0)
    with pytest.raises(TMBRBStatsInputError, match="single value"):
        cox_ph(lung, "time", "status", ["one"])
    with pytest.raises(TMBRBStatsInputError, match="constant"):
        spearman([1, 1, 1, 1], [1, 2, 3, 4])
    with pytest.raises(TMBRBStatsInputError, match="identical in ranking"):
        delong_test([0, 1, 0, 1], [0.1, 0.8, 0.2, 0.9], [1, 8, 2, 9])


def test_dca_needs_probabilities_and_matches_hand_formula():
    with pytest.raises(TMBRBStatsInputError, match="outside \\[0, 1\\]"):
        decision_curve([0, 1, 1], {"m": [0.2, 3.0, 0.5]})
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.7, 0.9])
    r = decision_curve(y, {"m": p}, thresholds=[0.5])
    # treated at 0.5: 0.6 (FP), 0.7, 0.9 (TP): NB = 2/5 - 1/5 * 1
    assert r.table["m"].iloc[0] == pytest.approx(2 / 5 - 1 / 5)
    assert r.table["treat_all"].iloc[0] == pytest.approx(3 / 5 - 2 / 5)


def test_ties_in_scores_and_times():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([1, 2, 2, 3, 3, 3], float)
    r = roc_analysis(y, s)
    # pairs (case, control): 2>1, 2=2 (0.5), 2<3.. computed by hand: cases {2,3,3}, controls {1,2,3}
    psi = [[1.0 if c > k else 0.5 if c == k else 0.0 for k in (1, 2, 3)] for c in (2, 3, 3)]
    assert r.auc == pytest.approx(np.mean(psi))
    km = kaplan_meier([1, 1, 1, 2, 2], [1, 1, 0, 1, 1])
    assert km.curves[0].table["surv"].iloc[0] == pytest.approx(3 / 5)


def test_auc_by_cutoff_single_class_cutoffs():
    with pytest.raises(TMBRBStatsInputError, match="single class"):
        auc_by_cutoff([0.1, 0.2, 0.3], [1, 2, 3], [100])


def test_table1_single_group():
    with pytest.raises(TMBRBStatsInputError, match="single value"):
        table1(pd.DataFrame({"g": ["a", "a"], "x": [1, 2]}), "g", continuous=["x"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_equals_naive_with_ties(seed):
    rng = np.random.default_rng(seed)
    cases = np.round(rng.normal(0.5, 1, 300), 1)
    controls = np.round(rng.normal(0, 1, 250), 1)
    a1, v10a, v01a = delong_placements(cases, controls)
    a2, v10b, v01b = delong_placements_naive(cases, controls)
    assert a1 == pytest.approx(a2, abs=1e-12)
    np.testing.assert_allclose(v10a, v10b, atol=1e-12)
    np.testing.assert_allclose(v01a, v01b, atol=1e-12)


def test_delong_at_n_100k_agrees_with_mann_whitney():
    """Large n runs through the O(n log n) path (speed is measured by benchmarks/bench_delong.py, not here)."""
    from scipy.stats import mannwhitneyu
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100_000)
    s = rng.normal(size=100_000) + y
    r = roc_analysis(y, s)
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert r.auc == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), abs=1e-12)
    assert r.ci_low < r.auc < r.ci_high and r.ci_high - r.ci_low < 0.01


def test_bootstrap_ci_brackets_auc():
    d = fixture_csv("asah.csv")
    r = roc_analysis(d["outcome"], d["s100b"], ci_method="bootstrap", n_boot=300, seed=1)
    assert r.ci_low < r.auc < r.ci_high
    assert r.ci_method == "bootstrap"


# ------------------------------------------------------------ command lines that used to end in a traceback (exit 1)
def _cohort_files(tmp_path):
    from _stats_testdata import FIXTURES, synthetic_cohort

    pred, clin = synthetic_cohort()
    pred.to_csv(tmp_path / "pred.csv", index=False)
    clin.assign(score=0.5).to_csv(tmp_path / "clin_with_score.csv", index=False)
    asah = fixture_csv("asah.csv").assign(p=lambda d: d["s100b"].clip(0, 1))
    asah.to_csv(tmp_path / "asah_p.csv", index=False)
    return {"asah": str(FIXTURES / "asah.csv"), "asah_p": str(tmp_path / "asah_p.csv"),
            "lung": str(FIXTURES / "lung.csv"), "pred": str(tmp_path / "pred.csv"),
            "clin": str(tmp_path / "clin_with_score.csv")}


BAD_COMMAND_LINES = [
    (["dca", "--csv", "{asah_p}", "--label", "outcome", "--models", "p", "--step", "0"], "0 < --step < 1"),
    (["dca", "--csv", "{asah_p}", "--label", "outcome", "--models", "p", "--step", "nan"], "0 < --step < 1"),
    (["dca", "--csv", "{asah_p}", "--label", "outcome", "--models", "p", "--min-threshold", "0.9",
      "--max-threshold", "0.1"], "--min-threshold <= --max-threshold"),
    (["cutpoint", "--csv", "{lung}", "--time", "time", "--event", "status", "--marker", "age", "--minprop", "0",
      "--maxprop", "1"], "need 0 < minprop < maxprop < 1"),
    (["cutpoint", "--csv", "{lung}", "--time", "time", "--event", "status", "--marker", "age", "--minprop", "nan"],
     "need 0 < minprop < maxprop < 1"),
    (["roc", "--csv", "{asah}", "--label", "outcome", "--score", "s100b", "--ci", "bootstrap", "--n-boot", "0"],
     "n_boot must be a whole number of at least"),
    (["roc", "--csv", "{asah}", "--label", "outcome", "--score", "s100b", "--ci", "bootstrap", "--n-boot", "-5"],
     "n_boot must be a whole number of at least"),
    (["report", "--predictions", "{pred}", "--clinical", "{clin}"], "clinical CSV also has a 'score' column"),
]


@pytest.mark.parametrize("argv, message", BAD_COMMAND_LINES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_COMMAND_LINES])
def test_bad_command_lines_exit_2_with_the_reason(tmp_path, capsys, argv, message):
    from TMBRBLib.stats.cli import main

    files = _cohort_files(tmp_path)
    rc = main(["analyze", *[a.format(**files) for a in argv], "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err


def test_decision_curve_needs_a_threshold():
    with pytest.raises(TMBRBStatsInputError, match="at least one threshold"):
        decision_curve([0, 1, 0, 1], {"s": [0.1, 0.9, 0.2, 0.8]}, thresholds=[])


# ---------------------------------------------------------------------------------------------- statistics inputs
@pytest.mark.parametrize("which", ["clinical", "predictions"])
def test_report_refuses_duplicated_patient_ids(tmp_path, which):
    from _stats_testdata import synthetic_cohort
    from TMBRBLib.stats.report import build_report

    pred, clin = synthetic_cohort()
    if which == "clinical":
        clin = pd.concat([clin, clin.iloc[:2]], ignore_index=True)  # two patients entered twice
    else:
        pred = pd.concat([pred, pred.iloc[[5]]], ignore_index=True)
    with pytest.raises(TMBRBStatsInputError, match=rf"{which} CSV: \d case id\(s\) appear on several rows"):
        build_report(pred, clin, tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_table1_csv_never_starts_a_cell_with_a_formula(tmp_path):
    import csv

    from TMBRBLib.stats.cli import main

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"arm": rng.choice(["=1+1", "@SUM(A1)", "control"], 60),
                       "smoking": rng.choice(["+cmd|' /C calc'!A0", "-2+3", "never"], 60),
                       "age": rng.normal(60, 8, 60).round()})
    df.to_csv(tmp_path / "t.csv", index=False)
    assert main(["analyze", "table1", "--csv", str(tmp_path / "t.csv"), "--group", "arm", "--categorical",
                 "smoking", "--continuous", "age", "--out", str(tmp_path / "o")]) == 0
    cells = [c for row in csv.reader(open(tmp_path / "o" / "table1.csv", encoding="utf-8")) for c in row]
    risky = [c for c in cells if c[:1] in ("=", "+", "@") or (c[:1] == "-" and not _is_number(c))]
    assert not risky, risky
    assert any(c.startswith("'=1+1") for c in cells) and any(c.startswith("'-2+3") for c in cells)


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _separated_cohort(seed=0, n=60):
    rng = np.random.default_rng(seed)
    group = np.r_[np.zeros(n // 2), np.ones(n // 2)]
    event = np.r_[np.zeros(n // 2), (rng.random(n // 2) < 0.7).astype(int)]  # no event at all in group 0
    return pd.DataFrame({"time": rng.exponential(10, n), "status": event, "grp": group,
                         "age": rng.normal(60, 10, n), "x": np.linspace(0, 1, n)})


def test_cox_with_quasi_separation_warns():
    df = _separated_cohort()
    with pytest.warns(TMBRBStatsWarning, match=r"no event among the 30 rows with grp = 0 \(quasi-separation\)"):
        r = cox_ph(df, "time", "status", ["grp", "age"])
    assert len(r.warnings) == 1 and "grp" in r.warnings[0]  # age is not separated: no warning for it
    # complete separation by a continuous marker: events come in the order of the marker
    df2 = pd.DataFrame({"time": 100 - 90 * df["x"], "status": 1, "x": df["x"]})
    with pytest.warns(TMBRBStatsWarning, match="the coefficient of x diverged"):
        cox_ph(df2, "time", "status", ["x"])
    ov = fixture_csv("ovarian.csv")  # an ordinary fit stays silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", TMBRBStatsWarning)
        assert cox_ph(ov, "time", "status", ["age"]).warnings == []
