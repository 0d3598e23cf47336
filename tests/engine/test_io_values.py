"""Reading CTs and masks: the values and messages a user relies on (issue 16). Exact messages for each kind of bad
input, the limits at their boundary (Hounsfield range, spacing, field of view, label count, slice spacing tolerance),
DICOM folders (damaged files, other objects, the series read), NIfTI headers cut short, detached headers, and the
grid helpers (a mask put on the CT's grid, sub-images)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib import io as tio
from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.io import (array_to_image, check_data_files_within, check_declared_size, check_field_of_view,
                         check_label_map, check_nifti_data_size, check_slice_positions, detached_data_files, dicom_series_files,
                         dicom_storage_class, itk_reason, mask_on_ct_grid, paste_region, read_ct, read_image,
                         read_mask, same_grid, sub_image_info, validate_ct, write_image)

from .synthetic import make_ct
from .test_bad_input import _non_image_dicom, _write_dicom_series


def _message(fn, *args, **kw) -> str:
    with pytest.raises(TMBRBInputError) as e:
        fn(*args, **kw)
    return str(e.value)


def _image(arr, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def _air_ct(size_zyx=(20, 20, 20), value=-1000.0, spacing=(1.0, 1.0, 1.0), dtype=np.int16):
    return _image(np.full(size_zyx, value, dtype), spacing)


@pytest.fixture(scope="module")
def dicom_ct():
    # identity directions; slice k lies at z = 30 - 2 * 5.5 + 2 k = 19 + 2 k mm
    ct, _ = make_ct(size=(40, 36, 12), spacing=(0.8, 0.8, 2.0), tumour_lps=(10, -20, 30), radius_mm=6)
    return ct


def _move_slice(path: Path, dz: float = None, tags=None, erase=()):
    img = sitk.ReadImage(str(path))
    if dz is not None:
        pos = [float(v) for v in img.GetMetaData("0020|0032").split("\\")]
        img.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in (pos[0], pos[1], pos[2] + dz)))
    for k, v in (tags or {}).items():
        img.SetMetaData(k, v)
    for k in erase:
        img.EraseMetaData(k)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    w.SetFileName(str(path))
    w.Execute(img)


# ------------------------------------------------------------------------------------------------ DICOM folders
def test_dicom_series_files_are_the_larger_series_in_slice_order(tmp_path, dicom_ct):
    small, _ = make_ct(size=(40, 36, 4), spacing=(0.8, 0.8, 2.0))
    _write_dicom_series(dicom_ct, tmp_path / "d", "1.2.826.0.1.3680043.2.1125.20")
    _write_dicom_series(small, tmp_path / "d", "1.2.826.0.1.3680043.2.1125.21", start=100)
    files = dicom_series_files(tmp_path / "d")
    assert [Path(f).name for f in files] == [f"slice{k:04d}.dcm" for k in range(12)]
    assert dicom_series_files(str(tmp_path / "d")) == files
    assert dicom_series_files(tmp_path / "d" / "slice0000.dcm") == []  # a file, not a folder
    assert dicom_series_files(tmp_path / "nowhere") == []
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert dicom_series_files(tmp_path / "empty") == []
    ct, warnings = read_ct(tmp_path / "d")
    assert warnings == ["The DICOM folder holds 2 series; used the largest (1.2.826.0.1.3680043.2.1125.20, 12 "
                        "files). Give a folder with one series to choose."]
    assert ct.GetSize() == (40, 36, 12)


def test_damaged_slice_files_are_named_the_first_three_and_a_count(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    for k in (0, 1, 9, 10, 11):  # ends of the series: what is left has no gap
        f = folder / f"slice{k:04d}.dcm"
        f.write_bytes(f.read_bytes()[:600])
    msg = _message(read_ct, folder)
    assert msg.startswith(f"The DICOM folder '{folder}' holds 5 file(s) that cannot be read as a slice (slice0000.dcm, "
                          "slice0001.dcm, slice0009.dcm and 2 more): truncated or damaged.")
    assert "Export the series again from the scanner or PACS, or remove files that do not belong to it." in msg


def test_a_damaged_file_named_dcm_is_refused_and_other_files_are_ignored(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "image.bin").write_bytes(b"\0" * 300)
    ct, warnings = read_ct(folder)
    assert warnings == [] and ct.GetSize() == (40, 36, 12)
    (folder / "JUNK.DCM").write_bytes(b"\0" * 300)  # a .dcm name counts, in any case, even without the preamble
    assert "cannot be read as a slice (JUNK.DCM)" in _message(read_ct, folder)


def test_other_dicom_objects_are_skipped_with_a_count(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    for name in ("sr1", "sr2.dcm", "sr3", "sr4"):  # no .dcm name: found by the 'DICM' preamble
        _non_image_dicom(folder / name, "1.2.840.10008.5.1.4.1.1.88.22")
    ct, warnings = read_ct(folder)
    assert warnings == ["Skipped 4 DICOM file(s) that are not CT images (sr1, sr2.dcm, sr3 and 1 more): reports, "
                        "structures or other objects in the series folder."]


def _file_meta(path: Path, elements, preamble=b"DICM"):
    out = b""
    for group, elem, vr, value in elements:
        if vr in (b"OB", b"UN"):
            out += struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        else:
            out += struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value
    path.write_bytes(b"\0" * 128 + preamble + out)
    return path


def test_dicom_storage_class_is_read_from_the_file_meta(tmp_path):
    ct_class = b"1.2.840.10008.5.1.4.1.1.2\0"
    meta = [(0x0002, 0x0000, b"UL", struct.pack("<I", 100)), (0x0002, 0x0001, b"OB", b"\0\1"),
            (0x0002, 0x0002, b"UI", ct_class), (0x0002, 0x0003, b"UI", b"1.2.3\0")]
    assert dicom_storage_class(_file_meta(tmp_path / "a", meta)) == "1.2.840.10008.5.1.4.1.1.2"
    assert dicom_storage_class(str(tmp_path / "a")) == "1.2.840.10008.5.1.4.1.1.2"
    assert dicom_storage_class(_file_meta(tmp_path / "b", [(0x0002, 0x0002, b"UI", b" 1.2.840 ")])) == "1.2.840"
    assert dicom_storage_class(_file_meta(tmp_path / "c", meta, preamble=b"DICN")) == ""
    assert dicom_storage_class(_file_meta(tmp_path / "d", meta[:2])) == ""        # no class element
    assert dicom_storage_class(_file_meta(tmp_path / "e", [(0x0008, 0x0002, b"UI", ct_class)])) == ""  # not group 2
    assert dicom_storage_class(tmp_path / "missing") == ""
    (tmp_path / "f").write_bytes((tmp_path / "a").read_bytes()[:132 + 12 + 8 + 4])  # cut inside the OB element
    assert dicom_storage_class(tmp_path / "f") == ""
    (tmp_path / "g").write_bytes((tmp_path / "a").read_bytes()[:132 + 12 + 4])  # cut inside a long VR's header
    assert dicom_storage_class(tmp_path / "g") == ""
    far = [(0x0002, 0x0001, b"OB", b"\0" * 4000), (0x0002, 0x0002, b"UI", ct_class)]  # past the first 4096 bytes
    assert dicom_storage_class(_file_meta(tmp_path / "h", far)) == ""


def test_a_missing_slice_is_named_with_its_neighbours_positions(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    (folder / "slice0005.dcm").unlink()
    assert _message(read_ct, folder) == (
        "The DICOM series has uneven slice spacing: 4 mm between slice0004.dcm (at 27.00 mm) and slice0006.dcm (at "
        "31.00 mm) where the other slices are 2 mm apart (1 such step(s)): a slice is missing. Stacked as they are, "
        "the slices would lie at the wrong positions. "
        "Export the complete series again from the scanner or PACS (all slices, one reconstruction).")


def test_uneven_slices_are_refused_beyond_one_percent_of_the_step(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    _move_slice(folder / "slice0008.dcm", 0.015)  # steps 2.015 and 1.985: within 1% of 2 mm
    ct, warnings = read_ct(folder)
    assert warnings == [] and ct.GetSize()[2] == 12
    _move_slice(folder / "slice0008.dcm", 0.5 - 0.015)  # steps 2.5 and 1.5
    msg = _message(read_ct, folder)
    assert msg.startswith("The DICOM series has uneven slice spacing: 2.5 mm between slice0007.dcm (at 33.00 mm) and "
                          "slice0008.dcm (at 35.50 mm) where the other slices are 2 mm apart (2 such step(s)): the "
                          "slices are unevenly spaced.")
    _move_slice(folder / "slice0008.dcm", -0.5 + 0.03)  # steps 2.03 and 1.97: over 1% of 2 mm
    assert "2.03 mm between slice0007.dcm" in _message(read_ct, folder)


def test_slices_at_one_position_are_refused(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    for k in range(12):  # every slice at one position (one volume stacked on itself)
        _move_slice(folder / f"slice{k:04d}.dcm", tags={"0020|0032": "-5.600000\\-34.000000\\19.000000"})
    msg = _message(read_ct, folder)
    assert msg.startswith("The DICOM series has slices at the same position (slice")
    assert msg.endswith(", ...): it holds several volumes or repeated slices. "
                        "Give a folder with one CT series, one file per slice.")


def test_the_series_size_limit_is_on_the_sum_of_the_slices(tmp_path, dicom_ct, monkeypatch):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    monkeypatch.setattr(tio, "MAX_VOXELS", 40 * 36 * 12)  # exactly the series: read
    assert read_ct(folder)[0].GetSize() == (40, 36, 12)
    monkeypatch.setattr(tio, "MAX_VOXELS", 40 * 36 * 12 - 1)
    assert _message(read_ct, folder) == (
        "The DICOM series in 'd' declares 0.0 billion values over 12 slice file(s) (sizes 40 x 36 x 1); the limit is "
        "0.00 billion. Check the series; a chest CT is about 512 x 512 x 100-1000 voxels.")


# ------------------------------------------------------------------------------------------------ ITK's messages
@pytest.mark.parametrize("text, reason", [
    ('Exception thrown in ReadImage: /src/a.cxx:99:\nsitk::ERROR: Unable to determine ImageIO reader for "/tmp/x/up.txt"',
     'Unable to determine ImageIO reader for "up.txt"'),
    ("/src/b.hxx:10:\nITK ERROR: NrrdImageIO(0x55d0c): ReadImageInformation: Error reading /tmp/x/up.txt:\n"
     "[nrrd] nrrdLoad: trouble reading \"/tmp/x/up.txt\"\n[nrrd] _nrrdFormatNRRD_read: field \"sizes\" missing",
     'ReadImageInformation: Error reading up.txt: field "sizes" missing'),
    ("Exception thrown in SimpleITK\n  something odd happened  \n\n", "something odd happened"),
    ("Exception thrown in SimpleITK", "Exception thrown in SimpleITK"),
    ("something first\nException thrown in SimpleITK", "something first"),
    ("ITK ERROR: ImageIO(0x1f): Unable: the inner ERROR: detail", "Unable: the inner ERROR: detail"),
    ("ITK ERROR: Bad MAX:\nthe last line", "Bad MAX: the last line"),
    ("", "unknown reason"),
])
def test_itk_reason_keeps_the_reason_and_the_file_name_only(text, reason):
    assert itk_reason(RuntimeError(text), "/tmp/x/up.txt") == reason


def test_an_unreadable_file_says_what_it_was_and_why(tmp_path):
    p = tmp_path / "up.txt"
    p.write_text("hello")
    msg = _message(read_image, p, "segmentation")
    assert msg.startswith(f"Could not read the segmentation '{p}' (") and "up.txt" in msg
    assert "/src/" not in msg and ".cxx" not in msg and ".hxx" not in msg
    assert msg.endswith("Give a NRRD, NIfTI (.nii/.nii.gz), MHA file or a DICOM series folder that is not "
                        "damaged.")
    assert _message(read_image, tmp_path / "no.nrrd", "segmentation") == (
        f"The segmentation '{tmp_path / 'no.nrrd'}' does not exist. Check the path.")


def test_a_detached_header_whose_voxels_are_a_folder_is_refused(tmp_path):
    (tmp_path / "ct.raw").mkdir()
    (tmp_path / "ct.nhdr").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n"
                                      "data file: ct.raw\n\n")
    assert _message(read_image, tmp_path / "ct.nhdr", "mask") == (
        "The mask 'ct.nhdr' keeps its voxels in 'ct.raw', which is not a regular file (a pipe, socket or device). "
        "Give a NRRD, NIfTI or MHA file, or a DICOM series folder.")


def test_a_header_declaring_too_many_voxels_names_its_size(tmp_path):
    (tmp_path / "big.nhdr").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 2048 2048 1024\nencoding: raw\n"
                                       "endian: little\n"
                                       "data file: big.raw\n\n")
    (tmp_path / "big.raw").write_bytes(b"")
    assert _message(read_image, tmp_path / "big.nhdr", "segmentation") == (
        "The segmentation 'big.nhdr' declares 2048 x 2048 x 1024 voxels (4.3 billion values); the limit is 1.07 "
        "billion. Check the file's header; a chest CT is about 512 x 512 x 100-1000 voxels.")


@pytest.mark.parametrize("sizes, billions", [
    ("1350 1000 1000", "1.4"),                  # 1.35 rounds up (1.3 if divided by a hair more than 1e9)
    ("3037000500 3037000500 1", "9223372037.0"),  # past 2**63: counted in floats, not wrapped to a negative count
])
def test_the_declared_size_is_counted_and_shown_in_billions(tmp_path, sizes, billions):
    (tmp_path / "big.nhdr").write_text(f"NRRD0004\ntype: short\ndimension: 3\nsizes: {sizes}\nencoding: raw\n"
                                       "endian: little\ndata file: big.raw\n\n")
    (tmp_path / "big.raw").write_bytes(b"")  # never read
    assert _message(check_declared_size, tmp_path / "big.nhdr") == (  # "the CT" unless named otherwise
        f"The CT 'big.nhdr' declares {sizes.replace(' ', ' x ')} voxels ({billions} billion values); the limit is "
        "1.07 billion. Check the file's header; a chest CT is about 512 x 512 x 100-1000 voxels.")


def test_the_voxel_limit_is_inclusive_and_counts_components(tmp_path, monkeypatch):
    img = sitk.Image([4, 4, 4], sitk.sitkVectorInt16, 2)
    write_image(img, tmp_path / "v.nrrd")
    monkeypatch.setattr(tio, "MAX_VOXELS", 128)
    assert read_image(tmp_path / "v.nrrd")[0].GetSize() == (4, 4, 4)
    monkeypatch.setattr(tio, "MAX_VOXELS", 127)
    assert "declares 4 x 4 x 4 voxels (0.0 billion values)" in _message(read_image, tmp_path / "v.nrrd")


# ------------------------------------------------------------------------------------------------ NIfTI cut short
def _nifti1(path: Path, endian="<", dims=(3, 4, 4, 4), bitpix=16, offset=352.0, data=b"", datatype=4):
    h = bytearray(348)
    struct.pack_into(endian + "i", h, 0, 348)
    dim = list(dims) + [1] * (8 - len(dims))
    struct.pack_into(endian + "8h", h, 40, *dim)
    struct.pack_into(endian + "h", h, 70, datatype)  # 4: int16
    struct.pack_into(endian + "h", h, 72, bitpix)
    struct.pack_into(endian + "8f", h, 76, 0, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into(endian + "f", h, 108, offset)
    h[344:348] = b"n+1\0"
    path.write_bytes(bytes(h) + b"\0" * 4 + data)
    return path


def _nifti2(path: Path, endian="<", dims=(3, 4, 4, 4), bitpix=16, offset=544, data=b"", datatype=4):
    h = bytearray(540)
    struct.pack_into(endian + "i", h, 0, 540)
    h[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into(endian + "h", h, 12, datatype)  # 4: int16
    struct.pack_into(endian + "h", h, 14, bitpix)
    dim = list(dims) + [1] * (8 - len(dims))
    struct.pack_into(endian + "8q", h, 16, *dim)
    struct.pack_into(endian + "q", h, 168, offset)
    path.write_bytes(bytes(h) + b"\0" * 4 + data)
    return path


@pytest.mark.parametrize("make", [_nifti1, _nifti2], ids=["NIfTI-1", "NIfTI-2"])
@pytest.mark.parametrize("endian", ["<", ">"], ids=["little endian", "big endian"])
def test_a_nifti_holding_half_its_voxels_is_refused_with_the_counts(tmp_path, make, endian):
    p = make(tmp_path / "ct.nii", endian, data=b"\0" * 64)  # 4 x 4 x 4 int16 = 128 bytes declared
    assert _message(check_nifti_data_size, p, "segmentation") == (
        "The segmentation 'ct.nii' is cut short: its header declares 128 bytes of voxels, the file holds 64 (50%); "
        "the missing slices would be read as zeros. Copy or export the file again; a complete file is needed.")
    check_nifti_data_size(make(tmp_path / "ok.nii", endian, data=b"\0" * 128))  # complete: nothing to say


def test_nifti_sizes_follow_the_header_dimensions_and_bits(tmp_path):
    # dim[0] = 2: only 4 x 4 count (32 bytes of int16); the unused dims hold 9s and are ignored
    check_nifti_data_size(_nifti1(tmp_path / "a.nii", dims=(2, 4, 4, 9, 9, 9, 9, 9), data=b"\0" * 32))
    assert "declares 32 bytes of voxels, the file holds 31 (97%)" in _message(
        check_nifti_data_size, _nifti1(tmp_path / "b.nii", dims=(2, 4, 4, 9, 9, 9, 9, 9), data=b"\0" * 31))
    # dim[0] = 9 is read as 7 dimensions; a zero size counts as 1
    assert "declares 512 bytes" in _message(
        check_nifti_data_size, _nifti1(tmp_path / "c.nii", dims=(9, 4, 4, 4, 0, 2, 1, 2), data=b""))
    assert "declares 512 bytes" in _message(
        check_nifti_data_size, _nifti2(tmp_path / "c2.nii", dims=(9, 4, 4, 4, 0, 2, 1, 2), data=b""))
    # 32-bit voxels (float32); an offset inside the header counts from the header's end
    assert "declares 256 bytes of voxels, the file holds 4 (2%)" in _message(
        check_nifti_data_size, _nifti1(tmp_path / "d.nii", bitpix=32, datatype=16, offset=0.0, data=b""))
    assert "declares 256 bytes of voxels, the file holds 4 (2%)" in _message(
        check_nifti_data_size, _nifti2(tmp_path / "d2.nii", bitpix=32, datatype=16, offset=0, data=b""))
    assert "the file holds 0 (0%)" in _message(
        check_nifti_data_size, _nifti1(tmp_path / "e.nii", offset=400.0, data=b"\0" * 20))
    assert "the file holds 0 (0%)" in _message(
        check_nifti_data_size, _nifti2(tmp_path / "e2.nii", offset=600, data=b"\0" * 20))
    # dim[0] = 0: no dimension counts, one voxel of 2 bytes
    check_nifti_data_size(_nifti1(tmp_path / "f.nii", dims=(0, 4, 4, 4), data=b"\0\0"))
    # a header cut right after its 348 bytes: nothing of the voxels
    (tmp_path / "g.nii").write_bytes(_nifti1(tmp_path / "g.nii").read_bytes()[:348])
    assert _message(check_nifti_data_size, tmp_path / "g.nii").startswith(  # "the CT" unless named otherwise
        "The CT 'g.nii' is cut short: its header declares 128 bytes of voxels, the file holds 0 (0%)")
    # 7 dimensions of 32767 voxels: counted in floats, without overflowing to a small or negative count
    msg = _message(check_nifti_data_size, _nifti1(tmp_path / "h.nii", dims=(7,) + (32767,) * 7, data=b""))
    assert f"declares {int(np.float64(32767) ** 7) * 2} bytes of voxels" in msg


def test_a_gzipped_nifti_cut_short_is_refused(tmp_path):
    raw = _nifti1(tmp_path / "x.nii", data=b"\1" * 64).read_bytes()
    (tmp_path / "half.nii.gz").write_bytes(gzip.compress(raw))
    assert "'half.nii.gz' is cut short: its header declares 128 bytes of voxels, the file holds 64 (50%)" in \
        _message(check_nifti_data_size, tmp_path / "half.nii.gz")
    whole = gzip.compress(_nifti1(tmp_path / "y.nii", data=b"\1" * 128).read_bytes())
    (tmp_path / "ok.NII.GZ").write_bytes(whole)
    check_nifti_data_size(tmp_path / "ok.NII.GZ")
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) - 12])
    msg = _message(check_nifti_data_size, tmp_path / "cut.nii.gz", "mask")
    assert msg.startswith("The mask 'cut.nii.gz' is cut short or damaged (its gzip stream: ")
    assert msg.endswith("). Copy or export the file again; a complete file is needed.")


def test_files_that_are_not_nifti_are_left_to_itk(tmp_path):
    (tmp_path / "a.nii").write_bytes(b"\0" * 600)  # no NIfTI header: ITK's reader says why
    check_nifti_data_size(tmp_path / "a.nii")
    (tmp_path / "b.nrrd").write_bytes(b"NRRD")
    check_nifti_data_size(tmp_path / "b.nrrd")
    small = bytearray(_nifti2(tmp_path / "c.nii").read_bytes()[:400])  # a NIfTI-2 size, 400 bytes only
    (tmp_path / "c.nii").write_bytes(bytes(small))
    check_nifti_data_size(tmp_path / "c.nii")


# ------------------------------------------------------------------------------------------------ detached headers
@pytest.mark.parametrize("name, header, files", [
    ("a.nhdr", "NRRD0004\ntype: short\ndata file: ct.raw\n\n", ["ct.raw"]),
    ("a.nhdr", "NRRD0004\nData File: sub/ct raw.raw\n\n", ["sub/ct raw.raw"]),
    ("a.nhdr", "NRRD0004\ndatafile: LIST\ns1.raw\ns2.raw\n\ns3.raw\n", ["s1.raw", "s2.raw", "s3.raw"]),
    ("a.nhdr", "NRRD0004\ndata file: LIST 2\ns1.raw\n", ["s1.raw"]),
    ("a.nhdr", "NRRD0004\ndata file: LOCAL\n\n", []),
    ("a.nhdr", "NRRD0004\ndata file:\n\n", []),
    ("a.nhdr", "NRRD0004\ndata file: slice%03d.raw 1 3 1\n\n", []),
    ("a.nhdr", "NRRD0004\ntype: short\n\ndata file: after-the-header.raw\n", []),
    ("a.nhdr", "NRRD0004\n# data file: ct.raw\nline without a colon\n\n", []),
    ("a.mhd", "ObjectType = Image\nElementDataFile = ct.raw\n", ["ct.raw"]),
    ("a.MHA", "NDims = 3\n\nElementDataFile = LOCAL\n", []),
    ("a.mha", "NDims = 3\nElementDataFile = ct.raw\n", ["ct.raw"]),
    ("a.mhd", "NDims = 3\nElementDataFile: ct.raw\n", []),
    ("a.txt", "ElementDataFile = ct.raw\n", []),
])
def test_the_data_files_a_detached_header_names(tmp_path, name, header, files):
    (tmp_path / name).write_text(header)
    assert detached_data_files(tmp_path / name) == [tmp_path / f for f in files]


def test_detached_data_files_of_a_missing_file_are_none(tmp_path):
    assert detached_data_files(tmp_path / "missing.nhdr") == []
    check_data_files_within(tmp_path / "missing.nhdr", tmp_path)


@pytest.mark.parametrize("value, inside", [
    ("ct.raw", True), ("sub/ct.raw", True), ("../other/ct.raw", False), ("/etc/hostname", False),
    ("sub/slice%03d.raw 1 3 1", True), ("slice%03d.raw 1 3 1", True), ("../slice%03d.raw 1 3 1", False),
    ("LIST\nct1.raw\n../ct2.raw", False), ("LIST\nct1.raw\nsub/ct2.raw", True),
    ("../a:b/ct.raw", False), ("a:b/ct.raw", True),  # a colon in the name: the key ends at the first one
])
def test_a_confined_read_refuses_only_data_files_outside_the_folder(tmp_path, value, inside):
    (tmp_path / "ct.nhdr").write_text(f"NRRD0004\ntype: short\ndata file: {value}\n\n")
    if inside:
        check_data_files_within(tmp_path / "ct.nhdr", str(tmp_path))
    else:
        shown = value.split("\n")[-1] if value.startswith("LIST") else value.split(" ")[0]
        assert _message(check_data_files_within, tmp_path / "ct.nhdr", tmp_path, "mask") == (
            f"The mask 'ct.nhdr' names a data file outside its folder ('{shown}'). Keep a detached header's data "
            "file next to it, or give a .nrrd/.nii.gz/.mha file that holds its voxels.")


@pytest.mark.parametrize("name, header", [
    ("ct.nhdr", "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nspacings: 1 1 1\nendian: little\n"
                "encoding: raw\n" + "# a comment\n" * 7000 + "data file: ../outside/ct.raw\n\n"),
    ("ct.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
               + "Comment = padding\n" * 5000 + "ElementDataFile = ../outside/ct.raw\n"),
])
def test_a_header_padded_past_64_kib_cannot_hide_a_data_file_outside(tmp_path, name, header):
    """ITK reads a header of any length: a data-file line after 64 KiB of comments was not seen, and a confined
    read (the viewer's uploads) read the file outside."""
    (tmp_path / "inside").mkdir()
    (tmp_path / "outside").mkdir()
    np.full((4, 4, 4), -1000, np.int16).tofile(tmp_path / "outside" / "ct.raw")
    (tmp_path / "inside" / name).write_text(header)
    assert len(header) > 1 << 16
    assert detached_data_files(tmp_path / "inside" / name) == [tmp_path / "inside" / "../outside/ct.raw"]
    assert _message(read_image, tmp_path / "inside" / name, within=tmp_path / "inside").startswith(
        f"The CT '{name}' names a data file outside its folder ('../outside/ct.raw').")
    assert read_image(tmp_path / "inside" / name)[0].GetSize() == (4, 4, 4)  # unconfined: read


def test_a_long_outside_name_is_shortened_in_the_message(tmp_path):
    value = "../" + "d" * 200 + "/ct.raw"
    (tmp_path / "ct.nhdr").write_text(f"NRRD0004\ndata file: {value}\n\n")
    assert f"('{value[:117]}...')" in _message(check_data_files_within, tmp_path / "ct.nhdr", tmp_path)
    value = "../" + "e" * 110 + "/ct.raw"  # 120 characters: shown whole
    (tmp_path / "ct.nhdr").write_text(f"NRRD0004\ndata file: {value}\n\n")
    assert _message(check_data_files_within, tmp_path / "ct.nhdr", tmp_path).startswith(
        f"The CT 'ct.nhdr' names a data file outside its folder ('{value}')")
    value = "../" + "e" * 111 + "/ct.raw"  # 121 characters: shortened
    (tmp_path / "ct.nhdr").write_text(f"NRRD0004\ndata file: {value}\n\n")
    assert f"('{value[:117]}...')" in _message(check_data_files_within, tmp_path / "ct.nhdr", tmp_path)


def test_read_image_within_a_folder_refuses_a_header_pointing_out(tmp_path):
    (tmp_path / "ct.nhdr").write_text("NRRD0004\ntype: short\ndata file: ../ct.raw\n\n")
    assert "names a data file outside its folder" in _message(read_image, tmp_path / "ct.nhdr", within=tmp_path)
    assert "names a data file outside its folder" in _message(read_ct, tmp_path / "ct.nhdr", within=tmp_path)
    assert "names a data file outside" not in _message(read_ct, tmp_path / "ct.nhdr")


# ------------------------------------------------------------------------------------------------ validate_ct
def test_validate_ct_refuses_what_is_not_a_3d_ct_with_its_message():
    assert _message(validate_ct, sitk.Image([8, 8], sitk.sitkInt16), "scan") == (
        "The scan is 2D; TMBRB needs a 3D CT volume. Load the whole CT series (all slices), not a single image.")
    assert _message(validate_ct, sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3)) == (
        "The CT has 3 components per voxel (colour or vector image); a CT has one. Load the CT itself, not a "
        "screenshot or RGB export.")
    assert _message(validate_ct, _air_ct((1, 30, 30))) == (
        "The CT has only 1 slice along one axis (size (30, 30, 1)): it is a 2D image. Load the whole CT series "
        "(all slices), not a single image.")
    validate_ct(_air_ct((2, 30, 30), spacing=(1.0, 1.0, 5.0)))  # two slices are a volume


