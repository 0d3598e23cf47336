"""Cox fits a researcher reads where Newton-Raphson needs its safeguards: step halving, ties, convergence notes.

Reference values are R 4.2 survival 3.x (coxph's defaults) on a 12-patient cohort with one hypermutated tumour
(TMB 34 mut/Mb, dead at the first time) and tied death times:

    d <- data.frame(time = c(4, 2, 1, 4, 3, 3, 3, 2, 1, 4, 6, 4),
                    event = c(0, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1),
                    tmb = c(4, 6, 34, 6, 10, 8, 10, 8, 10, 6, 8, 10))
    f <- coxph(Surv(time, event) ~ tmb, data = d, ties = "efron")    # and ties = "breslow"
    s <- summary(f); s$coefficients; s$conf.int; f$loglik; s$logtest; s$sctest; s$waldtest; s$concordance

The outlier makes the log-likelihood curve more steeply away from beta = 0 than at 0, so the first Newton step
overshoots to a lower log-likelihood: the fit has to halve its step (R's coxfit6 does the same), and plain
Newton-Raphson from there runs off to infinity.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats import TMBRBStatsWarning, cox_ph
from TMBRBLib.stats._coxfit import concordance, fit_cox, risk_sets
from TMBRBLib.stats.cox import efron_loglik

COX = dict(rtol=1e-6, atol=1e-12)

# coef, exp(coef), se, z, p; lower/upper .95; loglik (null, fit); LR, score and Wald tests; concordance
R_HALVING = {
    "efron": dict(coef=0.114230743329037, hr=1.12101076079858, se=0.0536993195921932, z=2.12722887732164,
                  p=0.0334010708791089, lower=1.00902247023882, upper=1.24542828617957,
                  loglik=(-16.4036955572058, -14.4363581557856), lr=3.93467480284040505, lr_p=0.04730028490058247,
                  score=7.43566345142910201, score_p=0.00639437859766557, wald_p=0.0334010708791088),
    "breslow": dict(coef=0.101346738992137, hr=1.10666029752157, se=0.0530708822210016, z=1.90964865762173,
                    p=0.0561784657039242, lower=0.997333283234374, upper=1.22797166674195,
                    loglik=(-16.9527423937920, -15.3308744188032), lr=3.2437359499774843, lr_p=0.0716969750817261,
                    score=5.6057716894977165, score_p=0.0179014089972700, wald_p=0.0561784657039241),
}
R_HALVING_CONCORDANCE = 0.694444444444444  # the same for both ties rules (one covariate: the same order)


def _hypermutated() -> pd.DataFrame:
    return pd.DataFrame({"time": [4, 2, 1, 4, 3, 3, 3, 2, 1, 4, 6, 4],
                         "event": [0, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1],
                         "tmb": [4, 6, 34, 6, 10, 8, 10, 8, 10, 6, 8, 10]})


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_the_cohort_needs_step_halving(ties):
    """The cohort is the one the docstring says: full Newton steps from 0 lower the log-likelihood (Efron's first
    step, Breslow's second) and then run off, so only a fit that halves its steps reaches R's values."""
    d = _hypermutated()
    X, t, e = d[["tmb"]].to_numpy(float), d["time"].to_numpy(float), d["event"].to_numpy()
    beta, lls = np.zeros(1), []
    for _ in range(4):
        ll, grad, info = efron_loglik(X, t, e, beta, ties)
        lls.append(ll)
        beta = beta + np.linalg.solve(info, grad)
    assert np.min(np.diff(lls[:3])) < -0.25  # a full step lowered the log-likelihood
    assert lls[3] < lls[0] - 5  # and plain Newton-Raphson runs away from the maximum


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_a_fit_that_halves_its_step_matches_coxph(ties):
    ref = R_HALVING[ties]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TMBRBStatsWarning)  # a converged fit: no note
        r = cox_ph(_hypermutated(), "time", "event", ["tmb"], ties=ties, min_events=9)
    row = r.table.iloc[0]
    np.testing.assert_allclose([row["coef"], row["hr"], row["se"], row["z"], row["p"], row["hr_lower"], row["hr_upper"]],
                               [ref[k] for k in ("coef", "hr", "se", "z", "p", "lower", "upper")], **COX)
    np.testing.assert_allclose([r.loglik_null, r.loglik], ref["loglik"], **COX)
    np.testing.assert_allclose([r.lr_stat, r.lr_p, r.score_stat, r.score_p, r.wald_p, r.concordance],
                               [ref["lr"], ref["lr_p"], ref["score"], ref["score_p"], ref["wald_p"],
                                R_HALVING_CONCORDANCE], **COX)
    assert (r.n, r.n_events, r.warnings) == (12, 9, [])


def test_a_fit_stopped_by_its_iteration_limit_says_so():
    """fit_cox's convergence note, which cox_ph passes on as a warning when nothing else explains a bad fit."""
    d = _hypermutated()
    rs = risk_sets(d[["tmb"]].to_numpy(float), d["time"].to_numpy(float), d["event"].to_numpy())  # Efron's, as R's
    short = fit_cox(rs, max_iter=2)
    assert (short.converged, short.iterations, short.messages) == (False, 2, ["Newton-Raphson did not converge in 2 "
                                                                              "iterations"])
    assert abs(short.beta[0] - R_HALVING["efron"]["coef"]) > 1e-4  # stopped short of R's coefficient
    full = fit_cox(rs)
    assert full.converged and full.messages == [] and 2 < full.iterations < 100
    np.testing.assert_allclose(full.beta, [R_HALVING["efron"]["coef"]], **COX)
    np.testing.assert_allclose(np.sqrt(full.var[0, 0]), R_HALVING["efron"]["se"], **COX)
    np.testing.assert_allclose([full.loglik_null, full.loglik], R_HALVING["efron"]["loglik"], **COX)
    # a limit of exactly the iterations the fit needs is enough; one fewer is not
    enough = fit_cox(rs, max_iter=full.iterations)
    assert enough.converged and enough.messages == [] and enough.iterations == full.iterations
    np.testing.assert_array_equal(enough.beta, full.beta)
    assert fit_cox(rs, max_iter=full.iterations - 1).messages == [
        f"Newton-Raphson did not converge in {full.iterations - 1} iterations"]


def test_an_unknown_ties_rule_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^ties must be one of \('efron', 'breslow'\), not 'exact'$"):
        efron_loglik(np.ones((3, 1)), np.arange(3.0), np.ones(3), np.zeros(1), ties="exact")


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_the_partial_likelihood_of_a_cohort_without_events_is_one(ties):
    # the empty product: log-likelihood 0, no score, no information (cox_ph refuses such a cohort before fitting)
    X = np.array([[1.0, 0.5], [2.0, 0.1], [0.0, 0.7]])
    ll, grad, info = efron_loglik(X, np.array([3.0, 1.0, 2.0]), np.zeros(3), np.array([0.3, -0.2]), ties)
    assert ll == 0.0
    np.testing.assert_array_equal(grad, [0.0, 0.0])
    np.testing.assert_array_equal(info, np.zeros((2, 2)))


@pytest.mark.parametrize("time,event,risk,expected", [
    # R: concordance(Surv(time, event) ~ risk, reverse = TRUE)$concordance
    ([1, 2], [1, 0], [2, 1], 1.0),          # one comparable pair, concordant
    ([1, 2], [1, 0], [1, 2], 0.0),          # one comparable pair, discordant
    ([1, 3, 3], [0, 1, 1], [1, 2, 3], np.nan),  # two tied deaths after the only censored time: no comparable pair
])
def test_harrells_c_with_one_or_no_comparable_pair_is_rs(time, event, risk, expected):
    c = concordance(np.array(time, float), np.array(event), np.array(risk, float))
    np.testing.assert_equal(c, expected)


# Two small cohorts whose coefficients run off to infinity (separation), as R's coxph warns "one or more coefficients
# may be infinite". R 4.2 / survival 3.x, coxph's defaults:
#   d1 <- data.frame(time = c(1, 3, 1, 1), event = c(1, 1, 0, 1), crp = c(0, 1, 200, 0))
#   f1 <- coxph(Surv(time, event) ~ crp, data = d1, ties = "breslow")
#   d2 <- data.frame(time = c(3, 4, 2, 3, 2, 3), event = c(0, 1, 1, 1, 1, 1), a = c(0, 0, 1, 2, 1, 0),
#                    b = c(1, 2, 2, 200, 2, 0))
#   f2 <- coxph(Surv(time, event) ~ a + b, data = d2)
# summary(f)$sctest (the score test, at beta = 0, does not depend on where the fit stopped) and summary(f)$logtest
# (R stops after 20 iterations, a little short of the supremum this fit reaches).
def _runaway_one() -> pd.DataFrame:
    return pd.DataFrame({"time": [1, 3, 1, 1], "event": [1, 1, 0, 1], "crp": [0, 1, 200, 0]})


def _runaway_two() -> pd.DataFrame:
    return pd.DataFrame({"time": [3, 4, 2, 3, 2, 3], "event": [0, 1, 1, 1, 1, 1], "a": [0, 0, 1, 2, 1, 0],
                         "b": [1, 2, 2, 200, 2, 0]})


def test_a_breslow_fit_that_runs_off_has_no_standard_errors():
    d = _runaway_one()
    with pytest.warns(TMBRBStatsWarning, match=r"^Cox model: the coefficient of crp diverged \(-\d") as caught:
        r = cox_ph(d, "time", "event", ["crp"], ties="breslow", min_events=3)
    # where a run-off fit stops depends on rounding (-27.7 with numpy 2.3, -28 with 2.4): far out, not the exact place
    stopped = float(re.search(r"diverged \((-[0-9.]+),", str(caught[0].message)).group(1))
    assert -40 < stopped < -20 and stopped == pytest.approx(r.table.iloc[0]["coef"], rel=0.01)
    row = r.table.iloc[0]
    np.testing.assert_allclose([r.score_stat, r.score_p], [0.675585060575404, 0.411111150909970], **COX)
    np.testing.assert_allclose([r.loglik_null, r.lr_stat], [-2.77258872223978, 2.7725868412703525], rtol=1e-5)
    fit = fit_cox(risk_sets(d[["crp"]].to_numpy(float), d["time"].to_numpy(float), d["event"].to_numpy(), "breslow"))
    assert fit.var.shape == (1, 1)
    # where the fit stops every risk set's weight is on one patient: the information there is exactly 0 (numpy 2.3)
    # or a few ulp above it (2.4), by rounding. Either way the Wald figures say nothing: none at all, or an SE so
    # large that the CI spans HR 1 a million-fold each way and p is 1 to 4 digits.
    if np.isnan(fit.var).all():
        assert fit.messages == ["information matrix singular at the fit; standard errors undefined"]
        assert np.isnan([row["se"], row["hr_lower"], row["hr_upper"], row["z"], row["p"], r.wald_stat]).all()
    else:
        assert fit.messages == [] and fit.var[0, 0] > 1e6
        assert row["se"] > 1e3 and row["p"] > 0.9999
        assert row["hr_lower"] < 1e-6 and row["hr_upper"] > 1e6


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_a_fit_whose_newton_step_overflows_stops_with_a_note(ties):
    d = _runaway_two()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow on the way is the fit's business: no numpy RuntimeWarning
        fit = fit_cox(risk_sets(d[["a", "b"]].to_numpy(float), d["time"].to_numpy(float), d["event"].to_numpy(),
                                ties))
    assert not fit.converged and len(fit.messages) == 1
    assert re.fullmatch(r"non-finite Newton step at iteration \d+; convergence halted", fit.messages[0])
    assert np.all(np.isfinite(fit.beta)) and fit.beta[0] > 100 > -fit.beta[1] > 1  # where it stopped, finite
    if ties == "efron":
        with pytest.warns(TMBRBStatsWarning) as caught:
            r = cox_ph(d, "time", "event", ["a", "b"], min_events=5)
        # only the two divergence warnings reach the user
        assert [(w.category, str(w.message)[:35]) for w in caught] == [
            (TMBRBStatsWarning, "Cox model: the coefficient of a div"), (TMBRBStatsWarning, "Cox model: the coefficient of b div")]
        np.testing.assert_allclose([r.score_stat, r.score_p], [6.2749790496162987, 0.0433915948011499], **COX)
        np.testing.assert_allclose(r.lr_stat, 8.9995462247154805, rtol=1e-3)  # both stop short of the supremum


def test_concordance_counts_risks_a_rounding_error_apart_as_tied():
    """Two patients whose linear predictors differ only in the last bit (the same covariates summed by a different
    BLAS kernel) are tied in risk, as R's coxph counts them: pair (1, 2) counts one half, (1, 3) and (2, 3) one each."""
    lp = 0.1 + 0.2  # 0.30000000000000004
    risk = np.array([np.nextafter(lp, 1.0), lp, 0.1])
    assert risk[0] != risk[1]
    c = concordance(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), risk)
    assert c == pytest.approx(2.5 / 3, abs=1e-15)
    # risks 1e-6 apart are not a rounding error: the earlier event's higher risk is concordant
    assert concordance(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), np.array([0.300001, 0.3, 0.1])) == 1.0
    # the tolerance is relative: a large linear predictor's last-bit neighbours are tied too
    big = 1e6
    assert concordance(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]),
                       np.array([np.nextafter(big, 2e6), big, 0.0])) == pytest.approx(2.5 / 3)
