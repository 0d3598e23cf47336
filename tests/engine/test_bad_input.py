"""Each kind of bad input gives a clear message that names the problem (never a deep traceback, never a number)."""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.bundle import load_bundle
from TMBRBLib.errors import TMBRBBundleError, TMBRBInputError
from TMBRBLib.geometry import Box, image_bounds_lps
from TMBRBLib.io import read_ct, validate_ct
from TMBRBLib.pipeline import score_case
from TMBRBLib.risk import check_ecog

from .synthetic import make_ct


@pytest.fixture(scope="module")
def ct_and_tumour():
    ct, _ = make_ct(size=(80, 80, 40), tumour_lps=(10, -20, 30), radius_mm=7)
    return ct, (10.0, -20.0, 30.0)


def test_missing_ct_file(tmp_path):
    with pytest.raises(TMBRBInputError, match="does not exist"):
        read_ct(tmp_path / "nope.nrrd")


def test_unreadable_ct_file(tmp_path):
    p = tmp_path / "broken.nrrd"
    p.write_bytes(b"NRRD0004\nthis is not a header\x00\x01")
    with pytest.raises(TMBRBInputError, match="Could not read the CT"):
        read_ct(p)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TMBRBInputError, match="no DICOM series"):
        read_ct(tmp_path)


def test_2d_image(tmp_path):
    img = sitk.GetImageFromArray(np.full((64, 64), -800, np.int16))
    with pytest.raises(TMBRBInputError, match="2D"):
        validate_ct(img)
    one_slice = sitk.GetImageFromArray(np.full((1, 64, 64), -800, np.int16))
    with pytest.raises(TMBRBInputError, match="2D image"):
        validate_ct(one_slice)


def test_mr_like_intensities(ct_and_tumour):
    ct, _ = ct_and_tumour
    mr = sitk.Cast(sitk.Abs(ct), sitk.sitkInt16)  # all values >= 0: no air in HU
    with pytest.raises(TMBRBInputError, match="Hounsfield"):
        validate_ct(mr)


def test_nan_voxels(ct_and_tumour):
    ct, seed = ct_and_tumour
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    arr[5, 5, 5:9] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(ct)
    with pytest.raises(TMBRBInputError, match="4 voxels that are NaN"):
        validate_ct(bad)


def test_seed_outside_the_scan(ct_and_tumour, scorer):
    ct, _ = ct_and_tumour
    far = np.asarray(image_bounds_lps(ct).max) + 50
    with pytest.raises(TMBRBInputError, match="seed .* lies outside the CT"):
        score_case(ct, far, scorer=scorer)


def test_box_wholly_outside(ct_and_tumour, scorer):
    ct, seed = ct_and_tumour
    far = np.asarray(image_bounds_lps(ct).max) + 100
    with pytest.raises(TMBRBInputError, match="wholly outside"):
        score_case(ct, seed, Box.from_center_size(far, (20, 20, 20)), scorer=scorer, n_shifts=0)


def test_box_partly_outside_is_padded_with_a_warning(ct_and_tumour, scorer):
    ct, seed = ct_and_tumour
    b = image_bounds_lps(ct)
    box = Box(tuple(np.asarray(seed) - 10), (b.max[0] + 5, seed[1] + 10, seed[2] + 10))  # about 11% outside
    r = score_case(ct, seed, box, scorer=scorer, n_shifts=0)
    assert any("of the box lies outside the scan" in w for w in r.warnings)


@pytest.mark.parametrize("bad", [3, -1, "x", 1.5])
def test_ecog_outside_0_to_2(bad, ct_and_tumour, scorer):
    with pytest.raises(TMBRBInputError, match="ECOG"):
        check_ecog(bad)
    ct, seed = ct_and_tumour
    with pytest.raises(TMBRBInputError, match="ECOG"):
        score_case(ct, seed, ecog=bad, scorer=scorer)


def test_ecog_accepts_0_1_2_and_none():
    assert [check_ecog(v) for v in (0, 1, 2, "2", None, "")] == [0, 1, 2, 2, None, None]


