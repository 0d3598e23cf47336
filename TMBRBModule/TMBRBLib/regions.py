"""Tumour and peritumoral ring, and how the class activation map's mass splits between them."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .geometry import Box, index_region_of_box, index_to_physical_matrix
from .io import sub_image_info
from .proposal import grow_from_seed


def segment_tumour(ct: sitk.Image, seed_lps: Sequence[float], box: Box, params: Optional[Dict] = None
                   ) -> Tuple[sitk.Image, np.ndarray, List[str]]:
    """Tumour mask inside the box, grown from the seed. Returns (uint8 sub-image, its index offset, warnings)."""
    hu = (params or {}).get("tumour_hu_range")
    g = grow_from_seed(ct, seed_lps, box, {"hu_range": hu} if hu else None)
    warnings: List[str] = []
    if not g.found:
        # fall back to a 5 mm sphere at the seed so the ring and shares stay defined; say so
        warnings.append("No soft-tissue lesion was found at the seed inside the box; the tumour region is a 5 mm "
                        "sphere at the seed. Give a segmentation (--segmentation) for meaningful attention shares.")
        ref = g.mask
        shape = sitk.GetArrayViewFromImage(ref).shape
        zz, yy, xx = np.indices(shape)
        m, o = index_to_physical_matrix(ref)
        pts = np.stack([xx, yy, zz], -1).reshape(-1, 3) @ m.T + o
        arr = (np.linalg.norm(pts - np.asarray(seed_lps), axis=1) <= 5.0).reshape(shape).astype(np.uint8)
        mask = sitk.GetImageFromArray(arr)
        mask.CopyInformation(ref)
        return mask, g.lo, warnings
    return g.mask, g.lo, warnings


def ring_from_tumour(tumour_sub: sitk.Image, width_mm: float) -> sitk.Image:
    """Voxels outside the tumour within width_mm of it (physical distance), on the same grid."""
    dist = sitk.SignedMaurerDistanceMap(tumour_sub, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True, backgroundValue=0)
    d = sitk.GetArrayViewFromImage(dist)
    t = sitk.GetArrayViewFromImage(tumour_sub) > 0
    ring = ((d > 0) & (d <= width_mm) & ~t).astype(np.uint8)
    out = sitk.GetImageFromArray(ring)
    out.CopyInformation(tumour_sub)
    return out


def region_of_interest(ct: sitk.Image, box: Box) -> Tuple[np.ndarray, np.ndarray, sitk.Image]:
    """Index region [lo, hi) of the CT covering a box, and an empty image with that region's geometry."""
    lo, hi = index_region_of_box(ct, box, pad=1)
    return lo, hi, sub_image_info(ct, lo, hi)


def attention_shares(cam: np.ndarray, tumour: np.ndarray, ring: np.ndarray) -> Dict[str, float]:
    """Share of the CAM's mass (sum of values; voxels on one grid have equal volume) in tumour, ring, elsewhere."""
    total = float(cam.sum(dtype=np.float64))
    if total <= 0:
        return {"tumour": 0.0, "ring": 0.0, "elsewhere": 0.0, "total_mass": 0.0}
    t = float(cam[tumour > 0].sum(dtype=np.float64)) / total
    r = float(cam[(ring > 0) & ~(tumour > 0)].sum(dtype=np.float64)) / total
    return {"tumour": t, "ring": r, "elsewhere": max(0.0, 1.0 - t - r), "total_mass": total}
