"""Small synthetic CTs for geometry tests: lung-like background, a soft-tissue sphere at a known LPS position."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def rotation(deg_z: float = 0.0, deg_x: float = 0.0) -> np.ndarray:
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, -1.0, 1.0]),
    "z_flipped": np.diag([1.0, 1.0, -1.0]),
    "oblique": rotation(17.0, 11.0),
}


def make_ct(direction=np.eye(3), spacing=(0.8, 0.8, 1.0), size=(96, 96, 64), center_lps=(10.0, -20.0, 30.0),
            tumour_lps=None, radius_mm=8.0, tumour_hu=40.0, background_hu=-850.0, noise=0.0, seed=0,
            dtype=np.int16):
    """A CT whose volume is centred at center_lps; a sphere of tumour_hu at tumour_lps. Returns (ct, mask)."""
    direction = np.asarray(direction, float)
    spacing = np.asarray(spacing, float)
    size = np.asarray(size)
    m = direction @ np.diag(spacing)
    origin = np.asarray(center_lps, float) - m @ ((size - 1) / 2)
    tumour_lps = np.asarray(center_lps if tumour_lps is None else tumour_lps, float)
    zz, yy, xx = np.indices(size[::-1])
    idx = np.stack([xx, yy, zz], -1).reshape(-1, 3).astype(float)
    pts = idx @ m.T + origin
    inside = (np.linalg.norm(pts - tumour_lps, axis=1) <= radius_mm).reshape(size[::-1])
    arr = np.full(size[::-1], background_hu, np.float32)
    arr[inside] = tumour_hu
    if noise:
        arr += np.random.default_rng(seed).normal(0, noise, arr.shape).astype(np.float32)
    ct = sitk.GetImageFromArray(arr.astype(dtype))
    ct.SetSpacing(spacing.tolist())
    ct.SetOrigin(origin.tolist())
    ct.SetDirection(direction.ravel().tolist())
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(ct)
    return ct, mask