def test_nan_and_infinite_voxels_are_counted():
    arr = np.full((20, 20, 20), -1000.0, np.float32)
    arr[0, 0, :3] = np.nan
    arr[1, 1, 1] = np.inf
    arr[2, 2, 2] = -np.inf
    assert _message(validate_ct, _image(arr)) == (
        "The CT has 5 voxels that are NaN or infinite. Re-export the CT from the scanner/PACS, or replace them (e.g. "
        "by -1000 HU) first.")
    validate_ct(_image(np.full((20, 20, 20), -1000.0, np.float64)))


@pytest.mark.parametrize("low, high, ok", [
    (-500.0, -500.0, True), (-499.0, -499.0, False), (-3100.0, 0.0, True), (-3101.0, 0.0, False),
    (-1000.0, 5000.0, True), (-1000.0, 5001.0, False),
])
def test_hounsfield_limits_at_their_boundary(low, high, ok):
    arr = np.full((20, 20, 20), low, np.float32)
    arr[:2] = high  # 10% of the voxels: the 99.5th percentile
    arr[2, 0, 0] = (low + high) / 2
    img = _image(arr)
    if ok:
        assert validate_ct(img) == []
    else:
        assert _message(validate_ct, img) == (
            f"The CT's intensities do not look like CT Hounsfield units (0.5th percentile {low:.0f}, 99.5th "
            f"{high:.0f}; a chest CT has air near -1000 HU). Use a CT in HU: an MR image cannot be scored, and raw "
            "CT values need the DICOM rescale slope/intercept applied.")


