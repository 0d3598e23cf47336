"""From a seed to a tumour: the tumour mask and the proposed box that every attention figure rests on.

The lesion at the seed is told apart from the heart, mediastinum, chest wall and vessels by its shape, not by its
density (they share soft-tissue HU). Steps (all SimpleITK): smooth lightly, threshold to soft tissue, take the distance
map of that tissue (at about 1 mm in-plane) and split it with a morphological watershed: each convex blob of tissue
(the lesion, the heart, a rib's muscle) becomes its own basin, cut at the narrowest neck between them. The lesion is the
basin at the seed; an opening scaled to the lesion's own size then cuts vessels and strands that run into it, and a
thin partial-volume rim is given back at the edge. The search region starts as a cube around the seed and grows while
the lesion reaches its faces (those faces move out), up to ``max_search_half_mm``; a box given by the user bounds it
instead.

The result says when the mask is uncertain (it reaches the search limit, is much larger than the lesion visible at the
seed, is hardly in contact with lung, held a thick strand lying along the lesion, is a small solid part with ground
glass around it, or the seed lies in bone or air), so a reader reviews it before trusting the tumour/ring attention
shares.
Measured on the shared real CTs by ``benchmarks/bench_seed_segmentation.py`` and on phantoms with known masks by
``benchmarks/bench_seed_phantoms.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .geometry import Box, index_region_of_box, index_to_physical_matrix

DEFAULTS = {
    "hu_range": [-400.0, 500.0],   # soft tissue (smoothed HU) that the lesion is made of
    "max_half_size_mm": 40.0,      # first search cube: seed +/- this
    "max_search_half_mm": 120.0,   # faces the lesion reaches move out (20 mm steps), up to seed +/- this
    "margin_mm": 3.0,              # proposed box = the mask's extent + this
    "opening_mm": [3.0, 1.5, 0.0],  # bounds of the opening that cuts vessels: 0.18 x the lesion's inscribed radius
    "opening_fraction": 0.18,
    "split_level_mm": 1.0,         # watershed depth (mm of distance) below which two blobs are one
    "split_spacing_mm": 2.0,       # the watershed runs on voxels bin-shrunk up to this size (speed)
    "split_max_voxels": 1.0e6,     # ... and coarser (the finest axis first) while it would have more voxels than this
                                   # (a search widened to 240 mm on 1.1 mm voxels: 4.6 M voxels, 8 s a watershed)
    "edge_mm": 0.5, "edge_hu": -600.0,  # partial-volume rim given back at the lesion's edge: above edge_hu and
    "edge_fraction": 0.25,         # ... above this fraction of the way from the lesion's surroundings to the lesion
    "envelope_skip_contact": 0.9,  # (not when this share of the lesion's surroundings is already lung)
    "envelope_factor": 2.0,        # the lung's envelope: its air closed with a ball of this x the lesion's depth at
    "envelope_min_mm": 6.0,        # the seed (at least this); tissue outside it is chest wall or mediastinum
    "envelope_air_hu": -950.0,     # the envelope's lung is the parenchyma above this: an airway's lumen (and the air
                                   # outside the body) is below it, not lung the tumour can dent
    "runaway_fraction": 0.8,       # thick vessels: the lesion opened with a ball of this x its inscribed radius; what
    "runaway_max_mm": 8.0,         # that removes and runs on farther than ``runaway_reach`` x the inscribed radius
    "runaway_reach": 2.5,          # from the rest is cut (a lobe stays near the lesion; a vessel runs away): flagged
                                   # (measured: a real lobe reaches 2.1 x, the phantoms' vessels 3.5-8.5 x)
    "along_fraction": 0.5,         # a thick vessel along the lesion: the finished mask opened with a ball of this x
    "along_reach": 1.8,            # its inscribed radius; a piece that removes reaching farther than this x the
                                   # radius from the rest is cut: uncertain (measured: right masks up to 1.60
                                   # (phantom), 1.19 (LIDC-0072); a vessel along the lesion 1.91-2.26)
    "cut_vessel_base": True,       # ... and when either cut a thick vessel, the mask is opened with that ball: the
                                   # vessel's base along the lesion goes (the 1.25 mm chest's vessels 0.81 / 0.82 ->
                                   # 0.92 / 0.93; masks with no such cut, the real CTs among them, are not touched)
    "leak_ratio": 3.0,             # mask's equivalent radius / its inscribed radius above this: uncertain
    "thin_ratio": 1.0,             # the largest ball inside the mask narrower than this x the slice thickness:
                                   # uncertain (its shape is not resolved across slices; measured: the real CTs 1.14
                                   # (lung1, 5 mm slices) and up, part-solid phantom 104 on 5 mm slices 0.86, Dice 0.50)
    "min_lung_contact": 0.45,      # share of the mask's surroundings that is lung, below this: uncertain (it lies more
                                   # in the chest wall or mediastinum than in the lung)
    "bone_hu": 200.0,              # smoothed HU at the seed above this: the seed lies in bone or calcium
    "ground_glass_hu": -700.0,     # part-solid lesions: ground glass is above this (lung parenchyma below)
    "ground_glass_share": 0.35,    # share of ground glass around the solid part above this: segment it with it
                                   # (a spiculated solid part has lung around its spicules: 0.38-0.46 measured)
    "ground_glass_max_ratio": 40.0,  # ... unless that makes the mask more than this times the solid part (a solid
                                   # part of 30 % of the diameter is 1/37 of the volume: 20 left out a 57 mm part-solid
                                   # phantom's ground glass, Dice 0.08 -> 0.98)
    "ground_glass_halo_mm": 2.0,   # ... keeping the ground glass that is the lesion's own: below the tissue range and
                                   # within this of solid tissue is the blur around a vessel or the solid part, kept
                                   # only within this + 1 mm of ground glass farther from any (the vessels touching a
                                   # part-solid lesion were taken with their blur: phantom 108 0.79, 102 0.75)
    "small_solid_mm": 4.0,         # a lesion at the seed whose largest inner ball is narrower than this, with at least
    "small_ground_glass": 0.1,     # this share of ground glass in the lung around it, not segmented as part-solid:
                                   # uncertain (it may be the small solid part of a part-solid lesion whose ground
                                   # glass is left out; measured: such a miss 2.2 mm across with 17 % ground glass,
                                   # Dice 0.44; the right solid masks are 4.5 mm across or wider, lung1 5.7 mm, 14 %)
    "solid_predominant": 0.6,      # ... with no box, a solid part of at least this share of the mask's diameter: the
                                   # ground glass may be haze around a solid tumour (the demo: 0.67; part-solid
                                   # phantoms 0.40-0.68): uncertain
}
UNCERTAIN = "Tumour mask uncertain: review it"


@dataclass
class Grown:
    mask: sitk.Image           # uint8 sub-image of the CT grid (region lo..hi)
    lo: np.ndarray             # index offset of the sub-image in the CT (x, y, z)
    found: bool                # a component was found at the seed
    touches_limit: bool        # the component reaches the search limit (faces that are not the scan's edge)
    seed_hu: float = float("nan")        # smoothed HU at the seed
    inscribed_mm: float = 0.0            # radius of the largest ball inside the mask
    equivalent_mm: float = 0.0           # radius of the ball of the mask's volume
    lung_contact: float = float("nan")   # share of a 2 mm shell around the mask that is below the tissue range
    volume_ml: float = 0.0
    faces: Optional[np.ndarray] = None   # [low, high] x (x, y, z): the region's faces the mask reaches
    ground_glass: float = 0.0            # share of the non-tissue shell around the mask that is ground glass
    part_solid: bool = False             # segmented with its ground glass (tissue down to ``ground_glass_hu``)
    ground_glass_unclear: bool = False   # ground glass around it that could not be delimited (left out)
    ground_glass_outside_box: bool = False  # ground glass around it that runs past the user's box (left out)
    runaway_ml: float = 0.0              # volume of thick attachments running away from the lesion, cut
    along_ml: float = 0.0                # volume of thick strands along the lesion (reaching far from it), cut
    solid_ratio: float = float("nan")    # part-solid without a box: the solid part's share of the mask's diameter


@dataclass
class SeedSegmentation:
    """The tumour at the seed: mask (sub-image of the CT grid at ``lo``), the box around it, and how sure it is.

    ``uncertain`` lists the reasons to review the mask (empty when none); ``warnings`` holds the sentences for the
    result; ``info`` is what result.json records under ``tumour_mask``.
    """

    box: Box
    mask: sitk.Image
    lo: np.ndarray
    found: bool
    uncertain: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    info: Dict = field(default_factory=dict)


def _radius_vox(spacing: Sequence[float], mm: float) -> List[int]:
    return [int(round(mm / s)) for s in spacing]


def _nearest_on(arr: np.ndarray, seed_idx: np.ndarray, sub: sitk.Image, reach_mm: float) -> Optional[Tuple[int, ...]]:
    """(x, y, z) of the seed when ``arr`` is set there, else of the nearest set voxel within reach_mm; None if none."""
    x, y, z = (int(v) for v in seed_idx)
    if arr[z, y, x]:
        return x, y, z
    # the seed may sit in a part-solid or cavitated centre: take the nearest soft-tissue voxel within reach
    w = np.ceil(reach_mm / np.array(sub.GetSpacing())).astype(int)
    lo = np.maximum(seed_idx - w, 0)
    hi = np.minimum(seed_idx + w + 1, np.array(sub.GetSize()))
    zz, yy, xx = np.nonzero(arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]])
    if xx.size == 0:
        return None
    m, _ = index_to_physical_matrix(sub)
    d = m @ (np.stack([xx + lo[0], yy + lo[1], zz + lo[2]]) - seed_idx[:, None]).astype(float)
    dist = np.sqrt((d ** 2).sum(0))
    k = int(np.argmin(dist))
    if dist[k] > reach_mm:
        return None
    return int(xx[k] + lo[0]), int(yy[k] + lo[1]), int(zz[k] + lo[2])


def _component_at(binary: sitk.Image, at: Tuple[int, ...]) -> Optional[sitk.Image]:
    """The connected component of ``binary`` that holds voxel ``at`` (x, y, z); None if that voxel is unset."""
    x, y, z = at
    if not sitk.GetArrayViewFromImage(binary)[z, y, x]:
        return None
    cc = sitk.ConnectedComponent(binary)
    return sitk.Cast(sitk.Equal(cc, int(sitk.GetArrayViewFromImage(cc)[z, y, x])), sitk.sitkUInt8)


def _distance(binary: sitk.Image) -> sitk.Image:
    """Signed distance (mm, positive inside the set voxels); the image's border counts as outside (a mask with no
    unset voxel would otherwise get unbounded distances)."""
    padded = sitk.ConstantPad(binary, [1, 1, 1], [1, 1, 1], 0)
    d = sitk.SignedMaurerDistanceMap(padded, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    return sitk.Crop(d, [1, 1, 1], [1, 1, 1])


def _count(mask: sitk.Image) -> int:
    """Number of set voxels of a uint8 mask."""
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))


def _inscribed_mm(mask: sitk.Image, d: Optional[sitk.Image] = None) -> float:
    """Radius (mm) of the largest ball inside the mask; ``d``: the mask's :func:`_distance` when already computed.
    (An array view of a SimpleITK image is valid only while the image lives: ``d`` is held while it is read.)"""
    d = _distance(mask) if d is None else d
    return float(sitk.GetArrayViewFromImage(d).max())


def _basin_at(smoothed: sitk.Image, tissue: sitk.Image, at: Tuple[int, ...], p: Dict) -> sitk.Image:
    """The tissue of the watershed basin (on the tissue's distance map) that holds voxel ``at``.

    The distance map and watershed run on voxels bin-shrunk to at most ``split_spacing_mm``: 4x cheaper on a thin-pixel
    CT; the basin is mapped back to the full grid and cut to the full-resolution tissue.
    """
    lo_hu, hi_hu = (float(v) for v in p["hu_range"])
    spacing = smoothed.GetSpacing()
    shrink = [max(1, int(float(p["split_spacing_mm"]) / s)) for s in spacing]
    size = np.array(smoothed.GetSize())
    while np.prod(np.ceil(size / shrink)) > float(p["split_max_voxels"]):  # a wide search on fine voxels
        finest = int(np.argmin([s * k if n // k > 1 else np.inf for s, k, n in zip(spacing, shrink, size)]))
        shrink[finest] += 1
    small = sitk.BinShrink(smoothed, shrink) if max(shrink) > 1 else smoothed
    basins = sitk.MorphologicalWatershed(-_distance(sitk.BinaryThreshold(small, lo_hu, hi_hu, 1, 0)),
                                         level=float(p["split_level_mm"]), markWatershedLine=False,
                                         fullyConnected=True)
    # the basin's voxel nearest the seed's (as nearest-neighbour resampling maps it); the basin alone is resampled
    x, y, z = basins.TransformPhysicalPointToIndex(smoothed.TransformIndexToPhysicalPoint(tuple(int(v) for v in at)))
    basin = sitk.Cast(sitk.Equal(basins, int(sitk.GetArrayViewFromImage(basins)[z, y, x])), sitk.sitkUInt8)
    basin = sitk.Resample(basin, smoothed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8, True)
    return sitk.And(basin, tissue)


def _within_lung(comp: sitk.Image, smoothed: sitk.Image, at: Tuple[int, ...], p: Dict
                 ) -> Tuple[sitk.Image, Optional[sitk.Image]]:
    """The lesion's part inside the lung's envelope: the lung air around the seed closed with a ball a little larger
    than the lesion's depth at the seed, which fills the dent the lesion makes in the lung but not the chest wall or
    mediastinum behind it (a lesion flat against a thicker structure has no neck for the watershed to cut).

    Returns the mask and, when it is ``comp`` unchanged and its distance map was computed, that map (else None)."""
    x, y, z = at
    air_img = sitk.BinaryThreshold(smoothed, -1e9, float(p["hu_range"][0]) - 1e-3, 1, 0)
    near_img = sitk.BinaryDilate(comp, [max(1, v) for v in _radius_vox(comp.GetSpacing(), 2.0)], sitk.sitkBall)
    air, near = sitk.GetArrayFromImage(air_img), sitk.GetArrayFromImage(near_img) > 0
    shell = near & (sitk.GetArrayViewFromImage(comp) == 0)
    if not shell.any() or air[shell].mean() >= float(p["envelope_skip_contact"]):
        return comp, None  # (nearly) all lung around it: nothing to cut
    d = _distance(comp)
    depth = float(sitk.GetArrayViewFromImage(d)[z, y, x])
    radius = max(float(p["envelope_min_mm"]), float(p["envelope_factor"]) * depth)
    # the lung parenchyma: not an airway's lumen (nor the air outside the body) or the blur at its wall
    lumen = sitk.GetArrayViewFromImage(smoothed) <= float(p["envelope_air_hu"])
    if lumen.any():
        parenchyma = sitk.GetImageFromArray(
            ((air > 0) & ~_dilate_array(lumen, [max(1, v) for v in _radius_vox(comp.GetSpacing(), 2.0)])).view(np.uint8))
        parenchyma.CopyInformation(air_img)
    else:
        parenchyma = air_img
    labels = sitk.ConnectedComponent(parenchyma)
    lab = sitk.GetArrayViewFromImage(labels)
    # the lung air next to the lesion within depth + 4 mm of the seed (a window around it, not the whole crop)
    (a, b), ball = _ball_window(comp, at, max(depth + 4.0, radius))
    window = tuple(slice(lo_, hi_) for lo_, hi_ in zip(a[::-1], b[::-1]))
    ids = np.unique(lab[window][near[window] & ball])
    ids = ids[ids > 0]
    if ids.size == 0:
        return comp, d
    lung = sitk.GetImageFromArray(np.isin(lab, ids).astype(np.uint8))
    lung.CopyInformation(comp)
    # closing by a ball of this radius, with two distance maps (exact, at a cost that does not grow with the radius):
    # the tissue farther than the radius from the lung air, grown back by the radius, is what the ball cannot enter
    far = sitk.Greater(_distance(sitk.Not(lung)), radius)
    if not sitk.GetArrayViewFromImage(far).any():
        return comp, d  # the ball reaches everywhere: the envelope is the whole crop
    cut = sitk.And(comp, sitk.Not(sitk.LessEqual(-_distance(far), radius)))
    if _count(cut) == _count(comp):
        return comp, d
    inside = _component_at(cut, at)
    return (comp, d) if inside is None else (inside, None)


def _dilate_array(arr: np.ndarray, r: Sequence[int]) -> np.ndarray:
    """A (z, y, x) boolean array dilated by ITK's ball of ``r`` (x, y, z) voxels (``sitk.BinaryDilate(.., r,
    sitk.sitkBall)`` voxel for voxel: the offsets o with sum((o / (r + 0.5))^2) <= 1), one shifted OR per offset: for a
    small ball, cheaper than a filter that scans the image for the set voxels' borders."""
    out = arr.copy()
    rx, ry, rz = (int(v) for v in r)
    for dz in range(-rz, rz + 1):
        for dy in range(-ry, ry + 1):
            for dx in range(-rx, rx + 1):
                if (dx / (rx + 0.5)) ** 2 + (dy / (ry + 0.5)) ** 2 + (dz / (rz + 0.5)) ** 2 > 1 or not (dx or dy or dz):
                    continue
                dst = tuple(slice(max(d, 0), n + min(d, 0)) for d, n in zip((dz, dy, dx), arr.shape))
                src = tuple(slice(max(-d, 0), n + min(-d, 0)) for d, n in zip((dz, dy, dx), arr.shape))
                out[dst] |= arr[src]
    return out


