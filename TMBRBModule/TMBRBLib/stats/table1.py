"""Table 1: cohort characteristics by group with the paper's tests.

Continuous: mean ± SD, Welch t-test for two groups (R's t.test default; ``equal_var=True`` gives Student's),
one-way ANOVA for more. Categorical: n (%), Pearson chi-square (Yates-corrected for 2x2, as R's chisq.test)
or Fisher's exact test when any expected count is < 5 (exact enumeration for tables with two rows or two
columns, as R's fisher.test; scipy's Monte Carlo for larger tables, seeded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.special import gammaln

from ._input import require_columns, to_numeric
from ._result import Result, jsonable
from .errors import TMBRBStatsInputError

__all__ = ["Table1Result", "table1", "fisher_exact_2xc", "categorical_test"]


def _lchoose(n, k):
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def fisher_exact_2xc(table: np.ndarray, max_tables: int = 5_000_000) -> Optional[float]:
    """Exact two-sided Fisher p for a 2 x c (or r x 2) table, R's rule: sum of P(table) <= P(observed)*(1+1e-7).

    Returns None when the enumeration would exceed ``max_tables``.
    """
    t = np.asarray(table, dtype=np.int64)
    if t.shape[0] != 2:
        t = t.T
    if t.shape[0] != 2:
        raise ValueError("fisher_exact_2xc needs a table with two rows or two columns")
    cols = t.sum(0)
    r1, n = int(t[0].sum()), int(t.sum())
    if np.prod(cols.astype(float) + 1) > max_tables * 50:
        return None
    # enumerate first-row vectors column by column: states = (partial sum, log prob)
    sums = np.array([0], dtype=np.int64)
    logp = np.array([0.0])
    for j, c in enumerate(cols):
        a = np.arange(c + 1)
        sums = (sums[:, None] + a[None, :]).ravel()
        logp = (logp[:, None] + _lchoose(c, a)[None, :]).ravel()
        rest = int(cols[j + 1:].sum())
        keep = (sums <= r1) & (sums + rest >= r1)
        sums, logp = sums[keep], logp[keep]
        if len(sums) > max_tables:
            return None
    logp = logp[sums == r1] - _lchoose(n, r1)
    obs = float(np.sum(_lchoose(cols, t[0])) - _lchoose(n, r1))
    p = np.exp(logp)
    return float(min(1.0, p[logp <= obs + np.log1p(1e-7)].sum()))


def categorical_test(table: np.ndarray, seed: int = 0):
    """(test name, p) for a contingency table: chi-square, or Fisher's exact when any expected count < 5."""
    t = np.asarray(table, float)
    t = t[t.sum(1) > 0][:, t.sum(0) > 0]
    if t.shape[0] < 2 or t.shape[1] < 2:
        return "none", float("nan")
    expected = np.outer(t.sum(1), t.sum(0)) / t.sum()
    if (expected < 5).any():
        if t.shape == (2, 2):
            return "Fisher", float(sps.fisher_exact(t.astype(int)).pvalue)
        if 2 in t.shape:
            p = fisher_exact_2xc(t.astype(int))
            if p is not None:
                return "Fisher", p
        res = sps.fisher_exact(t.astype(int), method=sps.MonteCarloMethod(n_resamples=20000, rng=np.random.default_rng(seed)))
        return "Fisher (Monte Carlo)", float(res.pvalue)
    r = sps.chi2_contingency(t, correction=True)
    return "chi-square", float(r.pvalue)


@dataclass
class Table1Result(Result):
    table: pd.DataFrame
    group: str
    groups: list
    n_missing_group: int

    def __str__(self) -> str:
        return self.table.to_string(index=False)

    def to_dict(self) -> dict:
        return {"group": self.group, "groups": jsonable(self.groups), "n_missing_group": self.n_missing_group,
                "table": jsonable(self.table)}

    def to_html(self) -> str:
        return self.table.to_html(index=False, na_rep="", escape=True)


