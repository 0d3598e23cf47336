"""Survival cut-point by the maximally selected log-rank statistic (R: maxstat::maxstat.test).

The paper chose its TMBRB cut-offs with X-tile; here the cut-point maximises the standardised
log-rank statistic over cut-points between the ``minprop`` and ``maxprop`` quantiles, and the
p value is corrected for the search by Lausen & Schumacher's (1992) approximation, exactly as
``maxstat.test(Surv(time, event) ~ x, smethod = "LogRank", pmethod = "Lau92")``. The naive
log-rank p of the chosen split is reported beside it (it ignores the search and is too small).

Log-rank scores follow exactRankTests::cscores.Surv, which gives tied times their *maximum*
rank: with tied event times the score differs from the textbook Nelson-Aalen form. We follow R.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from ._input import ArrayLike, check_event, check_time, drop_nan_rows, require_events, to_numeric
from ._result import Result
from .errors import TMBRBStatsInputError
from .survival import LogRankResult, logrank_test

__all__ = ["CutpointResult", "maxstat_cutpoint", "logrank_scores", "p_lausen92"]


def logrank_scores(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """exactRankTests::cscores(Surv(time, event)) - log-rank scores with max-rank ties."""
    n = len(time)
    ot = np.argsort(time, kind="mergesort")
    # irank: rank of each observation, ties get the maximum rank (1-based)
    rt = np.searchsorted(np.sort(time), time, side="right")
    fact = event / (n - rt + 1.0)
    cs = np.cumsum(fact[ot])
    return event - cs[rt - 1]


def p_lausen92(b: float, minprop: float = 0.1, maxprop: float = 0.9) -> float:
    """Lausen & Schumacher (1992) approximate p value of a maximally selected standardised statistic."""
    if b < 1:
        return 1.0
    db = sps.norm.pdf(b)
    p = 4 * db / b + db * (b - 1 / b) * np.log((maxprop * (1 - minprop)) / ((1 - maxprop) * minprop))
    return float(max(p, 0.0))


@dataclass
class CutpointResult(Result):
    cutpoint: float
    statistic: float
    p_value: float
    p_method: str
    naive_p_value: float
    naive_logrank_chisq: float
    minprop: float
    maxprop: float
    n: int
    n_events: int
    n_low: int
    n_high: int
    n_dropped: int
    cuts: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    stats: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    logrank: LogRankResult = field(repr=False, default=None)  # type: ignore[assignment]

    def __str__(self) -> str:
        return (f"Maximally selected log-rank statistic (maxstat, Lau92): cut-point {self.cutpoint:.6g} "
                f"(low: x <= cut, n={self.n_low}; high: n={self.n_high})\n  M = {self.statistic:.4f}, "
                f"corrected p = {self.p_value:.4g}; naive log-rank p at this cut = {self.naive_p_value:.4g} "
                f"(chisq {self.naive_logrank_chisq:.3f})\n  searched {len(self.cuts)} cut-points between the "
                f"{self.minprop:.0%} and {self.maxprop:.0%} quantiles, n={self.n}, events={self.n_events}"
                + (f", {self.n_dropped} row(s) dropped" if self.n_dropped else ""))

    def plot(self, ax=None, label: str = "marker"):
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.cuts, self.stats, "o-", ms=3)
        ax.axvline(self.cutpoint, ls="--", color="red", lw=0.8)
        ax.set_xlabel(f"cut-point of {label}")
        ax.set_ylabel("standardised log-rank statistic")
        ax.set_title(f"Cut-point {self.cutpoint:.4g}: M={self.statistic:.2f}, corrected p={self.p_value:.3g}")
        return ax


def maxstat_cutpoint(time: ArrayLike, event: ArrayLike, x: ArrayLike, *, minprop: float = 0.1,
                     maxprop: float = 0.9) -> CutpointResult:
    """Cut-point of marker ``x`` that maximises the standardised log-rank statistic (low group: x <= cut)."""
    if not (0 <= minprop < maxprop <= 1):
        raise TMBRBStatsInputError(f"need 0 <= minprop < maxprop <= 1, got minprop={minprop}, maxprop={maxprop}.")
    cols, dropped = drop_nan_rows({"t": to_numeric(time, "time"), "e": to_numeric(event, "event"),
                                   "x": to_numeric(x, "marker")})
    if len(cols["t"]) == 0:
        raise TMBRBStatsInputError("no complete rows: every row misses the time, the event or the marker.")
    t, e, xv = check_time(cols["t"]), check_event(cols["e"]), cols["x"]
    require_events(e, "cut-point search")
    n = len(t)
    if len(np.unique(xv)) < 2:
        raise TMBRBStatsInputError("the marker takes a single value; there is no cut-point to search.")
    y = logrank_scores(t, e.astype(float))
    o = np.argsort(xv, kind="mergesort")
    ys, xs = y[o], xv[o]
    first = np.concatenate([[True], xs[1:] != xs[:-1]])
    m = np.flatnonzero(first)  # number of observations strictly below each distinct value
    if minprop == 0 and maxprop == 1:
        m = m[1:]
    else:
        if np.all(m < np.floor(n * minprop)):
            raise TMBRBStatsInputError(f"minprop={minprop} too large: no cut-point leaves that share below it.")
        if np.all(m > np.floor(n * maxprop)):
            raise TMBRBStatsInputError(f"maxprop={maxprop} too small: no cut-point leaves that share above it.")
        m = m[m >= max(1, np.floor(n * minprop))]
        m = m[m <= np.floor(n * maxprop)]
    if len(m) < 1:
        raise TMBRBStatsInputError(
            f"no cut-point between the {minprop} and {maxprop} quantiles (the marker has too few distinct values); "
            "widen --minprop/--maxprop.")
    ss = ys.sum()
    E = m / n * ss
    V = m * (n - m) / (n ** 2 * (n - 1)) * (n * np.sum(ys ** 2) - ss ** 2)
    if np.any(V <= 0):
        raise TMBRBStatsInputError("log-rank scores have no variance (all times or events identical); cannot search.")
    stats = np.abs((np.cumsum(ys)[m - 1] - E) / np.sqrt(V))
    best = int(np.flatnonzero(stats == stats.max())[0])
    cut = float(xs[m[best] - 1])
    grp = np.where(xv > cut, "high", "low")
    lr = logrank_test(t, e, grp)
    return CutpointResult(cutpoint=cut, statistic=float(stats[best]), p_value=p_lausen92(stats[best], minprop, maxprop),
                          p_method="Lau92", naive_p_value=lr.p_value, naive_logrank_chisq=lr.chisq, minprop=minprop,
                          maxprop=maxprop, n=n, n_events=int(e.sum()), n_low=int((grp == "low").sum()),
                          n_high=int((grp == "high").sum()), n_dropped=dropped, cuts=xs[m - 1], stats=stats, logrank=lr)