def _ball_window(ref: sitk.Image, at: Tuple[int, ...], radius_mm: float) -> Tuple[Tuple[np.ndarray, np.ndarray],
                                                                                np.ndarray]:
    """The index window [a, b) (x, y, z) of ``ref`` around voxel ``at`` that holds the ball of radius_mm around its
    centre, clipped to the image, and the ball on it (a (z, y, x) boolean array)."""
    sp = np.array(ref.GetSpacing())
    c = np.asarray(at)
    w = np.floor(radius_mm / sp).astype(int)
    a, b = np.maximum(c - w, 0), np.minimum(c + w + 1, np.array(ref.GetSize()))
    dz, dy, dx = (((np.arange(a[i], b[i]) - c[i]) * sp[i]) ** 2 for i in (2, 1, 0))
    ball = dz[:, None, None] + dy[None, :, None] + dx[None, None, :] <= radius_mm ** 2
    return (a, b), ball


def _cut_attachments(comp: sitk.Image, at: Tuple[int, ...], inscribed: float, p: Dict) -> sitk.Image:
    """Open the lesion with a ball scaled to its own size (``inscribed``: the radius of the largest ball inside it) so
    that vessels and strands thinner than that ball are cut, keep the part at the seed and give back its edge within
    the ball's radius; a smaller ball when the seed's part vanishes."""
    bounds = [float(v) for v in (p["opening_mm"] if isinstance(p["opening_mm"], (list, tuple)) else [p["opening_mm"]])]
    positive = [v for v in bounds if v > 0] or [0.0]
    first = float(np.clip(float(p["opening_fraction"]) * inscribed, min(positive), max(positive)))
    for mm in [first] + sorted((v for v in bounds if v < first), reverse=True):
        r = _radius_vox(comp.GetSpacing(), mm)
        if not any(r):
            return comp
        core = _component_at(_ball_opening(comp, r), at)
        if core is not None:
            return sitk.And(_ball_dilation(core, r), comp)
    return comp


