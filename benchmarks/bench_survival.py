"""Benchmark (not a test): survival statistics at n = 1e4, 1e5, 1e6 against R's survival and maxstat.

Times, on the same simulated cohort (continuous times, so every event time is distinct: the worst
case for a per-time loop; a marker x, a two-level group g), the median time over ``--repeats``
runs of (CPU time, user + system, on both sides: on a shared machine wall time mostly measures the
other users; R's survival and maxstat and numpy here are single-threaded):

- km:       ``kaplan_meier(time, event, g)`` (curves, medians with CI, log-rank) vs R
            ``survfit(Surv(time, event) ~ g)`` + ``summary(fit)$table`` + ``survdiff``
- logrank:  ``logrank_test`` vs ``survdiff``
- cutpoint: ``maxstat_cutpoint(time, event, x)`` (Lau92 and Lau94 p, naive log-rank of the split) vs
            ``maxstat.test(Surv(time, event) ~ x, smethod = "LogRank", pmethod = "Lau92")`` + ``survdiff``
- cox:      ``cox_ph(df, ..., ["x", "g"])`` (Efron; HR, CI, LR/Wald/score tests, concordance) vs
            ``coxph(Surv(time, event) ~ x + g)`` + ``summary``

Input parsing (CSV reading) is left out on both sides. R is run with ``Rscript`` when it is on the
PATH (packages survival and maxstat), else its columns say "n/a". Run with ``nice``:

    nice -n 10 python benchmarks/bench_survival.py [--sizes 10000 100000 1000000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TMBRBModule"))

from TMBRBLib.stats import cox_ph, kaplan_meier, logrank_test, maxstat_cutpoint  # noqa: E402

ANALYSES = ("km", "logrank", "cutpoint", "cox")

R_SCRIPT = r"""
suppressPackageStartupMessages({library(survival); library(maxstat)})
a <- commandArgs(trailingOnly = TRUE)
d <- read.csv(a[1]); reps <- as.integer(a[2])
tm <- function(f) median(sapply(seq_len(reps), function(i) {s <- system.time(f()); s[["user.self"]] + s[["sys.self"]]}))
km <- tm(function() {f <- survfit(Surv(time, event) ~ g, data = d); summary(f)$table; survdiff(Surv(time, event) ~ g, data = d)})
lr <- tm(function() survdiff(Surv(time, event) ~ g, data = d))
cp <- tm(function() {m <- maxstat.test(Surv(time, event) ~ x, data = d, smethod = "LogRank", pmethod = "Lau92")
                     survdiff(Surv(d$time, d$event) ~ (d$x > m$estimate))})
cx <- tm(function() summary(coxph(Surv(time, event) ~ x + g, data = d)))
cat(km, lr, cp, cx, "\n")
"""


def cohort(n: int, seed: int = 0) -> pd.DataFrame:
    """Exponential survival depending on the marker x, uniform censoring; g = (x > 0)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.exponential(np.exp(-0.5 * x)) * 365
    c = rng.uniform(0, 800, n)
    return pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(int), "x": x, "g": (x > 0).astype(int)})


def _median_time(fn, repeats: int) -> float:
    """Median CPU time (user + system) of ``fn`` over ``repeats`` runs: the shared machine's load inflates wall time."""
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats, timer=time.process_time))


def time_python(d: pd.DataFrame, repeats: int) -> dict:
    t, e, x, g = d["time"].to_numpy(), d["event"].to_numpy(), d["x"].to_numpy(), d["g"].to_numpy()
    return {"km": _median_time(lambda: kaplan_meier(t, e, g), repeats),
            "logrank": _median_time(lambda: logrank_test(t, e, g), repeats),
            "cutpoint": _median_time(lambda: maxstat_cutpoint(t, e, x), repeats),
            "cox": _median_time(lambda: cox_ph(d, "time", "event", ["x", "g"]), repeats)}


def time_r(d: pd.DataFrame, repeats: int, workdir: Path):
    """R's median times per analysis, or None without Rscript (or without the packages)."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return None
    csv, script = workdir / "cohort.csv", workdir / "bench.R"
    d.to_csv(csv, index=False, float_format="%.17g")
    script.write_text(R_SCRIPT)
    run = subprocess.run([rscript, str(script), str(csv), str(repeats)], capture_output=True, text=True)
    if run.returncode != 0:
        print(f"R failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return dict(zip(ANALYSES, (float(v) for v in run.stdout.split())))


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3, help="runs per timing (median); 1 at n >= 1e6")
    args = ap.parse_args(argv)
    print(f"# bench_survival: {os.cpu_count()} CPU(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("| n | analysis | Python (CPU s) | R (CPU s) | Python / R |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            d = cohort(n)
            reps = 1 if n >= 1_000_000 else args.repeats
            py = time_python(d, reps)
            r = time_r(d, reps, Path(tmp))
            for a in ANALYSES:
                rv = None if r is None else r[a]
                ratio = "n/a" if not rv else f"{py[a] / rv:.1f}x"
                print(f"| {n:,} | {a} | {_fmt(py[a])} | {_fmt(rv)} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
