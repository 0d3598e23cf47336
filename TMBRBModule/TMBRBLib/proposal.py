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

DEFAULTS = {"hu_range": [-400.0, 500.0], "max_half_size_mm": 40.0, "margin_mm": 3.0, "opening_mm": [3.0, 1.5, 0.0]}


@dataclass
class Grown:
    mask: sitk.Image           # uint8 sub-image of the CT grid (region lo..hi)
    lo: np.ndarray             # index offset of the sub-image in the CT (x, y, z)
    found: bool                # a component was found at the seed
    touches_limit: bool        # the component reaches the search limit (it leaked into neighbours)


def _radius_vox(spacing: Sequence[float], mm: float) -> List[int]:
    return [int(round(mm / s)) for s in spacing]


def _component_at(binary: sitk.Image, seed_idx: np.ndarray, sub: sitk.Image, reach_mm: float = 5.0
                  ) -> Optional[sitk.Image]:
    """The connected component at the seed, or at the nearest foreground voxel within reach_mm; None if none."""
    arr = sitk.GetArrayViewFromImage(binary)
    if not arr.any():
        return None
    x, y, z = (int(v) for v in seed_idx)
    if not arr[z, y, x]:
        # the seed may sit in a part-solid or cavitated centre: take the nearest soft-tissue voxel within reach
        sp = np.array(sub.GetSpacing())
        w = np.ceil(reach_mm / sp).astype(int)
        lo = np.maximum(seed_idx - w, 0)
        hi = np.minimum(seed_idx + w + 1, np.array(sub.GetSize()))
        win = arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        zz, yy, xx = np.nonzero(win)
        if xx.size == 0:
            return None
        m, _ = index_to_physical_matrix(sub)
        d = m @ (np.stack([xx + lo[0], yy + lo[1], zz + lo[2]]) - seed_idx[:, None]).astype(float)
        dist = np.sqrt((d ** 2).sum(0))
        k = int(np.argmin(dist))
        if dist[k] > reach_mm:
            return None
        x, y, z = int(xx[k] + lo[0]), int(yy[k] + lo[1]), int(zz[k] + lo[2])
    cc = sitk.ConnectedComponent(binary)
    lab = int(sitk.GetArrayViewFromImage(cc)[z, y, x])
    return sitk.Cast(sitk.Equal(cc, lab), sitk.sitkUInt8)


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
    tissue = sitk.BinaryThreshold(sub, lo_hu, hi_hu, 1, 0)
    ci = np.array(sub.TransformPhysicalPointToContinuousIndex(tuple(map(float, seed_lps))))
    seed_idx = np.clip(np.round(ci).astype(int), 0, np.array(size) - 1)
    empty = sitk.Image(sub.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(sub)
    # Open with the largest radius that keeps a lesion at the seed: it cuts the vessels and thin attachments that
    # touch the tumour, while small nodules survive a smaller radius.
    radii = p["opening_mm"] if isinstance(p["opening_mm"], (list, tuple)) else [p["opening_mm"]]
    comp = None
    for mm in sorted((float(v) for v in radii), reverse=True):
        r = _radius_vox(ct.GetSpacing(), mm)
        binary = sitk.BinaryMorphologicalOpening(tissue, r, sitk.sitkBall) if any(r) else tissue
        comp = _component_at(binary, seed_idx, sub)
        if comp is not None:
            if any(r):  # give back the lesion's own edge (within r of the opened core), not the vessels beyond
                comp = sitk.And(sitk.BinaryDilate(comp, r, sitk.sitkBall), sitk.Cast(tissue, sitk.sitkUInt8))
            break
    if comp is None:
        return Grown(empty, lo, False, False)
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
