"""DICOM export: a phantom CT written as a DICOM series, scored with `tmbrb score --dicom-out`, each object read back.

The Segmentation, Parametric Map and structured report are checked against the result folder (tumour.nrrd, ring.nrrd,
cam.nrrd, result.json) and the source slices (geometry, UIDs, patient attributes), read with highdicom/pydicom and,
where installed, with dcmqi (the converter 3D Slicer's QuantitativeReporting runs to load a SEG).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.cli import main
from TMBRBLib.dicom_out import write_ct_series

from .synthetic import make_ct

try:
    import highdicom as hd
    import pydicom
except ImportError:
    from _prereq import require
    require("dev-package", "DICOM export needs highdicom and pydicom (pip install 'tmbrb[dicom]')")

TUMOUR_LPS = (10.0, -20.0, 30.0)


def _score_and_export(root: Path, direction=np.eye(3)) -> dict:
    """A DICOM phantom series scored with the bundled demo model and exported: (series datasets, result, DICOM)."""
    ct, _ = make_ct(direction=direction, size=(64, 64, 24), spacing=(0.8, 0.8, 2.0), tumour_lps=TUMOUR_LPS,
                    radius_mm=8, noise=20)
    series = write_ct_series(ct, root / "series", patient=("Phantom^Test", "PH001"))
    rc = main(["score", "--ct", str(root / "series"), "--seed-lps", ",".join(map(str, TUMOUR_LPS)), "--ecog", "1",
               "--out", str(root / "result"), "--shifts", "1", "--no-pictures", "--progress", "none",
               "--device", "cpu", "--dicom-out", str(root / "dicom")])
    assert rc == 0
    by_uid = {str(ds.SOPInstanceUID): k for k, ds in enumerate(series)}
    return dict(root=root, series=series, by_uid=by_uid, result=root / "result", dicom=root / "dicom",
                json=json.loads((root / "result" / "result.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _score_and_export(tmp_path_factory.mktemp("dicom_out"))


def _nrrd(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _frame_positions(ds) -> list:
    return [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float)
            for f in ds.PerFrameFunctionalGroupsSequence]


def _slice_of_position(series, position) -> int:
    d = [np.linalg.norm(np.array(s.ImagePositionPatient, float) - position) for s in series]
    assert min(d) < 1e-3, "a frame lies on no source slice"
    return int(np.argmin(d))


def test_segments_equal_the_result_masks_on_the_ct_slices(exported):
    _check_segments(exported)


def _check_segments(exported):
    seg = hd.seg.segread(exported["dicom"] / "seg.dcm")
    uids = [str(s.SOPInstanceUID) for s in exported["series"]]
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels[0] == "Tumour" and labels[1].startswith("Peritumoral ring") and labels[2] == "Model input box"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # SCT Neoplasm
    assert hd.color.CIELabColor.from_dicom_value(seg.SegmentSequence[0].RecommendedDisplayCIELabValue).to_rgb() \
        == (0, 255, 102)  # the overlays' tumour green
    referenced = [str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    slices = sorted(exported["by_uid"][u] for u in referenced)
    for number, name in ((1, "tumour"), (2, "ring")):
        got = seg.get_pixels_by_source_instance([uids[k] for k in slices], segment_numbers=[number])[..., 0]
        want = _nrrd(exported["result"] / f"{name}.nrrd") != 0
        assert want.any() and np.array_equal(got != 0, want[slices]), name
        assert not np.delete(want, slices, axis=0).any()  # the slices the SEG leaves out hold none of it
    # each frame lies on the source slice it references
    for f, pos in zip(seg.PerFrameFunctionalGroupsSequence, _frame_positions(seg)):
        ref = f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert _slice_of_position(exported["series"], pos) == exported["by_uid"][ref]


def test_box_segment_holds_the_voxels_whose_centres_lie_in_the_box(exported):
    """Computed here from the slices' DICOM geometry (position, orientation, pixel spacing), not from SimpleITK."""
    _check_box(exported)


