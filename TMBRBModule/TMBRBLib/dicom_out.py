"""A scored case back as DICOM: a Segmentation, the CAM as a Parametric Map and a TID 1500 structured report.

The three objects reference the source CT series (its study, series and frame of reference UIDs, and each slice they
cover), get new series UIDs, and carry only the patient and study attributes the source slices already hold
(highdicom copies them from the source). Needs the optional package ``highdicom`` (``pip install tmbrb[dicom]``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import TMBRBInputError

PathLike = Union[str, os.PathLike]

DICOM_OUT_NAMES = ("seg.dcm", "cam_pm.dcm", "report_sr.dcm")
MANUFACTURER = "TMBRB"
# concepts without a standard code get a private coding scheme ("99" prefix, DICOM PS3.16 section 8.2)
PRIVATE_SCHEME = "99TMBRB"
_SERIES_NUMBERS = {"seg": 9901, "pm": 9902, "sr": 9903}


@dataclass
class SourceSeries:
    """The source CT series: its slice headers in the order of the CT volume's z axis, and the CT's grid."""

    datasets: List  # pydicom Datasets without pixel data, slice k of the volume = datasets[k]
    grid: sitk.Image  # the CT volume as TMBRB reads it (same grid as the result's NRRD files)

    @property
    def series_uid(self) -> str:
        """The source SeriesInstanceUID."""
        return str(self.datasets[0].SeriesInstanceUID)


def require_highdicom(python: Tuple[int, int] = None):
    """Import highdicom, or say how to install it (or, on a Python too old for the tested highdicom, why not).

    Parameters
    ----------
    python : tuple of int, optional
        (major, minor) of the running Python; the running one by default.

    Returns
    -------
    module
        highdicom.

    Raises
    ------
    TMBRBInputError
        highdicom is not installed (the optional extra ``dicom``; inside 3D Slicer, Resources/requirements.txt).
    """
    python = tuple(python or sys.version_info[:2])
    try:
        import highdicom  # noqa: F401
    except ImportError:
        if python < (3, 10):
            raise TMBRBInputError(
                f"DICOM export needs highdicom 0.28, which needs Python 3.10 or later; this is Python "
                f"{python[0]}.{python[1]} (as in 3D Slicer 5.8).",
                "Use a 3D Slicer built on Python 3.10 or later, or export from the command line with Python >= 3.10: "
                "tmbrb dicom-export --result <result folder> --ct <DICOM folder> --out <folder>.") from None
        raise TMBRBInputError("DICOM export needs the Python package highdicom, which is not installed.",
                              "Install it: pip install 'tmbrb[dicom]' (or pip install highdicom==0.28.2).") from None
    return highdicom


def is_dicom_input(path: PathLike) -> bool:
    """Whether `path` is a folder holding a DICOM series (what ``--dicom-out`` needs as the CT).

    Parameters
    ----------
    path : str or path-like
        The CT given to ``tmbrb score``.

    Returns
    -------
    bool
        True for a folder in which GDCM finds at least one DICOM series.
    """
    p = Path(path)
    return p.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))


def read_source_series(dicom_dir: PathLike, grid: sitk.Image = None, files: Sequence[str] = None) -> SourceSeries:
    """Read the slice headers and grid of the CT series TMBRB scores in a DICOM folder (its largest series).

    Parameters
    ----------
    dicom_dir : str or path-like
        The DICOM folder given as the CT.
    grid : SimpleITK.Image, optional
        The CT as already read from this folder (``io.read_ct``): its pixels are then not read again.
    files : sequence of str, optional
        The series' files as already found (``io.dicom_series_files``): the folder is then not scanned again.

    Returns
    -------
    SourceSeries

    Raises
    ------
    TMBRBInputError
        The folder holds no DICOM series, or its slices lack the UIDs and geometry a derived object must reference.
    """
    import pydicom

    from .io import dicom_series_files, read_image

    folder = Path(dicom_dir)
    files = list(files) if files else dicom_series_files(folder)
    if not files:
        raise TMBRBInputError(f"'{folder}' is not a folder holding a DICOM series; DICOM export needs the CT's "
                              "DICOM series.", "Give the DICOM folder the case was scored from.")
    if grid is None:
        grid, _ = read_image(folder, "CT")  # the same series and checks as scoring
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    missing = sorted({kw for ds in datasets for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                        "SOPClassUID", "FrameOfReferenceUID",
                                                        "ImagePositionPatient", "ImageOrientationPatient")
                      if kw not in ds})
    if missing:
        raise TMBRBInputError(f"The DICOM slices in '{folder}' lack {', '.join(missing)}, which the DICOM objects "
                              "must reference.", "Export the series again from the scanner or PACS.")
    if len(datasets) != grid.GetSize()[2]:
        raise TMBRBInputError(f"The DICOM series in '{folder}' has {len(datasets)} files for {grid.GetSize()[2]} "
                              "slices (multi-frame files are not supported for export).",
                              "Give a series with one slice per file.")
    return SourceSeries(datasets, grid)


def _read_result(result_dir: Path) -> Dict:
    path = result_dir / "result.json"
    if not path.is_file():
        raise TMBRBInputError(f"'{result_dir}' holds no result.json.",
                              "Give --result the output folder of `tmbrb score`.")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TMBRBInputError(f"'{path}' cannot be read as JSON ({e}).", "Score the case again.") from None
    for name in ("tumour.nrrd", "ring.nrrd", "cam.nrrd"):
        if not (result_dir / name).is_file():
            raise TMBRBInputError(f"'{result_dir}' lacks {name}.", "Score the case again into a new folder.")
    return result


def on_source_grid(path: PathLike, grid: sitk.Image, label: bool) -> np.ndarray:
    """A result volume (mask or CAM) resampled onto the source series' grid, as a (slice, row, column) array.

    Parameters
    ----------
    path : str or path-like
        tumour.nrrd, ring.nrrd or cam.nrrd of a result folder.
    grid : SimpleITK.Image
        The source CT (``SourceSeries.grid``).
    label : bool
        True for a mask (nearest neighbour, uint8 0/1), False for the CAM (linear, float32, clipped to 0-1).

    Returns
    -------
    numpy.ndarray
        Shape (slices, rows, columns) of the source series; slice k lies on its k-th file.
    """
    from .io import read_image, same_grid

    img, _ = read_image(path, "result volume")
    if not same_grid(img, grid):
        img = sitk.Resample(img, grid, sitk.Transform(), sitk.sitkNearestNeighbor if label else sitk.sitkLinear, 0.0,
                            img.GetPixelID() if label else sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    if label:
        return (arr != 0).astype(np.uint8)
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


# a voxel centre this close to a box face counts as inside: boxes drawn on the CT often have faces through voxel
# centres, and DICOM slice positions (and so the grid read from them) are rounded to a few decimals
BOX_FACE_TOLERANCE_MM = 1e-3


def box_on_grid(box: Dict, grid: sitk.Image) -> np.ndarray:
    """The voxels of `grid` whose centres lie inside the result's box (LPS corners, closed to
    ``BOX_FACE_TOLERANCE_MM``), as a uint8 array (z, y, x).

    Parameters
    ----------
    box : dict
        result.json's "box" (``lps_min``, ``lps_max``).
    grid : SimpleITK.Image
        The source CT.

    Returns
    -------
    numpy.ndarray
    """
    from .geometry import Box, index_region_of_box, index_to_physical_matrix

    b = Box.from_corners(box["lps_min"], box["lps_max"])
    lo, hi = index_region_of_box(grid, b)
    out = np.zeros(grid.GetSize()[::-1], np.uint8)
    if np.any(hi <= lo):
        return out
    zz, yy, xx = np.meshgrid(*(np.arange(lo[a], hi[a]) for a in (2, 1, 0)), indexing="ij")
    m, o = index_to_physical_matrix(grid)
    pts = np.stack([xx, yy, zz], -1) @ m.T + o
    tol = BOX_FACE_TOLERANCE_MM
    inside = np.all((pts >= np.asarray(b.min) - tol) & (pts <= np.asarray(b.max) + tol), axis=-1)
    out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = inside
    return out


def covered_slices(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """The contiguous block of slice numbers from the first to the last slice where any volume is not zero.

    Parameters
    ----------
    volumes : sequence of numpy.ndarray
        Arrays (slice, row, column) on the source grid.

    Returns
    -------
    numpy.ndarray
        Slice numbers (all slices when every volume is zero). The derived objects hold these slices only: a few
        dozen of a CT's hundreds, so that a 512x512x300 CT's CAM map is not a 300 MB file of zeros.
    """
    hit = np.flatnonzero(np.any([v.reshape(v.shape[0], -1).any(axis=1) for v in volumes], axis=0))
    if hit.size == 0:
        return np.arange(volumes[0].shape[0])
    return np.arange(hit.min(), hit.max() + 1)


def _model_flag(result: Dict) -> str:
    """' [MODIFIED MODEL]', ' [PLACEHOLDER MODEL]' or ' [DEMO MODEL]' for the series descriptions ('' otherwise): a
    bundle that fails its checksums is flagged first, as in every other output."""
    m = result.get("model", {})
    if m.get("modified"):
        return " [MODIFIED MODEL]"
    return " [PLACEHOLDER MODEL]" if m.get("placeholder") else (" [DEMO MODEL]" if m.get("demo") else "")


def _description(text: str, result: Dict) -> str:
    """A series description (at most 64 characters) that says when the model is a demo or a placeholder."""
    flag = _model_flag(result)
    return text[:64 - len(flag)] + flag


def _private(value: str, meaning: str):
    import highdicom as hd
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, meaning)


def _algorithm(result: Dict):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    m = result.get("model", {})
    return hd.AlgorithmIdentificationSequence(
        name=str(m.get("name", "TMBRB"))[:64], family=codes.DCM.ArtificialIntelligence,
        version=str(m.get("version", "?"))[:64], source=f"TMBRB {__version__}",
        parameters={"model_id": str(m.get("model_id", "")), "sha256": str(m.get("sha256", ""))})


def _common(result: Dict, kind: str) -> Dict:
    from pydicom.uid import generate_uid
    return dict(series_instance_uid=generate_uid(), series_number=_SERIES_NUMBERS[kind],
                sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER)


def _segment_algorithm_types(result: Dict) -> Tuple[str, str]:
    """(tumour, box) algorithm types: a mask or box the user gave is MANUAL, an edited proposal SEMIAUTOMATIC."""
    source = (result.get("tumour_mask") or {}).get("source", "proposed")
    tumour = {"given": "MANUAL", "proposed_edited": "SEMIAUTOMATIC"}.get(source, "AUTOMATIC")
    box = "AUTOMATIC" if (result.get("box") or {}).get("proposed") else "MANUAL"
    return tumour, box


def build_segmentation(src: SourceSeries, masks: Sequence[np.ndarray], result: Dict):
    """The DICOM Segmentation (BINARY) of the tumour, the peritumoral ring and the box on the source slices.

    Parameters
    ----------
    src : SourceSeries
    masks : sequence of 3 numpy.ndarray
        Tumour, ring and box on the source grid (``on_source_grid``, ``box_on_grid``).
    result : dict
        result.json.

    Returns
    -------
    highdicom.seg.Segmentation
        Its frames are the source slices from the first to the last one any segment touches (``covered_slices``).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    tumour_type, box_type = _segment_algorithm_types(result)
    ring_mm = (result.get("attention") or {}).get("ring_width_mm", "")
    spatial = hd.sr.CodedConcept("309825002", "SCT", "Spatial and Relational Concept")
    specs = [("Tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, tumour_type,
              (0.0, 255.0, 102.0)),
             (f"Peritumoral ring {ring_mm:g} mm" if isinstance(ring_mm, (int, float)) else "Peritumoral ring",
              spatial, _private("RING", "Peritumoral ring"), "AUTOMATIC", (51.0, 204.0, 255.0)),
             ("Model input box", spatial, _private("BOX", "Model input box"), box_type, (255.0, 212.0, 0.0))]
    descriptions = []
    for number, (label, category, kind, algo, rgb) in enumerate(specs, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=algo,
            algorithm_identification=None if algo == "MANUAL" else _algorithm(result),
            tracking_uid=hd.UID(), tracking_id=f"TMBRB {label}"[:64],
            display_color=hd.color.CIELabColor.from_rgb(*rgb)))  # the colours of the PNG overlays
    frames = covered_slices(masks)
    pixels = np.stack([m[frames] for m in masks], axis=-1).astype(np.uint8)  # (frames, rows, columns, segments)
    seg = hd.seg.Segmentation(
        source_images=[src.datasets[k] for k in frames], pixel_array=pixels, segmentation_type="BINARY",
        segment_descriptions=descriptions, manufacturer_model_name="TMBRB", software_versions=__version__,
        device_serial_number="none", content_label="TMBRB", content_description="TMBRB tumour, ring, box",
        **_common(result, "seg"))
    seg.SeriesDescription = _description("TMBRB segmentation: tumour, peritumoral ring, box", result)
    return seg


