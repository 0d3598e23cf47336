"""ROC analysis as in R's pROC: AUC, DeLong CI and paired test, direction, Youden point.

DeLong variances use the O(n log n) mid-rank algorithm of Sun & Xu (IEEE SPL 2014):
placements come from three rankings (pooled, cases only, controls only) instead of the
O(n_cases * n_controls) comparison matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import stats as sps

from ._input import ArrayLike, binarize_labels, drop_nan_rows, to_numeric
from ._result import Result
from .errors import TMBRBStatsInputError

__all__ = [
    "ROCResult", "DeLongTestResult", "roc_analysis", "delong_test", "delong_placements",
    "delong_placements_naive", "auc_delong_cov", "choose_direction", "plot_roc_curves",
]


def choose_direction(y: np.ndarray, score: np.ndarray) -> str:
    """pROC's direction='auto': '<' if median(controls) <= median(cases) (higher score = case), else '>'."""
    return "<" if np.median(score[y == 0]) <= np.median(score[y == 1]) else ">"


def _oriented(score: np.ndarray, direction: str) -> np.ndarray:
    if direction not in ("<", ">"):
        raise TMBRBStatsInputError(f"direction must be '<', '>' or 'auto', not {direction!r}.")
    return score if direction == "<" else -score


def delong_placements(cases: np.ndarray, controls: np.ndarray):
    """Return (auc, V10, V01) for 'higher = case' by Sun & Xu's mid-rank algorithm, O(n log n).

    V10[i]: fraction of controls below case i (ties count 1/2); V01[j]: fraction of cases above control j.
    """
    m, n = len(cases), len(controls)
    z = np.concatenate([cases, controls])
    tz = sps.rankdata(z, method="average")
    tx = sps.rankdata(cases, method="average")
    ty = sps.rankdata(controls, method="average")
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    auc = float(v10.mean())
    return auc, v10, v01


def delong_placements_naive(cases: np.ndarray, controls: np.ndarray):
    """Reference O(m*n) placements from the full comparison matrix (for tests and the benchmark)."""
    psi = (cases[:, None] > controls[None, :]).astype(float) + 0.5 * (cases[:, None] == controls[None, :])
    v10 = psi.mean(axis=1)
    v01 = psi.mean(axis=0)
    return float(psi.mean()), v10, v01


def auc_delong_cov(y: np.ndarray, scores: Sequence[np.ndarray], directions: Sequence[str]):
    """AUCs and their DeLong covariance matrix for several scores on the same subjects."""
    aucs, v10s, v01s = [], [], []
    for s, d in zip(scores, directions):
        so = _oriented(np.asarray(s, float), d)
        a, v10, v01 = delong_placements(so[y == 1], so[y == 0])
        aucs.append(a)
        v10s.append(v10)
        v01s.append(v01)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m < 2 or n < 2:  # the sample variance of a single placement is undefined (pROC: NA)
        return np.array(aucs), np.full((len(scores), len(scores)), np.nan)
    s10 = np.atleast_2d(np.cov(np.vstack(v10s)))
    s01 = np.atleast_2d(np.cov(np.vstack(v01s)))
    return np.array(aucs), s10 / m + s01 / n


def _roc_points(cases: np.ndarray, controls: np.ndarray):
    """pROC thresholds (-inf, mid-points between sorted unique values, +inf) with se/sp for 'higher = case'."""
    u = np.unique(np.concatenate([cases, controls]))
    thr = np.concatenate([[-np.inf], (u[:-1] + u[1:]) / 2.0, [np.inf]])
    cs, ct = np.sort(cases), np.sort(controls)
    se = 1.0 - np.searchsorted(cs, thr, side="left") / len(cs)  # fraction of cases >= thr
    sp = np.searchsorted(ct, thr, side="left") / len(ct)  # fraction of controls < thr
    return thr, se, sp