def test_an_oblique_series_gets_its_segments_on_its_own_slices(tmp_path):
    from .synthetic import DIRECTIONS

    ex = _score_and_export(tmp_path, DIRECTIONS["oblique"])
    assert abs(float(ex["series"][0].ImageOrientationPatient[1])) > 0.1  # the slices are oblique
    _check_segments(ex)
    _check_box(ex)


def _check_box(exported):
    seg = hd.seg.segread(exported["dicom"] / "seg.dcm")
    series = exported["series"]
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    got = np.zeros((len(series), series[0].Rows, series[0].Columns), np.uint8)
    slices = [k for k, s in enumerate(series) if str(s.SOPInstanceUID) in referenced]
    got[slices] = seg.get_pixels_by_source_instance([str(series[k].SOPInstanceUID) for k in slices],
                                                    segment_numbers=[3])[..., 0]
    box = exported["json"]["box"]
    lo, hi = np.array(box["lps_min"]), np.array(box["lps_max"])
    rows, cols = np.indices((series[0].Rows, series[0].Columns))
    want = np.zeros_like(got, bool)
    for k, s in enumerate(series):
        iop = np.array(s.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in s.PixelSpacing)  # row spacing (between rows), column spacing
        pts = (np.array(s.ImagePositionPatient, float) + cols[..., None] * dc * iop[:3]
               + rows[..., None] * dr * iop[3:])
        want[k] = np.all((pts >= lo - 1e-3) & (pts <= hi + 1e-3), axis=-1)  # a closed box, to 0.001 mm
    assert want.any() and np.array_equal(got != 0, want)


def test_parametric_map_values_equal_the_cam(exported):
    pm = pydicom.dcmread(exported["dicom"] / "cam_pm.dcm")
    cam = _nrrd(exported["result"] / "cam.nrrd")
    frames = pm.pixel_array.reshape(-1, pm.Rows, pm.Columns)
    assert frames.dtype == np.float32
    covered = set()
    for frame, pos in zip(frames, _frame_positions(pm)):
        k = _slice_of_position(exported["series"], pos)
        covered.add(k)
        assert np.array_equal(frame, np.clip(cam[k], 0, 1))
    outside = [k for k in range(cam.shape[0]) if k not in covered]
    assert not np.any(cam[outside])  # the slices left out hold no CAM
    rwvm = pm.PerFrameFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0] \
        if "RealWorldValueMappingSequence" in pm.PerFrameFunctionalGroupsSequence[0] \
        else pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert (rwvm.DoubleFloatRealWorldValueFirstValueMapped, rwvm.DoubleFloatRealWorldValueLastValueMapped) == (0, 1)
    method = exported["json"]["model"]["cam"]["method"]
    assert method in pm.ContentDescription and method in pm.SeriesDescription and method in rwvm.LUTExplanation


def _content_items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def _report(exported):
    sr = pydicom.dcmread(exported["dicom"] / "report_sr.dcm")
    nums, codes, texts = {}, {}, []
    for item in _content_items(sr):
        concept = item.ConceptNameCodeSequence[0]
        if item.ValueType == "NUM":
            nums[concept.CodeValue] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE":
            codes[concept.CodeValue] = item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType == "TEXT":
            texts.append((concept.CodeValue, item.TextValue))
    return sr, nums, codes, texts