def _cut_runaways(comp: sitk.Image, at: Tuple[int, ...], inscribed: float, p: Dict,
                  keys: Tuple[str, str] = ("runaway_fraction", "runaway_reach"), grow_back: bool = True
                  ) -> Tuple[sitk.Image, float]:
    """Cut thick attachments (vessels of up to about ``runaway_max_mm`` radius) that run away from the lesion.

    The lesion is opened with a ball of ``runaway_fraction`` x its inscribed radius and the part at the seed grown
    back by that radius (inside the mask); each piece the opening removed is cut when it reaches farther than
    ``runaway_reach`` x the inscribed radius from that part (a vessel runs on), kept otherwise (a lobe or a spicule's
    base stays near the lesion). Returns the mask and the volume cut (mL).

    ``keys``: the settings of the ball's fraction and of the reach (``along_fraction`` / ``along_reach``: a thick
    strand along the lesion, with ``grow_back`` False: the part kept is the opening itself).
    """
    mm = min(float(p[keys[0]]) * inscribed, float(p["runaway_max_mm"]))
    r = _radius_vox(comp.GetSpacing(), mm)
    if min(r) < 1 and max(r) < 2:
        return comp, 0.0
    reach = float(p[keys[1]]) * inscribed
    eroded = _core_if_reached(comp, r, reach)
    if eroded is None:
        return comp, 0.0
    kept = _ball_dilation(eroded, r)
    kept = sitk.And(_ball_dilation(kept, r) if grow_back else kept, comp)
    pieces = sitk.ConnectedComponent(sitk.And(comp, sitk.Not(kept)))
    stats = sitk.LabelStatisticsImageFilter()
    stats.Execute(-_distance(kept), pieces)
    near = [lab for lab in stats.GetLabels() if lab > 0 and stats.GetMaximum(lab) <= reach]
    if len(near) == len([lab for lab in stats.GetLabels() if lab > 0]):
        return comp, 0.0
    arr = sitk.GetArrayViewFromImage(pieces)
    out = sitk.GetImageFromArray(((sitk.GetArrayViewFromImage(kept) > 0) | np.isin(arr, near)).astype(np.uint8))
    out.CopyInformation(comp)
    at_seed = _component_at(out, at)
    out = comp if at_seed is None else at_seed
    cut = _count(comp) - _count(out)
    return out, cut * float(np.prod(comp.GetSpacing())) / 1000.0


