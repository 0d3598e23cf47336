"""Seed -> tumour mask on phantoms with known masks (benchmark, not a test): the old set and the new one, per case.

    PYTHONPATH=TMBRBModule .venv/bin/python benchmarks/bench_seed_phantoms.py [--set old|new|both] [--only TEXT]

The sets are built by tests/engine/seed_cases.py (``OLD_SET``: the 39 cases the thresholds were set on; ``NEW_SET``:
drawn once and measured before any change). For each case: the Dice of ``segment_from_seed``'s mask (the annotator's
seed or the true mask's centre of mass, no box, default settings) against the true mask, the share of the true mask
inside the proposed box, whether the result is flagged uncertain (and the first words of each reason), and the
process CPU time of the segmentation. Then per set: the mean Dice, how many reach 0.85, and the misses (below 0.85)
with and without a flag: an unflagged miss is a wrong mask that nothing tells the reader about.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "TMBRBModule"), str(REPO)]

from TMBRBLib.io import paste_region  # noqa: E402
from TMBRBLib.proposal import segment_from_seed  # noqa: E402
from tests.engine.seed_cases import NEW_SET, OLD_SET, build, points_of  # noqa: E402

GOAL = 0.85


def measure(spec) -> dict:
    """Build the case of ``spec``, segment it from its seed and compare with its true mask."""
    case = build(spec)
    c0 = time.process_time()
    seg = segment_from_seed(case.ct, case.seed_lps)
    cpu = time.process_time() - c0
    full = np.zeros(case.truth.shape, np.uint8)
    paste_region(full, sitk.GetArrayViewFromImage(seg.mask), seg.lo)
    m = full > 0
    dice = 2.0 * (m & case.truth).sum() / (m.sum() + case.truth.sum())
    pts = points_of(case.truth, case.ct)
    inside = float(np.mean(np.all((pts >= np.asarray(seg.box.min)) & (pts <= np.asarray(seg.box.max)), axis=1)))
    return {"name": spec.name, "dice": float(dice), "in_box": inside, "uncertain": bool(seg.uncertain),
            "reasons": [" ".join(r.split()[:6]) for r in seg.uncertain], "cpu": cpu,
            "grown": int(m.sum()), "truth": int(case.truth.sum())}


def table(title: str, specs, only: str) -> None:
    """Print the per-case lines and the set's summary."""
    print(f"\n{title}")
    print(f"{'case':<34} {'Dice':>6} {'in box':>7} {'grown':>8} {'truth':>8} {'flag':>5} {'CPU s':>6}  reasons")
    rows = []
    for spec in (s for s in specs if only in s.name):
        r = measure(spec)
        rows.append(r)
        print(f"{r['name']:<34} {r['dice']:6.3f} {100 * r['in_box']:6.1f}% {r['grown']:8d} {r['truth']:8d} "
              f"{'yes' if r['uncertain'] else '-':>5} {r['cpu']:6.2f}  {'; '.join(r['reasons'])}", flush=True)
    if not rows:
        return
    misses = [r for r in rows if r["dice"] < GOAL]
    unflagged = [r["name"] for r in misses if not r["uncertain"]]
    print(f"{len(rows)} cases: mean Dice {statistics.mean(r['dice'] for r in rows):.3f}, "
          f"{len(rows) - len(misses)} reach {GOAL}, {len(misses)} misses ({len(misses) - len(unflagged)} flagged, "
          f"unflagged: {', '.join(unflagged) or 'none'}); right masks flagged: "
          f"{sum(r['uncertain'] for r in rows if r['dice'] >= GOAL)}; box holds >= 99 % of the truth on "
          f"{sum(r['in_box'] >= 0.99 for r in rows)}; median CPU {statistics.median(r['cpu'] for r in rows):.2f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["old", "new", "both"], default="both")
    ap.add_argument("--only", default="", help="only the cases whose name holds this text")
    args = ap.parse_args(argv)
    if args.set in ("old", "both"):
        table(f"old set ({len(OLD_SET)} cases, the thresholds were set on it)", OLD_SET, args.only)
    if args.set in ("new", "both"):
        table(f"new set ({len(NEW_SET)} cases, drawn once)", NEW_SET, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