@pytest.fixture
def bundle_copy(placeholder_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(placeholder_bundle.path, dst)
    return dst


def test_bundle_with_tampered_weights_is_refused(bundle_copy):
    w = bundle_copy / "models" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(TMBRBBundleError, match="checksum"):
        load_bundle(bundle_copy)


def test_bundle_of_another_format_version_is_refused(bundle_copy):
    m = bundle_copy / "configs" / "metadata.json"
    meta = json.loads(m.read_text())
    meta["tmbrb"]["bundle_format"] = 99
    m.write_text(json.dumps(meta))
    with pytest.raises(TMBRBBundleError, match="format 99"):
        load_bundle(bundle_copy)


def test_bundle_whose_weights_do_not_fit_the_architecture_is_refused(bundle_copy):
    m = bundle_copy / "configs" / "metadata.json"
    meta = json.loads(m.read_text())
    meta["tmbrb"]["architecture"]["hidden_features"] = 64
    m.write_text(json.dumps(meta))
    b = load_bundle(bundle_copy)
    with pytest.raises(TMBRBBundleError, match="do not fit the architecture"):
        b.model("cpu")


def test_bundle_with_broken_metadata_or_missing_parts(bundle_copy, tmp_path):
    with pytest.raises(TMBRBBundleError, match="not a folder"):
        load_bundle(tmp_path / "missing")
    (bundle_copy / "configs" / "metadata.json").write_text("{not json")
    with pytest.raises(TMBRBBundleError, match="not valid JSON"):
        load_bundle(bundle_copy)
    (bundle_copy / "configs" / "metadata.json").unlink()
    with pytest.raises(TMBRBBundleError, match="not a TMBRB bundle"):
        load_bundle(bundle_copy)


def _write_dicom_series(ct: sitk.Image, folder, series_uid="1.2.826.0.1.3680043.2.1125.1", start=0):
    """Write a CT as a DICOM series (one file per slice, int16 HU)."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = ct.GetDirection()
    arr = sitk.GetArrayFromImage(ct)
    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[k:k + 1].astype(np.int16))
        sl.SetSpacing(ct.GetSpacing())
        sl.SetOrigin(ct.TransformIndexToPhysicalPoint((0, 0, k)))
        sl.SetDirection(direction)
        pos = ct.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0060": "CT", "0020|000e": series_uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.2",
                "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
                "0020|0037": "\\".join(f"{v:.6f}" for v in direction[0::3] + direction[1::3]),
                "0020|0013": str(k + 1), "0018|0050": str(ct.GetSpacing()[2])}
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(folder / f"slice{start + k:04d}.dcm"))
        w.Execute(sl)


def test_dicom_series_folder_is_read_with_its_geometry_and_hu(tmp_path):
    ct, _ = make_ct(size=(40, 36, 12), spacing=(0.8, 0.8, 2.0), tumour_lps=(10, -20, 30), radius_mm=6)
    _write_dicom_series(ct, tmp_path / "dicom")
    img, warnings = read_ct(tmp_path / "dicom")
    assert img.GetSize() == ct.GetSize() and warnings == []
    assert np.allclose(img.GetOrigin(), ct.GetOrigin(), atol=1e-3) and np.allclose(img.GetSpacing(), ct.GetSpacing())
    assert np.array_equal(sitk.GetArrayFromImage(img).astype(np.int16), sitk.GetArrayFromImage(ct))


def test_dicom_folder_with_two_series_uses_the_larger_and_says_so(tmp_path):
    ct, _ = make_ct(size=(32, 32, 10), spacing=(0.8, 0.8, 2.0))
    small, _ = make_ct(size=(32, 32, 4), spacing=(0.8, 0.8, 2.0))
    _write_dicom_series(ct, tmp_path / "d", "1.2.826.0.1.3680043.2.1125.10")
    _write_dicom_series(small, tmp_path / "d", "1.2.826.0.1.3680043.2.1125.11", start=100)
    img, warnings = read_ct(tmp_path / "d")
    assert img.GetSize()[2] == 10 and any("2 series" in w for w in warnings)


def test_colour_image_is_refused():
    rgb = sitk.Image([32, 32, 8], sitk.sitkVectorUInt8, 3)
    with pytest.raises(TMBRBInputError, match="components per voxel"):
        validate_ct(rgb)


def test_empty_or_foreign_segmentation_is_refused(ct_and_tumour, tmp_path):
    from TMBRBLib.io import read_mask
    ct, _ = ct_and_tumour
    empty = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ct)
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    with pytest.raises(TMBRBInputError, match="segmentation is empty"):
        read_mask(tmp_path / "empty.nrrd", ct)
    foreign, _ = make_ct(size=(20, 20, 10), center_lps=(500, 500, 500), background_hu=1)  # another frame entirely
    sitk.WriteImage(sitk.Cast(foreign > 0, sitk.sitkUInt8), str(tmp_path / "foreign.nrrd"))
    with pytest.raises(TMBRBInputError, match="belongs to this CT"):
        read_mask(tmp_path / "foreign.nrrd", ct)


@pytest.mark.parametrize("cam, message", [({"method": "ScoreCAM", "target_layer": "features.transition1.relu"},
                                           "CAM method 'ScoreCAM' is not known"),
                                          ({"method": "GradCAM-IxG", "target_layer": "features.transition1.relu",
                                            "smooth_mm": "wide"}, "smooth_mm must be a number"),
                                          ({"method": "GradCAM"}, "lacks the 'cam' section")])
def test_bundle_with_unusable_cam_settings_is_refused(bundle_copy, cam, message):
    m = bundle_copy / "configs" / "metadata.json"
    meta = json.loads(m.read_text())
    meta["tmbrb"]["cam"] = cam
    m.write_text(json.dumps(meta))
    with pytest.raises(TMBRBBundleError, match=message):
        load_bundle(bundle_copy)


# ---------------------------------------------------------------------------------------- limits and clean errors


def test_header_declaring_a_huge_image_is_refused_before_reading(tmp_path):
    """A 100-byte NRRD header that declares 1200^3 voxels: refused from the header (it used to allocate 3.9 GB)."""
    p = tmp_path / "huge.nrrd"
    p.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1200 1200 1200\nendian: little\nencoding: raw\n\n")
    with pytest.raises(TMBRBInputError, match=r"declares 1200 x 1200 x 1200 voxels"):
        read_ct(p)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_pipe_or_device_as_the_ct_is_refused_not_read(tmp_path, kind):
    import os

    if kind == "fifo":
        p = tmp_path / "ct.nrrd"
        os.mkfifo(p)  # reading it would block for ever
    else:
        p = "/dev/zero"  # reading it would never end
    with pytest.raises(TMBRBInputError, match="not a regular file or folder"):
        read_ct(p)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("header, text", [
    ("ct.nhdr", "NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 8\nencoding: raw\nendian: little\n"
                "data file: voxels.raw\n\n"),
    ("ct.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\n"
               "ElementDataFile = voxels.raw\n"),
])
def test_a_header_whose_voxels_are_in_a_pipe_is_refused_not_read(tmp_path, header, text):
    import os

    (tmp_path / header).write_text(text)
    os.mkfifo(tmp_path / "voxels.raw")  # reading it would block for ever (the header itself is a regular file)
    with pytest.raises(TMBRBInputError, match="keeps its voxels in 'voxels.raw', which is not a regular file"):
        read_ct(tmp_path / header)


def test_itk_errors_give_the_reason_not_a_source_location(tmp_path):
    p = tmp_path / "noendian.nrrd"
    p.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n" + b"\0" * 128)
    with pytest.raises(TMBRBInputError) as e:
        read_ct(p)
    text = str(e.value)
    assert "endian" in text and ".cxx" not in text and "Exception thrown" not in text, text
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(TMBRBInputError, match=r"Unable to determine ImageIO reader for \"notes.txt\""):
        read_ct(txt)


# ------------------------------------------------------------------------------- outputs that overwrite or escape


@pytest.fixture()
def case_folder(tmp_path, ct_and_tumour):
    """A case folder as a hospital keeps it: the CT and its tumour segmentation side by side."""
    ct, seed = ct_and_tumour
    d = tmp_path / "case"
    d.mkdir()
    sitk.WriteImage(ct, str(d / "ct.nrrd"), True)
    mask = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(ct)
    idx = ct.TransformPhysicalPointToIndex(seed)
    for dz in range(-2, 3):
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                mask[idx[0] + dx, idx[1] + dy, idx[2] + dz] = 1
    sitk.WriteImage(mask, str(d / "tumour.nrrd"), True)
    return d, seed


def _score(args, bundle):
    from TMBRBLib.cli import main

    return main(["score", "--model", str(bundle.path), "--shifts", "0", "--no-pictures", "--progress", "none",
                 *args])


@pytest.mark.parametrize("how", ["same folder", "symlinked output", "hard-linked output"])
def test_out_never_overwrites_an_input(case_folder, placeholder_bundle, tmp_path, capsys, how):
    import os

    d, seed = case_folder
    mask = d / "tumour.nrrd"
    before = mask.read_bytes()
    out = d
    if how != "same folder":
        out = tmp_path / "out"
        out.mkdir()
        (os.symlink if how == "symlinked output" else os.link)(mask, out / "tumour.nrrd")
    rc = _score(["--ct", str(d / "ct.nrrd"), "--segmentation", str(mask), "--seed-lps",
                 ",".join(map(str, seed)), "--out", str(out)], placeholder_bundle)
    err = capsys.readouterr().err
    assert rc == 2 and "would replace the input" in err and "Traceback" not in err, err
    assert mask.read_bytes() == before
    assert not (out / "result.json").exists()


def test_a_link_planted_under_an_output_name_is_not_followed(case_folder, placeholder_bundle, tmp_path):
    import os

    d, seed = case_folder
    from TMBRBLib.outputs import OUTPUT_NAMES

    out = tmp_path / "out"
    out.mkdir()
    victims = {}
    for name in OUTPUT_NAMES:
        victims[name] = tmp_path / f"elsewhere-{name}"
        victims[name].write_text("not yours\n")
        os.symlink(victims[name], out / name)
    assert _score(["--ct", str(d / "ct.nrrd"), "--seed-lps", ",".join(map(str, seed)), "--out", str(out)],
                  placeholder_bundle) == 0
    assert all(v.read_text() == "not yours\n" for v in victims.values())
    assert (out / "crop.nrrd").is_file() and not (out / "crop.nrrd").is_symlink()


def test_out_that_is_a_file_or_read_only_is_refused_before_computing(case_folder, placeholder_bundle, tmp_path,
                                                                      capsys):
    import os

    d, seed = case_folder
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    outs = [(a_file, "is an existing file")]
    if os.geteuid() != 0:
        outs.append((read_only / "out", "read-only"))
    elif Path("/sys/class").is_dir():
        outs.append((Path("/sys/tmbrb-out"), "read-only"))  # root ignores permission bits, not sysfs
    for out, message in outs:
        rc = _score(["--ct", str(d / "ct.nrrd"), "--seed-lps", ",".join(map(str, seed)), "--out", str(out)],
                    placeholder_bundle)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, (out, err)
    assert a_file.read_text() == "x"


def _batch(manifest, out, bundle):
    from TMBRBLib.cli import main

    return main(["batch", str(manifest), "--out", str(out), "--model", str(bundle.path), "--shifts", "0",
                 "--no-pictures", "--quiet"])


def test_batch_case_ids_are_always_distinct_children_of_out(case_folder, placeholder_bundle, tmp_path):
    import csv

    d, seed = case_folder
    ids = ["..", ".", "/abs/path", "a/../../b", "..\\..\\c", "summary.csv", "summary.rank0.json", "x.error.log",
           "Case", "case", "ok"]
    man = tmp_path / "manifest.csv"
    with open(man, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "ct", "seed_lps"])
        for i in ids:
            w.writerow([i, str(d / "ct.nrrd"), ",".join(map(str, seed))])
    out = tmp_path / "batch"
    for _ in range(2):  # and again: a re-run must not crash on what the first left
        assert _batch(man, out, placeholder_bundle) == 3
        rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
        assert len(rows) == len(ids)
    assert (out / "summary.csv").is_file()
    assert {p.name for p in tmp_path.iterdir()} == {"case", "manifest.csv", "batch"}  # nothing beside --out
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert all(p.parent == out and (p / "result.json").is_file() for p in folders)
    assert len({p.name.lower() for p in folders}) == len(folders)
    by_status = {}
    for r in rows:
        by_status.setdefault(r["status"], []).append(r)
    failed = {r["case_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == {"summary.csv", "summary.rank0.json", "x.error.log", "case"}, failed
    assert "name of a file the batch writes" in failed["summary.csv"] and "appears twice" in failed["case"]


def test_batch_input_inside_its_own_case_folder_is_not_deleted(case_folder, placeholder_bundle, tmp_path):
    import csv

    d, seed = case_folder
    out = tmp_path / "batch"
    (out / "c1").mkdir(parents=True)
    ct = out / "c1" / "ct.nrrd"
    ct.write_bytes((d / "ct.nrrd").read_bytes())
    man = tmp_path / "manifest.csv"
    man.write_text(f"case_id,ct,seed_lps\nc1,{ct},\"{','.join(map(str, seed))}\"\n")
    assert _batch(man, out, placeholder_bundle) == 3
    rows = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8")))
    assert "lies in its output folder" in rows[0]["error"] and ct.is_file()


def test_batch_summary_never_replaces_the_manifest(case_folder, placeholder_bundle, tmp_path, capsys):
    d, seed = case_folder
    out = tmp_path / "batch"
    out.mkdir()
    man = out / "summary.csv"
    text = f"case_id,ct,seed_lps\nc1,{d / 'ct.nrrd'},\"{','.join(map(str, seed))}\"\n"
    man.write_text(text)
    assert _batch(man, out, placeholder_bundle) == 2
    assert "would replace the input" in capsys.readouterr().err and man.read_text() == text


def test_bundle_placeholder_never_replaces_an_existing_bundle_without_force(bundle_copy, tmp_path, capsys):
    from TMBRBLib.cli import main

    weights = {p: p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()}
    assert main(["bundle", "placeholder", str(bundle_copy)]) == 2
    assert "--force" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()} == weights
    assert main(["bundle", "placeholder", str(tmp_path / "new")]) == 0
    assert main(["bundle", "placeholder", str(bundle_copy), "--force"]) == 0


@pytest.mark.parametrize("spacing", [(1e-9, 1e-9, 1e-9), (0.0007, 0.0007, 0.002), (0.07, 0.07, 0.25)],
                         ids=["1e-9", "metres", "centimetres"])
def test_spacing_far_too_fine_is_refused(ct_and_tumour, spacing):
    ct, _ = ct_and_tumour
    bad = sitk.Image(ct)
    bad.SetSpacing(spacing)
    with pytest.raises(TMBRBInputError, match="too fine for a CT.*centimetres or metres"):
        validate_ct(bad)


@pytest.mark.parametrize("option, value, message", [
    ("--ring-mm", "nan", "--ring-mm nan is not a ring width"),
    ("--ring-mm", "inf", "is not a ring width"),
    ("--ring-mm", "-3", "is not a ring width"),
    ("--ring-mm", "0", "is not a ring width"),
    ("--device", "tpu", "'tpu' is not a device name"),
    ("--device", "cuda:7", "--device cuda:7"),
    ("--device", "banana:0", "is not a device name"),
    ("--shifts", "1000", "--shifts 1000 is out of range"),
    ("--shifts", "-1", "--shifts -1 is out of range"),
])
@pytest.mark.parametrize("command", ["score", "batch"])
def test_bad_options_exit_2_before_any_work(case_folder, placeholder_bundle, tmp_path, capsys, option, value,
                                            message, command):
    from TMBRBLib.cli import main

    d, seed = case_folder
    man = tmp_path / "m.csv"
    man.write_text(f"case_id,ct,seed_lps\nc1,{d / 'ct.nrrd'},\"{','.join(map(str, seed))}\"\n")
    where = (["score", "--ct", str(d / "ct.nrrd"), "--seed-lps", ",".join(map(str, seed)), "--progress", "none"]
             if command == "score" else ["batch", str(man), "--quiet"])
    rc = main([*where, "--out", str(tmp_path / "out"), "--model", str(placeholder_bundle.path), "--no-pictures",
               f"{option}={value}"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # refused before any work


# ------------------------------------------------------------------------------------------- what the user reads


def test_messages_show_plain_numbers_not_numpy_reprs(ct_and_tumour, scorer):
    ct, seed = ct_and_tumour
    coarse = sitk.Image(ct)
    coarse.SetSpacing((0.7, 0.7, 12.0))
    with pytest.raises(TMBRBInputError) as e:
        validate_ct(coarse)
    assert "(0.7, 0.7, 12) mm" in str(e.value) and "np." not in str(e.value)
    far = np.asarray(image_bounds_lps(ct).max) + 100
    with pytest.raises(TMBRBInputError) as e:
        score_case(ct, seed, Box(tuple(far), tuple(far + 10)), scorer=scorer)
    assert "wholly outside" in str(e.value) and "np." not in str(e.value)


def test_batch_manifest_with_a_byte_order_mark_and_formula_text(case_folder, placeholder_bundle, tmp_path,
                                                                monkeypatch):
    import csv

    d, seed = case_folder
    man = tmp_path / "excel.csv"
    seed_text = ",".join(map(str, seed))
    man.write_text(f"case_id,ct,seed_lps\nLUNG1-001,{d / 'ct.nrrd'},\"{seed_text}\"\n"
                   f"@SUM(1),{tmp_path / 'missing.nrrd'},\"{seed_text}\"\n", encoding="utf-8-sig")  # as Excel saves
    monkeypatch.chdir(tmp_path)
    assert _batch(man, "=out", placeholder_bundle) == 3  # a relative --out starting with "="
    rows = list(csv.reader(open(tmp_path / "=out" / "summary.csv", encoding="utf-8")))
    header, body = rows[0], rows[1:]
    assert [r[header.index("case_id")] for r in body] == ["LUNG1-001", "_SUM_1_"]  # the first column kept its name
    assert body[0][header.index("status")] == "ok"
    cells = [c for r in body for c in r]
    assert not [c for c in cells if c[:1] in ("=", "+", "@")], cells
    assert body[0][header.index("output_dir")] == "LUNG1-001"  # relative to the summary's folder (issue 17)


# --- Silently wrong inputs (issue 17): each was read and scored with exit 0 before -----------------------------------

@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_truncated_nifti_is_refused_not_read_with_zero_slices(tmp_path, ext):
    ct, _ = make_ct(size=(40, 36, 12), spacing=(0.8, 0.8, 2.0))
    whole = tmp_path / ("ct" + ext)
    sitk.WriteImage(ct, str(whole), useCompression=ext.endswith(".gz"))
    img, _ = read_ct(whole)  # the complete file reads
    assert np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ct))
    data = whole.read_bytes()
    cut = tmp_path / ("cut" + ext)
    cut.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(TMBRBInputError, match="cut short"):
        read_ct(cut)


@pytest.fixture
def dicom_ct():
    ct, _ = make_ct(size=(40, 36, 12), spacing=(0.8, 0.8, 2.0), tumour_lps=(10, -20, 30), radius_mm=6)
    return ct


def test_dicom_series_with_a_missing_slice_is_refused_naming_the_gap(tmp_path, dicom_ct):
    _write_dicom_series(dicom_ct, tmp_path / "d")
    (tmp_path / "d" / "slice0005.dcm").unlink()
    with pytest.raises(TMBRBInputError, match=r"4 mm between slice0004.dcm .* and slice0006.dcm .* 2 mm apart.*"
                                              r"a slice is missing"):
        read_ct(tmp_path / "d")


def test_dicom_series_with_uneven_spacing_is_refused(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    f = folder / "slice0008.dcm"  # move one slice by 0.5 mm along z: steps 2.5 and 1.5 mm around it
    img = sitk.ReadImage(str(f))
    pos = [float(v) for v in img.GetMetaData("0020|0032").split("\\")]
    img.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in (pos[0], pos[1], pos[2] + 0.5)))
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    w.SetFileName(str(f))
    w.Execute(img)
    with pytest.raises(TMBRBInputError, match="unevenly spaced"):
        read_ct(folder)


def test_dicom_series_with_a_truncated_slice_file_is_refused_naming_it(tmp_path, dicom_ct):
    _write_dicom_series(dicom_ct, tmp_path / "d")
    f = tmp_path / "d" / "slice0011.dcm"  # the last slice: its loss leaves no gap, only the file says it
    f.write_bytes(f.read_bytes()[:600])
    with pytest.raises(TMBRBInputError, match=r"cannot be read as a slice \(slice0011.dcm\)"):
        read_ct(tmp_path / "d")


def _declare_rows_columns(path: Path, rows: int, columns: int) -> None:
    """Rewrite a slice file's Rows (0028,0010) and Columns (0028,0011) in place; its pixel data stays as it was."""
    data = bytearray(path.read_bytes())
    for elem, value in ((0x10, rows), (0x11, columns)):
        tag = bytes([0x28, 0x00, elem, 0x00])
        explicit, implicit = tag + b"US\x02\x00", tag + b"\x02\x00\x00\x00"  # the two little-endian syntaxes
        at = data.index(explicit) + len(explicit) if explicit in data else data.index(implicit) + len(implicit)
        data[at:at + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(data))


def test_dicom_series_declaring_too_many_voxels_in_total_is_refused_before_reading_pixels(tmp_path, dicom_ct,
                                                                                          monkeypatch):
    import TMBRBLib.io as tio

    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    for f in sorted(folder.iterdir()):  # 12 slices of 20000 x 20000: each under the limit, 4.8e9 values together
        _declare_rows_columns(f, 20000, 20000)
    assert 20000 * 20000 < tio.MAX_VOXELS
    reads = []
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", lambda self: reads.append(1))  # the pixels: not read
    with pytest.raises(TMBRBInputError, match=r"The DICOM series in 'd' declares 4.8 billion values over 12 slice "
                                              r"file\(s\) \(sizes 20000 x 20000 x 1\); the limit is 1.07 billion"):
        read_ct(folder)
    assert reads == []


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("name", ["slice9999.dcm", "notes"])
def test_dicom_folder_holding_a_pipe_is_refused_not_read(tmp_path, dicom_ct, name):
    import os
    import subprocess
    import sys

    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    os.mkfifo(folder / name)  # GDCM's scan of the folder opened it and blocked for ever
    code = ("import sys; from TMBRBLib.io import read_ct; from TMBRBLib.errors import TMBRBInputError\n"
            "try:\n    read_ct(sys.argv[1])\nexcept TMBRBInputError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"holds 1 entry(ies) that are not regular files ({name}: a pipe, socket or device)" in r.stdout


@pytest.mark.parametrize("size, spacing, message", [
    ((40, 40, 3), (0.8, 0.8, 1.0), "covers .* under 10 mm along an axis is not a chest CT"),
    ((512, 512, 40), (5.0, 5.0, 5.0), "covers .* over 2 m along an axis is not a chest CT"),
], ids=["a few mm thick", "metres wide"])
def test_field_of_view_implausible_for_a_chest_ct_is_refused(size, spacing, message):
    ct = sitk.Image(list(size), sitk.sitkInt16)
    ct.SetSpacing(spacing)
    arr = np.full(size[::-1], -900, np.int16)
    arr[:, : size[1] // 2] = 40
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ct)
    with pytest.raises(TMBRBInputError, match=message):
        validate_ct(img)


def test_box_mostly_outside_the_scan_is_refused_by_the_engine_as_by_slicer(ct_and_tumour, scorer):
    ct, seed = ct_and_tumour
    b = image_bounds_lps(ct)
    # a box that overlaps the scan by about one voxel along z: its crop would be almost all air padding
    box = Box((seed[0] - 10, seed[1] - 10, b.max[2] - 0.7), (seed[0] + 10, seed[1] + 10, b.max[2] + 30))
    with pytest.raises(TMBRBInputError, match=r"\d\d% of the box .* lies outside the CT \(at most 25% is accepted"):
        score_case(ct, seed, box, scorer=scorer, n_shifts=0)


def test_an_image_passed_as_the_segmentation_is_refused(ct_and_tumour, tmp_path):
    ct, _ = ct_and_tumour
    from TMBRBLib.io import read_mask
    p = tmp_path / "ct_as_mask.nrrd"
    sitk.WriteImage(ct, str(p))  # the phantom CT has two values (-850, 40): a label count alone would pass it
    with pytest.raises(TMBRBInputError, match="not a label map: it holds negative values"):
        read_mask(p, ct)
    noisy, _ = make_ct(size=(80, 80, 40), tumour_lps=(10, -20, 30), radius_mm=7,
                       background_hu=500, tumour_hu=600, noise=60)
    sitk.WriteImage(noisy, str(p))  # all positive, but hundreds of values
    with pytest.raises(TMBRBInputError, match="more than 255 distinct values"):
        read_mask(p, ct)
    frac = sitk.Cast(sitk.Abs(ct), sitk.sitkFloat32) / 1000.0
    sitk.WriteImage(frac, str(p))
    with pytest.raises(TMBRBInputError, match="not whole numbers"):
        read_mask(p, ct)


def _edit_metadata(bundle_dir, edit):
    m = bundle_dir / "configs" / "metadata.json"
    meta = json.loads(m.read_text())
    edit(meta["tmbrb"])
    m.write_text(json.dumps(meta))


@pytest.mark.parametrize("where, value, message", [
    ("preprocessing.hu_window", [400.0, 400.0], r"hu_window = \[400.0, 400.0\]: it must be two finite numbers"),
    ("preprocessing.hu_window", [-1000.0, "NaN"], "hu_window"),
    ("preprocessing.interpolation", "cubic", "interpolation = \"cubic\": it must be one of"),
    ("preprocessing.shape", [64, 64, 100000], "shape = .*three whole numbers from 8 to 256"),
    ("preprocessing.fov_mm", float("inf"), "fov_mm = Infinity"),
    ("risk.os.cutoff", float("nan"), r"risk.os.cutoff = NaN: it must be a finite number from 0 to 1"),
    ("risk.pfs.operator", "=>", "risk.pfs.operator"),
    ("cam.class_index", 5, "cam.class_index = 5: it must be a whole number from 0 to 1"),
    ("architecture.growth_rate", 100000, "growth_rate = 100000: it must be a whole number from 1 to 256"),
    ("architecture.block_config", [6, 12, 24, 100000], "block_config"),
    ("architecture.colour", "red", "architecture.colour = \"red\": it must be absent"),
    ("tta.n_shifts", 1000, "n_shifts = 1000"),
])
def test_bundle_verify_checks_every_value_the_engine_reads(bundle_copy, capsys, where, value, message):
    from TMBRBLib.cli import main
    section, *keys = where.split(".")

    def edit(t):
        d = t[section]
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    _edit_metadata(bundle_copy, edit)
    with pytest.raises(TMBRBBundleError, match=message):
        load_bundle(bundle_copy)
    assert main(["bundle", "verify", str(bundle_copy)]) == 2
    assert "bundle OK" not in capsys.readouterr().out


def test_a_nan_score_never_gets_risk_groups(ct_and_tumour, bundle_copy):
    """Weights that give NaN (their checksum re-made, so they pass it) stop the case instead of assigning groups."""
    from safetensors.torch import load_file, save_file
    from TMBRBLib.bundle import sha256_file
    from TMBRBLib.pipeline import Scorer
    ct, seed = ct_and_tumour
    w = bundle_copy / "models" / "model.safetensors"
    state = load_file(str(w))
    key = next(k for k in state if k.endswith("class_layers.out.3.bias"))
    state[key] = state[key] * float("nan")
    save_file(state, str(w))
    _edit_metadata(bundle_copy, lambda t: t["weights"].update(sha256=sha256_file(w)))
    with pytest.raises(TMBRBBundleError, match="score that is not a number"):
        score_case(ct, seed, scorer=Scorer(load_bundle(bundle_copy), "cpu"), n_shifts=0)


@pytest.mark.parametrize("value", ["../outside/ct.raw", "ABSOLUTE", "../outside/slice%02d.raw 0 1 1",
                                   "LIST\n../outside/ct.raw"])
def test_a_confined_read_refuses_a_header_whose_data_file_lies_outside(tmp_path, value):
    """read_ct(within=...) (the viewer's uploads and --data-dir) never lets a header name a file outside the folder."""
    from TMBRBLib.io import read_ct

    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    a = np.full((8, 16, 16), -700, np.int16)
    for name in ("ct.raw", "slice00.raw", "slice01.raw"):
        (outside / name).write_bytes(a.tobytes())
    value = value.replace("ABSOLUTE", str(outside / "ct.raw"))
    header = inside / "ct.nhdr"
    header.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 16 16 8\nspacings: 2 2 3\nencoding: raw\n"
                      "endian: little\n"
                      f"data file: {value}\n\n")
    with pytest.raises(TMBRBInputError, match="outside its folder"):
        read_ct(header, within=inside)
    (inside / "ct.raw").write_bytes(a.tobytes())
    header.write_text(header.read_text().replace(value, "ct.raw"))
    assert read_ct(header, within=inside)[0].GetSize() == (16, 16, 8)  # a data file next to it reads


def _non_image_dicom(path, sop_class):
    """A valid DICOM object that is not an image (its file meta header and a few tags), written byte by byte."""
    def element(group, elem, vr, value):
        value = value + (b"\0" if len(value) % 2 else b"")
        return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value

    uid = sop_class.encode()
    body = element(0x0002, 0x0002, b"UI", uid) + element(0x0002, 0x0003, b"UI", b"1.2.3.4.5.6.7") \
        + element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1")
    meta = struct.pack("<HH", 0x0002, 0x0000) + b"UL" + struct.pack("<HI", 4, len(body)) + body
    data = element(0x0008, 0x0016, b"UI", uid) + element(0x0008, 0x0060, b"CS", b"SR") \
        + element(0x0020, 0x000E, b"UI", b"1.2.3.4.5.6.8")
    path.write_bytes(b"\0" * 128 + b"DICM" + meta + data)


@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.481.3",
                                       "1.2.840.10008.1.3.10"], ids=["structured report", "RT structure", "DICOMDIR"])