def test_hounsfield_check_sees_a_large_scan_through_a_subsample():
    """256^3 voxels: every second one along each axis (the cube root of size / 2 million, rounded); a small scan is
    looked at whole."""
    arr = np.full((256, 256, 256), -1000, np.int16)
    arr[::2, ::2, ::2][:, :, 100] = 3000
    arr[1::2] = 6000  # outside the subsample: seen, the 99.5th percentile would be over 5000 HU
    assert validate_ct(_image(arr)) == []
    arr[1::2] = -1000
    arr[2::4, ::2, ::2] = 6000  # a quarter of the slices, inside the subsample (not in one of every 4th voxel)
    assert "do not look like CT Hounsfield units (0.5th percentile -1000, 99.5th 6000;" in _message(
        validate_ct, _image(arr))
    small = np.zeros((20, 20, 20), np.int16)
    small[1::2, 1::2, 1::2] = -1000  # air only where a step of 2 would not look
    assert validate_ct(_image(small)) == []


@pytest.mark.parametrize("spacing, message", [
    ((0.1, 0.1, 0.1), None), ((0.099, 0.5, 0.5), "too fine"), ((1.0, 1.0, 3.0), None),
    ((1.0, 1.0, 3.5), "warn"), ((1.0, 1.0, 10.0), "warn"), ((1.0, 1.0, 10.5), "too coarse"),
])
def test_spacing_limits_at_their_boundary(spacing, message):
    img = _air_ct((2 + int(20 / spacing[2]), 2 + int(10 / spacing[1]), 2 + int(10 / spacing[0])), spacing=spacing)
    if message is None:
        assert validate_ct(img) == []
    elif message == "warn":
        assert validate_ct(img) == [f"{spacing[2]:g} mm slices: outside the training range of most models (0.6-3 mm); "
                                    "the score is less reliable."]
    elif message == "too fine":
        assert _message(validate_ct, img, "scan") == (
            "The scan's voxel spacing (0.099, 0.5, 0.5) mm is too fine for a CT (under 0.1 mm): the header is probably "
            "in centimetres or metres. Fix the spacing in the file's header (a chest CT has 0.5-1 mm pixels and "
            "0.6-5 mm slices).")
    else:
        assert _message(validate_ct, img) == ("The CT's voxel spacing (1, 1, 10.5) mm is too coarse for a 3D model. "
                                              "Use a reconstruction with slices of 5 mm or thinner.")


