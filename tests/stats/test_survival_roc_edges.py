"""Kaplan-Meier, log-rank and ROC at their edges, against R (tests/stats/fixtures/make_reference_edges.R).

Written from the mutation run of issue 16: the 'plain' band, bands where S is 1 or 0, the log-rank variance with two
subjects at risk, a group with no one at risk at any event time, pROC's direction on equal medians and its variance
with one case were unchecked; so were the printed and saved forms of the results and most error messages.
"""
from __future__ import annotations

import json
import warnings
from functools import lru_cache

import numpy as np
import pytest

from TMBRBLib.stats import TMBRBStatsInputError, delong_test, kaplan_meier, logrank_test, roc_analysis
from TMBRBLib.stats.survival import km_curve, risk_table

from _stats_testdata import FIXTURES, arr, fixture_csv

TIGHT = dict(rtol=1e-9, atol=1e-12)


@lru_cache(maxsize=None)
def ref() -> dict:
    with open(FIXTURES / "reference_edges.json") as f:
        return json.load(f)


def _check_curve(curve, rr):
    """One KMCurve against survfit's columns (R's NA and Inf are JSON null)."""
    tab = curve.table
    assert (curve.n, curve.events) == (rr["n"], rr["events"])
    np.testing.assert_allclose([curve.median, curve.median_lower, curve.median_upper],
                               arr([rr["median"], rr["lcl"], rr["ucl"]]), **TIGHT)
    np.testing.assert_allclose(tab["time"], arr(rr["time"]), **TIGHT)
    for col, rcol in (("n_risk", "n_risk"), ("n_event", "n_event"), ("n_censor", "n_censor")):
        assert tab[col].tolist() == arr(rr[rcol]).astype(int).tolist(), col
        assert tab[col].dtype.kind == "i", col  # whole numbers, as survfit prints them
    np.testing.assert_allclose(tab["surv"], arr(rr["surv"]), **TIGHT)
    se = tab["std_err"].to_numpy()
    np.testing.assert_allclose(np.where(np.isinf(se), np.nan, se), arr(rr["std_err"]), **TIGHT)
    np.testing.assert_allclose(tab["lower"], arr(rr["lower"]), **TIGHT)
    np.testing.assert_allclose(tab["upper"], arr(rr["upper"]), **TIGHT)


# ---------------------------------------------------------------- Kaplan-Meier bands
@pytest.mark.parametrize("conf_type,key", [("log", "log"), ("log-log", "loglog"), ("plain", "plain")])
def test_bands_where_survival_is_one_and_zero_match_survfit(conf_type, key):
    # censored first (S = 1, std.err 0), then down to S = 0 at the last time (std.err Inf): R's band is 1 (log,
    # plain) or NA (log-log) at S = 1 and NA at S = 0; the plain band is cut at 0 and 1
    s = ref()["small"]
    km = kaplan_meier(s["time"], s["status"], conf_type=conf_type)
    (c,) = km.curves
    _check_curve(c, s[key])
    assert (c.group, c.conf_type, c.conf_level) == ("all", conf_type, 0.95)
    assert km.conf_type == conf_type and km.logrank is None


def test_plain_band_matches_survfit_on_lung():
    d = fixture_csv("lung.csv")
    km = kaplan_meier(d["time"], d["status"], d["sex"], conf_type="plain")
    rr = ref()["lung_sex_plain"]
    assert [c.group for c in km.curves] == [1, 2]
    for i, c in enumerate(km.curves):
        assert (c.median, c.median_lower, c.median_upper) == (rr["median"][i], rr["lcl"][i], rr["ucl"][i])
    tab = np.concatenate([c.table[["time", "surv", "lower", "upper"]].to_numpy() for c in km.curves])
    np.testing.assert_allclose(tab, np.column_stack([arr(rr[k]) for k in ("time", "surv", "lower", "upper")]), **TIGHT)