def test_dicom_series_with_a_report_or_structure_beside_it_reads_with_a_warning(tmp_path, dicom_ct, sop_class):
    _write_dicom_series(dicom_ct, tmp_path / "d")
    _non_image_dicom(tmp_path / "d" / "report.dcm", sop_class)
    ct, warnings = read_ct(tmp_path / "d")
    assert ct.GetSize() == dicom_ct.GetSize()
    assert any("Skipped 1 DICOM file(s) that are not CT images (report.dcm)" in w for w in warnings), warnings


def test_a_given_mask_of_another_lesion_or_of_several_parts_is_warned_about(dicom_ct):
    """With a mask and no box, the box is made from the mask: a seed outside it, or a mask in pieces, is said."""
    from TMBRBLib.pipeline import resolve_box

    ct = dicom_ct
    arr = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    arr[4:7, 5:10, 5:10] = 1  # one lesion in a corner
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(ct)
    inside = ct.TransformContinuousIndexToPhysicalPoint((7.0, 7.0, 5.0))
    far = ct.TransformContinuousIndexToPhysicalPoint((30.0, 28.0, 5.0))
    warnings = []
    resolve_box(ct, inside, None, None, warnings, tumour_mask=mask)
    assert warnings == []
    resolve_box(ct, far, None, None, warnings, tumour_mask=mask)
    assert len(warnings) == 1 and "seed lies outside the box made from the tumour mask" in warnings[0]
    arr[4:7, 25:30, 25:30] = 1  # a second lesion
    two = sitk.GetImageFromArray(arr)
    two.CopyInformation(ct)
    warnings = []
    resolve_box(ct, inside, None, None, warnings, tumour_mask=two)
    assert any("The tumour mask has 2 separate parts" in w for w in warnings), warnings