@dataclass
class ROCResult(Result):
    auc: float
    ci_low: float
    ci_high: float
    ci_method: str
    conf_level: float
    variance: float
    direction: str
    n_cases: int
    n_controls: int
    case_level: object
    control_level: object
    youden_threshold: float
    youden_sensitivity: float
    youden_specificity: float
    youden_ties: List[Dict[str, float]]
    threshold: Optional[float] = None
    threshold_sensitivity: Optional[float] = None
    threshold_specificity: Optional[float] = None
    n_dropped: int = 0
    name: str = "score"
    curve_thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    curve_sensitivity: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    curve_specificity: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def __str__(self) -> str:
        s = (f"ROC {self.name}: AUC {self.auc:.4f} ({self.conf_level:.0%} CI {self.ci_low:.4f}-{self.ci_high:.4f}, "
             f"{self.ci_method}), direction '{self.direction}' (controls {self.control_level!r} {self.direction} cases "
             f"{self.case_level!r}), {self.n_cases} cases / {self.n_controls} controls")
        s += (f"\n  Youden: threshold {self.youden_threshold:.6g}, sensitivity {self.youden_sensitivity:.4f}, "
              f"specificity {self.youden_specificity:.4f}")
        if self.threshold is not None:
            s += (f"\n  at threshold {self.threshold:.6g}: sensitivity {self.threshold_sensitivity:.4f}, "
                  f"specificity {self.threshold_specificity:.4f}")
        if self.n_dropped:
            s += f"\n  {self.n_dropped} row(s) with missing values dropped"
        return s

    def plot(self, ax=None, **kwargs):
        return plot_roc_curves([self], ax=ax, **kwargs)


MIN_BOOT = 10  # fewer draws cannot give a percentile interval


