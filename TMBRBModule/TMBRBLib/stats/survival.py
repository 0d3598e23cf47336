"""Kaplan-Meier curves, median survival with R's rules, numbers at risk, log-rank test.

Matches R's survival::survfit (Greenwood std.err, conf.type 'log' (R's default) or 'log-log'),
the median/CI rule of print.survfit (an exact 0.5 plateau gives the mid-point to the next
event time) and survival::survdiff (via lifelines' multivariate log-rank test).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ._input import ArrayLike, check_event, check_time, drop_nan_rows, require_events, to_numeric
from ._result import Result
from .errors import TMBRBStatsInputError

__all__ = ["KMCurve", "KMResult", "LogRankResult", "kaplan_meier", "km_curve", "logrank_test", "median_r",
           "plot_km"]

_TOL = np.sqrt(np.finfo(float).eps)


def median_r(time: np.ndarray, surv: np.ndarray) -> float:
    """R's survmean 'minmin': first time with S < 0.5 (+tol); on an exact 0.5 plateau, mid-point to the next drop."""
    keep = ~np.isnan(surv) & (surv < 0.5 + _TOL)
    if not keep.any():
        return float("nan")
    x, y = time[keep], surv[keep]
    if abs(y[0] - 0.5) < _TOL and np.any(y < y[0]):
        return float((x[0] + x[np.flatnonzero(y < y[0])[0]]) / 2.0)
    return float(x[0])


@dataclass
class KMCurve(Result):
    """One Kaplan-Meier curve; ``table`` has R's survfit columns (time, n_risk, n_event, n_censor, surv, std_err, lower, upper)."""
    group: object
    n: int
    events: int
    median: float
    median_lower: float
    median_upper: float
    conf_type: str
    conf_level: float
    table: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    def at_risk(self, times: Sequence[float], time: Optional[np.ndarray] = None) -> np.ndarray:
        return self._risk_fn(np.asarray(times, float))

    def _risk_fn(self, times: np.ndarray) -> np.ndarray:
        t, nr, ne, nc = (self.table[c].to_numpy() for c in ("time", "n_risk", "n_event", "n_censor"))
        # number with time >= x: those at risk at the first table time >= x
        idx = np.searchsorted(t, times, side="left")
        out = np.zeros(len(times), dtype=int)
        ok = idx < len(t)
        out[ok] = nr[idx[ok]]
        return out


