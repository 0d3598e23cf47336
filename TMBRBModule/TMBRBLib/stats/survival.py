"""Kaplan-Meier curves, median survival with R's rules, numbers at risk, log-rank test.

Matches R's survival::survfit (Greenwood std.err, conf.type 'log' (R's default) or 'log-log'),
the median/CI rule of print.survfit (an exact 0.5 plateau gives the mid-point to the next
event time) and survival::survdiff, all from one sort and cumulative sums (O(n log n)).
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

__all__ = ["KMCurve", "KMResult", "LogRankResult", "kaplan_meier", "km_curve", "logrank_test", "median_r", "risk_table",
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


def risk_table(time: np.ndarray, event: np.ndarray, codes: np.ndarray, k: int):
    """Deaths and numbers at risk per distinct event time and group, in O(n log n).

    Parameters
    ----------
    time, event : numpy.ndarray of shape (n,)
        Follow-up times and 0/1 events.
    codes : numpy.ndarray of int, shape (n,)
        Group index of each subject, 0 .. k-1.
    k : int
        Number of groups.

    Returns
    -------
    tuple of numpy.ndarray
        ``(times, deaths, at_risk)``: the distinct event times (m,), deaths (m, k) and
        numbers at risk (time >= t) (m, k), from one sort (``np.unique``) and reverse
        cumulative sums.
    """
    ut, inv = np.unique(time, return_inverse=True)
    cell = inv.ravel() * k + codes
    deaths = np.bincount(cell, weights=event, minlength=len(ut) * k).reshape(len(ut), k)
    total = np.bincount(cell, minlength=len(ut) * k).reshape(len(ut), k).astype(float)
    at_risk = np.cumsum(total[::-1], axis=0)[::-1]
    keep = deaths.sum(axis=1) > 0
    return ut[keep], deaths[keep], at_risk[keep]


def _logrank_from_table(deaths: np.ndarray, at_risk: np.ndarray):
    """survdiff's observed, expected and chi-square (rho = 0) from a risk table."""
    d = deaths.sum(axis=1)
    n = at_risk.sum(axis=1)
    share = at_risk / n[:, None]
    observed = deaths.sum(axis=0)
    expected = d @ share
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(n > 1, d * (n - d) / (n - 1.0), 0.0)
    var = np.diag(w @ share) - (share * w[:, None]).T @ share
    u = (observed - expected)[1:]
    v = var[1:, 1:]
    try:
        chisq = float(u @ np.linalg.solve(v, u))
    except np.linalg.LinAlgError:
        chisq = float(u @ np.linalg.pinv(v) @ u)
    return observed, expected, chisq


