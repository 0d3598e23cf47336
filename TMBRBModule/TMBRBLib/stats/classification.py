"""Decision curves, Spearman correlation, AUC across TMB cut-offs, logistic combination of scores."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ._input import ArrayLike, binarize_labels, drop_nan_rows, require_columns, to_numeric
from ._result import Result, jsonable
from .errors import TMBRBStatsInputError
from .roc import ROCResult, pd_series_obj, roc_analysis

__all__ = ["DecisionCurveResult", "decision_curve", "SpearmanResult", "spearman", "AUCByCutoffResult",
           "auc_by_cutoff", "LogisticResult", "logistic_combination"]


# ------------------------------------------------------------------------------------------- DCA
@dataclass
class DecisionCurveResult(Result):
    table: pd.DataFrame  # threshold, treat_all, treat_none, one column per model
    prevalence: float
    n: int
    n_dropped: int
    models: List[str]

    def __str__(self) -> str:
        sub = self.table.iloc[:: max(1, len(self.table) // 10)]
        return (f"Decision curve analysis: n={self.n}, prevalence {self.prevalence:.3f}\n"
                + sub.to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    def to_dict(self) -> dict:
        return {"prevalence": self.prevalence, "n": self.n, "n_dropped": self.n_dropped, "models": self.models,
                "table": jsonable(self.table)}

    def plot(self, ax=None, title: str = "Decision curves"):
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4.5))
        t = self.table
        ax.plot(t["threshold"], t["treat_all"], color="grey", lw=1, label="Treat all")
        ax.plot(t["threshold"], t["treat_none"], color="k", lw=1, label="Treat none")
        for m in self.models:
            ax.plot(t["threshold"], t[m], label=m)
        top = max(self.prevalence, float(np.nanmax(t[self.models].to_numpy()))) if self.models else self.prevalence
        ax.set_ylim(-0.05 * max(top, 0.1), top * 1.1 + 0.01)
        ax.set_xlabel("Threshold probability")
        ax.set_ylabel("Net benefit")
        ax.set_title(title)
        ax.legend(fontsize=8)
        return ax


def decision_curve(y: ArrayLike, models: Mapping[str, ArrayLike], *, thresholds: Optional[Sequence[float]] = None,
                   positive: Optional[object] = None) -> DecisionCurveResult:
    """Decision-curve analysis: net benefit of each model against treat-all and treat-none.

    At each threshold probability pt a patient is treated when the model's predicted
    probability is >= pt; the net benefit is TP/n - FP/n * pt / (1 - pt) (Vickers & Elkin).
    Treat-all has net benefit prevalence - (1 - prevalence) * pt / (1 - pt), treat-none 0.
    There is no R reference in the test fixtures (``rmda``/``dcurves`` are not in Debian):
    the tests check this formula by hand (``tests/stats/test_bad_input_and_delong.py``).
    Rows with a missing label or model value are dropped and counted.

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcome with exactly two distinct values.
    models : mapping of str to array-like of shape (n,)
        Model name -> predicted probabilities in [0, 1].
    thresholds : sequence of float, optional
        Threshold probabilities, strictly between 0 and 1 (default 0.01, 0.02, ..., 0.99).
    positive : object, optional
        Value of ``y`` that is a case (default: the later-sorted value).

    Returns
    -------
    DecisionCurveResult
        Dataclass with fields:

        - ``table`` : DataFrame with ``threshold``, ``treat_all``, ``treat_none`` and one net
          benefit column per model.
        - ``prevalence`` : share of cases; ``n`` : complete rows; ``n_dropped`` : rows dropped.
        - ``models`` : model names.

    Raises
    ------
    TMBRBStatsInputError
        If ``models`` is empty; a threshold is not in (0, 1); a model has non-numeric values or
        values outside [0, 1]; no row is complete; or ``y`` does not have exactly two classes.

    See Also
    --------
    logistic_combination : Turns scores into fitted probabilities.

    References
    ----------
    .. [1] A. J. Vickers, E. B. Elkin, "Decision curve analysis: a novel method for
       evaluating prediction models", Medical Decision Making 26(6):565-574, 2006.

    Examples
    --------
    At pt = 0.2 the three patients with probability >= 0.2 are treated: two cases (TP) and one
    control (FP), so the net benefit is 2/4 - 1/4 * 0.25 = 0.4375; treat-all gives
    0.5 - 0.5 * 0.25 = 0.375.

    >>> from TMBRBLib.stats import decision_curve
    >>> r = decision_curve([0, 0, 1, 1], {"score": [0.1, 0.4, 0.35, 0.8]}, thresholds=[0.2, 0.5])
    >>> for _, row in r.table.iterrows():
    ...     print(f"pt {row['threshold']:.1f}: score {row['score']:.4f}, treat all {row['treat_all']:.4f}")
    pt 0.2: score 0.4375, treat all 0.3750
    pt 0.5: score 0.2500, treat all 0.0000
    """
    if not models:
        raise TMBRBStatsInputError("decision curve needs at least one model score column.")
    thr = np.arange(0.01, 1.0, 0.01) if thresholds is None else np.asarray(thresholds, float)
    if thr.ndim != 1 or thr.size == 0:
        raise TMBRBStatsInputError("decision curve needs at least one threshold probability (e.g. 0.01 to 0.99).")
    if not np.all(np.isfinite(thr)) or np.any((thr <= 0) | (thr >= 1)):
        raise TMBRBStatsInputError("decision-curve thresholds must lie strictly between 0 and 1.")
    cols = {k: to_numeric(v, k) for k, v in models.items()}
    cols["__y"] = pd_series_obj(y)
    cols, dropped = drop_nan_rows(cols)
    if len(cols["__y"]) == 0:
        raise TMBRBStatsInputError("no complete rows for the decision curve.")
    yy = binarize_labels(cols.pop("__y"), "label", positive).y
    n = len(yy)
    prev = yy.mean()
    w = thr / (1 - thr)
    out = {"threshold": thr, "treat_all": prev - (1 - prev) * w, "treat_none": np.zeros_like(thr)}
    for name, p in cols.items():
        if np.any((p < 0) | (p > 1)):
            raise TMBRBStatsInputError(
                f"model '{name}' has values outside [0, 1]; decision curves need predicted probabilities. "
                "Convert the score first (e.g. `tmbrb analyze logistic` gives fitted probabilities).")
        treat = p[None, :] >= thr[:, None]
        tp = (treat & (yy[None, :] == 1)).sum(1) / n
        fp = (treat & (yy[None, :] == 0)).sum(1) / n
        out[name] = tp - fp * w
    return DecisionCurveResult(table=pd.DataFrame(out), prevalence=float(prev), n=n, n_dropped=dropped,
                               models=list(cols.keys()))


# ------------------------------------------------------------------------------------------- Spearman
@dataclass
class SpearmanResult(Result):
    rho: float
    p_value: float
    n: int
    n_dropped: int
    x_name: str = "x"
    y_name: str = "y"
    _x: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    _y: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __str__(self) -> str:
        return (f"Spearman correlation {self.x_name} vs {self.y_name}: rho = {self.rho:.4f}, p = {self.p_value:.4g} "
                f"(n={self.n}" + (f", {self.n_dropped} dropped)" if self.n_dropped else ")"))

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 4.5))
        ax.scatter(self._x, self._y, s=12, alpha=0.7)
        ax.set_xlabel(self.x_name)
        ax.set_ylabel(self.y_name)
        ax.set_title(f"Spearman rho = {self.rho:.3f}, p = {self.p_value:.3g}")
        return ax


def spearman(x: ArrayLike, y: ArrayLike, *, x_name: str = "x", y_name: str = "y") -> SpearmanResult:
    """Spearman rank correlation with its p value (paper figure 2G: score vs TMB).

    Computes Spearman's rho (Pearson correlation of the mid-ranks) and the two-sided p value
    from the t approximation (scipy's ``spearmanr``). Checked against R's
    ``cor.test(x, y, method = "spearman", exact = FALSE)`` to a relative 1e-9 on
    ``pROC::aSAH``; R's default for n < 1290 without ties is an exact p, which can differ on
    small samples. Rows with a missing x or y are dropped and counted.

    Parameters
    ----------
    x, y : array-like of shape (n,)
        Numeric variables.
    x_name, y_name : str, default 'x' and 'y'
        Names for the printout, the plot and error messages.

    Returns
    -------
    SpearmanResult
        Dataclass with fields ``rho``, ``p_value``, ``n`` (complete pairs), ``n_dropped``,
        ``x_name`` and ``y_name``; ``plot()`` draws the scatter plot.

    Raises
    ------
    TMBRBStatsInputError
        If a variable has non-numeric entries; the arrays differ in length; there are fewer
        than 3 complete pairs; or one variable is constant.

    See Also
    --------
    scipy.stats.spearmanr : The computation used.
    auc_by_cutoff : How well the score separates TMB at each cut-off.

    References
    ----------
    .. [1] C. Spearman, "The proof and measurement of association between two things",
       American Journal of Psychology 15(1):72-101, 1904.

    Examples
    --------
    The ranks differ by 1 in four of five pairs, so rho = 1 - 6 * 4 / (5 * 24) = 0.8:

    >>> from TMBRBLib.stats import spearman
    >>> r = spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    >>> print(f"rho = {r.rho:.3f}, p = {r.p_value:.3f}, n = {r.n}")
    rho = 0.800, p = 0.104, n = 5
    """
    cols, dropped = drop_nan_rows({"x": to_numeric(x, x_name), "y": to_numeric(y, y_name)})
    if len(cols["x"]) < 3:
        raise TMBRBStatsInputError(f"Spearman correlation needs at least 3 complete pairs, got {len(cols['x'])}.")
    if np.ptp(cols["x"]) == 0 or np.ptp(cols["y"]) == 0:
        raise TMBRBStatsInputError("Spearman correlation is undefined when one variable is constant.")
    r = sps.spearmanr(cols["x"], cols["y"])
    return SpearmanResult(float(r.statistic), float(r.pvalue), len(cols["x"]), dropped, x_name, y_name,
                          cols["x"], cols["y"])


# ------------------------------------------------------------------------------------------- AUC by cut-off
@dataclass
class AUCByCutoffResult(Result):
    table: pd.DataFrame  # cutoff, cohort, n_pos, n_neg, auc, ci_low, ci_high
    difference: pd.DataFrame  # cutoff, auc_<a>, auc_<b>, difference
    direction: str
    n_dropped: int

    def __str__(self) -> str:
        s = "AUC of the score at each cut-off of the target (positive: target >= cut-off)\n"
        s += self.table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        if len(self.difference):
            s += "\n" + self.difference.to_string(index=False, float_format=lambda v: f"{v:.4f}")
        return s

    def to_dict(self) -> dict:
        return {"direction": self.direction, "n_dropped": self.n_dropped, "table": jsonable(self.table),
                "difference": jsonable(self.difference)}

    def plot(self, axes=None, title: str = "AUC across cut-offs"):
        import matplotlib.pyplot as plt

        if axes is None:
            _, axes = plt.subplots(1, 2 if len(self.difference) else 1, figsize=(10 if len(self.difference) else 5.5, 4))
        axes = np.atleast_1d(axes)
        ax = axes[0]
        for c, g in self.table.groupby("cohort", sort=False):
            ax.errorbar(g["cutoff"], g["auc"], yerr=[g["auc"] - g["ci_low"], g["ci_high"] - g["auc"]], fmt="o-",
                        capsize=3, label=str(c))
        ax.axhline(0.5, ls=":", color="grey")
        ax.set_xlabel("cut-off of target")
        ax.set_ylabel("AUC (95% CI)")
        ax.set_title(title)
        ax.legend(fontsize=8)
        if len(self.difference) and len(axes) > 1:
            axes[1].bar(self.difference["cutoff"], self.difference["difference"].abs(), width=0.6)
            axes[1].set_xlabel("cut-off of target")
            axes[1].set_ylabel("|AUC difference|")
            axes[1].set_title("Difference between cohorts")
        return axes


def auc_by_cutoff(score: ArrayLike, target: ArrayLike, cutoffs: Sequence[float], *,
                  cohort: Optional[ArrayLike] = None, direction: str = "<",
                  cohort_order: Optional[Sequence[object]] = None) -> AUCByCutoffResult:
    """AUC of a score at each cut-off of a continuous target, per cohort (paper figure 2E/F).

    For each cut-off c and cohort, the outcome is ``target >= c`` (High-TMB is TMB >= 10) and
    the AUC with DeLong CI is computed by :func:`roc_analysis`. The direction is fixed in
    advance ('<': higher score = higher target) so a cut-off where the score fails shows an
    AUC below 0.5 instead of flipping. A cut-off that leaves one class in a cohort gives NaN.
    With exactly two cohorts the difference of their AUCs (first minus second) is reported.
    Each AUC is pROC's (see :func:`roc_analysis`). Rows with a missing value are dropped.

    Parameters
    ----------
    score : array-like of shape (n,)
        Numeric score.
    target : array-like of shape (n,)
        Continuous target (e.g. TMB in mutations/Mb).
    cutoffs : sequence of float
        Cut-offs of the target.
    cohort : array-like of shape (n,), optional
        Cohort of each row (default: one cohort "all").
    direction : {'<', '>'}, default '<'
        Direction of every ROC curve.
    cohort_order : sequence, optional
        Cohorts to report, in order (default: order of appearance).

    Returns
    -------
    AUCByCutoffResult
        Dataclass with fields:

        - ``table`` : DataFrame, one row per cut-off and cohort: ``cutoff``, ``cohort``,
          ``n_pos``, ``n_neg``, ``auc``, ``ci_low``, ``ci_high``.
        - ``difference`` : DataFrame with ``cutoff``, ``auc_<first>``, ``auc_<second>``,
          ``difference`` for two cohorts; empty otherwise.
        - ``direction``, ``n_dropped``.

    Raises
    ------
    TMBRBStatsInputError
        If score or target has non-numeric entries; no row is complete; or every cut-off
        leaves a single class in every cohort.

    See Also
    --------
    roc_analysis : One ROC curve.

    References
    ----------
    .. [1] E. R. DeLong, D. M. DeLong, D. L. Clarke-Pearson, "Comparing the areas under two or
       more correlated receiver operating characteristic curves: a nonparametric approach",
       Biometrics 44(3):837-845, 1988.

    Examples
    --------
    At cut-off 5 the five rows with target >= 5 are cases; 13 of the 15 case-control pairs are
    ordered correctly (AUC 13/15). No target reaches 20, so that cut-off gives NaN:

    >>> from TMBRBLib.stats import auc_by_cutoff
    >>> score = [0.1, 0.3, 0.2, 0.6, 0.5, 0.9, 0.4, 0.7]
    >>> tmb = [2, 4, 6, 8, 12, 15, 3, 11]
    >>> r = auc_by_cutoff(score, tmb, [5, 10, 20])
    >>> for _, row in r.table.iterrows():
    ...     print(f"TMB >= {row['cutoff']:g}: {row['n_pos']} pos / {row['n_neg']} neg, AUC {row['auc']:.4f}")
    TMB >= 5: 5 pos / 3 neg, AUC 0.8667
    TMB >= 10: 3 pos / 5 neg, AUC 0.9333
    TMB >= 20: 0 pos / 8 neg, AUC nan
    """
    cols = {"s": to_numeric(score, "score"), "t": to_numeric(target, "target")}
    if cohort is not None:
        cols["c"] = pd_series_obj(cohort)
    cols, dropped = drop_nan_rows(cols)
    if len(cols["s"]) == 0:
        raise TMBRBStatsInputError("no complete rows with score and target.")
    coh = cols.get("c", np.array(["all"] * len(cols["s"]), dtype=object))
    levels = list(cohort_order) if cohort_order is not None else list(pd.unique(pd.Series(coh)))
    rows = []
    for cut in cutoffs:
        for lv in levels:
            m = coh == lv
            y = (cols["t"][m] >= cut).astype(int)
            row = {"cutoff": float(cut), "cohort": lv, "n_pos": int(y.sum()), "n_neg": int((1 - y).sum()),
                   "auc": np.nan, "ci_low": np.nan, "ci_high": np.nan}
            if 0 < y.sum() < len(y):
                r = roc_analysis(y, cols["s"][m], direction=direction)
                row.update(auc=r.auc, ci_low=r.ci_low, ci_high=r.ci_high)
            rows.append(row)
    table = pd.DataFrame(rows)
    if table["auc"].isna().all():
        raise TMBRBStatsInputError(
            "every cut-off leaves a single class in every cohort; choose cut-offs inside the range of the target.")
    diff = pd.DataFrame()
    if len(levels) == 2:
        a = table[table["cohort"] == levels[0]].set_index("cutoff")["auc"]
        b = table[table["cohort"] == levels[1]].set_index("cutoff")["auc"]
        diff = pd.DataFrame({"cutoff": a.index, f"auc_{levels[0]}": a.to_numpy(), f"auc_{levels[1]}": b.to_numpy(),
                             "difference": (a - b).to_numpy()})
    return AUCByCutoffResult(table=table, difference=diff, direction=direction, n_dropped=dropped)


# ------------------------------------------------------------------------------------------- logistic
@dataclass
class LogisticResult(Result):
    table: pd.DataFrame  # term, coef, se, z, p, odds_ratio, or_lower, or_upper
    loglik: float
    n: int
    n_events: int
    n_dropped: int
    roc: ROCResult
    fitted: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    predictors: List[str] = field(default_factory=list)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """P(outcome) of every row of ``df`` from this fit (e.g. a validation or test split).

        Parameters
        ----------
        df : pandas.DataFrame
            The predictor columns. A text level that the fit did not see counts as the reference level.

        Returns
        -------
        numpy.ndarray
            One probability per row (NaN where a predictor is missing).
        """
        coef = dict(zip(self.table["term"], self.table["coef"]))
        eta = np.full(len(df), coef["(Intercept)"])
        for c in self.predictors:
            if c in coef:
                eta = eta + coef[c] * pd.to_numeric(df[c], errors="coerce").to_numpy(float)
                continue
            text = df[c].astype(str).to_numpy()
            for term in (t for t in coef if t.startswith(f"{c}[") and t.endswith("]")):
                eta = eta + coef[term] * (text == term[len(c) + 1:-1])
            eta[df[c].isna().to_numpy()] = np.nan
        return 1 / (1 + np.exp(-eta))

    def __str__(self) -> str:
        return (f"Logistic regression (maximum likelihood, no penalty): n={self.n}, events={self.n_events}"
                + (f", {self.n_dropped} dropped" if self.n_dropped else "") + "\n"
                + self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
                + f"\nlog-likelihood {self.loglik:.4f}\n{self.roc}")

    def to_dict(self) -> dict:
        return {"table": jsonable(self.table), "loglik": self.loglik, "n": self.n, "n_events": self.n_events,
                "n_dropped": self.n_dropped, "roc": self.roc.to_dict()}


def logistic_combination(df: pd.DataFrame, outcome: str, predictors: Sequence[str], *,
                         positive: Optional[object] = None, conf_level: float = 0.95,
                         reference: Optional[Dict[str, object]] = None) -> LogisticResult:
    """Logistic regression combining scores and covariates, with the AUC of the fitted probabilities.

    Fits the unpenalised maximum-likelihood logistic regression of ``outcome`` on
    ``predictors`` (scikit-learn's ``LogisticRegression`` with ``C=inf``; scikit-learn
    penalises by default, R does not), with Wald SE, z, p and odds ratios with CI from the
    observed information, and the ROC analysis of the fitted probabilities (paper: TMBRB +
    histology). Text predictors become treatment dummies named ``column[level]`` against
    ``reference[column]`` if given, else the first sorted level (R's default contrasts).
    Checked against ``glm(outcome ~ ..., family = binomial)`` (and with ``relevel``) to a
    relative 1e-5 (observed ~1e-9) on ``pROC::aSAH`` (``tools/r_reference/make_reference.R``,
    ``tests/stats/fixtures/make_reference_survival.R``, ``tests/stats/test_r_agreement.py``).
    Rows with a missing value are dropped and counted.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per subject.
    outcome : str
        Column with exactly two distinct values.
    predictors : sequence of str
        Predictor columns (numeric, or text with at most 12 levels).
    positive : object, optional
        Value of ``outcome`` that is a case (default: the later-sorted value).
    conf_level : float, default 0.95
        Level of the odds-ratio intervals.
    reference : dict, optional
        ``{column: level}``: the level of a text predictor that the others are compared with
        (R's ``relevel``); without it, the first sorted level.

    Returns
    -------
    LogisticResult
        Dataclass with fields:

        - ``table`` : DataFrame, one row per term including ``(Intercept)``: ``term``,
          ``coef``, ``se``, ``z``, ``p``, ``odds_ratio``, ``or_lower``, ``or_upper``.
        - ``loglik`` : log-likelihood at the fit.
        - ``n``, ``n_events``, ``n_dropped`` : counts.
        - ``roc`` : :class:`ROCResult` of the fitted probabilities (direction '<').
        - ``fitted`` : fitted probabilities of the complete rows.

    Raises
    ------
    TMBRBStatsInputError
        If ``predictors`` is empty; a column is missing; a value is non-numeric in a numeric
        column; the outcome does not have exactly two classes; the predictors are collinear
        or constant; or they separate the outcome perfectly (no maximum-likelihood estimate).

    See Also
    --------
    roc_analysis, decision_curve

    References
    ----------
    .. [1] P. McCullagh, J. A. Nelder, "Generalized Linear Models", 2nd ed., Chapman & Hall,
       1989 (R's ``glm``).

    Examples
    --------
    >>> import pandas as pd
    >>> from TMBRBLib.stats import logistic_combination
    >>> df = pd.DataFrame({"high": [0, 0, 0, 1, 1, 1, 0, 1, 0, 1],
    ...                    "score": [0.1, 0.3, 0.5, 0.4, 0.7, 0.9, 0.6, 0.2, 0.35, 0.8],
    ...                    "histology": ["a", "s", "a", "a", "s", "a", "s", "s", "a", "a"]})
    >>> r = logistic_combination(df, "high", ["score", "histology"])
    >>> for _, row in r.table.iterrows():
    ...     print(f"{row['term']}: coef {row['coef']:.3f}, p = {row['p']:.3f}")
    (Intercept): coef -2.209, p = 0.233
    score: coef 4.379, p = 0.174
    histology[s]: coef 0.238, p = 0.870
    >>> print(f"log-likelihood {r.loglik:.3f}, AUC of the fitted probabilities {r.roc.auc:.2f}")
    log-likelihood -5.769, AUC of the fitted probabilities 0.76
    """
    from sklearn.linear_model import LogisticRegression

    from .cox import _design

    if not predictors:
        raise TMBRBStatsInputError("logistic regression needs at least one predictor; name them with --predictors.")
    require_columns(df, [outcome, *predictors], "logistic regression")
    X = _design(df, predictors, reference)
    for c in X.columns:
        X[c] = to_numeric(X[c], c)
    cols = {c: X[c].to_numpy(float) for c in X.columns}
    cols["__y"] = df[outcome].to_numpy(dtype=object)
    cols, dropped = drop_nan_rows(cols)
    y = binarize_labels(cols.pop("__y"), outcome, positive).y
    names = list(cols.keys())
    Xm = np.column_stack([cols[c] for c in names])
    if np.linalg.matrix_rank(np.column_stack([np.ones(len(y)), Xm])) < Xm.shape[1] + 1:
        raise TMBRBStatsInputError(f"predictors {names} are collinear (or constant); drop one of them.")
    model = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    model.fit(Xm, y)
    beta = np.concatenate([model.intercept_, model.coef_.ravel()])
    A = np.column_stack([np.ones(len(y)), Xm])
    p = 1 / (1 + np.exp(-(A @ beta)))
    if np.any(p < 1e-10) or np.any(p > 1 - 1e-10):
        raise TMBRBStatsInputError("the predictors separate the outcome perfectly (fitted probabilities 0 or 1); "
                                   "maximum-likelihood estimates do not exist. Use fewer predictors.")
    cov = np.linalg.inv(A.T @ (A * (p * (1 - p))[:, None]))
    se = np.sqrt(np.diag(cov))
    z = beta / se
    zc = sps.norm.ppf(1 - (1 - conf_level) / 2)
    table = pd.DataFrame({"term": ["(Intercept)", *names], "coef": beta, "se": se, "z": z,
                          "p": 2 * sps.norm.sf(np.abs(z)), "odds_ratio": np.exp(beta),
                          "or_lower": np.exp(beta - zc * se), "or_upper": np.exp(beta + zc * se)})
    ll = float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
    roc = roc_analysis(y, p, direction="<", name="logistic(" + "+".join(predictors) + ")")
    return LogisticResult(table=table, loglik=ll, n=len(y), n_events=int(y.sum()), n_dropped=dropped, roc=roc,
                          fitted=p, predictors=list(predictors))
