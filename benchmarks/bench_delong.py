"""Benchmark DeLong AUC + variance: Sun & Xu O(n log n) vs the naive O(n_cases * n_controls) placements.

Usage: python benchmarks/bench_delong.py [--n 100000] [--n-naive 5000] [--runs 7]
Prints the median over runs of roc_analysis (AUC, DeLong CI, Youden) at --n, and the speed ratio of the fast
vs the naive placements at --n-naive (both timed in this run, on the same data).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from TMBRBLib.stats.roc import delong_placements, delong_placements_naive, roc_analysis


def _median_time(fn, runs):
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-naive", type=int, default=5_000)
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, a.n)
    s = np.round(rng.normal(size=a.n) + y, 3)  # rounded: realistic ties
    roc_analysis(y, s)
    t_full = _median_time(lambda: roc_analysis(y, s), a.runs)
    cases, controls = s[y == 1], s[y == 0]
    t_pl = _median_time(lambda: delong_placements(cases, controls), a.runs)
    print(f"n={a.n}: roc_analysis (AUC + DeLong CI + ROC curve + Youden) median {t_full * 1000:.1f} ms; "
          f"DeLong placements alone {t_pl * 1000:.1f} ms (median of {a.runs})")
    yn, sn = y[: a.n_naive], s[: a.n_naive]
    cn, kn = sn[yn == 1], sn[yn == 0]
    t_fast = _median_time(lambda: delong_placements(cn, kn), a.runs)
    t_naive = _median_time(lambda: delong_placements_naive(cn, kn), max(3, a.runs // 2))
    assert np.allclose(delong_placements(cn, kn)[1], delong_placements_naive(cn, kn)[1])
    print(f"n={a.n_naive}: fast {t_fast * 1000:.2f} ms, naive O(n^2) {t_naive * 1000:.1f} ms, "
          f"speed-up x{t_naive / t_fast:.0f}")


if __name__ == "__main__":
    main()
