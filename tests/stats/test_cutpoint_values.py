"""The cut-point search on small cohorts against maxstat (tests/stats/fixtures/make_reference_edges.R): every
searched cut-point and its statistic, the search's p values, the split's naive log-rank; and what the result prints,
plots and refuses (issue 16)."""
from __future__ import annotations

import itertools
import json
from functools import lru_cache

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from TMBRBLib.stats import TMBRBStatsInputError, maxstat_cutpoint  # noqa: E402
from TMBRBLib.stats.cutpoint import logrank_scores, p_lausen92, permutation_p  # noqa: E402

from _stats_testdata import FIXTURES  # noqa: E402

TIGHT = dict(rtol=1e-9, atol=1e-12)
T = [5, 8, 3, 12, 15, 9, 20, 22, 18, 30]
E = [1, 1, 1, 1, 0, 1, 1, 0, 1, 0]
X = [0.1, 0.2, 0.3, 0.35, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9]


@lru_cache(maxsize=None)
def ref() -> dict:
    with open(FIXTURES / "reference_cutpoint.json") as f:
        return json.load(f)


@pytest.mark.parametrize("key", ["ten", "ten_narrow", "ties", "one_cut"])
def test_every_searched_cut_point_matches_maxstat(key):
    d = ref()[key]
    r = maxstat_cutpoint(d["time"], d["event"], d["x"], minprop=d["minprop"], maxprop=d["maxprop"])
    np.testing.assert_allclose(r.cuts, d["cuts"], **TIGHT)
    np.testing.assert_allclose(r.stats, d["stats"], **TIGHT)
    np.testing.assert_allclose([r.statistic, r.cutpoint, r.p_value, r.p_value_lau94, r.naive_logrank_chisq],
                               [d["statistic"], d["estimate"], d["p_lau92"], d["p_lau94"], d["naive_chisq"]], **TIGHT)
    n = len(d["x"])
    assert (r.n, r.n_low, r.n_high, r.n_events) == (n, d["n_low"], n - d["n_low"], sum(d["event"]))
    assert (r.minprop, r.maxprop, r.p_method, r.n_dropped) == (d["minprop"], d["maxprop"], "Lau92", 0)
    assert r.logrank.groups == ["high", "low"] and r.logrank.n == [n - d["n_low"], d["n_low"]]
    assert r.naive_p_value == r.logrank.p_value and r.logrank.chisq == r.naive_logrank_chisq


def test_lausen92_p_matches_maxstat():
    d = ref()["p92"]
    got = [p_lausen92(b, d["minprop"], d["maxprop"]) for b in d["b"]]
    np.testing.assert_allclose(got, d["p"], **TIGHT)  # 1 below M = 1, the formula from M = 1 on
    d = ref()["p92_default"]
    assert p_lausen92(d["b"]) == pytest.approx(d["p"], rel=1e-9)  # maxstat's default bounds 0.1 and 0.9


def test_permutation_p_counts_the_observed_and_is_never_zero():
    scores = np.array([1.0, -0.5, 0.25, -0.75, 0.5, -0.5])
    m = np.array([2, 3, 4])
    assert permutation_p(scores, m, 0.0, 49) == 1.0  # every permutation reaches M = 0: (1 + 49) / 50
    assert permutation_p(scores, m, 1e9, 49) == 1 / 50  # none reaches it; the observed still counts
    p1 = permutation_p(scores, m, 1.0, 200, seed=4)
    assert p1 == permutation_p(scores, m, 1.0, 200, seed=4) and 1 / 201 < p1 < 1
    assert round(p1 * 201) == p1 * 201  # (1 + hits) / (B + 1)
    assert permutation_p(scores, m, 1.0, 200) == permutation_p(scores, m, 1.0, 200, seed=0)  # the default seed


