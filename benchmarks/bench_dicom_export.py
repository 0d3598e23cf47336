"""DICOM export benchmark (not a test): highdicom (what TMBRB uses) vs dcmqi's converters, on a phantom chest CT.

    .venv/bin/python benchmarks/bench_dicom_export.py [--slices 150] [--runs 3]

Writes a 512x512xN phantom as a DICOM series, scores it once with the bundled demo model, then prints the median
over runs of: tmbrb's whole export (SEG + PM + SR), each highdicom object alone, and dcmqi's itkimage2segimage /
itkimage2paramap on the same masks and CAM (when dcmqi is installed), with the files' sizes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "TMBRBModule")]

from TMBRBLib import dicom_out as do  # noqa: E402
from TMBRBLib.cli import main as tmbrb  # noqa: E402
from bench_engine import median_time  # noqa: E402 - the benchmarks' shared timer (this folder is on sys.path)


def _code(value, scheme, meaning):
    return {"CodeValue": value, "CodingSchemeDesignator": scheme, "CodeMeaning": meaning}


def dcmqi_seg_meta():
    """dcmqi's JSON for the same three segments (one label file each)."""
    spatial = _code("309825002", "SCT", "Spatial and Relational Concept")
    segs = [("Tumour", _code("49755003", "SCT", "Morphologically Abnormal Structure"),
             _code("108369006", "SCT", "Neoplasm")),
            ("Peritumoral ring", spatial, _code("RING", "99TMBRB", "Peritumoral ring")),
            ("Model input box", spatial, _code("BOX", "99TMBRB", "Model input box"))]
    return {"ContentCreatorName": "TMBRB", "SeriesDescription": "TMBRB segmentation", "SeriesNumber": "9901",
            "InstanceNumber": "1", "ContentLabel": "TMBRB", "ContentDescription": "TMBRB tumour, ring, box",
            "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
            "ClinicalTrialCoordinatingCenterName": "TMBRB", "BodyPartExamined": "CHEST",
            "segmentAttributes": [[{"labelID": 1, "SegmentDescription": label, "SegmentLabel": label,
                                    "SegmentAlgorithmType": "AUTOMATIC", "SegmentAlgorithmName": "TMBRB",
                                    "SegmentedPropertyCategoryCodeSequence": cat,
                                    "SegmentedPropertyTypeCodeSequence": typ}] for label, cat, typ in segs]}


def dcmqi_pm_meta():
    return {"SeriesDescription": "TMBRB CAM", "SeriesNumber": "9902", "InstanceNumber": "1",
            "BodyPartExamined": "CHEST", "DerivedPixelContrast": "GRADCAM",
            "QuantityValueCode": _code("CAM", "99TMBRB", "Class activation map"),
            "MeasurementUnitsCode": _code("1", "UCUM", "no units"),
            "MeasurementMethodCode": _code("CAM", "99TMBRB", "GradCAM-IxG"),
            "DerivationCode": _code("CAM", "99TMBRB", "Class activation map"),
            "SourceImageDiffusionBValues": [], "RealWorldValueSlope": 1.0, "RealWorldValueIntercept": 0.0}


def bench_dcmqi(tmp: Path, series: Path, result: Path, box: np.ndarray, runs: int, figures: dict):
    seg_exe, pm_exe = (shutil.which(t) or str(Path(sys.executable).parent / t)
                       for t in ("itkimage2segimage", "itkimage2paramap"))
    if not Path(seg_exe).is_file():
        figures["dcmqi"] = "not installed"
        return
    grid = sitk.ReadImage(str(result / "tumour.nrrd"))
    box_img = sitk.GetImageFromArray(box)
    box_img.CopyInformation(grid)
    sitk.WriteImage(box_img, str(tmp / "box.nrrd"), True)
    (tmp / "seg.json").write_text(json.dumps(dcmqi_seg_meta()))
    (tmp / "pm.json").write_text(json.dumps(dcmqi_pm_meta()))
    seg_cmd = [seg_exe, "--inputImageList", ",".join(str(p) for p in (result / "tumour.nrrd", result / "ring.nrrd",
                                                                          tmp / "box.nrrd")),
               "--inputDICOMDirectory", str(series), "--outputDICOM", str(tmp / "dcmqi_seg.dcm"),
               "--inputMetadata", str(tmp / "seg.json"), "--skip"]
    pm_cmd = [pm_exe, "--inputImage", str(result / "cam.nrrd"), "--inputDICOMDirectory", str(series),
              "--outputDICOM", str(tmp / "dcmqi_pm.dcm"), "--inputMetadata", str(tmp / "pm.json")]
    for key, cmd, out in (("dcmqi_seg", seg_cmd, "dcmqi_seg.dcm"), ("dcmqi_pm", pm_cmd, "dcmqi_pm.dcm")):
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0 or not (tmp / out).is_file():
            figures[key] = f"failed: {(run.stderr or run.stdout).strip()[-300:]}"
            continue
        figures[f"{key}_s"] = round(median_time(lambda: subprocess.run(cmd, capture_output=True, check=True), runs)[0], 3)
        figures[f"{key}_MB"] = round((tmp / out).stat().st_size / 1e6, 2)


