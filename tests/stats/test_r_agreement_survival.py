"""Survival at scale: Breslow ties, Lau94, reference levels and numbers at risk against R
(tests/stats/fixtures/make_reference_survival.R), and the O(n log n) paths against the old ones."""
from __future__ import annotations

import json
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats import (TMBRBStatsInputError, cox_ph, cox_scan, kaplan_meier, logistic_combination, logrank_test,
                            maxstat_cutpoint)
from TMBRBLib.stats.cli import main as cli_main
from TMBRBLib.stats.cox import efron_loglik

from _old_survival import old_cox, old_efron_loglik, old_logrank
from _stats_testdata import FIXTURES, MAXSTAT_CASES, arr, fixture_csv

TIGHT = dict(rtol=1e-9, atol=1e-12)
COX = dict(rtol=1e-5, atol=1e-12)


@lru_cache(maxsize=None)
def ref() -> dict:
    with open(FIXTURES / "reference_survival.json") as f:
        return json.load(f)


def _data(name: str) -> pd.DataFrame:
    d = fixture_csv(name)
    if name == "lung.csv":
        d["sex_txt"] = np.where(d["sex"] == 1, "male", "female")
    return d


def _r_term(term: str) -> str:
    """Our 'celltype[large]' is R's 'celltypelarge'."""
    return term.replace("[", "").replace("]", "")


def _check_cox(r, rr):
    assert [_r_term(t) for t in r.table["term"]] == (rr["terms"] if isinstance(rr["terms"], list) else [rr["terms"]])
    assert (r.n, r.n_events) == (rr["n"], rr["nevent"])
    for col in ("coef", "se", "hr", "hr_lower", "hr_upper", "p"):
        np.testing.assert_allclose(r.table[col], arr(rr[col]), **COX, err_msg=col)
    np.testing.assert_allclose([r.loglik_null, r.loglik], arr(rr["loglik"]), **COX)
    np.testing.assert_allclose([r.lr_stat, r.score_stat], [rr["lr_test"][0], rr["score_test"][0]], **COX)
    np.testing.assert_allclose(r.concordance, rr["concordance"], **COX)


@pytest.mark.parametrize("key,data,cov", [
    ("lung_multi", "lung.csv", ["age", "sex", "ph_ecog"]), ("veteran", "veteran.csv", ["karno", "age", "trt"]),
    ("ovarian", "ovarian.csv", ["age", "ecog", "rx"]), ("sim", "sim.csv", ["x", "ecog", "grp"])])
def test_cox_breslow_matches_coxph(key, data, cov):
    r = cox_ph(_data(data), "time", "status", cov, ties="breslow")
    assert r.ties == "breslow" and "Breslow ties" in str(r)
    _check_cox(r, ref()["cox_breslow"][key])


def test_breslow_differs_from_efron_with_ties():
    d = _data("sim.csv")
    b = cox_ph(d, "time", "status", ["x", "ecog", "grp"], ties="breslow")
    e = cox_ph(d, "time", "status", ["x", "ecog", "grp"])
    _check_cox(e, ref()["cox_efron_sim"])
    assert not np.allclose(b.table["coef"], e.table["coef"], rtol=1e-6)


@pytest.mark.parametrize("key,data,cov,reference,ties", [
    ("veteran_default", "veteran.csv", ["celltype", "karno"], None, "efron"),
    ("veteran_large", "veteran.csv", ["celltype", "karno"], {"celltype": "large"}, "efron"),
    ("lung_sex_male", "lung.csv", ["sex_txt", "age"], {"sex_txt": "male"}, "breslow"),
    ("sim_grp_c", "sim.csv", ["grp", "x"], {"grp": "c"}, "efron")])
def test_cox_reference_level_matches_relevel(key, data, cov, reference, ties):
    r = cox_ph(_data(data), "time", "status", cov, reference=reference, ties=ties)
    _check_cox(r, ref()["cox_reference"][key])


def test_cox_scan_passes_reference_and_ties():
    d = _data("veteran.csv")
    scan = cox_scan(d, "time", "status", "karno", ["celltype"], reference={"celltype": "large"}, ties="breslow")
    assert scan.table["covariate"].tolist() == ["celltype[adeno]", "celltype[smallcell]", "celltype[squamous]"]
    assert scan.models["celltype"].ties == "breslow" and "Breslow" in str(scan)


@pytest.mark.parametrize("reference,message", [
    ({"histology": "adeno"}, "not among the covariates"),
    ({"celltype": "Large"}, r"reference level 'Large' of covariate 'celltype' is not one of its values"),
    ({"karno": "60"}, "is numeric, so it has no reference level")])
def test_bad_reference_is_a_clear_error(reference, message):
    with pytest.raises(TMBRBStatsInputError, match=message):
        cox_ph(_data("veteran.csv"), "time", "status", ["celltype", "karno"], reference=reference)


