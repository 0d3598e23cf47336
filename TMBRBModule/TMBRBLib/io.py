"""Reading and checking CT volumes and masks (SimpleITK)."""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import TMBRBInputError, numbers_text

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")


def _first_names(names: List[str], n: int = 3) -> str:
    """'a, b, c and 4 more': the first ``n`` of the sorted names, for a message."""
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _refuse_special_files(folder: Path) -> None:
    """A pipe, socket or device among a DICOM folder's entries would block GDCM's scan of the folder: name it."""
    special = []
    for entry in os.scandir(folder):
        try:
            if not (entry.is_file() or entry.is_dir()):  # follows links: a link to a pipe counts too
                special.append(entry.name)
        except OSError:
            special.append(entry.name)
    if special:
        raise TMBRBInputError(
            f"The DICOM folder '{folder}' holds {len(special)} entry(ies) that are not regular files "
            f"({_first_names(special)}: a pipe, socket or device); reading the folder would block.",
            "Copy the slice files of the series into a folder of their own.")


def _files_by_series(folder: Path) -> dict:
    """GDCM's scan of a DICOM folder: series UID -> its files in slice order (empty when it holds no series)."""
    reader = sitk.ImageSeriesReader()
    return {s: reader.GetGDCMSeriesFileNames(str(folder), s) for s in reader.GetGDCMSeriesIDs(str(folder))}


def _largest_series(files_by_series: dict) -> str:
    """The series TMBRB reads from a folder holding several: the one with the most files."""
    return max(files_by_series, key=lambda s: len(files_by_series[s]))


def dicom_series_files(folder: PathLike) -> List[str]:
    """The files of the DICOM series that :func:`read_ct` reads from a folder (its largest series), in slice order.

    Parameters
    ----------
    folder : str or path-like
        A DICOM folder.

    Returns
    -------
    list of str
        The slice files (slice k of the volume is the k-th); empty when the path is not a folder holding a series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    _refuse_special_files(folder)
    by_series = _files_by_series(folder)
    return list(by_series[_largest_series(by_series)]) if by_series else []


def _read_dicom_series(folder: Path) -> Tuple[sitk.Image, List[str]]:
    warnings: List[str] = []
    _refuse_special_files(folder)
    reader = sitk.ImageSeriesReader()
    files_by_series = _files_by_series(folder)
    series = list(files_by_series)
    if not series:
        raise TMBRBInputError(f"The folder '{folder}' holds no DICOM series.",
                              "Give a NRRD/NIfTI/MHA file or a folder with the DICOM files of one CT series.")
    warnings += _refuse_unreadable_dicom_files(folder, files_by_series)
    best = _largest_series(files_by_series)
    if len(series) > 1:
        warnings.append(f"The DICOM folder holds {len(series)} series; used the largest ({best}, "
                        f"{len(files_by_series[best])} files). Give a folder with one series to choose.")
    files = list(files_by_series[best])
    headers = _slice_headers(files)  # each header read once, no pixels
    check_series_size(folder, files, headers)
    check_slice_positions(files, headers)
    reader.SetFileNames(files)
    try:
        return reader.Execute(), warnings
    except RuntimeError as e:
        raise TMBRBInputError(f"Could not read the DICOM series in '{folder}' ({itk_reason(e, folder)}).",
                              "A slice file is damaged: export the series again from the scanner or PACS.") from None


def _is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble ('DICM' at byte 128) or a .dcm name."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


CT_STORAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
_LONG_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN")


def dicom_storage_class(path: PathLike) -> str:
    """The SOP class a DICOM file declares in its file meta information (group 0002), '' when it cannot be read.

    The file meta header is always explicit VR little endian right after the 'DICM' mark, so this needs no DICOM
    library and reads the class even from a file whose data set is cut off."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return ""
    if head[128:132] != b"DICM":
        return ""
    i = 132
    while i + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, i)
        if group != 0x0002:
            break
        vr = head[i + 4:i + 6]
        if vr in _LONG_VRS:
            if i + 12 > len(head):
                break
            length, start = struct.unpack_from("<I", head, i + 8)[0], i + 12
        else:
            length, start = struct.unpack_from("<H", head, i + 6)[0], i + 8
        if element == 0x0002:
            return head[start:start + length].decode("ascii", "replace").strip("\x00 ")
        i = start + length
    return ""


