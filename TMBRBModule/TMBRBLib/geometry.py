"""Coordinates and boxes in the patient frame.

Inside the engine every physical point is LPS millimetres, the frame of ITK, SimpleITK and DICOM.
3D Slicer shows RAS = (-x, -y, z). A box is axis-aligned in LPS and given by its min and max corners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import TMBRBInputError, numbers_text

Point = Tuple[float, float, float]

_FLIP = np.array([-1.0, -1.0, 1.0])


def ras_to_lps(p: Sequence[float]) -> Point:
    a = np.asarray(p, dtype=float) * _FLIP
    return (float(a[0]), float(a[1]), float(a[2]))


lps_to_ras = ras_to_lps  # the same flip both ways


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in LPS mm (min and max corners, outer edges)."""

    min: Point
    max: Point

    def __post_init__(self):
        object.__setattr__(self, "min", tuple(float(v) for v in self.min))
        object.__setattr__(self, "max", tuple(float(v) for v in self.max))

    @staticmethod
    def from_corners(a: Sequence[float], b: Sequence[float]) -> "Box":
        a, b = np.asarray(a, float), np.asarray(b, float)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise TMBRBInputError("The box has a coordinate that is not a finite number.",
                                  "Give six finite numbers: xmin,ymin,zmin,xmax,ymax,zmax.")
        if np.any(hi - lo <= 0):
            raise TMBRBInputError(f"The box has zero size along an axis (size {numbers_text(hi - lo)} mm).",
                                  "Give two opposite corners that differ along every axis.")
        return Box(tuple(map(float, lo)), tuple(map(float, hi)))

    @staticmethod
    def from_ras_corners(a: Sequence[float], b: Sequence[float]) -> "Box":
        return Box.from_corners(ras_to_lps(a), ras_to_lps(b))

    @staticmethod
    def from_center_size(center: Sequence[float], size: Sequence[float]) -> "Box":
        c, s = np.asarray(center, float), np.asarray(size, float)
        return Box.from_corners(c - s / 2, c + s / 2)

    @property
    def center(self) -> Point:
        return tuple(map(float, (np.asarray(self.min) + np.asarray(self.max)) / 2))

    @property
    def size(self) -> Point:
        return tuple(map(float, np.asarray(self.max) - np.asarray(self.min)))

    def shifted(self, offset: Sequence[float]) -> "Box":
        o = np.asarray(offset, float)
        return Box(tuple(map(float, np.asarray(self.min) + o)), tuple(map(float, np.asarray(self.max) + o)))

    def ras_corners(self) -> Tuple[Point, Point]:
        a, b = ras_to_lps(self.min), ras_to_lps(self.max)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        return tuple(map(float, lo)), tuple(map(float, hi))

    def to_dict(self) -> dict:
        rmin, rmax = self.ras_corners()
        return {"lps_min": list(self.min), "lps_max": list(self.max),
                "ras_min": list(rmin), "ras_max": list(rmax),
                "center_lps": list(self.center), "size_mm": list(self.size)}


def image_corners_lps(img: sitk.Image) -> np.ndarray:
    """The 8 outer corners (voxel edges) of the image, in LPS mm, shape (8, 3)."""
    size = np.array(img.GetSize(), float)
    corners = []
    for i in (-0.5, size[0] - 0.5):
        for j in (-0.5, size[1] - 0.5):
            for k in (-0.5, size[2] - 0.5):
                corners.append(img.TransformContinuousIndexToPhysicalPoint((i, j, k)))
    return np.array(corners)


def image_bounds_lps(img: sitk.Image) -> Box:
    c = image_corners_lps(img)
    return Box(tuple(map(float, c.min(0))), tuple(map(float, c.max(0))))


def physical_to_continuous_index(img: sitk.Image, p: Sequence[float]) -> np.ndarray:
    return np.array(img.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))))


def index_to_physical(img: sitk.Image, idx: Sequence[float]) -> Point:
    return tuple(img.TransformContinuousIndexToPhysicalPoint(tuple(map(float, idx))))


def point_inside(img: sitk.Image, p: Sequence[float]) -> bool:
    ci = physical_to_continuous_index(img, p)
    size = np.array(img.GetSize())
    return bool(np.all(ci >= -0.5) and np.all(ci <= size - 0.5))


POINT_OUTSIDE_HINT = "Place the seed on the tumour inside the scan; check RAS vs LPS (Slicer shows RAS)."


def require_point_inside(ct: sitk.Image, point_lps: Sequence[float], what: str = "The seed",
                         ct_name: Optional[str] = None, hint: str = POINT_OUTSIDE_HINT) -> None:
    """Raise TMBRBInputError unless a point lies inside the CT (within its outer voxel edges).

    Parameters
    ----------
    ct : SimpleITK.Image
        The CT.
    point_lps : sequence of 3 floats
        The point, LPS mm.
    what : str, default "The seed"
        How the message names the point (it starts the message).
    ct_name : str, optional
        The CT's name, quoted in the message when given (e.g. the Slicer volume's name).
    hint : str, default POINT_OUTSIDE_HINT
        What to do about it; the second part of the message (``TMBRBInputError.hint``).

    Raises
    ------
    TMBRBInputError
        The message gives the point in LPS and RAS mm, its voxel position (continuous index) and the CT's size.

    Examples
    --------
    >>> ct = sitk.Image([10, 10, 5], sitk.sitkInt16)
    >>> require_point_inside(ct, (4.0, 4.0, 2.0))
    >>> require_point_inside(ct, (4.0, 4.0, 20.0), ct_name="chest")
    Traceback (most recent call last):
    ...
    TMBRBLib.errors.TMBRBInputError: The seed (LPS (4.0, 4.0, 20.0) mm, RAS (-4.0, -4.0, 20.0) mm, voxel (4.0, 4.0, 20.0)) lies outside the CT 'chest' (size (10, 10, 5)). Place the seed on the tumour inside the scan; check RAS vs LPS (Slicer shows RAS).
    """
    if point_inside(ct, point_lps):
        return
    p = tuple(float(v) for v in point_lps)
    ci = physical_to_continuous_index(ct, p)
    named = f" '{ct_name}'" if ct_name else ""
    raise TMBRBInputError(
        f"{what} (LPS {tuple(round(v, 1) for v in p)} mm, RAS {tuple(round(v, 1) for v in lps_to_ras(p))} mm,"
        f" voxel {tuple(round(float(v), 1) for v in ci)}) lies outside the CT{named} (size {ct.GetSize()}).", hint)