@pytest.mark.parametrize("key,reference", [("default", None), ("male", {"gender": "Male"})])
def test_logistic_reference_level_matches_glm_relevel(key, reference):
    rr = ref()["logistic_reference"][key]
    r = logistic_combination(fixture_csv("asah.csv"), "outcome", ["s100b", "gender"], reference=reference)
    assert [_r_term(t) for t in r.table["term"]] == rr["terms"]
    np.testing.assert_allclose(r.table[["coef", "se", "p"]].to_numpy().T, [rr["coef"], rr["se"], rr["p"]], **COX)
    np.testing.assert_allclose(r.loglik, rr["loglik"], rtol=1e-9)
    # predict() applies the fit to rows: its own rows give the fitted probabilities; a new level counts as reference
    d = fixture_csv("asah.csv")
    np.testing.assert_allclose(r.predict(d), r.fitted, rtol=1e-12)
    new = d.iloc[:3].assign(gender="Unknown")
    ref_level = (reference or {}).get("gender", "Female")
    np.testing.assert_allclose(r.predict(new), r.predict(d.iloc[:3].assign(gender=ref_level)), rtol=1e-12)


def test_bad_ties_is_a_clear_error():
    with pytest.raises(TMBRBStatsInputError, match="ties must be 'efron'"):
        cox_ph(_data("veteran.csv"), "time", "status", ["karno"], ties="exact")


def test_cli_reference_and_ties(tmp_path, capsys):
    csv = str(FIXTURES / "veteran.csv")
    rc = cli_main(["analyze", "cox", "--csv", csv, "--time", "time", "--event", "status", "--covariates", "celltype", "karno", "--reference",
                   "celltype=large", "--ties", "breslow", "--out", str(tmp_path)])
    assert rc == 0
    out = json.loads((tmp_path / "cox.json").read_text())
    assert out["ties"] == "breslow"
    assert [t["term"] for t in out["table"]][:3] == ["celltype[adeno]", "celltype[smallcell]", "celltype[squamous]"]
    rc = cli_main(["analyze", "cox", "--csv", csv, "--time", "time", "--event", "status", "--covariates", "celltype", "--reference", "celltype",
                   "--out", str(tmp_path)])
    assert rc == 2 and "is not COLUMN=LEVEL" in capsys.readouterr().err


@pytest.mark.parametrize("key,data,t,e,x,minprop,maxprop",
                         MAXSTAT_CASES + [("sim_x", "sim.csv", "time", "status", "x", 0.1, 0.9)])
def test_maxstat_lau94_matches_r(key, data, t, e, x, minprop, maxprop):
    rr = ref()["maxstat"][key]
    d = _data(data)
    r = maxstat_cutpoint(d[t], d[e], d[x], minprop=minprop, maxprop=maxprop)
    np.testing.assert_allclose([r.statistic, r.cutpoint, r.p_value, r.p_value_lau94],
                               [rr["statistic"], rr["estimate"], rr["p_lau92"], rr["p_lau94"]], **TIGHT)
    assert "(Lau94)" in str(r) and r.to_dict()["p_value_lau94"] == pytest.approx(rr["p_lau94"], rel=1e-9)


@pytest.mark.parametrize("key,data,t,e,x,minprop,maxprop",
                         MAXSTAT_CASES + [("sim_x", "sim.csv", "time", "status", "x", 0.1, 0.9)])
def test_maxstat_permutation_p_matches_r_condmc(key, data, t, e, x, minprop, maxprop):
    """The Monte-Carlo p agrees with maxstat's condMC (B = 1e5) within 4 Monte-Carlo standard errors."""
    rr = ref()["maxstat"][key]
    d = _data(data)
    b = 10000
    r = maxstat_cutpoint(d[t], d[e], d[x], minprop=minprop, maxprop=maxprop, permutations=b, seed=1)
    p_r = rr["p_condmc"]
    se = np.sqrt(p_r * (1 - p_r) / b + p_r * (1 - p_r) / rr["condmc_b"])
    assert abs(r.p_value_permutation - p_r) <= 4 * se + 2 / b, (r.p_value_permutation, p_r)
    assert r.permutations == b and "10000 permutations" in str(r)
    again = maxstat_cutpoint(d[t], d[e], d[x], minprop=minprop, maxprop=maxprop, permutations=b, seed=1)
    assert again.p_value_permutation == r.p_value_permutation  # seeded


def test_maxstat_permutations_bad_value_is_a_clear_error():
    d = _data("lung.csv")
    for bad in (-1, 2.5, True):
        with pytest.raises(TMBRBStatsInputError, match="permutations must be a whole number >= 0"):
            maxstat_cutpoint(d["time"], d["status"], d["age"], permutations=bad)
    assert np.isnan(maxstat_cutpoint(d["time"], d["status"], d["age"]).p_value_permutation)