def test_permutation_p_agrees_with_the_full_permutation_distribution():
    # eight patients: all 8! orders of the log-rank scores give the exact conditional p of the search (maxstat's
    # "exact" idea); 600,000 random permutations (two batches of 500,000 and 100,000) must land within 4 standard
    # errors of it
    t = np.array([5.0, 8, 3, 12, 15, 9, 20, 22])
    e = np.array([1.0, 1, 1, 1, 0, 1, 1, 0])
    x = np.array([0.1, 0.2, 0.3, 0.35, 0.5, 0.55, 0.6, 0.7])
    b = 600_000
    r = maxstat_cutpoint(t, e, x, minprop=0.1, maxprop=0.9, permutations=b, seed=1)
    n = len(t)
    y = logrank_scores(t, e)[np.argsort(x)]
    m = np.array([int(np.sum(x <= c)) for c in r.cuts])
    mean = m / n * y.sum()
    sd = np.sqrt(m * (n - m) / (n ** 2 * (n - 1)) * (n * np.sum(y ** 2) - y.sum() ** 2))
    perms = y[np.array(list(itertools.permutations(range(n))))]
    stat = np.abs((np.cumsum(perms, axis=1)[:, m - 1] - mean) / sd).max(axis=1)
    assert stat[0] == pytest.approx(r.statistic, rel=1e-12)  # the identity order is the observed split
    exact = float(np.mean(stat >= r.statistic * (1 - 1e-9)))
    assert 0.05 < exact < 0.5
    assert r.p_value_permutation == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / b) + 1 / b)


def test_permutation_p_in_the_result():
    r = maxstat_cutpoint(T, E, X, permutations=99, seed=3)
    assert r.permutations == 99 and round(r.p_value_permutation * 100) == pytest.approx(r.p_value_permutation * 100)
    assert r.p_value_permutation == maxstat_cutpoint(T, E, X, permutations=99, seed=3).p_value_permutation
    # the search's own maximum is among the permuted ones: p is above the naive split's p
    assert r.naive_p_value < r.p_value_permutation < 1
    default = maxstat_cutpoint(T, E, X, permutations=99).p_value_permutation
    assert default == maxstat_cutpoint(T, E, X, permutations=99, seed=0).p_value_permutation  # the default seed: 0
    seeds = {maxstat_cutpoint(T, E, X, permutations=99, seed=s).p_value_permutation for s in range(6)}
    assert len(seeds) > 1  # the seed is used


def test_printout():
    r = maxstat_cutpoint(T, E, X, permutations=99, seed=3)
    assert str(r) == (
        "Maximally selected log-rank statistic (maxstat): cut-point 0.35 (low: x <= cut, n=4; high: n=6)\n"
        f"  M = 2.1822, corrected p = 0.347 (Lau92), 0.1781 (Lau94), {r.p_value_permutation:.4g} (99 permutations); "
        "naive log-rank p at this cut = 0.004565 (chisq 8.044)\n"
        "  searched 9 cut-points between the 10% and 90% quantiles, n=10, events=7")
    r2 = maxstat_cutpoint([np.nan] + T, [1] + E, [0.5] + X)
    assert str(r2).splitlines()[1] == ("  M = 2.1822, corrected p = 0.347 (Lau92), 0.1781 (Lau94); naive log-rank p at "
                                       "this cut = 0.004565 (chisq 8.044)")
    assert str(r2).endswith("n=10, events=7, 1 row(s) dropped") and "permutations" not in str(r2)
    assert r2.n_dropped == 1 and np.isnan(r2.p_value_permutation) and r2.permutations == 0


def test_plot_shows_the_statistic_over_the_cut_points():
    r = maxstat_cutpoint(T, E, X)
    ax = r.plot(label="TMBRB")
    curve, cut = ax.lines
    assert curve.get_xdata().tolist() == r.cuts.tolist() and curve.get_ydata().tolist() == r.stats.tolist()
    assert (curve.get_marker(), curve.get_linestyle()) == ("o", "-") and curve.get_markersize() == 3
    assert cut.get_xdata() == [0.35, 0.35] and cut.get_linestyle() == "--" and cut.get_color() == "red"
    assert cut.get_linewidth() < plt.rcParams["lines.linewidth"]
    assert ax.get_xlabel() == "cut-point of TMBRB" and ax.get_ylabel() == "standardised log-rank statistic"
    assert ax.get_title() == "Cut-point 0.35: M=2.18, corrected p=0.347 (Lau92), 0.178 (Lau94)"
    assert tuple(ax.figure.get_size_inches()) == (6.0, 4.0)
    assert r.plot().get_xlabel() == "cut-point of marker"
    fig, given = plt.subplots()
    assert r.plot(ax=given) is given and fig.axes == [given]
    plt.close("all")


