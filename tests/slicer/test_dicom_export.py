"""The module's DICOM export (issue 15): SceneLogic.exportDicom writes the SEG, parametric map and report of a result
in the scene from its kept result folder, on the real slicer-core scene; a result without a folder, or whose CT is
not a DICOM series, gets a message saying what to do."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from TMBRBLib.dicom_out import write_ct_series
from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.io import write_image
from TMBRBLib.phantom import make_phantom

try:
    import pydicom
except ImportError:
    pydicom = None


def _require_highdicom():
    import importlib.util

    if importlib.util.find_spec("highdicom") is None or pydicom is None:
        from _prereq import require
        require("dev-package", "DICOM export needs highdicom and pydicom (pip install 'tmbrb[dicom]')")


@pytest.fixture(scope="module")
def small_case():
    """The demo phantom's CT cut to 80 x 80 x 24 voxels around its tumour (a DICOM series is written per slice)."""
    case = make_phantom(0)
    idx = case.ct.TransformPhysicalPointToIndex(case.seed_lps)
    size = [80, 80, 24]
    start = [max(0, min(int(i) - s // 2, n - s)) for i, s, n in zip(idx, size, case.ct.GetSize())]
    return sitk.RegionOfInterest(case.ct, size, start), case.seed_lps


def _score(ct, seed, ct_path, out):
    from TMBRBLib.pipeline import score_to_folder

    score_to_folder(ct, seed, out, ct_path=ct_path, pictures=False, n_shifts=0, device="cpu")


def test_export_from_a_loaded_dicom_case_writes_the_three_objects(logic, small_case, tmp_path):
    _require_highdicom()
    ct, seed = small_case
    series = write_ct_series(ct, tmp_path / "series")
    _score(ct, seed, tmp_path / "series", tmp_path / "case")
    loaded = logic.loadCaseResult(tmp_path / "case")
    table = loaded.nodes["table"]
    assert logic.dicomExportSource(table) == ((tmp_path / "case").resolve(), (tmp_path / "series").resolve())
    written = logic.exportDicom(table)
    assert {k: p.name for k, p in written.items()} == {"seg": "seg.dcm", "pm": "cam_pm.dcm", "sr": "report_sr.dcm"}
    assert all(p.parent == (tmp_path / "case" / "dicom").resolve() for p in written.values())
    seg = pydicom.dcmread(written["seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    # an output folder of the user's choice
    other = logic.exportDicom(table, outputDir=tmp_path / "elsewhere")
    assert other["sr"].parent == tmp_path / "elsewhere" and other["sr"].is_file()


def test_export_of_a_non_dicom_result_asks_for_the_series_and_writes_nothing(logic, small_case, tmp_path):
    ct, seed = small_case
    write_image(ct, tmp_path / "ct.nrrd")
    _score(ct, seed, tmp_path / "ct.nrrd", tmp_path / "case")
    table = logic.loadCaseResult(tmp_path / "case").nodes["table"]
    assert logic.dicomExportSource(table)[1] is None
    with pytest.raises(TMBRBInputError, match="not a DICOM series folder") as e:
        logic.exportDicom(table)
    assert "Choose the folder of the CT's DICOM series" in e.value.hint
    assert not (tmp_path / "case" / "dicom").exists()


def test_export_of_a_result_without_a_folder_says_how_to_get_one(logic, scene):
    from TMBRBLib.slicer import mrml

    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    assert mrml is not None and logic.dicomExportSource(table) == (None, None)
    with pytest.raises(TMBRBInputError, match="no result folder") as e:
        logic.exportDicom(table)
    assert "output folder" in e.value.hint


def test_export_after_a_plain_apply_has_the_worker_write_the_result_first(logic, scene, small_case, tmp_path):
    """A plain Apply scores into a temporary folder (nothing kept); Export DICOM then asks for a folder, the warm
    worker writes the result's files there and the three objects go to its dicom/, referencing the series."""
    _require_highdicom()
    from test_job_watcher import drive  # (not conftest's helpers: in the whole suite `conftest` may be tests/viewer's)

    from TMBRBLib.geometry import lps_to_ras
    from TMBRBLib.io import read_ct
    from TMBRBLib.slicer import mrml as ma
    from TMBRBLib.slicer.logic import JobWatcher

    ct, seed = small_case
    series = write_ct_series(ct, tmp_path / "series")
    volume = ma.add_volume_node_from_sitk(scene, read_ct(tmp_path / "series")[0], "CT")
    seedNode = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seed")
    seedNode.AddControlPoint([float(v) for v in lps_to_ras(seed)])
    seen = {}
    job = logic.startBackground(volume, seedNode, None, None, "1", numberOfShifts=0, device="cpu")
    drive(JobWatcher(logic, job, showResult=False, onResult=lambda r: seen.setdefault("result", r)))
    table = seen["result"].nodes["table"]
    assert logic.dicomExportSource(table) == (None, None) and not job.workDir.exists()
    with pytest.raises(TMBRBInputError, match="Choose a folder"):
        logic.exportDicom(table, tmp_path / "series")
    written = logic.exportDicom(table, tmp_path / "series", tmp_path / "chosen")
    assert (tmp_path / "chosen" / "result.json").is_file() and (tmp_path / "chosen" / "cam.nrrd").is_file()
    assert all(p.parent == (tmp_path / "chosen" / "dicom").resolve() for p in written.values())
    seg = pydicom.dcmread(written["seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