def _refuse_unreadable_dicom_files(folder: Path, files_by_series) -> List[str]:
    """GDCM leaves a damaged slice file out of every series without a word: name it instead.

    A left-out file that declares a CT image class (or whose DICOM header cannot be read) is a damaged slice: refused.
    Other DICOM objects that PACS exports carry along (structured reports, RT structures, presentation states,
    DICOMDIR) are not slices: they are skipped with a warning. Returns the warnings."""
    in_series = {os.path.normcase(os.path.abspath(f)) for files in files_by_series.values() for f in files}
    left_out = sorted(p for p in folder.iterdir()
                      if p.is_file() and os.path.normcase(os.path.abspath(p)) not in in_series and _is_dicom_file(p))
    damaged, other = [], []
    for p in left_out:
        sop_class = dicom_storage_class(p)
        (damaged if not sop_class or sop_class in CT_STORAGE_CLASSES else other).append(p.name)
    if damaged:
        raise TMBRBInputError(
            f"The DICOM folder '{folder}' holds {len(damaged)} file(s) that cannot be read as a slice "
            f"({_first_names(damaged)}): truncated or damaged.",
            "Export the series again from the scanner or PACS, or remove files that do not belong to it.")
    if other:
        return [f"Skipped {len(other)} DICOM file(s) that are not CT images ({_first_names(other)}): "
                "reports, structures or other objects in the series folder."]
    return []


SLICE_GAP_TOLERANCE_MM = 0.01  # slice steps may differ by this, or by SLICE_GAP_TOLERANCE_FRACTION of the step
SLICE_GAP_TOLERANCE_FRACTION = 0.01


def _slice_headers(files: List[str]) -> List[sitk.ImageFileReader]:
    """Each slice file's header (ImageFileReader after ReadImageInformation: no pixels read)."""
    headers = []
    for path in files:
        r = sitk.ImageFileReader()
        r.SetFileName(path)
        try:
            r.ReadImageInformation()
        except RuntimeError as e:
            raise TMBRBInputError(f"The DICOM slice '{Path(path).name}' has an unreadable header "
                                  f"({itk_reason(e, path)}).", "Export the series again from the scanner or PACS.") \
                from None
        headers.append(r)
    return headers


def check_series_size(folder: PathLike, files: List[str], headers: List[sitk.ImageFileReader]) -> None:
    """Refuse a DICOM series whose slices together declare more than MAX_VOXELS values, before reading pixels.

    Parameters
    ----------
    folder : path-like
        The DICOM folder (for the message).
    files : list of str
        The series' slice files.
    headers : list of SimpleITK.ImageFileReader
        Their headers (``ReadImageInformation`` done): rows x columns x frames x components per file.

    Raises
    ------
    TMBRBInputError
        When the sum over the slices exceeds MAX_VOXELS (each slice may be within it: 300 slices declaring
        20000 x 20000 are refused all the same).
    """
    total = 0
    for h in headers:
        total += int(np.prod(h.GetSize(), dtype=np.float64)) * max(1, int(h.GetNumberOfComponents()))
    if total > MAX_VOXELS:
        sizes = sorted({" x ".join(map(str, h.GetSize())) for h in headers})
        raise TMBRBInputError(
            f"The DICOM series in '{Path(folder).name}' declares {total / 1e9:.1f} billion values over "
            f"{len(files)} slice file(s) (sizes {', '.join(sizes[:3])}); the limit is {MAX_VOXELS / 1e9:.2f} "
            "billion.", "Check the series; a chest CT is about 512 x 512 x 100-1000 voxels.")