def bench_highdicom(tmp: Path, series: Path, result: Path, runs: int, figures: dict) -> np.ndarray:
    res = json.loads((result / "result.json").read_text())
    src = do.read_source_series(series)
    masks = [do.on_source_grid(result / f"{n}.nrrd", src.grid, label=True) for n in ("tumour", "ring")]
    masks.append(do.box_on_grid(res["box"], src.grid))
    cam = do.on_source_grid(result / "cam.nrrd", src.grid, label=False)
    figures["read_source_s"] = round(median_time(lambda: do.read_source_series(series), runs)[0], 3)
    # as `tmbrb score --dicom-out` and `tmbrb batch` call it: the grid and files scoring already read are passed
    from TMBRBLib.io import dicom_series_files
    files = dicom_series_files(series)
    figures["read_source_given_grid_and_files_s"] = round(median_time(
        lambda: do.read_source_series(series, src.grid, files), runs)[0], 3)
    figures["highdicom_seg_s"] = round(median_time(
        lambda: do.build_segmentation(src, masks, res).save_as(tmp / "seg.dcm"), runs)[0], 3)
    figures["highdicom_pm_s"] = round(median_time(
        lambda: do.build_parametric_map(src, cam, res).save_as(tmp / "pm.dcm"), runs)[0], 3)
    figures["highdicom_sr_s"] = round(median_time(lambda: do.build_report(src, res).save_as(tmp / "sr.dcm"), runs)[0], 3)
    figures["export_dicom_total_s"] = round(median_time(
        lambda: do.export_dicom(result, series, tmp / "export"), runs)[0], 3)
    figures["export_dicom_given_grid_and_files_total_s"] = round(median_time(
        lambda: do.export_dicom(result, series, tmp / "export", grid=src.grid, files=files), runs)[0], 3)
    for name in ("seg.dcm", "cam_pm.dcm", "report_sr.dcm"):
        figures[f"highdicom_{name}_MB"] = round((tmp / "export" / name).stat().st_size / 1e6, 2)
    return masks[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=150)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--highdicom-only", action="store_true", help="leave out the dcmqi comparison")
    a = ap.parse_args()
    from TMBRBLib.phantom import make_phantom

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        ph = make_phantom(seed=3, shape_xyz=(512, 512, a.slices))
        do.write_ct_series(ph.ct, tmp / "series")
        seed = ",".join(f"{v:.3f}" for v in ph.seed_lps)
        box = ",".join(f"{v:.3f}" for v in list(ph.box_lps[0]) + list(ph.box_lps[1]))
        rc = tmbrb(["score", "--ct", str(tmp / "series"), "--seed-lps", seed, "--box-lps", box, "--out",
                    str(tmp / "result"), "--shifts", "1", "--no-pictures", "--progress", "none", "--device", "cpu"])
        assert rc == 0
        figures = {"ct": f"512x512x{a.slices}", "runs": a.runs}
        box_mask = bench_highdicom(tmp, tmp / "series", tmp / "result", a.runs, figures)
        if not a.highdicom_only:
            bench_dcmqi(tmp, tmp / "series", tmp / "result", box_mask, a.runs, figures)
    for k, v in figures.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