def _cam_method(result: Dict) -> str:
    cam = (result.get("model") or {}).get("cam") or {}
    return f"{cam.get('method', 'GradCAM')} for High-TMB at {cam.get('target_layer', '?')}"


def build_parametric_map(src: SourceSeries, cam: np.ndarray, result: Dict):
    """The class activation map as a float Parametric Map (0-1) on the source slices it covers.

    Parameters
    ----------
    src : SourceSeries
    cam : numpy.ndarray
        The CAM on the source grid (``on_source_grid(..., label=False)``), values 0-1.
    result : dict
        result.json.

    Returns
    -------
    highdicom.pm.ParametricMap
        Its frames are the source slices from the first to the last where the CAM is not zero
        (``covered_slices``); the CAM is zero on the others.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frames = covered_slices([cam])
    method = _cam_method(result)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="TMBRB CAM", lut_explanation=f"Class activation map, {method}"[:64], unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
    pm = hd.pm.ParametricMap(
        source_images=[src.datasets[k] for k in frames], pixel_array=cam[frames].astype(np.float32),
        manufacturer_model_name="TMBRB", software_versions=__version__, device_serial_number="none",
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="TMBRB_CAM",
        content_description=f"CAM 0-1: {method}"[:64], **_common(result, "pm"))
    cam_name = ((result.get("model") or {}).get("cam") or {}).get("method", "GradCAM")
    pm.SeriesDescription = _description(f"TMBRB CAM ({cam_name}), 0-1", result)
    pm.DerivationDescription = (f"TMBRB {__version__} class activation map ({method}), normalised to 0-1, "
                                f"resampled onto the source CT grid. {result.get('notice', '')}")[:1024]
    return pm


def _measurements(result: Dict) -> List[Tuple[str, str, float]]:
    """(code, meaning, value) of each number the report holds, taken from result.json."""
    tta = result.get("tta") or {}
    risk = result.get("risk") or {}
    att = result.get("attention") or {}
    rows = [("SCORE", "TMBRB score (probability of High-TMB)", result["score"]),
            ("SPREADMEAN", "TMBRB score mean over shifted boxes", tta.get("mean")),
            ("SPREADSD", "TMBRB score SD over shifted boxes", tta.get("std")),
            ("SPREADN", "Number of boxes in the score spread", tta.get("n"))]
    cal = result.get("calibration") or {}
    if cal.get("available"):
        rows.append(("CALPROB", "TMBRB calibrated probability", cal.get("probability")))
    if risk.get("ecog") is not None:
        rows.append(("ECOG", "ECOG performance status", risk["ecog"]))
    for ep, name in (("os", "OS"), ("pfs", "PFS")):
        combined = (risk.get("ecog_combined") or {}).get(ep)
        if combined:
            rows.append((f"{name}RH", f"{name} relative hazard (TMBRB and ECOG)", combined["relative_hazard"]))
    for region in ("tumour", "ring", "elsewhere"):
        if region in att:
            rows.append((f"ATT{region.upper()}", f"CAM attention share, {region}", att[region]))
    return [(c, m, float(v)) for c, m, v in rows if v is not None]


def _risk_evaluations(result: Dict):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    out = []
    for ep, name in (("os", "Overall survival"), ("pfs", "Progression-free survival")):
        group = ((result.get("risk") or {}).get(ep) or {}).get("group")
        if group in ("high", "low"):
            value = codes.SCT.HighRisk if group == "high" else codes.SCT.LowRisk
            out.append(hd.sr.QualitativeEvaluation(_private(f"{ep.upper()}GROUP", f"{name} risk group (TMBRB)"),
                                                   value))
    return out


def _notes(result: Dict) -> List[str]:
    """Free-text lines of the report: the notices, the model's identity and the score's definition."""
    m = result.get("model") or {}
    lines = [str(result.get("notice", "")), f"Model: {m.get('name', '')} {m.get('version', '')} "
             f"({m.get('model_id', '')}), sha256 {m.get('sha256', '')}",
             str(result.get("score_definition", "")), f"Written by TMBRB {__version__}."]
    if m.get("demo") or m.get("placeholder"):
        lines.insert(0, str(m.get("notice", "demo model")))
    if m.get("modified"):
        lines.insert(0, str((m.get("integrity") or {}).get("message")
                            or "MODIFIED BUNDLE: its files do not match its checksums"))
    for ep in ("os", "pfs"):
        r = (result.get("risk") or {}).get(ep) or {}
        if r.get("rule"):
            lines.append(f"{ep.upper()} rule: {r['rule']}; this case: {r.get('group')} risk")
    return [line for line in lines if line.strip()]


def build_report(src: SourceSeries, result: Dict, derived: Sequence = ()):
    """A TID 1500 measurement report (Comprehensive 3D SR) of the score, its spread, risk groups and attention.

    Parameters
    ----------
    src : SourceSeries
    result : dict
        result.json.
    derived : sequence of pydicom Datasets
        The Segmentation and Parametric Map, referenced as evidence.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Its measurement group holds the numbers (private codes, scheme 99TMBRB) with the model as algorithm
        identification (name, version, sha256); a Qualitative Evaluations container holds the research-use notice.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    m = result.get("model") or {}
    algorithm = hd.sr.AlgorithmIdentification(name=str(m.get("name", "TMBRB"))[:64],
                                              version=str(m.get("version", "?"))[:64],
                                              parameters=[f"sha256={m.get('sha256', '')}",
                                                          f"model_id={m.get('model_id', '')}"])
    measurements = [hd.sr.Measurement(name=_private(code, meaning), value=value, unit=codes.UCUM.NoUnits,
                                      algorithm_id=algorithm) for code, meaning, value in _measurements(result)]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="TMBRB case"),
        algorithm_id=algorithm, measurements=measurements, qualitative_evaluations=_risk_evaluations(result))
    observer = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="TMBRB", manufacturer_name=MANUFACTURER, model_name=str(m.get("model_id", ""))[:64])))
    report = hd.sr.MeasurementReport(observation_context=observer, procedure_reported=codes.SCT.ComputedTomography,
                                     imaging_measurements=[group])
    notes = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    notes.ContentSequence = [hd.sr.TextContentItem(name=codes.DCM.Comment, value=line[:1024],
                                                   relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
                             for line in _notes(result)]
    report[0].ContentSequence.append(notes)
    sr = hd.sr.Comprehensive3DSR(evidence=list(src.datasets) + list(derived), content=report[0],
                                 is_complete=True, **_common(result, "sr"))
    sr.SeriesDescription = _description("TMBRB report: score, risk groups, attention", result)
    return sr


def export_dicom(result_dir: PathLike, dicom_dir: PathLike, out_dir: PathLike, grid: sitk.Image = None,
                 files: Sequence[str] = None) -> Dict[str, Path]:
    """Write the Segmentation, Parametric Map and structured report of a scored DICOM case.

    Parameters
    ----------
    result_dir : str or path-like
        The output folder of ``tmbrb score`` (result.json, tumour.nrrd, ring.nrrd, cam.nrrd).
    dicom_dir : str or path-like
        The DICOM series folder the case was scored from.
    out_dir : str or path-like
        Where seg.dcm, cam_pm.dcm and report_sr.dcm are written (created when missing).
    grid, files : optional
        The CT and its slice files as the caller already read them from `dicom_dir` (``tmbrb score --dicom-out``):
        passed to :func:`read_source_series`, so the series is not read again.

    Returns
    -------
    dict
        "seg", "pm", "sr" -> the written files.

    Raises
    ------
    TMBRBInputError
        highdicom is missing, the result folder is incomplete, the DICOM folder is not the series (its grid differs
        from the result's), or an output would replace an input.
    """
    require_highdicom()
    result_dir, out = Path(result_dir), check_dicom_out_dir(out_dir, dicom_dir, [result_dir])
    result = _read_result(result_dir)
    src = read_source_series(dicom_dir, grid, files)
    _check_same_ct(result, src.grid, dicom_dir)
    masks = [on_source_grid(result_dir / f"{n}.nrrd", src.grid, label=True) for n in ("tumour", "ring")]
    masks.append(box_on_grid(result["box"], src.grid))
    cam = on_source_grid(result_dir / "cam.nrrd", src.grid, label=False)
    seg = build_segmentation(src, masks, result)
    pm = build_parametric_map(src, cam, result)
    sr = build_report(src, result, derived=[seg, pm])
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, ds, name in (("seg", seg, "seg.dcm"), ("pm", pm, "cam_pm.dcm"), ("sr", sr, "report_sr.dcm")):
        path = out / name
        if path.is_symlink():  # a planted link would send the write elsewhere
            path.unlink()
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the notices' dashes, any name the source holds
        ds.save_as(path, enforce_file_format=True)
        written[key] = path
    return written


def check_dicom_out_dir(out_dir: PathLike, dicom_dir: PathLike, inputs: Sequence = ()) -> Path:
    """Refuse an output folder for the DICOM objects that is (or lies in) the DICOM input folder, or that cannot be
    written (``outputs.check_out_dir``).

    Parameters
    ----------
    out_dir : str or path-like
        The folder for seg.dcm, cam_pm.dcm and report_sr.dcm.
    dicom_dir : str or path-like
        The source series folder.
    inputs : sequence of paths
        Other inputs of the run.

    Returns
    -------
    Path
        `out_dir`, checked (TMBRBInputError otherwise).
    """
    from .outputs import check_out_dir

    out, src = Path(out_dir).resolve(), Path(dicom_dir).resolve()
    if out == src or src in out.parents:
        raise TMBRBInputError(f"--dicom-out '{out_dir}' is the DICOM input folder (or lies in it): the new objects "
                              "would join the source series' files.", "Give --dicom-out another folder.")
    return check_out_dir(out_dir, [dicom_dir, *inputs], names=DICOM_OUT_NAMES, option="--dicom-out")


def _check_same_ct(result: Dict, grid: sitk.Image, dicom_dir: PathLike) -> None:
    """Refuse a DICOM series whose grid is not the one the result was computed on (another series or patient)."""
    ct = result.get("ct") or {}
    size = ct.get("size_xyz")
    if size is None:
        return
    same = (list(size) == list(grid.GetSize())
            and np.allclose(ct.get("spacing_mm", grid.GetSpacing()), grid.GetSpacing(), atol=1e-3)
            and np.allclose(ct.get("origin_lps", grid.GetOrigin()), grid.GetOrigin(), atol=1e-2))
    if not same:
        raise TMBRBInputError(f"The DICOM series in '{dicom_dir}' (size {list(grid.GetSize())}) is not the CT the "
                              f"result was computed on (size {list(size)}).",
                              "Give the DICOM folder the case was scored from.")


def write_ct_series(ct: sitk.Image, folder: PathLike, patient: Tuple[str, str] = ("TMBRB^Phantom", "PHANTOM"),
                    study_uid: str = "", frame_uid: str = "") -> List:
    """Write a CT volume (HU) as a DICOM CT Image Storage series, one file per slice (for phantoms and tests).

    Parameters
    ----------
    ct : SimpleITK.Image
        A 3D CT in HU (values are rounded to int16).
    folder : str or path-like
        Created when missing; files ct000.dcm, ct001.dcm ...
    patient : (str, str)
        Patient's name and ID written on every slice (a phantom's, never a person's).
    study_uid, frame_uid : str
        Study and frame of reference UIDs (new ones when empty).

    Returns
    -------
    list of pydicom.Dataset
        The slices, in the order of the volume's z axis.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    arr = np.clip(np.rint(sitk.GetArrayFromImage(ct)), -32768, 32767).astype(np.int16)
    d = np.array(ct.GetDirection()).reshape(3, 3)
    uids = dict(StudyInstanceUID=study_uid or generate_uid(), SeriesInstanceUID=generate_uid(),
                FrameOfReferenceUID=frame_uid or generate_uid())
    slices = []
    for k in range(arr.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient[0], patient[1], "", "O"
        for key, uid in uids.items():
            setattr(ds, key, uid)
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", "CT", "TMBRB phantom"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [round(v, 4) for v in ct.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in list(d[:, 0]) + list(d[:, 1])]
        ds.PixelSpacing = [ct.GetSpacing()[1], ct.GetSpacing()[0]]
        ds.SliceThickness = ct.GetSpacing()[2]
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = arr[k].tobytes()
        ds.save_as(out_dir / f"ct{k:03d}.dcm", enforce_file_format=True)
        slices.append(ds)
    return slices
