"""A synthetic cohort from the phantom generator (TMBRBLib.phantom), written as a training manifest.

Each case: ct.nrrd, tumour.nrrd, signal.nrrd (the region that carries the TMB signal) and a manifest row with the
annotator's seed and box in LPS mm, the TMB and a split. Splits are drawn per case from the cohort seed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

MANIFEST_NAME = "manifest.csv"
COLUMNS = ["case", "ct", "seed", "box", "tmb", "label", "split", "tumour", "signal", "diameter_mm", "signal_kind",
           "strength", "phantom_seed"]


def _fmt(v) -> str:
    return ",".join(f"{float(x):.4f}" for x in v)


def _one(args):
    out, i, phantom_seed, split, signal, strength, kwargs = args
    from TMBRBLib.phantom import make_phantom
    kw = dict(kwargs)
    kw["signal"] = signal
    if strength is not None:
        kw["strength"] = strength
    d = Path(out) / f"ph{i:04d}"
    done = d / "row.json"
    if done.is_file():  # resumable: a finished case is read back
        return json.loads(done.read_text())
    for attempt in range(20):  # a drawn anatomy may not fit a drawn tumour: take the next seed, recorded below
        try:
            c = make_phantom(int(phantom_seed) + 7919 * attempt, case_id=f"ph{i:04d}", **kw)
            phantom_seed = int(phantom_seed) + 7919 * attempt
            break
        except (RuntimeError, ValueError):
            if attempt == 19:
                raise
    d.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(c.ct, str(d / "ct.nrrd"), True)
    sitk.WriteImage(c.tumour, str(d / "tumour.nrrd"), True)
    sitk.WriteImage(c.signal, str(d / "signal.nrrd"), True)
    box = list(c.box_lps[0]) + list(c.box_lps[1])
    row = {"case": c.case_id, "ct": f"{c.case_id}/ct.nrrd", "seed": _fmt(c.seed_lps), "box": _fmt(box),
            "tmb": f"{c.tmb:.3f}", "label": int(c.high_tmb), "split": split, "tumour": f"{c.case_id}/tumour.nrrd",
            "signal": f"{c.case_id}/signal.nrrd" if signal != "none" else "",
            "diameter_mm": f"{c.params.get('diameter_mm', float('nan')):.2f}", "signal_kind": signal,
            "strength": c.params.get("strength", strength), "phantom_seed": int(phantom_seed)}
    done.write_text(json.dumps(row))
    return row


def assign_splits(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list:
    """Random train/val/test split, stratified by label (each split keeps the cohort's High-TMB share)."""
    f = np.asarray(fractions, float) / float(np.sum(fractions))
    labels = np.asarray(labels, int)
    out = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng([seed, 99])
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        counts = np.floor(f * len(idx)).astype(int)
        counts[0] += len(idx) - counts.sum()
        out[idx] = ["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2]
    return [str(v) for v in out]


def write_phantom_cohort(out_dir, n: int = 300, signal: str = "peritumoral", strength: Optional[float] = None,
                         seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2), workers: int = 1,
                         **phantom_kwargs) -> Path:
    """Write n phantoms and their manifest; returns the manifest path. Phantom i uses seed 100000*seed + i."""
    from TMBRBLib.errors import TMBRBInputError
    if n < 4:
        raise TMBRBInputError(f"A cohort of {n} cases is too small.", "Give --n 4 or more.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), i, 100000 * seed + i, "", signal, strength, phantom_kwargs) for i in range(n)]
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_one, jobs, chunksize=4)
    else:
        rows = [_one(j) for j in jobs]
    for row, split in zip(rows, assign_splits([int(r["label"]) for r in rows], fractions, seed)):
        row["split"] = split
    path = out / MANIFEST_NAME
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path