def test_report_values_equal_result_json(exported):
    r = exported["json"]
    sr, nums, codes, texts = _report(exported)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    want = {"SCORE": r["score"], "SPREADMEAN": r["tta"]["mean"], "SPREADSD": r["tta"]["std"], "SPREADN": r["tta"]["n"],
            "ECOG": r["risk"]["ecog"], "OSRH": r["risk"]["ecog_combined"]["os"]["relative_hazard"],
            "PFSRH": r["risk"]["ecog_combined"]["pfs"]["relative_hazard"],
            "ATTTUMOUR": r["attention"]["tumour"], "ATTRING": r["attention"]["ring"],
            "ATTELSEWHERE": r["attention"]["elsewhere"]}
    for code, value in want.items():
        assert nums[code] == pytest.approx(value, rel=1e-9, abs=1e-12), code  # DS holds 16 characters
    for ep in ("os", "pfs"):
        assert codes[f"{ep.upper()}GROUP"].lower() == f"{r['risk'][ep]['group']} risk"
    assert ("111001", r["model"]["name"]) in texts and ("111003", r["model"]["version"]) in texts  # algorithm
    assert ("111002", f"sha256={r['model']['sha256']}") in texts  # algorithm parameter
    comments = "\n".join(v for c, v in texts if c == "121106")
    assert r["notice"] in comments and r["model"]["sha256"] in comments and r["model"]["notice"] in comments


def test_objects_reference_the_source_and_copy_only_its_patient_data(exported):
    src = exported["series"][0]
    objs = [pydicom.dcmread(exported["dicom"] / n) for n in ("seg.dcm", "cam_pm.dcm", "report_sr.dcm")]
    source_uids = set(exported["by_uid"])
    assert len({str(o.SeriesInstanceUID) for o in objs} | {str(src.SeriesInstanceUID)}) == 4  # new series each
    for o in objs:
        assert o.StudyInstanceUID == src.StudyInstanceUID
        patient = {e.keyword: e.value for e in o if e.tag.group == 0x0010}
        assert patient == {e.keyword: e.value for e in src if e.tag.group == 0x0010}
    for o in objs[:2]:
        assert o.FrameOfReferenceUID == src.FrameOfReferenceUID
        ref = o.ReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == src.SeriesInstanceUID
        assert {str(i.ReferencedSOPInstanceUID) for i in ref.ReferencedInstanceSequence} <= source_uids
    evidence = {str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in s.ReferencedSOPSequence}
                for s in objs[2].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert evidence[str(src.SeriesInstanceUID)] == source_uids
    assert evidence[str(objs[0].SeriesInstanceUID)] == {str(objs[0].SOPInstanceUID)}


def test_a_demo_model_result_says_so_in_every_series_description(exported):
    assert exported["json"]["model"]["demo"]
    for name in ("seg.dcm", "cam_pm.dcm", "report_sr.dcm"):
        assert "DEMO MODEL" in pydicom.dcmread(exported["dicom"] / name).SeriesDescription


def test_objects_pass_pydicom_value_validation(exported, monkeypatch):
    from pydicom import config

    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    for name in ("seg.dcm", "cam_pm.dcm", "report_sr.dcm"):
        ds = pydicom.dcmread(exported["dicom"] / name)
        for elem in ds.iterall():  # converting each value validates its VR (length, characters, UID form)
            _ = elem.value
    hd.seg.segread(exported["dicom"] / "seg.dcm")
    hd.sr.srread(exported["dicom"] / "report_sr.dcm")


def _dcmqi(tool: str) -> str:
    exe = shutil.which(tool) or str(Path(sys.executable).parent / tool)
    if not Path(exe).is_file():
        from _prereq import require
        require("dev-package", f"dcmqi's {tool} is not installed (pip install dcmqi==1.5.7)")
    return exe


