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

__all__ = ["CutpointResult", "maxstat_cutpoint", "logrank_scores", "p_lausen92", "p_lausen94", "permutation_p"]


def logrank_scores(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    """exactRankTests::cscores(Surv(time, event)) - log-rank scores with max-rank ties.

    Parameters
    ----------
    time, event : numpy.ndarray of shape (n,)
        Follow-up times and 0/1 events.

    Returns
    -------
    numpy.ndarray of shape (n,)
        ``event - sum over ranks <= rank(i) of event / (n - rank + 1)``, where tied times share
        their maximum (1-based) rank; one sort, then cumulative sums (O(n log n)).
    """
    n = len(time)
    ot = np.argsort(time, kind="mergesort")
    ts, es = time[ot], event[ot]
    new = np.concatenate([[True], ts[1:] != ts[:-1]])
    last = np.flatnonzero(np.concatenate([new[1:], [True]]))  # last sorted position of each tied group
    rank = last[np.cumsum(new) - 1] + 1  # maximum rank of each sorted observation
    cs = np.cumsum(es / (n - rank + 1.0))
    out = np.empty(n)
    out[ot] = es - cs[rank - 1]
    return out


def p_lausen92(b: float, minprop: float = 0.1, maxprop: float = 0.9) -> float:
    """Lausen & Schumacher (1992) approximate p value of a maximally selected standardised statistic."""
    if b < 1:
        return 1.0
    db = sps.norm.pdf(b)
    p = 4 * db / b + db * (b - 1 / b) * np.log((maxprop * (1 - minprop)) / ((1 - maxprop) * minprop))
    return float(max(p, 0.0))


def p_lausen94(b: float, n: int, m: np.ndarray) -> float:
    """Lausen, Sauerbrei & Schumacher (1994) p value of a maximally selected standardised statistic.

    Improved Bonferroni bound over the searched cut-points, as ``maxstat:::pLausen94``.

    Parameters
    ----------
    b : float
        The maximal absolute standardised statistic M.
    n : int
        Number of subjects.
    m : numpy.ndarray
        Numbers of subjects at or below each searched cut-point, ascending.

    Returns
    -------
    float
        ``1 - (Phi(b) - Phi(-b)) + D`` with D summed over neighbouring cut-points; can exceed 1
        for small b, as in R.
    """
    m = np.asarray(m, float)
    d = 0.0
    if len(m) > 1:
        m1, m2 = m[:-1], m[1:]
        t = np.sqrt(1 - m1 * (n - m2) / ((n - m1) * m2))
        d = float(np.sum(1 / np.pi * np.exp(-b ** 2 / 2) * (t - (b ** 2 / 4 - 1) * t ** 3 / 6)))
    return float(1 - (sps.norm.cdf(b) - sps.norm.cdf(-b)) + d)


def permutation_p(scores: np.ndarray, m: np.ndarray, observed: float, permutations: int, seed: int = 0) -> float:
    """Monte-Carlo p value of a maximally selected statistic: the scores permuted over the marker's order.

    Each permutation reshuffles the (marker-sorted) log-rank scores, keeping the marker's ties and the searched
    cut-points, and takes the maximal absolute standardised statistic over them, as maxstat's ``pmethod = "condMC"``
    (the conditional distribution of Hothorn & Lausen 2003, sampled) and X-tile's Monte-Carlo p (Camp et al. 2004).

    Parameters
    ----------
    scores : numpy.ndarray of shape (n,)
        Log-rank scores in the order of the sorted marker.
    m : numpy.ndarray
        Numbers of subjects at or below each searched cut-point.
    observed : float
        The observed maximal statistic M.
    permutations : int
        Number of random permutations B (>= 1).
    seed : int
        Seed of the permutations (the p is reproducible).

    Returns
    -------
    float
        ``(1 + #{M_b >= M}) / (B + 1)`` (never 0; Phipson & Smyth 2010).
    """
    n = len(scores)
    ss = scores.sum()
    E = m / n * ss
    sd = np.sqrt(m * (n - m) / (n ** 2 * (n - 1)) * (n * np.sum(scores ** 2) - ss ** 2))
    rng = np.random.default_rng(seed)
    chunk = max(1, int(4e6 // n))
    hits, done = 0, 0
    while done < permutations:
        b = min(chunk, permutations - done)
        perm = rng.permuted(np.broadcast_to(scores, (b, n)), axis=1)
        mb = np.abs((np.cumsum(perm, axis=1)[:, m - 1] - E) / sd).max(axis=1)
        hits += int(np.sum(mb >= observed * (1 - 1e-12)))
        done += b
    return (1 + hits) / (permutations + 1)


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
    p_value_lau94: float = float("nan")
    p_value_permutation: float = float("nan")
    permutations: int = 0

    def __str__(self) -> str:
        return (f"Maximally selected log-rank statistic (maxstat): cut-point {self.cutpoint:.6g} "
                f"(low: x <= cut, n={self.n_low}; high: n={self.n_high})\n  M = {self.statistic:.4f}, "
                f"corrected p = {self.p_value:.4g} (Lau92), {self.p_value_lau94:.4g} (Lau94)"
                + (f", {self.p_value_permutation:.4g} ({self.permutations} permutations)" if self.permutations else "")
                + "; "
                f"naive log-rank p at this cut = {self.naive_p_value:.4g} "
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
        ax.set_title(f"Cut-point {self.cutpoint:.4g}: M={self.statistic:.2f}, corrected p={self.p_value:.3g} (Lau92), "
                     f"{self.p_value_lau94:.3g} (Lau94)")
        return ax


def maxstat_cutpoint(time: ArrayLike, event: ArrayLike, x: ArrayLike, *, minprop: float = 0.1,
                     maxprop: float = 0.9, permutations: int = 0, seed: int = 0) -> CutpointResult:
    """Survival cut-point of a marker by the maximally selected log-rank statistic, with a corrected p.

    For every observed value c of ``x`` between the ``minprop`` and ``maxprop`` quantiles,
    splits the subjects into low (x <= c) and high (x > c), computes the standardised
    log-rank statistic of the split from exactRankTests' log-rank scores (tied times get their
    maximum rank), and returns the cut-point with the largest absolute statistic M. Because
    the cut-point was searched for, the naive log-rank p of the chosen split is too small;
    ``p_value`` is Lausen & Schumacher's (1992) approximation for the maximum, and
    ``p_value_lau94`` the 1994 bound over the cut-points actually searched; with
    ``permutations`` B > 0, ``p_value_permutation`` is the Monte-Carlo p of the whole search
    (`permutation_p`). This stands in for the paper's X-tile search (docs/statistics.md says
    what differs). Checked against
    ``maxstat::maxstat.test(Surv(time, event) ~ x, smethod = "LogRank", pmethod = "Lau92")``
    (and ``pmethod = "Lau94"``) (cut-point, statistic and p to a relative 1e-9 on ``survival::lung``, ``maxstat::DLBCL``;
    ``tools/r_reference/make_reference.R``, ``tests/stats/test_r_agreement.py``). Rows with a
    missing time, event or marker are dropped and counted.

    Parameters
    ----------
    time : array-like of shape (n,)
        Follow-up times (>= 0).
    event : array-like of shape (n,)
        1 = event, 0 = censored.
    x : array-like of shape (n,)
        Continuous marker (e.g. the TMBRB score).
    minprop, maxprop : float, default 0.1 and 0.9
        Only cut-points leaving at least ``minprop`` of the subjects at or below them and at
        most ``maxprop`` are searched (maxstat's arguments of the same name).
    permutations : int, default 0
        B random permutations for the Monte-Carlo p (maxstat's ``pmethod = "condMC"``);
        0 computes none.
    seed : int, default 0
        Seed of the permutations.

    Returns
    -------
    CutpointResult
        Dataclass with fields:

        - ``cutpoint`` : the chosen cut (low group: x <= cutpoint).
        - ``statistic`` : M, the maximal absolute standardised log-rank statistic.
        - ``p_value``, ``p_method`` : p corrected for the search ('Lau92').
        - ``p_value_lau94`` : p corrected for the search by Lausen, Sauerbrei & Schumacher's
          (1994) improved Bonferroni bound over the searched cut-points (``pmethod = "Lau94"``;
          Lau92 assumes a continuum of cut-points between the two quantiles).
        - ``p_value_permutation``, ``permutations`` : the Monte-Carlo p corrected for the
          search and B (NaN and 0 without ``permutations``).
        - ``naive_p_value``, ``naive_logrank_chisq`` : log-rank test of the chosen split as if
          it were fixed in advance (not valid on its own).
        - ``minprop``, ``maxprop`` : as given.
        - ``n``, ``n_events``, ``n_low``, ``n_high``, ``n_dropped`` : counts.
        - ``cuts``, ``stats`` : every searched cut-point and its statistic (``plot()`` draws them).
        - ``logrank`` : the :class:`LogRankResult` of the chosen split.

    Raises
    ------
    TMBRBStatsInputError
        If not 0 < ``minprop`` < ``maxprop`` < 1; an input has non-numeric entries or the
        arrays differ in length; no row is complete; a time is negative; ``event`` is not 0/1;
        there are no events; the marker takes a single value; no cut-point lies between the
        ``minprop`` and ``maxprop`` quantiles; the log-rank scores have no variance; or
        ``permutations`` is not a whole number >= 0.

    See Also
    --------
    logrank_test : Log-rank test of fixed groups.
    kaplan_meier : Curves of the groups at the chosen cut-point.

    References
    ----------
    .. [1] B. Lausen, M. Schumacher, "Maximally selected rank statistics", Biometrics
       48(1):73-85, 1992.
    .. [2] B. Lausen, W. Sauerbrei, M. Schumacher, "Classification and regression trees (CART)
       used for the exploration of prognostic factors measured on different scales", in
       Computational Statistics, Physica, 483-496, 1994.
    .. [3] T. Hothorn, B. Lausen, "On the exact distribution of maximally selected rank
       statistics", Computational Statistics & Data Analysis 43(2):121-137, 2003.
    .. [4] R. L. Camp, M. Dolled-Filhart, D. L. Rimm, "X-tile: a new bio-informatics tool for
       biomarker assessment and outcome-based cut-point optimization", Clinical Cancer
       Research 10(21):7252-7259, 2004.

    Examples
    --------
    Ten patients; those with a higher marker live longer. Nine cut-points are searched (every
    distinct value but the largest); the best leaves the four lowest markers in the low group:

    >>> from TMBRBLib.stats import maxstat_cutpoint
    >>> time = [5, 8, 3, 12, 15, 9, 20, 22, 18, 30]
    >>> event = [1, 1, 1, 1, 0, 1, 1, 0, 1, 0]
    >>> x = [0.1, 0.2, 0.3, 0.35, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9]
    >>> r = maxstat_cutpoint(time, event, x)
    >>> print(f"cut-point {r.cutpoint:g}: {r.n_low} low, {r.n_high} high, {len(r.cuts)} cut-points searched")
    cut-point 0.35: 4 low, 6 high, 9 cut-points searched
    >>> print(f"M = {r.statistic:.3f}, corrected p = {r.p_value:.3f}, naive p = {r.naive_p_value:.4f}")
    M = 2.182, corrected p = 0.347, naive p = 0.0046

    The naive p ignores the search and would overstate the evidence.
    """
    if not (0 < minprop < maxprop < 1):  # Lausen-Schumacher's p needs both bounds inside (0, 1); also refuses NaN
        raise TMBRBStatsInputError(
            f"need 0 < minprop < maxprop < 1, got minprop={minprop:g}, maxprop={maxprop:g}: the search's p-value "
            "(Lausen and Schumacher 1992) is defined only for quantiles inside (0, 1). Use e.g. 0.1 and 0.9.")
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) or permutations < 0:
        raise TMBRBStatsInputError(f"permutations must be a whole number >= 0 (e.g. 10000), got {permutations!r}.")
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
    if np.all(m < np.floor(n * minprop)):
        raise TMBRBStatsInputError(f"minprop={minprop} too large: no cut-point leaves that share below it.")
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
                          n_high=int((grp == "high").sum()), n_dropped=dropped, cuts=xs[m - 1], stats=stats, logrank=lr,
                          p_value_lau94=p_lausen94(float(stats[best]), n, m), permutations=int(permutations),
                          p_value_permutation=(permutation_p(ys, m, float(stats[best]), permutations, seed)
                                               if permutations else float("nan")))
