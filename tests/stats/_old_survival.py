"""The survival code before it was made O(n log n), kept as the reference the new paths must equal.

``old_efron_loglik`` loops over the distinct event times; ``old_logrank`` is lifelines'
``multivariate_logrank_test`` with observed/expected counted per event time; ``old_cox`` is
lifelines' ``CoxPHFitter`` with the tight convergence the toolkit used.
"""
from __future__ import annotations

import numpy as np


def old_efron_loglik(X: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray):
    """Efron partial log-likelihood, its gradient (score) and information matrix at ``beta``."""
    X = np.asarray(X, float)
    n, p = X.shape
    order = np.argsort(time, kind="mergesort")
    X, time, event = X[order], time[order], event[order]
    eta = X @ beta
    w = np.exp(eta - eta.max())  # scaling cancels in every ratio; log-likelihood corrected below
    # reverse cumulative sums = sums over risk sets {j: time_j >= t}
    s0 = np.cumsum(w[::-1])[::-1]
    s1 = np.cumsum((w[:, None] * X)[::-1], axis=0)[::-1]
    s2 = np.cumsum((w[:, None, None] * X[:, :, None] * X[:, None, :])[::-1], axis=0)[::-1]
    ll, grad, info = 0.0, np.zeros(p), np.zeros((p, p))
    ev_times = np.unique(time[event == 1])
    for t in ev_times:
        k = np.searchsorted(time, t, side="left")
        dmask = (time == t) & (event == 1)
        d = int(dmask.sum())
        wd = w[dmask]
        xd = X[dmask]
        d0, d1 = wd.sum(), (wd[:, None] * xd).sum(0)
        d2 = (wd[:, None, None] * xd[:, :, None] * xd[:, None, :]).sum(0)
        ll += eta[dmask].sum()
        grad += xd.sum(0)
        for l in range(d):
            f = l / d
            den = s0[k] - f * d0
            m1 = (s1[k] - f * d1) / den
            ll -= np.log(den) + eta.max()
            grad -= m1
            info += (s2[k] - f * d2) / den - np.outer(m1, m1)
    return float(ll), grad, info


def _observed_expected(time, event, labels, groups):
    ut = np.unique(time[event == 1])
    obs, exp_ = [], []
    at_risk_all = np.array([(time >= t).sum() for t in ut], float)
    d_all = np.array([((time == t) & (event == 1)).sum() for t in ut], float)
    for g in groups:
        m = labels == g
        obs.append(float(event[m].sum()))
        r = np.array([(time[m] >= t).sum() for t in ut], float)
        exp_.append(float(np.sum(d_all * r / at_risk_all)))
    return obs, exp_


def old_logrank(time, event, labels):
    """chisq, observed, expected as the toolkit computed them with lifelines."""
    from lifelines.statistics import multivariate_logrank_test

    groups = sorted(set(labels.tolist()), key=str)
    res = multivariate_logrank_test(time, labels, event)
    obs, exp_ = _observed_expected(time, event, labels, groups)
    return float(res.test_statistic), obs, exp_


def old_cox(df, time, event, covariates):
    """lifelines CoxPHFitter fit (Efron ties) as the toolkit ran it: params, SE, log-likelihood, concordance."""
    from lifelines import CoxPHFitter

    d = df[[time, event, *covariates]].dropna().rename(columns={time: "T", event: "E"})
    cph = CoxPHFitter()
    cph.fit(d, "T", "E", fit_options={"precision": 1e-12, "r_precision": 1e-12, "step_size": 0.95, "max_steps": 500})
    return (cph.params_[covariates].to_numpy(), cph.standard_errors_[covariates].to_numpy(),
            float(cph.log_likelihood_), float(cph.concordance_index_))