def test_spacing_and_field_of_view_messages_name_the_scan_and_show_three_digits(tmp_path):
    assert _message(validate_ct, _air_ct((20, 30, 300), spacing=(0.09876, 1.0, 1.0)), "scan").startswith(
        "The scan's voxel spacing (0.0988, 1, 1) mm is too fine for a CT (under 0.1 mm)")
    assert _message(validate_ct, _air_ct((4, 30, 30), spacing=(1.0, 1.0, 10.5678))).startswith(
        "The CT's voxel spacing (1, 1, 10.6) mm is too coarse for a 3D model.")
    assert _message(validate_ct, _air_ct((20, 30, 5)), "scan").startswith("The scan covers (5, 30, 20) mm: under 10 mm")
    assert _message(read_image, tmp_path / "none.nrrd") == f"The CT '{tmp_path / 'none.nrrd'}' does not exist. Check the path."


def test_the_low_percentile_is_the_half_percent():
    arr = np.zeros((20, 20, 20), np.int16)
    arr.flat[:80] = -1000  # 1 % air: the 0.5th percentile is air, the 1.5th is not
    assert validate_ct(_image(arr)) == []


@pytest.mark.parametrize("spacing, shown", [((float("nan"), 1.0, 1.0), "(nan, 1, 1)"),
                                           ((1.0, float("inf"), 1.0), "(1, inf, 1)")])
