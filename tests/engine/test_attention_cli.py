"""`tmbrb attention`: attention from an edited tumour mask in a scored case's folder, without running the model."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.cli import main
from TMBRBLib.io import write_image
from TMBRBLib.regions import attention_shares, ring_from_tumour

from TMBRBLib.phantom import make_phantom


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A case scored once by `tmbrb score` (seed only: the tumour mask is proposed), with its pictures."""
    folder = tmp_path_factory.mktemp("case")
    case = make_phantom(0)  # the bundled demo model gives this phantom a map that is not zero
    write_image(case.ct, folder / "ct.nrrd")
    rc = main(["score", "--ct", str(folder / "ct.nrrd"), "--seed-lps", ",".join(map(str, case.seed_lps)), "--out",
               str(folder / "out"), "--shifts", "0", "--device", "cpu", "--progress", "none"])
    assert rc == 0
    return folder


@pytest.fixture()
def case(scored, tmp_path):
    """A fresh copy of the scored case for each test (the command rewrites it): the CT with its output folder, as
    result.json records the CT relative to that folder."""
    import shutil

    shutil.copytree(scored, tmp_path / "case")
    return tmp_path / "case" / "out"


def _eroded(folder, tmp_path, radius=2):
    tumour = sitk.ReadImage(str(folder / "tumour.nrrd"))
    edited = sitk.BinaryErode(tumour, [radius] * 3)
    path = tmp_path / "edited.nrrd"
    write_image(edited, path)
    return edited, path


def _no_model(monkeypatch):
    """Any run of the model fails the test."""
    from TMBRBLib import pipeline

    def boom(*a, **k):
        raise AssertionError("the model was run")

    monkeypatch.setattr(pipeline.Scorer, "run", boom)
    monkeypatch.setattr(pipeline, "score_case", boom)


def test_attention_from_an_edited_mask_updates_the_folder_without_the_model(case, tmp_path, monkeypatch, capsys):
    before = json.loads((case / "result.json").read_text())
    assert before["tumour_mask"]["source"] == "proposed"
    edited, path = _eroded(case, tmp_path)
    edited_bytes = path.read_bytes()
    pngs = {p.name: p.stat().st_mtime_ns for p in case.glob("*.png")}
    assert pngs  # the score wrote its pictures
    _no_model(monkeypatch)

    assert main(["attention", "--result", str(case), "--segmentation", str(path)]) == 0
    after = json.loads((case / "result.json").read_text())
    assert after["score"] == before["score"] and after["tta"] == before["tta"]
    assert after["tumour_mask"]["source"] == "proposed_edited" and after["tumour_mask"]["uncertain"] is False
    assert after["attention_update"]["model_run"] is False
    # the shares are the core function's on the edited mask (whole grid), and they changed
    cam = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "cam.nrrd")))
    ring = ring_from_tumour(edited, before["attention"]["ring_width_mm"])
    want = attention_shares(cam, sitk.GetArrayFromImage(edited), sitk.GetArrayFromImage(ring))
    for k in ("tumour", "ring", "elsewhere"):
        assert after["attention"][k] == pytest.approx(want[k], abs=1e-9)
    assert after["attention"]["tumour"] < before["attention"]["tumour"]
    # tumour.nrrd and ring.nrrd are the edited mask and its ring; the input was left alone; pictures drawn again
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(case / "tumour.nrrd"))),
                          sitk.GetArrayFromImage(edited))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ring.nrrd"))),
                          sitk.GetArrayFromImage(ring))
    assert path.read_bytes() == edited_bytes
    assert all((case / n).stat().st_mtime_ns != t for n, t in pngs.items())
    out = capsys.readouterr().out
    assert "proposed from the seed, then edited" in out


def test_a_mask_on_another_grid_is_resampled_with_a_warning(case, tmp_path):
    edited, _ = _eroded(case, tmp_path, radius=1)
    coarse = sitk.Resample(edited, [s // 2 for s in edited.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           edited.GetOrigin(), [2 * s for s in edited.GetSpacing()], edited.GetDirection(), 0)
    write_image(coarse, tmp_path / "coarse.nrrd")
    assert main(["attention", "--result", str(case), "--segmentation", str(tmp_path / "coarse.nrrd"),
                 "--no-pictures"]) == 0
    after = json.loads((case / "result.json").read_text())
    assert any("resampled onto the CT's grid" in w for w in after["warnings"])
    # --no-pictures: the overlays of the mask before the edit are gone, from the folder and from result.json
    assert not list(case.glob("*.png")), "overlays showing the old mask were left in place"
    assert not any(str(v).endswith(".png") for v in after["files"].values())
    assert any("removed (not drawn again" in w for w in after["warnings"])


def _fails(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_bad_inputs_exit_2_with_the_reason(case, tmp_path, capsys):
    tumour = sitk.ReadImage(str(case / "tumour.nrrd"))
    empty = tumour * 0
    write_image(empty, tmp_path / "empty.nrrd")
    before = (case / "result.json").read_text()
    _fails(capsys, ["attention", "--result", str(case), "--segmentation", str(tmp_path / "empty.nrrd")], "empty")
    elsewhere = sitk.Image(tumour)
    elsewhere.SetOrigin([v + 1000.0 for v in tumour.GetOrigin()])  # another patient's frame: no overlap
    write_image(elsewhere, tmp_path / "elsewhere.nrrd")
    _fails(capsys, ["attention", "--result", str(case), "--segmentation", str(tmp_path / "elsewhere.nrrd")], "empty")
    # editing tumour.nrrd of the folder in place: it would be overwritten by the update
    _fails(capsys, ["attention", "--result", str(case), "--segmentation", str(case / "tumour.nrrd")],
           "would replace the input")
    _fails(capsys, ["attention", "--result", str(tmp_path), "--segmentation", str(tmp_path / "empty.nrrd")],
           "no result.json")
    _fails(capsys, ["attention", "--result", str(case), "--segmentation", str(tmp_path / "missing.nrrd")],
           "does not exist")
    _fails(capsys, ["attention", "--result", str(case), "--segmentation", str(case / "tumour.nrrd"),
                    "--ring-mm", "-3"], "ring")
    assert (case / "result.json").read_text() == before  # nothing was changed by a refused update
    (case / "cam.nrrd").unlink()
    _fails(capsys, ["attention", "--result", str(case), "--segmentation", str(tmp_path / "empty.nrrd")],
           "no cam.nrrd")