def logrank_test(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> LogRankResult:
    """Log-rank test of equal survival in two or more groups.

    Compares, at every event time, the deaths observed in each group with those expected if
    all groups shared one hazard, and returns the chi-square statistic on (groups - 1)
    degrees of freedom (as R's ``print.survdiff``, a group with no one at risk at any event
    time, so no expected events, does not count) with observed and expected events per group. The statistic is
    lifelines' ``multivariate_logrank_test``; it equals R's
    ``survival::survdiff(Surv(time, event) ~ group)`` (``rho = 0``), checked to a relative
    1e-9 on ``survival::lung`` and ``veteran`` (``tools/r_reference/make_reference.R``,
    ``tests/stats/test_r_agreement.py``). Unlike :func:`kaplan_meier` it takes clean arrays:
    drop missing rows and check the coding first.

    Parameters
    ----------
    time : numpy.ndarray of shape (n,)
        Follow-up times (>= 0).
    event : numpy.ndarray of shape (n,)
        1 = event, 0 = censored.
    groups : array-like of shape (n,)
        Group of each subject; at least two distinct values. Groups are reported sorted.

    Returns
    -------
    LogRankResult
        Dataclass with fields:

        - ``chisq``, ``df``, ``p_value`` : the test statistic, its degrees of freedom
          (groups with expected events - 1) and the chi-square p value.
        - ``groups`` : the sorted group values.
        - ``n`` : subjects per group.
        - ``observed``, ``expected`` : observed and expected events per group (as ``survdiff``).

    Raises
    ------
    TMBRBStatsInputError
        If all subjects are in one group, or no subject has an event.

    See Also
    --------
    kaplan_meier : Curves and medians per group; runs this test for two or more groups.
    maxstat_cutpoint : Searches the marker cut-point with the largest log-rank statistic.
    lifelines.statistics.logrank_test : Two-group version in lifelines.

    References
    ----------
    .. [1] N. Mantel, "Evaluation of survival data and two new rank order statistics arising
       in its consideration", Cancer Chemotherapy Reports 50(3):163-170, 1966.
    .. [2] R. Peto, J. Peto, "Asymptotically efficient rank invariant test procedures",
       Journal of the Royal Statistical Society A 135(2):185-207, 1972.

    Examples
    --------
    >>> import numpy as np
    >>> from TMBRBLib.stats import logrank_test
    >>> time = np.array([1, 2, 3, 4, 5, 6, 2, 4, 6, 8, 10, 12])
    >>> event = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0])
    >>> group = np.array(["A"] * 6 + ["B"] * 6)
    >>> r = logrank_test(time, event, group)
    >>> print(f"chisq = {r.chisq:.3f} on {r.df} df, p = {r.p_value:.3f}")
    chisq = 2.086 on 1 df, p = 0.149
    >>> for g, o, e in zip(r.groups, r.observed, r.expected):
    ...     print(f"{g}: observed {o:.0f}, expected {e:.2f}")
    A: observed 4, expected 2.35
    B: observed 3, expected 4.65

    Observed and expected events add up to the same total (7 here):

    >>> print(f"{sum(r.observed):.2f} {sum(r.expected):.2f}")
    7.00 7.00
    """
    labels = np.asarray(groups)
    levels = _sorted_levels(labels)
    if len(levels) < 2:
        raise TMBRBStatsInputError(
            f"log-rank test needs at least two groups but all rows are in group {levels[0]!r}. "
            "Check the group column or the cut-off that makes the groups.")
    require_events(event, "log-rank test")
    codes = _level_codes(labels, levels)
    _, deaths, at_risk = risk_table(np.asarray(time, float), np.asarray(event, float), codes, len(levels))
    obs, exp_, chisq = _logrank_from_table(deaths, at_risk)
    # R's print.survdiff: a group with no expected events (nobody at risk at any event time) adds no degree of freedom
    df = int(np.sum(exp_ > 0)) - 1
    return LogRankResult(chisq=chisq, df=df, p_value=float(sps.chi2.sf(chisq, df)), groups=list(levels),
                         n=np.bincount(codes, minlength=len(levels)).tolist(), observed=obs.tolist(),
                         expected=exp_.tolist())


def _level_codes(labels: np.ndarray, levels: list) -> np.ndarray:
    """Index of each label in ``levels`` (pandas' hash lookup; works for unorderable mixes of types too)."""
    return pd.Categorical(labels, categories=levels).codes.astype(np.int64)


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
    risk_times: Optional[List[float]] = None

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([{"group": c.group, "n": c.n, "events": c.events, "median": c.median,
                              "median_lower": c.median_lower, "median_upper": c.median_upper} for c in self.curves])

    def at_risk(self, times: Sequence[float]) -> pd.DataFrame:
        t = np.asarray(times, float)
        return pd.DataFrame({str(c.group): c._risk_fn(t) for c in self.curves}, index=pd.Index(t, name="time")).T

    def default_risk_times(self) -> List[float]:
        """Times of the numbers-at-risk table: ``risk_times`` if given, else round ticks from 0 to the last time."""
        if self.risk_times is not None:
            return [float(t) for t in self.risk_times]
        from matplotlib.ticker import MaxNLocator

        tmax = max(float(c.table["time"].max()) for c in self.curves)
        ticks = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(0.0, tmax)
        return [float(t) for t in ticks if 0 <= t <= tmax]

    def to_dict(self) -> dict:
        from ._result import jsonable
        times = self.default_risk_times()
        risk = self.at_risk(times)
        d = {"conf_type": self.conf_type, "n_dropped": self.n_dropped, "summary": jsonable(self.summary),
             "logrank": self.logrank.to_dict() if self.logrank else None,
             "at_risk": {"time": times, "n_risk": {str(g): [int(v) for v in row] for g, row in risk.iterrows()}},
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
                 conf_level: float = 0.95, time_label: str = "time",
                 risk_times: Optional[Sequence[float]] = None) -> KMResult:
    """Kaplan-Meier survival curves per group, median survival with CI, and the log-rank test.

    Computes, for each group, the product-limit estimate S(t) at every distinct time with
    Greenwood's standard error of -log S and a pointwise confidence band ('log', R's default,
    or 'log-log', lifelines' default), the median survival time and its CI read off the
    curve and the band with R's ``print.survfit`` rule (on an exact 0.5 plateau the median is
    the mid-point to the next event time; lifelines takes the later time), and, with two or
    more groups, the log-rank test (:func:`logrank_test`). Checked against
    ``survival::survfit(Surv(time, event) ~ group, conf.type = ...)``, its printed medians and
    ``summary(fit, times = ...)`` numbers at risk to a relative 1e-9 on ``survival::lung``,
    ``veteran`` and a plateau dataset (``tools/r_reference/make_reference.R``,
    ``tests/stats/test_r_agreement.py``). Rows with a missing time, event or group are dropped
    and counted.

    Parameters
    ----------
    time : array-like of shape (n,)
        Follow-up times (>= 0).
    event : array-like of shape (n,)
        1 = event (death, progression), 0 = censored.
    group : array-like of shape (n,), optional
        Group of each subject. Without it one curve ("all") and no test.
    conf_type : {'log', 'log-log', 'plain'}, default 'log'
        Confidence band of S(t), and so of the median.
    conf_level : float, default 0.95
        Level of the bands.
    time_label : str, default 'time'
        x-axis label for :meth:`KMResult.plot`.
    risk_times : sequence of float, optional
        Times of the numbers-at-risk table, in the JSON (``at_risk``) and under the figure
        (default: round ticks from 0 to the last time).

    Returns
    -------
    KMResult
        Dataclass with fields:

        - ``curves`` : list of :class:`KMCurve`, one per sorted group, each with ``group``,
          ``n``, ``events``, ``median``, ``median_lower``, ``median_upper`` (NaN when not
          reached), ``conf_type``, ``conf_level`` and ``table`` (R's survfit columns: time,
          n_risk, n_event, n_censor, surv, std_err, lower, upper).
        - ``logrank`` : :class:`LogRankResult` with two or more groups, else None.
        - ``n_dropped`` : rows dropped for a missing value.
        - ``conf_type``, ``time_label``, ``risk_times`` : as given.

        ``summary`` (property) is a DataFrame of n, events and median (CI) per group;
        ``at_risk(times)`` gives the numbers at risk; ``to_dict()`` (and ``save_json``) holds
        them at ``default_risk_times()`` under ``at_risk``, the times of the figure's table;
        ``plot()`` draws the curves.

    Raises
    ------
    TMBRBStatsInputError
        If ``time`` or ``event`` has non-numeric entries; the arrays differ in length; no row
        is complete; a time is negative; ``event`` has values other than 0 and 1; there are
        no events; or ``conf_type`` is not one of the allowed values.

    See Also
    --------
    logrank_test : The test alone.
    plot_km : Curves with censoring marks and numbers at risk.
    maxstat_cutpoint : A data-driven cut-point of a marker to make the groups.

    References
    ----------
    .. [1] E. L. Kaplan, P. Meier, "Nonparametric estimation from incomplete observations",
       Journal of the American Statistical Association 53(282):457-481, 1958.
    .. [2] T. M. Therneau, P. M. Grambsch, "Modeling Survival Data: Extending the Cox Model",
       Springer, 2000 (the R survival package).

    Examples
    --------
    Six patients, censored at times 2, 5 and 6. S drops to 5/6 at t = 1, 5/6 * 3/4 = 0.625 at
    t = 3 and 0.625 * 2/3 = 0.417 at t = 4, so the median is 4:

    >>> from TMBRBLib.stats import kaplan_meier
    >>> km = kaplan_meier([1, 2, 3, 4, 5, 6], [1, 0, 1, 1, 0, 0])
    >>> c = km.curves[0]
    >>> print(", ".join(f"{s:.3f}" for s in c.table["surv"]))
    0.833, 0.833, 0.625, 0.417, 0.417, 0.417
    >>> print(f"median {c.median:g} (95% CI {c.median_lower:g}-{c.median_upper:g}), {c.events} events")
    median 4 (95% CI 3-nan), 3 events

    Two groups give the log-rank test as well:

    >>> km = kaplan_meier([1, 2, 3, 4, 5, 6, 2, 4, 6, 8, 10, 12],
    ...                   [1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 0], ["A"] * 6 + ["B"] * 6)
    >>> for c in km.curves:
    ...     print(f"{c.group}: n={c.n}, events={c.events}, median {c.median:g}")
    A: n=6, events=4, median 4
    B: n=6, events=3, median 8
    >>> print(f"log-rank p = {km.logrank.p_value:.3f}")
    log-rank p = 0.149
    >>> risk = km.at_risk([0, 4, 8])  # rows: groups, columns: times
    >>> for g, row in risk.iterrows():
    ...     print(g, "at risk at t = 0, 4, 8:", [int(v) for v in row])
    A at risk at t = 0, 4, 8: [6, 3, 0]
    B at risk at t = 0, 4, 8: [6, 5, 3]
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
    return KMResult(curves=curves, logrank=lr, n_dropped=dropped, conf_type=conf_type, time_label=time_label,
                    risk_times=None if risk_times is None else [float(v) for v in risk_times])


def plot_km(result: KMResult, ax=None, risk_times: Optional[Sequence[float]] = None, title: str = "Kaplan-Meier",
            show_ci: bool = True):
    """Step curves with censoring marks, median in the legend, log-rank p, and numbers at risk underneath.

    Parameters
    ----------
    result : KMResult
        From :func:`kaplan_meier`.
    ax : matplotlib.axes.Axes, optional
        Axes for the curves. Default: a new figure with the numbers-at-risk table underneath
        (no table when ``ax`` is given).
    risk_times : sequence of float, optional
        Times of the numbers-at-risk table (default: ``result.default_risk_times()``, the
        times written to the JSON).
    title : str, default 'Kaplan-Meier'
        Axes title.
    show_ci : bool, default True
        Shade the confidence bands.

    Returns
    -------
    matplotlib.axes.Axes
        The axes with the curves.
    """
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
            risk_times = result.default_risk_times()
            ax.set_xticks(risk_times)
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