def _cut_vessel_base(comp: sitk.Image, at: Tuple[int, ...], inscribed: float, p: Dict) -> sitk.Image:
    """The mask opened with the ball of :func:`_cut_runaways`'s thick-strand cut (``along_fraction`` x the inscribed
    radius, at most ``runaway_max_mm``), the part at the seed: run when a thick vessel running away from the lesion or
    lying along it was cut, whose base along the lesion (thinner than that ball) the cuts leave. A ball of half the
    lesion's inscribed radius fits everywhere in its convex body, so the lesion's own outline stays."""
    r = _radius_vox(comp.GetSpacing(), min(float(p["along_fraction"]) * inscribed, float(p["runaway_max_mm"])))
    if not any(r):
        return comp
    opened = _component_at(_ball_opening(comp, r), at)
    return comp if opened is None else opened


def _core_if_reached(comp: sitk.Image, r: Sequence[int], reach: float) -> Optional[sitk.Image]:
    """The mask eroded by a ball of ``r`` voxels; None when nothing is left, or when no voxel of the mask lies farther
    than ``reach`` (mm) from it: the opening's part kept holds that core, so no piece the opening removes can reach
    farther from the part kept (the usual case: the opening's cost is skipped)."""
    eroded = _ball_erosion(comp, r)
    if not sitk.GetArrayViewFromImage(eroded).any():
        return None
    from_core = sitk.SignedMaurerDistanceMap(eroded, insideIsPositive=False, squaredDistance=False,
                                             useImageSpacing=True)
    if float(sitk.GetArrayViewFromImage(from_core)[sitk.GetArrayViewFromImage(comp) > 0].max()) <= reach:
        return None
    return eroded


def _ball_scaled(binary: sitk.Image, r: Sequence[int]) -> sitk.Image:
    """``binary`` on a grid whose spacing is 1 / (r + 0.5) per axis: there ITK's ball of radius ``r`` voxels
    (``sitkBall``: the offsets o with sum((o / (r + 0.5))^2) <= 1) is the unit ball."""
    out = sitk.Image(binary)
    out.SetSpacing([1.0 / (v + 0.5) for v in r])
    out.SetOrigin((0.0, 0.0, 0.0))
    out.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return out


def _ball_dilation(binary: sitk.Image, r: Sequence[int]) -> sitk.Image:
    """``sitk.BinaryDilate(binary, r, sitk.sitkBall)``, voxel for voxel, with one distance map: its cost does not
    grow with the ball (8x faster for a 13 x 13 x 2 ball). ``binary`` must have a set voxel."""
    d = sitk.SignedMaurerDistanceMap(_ball_scaled(binary, r), insideIsPositive=False, squaredDistance=True,
                                     useImageSpacing=True)
    out = sitk.Cast(sitk.LessEqual(d, 1.0), sitk.sitkUInt8)
    out.CopyInformation(binary)
    return out


def _ball_erosion(binary: sitk.Image, r: Sequence[int]) -> sitk.Image:
    """``sitk.BinaryErode(binary, r, sitk.sitkBall)``, voxel for voxel (the image's border counts as set, as ITK
    takes it), with one distance map."""
    background = sitk.Not(binary)
    if not sitk.GetArrayViewFromImage(background).any():
        return sitk.Image(binary)
    return sitk.Not(_ball_dilation(background, r))


def _ball_opening(binary: sitk.Image, r: Sequence[int]) -> sitk.Image:
    """``sitk.BinaryMorphologicalOpening(binary, r, sitk.sitkBall)``, voxel for voxel, with two distance maps."""
    eroded = _ball_erosion(binary, r)
    return _ball_dilation(eroded, r) if sitk.GetArrayViewFromImage(eroded).any() else eroded


def _cut_on_own_box(comp: sitk.Image, at: Tuple[int, ...], inscribed: float, p: Dict, along: bool = False
                    ) -> Tuple[sitk.Image, float]:
    """:func:`_cut_attachments` then :func:`_cut_runaways` (``along``: the cut of a thick strand along the lesion
    instead), on the mask's bounding box plus one voxel (half the
    voxels of the lesion's crop, the same result: an opening takes nothing from outside the mask, and a ball that
    reaches past that box meets the unset voxel around it first). Returns the mask on ``comp``'s grid and the volume
    cut (mL)."""
    arr = sitk.GetArrayFromImage(comp)
    first, last = _bounds(arr)
    (tight,), off = _crop_around([comp], first, last, 0.0)
    at_tight = tuple(int(v) for v in np.asarray(at) - off)
    if along:  # the finished mask: only the cut of a thick strand along the lesion
        tight, runaway_ml = _cut_runaways(tight, at_tight, inscribed, p, ("along_fraction", "along_reach"), False)
    else:
        tight = _cut_attachments(tight, at_tight, inscribed, p)
        tight, runaway_ml = _cut_runaways(tight, at_tight, inscribed, p)
    b = off + np.array(tight.GetSize())
    arr[:] = 0
    arr[off[2]:b[2], off[1]:b[1], off[0]:b[0]] = sitk.GetArrayViewFromImage(tight)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(comp)
    return out, runaway_ml


