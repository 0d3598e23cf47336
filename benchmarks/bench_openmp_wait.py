"""How OpenMP's waiting threads change the model's speed, idle and beside busy programs (not a test; prints medians).

The engine's two model passes for one case (the map's pass on 2 crops, then 7 shifted crops; ``Scorer.run`` with 8
shifts on a 64^3 crop) in a fresh Python per setting, since libgomp reads its settings once at start: libgomp's
default (spin 300,000 times, then sleep), ``GOMP_SPINCOUNT`` 10,000 and 100,000 (what the engine worker gets,
``runner.OPENMP_SPIN_COUNT``), and ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once). ``--busy N`` runs N busy loops
meanwhile, as other programs on a shared workstation would.

    python benchmarks/bench_openmp_wait.py [--rounds 2] [--busy 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = f"""
import sys, time, json
sys.path[:0] = [{str(REPO / 'TMBRBModule')!r}, {str(REPO)!r}]
import numpy as np
from TMBRBLib.bundle import load_bundle
from TMBRBLib.pipeline import Scorer
sc = Scorer(load_bundle(), "cpu")
base = np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32)
shifted = [base.copy() for _ in range(8)]
sc.run(base, shifted, sc.device)
times = []
for _ in range(5):
    t = time.perf_counter()
    sc.run(base, shifted, sc.device)
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""

SETTINGS = {"libgomp default": {}, "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
            "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="processes per setting, 5 timed runs each (default 2)")
    ap.add_argument("--busy", type=int, default=0, help="busy loops running meanwhile (default 0)")
    args = ap.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    times = {name: [] for name in SETTINGS}
    try:
        base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
        for _ in range(args.rounds):
            for name, extra in SETTINGS.items():
                out = subprocess.run([sys.executable, "-c", CHILD], env={**base, **extra}, capture_output=True,
                                     text=True, check=True).stdout.strip().splitlines()[-1]
                times[name] += json.loads(out)
    finally:
        for p in busy:
            p.kill()
    print(f"{os.cpu_count()} CPUs, {args.busy} busy loops, load {os.getloadavg()[0]:.1f}; the model's two passes "
          f"for one case (8 shifts), median of {5 * args.rounds}:")
    for name, ts in times.items():
        print(f"  {name:<26}{statistics.median(ts):6.3f} s   (min {min(ts):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
