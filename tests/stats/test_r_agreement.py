"""Agreement with R (pROC, survival, maxstat, stats): values from tools/r_reference/make_reference.R."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats import (cox_ph, cox_scan, delong_test, kaplan_meier, logistic_combination, maxstat_cutpoint, roc_analysis, spearman)
from TMBRBLib.stats.table1 import categorical_test, fisher_exact_2xc

from _stats_testdata import MAXSTAT_CASES, arr, fixture_csv, reference

TIGHT = dict(rtol=1e-9, atol=1e-12)
COX = dict(rtol=1e-5, atol=1e-12)


@pytest.fixture(scope="module")
def asah():
    return fixture_csv("asah.csv")


@pytest.fixture(scope="module")
def lung():
    return fixture_csv("lung.csv")


@pytest.mark.parametrize("name,column,sign", [("s100b", "s100b", 1), ("ndka", "ndka", 1), ("wfns", "wfns", 1),
                                               ("neg_s100b", "s100b", -1), ("age", "age", 1)])
def test_roc_matches_proc(asah, name, column, sign):
    ref = reference()["roc"][name]
    at = ref["at"]
    thresholds = [row["threshold"] for row in at]
    r = roc_analysis(asah["outcome"], sign * asah[column], name=name)
    assert r.direction == ref["direction"]
    assert (r.n_cases, r.n_controls) == (ref["n_cases"], ref["n_controls"])
    assert r.case_level == "Poor"
    np.testing.assert_allclose([r.auc, r.ci_low, r.ci_high, r.variance],
                               [ref["auc"], ref["ci_low"], ref["ci_high"], ref["variance"]], **TIGHT)
    best = ref["best"]
    np.testing.assert_allclose([[t["threshold"], t["sensitivity"], t["specificity"]] for t in r.youden_ties],
                               [[b["threshold"], b["sensitivity"], b["specificity"]] for b in best], **TIGHT)
    for row in at:
        rt = roc_analysis(asah["outcome"], sign * asah[column], threshold=row["threshold"])
        np.testing.assert_allclose([rt.threshold_sensitivity, rt.threshold_specificity],
                                   [row["sensitivity"], row["specificity"]], **TIGHT)
    curve = pd.DataFrame(ref["curve"])
    # pROC lists thresholds in increasing order for '<' and decreasing for '>'; compare as sets of points
    mine = np.column_stack([r.curve_thresholds, r.curve_sensitivity, r.curve_specificity])
    theirs = curve[["threshold", "sensitivity", "specificity"]].to_numpy(float)
    key = lambda a: a[np.lexsort((a[:, 2], a[:, 1]))]
    np.testing.assert_allclose(key(mine)[:, 1:], key(theirs)[:, 1:], **TIGHT)
    assert len(thresholds) == len(at)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_delong_paired_test_matches_proc(asah, i):
    ref = reference()["roc_test"][i]
    r = delong_test(asah["outcome"], asah[ref["score1"]], asah[ref["score2"]])
    np.testing.assert_allclose([r.auc1, r.auc2, r.z, r.p_value], [ref["auc1"], ref["auc2"], ref["z"], ref["p"]], **TIGHT)


def test_spearman_matches_cor_test(asah):
    ref = reference()["spearman"]
    r = spearman(asah["s100b"], asah["ndka"])
    np.testing.assert_allclose([r.rho, r.p_value], [ref["rho"], ref["p"]], **TIGHT)


def test_logistic_matches_glm(asah):
    ref = reference()["logistic"]
    r = logistic_combination(asah, "outcome", ["s100b", "wfns"])
    assert r.table["term"].tolist() == ["(Intercept)", "s100b", "wfns"]
    np.testing.assert_allclose(r.table[["coef", "se", "z", "p"]].to_numpy().T,
                               [ref["coef"], ref["se"], ref["z"], ref["p"]], **COX)
    np.testing.assert_allclose([r.loglik, r.roc.auc], [ref["loglik"], ref["auc"]], rtol=1e-9)


@pytest.mark.parametrize("key,group,conf_type,data", [
    ("lung_sex_log", "sex", "log", "lung.csv"), ("lung_sex_loglog", "sex", "log-log", "lung.csv"),
    ("lung_all_log", None, "log", "lung.csv"), ("lung_all_loglog", None, "log-log", "lung.csv"),
    ("plateau_log", None, "log", "plateau.csv"), ("veteran_celltype_log", "celltype", "log", "veteran.csv")])
def test_kaplan_meier_matches_survfit(key, group, conf_type, data):
    ref = reference()["km"][key]
    d = fixture_csv(data)
    r = kaplan_meier(d["time"], d["status"], d[group] if group else None, conf_type=conf_type)
    s = r.summary
    np.testing.assert_allclose(s["median"], arr(ref["median"]), **TIGHT)
    np.testing.assert_allclose(s["median_lower"], arr(ref["lcl"]), **TIGHT)
    np.testing.assert_allclose(s["median_upper"], arr(ref["ucl"]), **TIGHT)
    # quantile.survfit agrees with print.survfit on these data
    np.testing.assert_allclose(s["median"], arr(ref["q_median"]), **TIGHT)
    assert s["n"].tolist() == [int(v) for v in arr(ref["n"])]
    tab = pd.concat([c.table for c in r.curves])
    np.testing.assert_allclose(tab["time"], arr(ref["time"]), **TIGHT)
    np.testing.assert_allclose(tab["surv"], arr(ref["surv"]), **TIGHT)
    np.testing.assert_allclose(tab["lower"], arr(ref["lower"]), **TIGHT)
    np.testing.assert_allclose(tab["upper"], arr(ref["upper"]), **TIGHT)
    se = tab["std_err"].to_numpy()
    np.testing.assert_allclose(np.where(np.isinf(se), np.nan, se), arr(ref["std_err"]), **TIGHT)  # JSON writes R's Inf as null
    assert tab["n_risk"].tolist() == arr(ref["n_risk"]).astype(int).tolist()


def test_plateau_median_is_midpoint():
    d = fixture_csv("plateau.csv")
    r = kaplan_meier(d["time"], d["status"])
    assert r.summary["median"].iloc[0] == pytest.approx(4.5)  # S = 0.5 exactly on [4, 5): R takes (4 + 5) / 2


def test_numbers_at_risk_match_summary_survfit(lung):
    ref = reference()["km_at_risk"]
    r = kaplan_meier(lung["time"], lung["status"], lung["sex"])
    times = sorted(set(ref["time"]))
    got = r.at_risk(times).to_numpy().ravel()
    assert got.tolist() == [int(v) for v in ref["n_risk"]]


@pytest.mark.parametrize("key,group,data", [("lung_sex", "sex", "lung.csv"), ("lung_ecog", "ph_ecog", "lung.csv"),
                                            ("veteran_celltype", "celltype", "veteran.csv")])
def test_logrank_matches_survdiff(key, group, data):
    ref = reference()["logrank"][key]
    d = fixture_csv(data)
    r = kaplan_meier(d["time"], d["status"], d[group]).logrank
    assert r.df == ref["df"]
    np.testing.assert_allclose([r.chisq, r.p_value], [ref["chisq"], ref["p"]], **TIGHT)
    np.testing.assert_allclose(r.observed, arr(ref["observed"]), **TIGHT)
    np.testing.assert_allclose(r.expected, arr(ref["expected"]), **TIGHT)


@pytest.mark.parametrize("key,data,cov", [
    ("lung_multi", "lung.csv", ["age", "sex", "ph_ecog"]), ("lung_sex", "lung.csv", ["sex"]),
    ("lung_karno", "lung.csv", ["ph_karno", "wt_loss"]), ("veteran", "veteran.csv", ["karno", "age", "trt"]),
    ("ovarian", "ovarian.csv", ["age", "ecog", "rx"])])
def test_cox_matches_coxph(key, data, cov):
    ref = reference()["cox"][key]
    d = fixture_csv(data)
    r = cox_ph(d, "time", "status", cov)
    t = r.table
    # R's JSON writes a one-term model's terms as a bare string: compare against a list either way.
    expected_terms = ref["terms"] if isinstance(ref["terms"], list) else [ref["terms"]]
    assert t["term"].tolist() == expected_terms
    assert (r.n, r.n_events) == (ref["n"], ref["nevent"])
    for col, rk in (("coef", "coef"), ("se", "se"), ("hr", "hr"), ("hr_lower", "hr_lower"), ("hr_upper", "hr_upper"),
                    ("p", "p")):
        np.testing.assert_allclose(t[col], arr(ref[rk]), **COX, err_msg=col)
    np.testing.assert_allclose([r.loglik_null, r.loglik], arr(ref["loglik"]), **COX)
    np.testing.assert_allclose([r.lr_stat, r.lr_p], [ref["lr_test"][0], ref["lr_test"][2]], **COX)
    np.testing.assert_allclose([r.score_stat, r.score_p], [ref["score_test"][0], ref["score_test"][2]], **COX)
    np.testing.assert_allclose([r.wald_stat], [ref["wald_test"][0]], rtol=1e-3)  # R prints Wald rounded to 2 dp
    np.testing.assert_allclose(r.wald_p, ref["wald_test"][2], rtol=1e-2)
    np.testing.assert_allclose(r.concordance, ref["concordance"], **COX)


def test_cox_scan_matches_two_variable_coxph(lung):
    ref = reference()["cox_scan"]
    r = cox_scan(lung, "time", "status", "sex", ["age", "ph_ecog", "ph_karno", "wt_loss"])
    t = r.table.set_index("covariate")
    for cv, m in ref.items():
        np.testing.assert_allclose([t.loc[cv, "marker_p"], t.loc[cv, "covariate_p"]], arr(m["p"]), **COX)
        np.testing.assert_allclose([t.loc[cv, "marker_hr"], t.loc[cv, "covariate_hr"]], arr(m["hr"]), **COX)
        np.testing.assert_allclose(t.loc[cv, "model_logrank_p"], m["score_test"][2], **COX)
        assert t.loc[cv, "n"] == m["n"]


@pytest.mark.parametrize("key,data,t,e,x,minprop,maxprop", MAXSTAT_CASES)
def test_maxstat_matches_r(key, data, t, e, x, minprop, maxprop):
    ref = reference()["maxstat"][key]
    d = fixture_csv(data)
    r = maxstat_cutpoint(d[t], d[e], d[x], minprop=minprop, maxprop=maxprop)
    np.testing.assert_allclose([r.statistic, r.p_value, r.cutpoint], [ref["statistic"], ref["p"], ref["estimate"]], **TIGHT)
    np.testing.assert_allclose(r.stats, arr(ref["stats"]), **TIGHT)
    np.testing.assert_allclose(r.cuts, arr(ref["cuts"]), **TIGHT)
    np.testing.assert_allclose([r.naive_logrank_chisq, r.naive_p_value],
                               [ref["naive_logrank_chisq"], ref["naive_logrank_p"]], **TIGHT)
    assert r.naive_p_value < r.p_value  # the search correction makes p larger


def test_table1_tests_match_r(lung):
    ref = reference()["table1"]
    d = lung[["sex", "ph_ecog", "age", "wt_loss"]].dropna()
    test, p = categorical_test(pd.crosstab(d["sex"], d["ph_ecog"] > 0).to_numpy())
    assert test == "chi-square"
    np.testing.assert_allclose(p, ref["chisq_sex_ecog"]["p"], **TIGHT)
    np.testing.assert_allclose(fisher_exact_2xc(pd.crosstab(d["sex"], d["ph_ecog"]).to_numpy()),
                               ref["fisher_sex_ecog"]["p"], rtol=1e-7)
    test, p = categorical_test(pd.crosstab(d["sex"], d["ph_ecog"]).to_numpy())
    assert test == "Fisher"
    np.testing.assert_allclose(p, ref["fisher_sex_ecog"]["p"], rtol=1e-7)
    from scipy import stats

    a1, a2 = d.loc[d["sex"] == 1, "age"], d.loc[d["sex"] == 2, "age"]
    np.testing.assert_allclose(stats.ttest_ind(a1, a2, equal_var=False).pvalue, ref["welch_age"]["p"], **TIGHT)