def test_a_spacing_that_is_not_a_number_is_refused(spacing, shown):
    """SimpleITK refuses a zero or negative spacing but keeps NaN and infinity (a damaged header)."""
    img = _air_ct((20, 30, 30))
    img.SetSpacing(spacing)
    assert _message(validate_ct, img) == f"The CT has an invalid voxel spacing {shown}. Fix the file's header."


def test_the_field_of_view_message_shows_extent_and_spacing_to_their_digits():
    assert _message(check_field_of_view, (512, 512, 3), (0.71234, 0.71234, 3.0)) == (
        "The CT covers (364.7, 364.7, 9) mm: under 10 mm along an axis is not a chest CT (size (512, 512, 3) voxels "
        "of (0.712, 0.712, 3) mm). Check the voxel spacing in the file's header (mm), and that the whole series was "
        "loaded.")


@pytest.mark.parametrize("size, spacing, ok", [
    ((10, 100, 100), (1.0, 1.0, 1.0), True), ((99, 100, 100), (0.1, 1.0, 1.0), False),
    ((400, 10, 10), (5.0, 1.0, 1.0), True), ((401, 10, 10), (5.0, 1.0, 1.0), False),
])
def test_field_of_view_limits_at_their_boundary(size, spacing, ok):
    if ok:
        check_field_of_view(size, spacing)
        return
    msg = _message(check_field_of_view, size, spacing, "scan")
    extent = "(9.9, 100, 100)" if size[0] == 99 else "(2005, 10, 10)"
    limit = "under 10 mm" if size[0] == 99 else "over 2 m"
    assert msg == (f"The scan covers {extent} mm: {limit} along an axis is not a chest CT (size {tuple(size)} voxels "
                   f"of {'(0.1, 1, 1)' if size[0] == 99 else '(5, 1, 1)'} mm). Check the voxel spacing in the "
                   "file's header (mm), and that the whole series was loaded.")


# ------------------------------------------------------------------------------------------------ masks
def test_same_grid_within_its_tolerances():
    a = _air_ct((4, 4, 4))
    assert same_grid(a, _air_ct((4, 4, 4)))
    assert not same_grid(a, _air_ct((4, 4, 5)))
    for attr, near, far in (("Spacing", 0.0009, 0.0011), ("Origin", 0.0099, 0.0101), ("Direction", 0.0009, 0.0011)):
        for delta, same in ((near, True), (far, False)):
            b = _air_ct((4, 4, 4))
            values = list(getattr(b, "Get" + attr)())
            values[-1] += delta
            getattr(b, "Set" + attr)(values)
            assert same_grid(a, b) is same, (attr, delta)
    b = _air_ct((4, 4, 4))
    b.SetSpacing((1.0015, 1.0, 1.0))
    assert same_grid(a, b, tol=0.002) and not same_grid(a, b)


def test_a_mask_on_another_grid_is_put_on_the_ct_grid_by_nearest_neighbour(tmp_path):
    ct = _air_ct((10, 10, 10))
    coarse = np.zeros((5, 5, 5), np.int16)
    coarse[1, 2, 3] = 7  # voxel (3, 2, 1) of a 2 mm grid covers CT voxels x 6-7, y 4-5, z 2-3 (centres at -0.5)
    m = _image(coarse, spacing=(2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.5))
    write_image(m, tmp_path / "m.nrrd")
    out = read_mask(tmp_path / "m.nrrd", ct)
    arr = sitk.GetArrayFromImage(out)
    expected = np.zeros((10, 10, 10), np.uint8)
    expected[2:4, 4:6, 6:8] = 1
    assert out.GetPixelID() == sitk.sitkUInt8 and np.array_equal(arr, expected)
    assert out.GetSize() == ct.GetSize() and out.GetOrigin() == ct.GetOrigin()
    same = np.zeros((10, 10, 10), np.float32)
    same[5, 5, 5] = 2.0  # a label other than 1, in float: tumour = 1
    got = sitk.GetArrayFromImage(mask_on_ct_grid(_image(same), ct))
    assert got.dtype == np.uint8 and got.sum() == 1 and got[5, 5, 5] == 1


