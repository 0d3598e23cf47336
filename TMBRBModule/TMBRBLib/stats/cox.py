"""Cox proportional hazards (Efron ties) as R's survival::coxph, and the paper's figure-4 scan.

Fitting is lifelines' CoxPHFitter (Efron ties) with tight convergence so coefficients agree with
R to ~1e-10; the score (log-rank) test, which lifelines does not report for a fitted model, is
computed here from the Efron partial likelihood at beta = 0, as R's summary.coxph does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ._input import check_event, check_time, require_columns, require_events, to_numeric
from ._result import Result, jsonable
from .errors import TMBRBStatsInputError, TMBRBStatsWarning

__all__ = ["CoxResult", "cox_ph", "cox_scan", "CoxScanResult", "efron_loglik", "plot_forest"]

MIN_EVENTS = 10
_FIT_OPTIONS = {"precision": 1e-12, "r_precision": 1e-12, "step_size": 0.95, "max_steps": 500}


def efron_loglik(X: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray):
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


@dataclass
class CoxResult(Result):
    table: pd.DataFrame
    n: int
    n_events: int
    n_dropped: int
    loglik_null: float
    loglik: float
    lr_stat: float
    lr_df: int
    lr_p: float
    wald_stat: float
    wald_p: float
    score_stat: float
    score_p: float
    concordance: float
    ties: str = "efron"
    warnings: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        t = self.table.copy()
        s = (f"Cox PH (Efron ties): n = {self.n}, events = {self.n_events}"
             + (f", {self.n_dropped} row(s) with missing values dropped" if self.n_dropped else "") + "\n")
        s += t.to_string(index=False, float_format=lambda v: f"{v:.4g}") + "\n"
        s += (f"Concordance = {self.concordance:.4f}\nLikelihood ratio test = {self.lr_stat:.3f} on {self.lr_df} df, "
              f"p = {self.lr_p:.4g}\nWald test = {self.wald_stat:.3f}, p = {self.wald_p:.4g}\n"
              f"Score (logrank) test = {self.score_stat:.3f}, p = {self.score_p:.4g}")
        for w in self.warnings:
            s += f"\nWARNING: {w}"
        return s

    def to_dict(self) -> dict:
        d = jsonable(self)
        d["table"] = jsonable(self.table)
        return d


def _design(df: pd.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
    """Numeric covariates as they are; text/categorical ones as treatment dummies (first sorted level = reference)."""
    parts = []
    for c in covariates:
        s = df[c]
        num = pd.to_numeric(s, errors="coerce")
        if num.isna().sum() == s.isna().sum():
            parts.append(num.rename(c).astype(float))
        else:
            lv = sorted(s.dropna().astype(str).unique())
            if len(lv) > 12:
                raise TMBRBStatsInputError(
                    f"covariate '{c}' is not numeric and has {len(lv)} distinct values; it looks like a typo'd numeric "
                    "column (check for text such as 'n/a') or an identifier. Fix the values or leave it out.")
            for level in lv[1:]:
                col = (s.astype(str) == level).astype(float)
                col[s.isna()] = np.nan
                parts.append(col.rename(f"{c}[{level}]"))
    return pd.concat(parts, axis=1)


def cox_ph(df: pd.DataFrame, time: str, event: str, covariates: Sequence[str], *, conf_level: float = 0.95,
           min_events: int = MIN_EVENTS) -> CoxResult:
    """Fit a Cox model (Efron ties): HR, CI, Wald p per term; likelihood-ratio, Wald and score tests; concordance.

    Rows with any missing value among time, event and covariates are dropped (R's na.omit) and counted.
    Fewer than ``min_events`` events gives a TMBRBStatsWarning (estimates are unstable).
    """
    from lifelines import CoxPHFitter

    if not covariates:
        raise TMBRBStatsInputError("Cox model needs at least one covariate; name them with --covariates.")
    require_columns(df, [time, event, *covariates], "Cox model")
    d = pd.DataFrame({"_t": to_numeric(df[time], time), "_e": to_numeric(df[event], event)})
    X = _design(df, covariates)
    for c in X.columns:
        X[c] = to_numeric(X[c], c)
    full = pd.concat([d, X.reset_index(drop=True).set_axis(d.index)], axis=1)
    n0 = len(full)
    full = full.dropna()
    dropped = n0 - len(full)
    if len(full) == 0:
        raise TMBRBStatsInputError("Cox model: no complete rows after dropping rows with missing values.")
    t = check_time(full["_t"].to_numpy(), time)
    e = check_event(full["_e"].to_numpy(), event)
    require_events(e, "Cox model")
    const = [c for c in X.columns if full[c].nunique() < 2]
    if const:
        raise TMBRBStatsInputError(f"Cox model: covariate(s) {const} take a single value in the complete rows; "
                                   "a constant cannot be estimated. Leave it out.")
    warn: List[str] = []
    if e.sum() < min_events:
        msg = (f"only {int(e.sum())} events (< {min_events}) for the Cox model; hazard ratios and p values are "
               "unreliable. Report them with caution or use a larger cohort.")
        warnings.warn(msg, TMBRBStatsWarning, stacklevel=2)
        warn.append(msg)
    fit_df = full.rename(columns={"_t": "T", "_e": "E"})
    fit_df["E"] = e
    cph = CoxPHFitter(alpha=1 - conf_level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cph.fit(fit_df, "T", "E", fit_options=dict(_FIT_OPTIONS))
        except Exception as exc:  # lifelines raises ConvergenceError on separation/collinearity
            raise TMBRBStatsInputError(
                f"Cox model did not converge ({type(exc).__name__}: {str(exc).splitlines()[0]}). Usually a covariate "
                "perfectly separates events or two covariates are collinear; drop or merge it.") from exc
    cols = list(X.columns)
    beta = cph.params_[cols].to_numpy()
    se = cph.standard_errors_[cols].to_numpy()
    z = beta / se
    zc = sps.norm.ppf(1 - (1 - conf_level) / 2)
    table = pd.DataFrame({"term": cols, "coef": beta, "hr": np.exp(beta), "hr_lower": np.exp(beta - zc * se),
                          "hr_upper": np.exp(beta + zc * se), "se": se, "z": z, "p": 2 * sps.norm.sf(np.abs(z))})
    Xm = fit_df[cols].to_numpy(float)
    ll0, u0, i0 = efron_loglik(Xm, t, e, np.zeros(len(cols)))
    score = float(u0 @ np.linalg.solve(i0, u0))
    llb = float(cph.log_likelihood_)
    lr = 2 * (llb - ll0)
    V = cph.variance_matrix_.loc[cols, cols].to_numpy()
    wald = float(beta @ np.linalg.solve(V, beta))
    k = len(cols)
    return CoxResult(table=table, n=len(t), n_events=int(e.sum()), n_dropped=dropped, loglik_null=ll0, loglik=llb,
                     lr_stat=lr, lr_df=k, lr_p=float(sps.chi2.sf(lr, k)), wald_stat=wald,
                     wald_p=float(sps.chi2.sf(wald, k)), score_stat=score, score_p=float(sps.chi2.sf(score, k)),
                     concordance=float(cph.concordance_index_), warnings=warn)


@dataclass
class CoxScanResult(Result):
    marker: str
    table: pd.DataFrame
    models: Dict[str, CoxResult] = field(repr=False, default_factory=dict)

    def __str__(self) -> str:
        return (f"Two-variable Cox models of '{self.marker}' with each covariate (Efron ties)\n"
                + self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    def to_dict(self) -> dict:
        return {"marker": self.marker, "table": jsonable(self.table),
                "models": {k: v.to_dict() for k, v in self.models.items()}}

    def plot(self, ax=None, **kwargs):
        return plot_forest(self, ax=ax, **kwargs)


def cox_scan(df: pd.DataFrame, time: str, event: str, marker: str, covariates: Sequence[str], *,
             conf_level: float = 0.95, min_events: int = MIN_EVENTS) -> CoxScanResult:
    """Paper figure 4: for each covariate, the model marker + covariate (complete cases of those columns).

    Reports HR/CI/p of both terms, the model's score (log-rank) test p, and the covariate's univariable p.
    """
    require_columns(df, [time, event, marker, *covariates], "Cox scan")
    rows, models = [], {}
    for cv in covariates:
        sub = df[[time, event, marker, cv]].dropna()
        with warnings.catch_warnings(record=True) as wlist:
            warnings.simplefilter("always")
            m = cox_ph(sub, time, event, [marker, cv], conf_level=conf_level, min_events=min_events)
            uni = cox_ph(sub, time, event, [cv], conf_level=conf_level, min_events=min_events)
        for w in wlist:
            if issubclass(w.category, TMBRBStatsWarning):
                warnings.warn(str(w.message), TMBRBStatsWarning, stacklevel=2)
        models[cv] = m
        mt = m.table.set_index("term")
        mk = mt.loc[marker]
        for term in [x for x in mt.index if x != marker]:
            ct = mt.loc[term]
            ut = uni.table.set_index("term").loc[term]
            rows.append({"covariate": term, "n": m.n, "events": m.n_events,
                         "marker_hr": mk["hr"], "marker_hr_lower": mk["hr_lower"], "marker_hr_upper": mk["hr_upper"],
                         "marker_p": mk["p"], "covariate_hr": ct["hr"], "covariate_hr_lower": ct["hr_lower"],
                         "covariate_hr_upper": ct["hr_upper"], "covariate_p": ct["p"],
                         "model_logrank_p": m.score_p, "model_lr_p": m.lr_p, "covariate_univariable_p": ut["p"],
                         "concordance": m.concordance})
    return CoxScanResult(marker=marker, table=pd.DataFrame(rows), models=models)


def plot_forest(scan: CoxScanResult, ax=None, title: Optional[str] = None):
    """Forest plot of hazard ratios (log scale) of the marker and each covariate in its two-variable model."""
    import matplotlib.pyplot as plt

    tb = scan.table
    labels, hr, lo, hi, ps = [], [], [], [], []
    for _, r in tb.iterrows():
        labels += [f"{r['covariate']}", f"  {scan.marker} (with {r['covariate']})"]
        hr += [r["covariate_hr"], r["marker_hr"]]
        lo += [r["covariate_hr_lower"], r["marker_hr_lower"]]
        hi += [r["covariate_hr_upper"], r["marker_hr_upper"]]
        ps += [r["covariate_p"], r["marker_p"]]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.4 * len(labels) + 1.2))
    y = np.arange(len(labels))[::-1]
    hr, lo, hi = map(np.asarray, (hr, lo, hi))
    ax.errorbar(hr, y, xerr=[hr - lo, hi - hr], fmt="s", color="k", ms=4, capsize=3)
    ax.axvline(1.0, ls="--", color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    for yy, h, l, u, p in zip(y, hr, lo, hi, ps):
        ax.annotate(f"{h:.2f} ({l:.2f}-{u:.2f}) p={p:.3g}", (1.0, yy), xycoords=("axes fraction", "data"),
                    xytext=(5, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlabel("Hazard ratio (95% CI)")
    ax.set_title(title or f"Cox models: {scan.marker} + covariate")
    return ax
