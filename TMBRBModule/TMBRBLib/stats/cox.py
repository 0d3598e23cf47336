"""Cox proportional hazards (Efron or Breslow ties) as R's survival::coxph, and the paper's figure-4 scan.

Fitting is Newton-Raphson on the partial likelihood computed in O(n log n) (one sort, cumulative
sums: :mod:`._coxfit`), as R's coxph, with tight convergence so coefficients agree with R to
~1e-10 (lifelines' CoxPHFitter gave the same numbers but grows faster than n log n and has no
Breslow ties). The score (log-rank) test is computed from the partial likelihood at beta = 0, as
R's summary.coxph does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from ._coxfit import TIES, concordance, fit_cox, partial_loglik, risk_sets
from ._input import check_event, check_time, require_columns, require_events, to_numeric
from ._result import Result, jsonable
from .errors import TMBRBStatsInputError, TMBRBStatsWarning

__all__ = ["CoxResult", "cox_ph", "cox_scan", "CoxScanResult", "efron_loglik", "plot_forest"]

MIN_EVENTS = 10
EPS = 1e-12  # relative change of the log-likelihood at convergence (R reference: coxph.control(eps=1e-12))


def efron_loglik(X: np.ndarray, time: np.ndarray, event: np.ndarray, beta: np.ndarray, ties: str = "efron"):
    """Partial log-likelihood (Efron ties by default), its gradient (score) and information matrix at ``beta``.

    Parameters
    ----------
    X : numpy.ndarray of shape (n, p)
        Covariates.
    time, event : numpy.ndarray of shape (n,)
        Follow-up times and 0/1 events.
    beta : numpy.ndarray of shape (p,)
        Coefficients.
    ties : {'efron', 'breslow'}, default 'efron'
        Handling of tied death times.

    Returns
    -------
    tuple
        ``(loglik, gradient, information)``, computed in O(n log n) from one sort and
        cumulative sums (:mod:`TMBRBLib.stats._coxfit`).
    """
    return partial_loglik(risk_sets(np.asarray(X, float), np.asarray(time, float), np.asarray(event), ties),
                          np.asarray(beta, float))


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
        s = (f"Cox PH ({self.ties.capitalize()} ties): n = {self.n}, events = {self.n_events}"
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


def _design(df: pd.DataFrame, covariates: Sequence[str], reference: Optional[Dict[str, object]] = None
            ) -> pd.DataFrame:
    """Numeric covariates as they are; text ones as treatment dummies against the reference level.

    The reference is ``reference[column]`` when given, else the first sorted level (R's default
    contrasts); the other levels keep their sorted order (R's ``relevel``).
    """
    reference = dict(reference or {})
    unknown = [c for c in reference if c not in covariates]
    if unknown:
        raise TMBRBStatsInputError(f"reference level given for {unknown}, which are not among the covariates "
                                   f"{list(covariates)}; name a covariate of the model (e.g. --reference histology=adeno).")
    parts = []
    for c in covariates:
        s = df[c]
        num = pd.to_numeric(s, errors="coerce")
        if num.isna().sum() == s.isna().sum():
            if c in reference:
                raise TMBRBStatsInputError(f"covariate '{c}' is numeric, so it has no reference level; drop "
                                           f"'{c}={reference[c]}' or give the column as text to get one HR per level.")
            parts.append(num.rename(c).astype(float))
            continue
        lv = sorted(s.dropna().astype(str).unique())
        if len(lv) > 12:
            raise TMBRBStatsInputError(
                f"covariate '{c}' is not numeric and has {len(lv)} distinct values; it looks like a typo'd numeric "
                "column (check for text such as 'n/a') or an identifier. Fix the values or leave it out.")
        ref = lv[0]
        if c in reference:
            ref = str(reference[c])
            if ref not in lv:
                raise TMBRBStatsInputError(f"reference level {ref!r} of covariate '{c}' is not one of its values {lv}; "
                                           "pick one of these.")
        for level in [v for v in lv if v != ref]:
            col = (s.astype(str) == level).astype(float)
            col[s.isna()] = np.nan
            parts.append(col.rename(f"{c}[{level}]"))
    return pd.concat(parts, axis=1)


def cox_ph(df: pd.DataFrame, time: str, event: str, covariates: Sequence[str], *, conf_level: float = 0.95,
           min_events: int = MIN_EVENTS, ties: str = "efron",
           reference: Optional[Dict[str, object]] = None) -> CoxResult:
    """Cox proportional-hazards model (Efron or Breslow ties) with hazard ratios, global tests and concordance.

    Fits the Cox model of ``time``/``event`` on ``covariates`` by Newton-Raphson on the
    partial likelihood (Efron's tie correction, R's default, or Breslow's), computed in
    O(n log n) from one sort and cumulative sums, and reports per term the coefficient,
    hazard ratio with Wald CI, SE, z and p, plus the likelihood-ratio, Wald and score
    ("logrank") tests of the whole model and Harrell's concordance. The score test is
    computed from the partial likelihood at beta = 0 as R's ``summary.coxph`` does. Numeric
    covariates enter as they are (ECOG as a number gives the paper's HR per point); text
    covariates become treatment dummies named ``column[level]`` against the reference level:
    ``reference[column]`` if given, else the first sorted level (R's default contrasts).
    Checked against ``survival::coxph(Surv(time, event) ~ ..., ties = "efron")`` (and
    ``ties = "breslow"``, ``relevel(factor(x), ref = )``) and ``summary.coxph`` to a relative
    1e-5 (observed ~1e-10) on ``survival::lung`` (with ``ph.ecog``), ``veteran`` and
    ``ovarian`` (``tools/r_reference/make_reference.R``,
    ``tests/stats/fixtures/make_reference_survival.R``, ``tests/stats/test_r_agreement.py``).
    Rows with a missing value in any used column are dropped (R's ``na.omit``) and counted.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per subject.
    time : str
        Column of follow-up times (>= 0).
    event : str
        Column of events: 1 = event, 0 = censored.
    covariates : sequence of str
        Covariate columns (numeric, or text with at most 12 levels).
    conf_level : float, default 0.95
        Level of the hazard-ratio intervals.
    min_events : int, default 10
        Fewer events than this gives a :class:`TMBRBStatsWarning`.
    ties : {'efron', 'breslow'}, default 'efron'
        Handling of tied event times (R's ``ties =``).
    reference : dict, optional
        Reference level per text covariate, e.g. ``{"histology": "squamous"}`` (default: the
        first sorted level, as R).

    Returns
    -------
    CoxResult
        Dataclass with fields:

        - ``table`` : DataFrame, one row per term: ``term``, ``coef``, ``hr``, ``hr_lower``,
          ``hr_upper``, ``se``, ``z``, ``p`` (Wald).
        - ``n``, ``n_events``, ``n_dropped`` : counts.
        - ``loglik_null``, ``loglik`` : partial log-likelihood at beta = 0 and at the fit.
        - ``lr_stat``, ``lr_df``, ``lr_p`` : likelihood-ratio test (df = number of terms).
        - ``wald_stat``, ``wald_p`` : Wald test of all terms.
        - ``score_stat``, ``score_p`` : score (log-rank) test.
        - ``concordance`` : Harrell's C.
        - ``ties`` : 'efron' or 'breslow'.
        - ``warnings`` : messages of the warnings raised during the fit.

    Raises
    ------
    TMBRBStatsInputError
        If ``covariates`` is empty; a column is missing; a value is non-numeric in a numeric
        column, or a text covariate has more than 12 levels; no row is complete; a time is
        negative; ``event`` is not 0/1; there are no events; a covariate is infinite or constant
        in the complete rows; the fit does not converge (separation, collinearity); ``ties`` is
        not 'efron' or 'breslow'; or a ``reference`` names a column that is not a text
        covariate or a level it does not have.

    Warns
    -----
    TMBRBStatsWarning
        When there are fewer than ``min_events`` events; the model is still fitted.

    See Also
    --------
    cox_scan : The marker with each covariate in turn (paper figure 4).
    kaplan_meier : Curves of the groups.

    References
    ----------
    .. [1] D. R. Cox, "Regression models and life-tables", Journal of the Royal Statistical
       Society B 34(2):187-220, 1972.
    .. [2] B. Efron, "The efficiency of Cox's likelihood function for censored data", Journal
       of the American Statistical Association 72(359):557-565, 1977.
    .. [3] F. E. Harrell et al., "Evaluating the yield of medical tests", JAMA
       247(18):2543-2546, 1982.

    Examples
    --------
    Fourteen patients (12 deaths): the hazard per ECOG point, and of a score group adjusted
    for ECOG.

    >>> import pandas as pd
    >>> from TMBRBLib.stats import cox_ph
    >>> df = pd.DataFrame({"time": [5, 8, 3, 12, 15, 9, 20, 22, 18, 30, 7, 11, 14, 25],
    ...                    "event": [1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1],
    ...                    "ecog": [2, 1, 2, 1, 0, 1, 0, 1, 0, 0, 1, 2, 1, 0],
    ...                    "high": [0, 0, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0]})
    >>> r = cox_ph(df, "time", "event", ["ecog"])
    >>> e = r.table.iloc[0]
    >>> print(f"{e['term']}: HR {e['hr']:.2f} per point (95% CI {e['hr_lower']:.2f}-{e['hr_upper']:.2f}), p = {e['p']:.4f}")
    ecog: HR 4.97 per point (95% CI 1.75-14.17), p = 0.0027
    >>> print(f"LR test p = {r.lr_p:.4f}, score test p = {r.score_p:.4f}, C = {r.concordance:.3f}")
    LR test p = 0.0014, score test p = 0.0008, C = 0.802
    >>> r = cox_ph(df, "time", "event", ["high", "ecog"])
    >>> for _, row in r.table.iterrows():
    ...     print(f"{row['term']}: HR {row['hr']:.2f}, p = {row['p']:.3f}")
    high: HR 0.49, p = 0.329
    ecog: HR 4.57, p = 0.005

    ECOG as text gives one HR per level against the first ("PS0"):

    >>> df["ecog_ps"] = "PS" + df["ecog"].astype(str)
    >>> print(cox_ph(df, "time", "event", ["ecog_ps"]).table["term"].tolist())
    ['ecog_ps[PS1]', 'ecog_ps[PS2]']
    """
    if ties not in TIES:
        raise TMBRBStatsInputError(f"ties must be 'efron' (R's default) or 'breslow', not {ties!r}.")
    if not covariates:
        raise TMBRBStatsInputError("Cox model needs at least one covariate; name them with --covariates.")
    require_columns(df, [time, event, *covariates], "Cox model")
    tt, ee = to_numeric(df[time], time), to_numeric(df[event], event)
    X = _design(df, covariates, reference)
    for c in X.columns:
        X[c] = to_numeric(X[c], c)
    # the covariates stay in their own table: a column may be called anything (T, E, _t...) without a clash
    keep = ~(np.isnan(tt) | np.isnan(ee) | X.isna().any(axis=1).to_numpy())
    dropped = int((~keep).sum())
    if not keep.any():
        raise TMBRBStatsInputError("Cox model: no complete rows after dropping rows with missing values.")
    t = check_time(tt[keep], time)
    e = check_event(ee[keep], event)
    require_events(e, "Cox model")
    X = X[keep]
    infinite = {c: int(n) for c, n in np.isinf(X).sum().items() if n}
    if infinite:
        raise TMBRBStatsInputError(f"Cox model: covariate(s) with infinite values (rows per column: {infinite}); "
                                   "fix these entries or leave the rows out.")
    const = [c for c in X.columns if X[c].nunique() < 2]
    if const:
        raise TMBRBStatsInputError(f"Cox model: covariate(s) {const} take a single value in the complete rows; "
                                   "a constant cannot be estimated. Leave it out.")
    warn: List[str] = []
    if e.sum() < min_events:
        msg = (f"only {int(e.sum())} events (< {min_events}) for the Cox model; hazard ratios and p values are "
               "unreliable. Report them with caution or use a larger cohort.")
        warnings.warn(msg, TMBRBStatsWarning, stacklevel=2)
        warn.append(msg)
    Xm = X.to_numpy(float)
    fit = _fit(Xm, t, e, ties)
    for msg in separation_warnings(X, e, fit.beta, fit.messages):
        warnings.warn(msg, TMBRBStatsWarning, stacklevel=2)
        warn.append(msg)
    return _cox_result(fit, list(X.columns), t, e, Xm, dropped, conf_level, ties, warn)


def _fit(Xm: np.ndarray, t: np.ndarray, e: np.ndarray, ties: str):
    """Newton-Raphson fit with a clear error for collinear covariates or a diverging fit."""
    try:
        fit = fit_cox(risk_sets(Xm, t, e, ties), eps=EPS)
    except np.linalg.LinAlgError as exc:
        raise TMBRBStatsInputError(
            "Cox model did not converge (the information matrix is singular): two covariates are collinear or one "
            "takes a single value among the rows at risk; drop or merge it.") from exc
    if not np.all(np.isfinite(fit.beta)) or not np.isfinite(fit.loglik):
        raise TMBRBStatsInputError(
            "Cox model did not converge (coefficients became infinite). Usually a covariate perfectly separates "
            "events or two covariates are collinear; drop or merge it.")
    return fit


def _cox_result(fit, cols, t, e, Xm, dropped, conf_level, ties, warn) -> "CoxResult":
    beta = fit.beta
    se = np.sqrt(np.diag(fit.var))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = beta / se
        zc = sps.norm.ppf(1 - (1 - conf_level) / 2)
        # exp of a diverging coefficient is inf: the separation warning says why
        table = pd.DataFrame({"term": cols, "coef": beta, "hr": np.exp(beta), "hr_lower": np.exp(beta - zc * se),
                              "hr_upper": np.exp(beta + zc * se), "se": se, "z": z,
                              "p": 2 * sps.norm.sf(np.abs(z))})
    u0, i0 = fit.score_null, fit.info_null
    score = float(u0 @ np.linalg.solve(i0, u0))
    lr = 2 * (fit.loglik - fit.loglik_null)
    try:
        wald = float(beta @ np.linalg.solve(fit.var, beta))
    except np.linalg.LinAlgError:
        wald = float("nan")
    k = len(cols)
    return CoxResult(table=table, n=len(t), n_events=int(e.sum()), n_dropped=dropped, loglik_null=fit.loglik_null,
                     loglik=fit.loglik, lr_stat=lr, lr_df=k, lr_p=float(sps.chi2.sf(lr, k)), wald_stat=wald,
                     wald_p=float(sps.chi2.sf(wald, k)), score_stat=score, score_p=float(sps.chi2.sf(score, k)),
                     concordance=concordance(t, e, Xm @ beta), ties=ties, warnings=warn)


MAX_LOG_HR_PER_SD = 10.0  # a hazard ratio over e^10 per standard deviation of a covariate: the fit diverged


def separation_warnings(X: pd.DataFrame, event: np.ndarray, beta: np.ndarray, fit_warnings=()) -> List[str]:
    """Warnings for (quasi-)separation in a fitted Cox model: the partial likelihood has no maximum, so the hazard
    ratio runs off towards 0 or infinity and its CI and p value mean nothing.

    Parameters
    ----------
    X : DataFrame
        The covariates of the rows fitted, one column per term.
    event : ndarray
        The 0/1 events of those rows.
    beta : ndarray
        The fitted coefficients, in the order of the columns of ``X``.
    fit_warnings : iterable of str or warnings.WarningMessage
        The fit's convergence notes (strings), or warnings caught during a fit (lifelines'
        ConvergenceWarning is passed on).

    Returns
    -------
    list of str
        One message per term that has a level (of a covariate with two values, such as a dummy) without any event,
        or whose coefficient exceeds MAX_LOG_HR_PER_SD per standard deviation; else the fit's convergence notes.
    """
    out: List[str] = []
    e = np.asarray(event)
    for c, b in zip(X.columns, beta):
        x = X[c].to_numpy(float)
        levels = np.unique(x)
        empty = [v for v in levels if not np.any(e[x == v] > 0)] if len(levels) == 2 else []
        if empty:
            out.append(f"Cox model: no event among the {int(np.sum(x == empty[0]))} rows with {c} = {empty[0]:g} "
                       f"(quasi-separation): the hazard ratio of {c} runs off towards "
                       f"{'infinity' if b > 0 else 'zero'} and its CI and p value mean nothing. Merge levels, "
                       "leave the covariate out or use Firth's penalised Cox regression.")
        elif abs(b) * float(np.std(x)) > MAX_LOG_HR_PER_SD:
            out.append(f"Cox model: the coefficient of {c} diverged ({b:.3g}, a hazard ratio of "
                       f"e^{abs(b) * np.std(x):.0f} per standard deviation): the covariate (quasi-)separates events "
                       "from censored rows, so its hazard ratio, CI and p value mean nothing. Leave it out or use a "
                       "penalised Cox regression.")
    if not out:  # the fit's own convergence notes, when the checks above found nothing (one message per problem)
        for w in fit_warnings:
            text = w if isinstance(w, str) else str(w.message)
            if isinstance(w, str) or "Convergence" in type(w.message).__name__ or "converge" in text.lower():
                out.append("Cox model: " + text.strip().splitlines()[0])
    return out


@dataclass
class CoxScanResult(Result):
    marker: str
    table: pd.DataFrame
    models: Dict[str, CoxResult] = field(repr=False, default_factory=dict)

    def __str__(self) -> str:
        ties = next(iter(self.models.values())).ties.capitalize() if self.models else "Efron"
        return (f"Two-variable Cox models of '{self.marker}' with each covariate ({ties} ties)\n"
                + self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    def to_dict(self) -> dict:
        return {"marker": self.marker, "table": jsonable(self.table),
                "models": {k: v.to_dict() for k, v in self.models.items()}}

    def plot(self, ax=None, **kwargs):
        return plot_forest(self, ax=ax, **kwargs)


def cox_scan(df: pd.DataFrame, time: str, event: str, marker: str, covariates: Sequence[str], *,
             conf_level: float = 0.95, min_events: int = MIN_EVENTS, ties: str = "efron",
             reference: Optional[Dict[str, object]] = None) -> CoxScanResult:
    """The marker with each covariate in turn: one two-variable Cox model per covariate (paper figure 4).

    For each covariate, fits ``marker + covariate`` with :func:`cox_ph` on the complete cases
    of those columns (R's ``na.omit`` per model) and the covariate alone on the same rows, and
    tabulates the hazard ratio, CI and p of both terms, the model's score (log-rank) and
    likelihood-ratio p, the covariate's univariable p and the concordance. Each model is
    checked against ``survival::coxph(Surv(time, event) ~ marker + covariate, ties = "efron")``
    on ``survival::lung`` (``tools/r_reference/make_reference.R``,
    ``tests/stats/test_r_agreement.py``).

    Parameters
    ----------
    df : pandas.DataFrame
        One row per subject.
    time, event : str
        Columns of follow-up time and event (1 = event, 0 = censored).
    marker : str
        Column of the marker (e.g. a 0/1 score group).
    covariates : sequence of str
        Covariate columns, each fitted with the marker in its own model. A text covariate
        gives one row per non-reference level.
    conf_level : float, default 0.95
        Level of the hazard-ratio intervals.
    min_events : int, default 10
        Fewer events in a model gives a :class:`TMBRBStatsWarning`.
    ties : {'efron', 'breslow'}, default 'efron'
        Handling of tied event times in every model.
    reference : dict, optional
        Reference level per text covariate (default: the first sorted level, as R).

    Returns
    -------
    CoxScanResult
        Dataclass with fields:

        - ``marker`` : the marker column.
        - ``table`` : DataFrame, one row per covariate term: ``covariate``, ``n``, ``events``,
          ``marker_hr``, ``marker_hr_lower``, ``marker_hr_upper``, ``marker_p``,
          ``covariate_hr``, ``covariate_hr_lower``, ``covariate_hr_upper``, ``covariate_p``,
          ``model_logrank_p``, ``model_lr_p``, ``covariate_univariable_p``, ``concordance``.
        - ``models`` : the two-variable :class:`CoxResult` per covariate.

    Raises
    ------
    TMBRBStatsInputError
        If ``covariates`` is empty; a column is missing; or any of the models fails as described in
        :func:`cox_ph`.

    Warns
    -----
    TMBRBStatsWarning
        Once per model with fewer than ``min_events`` events.

    See Also
    --------
    cox_ph : One Cox model.
    plot_forest : Forest plot of the table.

    References
    ----------
    .. [1] D. R. Cox, "Regression models and life-tables", Journal of the Royal Statistical
       Society B 34(2):187-220, 1972.

    Examples
    --------
    >>> import pandas as pd
    >>> from TMBRBLib.stats import cox_scan
    >>> df = pd.DataFrame({"time": [5, 8, 3, 12, 15, 9, 20, 22, 18, 30, 7, 11, 14, 25],
    ...                    "event": [1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1],
    ...                    "ecog": [2, 1, 2, 1, 0, 1, 0, 1, 0, 0, 1, 2, 1, 0],
    ...                    "age": [70, 64, 58, 71, 49, 66, 55, 62, 60, 52, 68, 59, 63, 57],
    ...                    "high": [0, 0, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0]})
    >>> scan = cox_scan(df, "time", "event", "high", ["ecog", "age"])
    >>> for _, row in scan.table.iterrows():
    ...     print(f"high + {row['covariate']}: HR(high) {row['marker_hr']:.2f}, "
    ...           f"HR({row['covariate']}) {row['covariate_hr']:.2f}, model p {row['model_logrank_p']:.4f}")
    high + ecog: HR(high) 0.49, HR(ecog) 4.57, model p 0.0027
    high + age: HR(high) 0.72, HR(age) 1.16, model p 0.0194
    """
    if not covariates:
        raise TMBRBStatsInputError("Cox scan needs at least one covariate to fit with the marker; name them with "
                                   "--covariates.")
    require_columns(df, [time, event, marker, *covariates], "Cox scan")
    unknown = [k for k in (reference or {}) if k not in (marker, *covariates)]
    if unknown:
        raise TMBRBStatsInputError(f"reference level given for {unknown}, which are not among the covariates "
                                   f"{[marker, *covariates]}; name a covariate of the scan.")
    rows, models = [], {}
    for cv in covariates:
        sub = df[[time, event, marker, cv]].dropna()
        with warnings.catch_warnings(record=True) as wlist:
            warnings.simplefilter("always")
            ref = {k: v for k, v in (reference or {}).items() if k in (marker, cv)}
            kw = dict(conf_level=conf_level, min_events=min_events, ties=ties)
            m = cox_ph(sub, time, event, [marker, cv], reference=ref, **kw)
            uni = cox_ph(sub, time, event, [cv], reference={k: v for k, v in ref.items() if k == cv}, **kw)
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
    """Forest plot of hazard ratios (log scale) of the marker and each covariate in its two-variable model.

    Parameters
    ----------
    scan : CoxScanResult
        From :func:`cox_scan`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (default: a new figure sized to the number of rows).
    title : str, optional
        Axes title (default: "Cox models: <marker> + covariate").

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.
    """
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