def test_dcmqi_reads_the_segmentation_and_the_report(exported, tmp_path):
    """dcmqi is the converter 3D Slicer's QuantitativeReporting runs to load a DICOM SEG and a TID 1500 report."""
    subprocess.run([_dcmqi("segimage2itkimage"), "--inputDICOM", str(exported["dicom"] / "seg.dcm"),
                    "--outputDirectory", str(tmp_path), "--outputType", "nrrd", "-p", "seg"],
                   check=True, capture_output=True)
    for number, name in ((1, "tumour"), (2, "ring")):
        want = sitk.ReadImage(str(exported["result"] / f"{name}.nrrd"))
        got = sitk.Resample(sitk.ReadImage(str(tmp_path / f"seg-{number}.nrrd")), want, sitk.Transform(),
                            sitk.sitkNearestNeighbor, 0)
        assert np.array_equal(sitk.GetArrayFromImage(got) != 0, sitk.GetArrayFromImage(want) != 0), name
    subprocess.run([_dcmqi("tid1500reader"), "--inputDICOM", str(exported["dicom"] / "report_sr.dcm"),
                    "--outputMetadata", str(tmp_path / "sr.json")], check=True, capture_output=True)
    items = json.loads((tmp_path / "sr.json").read_text())["Measurements"][0]["measurementItems"]
    score = [float(i["value"]) for i in items if i["quantity"]["CodeValue"] == "SCORE"]
    assert score == [pytest.approx(exported["json"]["score"], rel=1e-9)]


def test_slicer_dicom_segmentation_plugin_imports_the_seg(exported):
    try:
        from DICOMSegmentationPlugin import DICOMSegmentationPluginClass  # noqa: F401
    except ImportError:
        pytest.skip("slicer-core has no DICOM module (DICOMLib) nor the DICOMSegmentationPlugin of "
                    "QuantitativeReporting; dcmqi, which that plugin runs, is tested above")
    plugin = DICOMSegmentationPluginClass()
    loadables = plugin.examineFiles([str(exported["dicom"] / "seg.dcm")])
    assert loadables and plugin.load(loadables[0])


def test_a_mask_on_another_grid_is_resampled_onto_the_source_slices(tmp_path):
    """A mask on a crop grid (whole voxels inside the CT's) lands on the same voxels of the full grid."""
    from TMBRBLib.dicom_out import on_source_grid

    ct, _ = make_ct(size=(40, 36, 12), spacing=(0.8, 0.8, 2.0))
    crop = np.zeros((5, 10, 8), np.uint8)
    crop[1:4, 2:7, 3:6] = 1
    img = sitk.GetImageFromArray(crop)
    img.SetSpacing(ct.GetSpacing())
    img.SetDirection(ct.GetDirection())
    img.SetOrigin(ct.TransformIndexToPhysicalPoint((7, 9, 4)))  # crop index 0 = CT index (7, 9, 4)
    sitk.WriteImage(img, str(tmp_path / "m.nrrd"))
    got = on_source_grid(tmp_path / "m.nrrd", ct, label=True)
    want = np.zeros(ct.GetSize()[::-1], np.uint8)
    want[4:9, 9:19, 7:15] = crop
    assert got.shape == want.shape and np.array_equal(got, want)


# ---- bad input -----------------------------------------------------------------------------------------------------