def test_band_level_is_the_one_asked_for():
    s = ref()["small"]
    c95 = kaplan_meier(s["time"], s["status"], conf_type="plain").curves[0].table
    c80 = kaplan_meier(s["time"], s["status"], conf_type="plain", conf_level=0.8).curves[0]
    assert c80.conf_level == 0.8
    # plain band: S (1 +- z se), z = 1.2816 for 80 %; t = 4: S = 8/15, se = 0.46547; t = 5: S = 4/15, se = 0.84656
    z80 = 1.2815515655446004
    assert c80.table["lower"][3] == pytest.approx(8 / 15 * (1 - z80 * c95["std_err"][3]), rel=1e-12)
    assert c80.table["upper"][4] == pytest.approx(4 / 15 * (1 + z80 * c95["std_err"][4]), rel=1e-12)


def test_curve_ending_on_an_exact_half_has_its_median_where_it_gets_there():
    # S = 1/2 from t = 2 to the end (no later drop to take a mid-point to): survfit's median is 2
    p = ref()["plateau_end"]
    (c,) = kaplan_meier(p["time"], p["status"]).curves
    _check_curve(c, p)


def test_median_is_the_mid_point_to_the_one_drop_after_an_exact_half():
    # S = 1/2 on [2, 3), then 1/4 to the end: survfit's median is (2 + 3) / 2
    p = ref()["plateau_drop"]
    (c,) = kaplan_meier(p["time"], p["status"]).curves
    _check_curve(c, p)
    assert c.median == 2.5


def test_km_curve_defaults():
    c = km_curve(np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1]))
    assert (c.group, c.conf_type, c.conf_level) == ("all", "log", 0.95)
    assert c.table["lower"][0] == pytest.approx(np.exp(np.log(2 / 3) - 1.959963984540054 * np.sqrt(1 / 6)), rel=1e-12)


def test_unknown_band_type_is_refused_with_the_choices():
    with pytest.raises(TMBRBStatsInputError) as e:
        kaplan_meier([1, 2, 3], [1, 0, 1], conf_type="logit")
    assert str(e.value) == "conf_type must be 'log', 'log-log' or 'plain', not 'logit'."


def test_no_numpy_warnings_reach_the_user():
    # S = 1 and S = 0 divide by zero inside the band and the variance: R prints NA quietly, so must we
    s = ref()["small"]
    lr = ref()["logrank_empty_group"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for conf_type in ("log", "log-log", "plain"):
            kaplan_meier(s["time"], s["status"], conf_type=conf_type)
        kaplan_meier(lr["time"], lr["status"], lr["g"])
        kaplan_meier([1, 2, 3, 4], [1, 1, 1, 1], ["a", "b", "a", "b"])  # the last death has one at risk: 0 / 0


def test_a_single_subject_is_a_curve():
    (c,) = kaplan_meier([5.0], [1]).curves
    assert (c.n, c.events, c.median) == (1, 1, 5.0)
    assert c.table["surv"].tolist() == [0.0]


# ---------------------------------------------------------------- log-rank
def _lr(key):
    d = ref()[key]
    return d, logrank_test(np.array(d["time"], float), np.array(d["status"], float), np.array(d["g"]))


def test_logrank_with_tied_deaths_and_censoring_matches_survdiff():
    d, r = _lr("logrank_two_at_risk")
    np.testing.assert_allclose([r.chisq, r.p_value], [d["chisq"], d["p"]], **TIGHT)
    np.testing.assert_allclose(r.observed, d["observed"], **TIGHT)
    np.testing.assert_allclose(r.expected, d["expected"], **TIGHT)
    assert (r.df, r.groups, r.n) == (1, ["A", "B"], [6, 4])


def test_logrank_variance_with_two_at_risk_matches_survdiff():
    # at t = 6 one subject of each group is at risk and one dies: that time adds d (n - d) / (n - 1) = 1 to the
    # variance weight (survdiff: chisq 1.2222)
    d, r = _lr("logrank_last_two")
    assert r.chisq == pytest.approx(d["chisq"], rel=1e-9) and d["chisq"] == pytest.approx(11 / 9, rel=1e-9)
    np.testing.assert_allclose(r.expected, d["expected"], **TIGHT)


def test_group_without_expected_events_adds_no_degree_of_freedom():
    # group C is censored before the first event: survdiff prints "on 1 degrees of freedom", p = 0.149 (was 2, 0.352)
    d, r = _lr("logrank_empty_group")
    assert r.df == d["df"] == 1
    np.testing.assert_allclose([r.chisq, r.p_value], [d["chisq"], d["p"]], **TIGHT)
    np.testing.assert_allclose(r.expected, d["expected"], **TIGHT)
    assert r.n == [6, 6, 2]
    km = kaplan_meier(d["time"], d["status"], d["g"])
    assert km.logrank.df == 1 and km.logrank.p_value == pytest.approx(d["p"], rel=1e-9)


def test_groups_of_mixed_types_are_sorted_as_text_and_tested():
    # a column mixing numbers and text cannot be sorted as is: groups sort by their text, and the test is the same
    # as with the text labels
    t = np.array([1, 2, 3, 4, 5, 6, 2, 4, 6, 8, 10, 12], float)
    e = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0], float)
    mixed = np.array(["b"] * 6 + [10] * 6, dtype=object)  # "b" first: sorted as text, 10 comes first all the same
    text = np.array(["b"] * 6 + ["10"] * 6)
    r, r_text = logrank_test(t, e, mixed), logrank_test(t, e, text)
    assert r.groups == [10, "b"] and r.observed == [3.0, 4.0]
    assert (r.chisq, r.observed, r.expected, r.n) == (r_text.chisq, r_text.observed, r_text.expected, r_text.n)
    km = kaplan_meier(t, e, list(mixed))
    assert [c.group for c in km.curves] == [10, "b"] and [c.median for c in km.curves] == [8.0, 4.0]


