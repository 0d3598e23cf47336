"""Crop first, in physical space: resample only the region the model needs onto the model's grid.

The crop grid is a cube, axis-aligned in LPS, centred on the box centre, with isotropic spacing; its size and HU window
come from the bundle's `preprocessing` metadata. Outside the scan it is padded with air.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

from .geometry import Box

# Test-time augmentation (a bundle's ``tta`` section): how many shifted boxes are scored besides the box itself,
# by up to ``shift_fraction`` of the box size per axis, capped at ``max_shift_mm``, drawn from ``seed``.
# The defaults for new bundles and for a bundle that leaves a key out; this module stays free of torch, so code that
# must not import torch may import these.
DEFAULT_N_SHIFTS = 8
DEFAULT_TTA = {"n_shifts": DEFAULT_N_SHIFTS, "shift_fraction": 0.1, "max_shift_mm": 5.0, "seed": 0}
MAX_SHIFTS = 26  # the most shifts the interactive front ends offer (Slicer's panel, the browser viewer)


@dataclass(frozen=True)
class CropGrid:
    """A model input grid: origin is the centre of voxel (0, 0, 0); direction is identity (LPS axes)."""

    origin: Tuple[float, float, float]
    spacing: Tuple[float, float, float]
    size_xyz: Tuple[int, int, int]

    @property
    def center(self) -> Tuple[float, float, float]:
        o, s, n = map(np.asarray, (self.origin, self.spacing, self.size_xyz))
        return tuple(map(float, o + s * (n - 1) / 2))

    @property
    def box(self) -> Box:
        o, s, n = map(np.asarray, (self.origin, self.spacing, self.size_xyz))
        return Box(tuple(map(float, o - s / 2)), tuple(map(float, o + s * (n - 0.5))))

    def reference_image(self) -> sitk.Image:
        img = sitk.Image([int(v) for v in self.size_xyz], sitk.sitkUInt8)
        img.SetOrigin(self.origin)
        img.SetSpacing(self.spacing)
        return img

    def to_dict(self) -> dict:
        return {"origin_lps": list(self.origin), "spacing_mm": list(self.spacing), "size_xyz": list(self.size_xyz),
                "center_lps": list(self.center), "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}


def field_of_view_mm(box: Box, policy: Dict) -> float:
    mode = policy.get("mode", "box_margin")
    if mode == "fixed_fov":
        return float(policy["fov_mm"])
    if mode == "box_margin":
        fov = max(box.size) + 2 * float(policy.get("margin_mm", 0.0))
        return float(np.clip(fov, float(policy.get("min_fov_mm", 0.0)), float(policy.get("max_fov_mm", 1e9))))
    raise ValueError(f"unknown crop mode {mode!r} in the bundle's preprocessing metadata")


def crop_grid(box: Box, policy: Dict, center=None) -> CropGrid:
    """The model grid for a box: a cube of side field_of_view_mm(box) around the box centre (or `center`)."""
    shape_zyx = [int(v) for v in policy["shape"]]
    size_xyz = tuple(shape_zyx[::-1])
    fov = field_of_view_mm(box, policy)
    spacing = np.full(3, fov) / np.array(size_xyz, float)
    c = np.asarray(box.center if center is None else center, float)
    origin = c - spacing * (np.array(size_xyz) - 1) / 2
    return CropGrid(tuple(map(float, origin)), tuple(map(float, spacing)), tuple(int(v) for v in size_xyz))


def resample_to_grid(ct: sitk.Image, grid: CropGrid, pad_hu: float = -1000.0, interpolation: str = "linear"
                     ) -> sitk.Image:
    """Resample the CT onto the crop grid only (never the whole CT). Float32 HU, air outside the scan."""
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
              "bspline": sitk.sitkBSpline}[interpolation]
    return sitk.Resample(ct, [int(v) for v in grid.size_xyz], sitk.Transform(), interp, grid.origin, grid.spacing,
                         (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), float(pad_hu), sitk.sitkFloat32)


def normalise(hu: np.ndarray, policy: Dict) -> np.ndarray:
    lo, hi = (float(v) for v in policy["hu_window"])
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def crop_for_model(ct: sitk.Image, box: Box, policy: Dict, center=None) -> Tuple[np.ndarray, sitk.Image, CropGrid]:
    """(normalised array z,y,x float32, the crop in HU as an image, its grid)."""
    grid = crop_grid(box, policy, center)
    img = resample_to_grid(ct, grid, policy.get("pad_hu", -1000.0), policy.get("interpolation", "linear"))
    arr = normalise(sitk.GetArrayViewFromImage(img), policy)
    return arr, img, grid


def n_shifts_of(tta: Dict, n_shifts=None) -> int:
    """The number of test-time shifts: ``n_shifts`` when given, else the ``tta`` section's, else DEFAULT_N_SHIFTS."""
    return int(tta.get("n_shifts", DEFAULT_N_SHIFTS) if n_shifts is None else n_shifts)


def shift_offsets(box: Box, tta: Dict, n: int) -> List[np.ndarray]:
    """Deterministic box shifts for test-time augmentation (the paper's bounding-box shifts), in mm."""
    if n <= 0:
        return []
    rng = np.random.default_rng(int(tta.get("seed", DEFAULT_TTA["seed"])))
    frac = float(tta.get("shift_fraction", DEFAULT_TTA["shift_fraction"]))
    cap = float(tta.get("max_shift_mm", DEFAULT_TTA["max_shift_mm"]))
    amp = np.minimum(np.asarray(box.size) * frac, cap)
    return [rng.uniform(-1, 1, 3) * amp for _ in range(n)]


def fraction_outside_scan(ct: sitk.Image, grid: CropGrid) -> float:
    """Share of the crop grid's voxel centres that fall outside the scan (sampled on a coarse lattice)."""
    from .geometry import physical_points_to_index
    ax = [np.linspace(o, o + s * (n - 1), 9) for o, s, n in zip(grid.origin, grid.spacing, grid.size_xyz)]
    pts = np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)
    idx = physical_points_to_index(ct, pts)
    inside = np.all((idx >= -0.5) & (idx <= np.array(ct.GetSize()) - 0.5), axis=1)
    return float(1 - inside.mean())