def test_dicom_out_for_a_non_dicom_ct_exits_2_before_computing(tmp_path, capsys):
    ct, _ = make_ct(size=(40, 36, 12), spacing=(0.8, 0.8, 2.0), tumour_lps=TUMOUR_LPS, radius_mm=6)
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    rc = main(["score", "--ct", str(tmp_path / "ct.nrrd"), "--seed-lps", "10,-20,30", "--out", str(tmp_path / "o"),
               "--progress", "none", "--dicom-out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and "--dicom-out needs a DICOM series" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()  # nothing computed, nothing written


def test_dicom_out_without_highdicom_says_how_to_install_it(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    rc = main(["score", "--ct", str(exported["root"] / "series"), "--seed-lps", "10,-20,30", "--progress", "none",
               "--out", str(tmp_path / "o"), "--dicom-out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'tmbrb[dicom]'" in err and not (tmp_path / "o").exists()


def test_dicom_export_refuses_another_series_an_incomplete_result_and_the_input_folder(exported, tmp_path, capsys):
    other, _ = make_ct(size=(48, 48, 20), spacing=(0.8, 0.8, 2.0))
    write_ct_series(other, tmp_path / "other")
    cases = [(["--result", str(exported["result"]), "--dicom", str(tmp_path / "other")], "not the CT the result"),
             (["--result", str(tmp_path), "--dicom", str(exported["root"] / "series")], "holds no result.json"),
             (["--result", str(exported["result"]), "--dicom", str(tmp_path / "missing")], "not a folder holding"),
             (["--result", str(exported["result"]), "--dicom", str(tmp_path / "other"), "--out",
               str(tmp_path / "other")], "the DICOM input folder")]
    for args, message in cases:
        if "--out" not in args:
            args = args + ["--out", str(tmp_path / "d")]
        rc = main(["dicom-export"] + args)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "d").exists()
    assert len(list((tmp_path / "other").iterdir())) == 20  # nothing added to the input series


def test_dicom_export_writes_again_from_a_scored_folder(exported, tmp_path, capsys):
    rc = main(["dicom-export", "--result", str(exported["result"]), "--dicom", str(exported["root"] / "series"),
               "--out", str(tmp_path / "again")])
    assert rc == 0 and "seg.dcm" in capsys.readouterr().out
    a = pydicom.dcmread(tmp_path / "again" / "seg.dcm")
    b = pydicom.dcmread(exported["dicom"] / "seg.dcm")
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.PixelData == b.PixelData


def test_dicom_export_refuses_slices_without_a_frame_of_reference(exported, tmp_path, capsys):
    folder = tmp_path / "no_for"
    shutil.copytree(exported["root"] / "series", folder)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    rc = main(["dicom-export", "--result", str(exported["result"]), "--dicom", str(folder), "--out",
               str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and "lack FrameOfReferenceUID" in err and not (tmp_path / "d").exists()



def test_a_modified_bundle_is_flagged_in_the_series_descriptions_and_the_report_notes():
    """As in every other output: a bundle that fails its checksums is named MODIFIED, before the demo flag."""
    from TMBRBLib import dicom_out

    message = "MODIFIED BUNDLE: configs/metadata.json changed after export"
    result = {"model": {"demo": True, "notice": "demo model", "modified": True,
                        "integrity": {"status": "modified", "message": message}}}
    assert dicom_out._model_flag(result) == " [MODIFIED MODEL]"
    assert dicom_out._notes(result)[0] == message
    clean = {"model": {"demo": True, "notice": "demo model"}}
    assert dicom_out._model_flag(clean) == " [DEMO MODEL]" and message not in dicom_out._notes(clean)


def test_score_with_dicom_out_reads_the_series_once(tmp_path, monkeypatch):
    """Review 11 finding 5: the export takes the CT and file list `tmbrb score` already read. The series' pixels are
    read once, the folder scanned twice (the early --dicom-out check and the CT reading), each header once by pydicom.
    The old code read the pixels twice and scanned five times."""
    from TMBRBLib import io as tio

    ct, _ = make_ct(size=(48, 44, 12), spacing=(0.8, 0.8, 2.0), tumour_lps=TUMOUR_LPS, radius_mm=6, noise=10)
    series = write_ct_series(ct, tmp_path / "series")
    calls = {"pixels": 0, "scans": 0, "headers": 0}
    real_read, real_ids, real_dcmread = tio._read_dicom_series, sitk.ImageSeriesReader.GetGDCMSeriesIDs, pydicom.dcmread

    def count(key, fn):
        def wrapped(*a, **k):
            calls[key] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(tio, "_read_dicom_series", count("pixels", real_read))
    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesIDs", staticmethod(count("scans", real_ids)))
    monkeypatch.setattr(pydicom, "dcmread", count("headers", real_dcmread))
    rc = main(["score", "--ct", str(tmp_path / "series"), "--seed-lps", ",".join(map(str, TUMOUR_LPS)),
               "--out", str(tmp_path / "result"), "--shifts", "1", "--no-pictures", "--progress", "none",
               "--device", "cpu", "--dicom-out", str(tmp_path / "dicom")])
    assert rc == 0 and (tmp_path / "dicom" / "seg.dcm").is_file()
    assert calls == {"pixels": 1, "scans": 2, "headers": len(series)}, calls


def test_dicom_export_on_a_python_too_old_for_highdicom_says_why(monkeypatch):
    """Slicer 5.8's Python 3.9 cannot install highdicom 0.28 (requirements.txt lists it for >= 3.10 only): the
    message names the Python and the way out, instead of a pip command that would fail."""
    from TMBRBLib.dicom_out import require_highdicom
    from TMBRBLib.errors import TMBRBInputError

    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(TMBRBInputError) as old:
        require_highdicom(python=(3, 9))
    assert "Python 3.10" in str(old.value) and "3.9" in str(old.value) and "tmbrb dicom-export" in old.value.hint
    with pytest.raises(TMBRBInputError) as new:
        require_highdicom(python=(3, 12))
    assert "pip install 'tmbrb[dicom]'" in new.value.hint


def test_batch_writes_dicom_for_dicom_rows_and_a_note_for_the_others(exported, tmp_path, capsys):
    """The manifest's dicom_out column (and tmbrb batch --dicom-out): a DICOM row gets <case>/dicom/ with the three
    objects, referencing its series; an NRRD row is scored as usual, with a note instead of DICOM (not a failure);
    a bad dicom_out value fails its own row only. Run again, the DICOM row is done before and its objects stay."""
    import csv

    ct, _ = make_ct(size=(40, 36, 12), spacing=(0.8, 0.8, 2.0), tumour_lps=TUMOUR_LPS, radius_mm=6)
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    seed = ",".join(map(str, TUMOUR_LPS))
    (tmp_path / "m.csv").write_text(
        "case_id,ct,seed_lps,dicom_out\n"
        f"dcm,{exported['root'] / 'series'},\"{seed}\",yes\n"
        f"nrrd,ct.nrrd,\"{seed}\",yes\n"
        f"bad,ct.nrrd,\"{seed}\",maybe\n", encoding="utf-8")
    args = ["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--shifts", "1", "--no-pictures",
            "--quiet", "--device", "cpu"]

    def summary():
        with open(tmp_path / "out" / "summary.csv", newline="", encoding="utf-8") as f:
            return {r["case_id"]: r for r in csv.DictReader(f)}

    assert main(args) == 3  # the bad row failed
    rows = summary()
    assert rows["dcm"]["status"] == "ok" and "DICOM objects in dicom/" in rows["dcm"]["note"]
    assert rows["nrrd"]["status"] == "ok" and "not a DICOM series" in rows["nrrd"]["note"]
    assert rows["bad"]["status"] == "failed" and "dicom_out is 'maybe'" in rows["bad"]["error"]
    assert not (tmp_path / "out" / "nrrd" / "dicom").exists()
    seg = pydicom.dcmread(tmp_path / "out" / "dcm" / "dicom" / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == exported["series"][0].SeriesInstanceUID
    assert {p.name for p in (tmp_path / "out" / "dcm" / "dicom").iterdir()} == {"seg.dcm", "cam_pm.dcm",
                                                                                  "report_sr.dcm"}
    capsys.readouterr()
    assert main(args) == 3
    rows = summary()
    assert rows["dcm"]["status"] == "done-before" and (tmp_path / "out" / "dcm" / "dicom" / "seg.dcm").is_file()


def test_batch_dicom_out_without_highdicom_stops_before_any_case(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    (tmp_path / "m.csv").write_text("ct,seed_lps\nct.nrrd,\"1,2,3\"\n", encoding="utf-8")
    rc = main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--quiet", "--dicom-out"])
    err = capsys.readouterr().err
    assert rc == 2 and "highdicom" in err and "Traceback" not in err and not (tmp_path / "out").exists()