def _fmt_p(p: float) -> str:
    if p != p:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def table1(df: pd.DataFrame, group: str, *, continuous: Sequence[str] = (), categorical: Sequence[str] = (),
           equal_var: bool = False, group_order: Optional[Sequence[object]] = None) -> Table1Result:
    """Table 1: cohort characteristics by group, overall and per group, with the paper's tests.

    Continuous variables: mean±SD, Welch's t-test for two groups (R's ``t.test`` default;
    ``equal_var=True`` for Student's) or one-way ANOVA for more. Categorical variables: n (%)
    per level, Pearson's chi-square (Yates-corrected on 2x2, R's ``chisq.test`` default), or
    Fisher's exact test when an expected count is < 5 (exact for tables with two rows or
    columns, as R's ``fisher.test``; seeded Monte Carlo for larger tables). Missing values get
    their own "missing" row; rows with a missing group are left out and counted. The tests
    are checked against ``chisq.test``, ``fisher.test`` and ``t.test`` on ``survival::lung``
    (``tools/r_reference/make_reference.R``, ``tests/stats/test_r_agreement.py``).

    Parameters
    ----------
    df : pandas.DataFrame
        One row per subject.
    group : str
        Group column (two or more values).
    continuous : sequence of str
        Numeric columns summarised as mean±SD.
    categorical : sequence of str
        Columns summarised as n (%).
    equal_var : bool, default False
        Student's instead of Welch's t-test.
    group_order : sequence, optional
        Order of the group columns (default: sorted as text).

    Returns
    -------
    Table1Result
        Dataclass with fields:

        - ``table`` : DataFrame with ``variable``, ``level``, one column per group headed
          ``"<group> (n=<count>)"`` after ``"All (n=...)"``, ``p``, ``p_text`` (3 decimals,
          "<0.001") and ``test``.
        - ``group``, ``groups`` : the group column and its values in order.
        - ``n_missing_group`` : rows left out for a missing group.

    Raises
    ------
    TMBRBStatsInputError
        If a column is missing; no variable is given; a continuous column has non-numeric
        entries; or the group has a single value.

    See Also
    --------
    categorical_test : The chi-square / Fisher choice for one contingency table.
    fisher_exact_2xc : Exact Fisher test of a 2 x c table (R's two-sided rule).

    References
    ----------
    .. [1] B. L. Welch, "The generalization of 'Student's' problem when several different
       population variances are involved", Biometrika 34(1-2):28-35, 1947.
    .. [2] R. A. Fisher, "On the interpretation of chi-square from contingency tables, and the
       calculation of P", Journal of the Royal Statistical Society 85(1):87-94, 1922.

    Examples
    --------
    Four patients per group; the expected counts of the 2x2 sex table are 2 (< 5), so
    Fisher's exact test is used:

    >>> import pandas as pd
    >>> from TMBRBLib.stats import table1
    >>> df = pd.DataFrame({"group": ["high"] * 4 + ["low"] * 4,
    ...                    "age": [60, 65, 70, 55, 50, 58, 62, 48],
    ...                    "sex": ["m", "f", "m", "m", "f", "f", "m", "f"]})
    >>> r = table1(df, "group", continuous=["age"], categorical=["sex"])
    >>> for _, row in r.table.iterrows():
    ...     print(" | ".join(str(row[c]) for c in ["variable", "level", "high (n=4)", "low (n=4)", "p_text", "test"]))
    age | mean±SD | 62.5±6.5 | 54.5±6.6 | 0.134 | Welch t-test
    sex |  |  |  | 0.486 | Fisher
    sex | f | 1 (25.0) | 3 (75.0) |  |
    sex | m | 3 (75.0) | 1 (25.0) |  |
    """
    require_columns(df, [group, *continuous, *categorical], "Table 1")
    if not continuous and not categorical:
        raise TMBRBStatsInputError("Table 1 needs at least one --continuous or --categorical variable.")
    g = df[group]
    n_missing_group = int(g.isna().sum())
    d = df[g.notna()]
    g = d[group]
    groups = list(group_order) if group_order is not None else sorted(pd.unique(g).tolist(), key=str)
    if len(groups) < 2:
        raise TMBRBStatsInputError(f"Table 1: group column '{group}' has a single value; it needs two or more groups.")
    heads = [f"All (n={len(d)})"] + [f"{lv} (n={int((g == lv).sum())})" for lv in groups]
    rows = []
    for v in continuous:
        x = pd.Series(to_numeric(d[v], v), index=d.index)
        parts = [x] + [x[g == lv] for lv in groups]
        cells = [f"{p.mean():.1f}±{p.std(ddof=1):.1f}" if p.notna().sum() > 1 else "" for p in parts]
        samples = [p.dropna().to_numpy() for p in parts[1:]]
        if any(len(s) < 2 for s in samples):
            pv, test = float("nan"), "none"
        elif len(groups) == 2:
            pv, test = float(sps.ttest_ind(*samples, equal_var=equal_var).pvalue), ("t-test" if equal_var else "Welch t-test")
        else:
            pv, test = float(sps.f_oneway(*samples).pvalue), "ANOVA"
        rows.append({"variable": v, "level": "mean±SD", **dict(zip(heads, cells)), "p": pv, "p_text": _fmt_p(pv), "test": test})
        miss = int(x.isna().sum())
        if miss:
            rows.append({"variable": v, "level": "missing", heads[0]: str(miss), "p": np.nan, "p_text": "", "test": ""})
    for v in categorical:
        x = d[v]
        levels = sorted(pd.unique(x.dropna()).tolist(), key=str)
        tab = pd.crosstab(x, g).reindex(index=levels, columns=groups, fill_value=0)
        test, pv = categorical_test(tab.to_numpy())
        rows.append({"variable": v, "level": "", "p": pv, "p_text": _fmt_p(pv), "test": test})
        tot = [int(x.notna().sum())] + [int(x[g == lv].notna().sum()) for lv in groups]
        for lv in levels:
            counts = [int((x == lv).sum())] + [int(tab.loc[lv, gg]) for gg in groups]
            cells = [f"{c} ({100 * c / t:.1f})" if t else "0" for c, t in zip(counts, tot)]
            rows.append({"variable": v, "level": str(lv), **dict(zip(heads, cells)), "p": np.nan, "p_text": "", "test": ""})
        miss = int(x.isna().sum())
        if miss:
            rows.append({"variable": v, "level": "missing", heads[0]: str(miss), "p": np.nan, "p_text": "", "test": ""})
    table = pd.DataFrame(rows, columns=["variable", "level", *heads, "p", "p_text", "test"]).fillna({h: "" for h in heads})
    return Table1Result(table=table, group=group, groups=groups, n_missing_group=n_missing_group)
