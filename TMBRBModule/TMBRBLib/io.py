"""Reading and checking CT volumes and masks (SimpleITK)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import TMBRBInputError, numbers_text

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")


def _read_dicom_series(folder: Path) -> Tuple[sitk.Image, List[str]]:
    warnings: List[str] = []
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise TMBRBInputError(f"The folder '{folder}' holds no DICOM series.",
                              "Give a NRRD/NIfTI/MHA file or a folder with the DICOM files of one CT series.")
    files_by_series = {s: reader.GetGDCMSeriesFileNames(str(folder), s) for s in series}
    best = max(files_by_series, key=lambda s: len(files_by_series[s]))
    if len(series) > 1:
        warnings.append(f"The DICOM folder holds {len(series)} series; used the largest ({best}, "
                        f"{len(files_by_series[best])} files). Give a folder with one series to choose.")
    reader.SetFileNames(files_by_series[best])
    return reader.Execute(), warnings


_ITK_OBJECT = re.compile(r"^\w+\(0x[0-9a-fA-F]+\):\s*")
_NRRD_DETAIL = re.compile(r"^\[\w+\]\s*\w+:\s*")


def itk_reason(error: Exception, path: PathLike) -> str:
    """The reason in an ITK/SimpleITK error, not its source location; the path shown as its file name.

    >>> itk_reason(RuntimeError('Exception thrown in ReadImage: /src/a.cxx:99:\\nsitk::ERROR: Unable to '
    ...                         'determine ImageIO reader for "/tmp/x/up.txt"'), "/tmp/x/up.txt")
    'Unable to determine ImageIO reader for "up.txt"'
    """
    lines = [ln.strip() for ln in str(error).replace(str(path), Path(path).name).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "ERROR:" in ln:
            reason = _ITK_OBJECT.sub("", ln.split("ERROR:", 1)[1].strip())
            if i < len(lines) - 1:  # the library's last line says what was wrong (e.g. NRRD's header check)
                reason = reason.rstrip(":") + f": {_NRRD_DETAIL.sub('', lines[-1])}"
            return reason
    useful = [ln for ln in lines if not ln.startswith("Exception thrown")]
    return (useful or lines or ["unknown reason"])[-1]


MIN_SPACING_MM = 0.1  # no clinical CT has finer voxels; a header in cm or m gives 0.05 or 0.0005
MAX_VOXELS = 2**30  # 1.07e9 voxels (2 GiB as int16): 512 x 512 x 4096, far above any chest CT


def check_declared_size(path: PathLike, what: str = "CT") -> None:
    """Refuse a file whose header declares an image too large to read, before reading its voxels.

    Parameters
    ----------
    path : path-like
        An image file SimpleITK reads.
    what : str
        The name used in the message ("CT", "segmentation").

    Raises
    ------
    TMBRBInputError
        When the declared voxel count (times components) exceeds MAX_VOXELS.
    RuntimeError
        From SimpleITK when the header cannot be read (read_image turns it into a message).
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = tuple(int(v) for v in reader.GetSize())
    n = int(np.prod(size, dtype=np.float64)) * max(1, int(reader.GetNumberOfComponents()))
    if n > MAX_VOXELS:
        raise TMBRBInputError(
            f"The {what} '{Path(path).name}' declares {' x '.join(map(str, size))} voxels "
            f"({n / 1e9:.1f} billion values); the limit is {MAX_VOXELS / 1e9:.2f} billion.",
            "Check the file's header; a chest CT is about 512 x 512 x 100-1000 voxels.")


def read_image(path: PathLike, what: str = "CT") -> Tuple[sitk.Image, List[str]]:
    """Read an image file or a DICOM folder. Raises TMBRBInputError with a clear message on failure."""
    p = Path(path)
    if not p.exists():
        raise TMBRBInputError(f"The {what} '{p}' does not exist.", "Check the path.")
    if not (p.is_dir() or p.is_file()):  # a FIFO or a device would block or never end
        raise TMBRBInputError(f"The {what} '{p}' is not a regular file or folder (a pipe, socket or device).",
                              "Give a NRRD, NIfTI or MHA file, or a DICOM series folder.")
    try:
        if p.is_dir():
            return _read_dicom_series(p)
        check_declared_size(p, what)
        return sitk.ReadImage(str(p)), []
    except TMBRBInputError:
        raise
    except RuntimeError as e:
        raise TMBRBInputError(
            f"Could not read the {what} '{p}' ({itk_reason(e, p)}).",
            "Give a NRRD, NIfTI (.nii/.nii.gz), MHA file or a DICOM series folder that is not damaged.") from None


