"""Voxel grid <-> physical (LPS mm) mapping used by the phantom renderers.

Everything in the phantom is defined in physical space; a :class:`Grid` only says where the
voxels sit. Arrays are in SimpleITK/numpy order ``[k, j, i]`` (z, y, x index), the same as
``SimpleITK.GetArrayFromImage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

NAMED_DIRECTIONS = ("identity", "flip_xy", "flip_z", "oblique")


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Right-handed rotation about ``axis`` by ``angle_deg`` (Rodrigues)."""
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


def check_direction(direction) -> np.ndarray:
    """Return a 3x3 orthonormal direction matrix (columns = index axes in LPS) or raise ValueError."""
    try:
        d = np.asarray(direction, dtype=float).reshape(3, 3)
    except (TypeError, ValueError):
        raise ValueError(
            f"direction must be one of {NAMED_DIRECTIONS + ('random',)} or a 3x3 matrix (9 numbers, row-major as "
            f"SimpleITK); got {direction!r}"
        ) from None
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise ValueError(
            "direction matrix must be orthonormal (its columns are unit index axes in LPS); "
            f"got {d.tolist()}. Use e.g. 'identity', 'flip_xy', 'flip_z', 'oblique' or a rotation matrix."
        )
    return d


@dataclass(frozen=True)
class Grid:
    """A 3D voxel grid placed in LPS millimetres exactly as an ITK image."""

    shape_xyz: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: np.ndarray  # 3x3, columns are the i, j, k axes in LPS

    @classmethod
    def centred(cls, centre_lps, shape_xyz, spacing, direction) -> "Grid":
        """Grid whose middle voxel position is ``centre_lps`` (same physical field for any direction)."""
        d = check_direction(direction)
        m = d @ np.diag(np.asarray(spacing, dtype=float))
        half = (np.asarray(shape_xyz, dtype=float) - 1.0) / 2.0
        origin = np.asarray(centre_lps, dtype=float) - m @ half
        return cls(tuple(int(s) for s in shape_xyz), tuple(float(s) for s in spacing), tuple(origin.tolist()), d)

    @cached_property
    def matrix(self) -> np.ndarray:
        """index (i, j, k) -> physical offset: ``p = origin + matrix @ idx``."""
        return self.direction @ np.diag(self.spacing)

    @cached_property
    def _aligned_axis(self):
        """For each physical axis, the one index axis it depends on (None when the grid is oblique)."""
        nz = np.abs(self.matrix) > 1e-12
        if not np.all(nz.sum(axis=1) == 1):
            return None
        return [int(np.flatnonzero(row)[0]) for row in nz]

    @property
    def shape_kji(self) -> Tuple[int, int, int]:
        return self.shape_xyz[::-1]

    @property
    def voxel_half_extent_lps(self) -> np.ndarray:
        """Half the axis-aligned LPS extent of one voxel (for enclosing boxes)."""
        return 0.5 * np.abs(self.matrix).sum(axis=1)

    def index_to_physical(self, idx_xyz) -> np.ndarray:
        idx = np.asarray(idx_xyz, dtype=float)
        return np.asarray(self.origin) + idx @ self.matrix.T

    def physical_to_index(self, p_lps) -> np.ndarray:
        p = np.asarray(p_lps, dtype=float) - np.asarray(self.origin)
        return p @ np.linalg.inv(self.matrix).T

    def coords(self, slices_kji=None, ref=(0.0, 0.0, 0.0), broadcast: bool = False):
        """float32 LPS coordinates (minus ``ref``) of the voxels in ``slices_kji``; three arrays [k, j, i].

        With ``broadcast=True`` and an axis-aligned direction (identity, flips, axis swaps) each coordinate
        comes back with size 1 along the index axes it does not depend on (numpy broadcasting then does
        2D work instead of 3D); otherwise the arrays are full.
        """
        if slices_kji is None:
            slices_kji = tuple(slice(0, n) for n in self.shape_kji)
        k = np.arange(slices_kji[0].start, slices_kji[0].stop, dtype=np.float64)
        j = np.arange(slices_kji[1].start, slices_kji[1].stop, dtype=np.float64)
        i = np.arange(slices_kji[2].start, slices_kji[2].stop, dtype=np.float64)
        m = self.matrix
        o = np.asarray(self.origin) - np.asarray(ref, dtype=float)
        axes = self._aligned_axis if broadcast else None
        out = []
        for a in range(3):
            if axes is not None:
                c = axes[a]
                idx = (i, j, k)[c]
                t = (o[a] + m[a, c] * idx).astype(np.float32)
                out.append(t[None, None, :] if c == 0 else (t[None, :, None] if c == 1 else t[:, None, None]))
                continue
            ti = (o[a] + m[a, 0] * i).astype(np.float32)[None, None, :]
            tj = (m[a, 1] * j).astype(np.float32)[None, :, None]
            tk = (m[a, 2] * k).astype(np.float32)[:, None, None]
            out.append(ti + tj + tk)
        return out

    def slices_for_box(self, lo_lps, hi_lps, pad_vox: int = 1) -> Optional[tuple]:
        """Index slices [k, j, i] covering the LPS box [lo, hi] (clipped to the grid), or None when outside."""
        lo = np.asarray(lo_lps, dtype=float)
        hi = np.asarray(hi_lps, dtype=float)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = self.physical_to_index(corners)
        imin = np.floor(idx.min(axis=0)).astype(int) - pad_vox
        imax = np.ceil(idx.max(axis=0)).astype(int) + pad_vox + 1
        imin = np.maximum(imin, 0)
        imax = np.minimum(imax, np.asarray(self.shape_xyz))
        if np.any(imax <= imin):
            return None
        return tuple(slice(int(imin[a]), int(imax[a])) for a in (2, 1, 0))

    def contains_box(self, lo_lps, hi_lps) -> bool:
        """True when all 8 corners of the LPS box map inside the voxel grid."""
        lo = np.asarray(lo_lps, dtype=float)
        hi = np.asarray(hi_lps, dtype=float)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = self.physical_to_index(corners)
        return bool(np.all(idx >= -0.5) and np.all(idx <= np.asarray(self.shape_xyz) - 0.5))

    def to_image(self, array_kji: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array_kji)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(float(x) for x in self.direction.ravel()))
        return img

    def mask_points_lps(self, mask_kji: np.ndarray, offset_kji=(0, 0, 0)) -> np.ndarray:
        """LPS centres (N, 3) of the true voxels of ``mask_kji`` whose [0,0,0] is at index ``offset_kji``."""
        kji = np.argwhere(mask_kji)
        if kji.size == 0:
            return np.zeros((0, 3))
        ijk = kji[:, ::-1] + np.asarray(offset_kji[::-1])
        return self.index_to_physical(ijk)


def intersect_slices(outer: tuple, inner: tuple):
    """Intersect global slices ``inner`` with the global box ``outer``.

    Returns (local slices into the outer box, local slices into the inner box) or None.
    """
    loc_outer, loc_inner = [], []
    for o, n in zip(outer, inner):
        lo, hi = max(o.start, n.start), min(o.stop, n.stop)
        if hi <= lo:
            return None
        loc_outer.append(slice(lo - o.start, hi - o.start))
        loc_inner.append(slice(lo - n.start, hi - n.start))
    return tuple(loc_outer), tuple(loc_inner)
