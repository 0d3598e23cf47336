"""Tiny synthetic cohorts for the training tests: small CTs (a few ms each) whose label is visible in the CT.

High-TMB cases carry a bright shell around the tumour (a crude peritumoral signal); tumour size and position are
drawn independently of the label. A tiny network and a 32^3 input keep every training run to seconds on a CPU.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

TINY_ARCH = '{"block_config": [1, 1, 1, 1], "init_features": 4, "growth_rate": 4, "hidden_features": 8}'
TINY_PRE = '{"shape": [32, 32, 32], "min_fov_mm": 30.0}'


def write_tiny_cohort(out: Path, n: int = 10, seed: int = 0, splits=None, shell_hu: float = 300.0) -> Path:
    """A tiny cohort; High-TMB cases get a ``shell_hu`` brighter shell (0: a control cohort, no signal)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    labels = np.array([i % 2 for i in range(n)])
    if splits is None:
        splits = ["train"] * (n - 4) + ["val"] * 4
    for i in range(n):
        shape = (36, 40, 40)  # z, y, x
        spacing = (1.2, 1.1, 1.5)  # x, y, z (anisotropic on purpose)
        origin = np.array([-20.0, 30.0, -100.0]) + rng.normal(0, 3, 3)
        arr = rng.normal(-850, 20, shape).astype(np.float32)
        zz, yy, xx = np.indices(shape)
        pts = np.stack([origin[0] + xx * spacing[0], origin[1] + yy * spacing[1], origin[2] + zz * spacing[2]], -1)
        centre = origin + np.array([40 * 1.2, 40 * 1.1, 36 * 1.5]) / 2 + rng.normal(0, 3, 3)
        r = rng.uniform(5, 8)
        d = np.linalg.norm(pts - centre, axis=-1)
        arr[d <= r] = 40 + rng.normal(0, 10, int((d <= r).sum()))
        if labels[i]:
            shell = (d > r) & (d <= r + 4)
            arr[shell] += shell_hu
        img = sitk.GetImageFromArray(arr.astype(np.int16))
        img.SetSpacing(spacing)
        img.SetOrigin(tuple(origin))
        sitk.WriteImage(img, str(out / f"c{i}.nrrd"))
        tum = sitk.GetImageFromArray((d <= r).astype(np.uint8))
        tum.CopyInformation(img)
        sitk.WriteImage(tum, str(out / f"c{i}_tumour.nrrd"))
        sig = sitk.GetImageFromArray(((d > r) & (d <= r + 4)).astype(np.uint8))
        sig.CopyInformation(img)
        sitk.WriteImage(sig, str(out / f"c{i}_signal.nrrd"))
        lo, hi = centre - r - 2, centre + r + 2
        rows.append({"case": f"c{i}", "ct": f"c{i}.nrrd", "seed": ",".join(map(str, centre)),
                     "box": ",".join(map(str, list(lo) + list(hi))), "tmb": 15.0 if labels[i] else 4.0,
                     "split": splits[i], "tumour": f"c{i}_tumour.nrrd", "signal": f"c{i}_signal.nrrd"})
    path = out / "manifest.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("tiny_cohort"), n=10,
                             splits=["train"] * 6 + ["val"] * 2 + ["test"] * 2)


def train_args(manifest, out, *extra):
    return ["train", "--manifest", str(manifest), "--out", str(out), "--batch-size", "3", "--threads", "1",
            "--no-progress", "--architecture", TINY_ARCH, "--preprocessing", TINY_PRE, "--margin-vox", "3", *extra]
