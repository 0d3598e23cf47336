"""Tumour and peritumoral ring, and how the class activation map's mass splits between them."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .geometry import Box, index_region_of_box
from .io import sub_image_info
from .proposal import segment_from_seed


def segment_tumour(ct: sitk.Image, seed_lps: Sequence[float], box: Box, params: Optional[Dict] = None,
                   proposal: Optional[Dict] = None) -> Tuple[sitk.Image, np.ndarray, List[str]]:
    """Tumour mask inside the box, from the seed (``proposal.segment_from_seed`` bounded by the box).

    Parameters
    ----------
    ct, seed_lps
        The CT (HU) and the seed on the tumour (LPS mm).
    box : Box
        The box the tumour is looked for in.
    params : dict, optional
        The bundle's ``regions`` settings (not used by the segmentation).
    proposal : dict, optional
        The bundle's ``proposal`` settings (HU range, opening, rim).

    Returns
    -------
    (SimpleITK.Image, numpy.ndarray, list of str)
        The uint8 mask (a sub-image of the CT grid), its index offset (x, y, z) and the warnings (no lesion at the
        seed: a 5 mm sphere instead; or the mask needs review).
    """
    seg = segment_from_seed(ct, seed_lps, box, proposal, params)
    return seg.mask, seg.lo, seg.warnings


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


def ring_and_shares(cam: np.ndarray, tumour_sub: sitk.Image, width_mm: float) -> Tuple[sitk.Image, Dict[str, float]]:
    """The ring around a tumour and the CAM's shares in them: what the pipeline and an attention update both use.

    Parameters
    ----------
    cam : numpy.ndarray
        The class activation map (z, y, x) on the grid of ``tumour_sub``.
    tumour_sub : SimpleITK.Image
        The uint8 tumour mask (any non-zero voxel is tumour).
    width_mm : float
        The ring's width (physical distance from the tumour).

    Returns
    -------
    (SimpleITK.Image, dict)
        The ring (``ring_from_tumour``) and the shares (``attention_shares``) with ``ring_width_mm`` added.
    """
    ring_sub = ring_from_tumour(tumour_sub, width_mm)
    shares = attention_shares(cam, sitk.GetArrayViewFromImage(tumour_sub), sitk.GetArrayViewFromImage(ring_sub))
    shares["ring_width_mm"] = float(width_mm)
    return ring_sub, shares


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