def km_curve(time: np.ndarray, event: np.ndarray, conf_type: str = "log", conf_level: float = 0.95,
             group: object = "all") -> KMCurve:
    """Kaplan-Meier estimate for one group, with R's Greenwood std.err and confidence bands."""
    if conf_type not in ("log", "log-log", "plain"):
        raise TMBRBStatsInputError(f"conf_type must be 'log', 'log-log' or 'plain', not {conf_type!r}.")
    ut, inv = np.unique(time, return_inverse=True)
    n_event = np.bincount(inv, weights=event, minlength=len(ut))
    n_total = np.bincount(inv, minlength=len(ut)).astype(float)
    n_censor = n_total - n_event
    n_risk = len(time) - np.concatenate([[0.0], np.cumsum(n_total)[:-1]])
    surv = np.cumprod(1.0 - n_event / n_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        inc = np.where(n_event > 0, n_event / (n_risk * (n_risk - n_event)), 0.0)
    se = np.sqrt(np.cumsum(inc))
    z = sps.norm.ppf(1 - (1 - conf_level) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if conf_type == "log":
            xx = np.where(surv == 0, np.nan, surv)
            lower = np.exp(np.log(xx) - z * se)
            upper = np.minimum(np.exp(np.log(xx) + z * se), 1.0)
        elif conf_type == "log-log":
            xx = np.where((surv == 0) | (surv == 1), np.nan, surv)
            se2 = z * se / np.log(xx)
            lower = np.exp(-np.exp(np.log(-np.log(xx)) - se2))
            upper = np.exp(-np.exp(np.log(-np.log(xx)) + se2))
        else:
            lower = np.maximum(surv - z * se * surv, 0.0)
            upper = np.minimum(surv + z * se * surv, 1.0)
    table = pd.DataFrame({"time": ut, "n_risk": n_risk.astype(int), "n_event": n_event.astype(int),
                          "n_censor": n_censor.astype(int), "surv": surv, "std_err": se, "lower": lower, "upper": upper})
    return KMCurve(group=group, n=len(time), events=int(event.sum()), median=median_r(ut, surv),
                   median_lower=median_r(ut, lower), median_upper=median_r(ut, upper), conf_type=conf_type,
                   conf_level=conf_level, table=table)


@dataclass
class LogRankResult(Result):
    chisq: float
    df: int
    p_value: float
    groups: List[object]
    n: List[int]
    observed: List[float]
    expected: List[float]

    def __str__(self) -> str:
        rows = "\n".join(f"  {g!s:>12}: n={n:4d} observed={o:7.1f} expected={e:7.2f}"
                         for g, n, o, e in zip(self.groups, self.n, self.observed, self.expected))
        return f"Log-rank test: chisq = {self.chisq:.4f} on {self.df} df, p = {self.p_value:.4g}\n{rows}"


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


def logrank_test(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> LogRankResult:
    """Log-rank test for two or more groups (R: survdiff(rho = 0))."""
    from lifelines.statistics import multivariate_logrank_test

    labels = np.asarray(groups)
    levels = _sorted_levels(labels)
    if len(levels) < 2:
        raise TMBRBStatsInputError(
            f"log-rank test needs at least two groups but all rows are in group {levels[0]!r}. "
            "Check the group column or the cut-off that makes the groups.")
    require_events(event, "log-rank test")
    res = multivariate_logrank_test(time, labels, event)
    obs, exp_ = _observed_expected(time, event, labels, levels)
    return LogRankResult(chisq=float(res.test_statistic), df=len(levels) - 1, p_value=float(res.p_value),
                         groups=list(levels), n=[int((labels == g).sum()) for g in levels], observed=obs, expected=exp_)


def _sorted_levels(labels: np.ndarray) -> list:
    vals = pd.unique(pd.Series(labels))
    try:
        return sorted(vals.tolist())
    except TypeError:
        return sorted(vals.tolist(), key=str)


@dataclass
class KMResult(Result):
    curves: List[KMCurve]
    logrank: Optional[LogRankResult]
    n_dropped: int
    conf_type: str
    time_label: str = "time"

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{"group": c.group, "n": c.n, "events": c.events, "median": c.median,
                              "median_lower": c.median_lower, "median_upper": c.median_upper} for c in self.curves])

    def at_risk(self, times: Sequence[float]) -> pd.DataFrame:
        t = np.asarray(times, float)
        return pd.DataFrame({str(c.group): c._risk_fn(t) for c in self.curves}, index=pd.Index(t, name="time")).T

    def to_dict(self) -> dict:
        from ._result import jsonable
        d = {"conf_type": self.conf_type, "n_dropped": self.n_dropped, "summary": jsonable(self.summary),
             "logrank": self.logrank.to_dict() if self.logrank else None,
             "curves": {str(c.group): jsonable(c.table) for c in self.curves}}
        return d

    def __str__(self) -> str:
        s = (f"Kaplan-Meier ({self.conf_type} CI for the median)\n" + self.summary.to_string(index=False))
        if self.logrank is not None:
            s += "\n" + str(self.logrank)
        if self.n_dropped:
            s += f"\n{self.n_dropped} row(s) with missing values dropped"
        return s

    def plot(self, ax=None, **kwargs):
        return plot_km(self, ax=ax, **kwargs)


def kaplan_meier(time: ArrayLike, event: ArrayLike, group: Optional[ArrayLike] = None, *, conf_type: str = "log",
                 conf_level: float = 0.95, time_label: str = "time") -> KMResult:
    """Kaplan-Meier per group with median survival and CI, plus the log-rank test when there are >= 2 groups.

    Rows with a missing time, event or group are dropped and counted in ``n_dropped``. ``event``: 1 = event, 0 = censored.
    """
    t = to_numeric(time, "time")
    e = to_numeric(event, "event")
    cols = {"t": t, "e": e}
    if group is not None:
        g = pd.Series(list(group) if not isinstance(group, (np.ndarray, pd.Series)) else group).to_numpy(dtype=object)
        cols["g"] = g
    cols, dropped = drop_nan_rows(cols)
    if len(cols["t"]) == 0:
        raise TMBRBStatsInputError("no complete rows: every row misses the time, the event or the group.")
    t = check_time(cols["t"])
    e = check_event(cols["e"])
    require_events(e, "Kaplan-Meier")
    if group is None:
        curves = [km_curve(t, e, conf_type, conf_level, "all")]
        lr = None
    else:
        g = cols["g"]
        levels = _sorted_levels(g)
        curves = [km_curve(t[g == lv], e[g == lv], conf_type, conf_level, lv) for lv in levels]
        lr = logrank_test(t, e, g) if len(levels) >= 2 else None
    return KMResult(curves=curves, logrank=lr, n_dropped=dropped, conf_type=conf_type, time_label=time_label)


def plot_km(result: KMResult, ax=None, risk_times: Optional[Sequence[float]] = None, title: str = "Kaplan-Meier",
            show_ci: bool = True):
    """Step curves with censoring marks, median in the legend, log-rank p, and numbers at risk underneath."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig = plt.figure(figsize=(6.4, 5.2))
        gs = fig.add_gridspec(2, 1, height_ratios=[4, 1 + 0.25 * len(result.curves)], hspace=0.35)
        ax = fig.add_subplot(gs[0])
        ax_tab = fig.add_subplot(gs[1])
    else:
        ax_tab = None
    tmax = max(float(c.table["time"].max()) for c in result.curves)
    for c in result.curves:
        tb = c.table
        x = np.concatenate([[0.0], tb["time"].to_numpy()])
        y = np.concatenate([[1.0], tb["surv"].to_numpy()])
        med = "NR" if np.isnan(c.median) else f"{c.median:g}"
        line, = ax.step(x, y, where="post", label=f"{c.group} (n={c.n}, median {med})")
        cens = tb[tb["n_censor"] > 0]
        ax.plot(cens["time"], cens["surv"], "|", color=line.get_color(), ms=6)
        if show_ci:
            lo = np.concatenate([[1.0], tb["lower"].to_numpy()])
            hi = np.concatenate([[1.0], tb["upper"].to_numpy()])
            ax.fill_between(x, lo, hi, step="post", color=line.get_color(), alpha=0.12, lw=0)
    if result.logrank is not None:
        ax.text(0.98, 0.95, f"log-rank p = {result.logrank.p_value:.3g}", transform=ax.transAxes, ha="right", va="top")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, tmax * 1.02)
    ax.set_ylabel("Survival probability")
    ax.set_xlabel(result.time_label)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    if ax_tab is not None:
        if risk_times is None:
            risk_times = ax.get_xticks()
            risk_times = [t for t in risk_times if 0 <= t <= tmax]
        tab = result.at_risk(risk_times)
        ax_tab.set_xlim(ax.get_xlim())
        ax_tab.set_ylim(-0.5, len(result.curves) - 0.5)
        for i, (gname, row) in enumerate(tab.iterrows()):
            yy = len(result.curves) - 1 - i
            for tt, v in zip(risk_times, row.to_numpy()):
                ax_tab.text(tt, yy, str(int(v)), ha="center", va="center", fontsize=8)
        ax_tab.set_yticks(range(len(result.curves)))
        ax_tab.set_yticklabels([str(g) for g in tab.index][::-1], fontsize=8)
        ax_tab.tick_params(axis="y", length=0, pad=14)
        ax_tab.set_xticks([])
        for s in ("top", "right", "bottom", "left"):
            ax_tab.spines[s].set_visible(False)
        ax_tab.set_title("Number at risk", fontsize=9, loc="left")
    return ax