def test_three_mixed_groups_keep_their_text_order_in_every_field():
    # sorted as text: 10, 2, "b" (pandas alone would order them 2, 10, "b"): counts follow the same order
    t = np.arange(1.0, 10.0)
    e = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1], float)
    g = np.array([10, 10, 10, 2, 2, "b", "b", "b", "b"], dtype=object)
    r = logrank_test(t, e, g)
    assert r.groups == [10, 2, "b"] and r.n == [3, 2, 4] and r.observed == [2.0, 2.0, 3.0]


def test_numeric_groups_sort_as_numbers():
    t = np.array([1, 2, 3, 4, 5, 6, 2, 4, 6, 8, 10, 12], float)
    e = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0], float)
    g = np.array([10] * 6 + [2] * 6)
    r = logrank_test(t, e, g)
    assert r.groups == [2, 10] and r.observed == [3.0, 4.0] and r.n == [6, 6]
    assert [c.group for c in kaplan_meier(t, e, g).curves] == [2, 10]


def test_risk_table_lists_event_times_only():
    t = np.array([1, 2, 3, 4, 5], float)
    e = np.array([1, 0, 1, 0, 1], float)
    times, deaths, at_risk = risk_table(t, e, np.array([0, 1, 0, 1, 1]), 2)
    assert times.tolist() == [1.0, 3.0, 5.0]
    assert deaths.tolist() == [[1, 0], [1, 0], [0, 1]]
    assert at_risk.tolist() == [[2, 3], [1, 2], [0, 1]]


def test_logrank_messages():
    with pytest.raises(TMBRBStatsInputError) as e:
        logrank_test(np.array([1.0, 2.0]), np.array([1.0, 1.0]), np.array(["a", "a"]))
    assert str(e.value) == ("log-rank test needs at least two groups but all rows are in group 'a'. "
                            "Check the group column or the cut-off that makes the groups.")
    with pytest.raises(TMBRBStatsInputError, match=r"^log-rank test: all 2 observations are censored"):
        logrank_test(np.array([1.0, 2.0]), np.array([0.0, 0.0]), np.array(["a", "b"]))