def box_overlap_fraction(img: sitk.Image, box: Box, samples: int = 9) -> float:
    """Fraction of the box's volume that lies inside the scan (sampled on a grid)."""
    axes = [np.linspace(lo, hi, samples) for lo, hi in zip(box.min, box.max)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    idx = physical_points_to_index(img, pts)
    size = np.array(img.GetSize())
    inside = np.all((idx >= -0.5) & (idx <= size - 0.5), axis=1)
    return float(inside.mean())


MAX_BOX_OUTSIDE_FRACTION = 0.25  # a box with more of its volume outside the scan is refused (every front end)


def check_box_in_scan(ct: sitk.Image, box: Box, box_name: Optional[str] = None, ct_name: Optional[str] = None,
                      hint: str = "Draw the box around the tumour inside the scan; check RAS vs LPS.") -> List[str]:
    """The one rule for a box against the scan, for the CLI, batch, Slicer and the viewer.

    Parameters
    ----------
    ct : SimpleITK.Image
        The CT.
    box : Box
        The box, LPS mm.
    box_name, ct_name : str, optional
        Names quoted in the message (e.g. Slicer's node names).
    hint : str
        What to do about a refused box.

    Returns
    -------
    list of str
        A warning when part of the box (at most MAX_BOX_OUTSIDE_FRACTION) lies outside the scan.

    Raises
    ------
    TMBRBInputError
        When the box lies wholly outside the scan, or more than MAX_BOX_OUTSIDE_FRACTION of it does: the model would
        see mostly air padding where the scan ends.
    """
    inside = box_overlap_fraction(ct, box)
    label = f"The box '{box_name}'" if box_name else (
        f"The box (LPS {tuple(round(v, 1) for v in box.min)} to {tuple(round(v, 1) for v in box.max)} mm)")
    ct_label = f"the CT '{ct_name}'" if ct_name else "the CT"
    if inside <= 0:
        raise TMBRBInputError(f"{label} lies wholly outside {ct_label}.", hint)
    if 1 - inside > MAX_BOX_OUTSIDE_FRACTION:
        raise TMBRBInputError(
            f"{100 * (1 - inside):.0f}% of {label[0].lower() + label[1:]} lies outside {ct_label} (at most "
            f"{100 * MAX_BOX_OUTSIDE_FRACTION:.0f}% is accepted: the model would see air where the scan ends).", hint)
    if inside < 0.999:
        return [f"{100 * (1 - inside):.0f}% of the box lies outside the scan; that part is padded with air "
                "(-1000 HU). Check the box."]
    return []


def index_to_physical_matrix(img: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """(M, origin) with physical = origin + M @ index, M = direction @ diag(spacing)."""
    d = np.array(img.GetDirection(), float).reshape(3, 3)
    m = d @ np.diag(img.GetSpacing())
    return m, np.array(img.GetOrigin(), float)


def physical_points_to_index(img: sitk.Image, pts: np.ndarray) -> np.ndarray:
    m, o = index_to_physical_matrix(img)
    return (np.linalg.inv(m) @ (np.asarray(pts, float) - o).T).T


def index_region_of_box(img: sitk.Image, box: Box, pad: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Index range [lo, hi) (x, y, z) of the image voxels that a box touches, clipped to the image."""
    corners = np.array([[x, y, z] for x in (box.min[0], box.max[0]) for y in (box.min[1], box.max[1])
                        for z in (box.min[2], box.max[2])])
    ci = physical_points_to_index(img, corners)
    size = np.array(img.GetSize())
    lo = np.clip(np.floor(ci.min(0)).astype(int) - pad, 0, size)
    hi = np.clip(np.ceil(ci.max(0)).astype(int) + 1 + pad, 0, size)
    return lo, hi


def parse_triplet(text: str, what: str) -> Point:
    try:
        vals = [float(v) for v in str(text).replace(";", ",").split(",")]
    except ValueError:
        raise TMBRBInputError(f"{what} '{text}' is not three numbers.", "Write it as x,y,z, e.g. 21.9,120.5,-611.5.")
    if len(vals) != 3 or not np.all(np.isfinite(vals)):
        raise TMBRBInputError(f"{what} '{text}' must be three finite numbers.", "Write it as x,y,z.")
    return tuple(vals)


def parse_box(text: str, what: str) -> Tuple[Point, Point]:
    try:
        vals = [float(v) for v in str(text).replace(";", ",").split(",")]
    except ValueError:
        raise TMBRBInputError(f"{what} '{text}' is not six numbers.", "Write it as xmin,ymin,zmin,xmax,ymax,zmax.")
    if len(vals) != 6 or not np.all(np.isfinite(vals)):
        raise TMBRBInputError(f"{what} '{text}' must be six finite numbers.",
                              "Write it as xmin,ymin,zmin,xmax,ymax,zmax.")
    return tuple(vals[:3]), tuple(vals[3:])