def _slice_geometry(path: str, r: Optional[sitk.ImageFileReader] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(ImagePositionPatient, slice normal from ImageOrientationPatient) of one DICOM file, from its header."""
    try:
        if r is None:
            r = sitk.ImageFileReader()
            r.SetFileName(path)
            r.ReadImageInformation()
        pos = np.array([float(v) for v in r.GetMetaData("0020|0032").split("\\")])
        iop = np.array([float(v) for v in r.GetMetaData("0020|0037").split("\\")])
    except (RuntimeError, ValueError) as e:  # ITK's "Key '0020|0032' does not exist", or a value that is no number
        raise TMBRBInputError(f"The DICOM slice '{Path(path).name}' has no readable position or orientation "
                              f"({itk_reason(e, path)}).",
                              "Export the series again from the scanner or PACS.") from None
    if pos.size != 3 or iop.size != 6:
        raise TMBRBInputError(f"The DICOM slice '{Path(path).name}' has a malformed position or orientation.",
                              "Export the series again from the scanner or PACS.")
    return pos, np.cross(iop[:3], iop[3:])


def check_slice_positions(files: List[str], headers: Optional[List[sitk.ImageFileReader]] = None) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced along the slice normal (a gap, an uneven step).

    Parameters
    ----------
    files : list of str
        The series' files in the order the reader stacks them (GDCM sorts them by position).
    headers : list of SimpleITK.ImageFileReader, optional
        Their headers already read (:func:`_slice_headers`); None reads them.

    Raises
    ------
    TMBRBInputError
        When two slices share a position, or a step between neighbours differs from the median step by more than
        SLICE_GAP_TOLERANCE_MM or SLICE_GAP_TOLERANCE_FRACTION of it: the message names the two files and the step.
    """
    if len(files) < 3:
        return
    geo = [_slice_geometry(f, None if headers is None else h) for f, h in zip(files, headers or files)]
    normal = geo[0][1]
    z = np.array([float(np.dot(pos, normal)) for pos, _ in geo])
    steps = np.diff(z)
    step = float(np.median(steps))
    tol = max(SLICE_GAP_TOLERANCE_MM, SLICE_GAP_TOLERANCE_FRACTION * abs(step))
    bad = np.flatnonzero(np.abs(steps - step) > tol)
    if abs(step) < SLICE_GAP_TOLERANCE_MM or bad.size == 0:
        if abs(step) < SLICE_GAP_TOLERANCE_MM:
            raise TMBRBInputError(f"The DICOM series has slices at the same position ({Path(files[0]).name}, "
                                  f"{Path(files[1]).name}, ...): it holds several volumes or repeated slices.",
                                  "Give a folder with one CT series, one file per slice.")
        return
    i = int(bad[0])
    gap = float(abs(steps[i]))
    kind = ("a slice is missing" if gap > abs(step) * 1.5 else "the slices are unevenly spaced")
    raise TMBRBInputError(
        f"The DICOM series has uneven slice spacing: {gap:.3g} mm between {Path(files[i]).name} "
        f"(at {z[i]:.2f} mm) and {Path(files[i + 1]).name} (at {z[i + 1]:.2f} mm) where the other slices are "
        f"{abs(step):.3g} mm apart ({bad.size} such step(s)): {kind}. Stacked as they are, the slices would lie at "
        "the wrong positions.",
        "Export the complete series again from the scanner or PACS (all slices, one reconstruction).")


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


# bits per voxel of each NIfTI datatype code: ITK (niftilib) sizes voxels by the datatype, not by bitpix
_NIFTI_BITS = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64,
               1536: 128, 1792: 128, 2048: 256, 2304: 32}