def test_logrank_printout():
    d, r = _lr("logrank_two_at_risk")
    assert str(r) == ("Log-rank test: chisq = 0.1194 on 1 df, p = 0.7297\n"
                      "             A: n=   6 observed=    3.0 expected=   3.34\n"
                      "             B: n=   4 observed=    2.0 expected=   1.66")


# ---------------------------------------------------------------- kaplan_meier: input, printout, JSON
T2 = [1, 2, 3, 4, 5, 6, 2, 4, 6, 8, 10, 12]
E2 = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0]
G2 = ["A"] * 6 + ["B"] * 6


def test_kaplan_meier_messages_name_the_column():
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'time' must be numeric"):
        kaplan_meier(["x", 2, 3], [1, 0, 1])
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'event' must be numeric"):
        kaplan_meier([1, 2, 3], ["dead", 0, 1])
    with pytest.raises(TMBRBStatsInputError) as e:
        kaplan_meier([np.nan, 2], [1, np.nan])
    assert str(e.value) == "no complete rows: every row misses the time, the event or the group."
    with pytest.raises(TMBRBStatsInputError, match=r"^Kaplan-Meier: all 3 observations are censored"):
        kaplan_meier([1, 2, 3], [0, 0, 0])


def test_one_group_gives_a_curve_and_no_test():
    km = kaplan_meier(T2[:6], E2[:6], ["A"] * 6)
    assert km.logrank is None and [c.group for c in km.curves] == ["A"]
    assert km.to_dict()["logrank"] is None
    assert "Log-rank" not in str(km)


def test_printout_has_the_summary_the_test_and_the_dropped_rows():
    km = kaplan_meier(T2 + [np.nan], E2 + [1], G2 + ["A"])
    lines = str(km).splitlines()
    assert lines[0] == "Kaplan-Meier (log CI for the median)"
    assert lines[1].split() == ["group", "n", "events", "median", "median_lower", "median_upper"]
    assert lines[2].split() == ["A", "6", "4", "4.0", "3.0", "NaN"]
    assert lines[4] == str(km.logrank).splitlines()[0] == "Log-rank test: chisq = 2.0862 on 1 df, p = 0.1486"
    assert lines[-1] == "1 row(s) with missing values dropped"
    assert "dropped" not in str(kaplan_meier(T2, E2, G2))


def test_json_holds_the_summary_test_numbers_at_risk_and_curves():
    km = kaplan_meier(T2, E2, G2, conf_type="log-log", risk_times=[0, 4, 8], time_label="months")
    assert (km.time_label, km.risk_times) == ("months", [0.0, 4.0, 8.0])
    d = km.to_dict()
    assert d["conf_type"] == "log-log" and d["n_dropped"] == 0
    assert [row["median"] for row in d["summary"]] == [4.0, 8.0]
    assert d["logrank"]["chisq"] == pytest.approx(2.0862, abs=1e-4) and d["logrank"]["df"] == 1
    assert d["at_risk"] == {"time": [0.0, 4.0, 8.0], "n_risk": {"A": [6, 3, 0], "B": [6, 5, 3]}}
    assert sorted(d["curves"]) == ["A", "B"]
    assert [row["surv"] for row in d["curves"]["B"]] == km.curves[1].table["surv"].tolist()
    assert [row["n_risk"] for row in d["curves"]["A"]] == [6, 5, 4, 3, 2, 1]
    assert kaplan_meier(T2, E2, G2).risk_times is None


def test_numbers_at_risk_of_one_curve_and_of_the_result():
    km = kaplan_meier(T2, E2, G2)
    a = km.curves[0]
    n = a.at_risk([0, 1, 1.5, 6, 7])
    assert n.tolist() == [6, 6, 5, 1, 0] and n.dtype.kind == "i"
    tab = km.at_risk([0, 6])
    assert tab.columns.name == "time" and tab.columns.tolist() == [0.0, 6.0]
    assert tab.loc["A"].tolist() == [6, 1] and tab.loc["B"].tolist() == [6, 4]