def _bounds(arr: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Index bounds [first, last] (x, y, z) of the set voxels of a (z, y, x) array; None when none is set."""
    nz = [np.flatnonzero(arr.any(axis=a)) for a in ((0, 1), (0, 2), (1, 2))]
    if any(v.size == 0 for v in nz):
        return None
    return np.array([v[0] for v in nz]), np.array([v[-1] for v in nz])


def _touches(first, last, lo, hi, full) -> np.ndarray:
    """Which faces ([low, high] x (x, y, z)) of the region [lo, hi) that are not the scan's own edge does a mask with
    CT index bounds [first, last] reach?"""
    return np.array([(first <= lo) & (lo > 0), (last >= hi - 1) & (hi < full)])


def _crop_around(images: Sequence[sitk.Image], first, last, pad_mm: float) -> Tuple[List[sitk.Image], np.ndarray]:
    """The images cut to the index box [first, last] grown by pad_mm (clipped); and the cut's offset."""
    size = np.array(images[0].GetSize())
    pad = np.ceil(pad_mm / np.array(images[0].GetSpacing())).astype(int) + 1
    a, b = np.maximum(first - pad, 0), np.minimum(last + pad + 1, size)
    return [sitk.RegionOfInterest(im, [int(v) for v in b - a], [int(v) for v in a]) for im in images], a


def _measure(comp: sitk.Image, smoothed: sitk.Image, lo_hu: float, inscribed: float, ggo_hu: float) -> Dict:
    """Volume, equivalent radius, the share of a 2 mm shell around the mask that is lung/air (below ``lo_hu``) and
    the share of that lung that is ground glass (at or above ``ggo_hu``)."""
    sp = comp.GetSpacing()
    n = int(sitk.GetArrayViewFromImage(comp).sum())
    vol = n * float(np.prod(sp))
    shell = sitk.And(sitk.BinaryDilate(comp, [max(1, v) for v in _radius_vox(sp, 2.0)], sitk.sitkBall),
                     sitk.Not(comp))
    s = sitk.GetArrayViewFromImage(shell) > 0
    hu = sitk.GetArrayViewFromImage(smoothed)[s]
    lung = float((hu < lo_hu).mean()) if s.any() else float("nan")
    # ground glass is looked for 1.5 to 4 mm out: the first voxels beyond the edge are its partial-volume blur
    inner = sitk.BinaryDilate(comp, _radius_vox(sp, 1.5), sitk.sitkBall)
    outer = sitk.BinaryDilate(comp, [max(1, v) for v in _radius_vox(sp, 4.0)], sitk.sitkBall)
    far = sitk.GetArrayFromImage(sitk.And(outer, sitk.Not(inner))) > 0
    hu_far = sitk.GetArrayViewFromImage(smoothed)[far]
    ggo = float((hu_far[hu_far < lo_hu] >= ggo_hu).mean()) if (hu_far < lo_hu).any() else 0.0
    return {"volume_ml": vol / 1000.0, "inscribed_mm": inscribed, "ground_glass": ggo,
            "equivalent_mm": float((3 * vol / (4 * np.pi)) ** (1 / 3)), "lung_contact": lung}


def _sub_region(ct: sitk.Image, region: Box) -> Tuple[np.ndarray, np.ndarray]:
    lo, hi = index_region_of_box(ct, region, pad=0)
    full = np.array(ct.GetSize())
    # at least 5 voxels per axis where the scan allows (the smoothing filter needs 4)
    short = (hi - lo) < 5
    lo = np.where(short, np.clip((lo + hi) // 2 - 2, 0, np.maximum(full - 5, 0)), lo)
    hi = np.where(short, np.minimum(lo + 5, full), hi)
    return lo, hi


def grow_from_seed(ct: sitk.Image, seed_lps: Sequence[float], region: Box, params: Optional[Dict] = None) -> Grown:
    """The lesion at the seed inside ``region`` (see the module's description) and its measures.

    Parameters
    ----------
    ct : SimpleITK.Image
        The CT in HU.
    seed_lps : 3 floats
        The seed, LPS mm.
    region : Box
        Where to look (the search cube or the user's box), LPS mm.
    params : dict, optional
        Overrides of :data:`DEFAULTS`.

    Returns
    -------
    Grown
        The mask on the region's part of the CT grid, whether a lesion was found, whether it reaches the region's
        faces, and its measures.
    """
    p = {**DEFAULTS, **(params or {})}
    lo, hi = _sub_region(ct, region)
    return _grow_in(ct, seed_lps, lo, hi, p)


def _grow_in(ct: sitk.Image, seed_lps: Sequence[float], lo: np.ndarray, hi: np.ndarray, p: Dict) -> Grown:
    """:func:`grow_from_seed` on the CT's index region [lo, hi)."""
    size = [int(v) for v in np.asarray(hi) - np.asarray(lo)]
    sub = sitk.Cast(sitk.RegionOfInterest(ct, size, [int(v) for v in lo]), sitk.sitkFloat32)
    if min(size) >= 4:
        sub = sitk.SmoothingRecursiveGaussian(sub, [min(ct.GetSpacing()) * 0.75] * 3)
    lo_hu, hi_hu = (float(v) for v in p["hu_range"])
    tissue = sitk.BinaryThreshold(sub, lo_hu, hi_hu, 1, 0)
    ci = np.array(sub.TransformPhysicalPointToContinuousIndex(tuple(map(float, seed_lps))))
    seed_idx = np.clip(np.round(ci).astype(int), 0, np.array(size) - 1)
    seed_hu = float(sitk.GetArrayViewFromImage(sub)[seed_idx[2], seed_idx[1], seed_idx[0]])
    at = _nearest_on(sitk.GetArrayViewFromImage(tissue), seed_idx, sub, 5.0)
    ggo_hu = float(p["ground_glass_hu"])
    part_solid = lo_hu <= ggo_hu
    if at is None and not part_solid and seed_hu >= ggo_hu:  # a seed in pure ground glass
        return _grow_in(ct, seed_lps, lo, hi, {**p, "hu_range": [ggo_hu, hi_hu]})
    if at is None:
        empty = sitk.Image(sub.GetSize(), sitk.sitkUInt8)
        empty.CopyInformation(sub)
        return Grown(empty, np.asarray(lo), False, False, seed_hu)
    comp = _component_at(_basin_at(sub, tissue, at, p), at)
    # the rest works on the lesion's own bounding box (plus room for the opening, the rim and the shell)
    first, last = _bounds(sitk.GetArrayViewFromImage(comp))
    if p.get("_stop_at_faces"):  # the search will widen anyway: skip the finishing steps
        faces = _touches(first + lo, last + lo, lo, hi, np.array(ct.GetSize()))
        if faces.any():
            return Grown(comp, np.asarray(lo), True, True, seed_hu, faces=faces)
    (comp, sub), off = _crop_around([comp, sub], first, last, 3.0 + float(p["edge_mm"]) + 4.0)
    at = tuple(int(v) for v in np.asarray(at) - off)
    comp, d = _within_lung(comp, sub, at, p)
    inscribed = _inscribed_mm(comp, d)
    comp, runaway_ml = _cut_on_own_box(comp, at, inscribed, p)
    # the rim and the shells around the lesion need edge_mm + 4 mm around it (the envelope needed more)
    (comp, sub), off2 = _crop_around([comp, sub], *_bounds(sitk.GetArrayViewFromImage(comp)),
                                     float(p["edge_mm"]) + 4.0)
    off = off + off2
    comp = _add_rim(comp, sub, p)
    origin = np.asarray(lo) + off
    if part_solid:
        comp = _own_ground_glass(comp, sub, tuple(int(v) for v in np.asarray(at) - off2), origin, p)
    comp, along_ml = _cut_on_own_box(comp, tuple(int(v) for v in np.asarray(at) - off2), inscribed, p, along=True)
    if (runaway_ml > 0 or along_ml > 0) and p["cut_vessel_base"]:  # a thick vessel was cut: its base too
        comp = _cut_vessel_base(comp, tuple(int(v) for v in np.asarray(at) - off2), inscribed, p)
    first, last = _bounds(sitk.GetArrayViewFromImage(comp))
    faces = _touches(first + origin, last + origin, lo, hi, np.array(ct.GetSize()))
    g = Grown(comp, origin, True, bool(faces.any()), seed_hu, faces=faces, part_solid=part_solid,
              runaway_ml=runaway_ml, along_ml=along_ml,
              **_measure(comp, sub, lo_hu, inscribed, ggo_hu))
    if not part_solid and g.ground_glass > float(p["ground_glass_share"]):
        return _with_ground_glass(ct, seed_lps, lo, hi, p, g)
    return g


def _with_ground_glass(ct: sitk.Image, seed_lps: Sequence[float], lo: np.ndarray, hi: np.ndarray, p: Dict,
                       g: Grown) -> Grown:
    """The solid part ``g`` has ground glass around it: a part-solid lesion, segmented again with its ground glass.

    That is kept unless it runs far beyond the solid part (into partial-volume lung: it is over
    ``ground_glass_max_ratio`` times its volume, or it reaches faces of the search region that the solid part did not
    and the search cannot widen further); then the solid part stays, flagged. While the search can widen
    (``_widen_ground_glass`` in ``p``) such a mask is returned reaching those faces, and the search moves them out. With
    a user's box (``_box`` in ``p``: its CT index region), the box delimits the lesion: ground glass that fits in it is
    the lesion's; ground glass that runs past it while the solid part lies inside it is left out as the user drew it
    (the haze around a solid tumour), not flagged.
    """
    gg = _grow_in(ct, seed_lps, lo, hi, {**p, "hu_range": [float(p["ground_glass_hu"]), float(p["hu_range"][1])],
                                        "_stop_at_faces": False, "_solid": (g.mask, np.asarray(g.lo)),
                                        "_solid_hu": float(p["hu_range"][0])})
    box = p.get("_box")
    if box is not None:
        if _inside(gg, *box):
            return gg
        if _inside(g, *box):
            g.ground_glass_outside_box = True
            return g
    elif gg.volume_ml <= float(p["ground_glass_max_ratio"]) * g.volume_ml:
        gg.solid_ratio = float((g.volume_ml / max(gg.volume_ml, 1e-9)) ** (1.0 / 3.0))
        if not (gg.touches_limit and not g.touches_limit) or p.get("_widen_ground_glass"):
            return gg  # (reaching faces the solid part did not: the search moves them out, as for a solid lesion)
    g.ground_glass_unclear = True
    return g


def _own_ground_glass(comp: sitk.Image, smoothed: sitk.Image, at: Tuple[int, ...], origin: np.ndarray,
                      p: Dict) -> sitk.Image:
    """A part-solid lesion's mask without the blur of the vessels that touch its ground glass.

    Below the tissue range (``_solid_hu``, else ``hu_range``'s floor), a voxel within ``ground_glass_halo_mm`` of solid
    tissue is the partial-volume blur around a vessel or around the solid part; ground glass farther than that from
    any solid tissue is the lesion's own. The mask keeps what lies within the halo + 1 mm of its own ground glass and
    the solid part segmented first (``_solid``: its mask and CT index offset), closed by a ball of that reach inside
    the mask (a vessel crossing the ground glass is not hollowed out), and the part at the seed (``at``, on ``comp``'s
    grid at CT index ``origin``). Unchanged when no solid tissue or no ground glass of its own is there.
    """
    halo = float(p["ground_glass_halo_mm"])
    solid = sitk.GreaterEqual(smoothed, float(p.get("_solid_hu", p["hu_range"][0])))
    if halo <= 0 or not sitk.GetArrayViewFromImage(solid).any():
        return comp
    from_solid = sitk.SignedMaurerDistanceMap(solid, insideIsPositive=False, squaredDistance=False,
                                              useImageSpacing=True)
    own = sitk.And(comp, sitk.Greater(from_solid, halo))
    if not sitk.GetArrayViewFromImage(own).any():
        return comp
    near = sitk.LessEqual(sitk.SignedMaurerDistanceMap(own, insideIsPositive=False, squaredDistance=False,
                                                       useImageSpacing=True), halo + 1.0)
    keep = sitk.GetArrayFromImage(near) > 0
    if p.get("_solid") is not None:
        mask, mask_lo = p["_solid"]
        _or_region(keep, sitk.GetArrayViewFromImage(mask) > 0, np.asarray(mask_lo) - origin)
    arr = sitk.GetArrayViewFromImage(comp) > 0
    out = sitk.GetImageFromArray((keep & arr).astype(np.uint8))
    out.CopyInformation(comp)
    r = _radius_vox(comp.GetSpacing(), halo + 1.0)
    if any(r):
        out = sitk.And(_ball_erosion(_ball_dilation(out, r), r), comp)
    at_seed = _component_at(out, at)
    return out if at_seed is None else at_seed


def _or_region(arr: np.ndarray, sub: np.ndarray, offset: np.ndarray) -> None:
    """``arr |= sub`` with ``sub`` (z, y, x) placed at index ``offset`` (x, y, z) of ``arr``, clipped to ``arr``."""
    a = np.maximum(offset[::-1], 0)
    b = np.minimum(offset[::-1] + np.array(sub.shape), np.array(arr.shape))
    if np.any(b <= a):
        return
    s = tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, offset[::-1]))
    arr[tuple(slice(int(x), int(y)) for x, y in zip(a, b))] |= sub[s]


def _inside(g: Grown, lo: np.ndarray, hi: np.ndarray) -> bool:
    """Does the mask of ``g`` lie inside the CT index region [lo, hi)?"""
    b = _bounds(sitk.GetArrayViewFromImage(g.mask))
    return b is None or bool(np.all(b[0] + g.lo >= lo) and np.all(b[1] + g.lo <= np.asarray(hi) - 1))


def _edge_hu(comp: sitk.Image, smoothed: sitk.Image, p: Dict) -> float:
    """HU above which a voxel at the lesion's edge is its partial volume: ``edge_fraction`` of the way from the
    median of the lung around the lesion (1-3 mm out, below the tissue range) to the lesion's median, and at least
    ``edge_hu``. In plain lung (about -870 HU) that is ``edge_hu``; in hazy lung (ground glass around a solid
    tumour) it is higher, so the rim does not take the haze."""
    sp = comp.GetSpacing()
    near = sitk.BinaryDilate(comp, [max(1, v) for v in _radius_vox(sp, 1.0)], sitk.sitkBall)
    far = sitk.BinaryDilate(comp, [max(1, v) for v in _radius_vox(sp, 3.0)], sitk.sitkBall)
    shell = sitk.GetArrayFromImage(sitk.And(far, sitk.Not(near))) > 0
    hu = sitk.GetArrayViewFromImage(smoothed)
    around = hu[shell]
    around = around[around < float(p["hu_range"][0])]
    inside = hu[sitk.GetArrayViewFromImage(comp) > 0]
    if around.size == 0 or inside.size == 0:
        return float(p["edge_hu"])
    bg, fg = float(np.median(around)), float(np.median(inside))
    return max(float(p["edge_hu"]), bg + float(p["edge_fraction"]) * (fg - bg))


def _add_rim(comp: sitk.Image, smoothed: sitk.Image, p: Dict) -> sitk.Image:
    """The lesion with its partial-volume rim (``edge_mm`` wide, above :func:`_edge_hu`), as a reader's outline
    includes it."""
    r = _radius_vox(comp.GetSpacing(), float(p["edge_mm"]))
    if not any(r):
        return comp
    rim = sitk.And(sitk.BinaryDilate(comp, r, sitk.sitkBall),
                   sitk.BinaryThreshold(smoothed, _edge_hu(comp, smoothed, p), float(p["hu_range"][1]), 1, 0))
    return sitk.Or(comp, rim)


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


def _reasons(g: Grown, p: Dict, limit_words: str) -> List[str]:
    """Why the mask at the seed needs a reader's review (empty when it does not)."""
    reasons = []
    if np.isfinite(g.seed_hu) and g.seed_hu > float(p["bone_hu"]):
        reasons.append(f"the seed lies in bone or calcium (about {g.seed_hu:.0f} HU); place it on the tumour")
    if not g.found:
        return reasons
    if g.touches_limit:
        reasons.append(f"the mask reaches {limit_words}: it may run on into a neighbouring structure")
    # the inscribed radius plus half the thickest voxel (thick slices hide a ball's caps)
    seen = g.inscribed_mm + 0.5 * float(p.get("_max_spacing", 0.0))
    if seen > 0 and g.equivalent_mm > float(p["leak_ratio"]) * seen:
        reasons.append(f"the mask ({g.volume_ml:.1f} mL) is much larger than the lesion visible at the seed "
                       f"(a ball of {2 * seen:.0f} mm): it may have leaked along vessels or tissue")
    thickness = float(p.get("_max_spacing", 0.0))
    if 0 < 2 * g.inscribed_mm < float(p["thin_ratio"]) * thickness:
        reasons.append(f"the lesion at the seed is thinner than a slice (the largest ball inside it is "
                       f"{2 * g.inscribed_mm:.1f} mm across, the slices {thickness:.1f} mm apart): its outline across "
                       "the slices is not resolved, and vessels touching it may be in the mask")
    if (not g.part_solid and 2 * g.inscribed_mm < float(p["small_solid_mm"])
            and g.ground_glass >= float(p["small_ground_glass"])):
        reasons.append(f"the lesion at the seed is small (the largest ball inside it is {2 * g.inscribed_mm:.1f} mm "
                       f"across) and {100 * g.ground_glass:.0f}% of the lung around it is ground glass: it may be the "
                       "solid part of a part-solid lesion whose ground glass is left out")
    if np.isfinite(g.solid_ratio) and g.solid_ratio >= float(p["solid_predominant"]):
        reasons.append(f"the mask includes ground glass around a solid part of {100 * g.solid_ratio:.0f}% of its "
                       "diameter: it may be haze around a solid tumour rather than the tumour's own (a box around the "
                       "tumour as you see it decides)")
    if g.along_ml > 0:
        reasons.append(f"{g.along_ml:.1f} mL of a thick strand lying along the lesion (a vessel or airway wall, "
                       "reaching far from the rest) was cut off: the rest of the mask may still hold some of it")
    if g.runaway_ml > 0:
        reasons.append(f"{g.runaway_ml:.1f} mL of thick vessel or tissue running away from the lesion was cut off: "
                       "the rest of the mask may still hold some of it")
    if g.ground_glass_unclear:
        reasons.append("ground glass around the solid part could not be delimited and is left out of the mask")
    if np.isfinite(g.lung_contact) and g.lung_contact < float(p["min_lung_contact"]):
        reasons.append(f"only {100 * g.lung_contact:.0f}% of the mask's surroundings is lung: the seed may lie in the "
                       "heart, mediastinum or chest wall rather than on a lung tumour")
    return reasons


def _region_box(ct: sitk.Image, lo: np.ndarray, hi: np.ndarray) -> Box:
    """The LPS box covering the outer edges of the CT's index region [lo, hi)."""
    m, o = index_to_physical_matrix(ct)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]) - 0.5
    pts = corners @ m.T + o
    return Box(tuple(map(float, pts.min(0))), tuple(map(float, pts.max(0))))