def _nifti_header(head: bytes) -> Tuple[int, int]:
    """(vox_offset, data bytes declared) from the first 540 bytes of a NIfTI-1 or NIfTI-2 file; (0, 0) if neither.

    The bytes a voxel takes come from the datatype code, as ITK reads them (bitpix only for a code it does not know):
    a header whose bitpix disagrees with its datatype is read by the datatype."""
    if len(head) < 4:  # not even the header's size: not a NIfTI (an empty file)
        return 0, 0
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr == 348 and len(head) >= 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
        elif sizeof_hdr == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            offset = int(struct.unpack(endian + "q", head[168:176])[0])
        else:
            continue
        n = int(np.prod([max(1, int(d)) for d in dim[1:1 + max(0, min(int(dim[0]), 7))]], dtype=np.float64))
        return max(offset, sizeof_hdr), n * _NIFTI_BITS.get(int(datatype), max(1, int(bitpix))) // 8
    return 0, 0


def check_nifti_data_size(path: PathLike, what: str = "CT") -> None:
    """Refuse a NIfTI file (.nii, .nii.gz) that holds fewer voxel bytes than its header declares.

    ITK reads a truncated NIfTI with the missing slices as zeros, without a word; NRRD and MetaImage readers refuse.

    Parameters
    ----------
    path : path-like
        A .nii or .nii.gz file (other files are left alone).
    what : str
        The name used in the message ("CT", "segmentation").

    Raises
    ------
    TMBRBInputError
        When the data is shorter than the header's dimensions times the bytes per voxel, or the gzip stream ends
        before its end marker (a .nii.gz cut short).
    """
    p = Path(path)
    name = p.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    opener = gzip.open if name.endswith(".gz") else open
    have = 0
    try:
        with opener(p, "rb") as f:
            head = f.read(540)
            offset, declared = _nifti_header(head)
            if not declared:
                return  # not a NIfTI header: ITK's own reader says why
            have = len(head)
            while have < offset + declared:
                chunk = f.read(1 << 22)
                if not chunk:
                    break
                have += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        raise TMBRBInputError(f"The {what} '{p.name}' is cut short or damaged (its gzip stream: {e}).",
                              "Copy or export the file again; a complete file is needed.") from None
    if have < offset + declared:
        raise TMBRBInputError(
            f"The {what} '{p.name}' is cut short: its header declares {declared} bytes of voxels, the file holds "
            f"{max(0, have - offset)} ({100 * max(0, have - offset) / declared:.0f}%); the missing slices would be "
            "read as zeros.", "Copy or export the file again; a complete file is needed.")


def detached_data_files(path: PathLike) -> List[Path]:
    """The data files a NRRD or MetaImage header names (a detached header keeps its voxels there).

    Patterns ("%d" with a range) are not expanded; ``LIST`` is (one file a line after the key); ``LOCAL`` and an
    attached header name none.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "ct.nhdr").write_text("NRRD0004\\ntype: short\\nsizes: 4 4 4\\ndata file: ct.raw\\n\\n")
    >>> [p.name for p in detached_data_files(d / "ct.nhdr")]
    ['ct.raw']
    """
    p = Path(path)
    values, pattern = _data_file_values(p)
    return [] if pattern else [p.parent / v for v in values]


def _data_file_values(p: Path) -> Tuple[List[str], bool]:
    """The data-file names a NRRD/MetaImage header gives, as written, and whether the one name is a "%d" pattern.

    The header is read line by line to its end (NRRD: the first empty line; MetaImage: the ElementDataFile line,
    its last), whatever its length: ITK reads a header of any length, so a data-file line past a fixed number of
    bytes would escape ``check_data_files_within``. Names are decoded as the file system decodes them
    (``os.fsdecode``), so that a name holding bytes that are not UTF-8 is the file ITK opens, not another one."""
    try:
        f = open(p, "rb")
    except OSError:
        return [], False
    with f:
        raw = f.readline()
        nrrd = raw.startswith(b"NRRD")
        if not (nrrd or p.suffix.lower() in (".mhd", ".mha")):
            return [], False
        while raw:
            line = os.fsdecode(raw.strip())  # as the file system names it: bytes that are not UTF-8 kept, not replaced
            if nrrd and not line:  # the end of a NRRD header
                break
            raw = f.readline()
            key, sep, value = line.partition(":" if nrrd else "=")
            if not sep or key.strip().lower().replace(" ", "") not in ("datafile", "elementdatafile"):
                continue
            value = value.strip()
            first = value.split()[0] if value else ""
            if first.upper() == "LIST":  # one name a line, to the end of the file
                rest = [raw] + f.readlines()
                return [name for name in (os.fsdecode(r.strip()) for r in rest) if name], False
            if not value or first.upper() == "LOCAL":
                return [], False
            return ([first], True) if "%" in value else ([value], False)
    return [], False