@pytest.mark.parametrize("tmax,ticks", [
    (13, [0, 2.5, 5, 7.5, 10, 12.5]),  # round steps of 1, 2, 2.5, 5, 10 (x 10^k), at most 6 intervals
    (25, [0, 5, 10, 15, 20, 25]),      # the last time itself when it is a tick
    (27, [0, 5, 10, 15, 20, 25]),
    (1022, [0, 200, 400, 600, 800, 1000])])
def test_default_times_of_the_risk_table_are_round(tmax, ticks):
    km = kaplan_meier([1, tmax / 2, tmax], [1, 0, 1])
    assert km.default_risk_times() == ticks
    assert km.to_dict()["at_risk"]["time"] == ticks


# ---------------------------------------------------------------- ROC
def test_equal_medians_choose_lower_is_control_as_proc():
    rr = ref()["roc_equal_medians"]
    r = roc_analysis(rr["y"], rr["score"], conf_level=0.9)
    assert r.direction == rr["direction"] == "<"
    np.testing.assert_allclose([r.auc, r.variance, r.ci_low, r.ci_high], [rr["auc"], rr["var"], *rr["ci90"]], **TIGHT)
    assert r.conf_level == 0.9 and r.ci_low == 0.0  # the interval is cut at 0


def test_a_single_case_has_no_delong_variance_as_proc():
    rr = ref()["roc_one_case"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy "degrees of freedom" warning either
        r = roc_analysis(rr["y"], rr["score"], direction="<")
    assert r.auc == pytest.approx(rr["auc"], rel=1e-9)
    assert rr["var"] is None and rr["ci"] == [None, None]  # pROC: NA
    assert np.isnan(r.variance) and np.isnan(r.ci_low) and np.isnan(r.ci_high)
    with pytest.raises(TMBRBStatsInputError) as e:
        delong_test(rr["y"], rr["score"], [0.3, 0.1, 0.2, 0.4])
    assert str(e.value) == ("DeLong's test needs at least two cases and two controls, got 1 case(s) and 3 control(s) "
                            "in the complete rows.")


def test_paired_variances_and_covariance_match_proc():
    rr = ref()["roc_cov_asah"]
    d = fixture_csv("asah.csv")
    t = delong_test(d["outcome"], d[rr["score1"]], d[rr["score2"]])
    np.testing.assert_allclose([t.variance1, t.variance2, t.covariance], [rr["var1"], rr["var2"], rr["cov"]], **TIGHT)


def test_interval_is_cut_at_one():
    r = roc_analysis([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    assert r.auc == 1.0 and r.ci_high == 1.0


def test_roc_result_fields_and_printout():
    r = roc_analysis(["wt", "wt", "mut", "mut", "wt"], [0.1, 0.4, 0.35, 0.8, np.nan], positive="mut", threshold=0.5)
    assert (r.case_level, r.control_level, r.n_cases, r.n_controls, r.n_dropped) == ("mut", "wt", 2, 2, 1)
    assert r.youden_threshold == pytest.approx(0.225, rel=1e-12)  # (0.1 + 0.35) / 2
    assert (r.youden_sensitivity, r.youden_specificity) == (1.0, 0.5)
    assert (r.threshold, r.threshold_sensitivity, r.threshold_specificity) == (0.5, 0.5, 1.0)
    assert r.name == "score"
    assert str(r) == ("ROC score: AUC 0.7500 (95% CI 0.0570-1.0000, delong), direction '<' (controls 'wt' < cases "
                      "'mut'), 2 cases / 2 controls\n"
                      "  Youden: threshold 0.225, sensitivity 1.0000, specificity 0.5000\n"
                      "  at threshold 0.5: sensitivity 0.5000, specificity 1.0000\n"
                      "  1 row(s) with missing values dropped")
    plain = roc_analysis([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], name="TMBRB")
    assert str(plain).splitlines()[0].startswith("ROC TMBRB: AUC 0.7500")
    assert len(str(plain).splitlines()) == 2 and plain.threshold is None


def test_roc_messages():
    cases = [
        (dict(conf_level=0.0), "conf_level must be between 0 and 1, got 0.0."),
        (dict(conf_level=1.0), "conf_level must be between 0 and 1, got 1.0."),
        (dict(ci_method="exact"), "ci_method must be 'delong' or 'bootstrap', not 'exact'."),
        (dict(direction="up"), "direction must be '<', '>' or 'auto', not 'up'."),
        (dict(ci_method="bootstrap", n_boot=9),
         "n_boot must be a whole number of at least 10 bootstrap draws, got 9; 2000 is usual."),
    ]
    for kwargs, message in cases:
        with pytest.raises(TMBRBStatsInputError) as e:
            roc_analysis([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], **kwargs)
        assert str(e.value) == message
    with pytest.raises(TMBRBStatsInputError) as e:
        roc_analysis([0, 1], [np.nan, np.nan], name="TMB")
    assert str(e.value) == "no complete rows for 'TMB': every row has a missing score or label."
    # one complete row: a single class, named as the label column
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'label' has a single class \(1\.0 for all 1 rows\)"):
        roc_analysis([0, 1], [np.nan, 0.3])
    with pytest.raises(TMBRBStatsInputError, match=r"^positive class 'x' is not one of the values"):
        roc_analysis([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], positive="x")


# ---------------------------------------------------------------- bootstrap interval
SEP_CASES, SEP_CONTROLS = [5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]


def _boot(cases, controls, **kw):
    y = [1] * len(cases) + [0] * len(controls)
    return roc_analysis(y, list(cases) + list(controls), direction="<", ci_method="bootstrap", **kw)


def test_bootstrap_of_separated_groups_is_exactly_one():
    # every resample separates cases from controls: each resampled AUC is 1
    r = _boot(SEP_CASES, SEP_CONTROLS, n_boot=10)
    assert (r.auc, r.ci_low, r.ci_high) == (1.0, 1.0, 1.0)


def test_bootstrap_draws_every_subject():
    # only the first case (or control) breaks the separation: an interval below 1 needs it drawn
    r = _boot([-5.0] + SEP_CASES[1:], SEP_CONTROLS, n_boot=200)
    assert r.ci_low < 1.0
    r = _boot(SEP_CASES, [9.0] + SEP_CONTROLS[1:], n_boot=200)
    assert r.ci_low < 1.0


def test_bootstrap_is_reproducible_and_seeded():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = rng.normal(size=60) + y
    a = roc_analysis(y, s, ci_method="bootstrap", n_boot=200)
    b = roc_analysis(y, s, ci_method="bootstrap", n_boot=200, seed=0)
    c = roc_analysis(y, s, ci_method="bootstrap", n_boot=200, seed=5)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)  # the default seed is 0
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_bootstrap_takes_the_fewest_draws_allowed():
    c = roc_analysis([0, 0, 0, 1, 1, 1], [0.1, 0.5, 0.3, 0.4, 0.9, 0.6], ci_method="bootstrap", n_boot=10)
    assert c.ci_method == "bootstrap" and c.ci_low <= c.auc <= c.ci_high


def test_bootstrap_interval_agrees_with_delong_on_a_large_sample():
    # 100 cases and 100 controls: the percentile interval and DeLong's normal interval nearly coincide (widths within
    # 1.4 % here); a 90 % (or 96.7 %) interval in place of the 95 % one would be 13 % narrower (or 8 % wider)
    rng = np.random.default_rng(11)
    y = np.repeat([0, 1], 100)
    s = rng.normal(size=200) + 0.8 * y
    d = roc_analysis(y, s)
    b = roc_analysis(y, s, ci_method="bootstrap", n_boot=1500, seed=2)
    assert b.ci_high - b.ci_low == pytest.approx(d.ci_high - d.ci_low, rel=0.04)
    assert b.ci_low == pytest.approx(d.ci_low, abs=0.004) and b.ci_high == pytest.approx(d.ci_high, abs=0.004)