def _grow_with_limit(ct: sitk.Image, seed: Sequence[float], p: Dict) -> Tuple[Grown, Box, bool]:
    """Grow in a cube around the seed whose faces that the lesion reaches move out (by half the first half-size)
    until it reaches none, up to ``max_search_half_mm`` around the seed. Returns (grown, search region, at maximum)."""
    half = float(p["max_half_size_mm"])
    top = max(half, float(p["max_search_half_mm"]))
    lo, hi = _sub_region(ct, Box.from_center_size(seed, [2 * half] * 3))
    tlo, thi = index_region_of_box(ct, Box.from_center_size(seed, [2 * top] * 3), pad=0)
    step = np.ceil(0.5 * half / np.array(ct.GetSpacing())).astype(int)
    while True:
        g = _grow_in(ct, seed, lo, hi, {**p, "_stop_at_faces": True, "_widen_ground_glass": True})
        if not (g.found and g.touches_limit):
            return g, _region_box(ct, lo, hi), False
        new_lo = np.where(g.faces[0], np.maximum(lo - step, np.minimum(tlo, lo)), lo)
        new_hi = np.where(g.faces[1], np.minimum(hi + step, np.maximum(thi, hi)), hi)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):  # at the maximum: finish this one
            return _grow_in(ct, seed, lo, hi, p), _region_box(ct, lo, hi), True
        lo, hi = new_lo, new_hi