def _printable(name: str) -> str:
    """A file name for a message: bytes that are not UTF-8 (kept by ``os.fsdecode``) shown as U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def check_data_files_within(path: PathLike, root: PathLike, what: str = "CT") -> None:
    """Refuse a detached header whose data files (or file pattern) lie outside `root`.

    A NRRD or MetaImage header names the file that holds its voxels; that name may be absolute or climb with `..`.
    Front ends that confine reading to one folder (the browser viewer's uploads and --data-dir) call this so that a
    header cannot make ITK read a file outside it.

    Raises
    ------
    TMBRBInputError
        When a data file resolves outside `root`.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "ct.nhdr").write_text("NRRD0004\\ntype: short\\nsizes: 4 4 4\\ndata file: /etc/hostname\\n\\n")
    >>> check_data_files_within(d / "ct.nhdr", d)
    Traceback (most recent call last):
    ...
    TMBRBLib.errors.TMBRBInputError: The CT 'ct.nhdr' names a data file outside its folder ('/etc/hostname'). ...
    """
    p = Path(path)
    top = Path(root).resolve()
    values, pattern = _data_file_values(p)
    for value in values:
        target = (p.parent / value).resolve()
        if pattern:  # "slice%03d.raw 1 40 1": the files lie in the pattern's folder
            target = target.parent
        try:
            target.relative_to(top)
        except ValueError:
            shown = _printable(value)
            shown = shown if len(shown) <= 120 else shown[:117] + "..."
            raise TMBRBInputError(f"The {what} '{p.name}' names a data file outside its folder ('{shown}').",
                                  "Keep a detached header's data file next to it, or give a .nrrd/.nii.gz/.mha "
                                  "file that holds its voxels.") from None


def read_image(path: PathLike, what: str = "CT", within: Optional[PathLike] = None) -> Tuple[sitk.Image, List[str]]:
    """Read an image file or a DICOM folder. Raises TMBRBInputError with a clear message on failure.

    With `within`, a detached header whose data files lie outside that folder is refused (check_data_files_within).
    """
    p = Path(path)
    if not p.exists():
        raise TMBRBInputError(f"The {what} '{p}' does not exist.", "Check the path.")
    if not (p.is_dir() or p.is_file()):  # a FIFO or a device would block or never end
        raise TMBRBInputError(f"The {what} '{p}' is not a regular file or folder (a pipe, socket or device).",
                              "Give a NRRD, NIfTI or MHA file, or a DICOM series folder.")
    try:
        if p.is_dir():
            return _read_dicom_series(p)
        if within is not None:
            check_data_files_within(p, within, what)
        for data in detached_data_files(p):  # a header whose voxels are in a pipe or device would block too
            if data.exists() and not data.is_file():
                raise TMBRBInputError(f"The {what} '{p.name}' keeps its voxels in '{_printable(data.name)}', which is not a "
                                      "regular file (a pipe, socket or device).",
                                      "Give a NRRD, NIfTI or MHA file, or a DICOM series folder.")
        check_declared_size(p, what)
        check_nifti_data_size(p, what)
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
    check_field_of_view(size, spacing, name)
    return warnings


MIN_EXTENT_MM = 10.0  # a scan thinner than 1 cm along an axis holds no tumour with its context
MAX_EXTENT_MM = 2000.0  # a whole-body CT is under 2 m long; more means a header in other units


def check_field_of_view(size, spacing, name: str = "CT") -> None:
    """Refuse a scan whose extent (voxels x spacing) along an axis is under MIN_EXTENT_MM or over MAX_EXTENT_MM.

    Examples
    --------
    >>> check_field_of_view((512, 512, 300), (0.7, 0.7, 1.0))
    >>> check_field_of_view((512, 512, 3), (0.7, 0.7, 1.0))
    Traceback (most recent call last):
    ...
    TMBRBLib.errors.TMBRBInputError: The CT covers (358.4, 358.4, 3) mm: under 10 mm along an axis is not a chest CT ...
    """
    extent = np.asarray(size, float) * np.asarray(spacing, float)
    if extent.min() < MIN_EXTENT_MM or extent.max() > MAX_EXTENT_MM:
        limit = f"under {MIN_EXTENT_MM:g} mm" if extent.min() < MIN_EXTENT_MM else f"over {MAX_EXTENT_MM / 1000:g} m"
        raise TMBRBInputError(
            f"The {name} covers {numbers_text(extent, 4)} mm: {limit} along an axis is not a chest CT (size "
            f"{tuple(int(v) for v in size)} voxels of {numbers_text(spacing, 3)} mm).",
            "Check the voxel spacing in the file's header (mm), and that the whole series was loaded.")


def read_ct(path: PathLike, within: Optional[PathLike] = None) -> Tuple[sitk.Image, List[str]]:
    """Read and validate a CT (file or DICOM folder). Returns (image, warnings).

    `within`: a folder that a detached header's data files must not leave (see read_image)."""
    ct, warnings = read_image(path, "CT", within=within)
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
    check_label_map(mask, name)
    if not same_grid(mask, ct):
        mask = sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    out = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(out)):
        raise TMBRBInputError(f"The {name} is empty where it overlaps the CT (no non-zero voxel).",
                              "Check that the label belongs to this CT (same patient and frame of reference).")
    return out


