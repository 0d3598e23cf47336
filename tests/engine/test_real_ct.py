"""End to end on the real chest CTs in ../shared/data/real_ct (seeds and boxes from its SOURCES.md / cases.json)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.geometry import Box
from TMBRBLib.io import read_ct, read_mask, same_grid
from TMBRBLib.outputs import write_outputs
from TMBRBLib.pipeline import score_case
from TMBRBLib.proposal import mask_extent_lps

pytestmark = pytest.mark.shared_data

CASES = ["pyradiomics/lung1_image.nrrd", "pyradiomics/lung2_image.nrrd",
         "lidc_voi/LIDC-IDRI-0072_R_1_image.nii.gz", "lidc_voi/LIDC-IDRI-0874_R_1_image.nii.gz"]


def load(d, name):
    meta = json.loads((d / "cases.json").read_text())[name]
    ct, warnings = read_ct(d / name)
    label = read_mask(d / meta["label"], ct)
    return ct, label, meta, warnings


def label_inside_grid_fraction(label, grid_box):
    arr = sitk.GetArrayFromImage(label)
    zz, yy, xx = np.nonzero(arr)
    d = np.array(label.GetDirection()).reshape(3, 3) @ np.diag(label.GetSpacing())
    pts = np.stack([xx, yy, zz], 1) @ d.T + np.array(label.GetOrigin())
    return np.mean(np.all((pts >= grid_box.min) & (pts <= grid_box.max), axis=1))


@pytest.mark.parametrize("name", CASES)
def test_given_seed_and_box_crop_holds_the_tumour_and_outputs_align(name, scorer, tmp_path, real_ct_data):
    ct, label, meta, warnings = load(real_ct_data, name)
    half = np.array(meta["spacing_mm"]) / 2
    box = Box(tuple(np.array(meta["bbox_lps_mm_min"]) - half), tuple(np.array(meta["bbox_lps_mm_max"]) + half))
    r = score_case(ct, meta["seed_com_lps_mm"], box, scorer=scorer, n_shifts=2)
    assert label_inside_grid_fraction(label, r.crop_grid.box) == 1.0
    np.testing.assert_allclose(r.crop_grid.center, box.center, atol=1e-6)
    written = write_outputs(r, tmp_path, ct=ct)
    for key in ("cam", "tumour", "ring"):
        img = sitk.ReadImage(str(written[key]))
        assert same_grid(img, ct, tol=1e-6)
    # the tumour grown from the seed inside the box covers the soft-tissue part of the expert label (the LIDC masks
    # are union contours that include some surrounding lung) and stays mostly inside the label
    t = sitk.GetArrayFromImage(r.tumour_mask) > 0
    lab = sitk.GetArrayFromImage(label) > 0
    solid = lab & (sitk.GetArrayFromImage(ct) > -400)
    assert (t & solid).sum() / solid.sum() > 0.8, name
    # lung2's mass abuts the heart: growing within soft-tissue HU limits cannot separate the two inside the box
    # (a known limit of the seed segmentation; give --segmentation for such cases)
    assert (t & lab).sum() / t.sum() > (0.4 if "lung2" in name else 0.6), name
    if name.startswith("lidc_voi"):  # tight VOIs: the field of view reaches beyond the scan, padded with air
        assert any("field of view lies outside the scan" in w for w in r.warnings)
    if meta["spacing_mm"][2] >= 5:
        assert any("5 mm slices" in w for w in r.warnings)


@pytest.mark.parametrize("name", CASES[:2])
def test_box_proposed_from_the_seed_encloses_the_tumour_label(name, scorer, real_ct_data):
    ct, label, meta, _ = load(real_ct_data, name)
    r = score_case(ct, meta["seed_com_lps_mm"], None, scorer=scorer, n_shifts=0)
    ext = mask_extent_lps(label)
    assert np.all(np.asarray(r.box.min) <= np.asarray(ext.min) + 1e-6), (r.box, ext)
    assert np.all(np.asarray(r.box.max) >= np.asarray(ext.max) - 1e-6), (r.box, ext)
    assert label_inside_grid_fraction(label, r.crop_grid.box) == 1.0