def test_cut_points_at_the_search_bounds():
    # marker 0 for nine patients, 1 for one: the only cut (0) leaves 9 of 10 below, allowed by maxprop = 0.9
    r = maxstat_cutpoint(T, E, [0] * 9 + [1], minprop=0.2)
    assert r.cuts.tolist() == [0] and (r.n_low, r.n_high) == (9, 1)
    # ... and one of 10 below, allowed by minprop = 0.1
    r = maxstat_cutpoint(T, E, [0] + [1] * 9)
    assert r.cuts.tolist() == [0] and (r.n_low, r.n_high) == (1, 9)


@pytest.mark.parametrize("kwargs,message", [
    (dict(x=X, minprop=0.5, maxprop=0.5),
     "need 0 < minprop < maxprop < 1, got minprop=0.5, maxprop=0.5: the search's p-value (Lausen and Schumacher "
     "1992) is defined only for quantiles inside (0, 1). Use e.g. 0.1 and 0.9."),
    (dict(x=X, minprop=0.0), "need 0 < minprop < maxprop < 1, got minprop=0, maxprop=0.9: the search's p-value "
     "(Lausen and Schumacher 1992) is defined only for quantiles inside (0, 1). Use e.g. 0.1 and 0.9."),
    (dict(x=X, maxprop=1.0), "need 0 < minprop < maxprop < 1, got minprop=0.1, maxprop=1: the search's p-value "
     "(Lausen and Schumacher 1992) is defined only for quantiles inside (0, 1). Use e.g. 0.1 and 0.9."),
    (dict(x=X, maxprop=1.5), "need 0 < minprop < maxprop < 1, got minprop=0.1, maxprop=1.5: the search's p-value "
     "(Lausen and Schumacher 1992) is defined only for quantiles inside (0, 1). Use e.g. 0.1 and 0.9."),
    (dict(x=[1] * 10), "the marker takes a single value; there is no cut-point to search."),
    (dict(x=[0] * 5 + [1] * 5, minprop=0.6, maxprop=0.9),
     "minprop=0.6 too large: no cut-point leaves that share below it."),
    (dict(x=[0] + [1] * 9, minprop=0.01, maxprop=0.05),
     "no cut-point between the 0.01 and 0.05 quantiles (the marker has too few distinct values); widen "
     "--minprop/--maxprop."),
    (dict(time=[1] * 10, event=[1] * 10, x=X), "log-rank scores have no variance (all times or events identical); cannot search."),
    (dict(time=[np.nan] * 10, x=X), "no complete rows: every row misses the time, the event or the marker."),
])
def test_messages(kwargs, message):
    args = dict(time=T, event=E)
    args.update(kwargs)
    with pytest.raises(TMBRBStatsInputError) as e:
        maxstat_cutpoint(args.pop("time"), args.pop("event"), args.pop("x"), **args)
    assert str(e.value) == message


def test_messages_name_the_column():
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'marker' must be numeric but has non-numeric value"):
        maxstat_cutpoint(T, E, ["a"] + X[1:])
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'time' must be numeric"):
        maxstat_cutpoint(["a"] + T[1:], E, X)
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'event' must be numeric"):
        maxstat_cutpoint(T, ["a"] + E[1:], X)
    with pytest.raises(TMBRBStatsInputError, match=r"^cut-point search: all 10 observations are censored"):
        maxstat_cutpoint(T, [0] * 10, X)