def _bootstrap_ci(cases: np.ndarray, controls: np.ndarray, n_boot: int, conf_level: float, seed: int):
    rng = np.random.default_rng(seed)
    m, n = len(cases), len(controls)
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        c = cases[rng.integers(0, m, m)]
        k = controls[rng.integers(0, n, n)]
        r = sps.rankdata(np.concatenate([c, k]))
        aucs[b] = (r[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    a = (1 - conf_level) / 2
    lo, hi = np.quantile(aucs, [a, 1 - a])
    return float(lo), float(hi)


def roc_analysis(
    y: ArrayLike,
    score: ArrayLike,
    *,
    direction: str = "auto",
    positive: Optional[object] = None,
    conf_level: float = 0.95,
    ci_method: str = "delong",
    n_boot: int = 2000,
    seed: int = 0,
    threshold: Optional[float] = None,
    name: str = "score",
) -> ROCResult:
    """ROC analysis of a score for a binary outcome: AUC with DeLong CI, curve and Youden point.

    Computes the empirical ROC curve of ``score`` for the two-class outcome ``y``, its area
    (AUC, the probability that a random case scores above a random control, ties counting
    one half), the variance of the AUC by DeLong's method and a confidence interval
    (AUC +- z * SD, clipped to [0, 1]), and the point that maximises Youden's index
    (sensitivity + specificity - 1). Conventions are R's pROC: the case level is the second
    sorted level (as ``factor``), ``direction='auto'`` picks '<' when the median of the controls
    is <= the median of the cases, and thresholds are the mid-points between sorted distinct
    values plus -inf/+inf. Checked against ``pROC::roc``, ``ci.auc(method = "delong")``,
    ``coords("best", best.method = "youden")`` and ``coords(x = threshold)`` to a relative
    1e-9 on ``pROC::aSAH`` (``tools/r_reference/make_reference.R``,
    ``tests/stats/test_r_agreement.py``). Unlike scikit-learn's ``roc_auc_score``, the
    direction may flip (pass ``direction='<'`` to fix it in advance).

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcome with exactly two distinct values (0/1, True/False, "Good"/"Poor", ...).
    score : array-like of shape (n,)
        Numeric score; empty cells and NaN count as missing.
    direction : {'auto', '<', '>'}, default 'auto'
        '<': controls score lower (a case is predicted when score >= threshold); '>': the
        reverse; 'auto': pROC's rule on the medians.
    positive : object, optional
        Value of ``y`` that is a case. Default: the larger (later-sorted) value.
    conf_level : float, default 0.95
        Level of the AUC confidence interval, strictly between 0 and 1.
    ci_method : {'delong', 'bootstrap'}, default 'delong'
        'bootstrap' is stratified resampling with a percentile interval (``n_boot`` draws,
        seeded by ``seed``); it cannot reproduce R's random draws.
    n_boot : int, default 2000
        Bootstrap resamples (``ci_method='bootstrap'`` only).
    seed : int, default 0
        Seed of the bootstrap.
    threshold : float, optional
        Also report sensitivity and specificity at this threshold.
    name : str, default 'score'
        Label of the curve in prints, plots and error messages.

    Returns
    -------
    ROCResult
        Dataclass with fields:

        - ``auc``, ``ci_low``, ``ci_high`` : AUC and its confidence interval.
        - ``ci_method``, ``conf_level`` : how the interval was computed.
        - ``variance`` : DeLong variance of the AUC (also with ``ci_method='bootstrap'``); NaN,
          as pROC's NA, with a single case or control, and so is the DeLong interval.
        - ``direction`` : '<' or '>' as used.
        - ``n_cases``, ``n_controls`` : counts after dropping missing rows.
        - ``case_level``, ``control_level`` : the values of ``y`` taken as case and control.
        - ``youden_threshold``, ``youden_sensitivity``, ``youden_specificity`` : first point
          maximising Youden's index; ``youden_ties`` lists every tied maximum as dicts.
        - ``threshold``, ``threshold_sensitivity``, ``threshold_specificity`` : at the requested
          ``threshold`` (None when not given).
        - ``n_dropped`` : rows dropped for a missing score or label.
        - ``name`` : the ``name`` argument.
        - ``curve_thresholds``, ``curve_sensitivity``, ``curve_specificity`` : the ROC curve.

    Raises
    ------
    TMBRBStatsInputError
        If ``conf_level`` is not in (0, 1); ``score`` has non-numeric entries; ``y`` and
        ``score`` differ in length; no row is complete; ``y`` has one class or more than two;
        ``positive`` is not a value of ``y``; ``direction`` or ``ci_method`` is not one of
        the allowed values.

    See Also
    --------
    delong_test : Paired DeLong test of two ROC curves on the same subjects.
    plot_roc_curves : Several curves on one plot.
    auc_by_cutoff : AUC at each cut-off of a continuous target.

    References
    ----------
    .. [1] E. R. DeLong, D. M. DeLong, D. L. Clarke-Pearson, "Comparing the areas under two or
       more correlated receiver operating characteristic curves: a nonparametric approach",
       Biometrics 44(3):837-845, 1988.
    .. [2] X. Sun, W. Xu, "Fast implementation of DeLong's algorithm for comparing the areas
       under correlated receiver operating characteristic curves", IEEE Signal Processing
       Letters 21(11):1389-1393, 2014.
    .. [3] X. Robin et al., "pROC: an open-source package for R and S+ to analyze and compare
       ROC curves", BMC Bioinformatics 12:77, 2011.
    .. [4] W. J. Youden, "Index for rating diagnostic tests", Cancer 3(1):32-35, 1950.

    Examples
    --------
    Two cases (0.35, 0.8) and two controls (0.1, 0.4): a case outscores a control in 3 of the
    4 pairs, so the AUC is 3/4.

    >>> from TMBRBLib.stats import roc_analysis
    >>> r = roc_analysis([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> print(f"AUC {r.auc:.4f}, direction {r.direction}, {r.n_cases} cases, {r.n_controls} controls")
    AUC 0.7500, direction <, 2 cases, 2 controls
    >>> print(f"variance {r.variance:.4f}, 95% CI {r.ci_low:.3f}-{r.ci_high:.3f}")
    variance 0.1250, 95% CI 0.057-1.000
    >>> print(f"Youden threshold {r.youden_threshold:.3f}: sensitivity {r.youden_sensitivity:.2f}, "
    ...       f"specificity {r.youden_specificity:.2f}")
    Youden threshold 0.225: sensitivity 1.00, specificity 0.50
    >>> r2 = roc_analysis([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.5)
    >>> print(f"{r2.threshold_sensitivity:.2f} {r2.threshold_specificity:.2f}")
    0.50 1.00

    Text labels: "Poor" sorts after "Good", so it is the case; lower scores mean "Poor" here,
    so 'auto' chooses '>'.

    >>> r = roc_analysis(["Good", "Good", "Good", "Poor", "Poor"], [3, 2, 4, 1, 2])
    >>> print(r.case_level, r.direction, f"{r.auc:.4f}")
    Poor > 0.9167

    A single class is an error that says what to check:

    >>> roc_analysis([1, 1, 1], [0.2, 0.5, 0.9])
    Traceback (most recent call last):
        ...
    TMBRBLib.stats.errors.TMBRBStatsInputError: column 'label' has a single class (1.0 for all 3 rows); ...
    """
    if not 0 < conf_level < 1:
        raise TMBRBStatsInputError(f"conf_level must be between 0 and 1, got {conf_level}.")
    s = to_numeric(score, name)
    lab = np.asarray(pd_series_obj(y), dtype=object)
    cols, dropped = drop_nan_rows({"s": s, "y": lab})
    if len(cols["s"]) == 0:
        raise TMBRBStatsInputError(f"no complete rows for '{name}': every row has a missing score or label.")
    bl = binarize_labels(cols["y"], "label", positive)
    yy, ss = bl.y, cols["s"]
    if direction == "auto":
        direction = choose_direction(yy, ss)
    so = _oriented(ss, direction)
    cases, controls = so[yy == 1], so[yy == 0]
    aucs, cov = auc_delong_cov(yy, [ss], [direction])
    auc, var = float(aucs[0]), float(cov[0, 0])
    if ci_method == "delong":
        z = sps.norm.ppf(1 - (1 - conf_level) / 2)
        # clipped to [0, 1]; NaN (a single case or control) stays NaN
        lo, hi = float(np.clip(auc - z * np.sqrt(var), 0.0, 1.0)), float(np.clip(auc + z * np.sqrt(var), 0.0, 1.0))
    elif ci_method == "bootstrap":
        if not isinstance(n_boot, (int, np.integer)) or n_boot < MIN_BOOT:
            raise TMBRBStatsInputError(f"n_boot must be a whole number of at least {MIN_BOOT} bootstrap draws, got "
                                       f"{n_boot}; 2000 is usual.")
        lo, hi = _bootstrap_ci(cases, controls, n_boot, conf_level, seed)
    else:
        raise TMBRBStatsInputError(f"ci_method must be 'delong' or 'bootstrap', not {ci_method!r}.")
    thr, se, sp = _roc_points(cases, controls)
    thr_out = thr if direction == "<" else -thr
    j = se + sp
    best = np.flatnonzero(np.isclose(j, j.max(), rtol=0, atol=1e-12))
    ties = [{"threshold": float(thr_out[i]), "sensitivity": float(se[i]), "specificity": float(sp[i])} for i in best]
    b0 = best[0]
    res = ROCResult(
        auc=auc, ci_low=lo, ci_high=hi, ci_method=ci_method, conf_level=conf_level, variance=var,
        direction=direction, n_cases=len(cases), n_controls=len(controls), case_level=bl.case_level,
        control_level=bl.control_level, youden_threshold=float(thr_out[b0]), youden_sensitivity=float(se[b0]),
        youden_specificity=float(sp[b0]), youden_ties=ties, n_dropped=dropped, name=name,
        curve_thresholds=thr_out, curve_sensitivity=se, curve_specificity=sp,
    )
    if threshold is not None:
        t = float(threshold)
        if direction == "<":
            res.threshold_sensitivity = float(np.mean(ss[yy == 1] >= t))
            res.threshold_specificity = float(np.mean(ss[yy == 0] < t))
        else:
            res.threshold_sensitivity = float(np.mean(ss[yy == 1] <= t))
            res.threshold_specificity = float(np.mean(ss[yy == 0] > t))
        res.threshold = t
    return res


def pd_series_obj(y: ArrayLike):
    import pandas as pd

    return pd.Series(list(y) if not isinstance(y, (np.ndarray, pd.Series)) else y).to_numpy(dtype=object)


@dataclass
class DeLongTestResult(Result):
    name1: str
    name2: str
    auc1: float
    auc2: float
    difference: float
    z: float
    p_value: float
    variance1: float
    variance2: float
    covariance: float
    direction1: str
    direction2: str
    n_cases: int
    n_controls: int
    n_dropped: int = 0

    def __str__(self) -> str:
        return (f"DeLong's test for two correlated ROC curves ({self.n_cases} cases, {self.n_controls} controls)\n"
                f"  AUC {self.name1} = {self.auc1:.4f}, AUC {self.name2} = {self.auc2:.4f}, difference {self.difference:.4f}\n"
                f"  Z = {self.z:.4f}, p = {self.p_value:.4g}")


def delong_test(
    y: ArrayLike, score1: ArrayLike, score2: ArrayLike, *, direction1: str = "auto", direction2: str = "auto",
    positive: Optional[object] = None, name1: str = "score1", name2: str = "score2",
) -> DeLongTestResult:
    """Paired DeLong test of two correlated ROC curves measured on the same subjects.

    Computes the AUC of each score (each with its own direction, 'auto' by pROC's median rule
    unless given), their DeLong variances and covariance, and the statistic
    Z = (AUC1 - AUC2) / sqrt(V1 + V2 - 2 Cov) with a two-sided normal p value. This is the
    test behind ``tmbrb analyze compare-roc``. Checked against
    ``pROC::roc.test(roc1, roc2, method = "delong", paired = TRUE)`` to a relative 1e-9 on
    ``pROC::aSAH`` (``tools/r_reference/make_reference.R``, ``tests/stats/test_r_agreement.py``).
    Rows with a missing label or either score are dropped first.

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcome with exactly two distinct values.
    score1, score2 : array-like of shape (n,)
        The two numeric scores of the same subjects.
    direction1, direction2 : {'auto', '<', '>'}, default 'auto'
        Direction of each curve (see :func:`roc_analysis`).
    positive : object, optional
        Value of ``y`` that is a case (default: the later-sorted value).
    name1, name2 : str
        Names of the scores in the printout and in error messages.

    Returns
    -------
    DeLongTestResult
        Dataclass with fields:

        - ``name1``, ``name2`` : the score names.
        - ``auc1``, ``auc2`` : AUC of each score; ``difference`` = auc1 - auc2.
        - ``z``, ``p_value`` : DeLong's Z and its two-sided p value.
        - ``variance1``, ``variance2``, ``covariance`` : DeLong (co)variances of the AUCs.
        - ``direction1``, ``direction2`` : directions used.
        - ``n_cases``, ``n_controls`` : counts in the complete rows.
        - ``n_dropped`` : rows dropped for a missing value.

    Raises
    ------
    TMBRBStatsInputError
        If a score has non-numeric entries; the arrays differ in length; no row is complete;
        ``y`` does not have exactly two classes; ``positive`` is not a value of ``y``; there are
        fewer than two cases or controls; or the two scores rank the subjects identically (the
        variance of the difference is 0 and the test is undefined).

    See Also
    --------
    roc_analysis : AUC, CI and curve of one score.

    References
    ----------
    .. [1] E. R. DeLong, D. M. DeLong, D. L. Clarke-Pearson, "Comparing the areas under two or
       more correlated receiver operating characteristic curves: a nonparametric approach",
       Biometrics 44(3):837-845, 1988.
    .. [2] X. Robin et al., "pROC: an open-source package for R and S+ to analyze and compare
       ROC curves", BMC Bioinformatics 12:77, 2011.

    Examples
    --------
    Cases 4-6 and controls 1-3. Score ``a`` puts a case above a control in 8 of the 9 pairs,
    score ``b`` in 6 of 9:

    >>> from TMBRBLib.stats import delong_test
    >>> y = [0, 0, 0, 1, 1, 1]
    >>> t = delong_test(y, [0.1, 0.3, 0.5, 0.4, 0.7, 0.9], [0.2, 0.6, 0.1, 0.3, 0.5, 0.4],
    ...                 name1="a", name2="b")
    >>> print(f"AUC a = {t.auc1:.4f} (8/9), AUC b = {t.auc2:.4f} (6/9), difference {t.difference:.4f}")
    AUC a = 0.8889 (8/9), AUC b = 0.6667 (6/9), difference 0.2222
    >>> print(f"Z = {t.z:.3f}, p = {t.p_value:.3f}")
    Z = 0.535, p = 0.593

    The same score twice cannot be compared:

    >>> delong_test(y, [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6])
    Traceback (most recent call last):
        ...
    TMBRBLib.stats.errors.TMBRBStatsInputError: the two ROC curves of 'score1' and 'score2' are identical in ranking ...
    """
    s1, s2 = to_numeric(score1, name1), to_numeric(score2, name2)
    cols, dropped = drop_nan_rows({"s1": s1, "s2": s2, "y": pd_series_obj(y)})
    if len(cols["y"]) == 0:
        raise TMBRBStatsInputError("no complete rows: every row misses a score or the label.")
    yy = binarize_labels(cols["y"], "label", positive).y
    d1 = choose_direction(yy, cols["s1"]) if direction1 == "auto" else direction1
    d2 = choose_direction(yy, cols["s2"]) if direction2 == "auto" else direction2
    n_cases, n_controls = int(yy.sum()), int((1 - yy).sum())
    if min(n_cases, n_controls) < 2:
        raise TMBRBStatsInputError(
            f"DeLong's test needs at least two cases and two controls, got {n_cases} case(s) and {n_controls} "
            "control(s) in the complete rows.")
    aucs, cov = auc_delong_cov(yy, [cols["s1"], cols["s2"]], [d1, d2])
    v = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if v <= 0:
        raise TMBRBStatsInputError(
            f"the two ROC curves of '{name1}' and '{name2}' are identical in ranking (variance of the difference is 0); "
            "DeLong's test is undefined. Compare two different scores.")
    z = diff / np.sqrt(v)
    p = float(2 * sps.norm.sf(abs(z)))
    return DeLongTestResult(name1, name2, float(aucs[0]), float(aucs[1]), diff, float(z), p, float(cov[0, 0]),
                            float(cov[1, 1]), float(cov[0, 1]), d1, d2, n_cases, n_controls, dropped)


def plot_roc_curves(results: Sequence[ROCResult], ax=None, title: str = "ROC curves"):
    """Several ROC curves on one plot, labelled with AUC and CI (paper figure 2A/B).

    Parameters
    ----------
    results : sequence of ROCResult
        Curves from :func:`roc_analysis`; each is marked at its Youden point.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (default: a new 5 x 5 inch figure).
    title : str, default 'ROC curves'
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.

    See Also
    --------
    roc_analysis, ROCResult.plot
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    for r in results:
        ax.plot(1 - r.curve_specificity, r.curve_sensitivity,
                label=f"{r.name}: AUC {r.auc:.3f} ({r.ci_low:.3f}-{r.ci_high:.3f})")
        ax.plot([1 - r.youden_specificity], [r.youden_sensitivity], "o", ms=4, color=ax.lines[-1].get_color())
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("Sensitivity")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return ax
