"""Cox partial likelihood (Efron or Breslow ties), Newton-Raphson fit and Harrell's C in O(n log n).

One sort by time; every risk-set sum is a reverse cumulative sum, the tie corrections are
``np.bincount`` over the tied-death groups, and the information matrix is one weighted
``X.T @ X`` (no per-time loop, no (n, p, p) array). Follows R's ``survival::coxph``
(``coxfit6``): covariates centred, Newton-Raphson from beta = 0 with step halving, converged
when the log-likelihood changes by less than ``eps`` relative.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

TIES = ("efron", "breslow")


@dataclass
class RiskSets:
    """Subjects sorted by time with the index structures of the partial likelihood."""
    X: np.ndarray        # (n, p) centred covariates, sorted by time
    dead: np.ndarray     # indices (sorted order) of the deaths
    start: np.ndarray    # for each death, first sorted index with time >= its time (its risk set)
    group: np.ndarray    # for each death, its tied-death group 0 .. G-1
    frac: np.ndarray     # Efron's l / d for each death (0 for Breslow)
    n_groups: int


def risk_sets(X: np.ndarray, time: np.ndarray, event: np.ndarray, ties: str = "efron") -> RiskSets:
    """Sort once and index the risk sets and tied deaths (O(n log n)).

    Parameters
    ----------
    X : numpy.ndarray of shape (n, p)
        Covariates (centred here; the centring changes neither beta nor the likelihood).
    time, event : numpy.ndarray of shape (n,)
        Follow-up times and 0/1 events.
    ties : {'efron', 'breslow'}
        Handling of tied death times.

    Returns
    -------
    RiskSets
        The sorted, centred covariates and, per death, its risk-set start, tie group and
        Efron fraction.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, not {ties!r}")
    X = np.asarray(X, float)
    X = X - X.mean(axis=0)
    order = np.argsort(time, kind="mergesort")
    ts, es = np.asarray(time, float)[order], np.asarray(event)[order]
    dead = np.flatnonzero(es == 1)
    td = ts[dead]
    start = np.searchsorted(ts, td, side="left")
    new = np.concatenate([[True], td[1:] != td[:-1]]) if len(td) else np.zeros(0, bool)
    group = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    size = np.diff(np.append(first, len(td)))
    rank = np.arange(len(td)) - first[group]
    frac = rank / size[group] if ties == "efron" else np.zeros(len(td))
    return RiskSets(X=X[order], dead=dead, start=start, group=group, frac=frac, n_groups=len(first))