MAX_LABELS = 255  # a label map with more distinct values than this besides 0 (background) is an image, not labels


def check_label_map(mask: sitk.Image, name: str = "segmentation") -> None:
    """Refuse an image that is not a label map: its values must be whole numbers from 0 up, at most MAX_LABELS of them
    besides 0 (the background).

    A CT passed as the segmentation would otherwise count every voxel that is not exactly 0 HU as tumour.

    Parameters
    ----------
    mask : SimpleITK.Image
        The segmentation as read.
    name : str
        How the message names it.

    Raises
    ------
    TMBRBInputError
        On negative or fractional values, or more than MAX_LABELS distinct values besides 0 (counted on a subsample):
        0-255 is accepted, and so are 255 labels spread over a wider range; 1-256 is refused.
    """
    arr = sitk.GetArrayViewFromImage(mask)
    lo, hi = float(arr.min()), float(arr.max())
    fractional = np.issubdtype(arr.dtype, np.floating) and bool(np.any(np.mod(arr[::2, ::2, ::2], 1) != 0))
    many = False
    if hi - lo >= MAX_LABELS:  # else at most MAX_LABELS whole values besides 0 fit between lo and hi
        step = max(1, int(round((arr.size / 4_000_000) ** (1 / 3))))
        many = np.count_nonzero(np.unique(arr[::step, ::step, ::step])) > MAX_LABELS
    if lo < 0 or fractional or many:
        why = ("negative values" if lo < 0 else "values that are not whole numbers" if fractional
               else f"more than {MAX_LABELS} distinct values")
        raise TMBRBInputError(
            f"The {name} is not a label map: it holds {why} (from {lo:g} to {hi:g}), as an image such as a CT does.",
            "Give the tumour label map (0 = background, 1 or another whole number = tumour), not the CT itself.")


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