def test_masks_that_cannot_be_used_are_refused_with_their_message():
    ct = _air_ct((10, 10, 10))
    assert _message(mask_on_ct_grid, sitk.Image([10, 10], sitk.sitkUInt8), ct, "label") == (
        "The label is 2D; it must be a 3D label volume. Give the tumour label map saved from the same CT.")
    assert _message(mask_on_ct_grid, sitk.Image([10, 10, 10], sitk.sitkVectorUInt8, 2), ct) == (
        "The segmentation has several components per voxel. Give a single-label map (0 = background).")
    far = np.ones((4, 4, 4), np.uint8)
    assert _message(mask_on_ct_grid, _image(far, origin=(100.0, 0.0, 0.0)), ct) == (
        "The segmentation is empty where it overlaps the CT (no non-zero voxel). Check that the label belongs to "
        "this CT (same patient and frame of reference).")


@pytest.mark.parametrize("values, why", [
    ([0, 1, -1], "negative values (from -1 to 1)"),
    ([0.0, 1.5], "values that are not whole numbers (from 0 to 1.5)"),
    (list(range(257)), "more than 255 distinct values (from 0 to 256)"),
])
def test_an_image_that_is_not_a_label_map_is_refused_saying_why(values, why):
    arr = np.zeros((16, 16, 16), np.float32 if isinstance(values[1], float) else np.int16)
    sub = np.zeros(arr[::2, ::2, ::2].shape, arr.dtype)
    sub.flat[:len(values)] = values
    arr[::2, ::2, ::2] = sub  # voxels a subsample sees
    assert _message(check_label_map, _image(arr), "mask") == (
        f"The mask is not a label map: it holds {why}, as an image such as a CT does. Give the tumour label map "
        "(0 = background, 1 or another whole number = tumour), not the CT itself.")


def test_label_maps_are_accepted_up_to_255_distinct_values():
    arr = np.zeros((8, 8, 8), np.int16)
    arr.flat[:256] = np.arange(256)
    check_label_map(_image(arr))
    arr = np.zeros((8, 8, 8), np.float32)
    arr[::2, ::2, ::2] = 3.0  # whole numbers in a float image
    check_label_map(_image(arr))
    wide = np.zeros((8, 8, 8), np.int32)
    wide[0, 0, 0] = 1000  # a wide range of few values
    check_label_map(_image(wide))


# ------------------------------------------------------------------------------------------------ grid helpers
def test_write_image_makes_its_folder_and_compresses(tmp_path):
    img = _air_ct((20, 20, 20))
    p = write_image(img, tmp_path / "a" / "b" / "ct.nrrd")
    assert p == tmp_path / "a" / "b" / "ct.nrrd" and p.is_file()
    raw = write_image(img, str(tmp_path / "raw.nrrd"), compress=False)
    assert raw.stat().st_size > 8000 > p.stat().st_size
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(p))), sitk.GetArrayFromImage(img))


def test_sub_images_and_pasting_keep_the_geometry():
    ref = _image(np.zeros((6, 5, 4), np.int16), spacing=(0.5, 1.0, 2.0), origin=(1.0, 2.0, 3.0))
    sub = sub_image_info(ref, (1, 2, 3), (3, 5, 6))
    assert sub.GetSize() == (2, 3, 3) and sub.GetPixelID() == sitk.sitkUInt8
    assert sub.GetOrigin() == (1.5, 4.0, 9.0) and sub.GetSpacing() == (0.5, 1.0, 2.0)
    assert sub.GetDirection() == ref.GetDirection()
    full = np.zeros((6, 5, 6), np.int16)
    paste_region(full, np.ones((2, 3, 2), np.int16), (1, 2, 3))
    expected = np.zeros((6, 5, 6), np.int16)
    expected[3:5, 2:5, 1:3] = 1
    assert np.array_equal(full, expected)
    img = array_to_image(full[:, :, :4], ref)
    assert img.GetOrigin() == ref.GetOrigin() and img.GetSpacing() == ref.GetSpacing()
    assert np.array_equal(sitk.GetArrayFromImage(img), full[:, :, :4])


def test_read_image_names_the_file_as_told_in_every_check(tmp_path):
    fifo = tmp_path / "ct.nrrd"
    os.mkfifo(fifo)
    assert _message(read_image, fifo, "mask") == (
        f"The mask '{fifo}' is not a regular file or folder (a pipe, socket or device). Give a NRRD, NIfTI or MHA "
        "file, or a DICOM series folder.")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "m.nhdr").write_text("NRRD0004\ntype: short\ndata file: ../x.raw\n\n")
    assert _message(read_image, tmp_path / "in" / "m.nhdr", "mask", within=tmp_path / "in").startswith(
        "The mask 'm.nhdr' names a data file outside its folder")
    assert _message(read_image, _nifti1(tmp_path / "m.nii", data=b"\0" * 64), "mask").startswith(
        "The mask 'm.nii' is cut short")


# ------------------------------------------------------------------------------------------------ mutation survivors
# (issue 16, mio3: the survivors of a whole-module mutmut run of io.py, each answered by what a user sees)
def _set_element(path: Path, group: int, element: int, value: bytes, renamed_to: int = None) -> None:
    """Rewrite a DS element of a slice file written by SimpleITK (either little-endian syntax), or rename its tag
    (the element is then missing under its own tag)."""
    data = path.read_bytes()
    at = data.index(struct.pack("<HH", group, element))
    explicit = data[at + 4:at + 6] == b"DS"
    length = struct.unpack_from("<H" if explicit else "<I", data, at + 6 if explicit else at + 4)[0]
    value = value + b" " * (len(value) % 2)
    head = b"DS" + struct.pack("<H", len(value)) if explicit else struct.pack("<I", len(value))
    tag = struct.pack("<HH", group, element if renamed_to is None else renamed_to)
    path.write_bytes(data[:at] + tag + head + value + data[at + 8 + length:])


def test_a_dicom_folder_holding_a_socket_or_a_link_to_one_is_refused_before_it_is_scanned(tmp_path, dicom_ct,
                                                                                           monkeypatch):
    import socket

    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    monkeypatch.chdir(folder)  # a socket's path is limited to about 100 characters: bind a short relative one
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("viewer.sock")
    os.symlink("viewer.sock", "link")
    monkeypatch.chdir(tmp_path)
    expected = (f"The DICOM folder '{folder}' holds 2 entry(ies) that are not regular files (link, viewer.sock: a "
                "pipe, socket or device); reading the folder would block. Copy the slice files of the series into a "
                "folder of their own.")
    assert _message(read_ct, folder) == expected
    assert _message(dicom_series_files, folder) == expected