def validate_ct(ct: sitk.Image, name: str = "CT") -> List[str]:
    """Check that an image is a usable 3D CT in Hounsfield units. Returns warnings; raises on what cannot work."""
    warnings: List[str] = []
    if ct.GetDimension() != 3:
        raise TMBRBInputError(f"The {name} is {ct.GetDimension()}D; TMBRB needs a 3D CT volume.",
                              "Load the whole CT series (all slices), not a single image.")
    if ct.GetNumberOfComponentsPerPixel() != 1:
        raise TMBRBInputError(f"The {name} has {ct.GetNumberOfComponentsPerPixel()} components per voxel "
                              "(colour or vector image); a CT has one.", "Load the CT itself, not a screenshot or RGB export.")
    size = ct.GetSize()
    if min(size) < 2:
        raise TMBRBInputError(f"The {name} has only {min(size)} slice along one axis (size {size}): it is a 2D image.",
                              "Load the whole CT series (all slices), not a single image.")
    spacing = np.array(ct.GetSpacing())
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise TMBRBInputError(f"The {name} has an invalid voxel spacing {numbers_text(spacing)}.", "Fix the file's header.")
    arr = sitk.GetArrayViewFromImage(ct)
    if np.issubdtype(arr.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        if n_bad:
            raise TMBRBInputError(f"The {name} has {n_bad} voxels that are NaN or infinite.",
                                  "Re-export the CT from the scanner/PACS, or replace them (e.g. by -1000 HU) first.")
    # Hounsfield check on a subsample: air (about -1000 HU) must be present, values in the CT range.
    step = max(1, int(round((arr.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(arr[::step, ::step, ::step], dtype=np.float32).ravel()
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if lo > -500 or hi > 5000 or lo < -3100:
        raise TMBRBInputError(
            f"The {name}'s intensities do not look like CT Hounsfield units (0.5th percentile {lo:.0f}, 99.5th {hi:.0f}; "
            "a chest CT has air near -1000 HU).",
            "Use a CT in HU: an MR image cannot be scored, and raw CT values need the DICOM rescale slope/intercept applied.")
    if spacing.min() < MIN_SPACING_MM:
        raise TMBRBInputError(
            f"The {name}'s voxel spacing {numbers_text(spacing, 3)} mm is too fine for a CT "
            f"(under {MIN_SPACING_MM} mm): the header is probably in centimetres or metres.",
            "Fix the spacing in the file's header (a chest CT has 0.5-1 mm pixels and 0.6-5 mm slices).")
    if spacing.max() > 3.0:
        warnings.append(f"{spacing.max():g} mm slices: outside the training range of most models (0.6-3 mm); "
                        "the score is less reliable.")
    if spacing.max() > 10:
        raise TMBRBInputError(f"The {name}'s voxel spacing {numbers_text(spacing, 3)} mm is too coarse for a 3D model.",
                              "Use a reconstruction with slices of 5 mm or thinner.")
    return warnings


def read_ct(path: PathLike) -> Tuple[sitk.Image, List[str]]:
    """Read and validate a CT (file or DICOM folder). Returns (image, warnings)."""
    ct, warnings = read_image(path, "CT")
    warnings += validate_ct(ct)
    return ct, warnings


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 10)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def read_mask(path: PathLike, ct: sitk.Image) -> sitk.Image:
    """Read a tumour mask and put it on the CT's grid (nearest neighbour when it is on another grid)."""
    m, _ = read_image(path, "segmentation")
    return mask_on_ct_grid(m, ct)


def mask_on_ct_grid(mask: sitk.Image, ct: sitk.Image, name: str = "segmentation") -> sitk.Image:
    if mask.GetDimension() != 3:
        raise TMBRBInputError(f"The {name} is {mask.GetDimension()}D; it must be a 3D label volume.",
                              "Give the tumour label map saved from the same CT.")
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise TMBRBInputError(f"The {name} has several components per voxel.", "Give a single-label map (0 = background).")
    if not same_grid(mask, ct):
        mask = sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    out = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(out)):
        raise TMBRBInputError(f"The {name} is empty where it overlaps the CT (no non-zero voxel).",
                              "Check that the label belongs to this CT (same patient and frame of reference).")
    return out


def write_image(img: sitk.Image, path: PathLike, compress: bool = True) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(p), useCompression=compress)
    return p


def array_to_image(arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return img


def sub_image_info(ref: sitk.Image, lo, hi) -> sitk.Image:
    """An empty image (1 byte/voxel) with the geometry of ref's index region [lo, hi)."""
    size = [int(h - l) for l, h in zip(lo, hi)]
    img = sitk.Image(size, sitk.sitkUInt8)
    img.SetSpacing(ref.GetSpacing())
    img.SetDirection(ref.GetDirection())
    img.SetOrigin(ref.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    return img


def paste_region(arr_full: np.ndarray, sub: np.ndarray, lo) -> None:
    """Write a sub-array (z, y, x) into a full array at index offset lo (x, y, z)."""
    z0, y0, x0 = int(lo[2]), int(lo[1]), int(lo[0])
    arr_full[z0:z0 + sub.shape[0], y0:y0 + sub.shape[1], x0:x0 + sub.shape[2]] = sub


