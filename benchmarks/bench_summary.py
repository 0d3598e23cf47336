"""Benchmark rewriting summary.csv as `tmbrb batch` does: after each case, with every row so far.

Usage: python benchmarks/bench_summary.py [--cases 1000] [--runs 3]
Each case's row is failed with an error naming its CT by an absolute path in another tree (the case whose path must
be shown without its folders). Prints the median over runs of the whole batch's summary writes (cases rewrites, rows
1..cases), and the number of Path.resolve calls they made. Runs on older TMBRB too (rows made without ``folder``), so
the two can be compared with PYTHONPATH.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time
from pathlib import Path

from TMBRBLib.batch import failed_row, write_summary


def _row(i: int, folder: Path):
    error = f"The CT '/data/patients/PAT-{i:05d}/ct.nrrd' does not exist."
    try:
        return failed_row(f"c{i}", error, 0.1, folder=folder)  # relativised once, when the row is made
    except TypeError:  # older TMBRB: write_summary relativised every row on every rewrite
        return failed_row(f"c{i}", error, 0.1)


def _batch(n: int, folder: Path) -> None:
    rows = []
    for i in range(n):
        rows.append(_row(i, folder))
        write_summary(folder / "summary.csv", rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    calls = [0]
    real = pathlib.Path.resolve

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)

    times = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "results" / "batch"
        folder.mkdir(parents=True)
        pathlib.Path.resolve = counted
        try:
            for _ in range(a.runs):
                calls[0] = 0
                t = time.perf_counter()
                _batch(a.cases, folder)
                times.append(time.perf_counter() - t)
        finally:
            pathlib.Path.resolve = real
    print(f"{a.cases} cases: summary.csv rewritten after each case, median over {a.runs} runs "
          f"{statistics.median(times):.2f} s ({calls[0]} Path.resolve calls per batch)")


if __name__ == "__main__":
    main()