def test_a_folder_without_a_dicom_series_says_what_to_give(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("not DICOM")
    assert _message(read_ct, folder) == (
        f"The folder '{folder}' holds no DICOM series. Give a NRRD/NIfTI/MHA file or a folder with the DICOM files of "
        "one CT series.")


def test_three_damaged_files_are_all_named_without_a_count(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    for k in (0, 1, 11):
        f = folder / f"slice{k:04d}.dcm"
        f.write_bytes(f.read_bytes()[:600])
    assert _message(read_ct, folder) == (
        f"The DICOM folder '{folder}' holds 3 file(s) that cannot be read as a slice (slice0000.dcm, slice0001.dcm, "
        "slice0011.dcm): truncated or damaged. Export the series again from the scanner or PACS, or remove files "
        "that do not belong to it.")


@pytest.mark.parametrize("element, value, renamed_to, why", [
    (0x0032, b"1\\2", None, "has a malformed position or orientation."),
    (0x0037, b"1\\0\\0\\0\\1", None, "has a malformed position or orientation."),
    (0x0037, b"a\\b\\c\\d\\e\\f", None, "has no readable position or orientation (could not convert string to "
                                        "float: 'a')."),
    (0x0032, b"1\\2\\3", 0x0033, "has no readable position or orientation (Key '0020|0032' does not exist)."),
], ids=["two coordinates", "five cosines", "not numbers", "no position"])
def test_a_slice_without_a_usable_position_or_orientation_is_named(tmp_path, dicom_ct, element, value, renamed_to,
                                                                   why):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    _set_element(folder / "slice0005.dcm", 0x0020, element, value, renamed_to)
    expected = f"The DICOM slice 'slice0005.dcm' {why} Export the series again from the scanner or PACS."
    assert _message(read_ct, folder) == expected  # ITK's source location and line breaks are not shown
    # the public check reads the headers itself when none are given, with the same verdict
    files = dicom_series_files(folder)
    assert _message(check_slice_positions, files) == expected


def test_slice_positions_are_checked_from_three_slices_on(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    _move_slice(folder / "slice0002.dcm", 1.0)  # z = 19, 21, 24: steps 2 and 3
    files = [str(folder / f"slice{k:04d}.dcm") for k in range(3)]
    check_slice_positions(files[1:])  # two slices: no step to compare
    assert _message(check_slice_positions, files) == (
        "The DICOM series has uneven slice spacing: 2 mm between slice0000.dcm (at 19.00 mm) and slice0001.dcm (at "
        "21.00 mm) where the other slices are 2.5 mm apart (2 such step(s)): the slices are unevenly spaced. Stacked "
        "as they are, the slices would lie at the wrong positions. Export the complete series again from the scanner "
        "or PACS (all slices, one reconstruction).")
    check_slice_positions([str(folder / f"slice{k:04d}.dcm") for k in range(3, 12)])  # evenly spaced: nothing


def test_a_step_of_one_and_a_half_is_uneven_spacing_more_is_a_missing_slice(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    for k in range(6, 12):
        _move_slice(folder / f"slice{k:04d}.dcm", 1.0)  # one step of 3 mm = 1.5 x 2 mm
    assert "3 mm between slice0005.dcm (at 29.00 mm) and slice0006.dcm (at 32.00 mm) where the other slices are 2 mm " \
           "apart (1 such step(s)): the slices are unevenly spaced." in _message(read_ct, folder)


def test_slices_at_one_position_name_the_first_two_files_of_the_series(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    for k in range(12):
        _move_slice(folder / f"slice{k:04d}.dcm", tags={"0020|0032": "-5.600000\\-34.000000\\19.000000"})
    first, second = (Path(f).name for f in dicom_series_files(folder)[:2])
    assert _message(read_ct, folder).startswith(
        f"The DICOM series has slices at the same position ({first}, {second}, ...): it holds several volumes")


def test_dicom_storage_class_survives_damaged_lengths_and_bytes(tmp_path):
    def write(name, body):
        (tmp_path / name).write_bytes(b"\0" * 128 + b"DICM" + body)
        return tmp_path / name

    ct_class = struct.pack("<HH", 2, 2) + b"UI" + struct.pack("<H", 26) + b"1.2.840.10008.5.1.4.1.1.2\0"
    # an OB element declaring nearly 4 GiB (more than 2**31: no negative length, no endless loop): nothing after it
    huge = struct.pack("<HH", 2, 1) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFF0) + b"\0\1"
    assert dicom_storage_class(write("a", huge + ct_class)) == ""
    # a short element declaring 65520 bytes jumps past the end: no class
    long_short = struct.pack("<HH", 2, 0) + b"UL" + struct.pack("<H", 0xFFF0) + b"\0" * 4
    assert dicom_storage_class(write("b", long_short + ct_class)) == ""
    # the file cut two bytes into a long VR's 4-byte length: '' (not None, not an error)
    assert dicom_storage_class(write("c", struct.pack("<HH", 2, 1) + b"OB\0\0" + b"\0\0")) == ""
    # a class with a byte that is not ASCII is read, the byte replaced (not a CT class: not taken for a slice)
    bad = struct.pack("<HH", 2, 2) + b"UI" + struct.pack("<H", 26) + b"1.2.840.10008.5.1.4.1.1.\xe9\0"
    assert dicom_storage_class(write("d", bad)) == "1.2.840.10008.5.1.4.1.1.\ufffd"


def test_the_series_size_message_rounds_billions_and_names_three_sizes(tmp_path, dicom_ct, monkeypatch):
    from .test_bad_input import _declare_rows_columns

    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", lambda self: pytest.fail("the pixels were read"))
    files = sorted(folder.iterdir())
    for f in files:  # 12 x 11250 x 10000 = 1.35e9 values: "1.4" (1.35 rounds up)
        _declare_rows_columns(f, 10000, 11250)
    assert "declares 1.4 billion values over 12 slice file(s) (sizes 11250 x 10000 x 1)" in _message(read_ct, folder)
    for k, f in enumerate(files[:4]):  # four other sizes: the first three in sorted order, then "..." is not added
        _declare_rows_columns(f, 10000, 11251 + k)
    assert "(sizes 11250 x 10000 x 1, 11251 x 10000 x 1, 11252 x 10000 x 1); the limit is" in _message(read_ct, folder)


def test_masks_are_named_segmentation_unless_named_otherwise(tmp_path):
    assert _message(read_mask, tmp_path / "none.nrrd", _air_ct()) == (
        f"The segmentation '{tmp_path / 'none.nrrd'}' does not exist. Check the path.")
    ct_as_mask = _image(np.arange(8000, dtype=np.int16).reshape(20, 20, 20) - 1000)
    assert _message(check_label_map, ct_as_mask).startswith("The segmentation is not a label map: it holds negative")
    assert _message(mask_on_ct_grid, ct_as_mask, _air_ct(), "tumour mask").startswith(
        "The tumour mask is not a label map: it holds negative values (from -1000 to 6999)")


def test_a_nifti_of_one_bit_voxels_and_an_empty_nifti(tmp_path):
    # 1 bit a voxel (DT_BINARY, a code without a byte size): bitpix counts, 64 voxels are 8 bytes
    check_nifti_data_size(_nifti1(tmp_path / "a.nii", bitpix=1, datatype=1, data=b"\0" * 8))
    assert "declares 8 bytes of voxels, the file holds 4 (50%)" in _message(
        check_nifti_data_size, _nifti1(tmp_path / "b.nii", bitpix=1, datatype=1, data=b"\0" * 4))
    (tmp_path / "empty.nii").write_bytes(b"")  # no header at all: left to ITK, which says why
    check_nifti_data_size(tmp_path / "empty.nii")
    assert _message(read_image, tmp_path / "empty.nii").startswith(f"Could not read the CT '{tmp_path / 'empty.nii'}'")


def test_a_header_naming_its_data_file_in_bytes_that_are_not_utf8_is_confined(tmp_path):
    """ITK opens a data file by the header's bytes. Read as UTF-8 with replacement, 'd\\xfc.raw' became another name,
    which did not exist: a link of that byte name inside the folder, pointing outside, was read (confinement
    bypassed). The names are now decoded as the file system does."""
    inside = tmp_path / "in"
    inside.mkdir()
    (tmp_path / "secret.raw").write_bytes(np.arange(64, dtype=np.int16).tobytes())
    os.symlink(b"../secret.raw", os.fsencode(inside) + b"/d\xfc.raw")
    head = b"NRRD0004\n# scanned by M\xfcller\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\nendian: little\n"
    (inside / "ct.nhdr").write_bytes(head + b"data file: d\xfc.raw\n\n")
    outside = ("The CT 'ct.nhdr' names a data file outside its folder ('d\ufffd.raw'). Keep a detached header's data "
               "file next to it, or give a .nrrd/.nii.gz/.mha file that holds its voxels.")
    assert _message(read_image, inside / "ct.nhdr", within=inside) == outside
    (inside / "list.nhdr").write_bytes(head + b"data file: LIST\nd\xfc.raw\n")
    assert _message(check_data_files_within, inside / "list.nhdr", inside) == outside.replace("ct.nhdr", "list.nhdr")
    assert [p.name for p in detached_data_files(inside / "list.nhdr")] == [os.fsdecode(b"d\xfc.raw")]
    (inside / "mine.raw").write_bytes(np.zeros(64, np.int16).tobytes())  # a header in Latin-1 naming its own file
    (inside / "ok.nhdr").write_bytes(head + b"data file: mine.raw\n\n")
    assert sitk.GetArrayFromImage(read_image(inside / "ok.nhdr", within=inside)[0]).sum() == 0


def test_a_label_map_may_hold_255_labels_besides_0_whatever_their_range():
    """0-255 was accepted (256 values) while 0-254 and 1000 (also 255 labels and the background) was refused, and
    1-256 (256 labels) accepted: the count is now of the labels besides 0, at most 255."""
    wide = np.zeros((8, 8, 8), np.int16)
    wide.flat[:256] = list(range(255)) + [1000]  # 0, 254 labels 1-254 and 1000: 255 labels
    check_label_map(_image(wide))
    no_background = np.ones((8, 8, 8), np.int16)
    no_background.flat[:256] = np.arange(1, 257)  # 256 labels
    assert "more than 255 distinct values (from 1 to 256)" in _message(check_label_map, _image(no_background))
    wide.flat[256] = 999  # 256 labels
    assert "more than 255 distinct values (from 0 to 1000)" in _message(check_label_map, _image(wide))


def test_a_slice_removed_after_the_folder_was_scanned_is_named(tmp_path, dicom_ct, monkeypatch):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    scan = tio._files_by_series

    def scan_then_remove(path):  # a folder still being copied or cleaned while it is read
        found = scan(path)
        (folder / "slice0005.dcm").unlink()
        return found

    monkeypatch.setattr(tio, "_files_by_series", scan_then_remove)
    assert _message(read_ct, folder) == (
        "The DICOM slice 'slice0005.dcm' has an unreadable header (The file \"slice0005.dcm\" does not exist.). "
        "Export the series again from the scanner or PACS.")


def test_the_series_size_counts_each_voxel_components(tmp_path):
    from .test_bad_input import _declare_rows_columns

    for name, pixel, components in (("grey.dcm", sitk.sitkInt16, 1), ("rgb.dcm", sitk.sitkVectorUInt8, 3)):
        img = sitk.Image([8, 6, 1], pixel, components) if components > 1 else sitk.Image([8, 6, 1], pixel)
        sitk.WriteImage(img, str(tmp_path / name))
        _declare_rows_columns(tmp_path / name, 20000, 20000)  # 4e8 voxels: under the limit, 1.2e9 values in colour
    def header(name):  # what check_series_size is given: each file's header, no pixels read
        r = sitk.ImageFileReader()
        r.SetFileName(str(tmp_path / name))
        r.ReadImageInformation()
        return [r]

    tio.check_series_size(tmp_path, ["grey.dcm"], header("grey.dcm"))
    assert _message(tio.check_series_size, tmp_path, ["rgb.dcm"], header("rgb.dcm")).startswith(
        f"The DICOM series in '{tmp_path.name}' declares 1.2 billion values over 1 slice file(s) (sizes 20000 x "
        "20000 x 1); the limit is 1.07 billion.")


def test_a_step_off_by_exactly_one_percent_is_accepted(tmp_path):
    # 50 mm slices: 1 % is 0.5 mm, exact in binary, so the boundary itself is tested (at 2 mm, 0.02 is not exact)
    img = sitk.Image([8, 8, 5], sitk.sitkInt16)
    img.SetSpacing((1.0, 1.0, 50.0))
    folder = tmp_path / "d"
    _write_dicom_series(img, folder)
    files = [str(folder / f"slice{k:04d}.dcm") for k in range(5)]
    for f in files[3:]:
        _move_slice(Path(f), 0.5)  # steps 50, 50, 50.5, 50
    check_slice_positions(files)
    for f in files[3:]:
        _move_slice(Path(f), 0.01)  # 50.51
    assert "50.5 mm between slice0002.dcm (at 100.00 mm) and slice0003.dcm (at 150.51 mm)" in _message(
        check_slice_positions, files)


def test_a_link_loop_in_a_dicom_folder_is_named_before_the_scan(tmp_path, dicom_ct):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    os.symlink("loop", folder / "loop")  # its stat fails (too many levels of links)
    assert _message(dicom_series_files, folder).startswith(
        f"The DICOM folder '{folder}' holds 1 entry(ies) that are not regular files (loop: a pipe, socket or device)")


def test_a_slice_removed_after_its_header_was_read_is_reported_as_a_damaged_series(tmp_path, dicom_ct, monkeypatch):
    folder = tmp_path / "d"
    _write_dicom_series(dicom_ct, folder)
    read_headers = tio._slice_headers

    def headers_then_remove(files):  # the pixels are read last: a file gone by then fails the series read
        headers = read_headers(files)
        (folder / "slice0005.dcm").unlink()
        return headers

    monkeypatch.setattr(tio, "_slice_headers", headers_then_remove)
    assert _message(read_ct, folder) == (
        f"Could not read the DICOM series in '{folder}' (Could not open file: d/slice0005.dcm for reading.: Reason: "
        "No such file or directory). A slice file is damaged: export the series again from the scanner or PACS.")


def test_slices_0_01_mm_apart_are_not_at_one_position(tmp_path):
    img = sitk.Image([8, 8, 4], sitk.sitkInt16)
    img.SetSpacing((1.0, 1.0, 0.01))  # positions 0, 0.01, 0.02, 0.03: a median step of exactly 0.01 mm
    _write_dicom_series(img, tmp_path / "d")
    files = [str(tmp_path / "d" / f"slice{k:04d}.dcm") for k in range(4)]
    check_slice_positions(files)
    _move_slice(Path(files[3]), 0.02)  # steps 0.01, 0.01, 0.03: still a step of 0.01 mm, and one uneven step
    assert "0.03 mm between slice0002.dcm (at 0.02 mm) and slice0003.dcm (at 0.05 mm) where the other slices are " \
           "0.01 mm apart (1 such step(s)): a slice is missing." in _message(check_slice_positions, files)


def test_a_nifti_with_a_negative_dimension_is_sized_as_itk_reads_it(tmp_path):
    negative_dim = _nifti1(tmp_path / "a.nii", dims=(3, 4, 4, -4), data=b"\0" * 32)
    check_nifti_data_size(negative_dim)  # ITK reads dim -4 as one slice: 4 x 4 x 1 int16, complete, not "cut short"
    assert read_image(negative_dim)[0].GetSize() == (4, 4, 1)


@pytest.mark.parametrize("bitpix", [-16, 0, 8, 32])
@pytest.mark.parametrize("make", [_nifti1, _nifti2], ids=["NIfTI-1", "NIfTI-2"])
def test_voxels_are_sized_by_the_datatype_as_itk_reads_them_not_by_bitpix(tmp_path, make, bitpix):
    """ITK reads an int16 NIfTI as 2 bytes a voxel whatever its bitpix says. Sized by bitpix, a file cut short with a
    bitpix of 8 or less passed (and was read with zeros for the missing slices), and a complete file with a bitpix
    of 32 was refused as cut short."""
    assert "declares 128 bytes of voxels, the file holds 8 (6%)" in _message(
        check_nifti_data_size, make(tmp_path / "short.nii", bitpix=bitpix, data=b"\1\0" * 4))
    whole = make(tmp_path / "whole.nii", bitpix=bitpix, data=b"\1\0" * 64)
    check_nifti_data_size(whole)
    if make is _nifti1:  # ITK reads it whole (the tests' minimal NIfTI-2 header is not one ITK reads)
        assert sitk.GetArrayFromImage(read_image(whole)[0]).sum() == 64