def test_logrank_and_km_match_r_on_a_larger_cohort_with_ties():
    d = _data("sim.csv")
    rr = ref()
    lr = logrank_test(d["time"].to_numpy(float), d["status"].to_numpy(), d["grp"].to_numpy())
    np.testing.assert_allclose([lr.chisq], [rr["logrank_sim"]["chisq"]], **TIGHT)
    np.testing.assert_allclose(lr.observed, arr(rr["logrank_sim"]["observed"]), **TIGHT)
    np.testing.assert_allclose(lr.expected, arr(rr["logrank_sim"]["expected"]), **TIGHT)
    km = kaplan_meier(d["time"], d["status"], d["grp"], risk_times=sorted(set(rr["km_sim"]["n_risk_times"])))
    tab = pd.concat([c.table for c in km.curves])
    np.testing.assert_allclose(km.summary["median"], arr(rr["km_sim"]["median"]), **TIGHT)
    np.testing.assert_allclose(tab["surv"], arr(rr["km_sim"]["surv"]), **TIGHT)
    se = tab["std_err"].to_numpy()
    np.testing.assert_allclose(np.where(np.isinf(se), np.nan, se), arr(rr["km_sim"]["std_err"]), **TIGHT)
    # numbers at risk are in the JSON, at the requested times, as summary(fit, times = ) (strata in order)
    js = km.to_dict()["at_risk"]
    assert js["time"] == sorted(set(rr["km_sim"]["n_risk_times"]))
    got = [v for g in ("a", "b", "c") for v in js["n_risk"][g]]
    assert got == [int(v) for v in rr["km_sim"]["n_risk"]]


def test_km_json_has_numbers_at_risk_of_the_figure(tmp_path):
    rc = cli_main(["analyze", "km", "--csv", str(FIXTURES / "lung.csv"), "--time", "time", "--event", "status",
                   "--group", "sex", "--out", str(tmp_path)])
    assert rc == 0
    js = json.loads((tmp_path / "km.json").read_text())["at_risk"]
    assert js["time"][0] == 0 and js["time"] == sorted(js["time"]) and len(js["time"]) >= 3
    lung = _data("lung.csv")
    for g in ("1", "2"):  # number with time >= t, counted directly
        sub = lung[lung["sex"] == int(g)]
        assert js["n_risk"][g] == [int((sub["time"] >= t).sum()) for t in js["time"]]


# ---------------------------------------------------------------- the O(n log n) paths equal the old ones

@pytest.mark.parametrize("data,group", [("lung.csv", "sex"), ("lung.csv", "ph_ecog"), ("veteran.csv", "celltype"),
                                        ("sim.csv", "grp")])
def test_logrank_equals_old_lifelines_path(data, group):
    d = _data(data).dropna(subset=["time", "status", group])
    t, e, g = d["time"].to_numpy(float), d["status"].to_numpy(int), d[group].to_numpy()
    new = logrank_test(t, e, g)
    chisq, obs, exp_ = old_logrank(t, e, g)
    np.testing.assert_allclose([new.chisq], [chisq], rtol=1e-10)
    np.testing.assert_allclose(new.observed, obs, rtol=1e-12)
    np.testing.assert_allclose(new.expected, exp_, rtol=1e-10)


@pytest.mark.parametrize("data,cov", [("lung.csv", ["age", "sex", "ph_ecog"]), ("veteran.csv", ["karno", "age", "trt"]),
                                      ("ovarian.csv", ["age", "ecog", "rx"]), ("sim.csv", ["x", "ecog"])])
def test_partial_likelihood_equals_old_loop(data, cov):
    d = _data(data).dropna(subset=["time", "status", *cov])
    X, t, e = d[cov].to_numpy(float), d["time"].to_numpy(float), d["status"].to_numpy(int)
    rng = np.random.default_rng(0)
    for beta in (np.zeros(len(cov)), rng.normal(0, 0.05, len(cov))):
        ll, g, info = efron_loglik(X, t, e, beta)
        ll0, g0, info0 = old_efron_loglik(X, t, e, beta)
        np.testing.assert_allclose(ll, ll0, rtol=1e-10)
        np.testing.assert_allclose(g, g0, rtol=1e-8, atol=1e-8 * np.abs(g0).max())
        np.testing.assert_allclose(info, info0, rtol=1e-8)


@pytest.mark.parametrize("data,cov", [("lung.csv", ["age", "sex", "ph_ecog"]), ("veteran.csv", ["karno", "age", "trt"]),
                                      ("ovarian.csv", ["age", "ecog", "rx"]), ("dlbcl.csv", ["MGE"])])
def test_cox_fit_equals_old_lifelines_fit(data, cov):
    d = _data(data)
    if data == "dlbcl.csv":
        d = d.rename(columns={"cens": "status"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = cox_ph(d, "time", "status", cov)
        beta, se, ll, c = old_cox(d, "time", "status", cov)
    np.testing.assert_allclose(r.table["coef"], beta, rtol=1e-7)
    np.testing.assert_allclose(r.table["se"], se, rtol=1e-7)
    np.testing.assert_allclose([r.loglik, r.concordance], [ll, c], rtol=1e-9)
