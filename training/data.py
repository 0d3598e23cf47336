"""Crops for training, made by the core library (TMBRBLib.crop) so that training and inference cannot drift.

Per case we cache, once, a crop LARGER than the model's field of view: the model grid of the case's box
(TMBRBLib.crop.crop_grid with the bundle's preprocessing policy) grown by `margin_vox` voxels on every side,
same spacing, resampled and normalised by TMBRBLib.crop.resample_to_grid / normalise. A box shifted by a whole
number of voxels k has exactly the sub-grid at offset margin+k of that larger grid, so the paper's bounding-box
shift augmentation (and flips) is done in memory by slicing: epochs after the first read no CT and resample nothing.
The cache lives in memory and (optionally) on disk as .npy files keyed by the CT file, box, policy and margin.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from TMBRBLib.crop import CropGrid, crop_for_model, crop_grid, normalise, resample_to_grid
from TMBRBLib.io import read_ct

from .manifest import Case


def enlarged_grid(grid: CropGrid, margin_vox: int) -> CropGrid:
    """The same grid grown by margin_vox voxels on each side (same spacing, same voxel positions inside)."""
    m = int(margin_vox)
    origin = tuple(float(o - m * s) for o, s in zip(grid.origin, grid.spacing))
    size = tuple(int(n + 2 * m) for n in grid.size_xyz)
    return CropGrid(origin, tuple(grid.spacing), size)


def shift_amplitude_vox(case: Case, grid: CropGrid, margin_vox: int, shift_fraction: float,
                        max_shift_mm: float) -> np.ndarray:
    """Largest shift (voxels, per axis x,y,z) for a box: min(fraction*box size, cap) in mm, within the margin."""
    amp_mm = np.minimum(np.asarray(case.box.size) * float(shift_fraction), float(max_shift_mm))
    return np.minimum(np.floor(amp_mm / np.asarray(grid.spacing)).astype(int), int(margin_vox))


class CropCache:
    """Enlarged normalised crops per case, computed once through TMBRBLib.crop; memory + optional disk."""

    def __init__(self, policy: Dict, margin_vox: int = 8, cache_dir: Optional[Path] = None, memory: bool = True):
        self.policy = dict(policy)
        self.margin = int(margin_vox)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.memory = memory
        self._mem: Dict[str, np.ndarray] = {}
        self.ct_reads = 0  # how many times a CT was read (to show that cached epochs read none)
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def key(self, case: Case) -> str:
        st = os.stat(case.ct) if case.ct.is_file() else None
        ident = {"ct": str(Path(case.ct).resolve()), "mtime": st.st_mtime_ns if st else None,
                 "size": st.st_size if st else None, "box": [case.box.min, case.box.max],
                 "policy": self.policy, "margin": self.margin, "v": 1}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def compute(self, case: Case) -> np.ndarray:
        ct, _ = read_ct(case.ct)
        self.ct_reads += 1
        big = enlarged_grid(crop_grid(case.box, self.policy), self.margin)
        img = resample_to_grid(ct, big, self.policy.get("pad_hu", -1000.0), self.policy.get("interpolation", "linear"))
        import SimpleITK as sitk
        return np.ascontiguousarray(normalise(sitk.GetArrayViewFromImage(img), self.policy))

    def get(self, case: Case) -> np.ndarray:
        k = self.key(case)
        if k in self._mem:
            return self._mem[k]
        arr = None
        f = self.cache_dir / f"{k}.npy" if self.cache_dir else None
        if f is not None and f.is_file():
            try:
                arr = np.load(f)
            except (OSError, ValueError):
                arr = None  # a damaged cache file is recomputed
        if arr is None:
            arr = self.compute(case)
            if f is not None:
                tmp = f.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, arr)
                os.replace(tmp, f)
        if self.memory:
            self._mem[k] = arr
        return arr


class CropDataset(torch.utils.data.Dataset):
    """Model inputs for a list of cases.

    train=True: random box shift (whole voxels, up to min(shift_fraction*box size, max_shift_mm) and the margin)
    and random flips along each axis; the randomness of sample i in epoch e comes from (seed, e, i) only, so a run
    is reproducible, resumable and independent of process count. train=False: the box itself, as inference does.
    cache=None computes each sample from the CT with TMBRBLib.crop.crop_for_model on the shifted box (no cache;
    for timing and checks).
    """

    def __init__(self, cases: Sequence[Case], policy: Dict, cache: Optional[CropCache], train: bool, seed: int = 0,
                 margin_vox: int = 8, shift_fraction: float = 0.15, max_shift_mm: float = 6.0, flips: bool = True):
        self.cases = list(cases)
        self.policy = dict(policy)
        self.cache = cache
        self.train = train
        self.seed = int(seed)
        self.margin = int(cache.margin if cache is not None else margin_vox)
        self.shift_fraction = float(shift_fraction)
        self.max_shift_mm = float(max_shift_mm)
        self.flips = bool(flips)
        self.epoch = 0
        self.shape = tuple(int(v) for v in policy["shape"])  # z, y, x

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.cases)

    def labels(self) -> np.ndarray:
        return np.array([c.label for c in self.cases], dtype=np.int64)

    def augmentation(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """(shift in voxels x,y,z; flip flags z,y,x) for sample i in the current epoch."""
        if not self.train:
            return np.zeros(3, int), np.zeros(3, bool)
        case = self.cases[i]
        grid = crop_grid(case.box, self.policy)
        amp = shift_amplitude_vox(case, grid, self.margin, self.shift_fraction, self.max_shift_mm)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        shift = np.array([rng.integers(-a, a + 1) for a in amp], int)
        flip = rng.random(3) < 0.5 if self.flips else np.zeros(3, bool)
        return shift, flip

    def array(self, i: int) -> np.ndarray:
        case = self.cases[i]
        shift, flip = self.augmentation(i)
        if self.cache is not None:
            big = self.cache.get(case)
            m = self.margin
            sz, sy, sx = m + shift[2], m + shift[1], m + shift[0]
            nz, ny, nx = self.shape
            arr = big[sz:sz + nz, sy:sy + ny, sx:sx + nx]
        else:
            grid = crop_grid(case.box, self.policy)
            arr = crop_for_model(read_ct(case.ct)[0], case.box.shifted(shift * np.asarray(grid.spacing)), self.policy)[0]
        axes = tuple(a for a in range(3) if flip[a])
        if axes:
            arr = np.flip(arr, axes)
        return np.ascontiguousarray(arr, dtype=np.float32)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.array(i))[None], int(self.cases[i].label)

    def batch(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self[i] for i in indices))
        return torch.stack(xs), torch.tensor(ys, dtype=torch.long)
