"""From a seed to a tumour: region growing within HU limits, for the box proposal and the tumour mask.

Deliberately simple and predictable (a radiologist checks and drags the proposed box): smooth lightly, threshold to
soft tissue, open to cut thin attachments (vessels), keep the component at the seed, take its extent plus a margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .geometry import Box, index_region_of_box, index_to_physical_matrix

DEFAULTS = {"hu_range": [-500.0, 500.0], "max_half_size_mm": 40.0, "margin_mm": 3.0, "opening_mm": 1.5}


@dataclass
class Grown:
    mask: sitk.Image           # uint8 sub-image of the CT grid (region lo..hi)
    lo: np.ndarray             # index offset of the sub-image in the CT (x, y, z)
    found: bool                # a component was found at the seed
    touches_limit: bool        # the component reaches the search limit (it leaked into neighbours)


def _radius_vox(spacing: Sequence[float], mm: float) -> List[int]:
    return [int(round(mm / s)) for s in spacing]


def grow_from_seed(ct: sitk.Image, seed_lps: Sequence[float], region: Box, params: Optional[Dict] = None) -> Grown:
    p = {**DEFAULTS, **(params or {})}
    lo, hi = index_region_of_box(ct, region, pad=0)
    full = np.array(ct.GetSize())
    # at least 5 voxels per axis where the scan allows (the smoothing filter needs 4)
    short = (hi - lo) < 5
    lo = np.where(short, np.clip((lo + hi) // 2 - 2, 0, np.maximum(full - 5, 0)), lo)
    hi = np.where(short, np.minimum(lo + 5, full), hi)
    size = [int(h - l) for l, h in zip(lo, hi)]
    sub = sitk.RegionOfInterest(ct, size, [int(v) for v in lo])
    sub = sitk.Cast(sub, sitk.sitkFloat32)
    sigma = min(ct.GetSpacing()) * 0.75
    if min(size) >= 4:
        sub = sitk.SmoothingRecursiveGaussian(sub, [sigma] * 3)
    lo_hu, hi_hu = (float(v) for v in p["hu_range"])
    binary = sitk.BinaryThreshold(sub, lo_hu, hi_hu, 1, 0)
    r = _radius_vox(ct.GetSpacing(), float(p["opening_mm"]))
    if any(r):
        binary = sitk.BinaryMorphologicalOpening(binary, r, sitk.sitkBall)
    arr = sitk.GetArrayViewFromImage(binary)
    ci = np.array(sub.TransformPhysicalPointToContinuousIndex(tuple(map(float, seed_lps))))
    seed_idx = np.clip(np.round(ci).astype(int), 0, np.array(size) - 1)
    empty = sitk.Image(sub.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(sub)
    if not arr.any():
        return Grown(empty, lo, False, False)
    if not arr[seed_idx[2], seed_idx[1], seed_idx[0]]:
        # the seed may sit in a part-solid or cavitated centre: take the nearest soft-tissue voxel within 5 mm
        dist = sitk.SignedMaurerDistanceMap(binary, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
        if sitk.GetArrayViewFromImage(dist)[seed_idx[2], seed_idx[1], seed_idx[0]] > 5.0:
            return Grown(empty, lo, False, False)
        zz, yy, xx = np.nonzero(arr)
        m, _ = index_to_physical_matrix(sub)
        d = (m @ (np.stack([xx, yy, zz]) - seed_idx[:, None]).astype(float))
        k = int(np.argmin((d ** 2).sum(0)))
        seed_idx = np.array([xx[k], yy[k], zz[k]])
    cc = sitk.ConnectedComponent(binary)
    lab = int(sitk.GetArrayViewFromImage(cc)[seed_idx[2], seed_idx[1], seed_idx[0]])
    comp = sitk.Cast(sitk.Equal(cc, lab), sitk.sitkUInt8)
    carr = sitk.GetArrayViewFromImage(comp)
    # does it reach the search limit (ignoring faces that are the scan's own edge)?
    touches = False
    for axis_np, axis_xyz in ((2, 0), (1, 1), (0, 2)):
        if lo[axis_xyz] > 0 and carr.take(0, axis=axis_np).any():
            touches = True
        if hi[axis_xyz] < full[axis_xyz] and carr.take(-1, axis=axis_np).any():
            touches = True
    return Grown(comp, np.asarray(lo), True, touches)


def mask_extent_lps(mask: sitk.Image) -> Optional[Box]:
    """Physical extent (outer voxel edges) of the non-zero voxels of a mask, axis-aligned in LPS."""
    arr = sitk.GetArrayViewFromImage(mask)
    nz = np.nonzero(arr)
    if nz[0].size == 0:
        return None
    idx = np.stack([nz[2], nz[1], nz[0]]).astype(float)
    m, o = index_to_physical_matrix(mask)
    lo_i, hi_i = idx.min(1), idx.max(1)
    corners = np.array([[x, y, z] for x in (lo_i[0], hi_i[0]) for y in (lo_i[1], hi_i[1]) for z in (lo_i[2], hi_i[2])])
    pts = (m @ corners.T).T + o
    half = np.abs(m) @ np.full(3, 0.5)
    return Box(tuple(map(float, pts.min(0) - half)), tuple(map(float, pts.max(0) + half)))


def propose_box(ct: sitk.Image, seed_lps: Sequence[float], params: Optional[Dict] = None
                ) -> Tuple[Box, List[str]]:
    """Propose a box around the tumour at the seed. Returns (box in LPS, warnings)."""
    p = {**DEFAULTS, **(params or {})}
    half = float(p["max_half_size_mm"])
    limit = Box.from_center_size(seed_lps, [2 * half] * 3)
    g = grow_from_seed(ct, seed_lps, limit, p)
    warnings: List[str] = []
    ext = mask_extent_lps(g.mask) if g.found else None
    if ext is None:
        warnings.append("No soft-tissue lesion was found at the seed; proposed a 30 mm box around the seed. "
                        "Check the seed and adjust the box.")
        return Box.from_center_size(seed_lps, [30.0] * 3), warnings
    margin = float(p["margin_mm"])
    box = Box(tuple(np.asarray(ext.min) - margin), tuple(np.asarray(ext.max) + margin))
    if g.touches_limit:
        warnings.append(f"The lesion at the seed merges with neighbouring structures within {half:g} mm; the proposed "
                        "box was clipped to the search limit. Check it and adjust it to the tumour.")
        lo = np.maximum(box.min, limit.min)
        hi = np.minimum(box.max, limit.max)
        box = Box(tuple(map(float, lo)), tuple(map(float, hi)))
    return box, warnings