def _group_sum(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    if values.ndim == 1:
        return np.bincount(group, weights=values, minlength=n_groups)
    return np.stack([np.bincount(group, weights=values[:, j], minlength=n_groups) for j in range(values.shape[1])],
                    axis=1)


def partial_loglik(rs: RiskSets, beta: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    """Partial log-likelihood, score vector and information matrix at ``beta``.

    Parameters
    ----------
    rs : RiskSets
        From :func:`risk_sets` (its ties rule is used).
    beta : numpy.ndarray of shape (p,)
        Coefficients.

    Returns
    -------
    tuple
        ``(loglik, gradient (p,), information (p, p))``.
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # a diverging fit: caught by the caller
        return _partial_loglik(rs, beta)


def _partial_loglik(rs: RiskSets, beta: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    X, dead, k, g, f = rs.X, rs.dead, rs.start, rs.group, rs.frac
    n = X.shape[0]
    eta = X @ beta
    c = float(eta.max())
    w = np.exp(eta - c)  # the scale cancels in every ratio; the log-likelihood adds c back
    wx = w[:, None] * X
    s0 = np.cumsum(w[::-1])[::-1]
    s1 = np.cumsum(wx[::-1], axis=0)[::-1]
    d0 = _group_sum(w[dead], g, rs.n_groups)
    d1 = _group_sum(wx[dead], g, rs.n_groups)
    den = s0[k] - f * d0[g]
    m1 = (s1[k] - f[:, None] * d1[g]) / den[:, None]
    ll = float(eta[dead].sum() - np.sum(np.log(den) + c))
    grad = X[dead].sum(axis=0) - m1.sum(axis=0)
    # sum over deaths of S2(k_i)/den_i = sum_j w_j x_j x_j' * (sum of 1/den_i over deaths with k_i <= j)
    q = w * np.cumsum(np.bincount(k, weights=1.0 / den, minlength=n))
    # minus the Efron correction f_i * D2(g_i) / den_i, D2(g) = sum over the group's deaths of w x x'
    q[dead] -= w[dead] * _group_sum(f / den, g, rs.n_groups)[g]
    info = X.T @ (q[:, None] * X) - m1.T @ m1
    return ll, grad, info


@dataclass
class CoxFit:
    beta: np.ndarray
    var: np.ndarray
    loglik: float
    loglik_null: float
    score_null: np.ndarray
    info_null: np.ndarray
    iterations: int
    converged: bool
    messages: List[str]


def fit_cox(rs: RiskSets, eps: float = 1e-12, max_iter: int = 100) -> CoxFit:
    """Newton-Raphson from beta = 0 with step halving, as R's coxph.

    Parameters
    ----------
    rs : RiskSets
        From :func:`risk_sets`.
    eps : float, default 1e-12
        Convergence: relative change of the log-likelihood (R's ``coxph.control(eps=)``).
    max_iter : int, default 100
        Most Newton steps.

    Returns
    -------
    CoxFit
        Coefficients, their variance (inverse information), log-likelihoods at the fit and at
        zero, the score and information at zero (for the score test), and convergence notes.

    Raises
    ------
    numpy.linalg.LinAlgError
        If the information at beta = 0 is singular (collinear or constant covariates).
    """
    p = rs.X.shape[1]
    beta = np.zeros(p)
    ll0, u0, i0 = partial_loglik(rs, beta)
    np.linalg.cholesky(i0)  # raises LinAlgError when collinear
    ll, grad, info = ll0, u0, i0
    messages: List[str] = []
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:
            messages.append(f"information matrix singular at iteration {it}; convergence halted")
            break
        if not np.all(np.isfinite(step)):
            messages.append(f"non-finite Newton step at iteration {it}; convergence halted")
            break
        new = beta + step
        lln, gn, inn = partial_loglik(rs, new)
        halvings = 0
        while (not np.isfinite(lln) or lln < ll - 1e-12 * max(1.0, abs(ll))) and halvings < 30:
            new = (beta + new) / 2
            lln, gn, inn = partial_loglik(rs, new)
            halvings += 1
        done = abs(lln - ll) <= eps * max(abs(lln), 1.0) or np.max(np.abs(new - beta)) <= eps * (1 + np.max(np.abs(new)))
        beta, ll, grad, info = new, lln, gn, inn
        if done:
            converged = True
            break
    else:
        messages.append(f"Newton-Raphson did not converge in {max_iter} iterations")
    try:
        var = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        var = np.full((p, p), np.nan)
        messages.append("information matrix singular at the fit; standard errors undefined")
    return CoxFit(beta=beta, var=var, loglik=ll, loglik_null=ll0, score_null=u0, info_null=i0, iterations=it,
                  converged=converged, messages=messages)


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C of a risk score (higher = earlier event), as R's ``concordance`` of a coxph fit.

    A pair is comparable when the shorter time is an event (an event tied in time with a
    censored subject counts as earlier; two tied events are not comparable); concordant when
    the earlier one has the higher risk; ties in risk count one half. O(n log^2 n) worst case
    by bottom-up merge counting, all in numpy.

    Parameters
    ----------
    time, event, risk : numpy.ndarray of shape (n,)
        Follow-up times, 0/1 events and risk scores (e.g. the linear predictor).

    Returns
    -------
    float
        (concordant + ties / 2) / comparable; NaN when no pair is comparable.
    """
    time, event, risk = np.asarray(time, float), np.asarray(event), np.asarray(risk, float)
    n = len(time)
    r = _tied_ranks(risk)
    # order: time ascending, events before censored, then risk ascending (so no pair of tied events counts)
    order = np.lexsort((r, -event, time))
    v, ev, ts = r[order], event[order] == 1, time[order]
    lower, equal = _later_smaller_equal(v, ev)
    # tied events with equal risk were counted as 'equal' above: remove them (deaths are sorted by time, then risk)
    dead_t, dead_r = ts[ev], v[ev]
    same_t = dead_t[1:] == dead_t[:-1]
    equal -= _pairs_in_runs(same_t & (dead_r[1:] == dead_r[:-1]))
    comparable = float(np.sum((n - 1 - np.flatnonzero(ev)).astype(float))) - _pairs_in_runs(same_t)
    if comparable <= 0:
        return float("nan")
    return (lower + equal / 2) / comparable


RISK_TIE_TOLERANCE = 1e-10  # relative to the largest |risk|


def _tied_ranks(risk: np.ndarray) -> np.ndarray:
    """Dense ranks of the risk scores (0, 1, ...), scores within RISK_TIE_TOLERANCE x max(1, max |risk|) of their
    neighbour counting as one. A linear predictor X @ beta gives two patients with the same covariates scores that
    can differ in the last bit, by the BLAS kernel's summation order (seen with numpy 2.4: lung's age + sex + ph.ecog
    model, C 0.637186 against R's 0.637135); R's coxph counts them as tied, and so must this."""
    values, inverse = np.unique(risk, return_inverse=True)
    if len(values) == 0:
        return np.zeros(0, np.int64)
    tolerance = RISK_TIE_TOLERANCE * max(1.0, float(np.max(np.abs(values))))
    group = np.concatenate([[0], np.cumsum(np.diff(values) > tolerance)])
    return group[inverse.ravel()].astype(np.int64)


def _pairs_in_runs(same_as_previous: np.ndarray) -> float:
    """Number of pairs within runs of equal neighbours (a run of length m gives m (m - 1) / 2)."""
    starts = np.flatnonzero(np.concatenate([[True], ~same_as_previous]))
    sizes = np.diff(np.append(starts, len(same_as_previous) + 1)).astype(float)
    return float(np.sum(sizes * (sizes - 1) / 2))


def _later_smaller_equal(v: np.ndarray, flag: np.ndarray) -> Tuple[float, float]:
    """Sum over flagged positions i of #{j > i: v_j < v_i} and #{j > i: v_j == v_i} (bottom-up merge)."""
    n = len(v)
    big = np.int64(n + 1)
    pos = np.arange(n, dtype=np.int64)
    vals, flags = v.astype(np.int64).copy(), flag.copy()
    lower = equal = 0.0
    s = 1
    while s < n:
        block = pos // (2 * s)
        right = (pos // s) % 2 == 1
        keys = block * big + vals
        rkeys = keys[right]  # each right half is sorted and blocks ascend: globally sorted
        q = ~right & flags
        qkeys = keys[q]  # sorted too, which keeps numpy's binary searches short
        rstart = np.searchsorted(rkeys, block[q] * big, side="left")
        lo = np.searchsorted(rkeys, qkeys, side="left")
        hi = np.searchsorted(rkeys, qkeys, side="right")
        lower += float(np.sum(lo - rstart))
        equal += float(np.sum(hi - lo))
        o = np.argsort(keys, kind="stable")  # merge the two sorted halves of each block
        vals, flags = vals[o], flags[o]
        s *= 2
    return lower, equal