def _grow_in_box(ct: sitk.Image, seed: Sequence[float], box: Box, p: Dict) -> Grown:
    """Grow with 10 mm of context around the user's box (so the shape split sees the same blobs as without a box),
    then keep the part inside the box; the mask "reaches the limit" when the lesion runs on past the box."""
    context = Box(tuple(np.asarray(box.min) - 10.0), tuple(np.asarray(box.max) + 10.0))
    lo_b, hi_b = _sub_region(ct, box)
    g = grow_from_seed(ct, seed, context, {**p, "_box": (lo_b, hi_b)})
    if not g.found:
        return g
    arr = sitk.GetArrayFromImage(g.mask)
    a = np.clip(lo_b - g.lo, 0, None)[::-1]
    b = np.clip(hi_b - g.lo, 0, None)[::-1]
    kept = np.zeros_like(arr)
    kept[a[0]:b[0], a[1]:b[1], a[2]:b[2]] = arr[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
    if not kept.any():  # the seed's lesion lies outside the box: nothing of it inside
        g.found = False
    g.touches_limit = bool(g.touches_limit or kept.sum() < arr.sum())
    mask = sitk.GetImageFromArray(kept)
    mask.CopyInformation(g.mask)
    g.mask = mask
    return g


def _sphere_mask(ref: sitk.Image, seed_lps: Sequence[float], radius_mm: float) -> sitk.Image:
    shape = sitk.GetArrayViewFromImage(ref).shape
    zz, yy, xx = np.indices(shape)
    m, o = index_to_physical_matrix(ref)
    pts = np.stack([xx, yy, zz], -1).reshape(-1, 3) @ m.T + o
    arr = (np.linalg.norm(pts - np.asarray(seed_lps), axis=1) <= radius_mm).reshape(shape).astype(np.uint8)
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(ref)
    return mask


def segment_from_seed(ct: sitk.Image, seed_lps: Sequence[float], box: Optional[Box] = None,
                      params: Optional[Dict] = None, region_settings: Optional[Dict] = None) -> SeedSegmentation:
    """The tumour at the seed, the box around it and whether a reader should review it.

    Parameters
    ----------
    ct : SimpleITK.Image
        The CT in HU.
    seed_lps : 3 floats
        The seed on the tumour, LPS mm.
    box : Box, optional
        The user's box: the tumour is looked for inside it only and the box is kept as given. None: the search
        cube starts at ``max_half_size_mm`` around the seed and grows with the lesion; the box is proposed.
    params : dict, optional
        The bundle's ``proposal`` settings (overrides of :data:`DEFAULTS`).
    region_settings : dict, optional
        The bundle's ``regions`` settings (unused by the segmentation; accepted for the pipeline's call).

    Returns
    -------
    SeedSegmentation
        Box, mask (uint8 sub-image at ``lo``), reasons to review it, warnings and the ``info`` for result.json.
        With no soft tissue at the seed the mask is a 5 mm sphere at the seed (so the ring stays defined) and the
        proposed box a 30 mm cube, each with a warning.

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> ct = sitk.Image([64, 64, 32], sitk.sitkInt16) - 900          # lung
    >>> ct.SetSpacing((1.0, 1.0, 2.0))
    >>> ball = sitk.GetArrayFromImage(ct); zz, yy, xx = np.indices(ball.shape)
    >>> ball[((xx - 32) ** 2 + (yy - 32) ** 2 + (2 * (zz - 16)) ** 2) <= 100] = 30  # a 20 mm nodule, sharp-edged
    >>> img = sitk.GetImageFromArray(ball); img.CopyInformation(ct)
    >>> seg = segment_from_seed(img, (32.0, 32.0, 32.0))
    >>> seg.found, seg.uncertain, [round(v) for v in seg.box.size]
    (True, [], [25, 25, 24])
    """
    p = {**DEFAULTS, **(params or {}), "_max_spacing": max(ct.GetSpacing())}
    seed = tuple(float(v) for v in seed_lps)
    if box is None:
        g, limit, _ = _grow_with_limit(ct, seed, p)
        limit_words = f"the search limit ({float(p['max_search_half_mm']):g} mm around the seed)"
    else:
        g, limit = _grow_in_box(ct, seed, box, p), box
        limit_words = "the edge of the given box"
    reasons = _reasons(g, p, limit_words)
    warnings: List[str] = []
    mask = g.mask
    if not g.found:
        warnings.append("No soft-tissue lesion was found at the seed (it lies in air or far from tissue); the tumour "
                        "region is a 5 mm sphere at the seed" + ("" if box is not None else
                                                                 " and the proposed box a 30 mm cube around it")
                        + ". Check the seed, or give a segmentation (--segmentation).")
        mask = _sphere_mask(g.mask, seed, 5.0)
        reasons.append("no lesion was found at the seed")
    if box is None:
        box = _box_around(g, seed, limit, p)
    if reasons and g.found:
        warnings.append(f"{UNCERTAIN}: {'; '.join(reasons)}. The tumour and ring attention shares depend on it.")
    info = {"source": "proposed", "uncertain": bool(reasons), "reasons": reasons,
            "volume_ml": round(float(sitk.GetArrayViewFromImage(mask).sum()) * float(np.prod(ct.GetSpacing()))
                               / 1000.0, 3),
            "search_box_mm": [round(float(v), 1) for v in limit.size], "inscribed_radius_mm": round(g.inscribed_mm, 2),
            "lung_contact": None if not np.isfinite(g.lung_contact) else round(g.lung_contact, 3),
            "part_solid": g.part_solid, "ground_glass_outside_box": g.ground_glass_outside_box,
            "solid_ratio": None if not np.isfinite(g.solid_ratio) else round(g.solid_ratio, 3)}
    return SeedSegmentation(box, mask, np.asarray(g.lo), g.found, reasons, warnings, info)


def _box_around(g: Grown, seed: Sequence[float], limit: Box, p: Dict) -> Box:
    """The mask's extent plus the margin, inside the search limit; a 30 mm cube at the seed when nothing grew."""
    ext = mask_extent_lps(g.mask) if g.found else None
    if ext is None:
        return Box.from_center_size(seed, [30.0] * 3)
    margin = float(p["margin_mm"])
    lo = np.maximum(np.asarray(ext.min) - margin, limit.min)
    hi = np.minimum(np.asarray(ext.max) + margin, limit.max)
    return Box(tuple(map(float, lo)), tuple(map(float, hi)))


def propose_box(ct: sitk.Image, seed_lps: Sequence[float], params: Optional[Dict] = None
                ) -> Tuple[Box, List[str]]:
    """Propose a box around the tumour at the seed: the extent of :func:`segment_from_seed`'s mask plus the margin.

    Returns
    -------
    (Box, list of str)
        The box (LPS mm) and the warnings (no lesion found, or the mask needs review).
    """
    seg = segment_from_seed(ct, seed_lps, None, params)
    return seg.box, seg.warnings
