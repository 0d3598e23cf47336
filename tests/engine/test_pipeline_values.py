"""One case end to end: the values a user relies on (issue 16). The box used (given, from a mask, from the seed) and
its warnings, the crops the model sees, the test-time scores and their mean and spread, the CAM and regions on the CT
grid, what result.json records, progress and cancel, and the folder a case is written to. The model is the
placeholder bundle on small CTs (a second or two a case)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from TMBRBLib.crop import crop_for_model, fraction_outside_scan, shift_offsets
from TMBRBLib.errors import TMBRBBundleError, TMBRBCancelled, TMBRBInputError
from TMBRBLib.geometry import Box
from TMBRBLib.io import same_grid
from TMBRBLib.pipeline import (TTA_BATCH, Scorer, _is_oom, _paste_clipped, _report, check_seed, ct_summary,
                               field_of_view_warnings, mask_box_warnings, model_inputs, regions_and_cam,
                               resolve_box, score_case, score_to_folder)
from TMBRBLib.risk import risk_groups

from .synthetic import make_ct

TUMOUR = (10.0, -20.0, 30.0)


@pytest.fixture(scope="module")
def case():
    """An 80 x 80 x 40 CT of 1 x 1 x 2 mm around a 6 mm tumour at its centre, and the tumour's mask."""
    return make_ct(size=(80, 80, 40), spacing=(1.0, 1.0, 2.0), tumour_lps=TUMOUR, radius_mm=6, noise=10)


def _message(fn, *args, **kw) -> str:
    with pytest.raises(TMBRBInputError) as e:
        fn(*args, **kw)
    return str(e.value)


# ------------------------------------------------------------------------------------------------ seed and box
def test_check_seed_gives_three_floats_or_says_what_is_wrong(case):
    ct, _ = case
    assert check_seed(ct, np.array([10, -20, 30])) == (10.0, -20.0, 30.0)
    assert all(type(v) is float for v in check_seed(ct, ["10", -20, 30.5]))
    assert _message(check_seed, ct, (1.0, 2.0)) == ("The seed (1.0, 2.0) is not three finite coordinates. "
                                                    "Give x,y,z in mm.")
    assert _message(check_seed, ct, [1.0, float("nan"), 2.0]).startswith("The seed [1.0, nan, 2.0] is not three")
    assert _message(check_seed, ct, (1.0, float("inf"), 2.0)).startswith("The seed (1.0, inf, 2.0) is not three")
    assert "outside" in _message(check_seed, ct, (900.0, 0.0, 0.0))


def test_a_given_box_is_used_as_given_and_a_seed_outside_it_is_said(case):
    ct, _ = case
    box = Box((0.0, -30.0, 20.0), (20.0, -10.0, 40.0))
    warnings = []
    assert resolve_box(ct, TUMOUR, box, None, warnings) == (box, False, None) and warnings == []
    got, proposed, seg = resolve_box(ct, TUMOUR, ((20.0, -10.0, 40.0), (0.0, -30.0, 20.0)), None, warnings)
    assert (got.min, got.max, proposed, seg) == (box.min, box.max, False, None) and warnings == []
    for seed in ((0.0, -30.0, 20.0), (20.0, -10.0, 40.0)):  # on the box's faces: inside
        resolve_box(ct, seed, box, None, warnings)
    assert warnings == []
    for seed in ((-0.1, -20.0, 30.0), (10.0, -9.9, 30.0), (10.0, -20.0, 19.9), (20.1, -20.0, 30.0)):
        w = []
        resolve_box(ct, seed, box, None, w)
        assert w == ["The seed lies outside the box; the crop is centred on the box."], seed


def test_a_box_made_from_a_given_mask_is_its_extent_plus_the_margin(case):
    ct, mask = case
    arr = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    arr[10:13, 20:25, 22:27] = 1  # x 22-26, y 20-24, z 10-12 (voxel centres)
    m = sitk.GetImageFromArray(arr)
    m.CopyInformation(ct)
    o = np.asarray(ct.GetOrigin())
    lo = o + np.array([22, 20, 10]) * (1.0, 1.0, 2.0) - (0.5, 0.5, 1.0)
    hi = o + np.array([26, 24, 12]) * (1.0, 1.0, 2.0) + (0.5, 0.5, 1.0)
    seed = tuple(o + np.array([24, 22, 11]) * (1.0, 1.0, 2.0))
    warnings = []
    box, proposed, seg = resolve_box(ct, seed, None, None, warnings, tumour_mask=m)
    assert proposed is True and seg is None and warnings == []
    np.testing.assert_allclose(box.min, lo - 3.0) and np.testing.assert_allclose(box.max, hi + 3.0)
    box, _, _ = resolve_box(ct, seed, None, {"margin_mm": 5}, warnings, tumour_mask=m)
    np.testing.assert_allclose(box.min, lo - 5.0) and np.testing.assert_allclose(box.max, hi + 5.0)
    warnings = ["earlier"]
    resolve_box(ct, TUMOUR, None, None, warnings, tumour_mask=m)  # the seed is not in this mask's box
    assert warnings[0] == "earlier" and warnings[1].startswith("The seed lies outside the box made from the tumour")
    # an empty mask: the box comes from the tumour segmented at the seed
    empty = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(ct)
    box, proposed, seg = resolve_box(ct, TUMOUR, None, None, warnings, tumour_mask=empty)
    assert proposed is True and seg is not None and (box.min, box.max) == (seg.box.min, seg.box.max)


def test_a_box_proposed_from_the_seed_holds_the_tumour(case):
    ct, _ = case
    warnings = []
    box, proposed, seg = resolve_box(ct, TUMOUR, None, None, warnings)
    assert proposed is True and warnings == seg.warnings
    assert np.all(np.asarray(box.min) < np.asarray(TUMOUR) - 5) and np.all(np.asarray(box.max) > np.asarray(TUMOUR) + 5)
    assert np.all(np.asarray(box.size) < 30)
    wider, _, _ = resolve_box(ct, TUMOUR, None, {"margin_mm": 8.0}, [])  # the proposal's settings are used
    np.testing.assert_allclose(np.asarray(wider.size), np.asarray(box.size) + 10.0, atol=1e-6)


def test_mask_box_warnings_name_a_far_seed_and_the_parts():
    m = sitk.Image(20, 20, 20, sitk.sitkUInt8)
    box = Box((2.0, 9.0, 9.0), (16.0, 11.0, 11.0))
    m[3, 10, 10] = 1
    assert mask_box_warnings(m, (10.0, 10.0, 10.0), box) == []
    assert mask_box_warnings(m, (16.0, 11.0, 9.0), box) == []  # on the box's faces
    far = mask_box_warnings(m, (17.0, 10.0, 10.0), box)
    assert far == ["The seed lies outside the box made from the tumour mask: the mask may be of another lesion. "
                   "Check the seed and the mask; the crop is centred on the mask."]
    assert mask_box_warnings(m, (10.0, 8.9, 10.0), box) == far
    m[4, 11, 11] = 1  # touches the first voxel at a corner: one part (fully connected)
    assert mask_box_warnings(m, (10.0, 10.0, 10.0), box) == []
    m[15, 10, 10] = 2
    assert mask_box_warnings(m, (10.0, 10.0, 10.0), box) == [
        "The tumour mask has 2 separate parts; the box holds all of them. Give a mask of the one lesion to score."]
    m[9, 10, 10] = 1
    assert mask_box_warnings(m, (10.0, 10.0, 10.0), box) == [
        "The tumour mask has 3 separate parts; the box holds all of them. Give a mask of the one lesion to score."]
    assert len(mask_box_warnings(m, (0.0, 10.0, 10.0), box)) == 2
    assert mask_box_warnings(sitk.Image(20, 20, 20, sitk.sitkUInt8), (10.0, 10.0, 10.0), box) == []


# ------------------------------------------------------------------------------------------------ model inputs
def test_model_inputs_are_the_box_crop_and_each_shifted_box_crop(case, placeholder_bundle):
    ct, _ = case
    meta = placeholder_bundle.tmbrb
    box = Box.from_center_size(TUMOUR, (16.0, 16.0, 16.0))
    base, crop_img, grid, offsets, shifted = model_inputs(ct, box, meta, 3)
    ref_base, ref_img, ref_grid = crop_for_model(ct, box, meta["preprocessing"])
    assert np.array_equal(base, ref_base) and grid == ref_grid
    assert np.array_equal(sitk.GetArrayFromImage(crop_img), sitk.GetArrayFromImage(ref_img))
    expected = shift_offsets(box, meta["tta"], 3)
    assert len(offsets) == 3 and all(np.array_equal(a, b) for a, b in zip(offsets, expected))
    for o, s in zip(offsets, shifted):
        assert np.array_equal(s, crop_for_model(ct, box.shifted(o), meta["preprocessing"])[0])
    assert len(model_inputs(ct, box, meta, None)[3]) == meta["tta"]["n_shifts"]
    assert model_inputs(ct, box, meta, 0)[3:] == ([], [])
    # the bundle's own test-time settings are used; a bundle without them gets the defaults
    other = {**meta, "tta": {"n_shifts": 2, "shift_fraction": 0.3, "max_shift_mm": 4.0, "seed": 7}}
    offsets = model_inputs(ct, box, other, None)[3]
    expected = shift_offsets(box, other["tta"], 2)
    assert len(offsets) == 2 and all(np.array_equal(a, b) for a, b in zip(offsets, expected))
    bare = {k: v for k, v in meta.items() if k != "tta"}
    assert all(np.array_equal(a, b) for a, b in zip(model_inputs(ct, box, bare, 2)[3], shift_offsets(box, {}, 2)))


def test_field_of_view_outside_the_scan_is_said_in_percent(case, placeholder_bundle):
    ct, _ = case
    pre = placeholder_bundle.tmbrb["preprocessing"]
    _, _, inside = crop_for_model(ct, Box.from_center_size(TUMOUR, (10.0, 10.0, 10.0)), pre)
    assert field_of_view_warnings(ct, inside) == []
    # a crop centred 7 mm inside the CT's x = min face: part of it lies outside
    x0 = ct.TransformIndexToPhysicalPoint((0, 0, 0))[0] + 7.0
    _, _, part = crop_for_model(ct, Box.from_center_size((x0, -20.0, 30.0), (10.0, 10.0, 10.0)), pre)
    f = fraction_outside_scan(ct, part)
    assert round(100 * f) != round(101 * f), "a fraction that reads the same in other units: the test shows nothing"
    assert field_of_view_warnings(ct, part) == [
        f"{round(100 * f)}% of the model's field of view lies outside the scan and is padded with air."]


# ------------------------------------------------------------------------------------------------ CAM and regions
def _grid_and_cam(ct, meta, value):
    box = Box.from_center_size(TUMOUR, (14.0, 14.0, 14.0))
    _, _, grid = crop_for_model(ct, box, meta["preprocessing"])
    cam = np.full(tuple(grid.size_xyz[::-1]), value, np.float32)
    return box, grid, cam


def test_regions_and_cam_on_the_ct_grid_with_a_given_mask(case, placeholder_bundle):
    ct, mask = case
    box, grid, cam = _grid_and_cam(ct, placeholder_bundle.tmbrb, 0.0)
    zz, yy, xx = np.indices(cam.shape)
    cam[:] = np.exp(-((zz - 30.3) ** 2 + (yy - 33.6) ** 2 + (xx - 29.2) ** 2) / 50.0)  # a peak between voxels
    warnings = []
    cam_r, tumour_r, ring_r, shares = regions_and_cam(ct, TUMOUR, box, grid, cam, mask, 4.0, None, warnings)
    assert warnings == []
    assert cam_r.data.dtype == np.float32 and cam_r.data.max() == pytest.approx(1.0, abs=1e-6)  # scaled to max 1
    assert same_grid(cam_r.full_image(), ct, tol=1e-9) and same_grid(ring_r.full_image(), ct, tol=1e-9)
    assert tumour_r.data.dtype == np.uint8 and ring_r.data.dtype == np.uint8
    full_mask = sitk.GetArrayFromImage(tumour_r.full_image())
    assert np.array_equal(full_mask, sitk.GetArrayFromImage(mask))  # the given mask, whole, on the CT grid
    assert cam_r.lo == tumour_r.lo == ring_r.lo and cam_r.data.shape == ring_r.data.shape
    # the region holds the crop and the ring around the box
    lo_pt = ct.TransformIndexToPhysicalPoint([int(v) for v in cam_r.lo])
    assert np.all(np.asarray(lo_pt) <= np.minimum(grid.box.min, np.asarray(box.min) - 4.0) + 1e-6)
    assert shares["ring_width_mm"] == 4.0
    assert shares["tumour"] + shares["ring"] + shares["elsewhere"] == pytest.approx(1.0)
    t, r = tumour_r.data > 0, ring_r.data > 0
    c = cam_r.data.astype(np.float64)
    assert shares["tumour"] == pytest.approx(c[t].sum() / c.sum(), rel=1e-5)
    assert shares["ring"] == pytest.approx(c[r].sum() / c.sum(), rel=1e-5)
    regions_and_cam(ct, TUMOUR, box, grid, cam, mask, 0.5, None, [])  # a thin ring is a ring
    # a ring wider than the crop's margin: the region reaches the box plus the ring's width
    cam_r, _, ring_r, _ = regions_and_cam(ct, TUMOUR, box, grid, cam, mask, 30.0, None, [])
    lo_pt = np.asarray(ct.TransformIndexToPhysicalPoint([int(v) for v in cam_r.lo]))
    hi_pt = np.asarray(ct.TransformIndexToPhysicalPoint([int(v) + n - 1 for v, n in
                                                         zip(cam_r.lo, cam_r.data.shape[::-1])]))
    assert np.all(lo_pt <= np.asarray(box.min) - 30.0 + 2.0) and np.all(hi_pt >= np.asarray(box.max) + 30.0 - 2.0)


def test_regions_with_the_tumour_segmented_at_the_seed(case, placeholder_bundle):
    ct, _ = case
    box, proposed, seg = resolve_box(ct, TUMOUR, None, None, [])
    _, _, grid = crop_for_model(ct, box, placeholder_bundle.tmbrb["preprocessing"])
    cam = np.ones(tuple(grid.size_xyz[::-1]), np.float32)
    _, tumour_r, ring_r, shares = regions_and_cam(ct, TUMOUR, box, grid, cam, None, 4.0, None, [], seg)
    full = sitk.GetArrayFromImage(tumour_r.full_image())
    expected = np.zeros_like(full)
    z, y, x = (int(v) for v in np.asarray(seg.lo)[::-1])
    m = sitk.GetArrayFromImage(seg.mask)
    expected[z:z + m.shape[0], y:y + m.shape[1], x:x + m.shape[2]] = m
    assert full.sum() > 50 and np.array_equal(full > 0, expected > 0)
    assert shares["tumour"] > 0 and not np.any((ring_r.data > 0) & (tumour_r.data > 0))


def test_a_zero_cam_and_a_far_mask_are_said_and_a_ring_width_must_be_positive(case, placeholder_bundle):
    ct, mask = case
    box, grid, cam = _grid_and_cam(ct, placeholder_bundle.tmbrb, 0.0)
    warnings = []
    cam_r, _, _, shares = regions_and_cam(ct, TUMOUR, box, grid, cam, mask, 4.0, None, warnings)
    assert warnings == ["The class activation map is zero everywhere (the model's evidence for High-TMB is nil at the "
                        "chosen layer); attention shares are not defined."]
    assert cam_r.data.max() == 0.0 and shares["total_mass"] == 0.0
    far = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    far[0:2, 0:2, 0:2] = 1
    m = sitk.GetImageFromArray(far)
    m.CopyInformation(ct)
    warnings = []
    regions_and_cam(ct, TUMOUR, box, grid, cam + 1, m, 4.0, None, warnings)
    assert warnings == ["The given segmentation has no voxel near the box; check that it is the tumour's."]
    for width in (0.0, -1.0):
        assert _message(regions_and_cam, ct, TUMOUR, box, grid, cam, mask, width, None, []) == (
            f"The ring width {width} mm must be positive. Give e.g. 10.")


def test_paste_clipped_drops_what_falls_outside():
    src = np.arange(1, 1 + 2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)  # z, y, x
    dst = np.zeros((7, 5, 6), np.uint8)
    _paste_clipped(dst, src, (2, -1, 1))  # offsets x, y, z: y's first row and x's last two columns fall outside
    expected = np.zeros_like(dst)
    expected[1:3, 0:2, 2:6] = src[0:2, 1:3, 0:4]
    assert np.array_equal(dst, expected)
    dst = np.zeros((7, 5, 6), np.uint8)
    _paste_clipped(dst, src, np.array([-3.0, -1.0, 1.0]))  # whole numbers as floats, as index arithmetic gives
    expected = np.zeros_like(dst)
    expected[1:3, 0:2, 0:1] = src[0:2, 1:3, 3:4]
    assert np.array_equal(dst, expected)
    before = dst.copy()
    _paste_clipped(dst, src, (6, 0, 0))   # wholly outside: nothing
    _paste_clipped(dst, src, (0, -3, 0))
    _paste_clipped(dst, np.ones((2, 3, 9), np.uint8), (10, 0, 0))  # far beyond x: a wide source is not wrapped
    assert np.array_equal(dst, before)


# ------------------------------------------------------------------------------------------------ progress, cancel
def test_report_polls_cancel_then_reports_progress():
    seen = []
    _report(lambda f, m: seen.append((f, m)), None, 1, "x")
    _report(None, lambda: False, 0.5, "y")
    assert seen == [(1.0, "x")] and type(seen[0][0]) is float
    with pytest.raises(TMBRBCancelled, match="^Cancelled by the user.$"):
        _report(lambda f, m: seen.append((f, m)), lambda: True, 0.5, "z")
    assert len(seen) == 1


def test_out_of_memory_is_recognised_by_type_or_text():
    assert _is_oom(torch.cuda.OutOfMemoryError("x"))
    assert _is_oom(RuntimeError("CUDA OUT OF MEMORY: tried to allocate"))
    assert not _is_oom(RuntimeError("shape mismatch")) and not _is_oom(ValueError("memory"))


def test_ct_summary_records_the_grid(case):
    ct, _ = case
    img = sitk.Image(4, 5, 6, sitk.sitkInt16)
    img.SetSpacing((0.12345678, 1.0, 2.5))
    img.SetOrigin((1.0, -2.0, 3.5))
    assert ct_summary(img) == {"size_xyz": [4, 5, 6], "spacing_mm": [0.123457, 1.0, 2.5],
                               "origin_lps": [1.0, -2.0, 3.5], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}


# ------------------------------------------------------------------------------------------------ the model
TINY = {"init_features": 4, "growth_rate": 4, "block_config": [1, 1, 1, 1], "hidden_features": 8}


def _tiny(path, nan_bias=False):
    """The paper's metadata with a TINY network (seed 0); with `nan_bias`, weights that give a NaN score (saved
    with their checksum, so the bundle loads)."""
    from TMBRBLib.bundle import default_metadata, save_bundle
    from TMBRBLib.model import build_model

    meta = default_metadata()
    arch = {**{k: v for k, v in meta["tmbrb"]["architecture"].items() if k != "n_features"}, **TINY}
    torch.manual_seed(0)
    net = build_model(arch)
    meta["tmbrb"]["architecture"] = {**arch, "n_features": net.n_features}
    if nan_bias:
        with torch.no_grad():
            next(p for n, p in net.named_parameters() if n.endswith("class_layers.out.3.bias")).fill_(float("nan"))
    return save_bundle(net, path, meta)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """The paper's metadata (a demo placeholder: its notice is shown) with a four-layer network: what the pipeline
    records does not depend on the network's size, and a case scores in about a second instead of four
    (tests/engine/test_pipeline.py scores with the full-size placeholder)."""
    return _tiny(tmp_path_factory.mktemp("tiny") / "tiny")


def _plain_scores(bundle, crops):
    """The model's High-TMB probability for each crop, one plain forward pass (eval mode: samples do not mix)."""
    cls = bundle.tmbrb["cam"].get("class_index", 1)
    with torch.no_grad():
        logits = bundle.model("cpu")(torch.from_numpy(np.stack(crops))[:, None])
    return torch.softmax(logits.float(), 1)[:, cls].tolist()


def test_scorer_scores_the_box_and_each_shifted_crop_in_order(tiny_bundle):
    """The box and the first shifted crop go through the map's pass, the others in batches of TTA_BATCH."""
    scorer = Scorer(tiny_bundle, "cpu")
    rng = np.random.default_rng(1)
    crops = [rng.normal(0, 1, (64, 64, 64)).astype(np.float32) for _ in range(3)]
    score, tta, cam, timings = scorer.run(crops[0], crops[1:], scorer.device)
    expected = _plain_scores(tiny_bundle, crops)
    np.testing.assert_allclose([score] + tta, expected, rtol=0, atol=1e-5)
    assert len(set(np.round(expected, 6))) == 3, "the crops scored alike: the test shows nothing"
    assert cam.shape == (64, 64, 64) and set(timings) == {"forward_cam", "tta_forward"}
    assert TTA_BATCH == 4


def test_score_case_records_what_it_computed(case, tiny_bundle):
    ct, mask = case
    scorer = Scorer(tiny_bundle, "cpu")
    steps, polls = [], []
    box = Box.from_center_size(TUMOUR, (16.0, 16.0, 16.0))
    r = score_case(ct, TUMOUR, box, mask, "1", scorer=scorer, n_shifts=1, ring_width_mm=5,
                   progress=lambda f, m: steps.append((f, m)), mask_source="proposed_edited",
                   cancel=lambda: polls.append(len(steps)) or False)
    assert steps == [(0.02, "checking inputs"), (0.08, "box"), (0.15, "cropping"), (0.3, "model (cpu)"),
                     (0.75, "regions and CAM on the CT grid"), (0.95, "done")]
    assert polls == [0, 1, 2, 3, 4, 5]  # cancel is polled at every step, before it is reported
    base, _, grid, offsets, shifted = model_inputs(ct, box, tiny_bundle.tmbrb, 1)
    expected = _plain_scores(tiny_bundle, [base] + shifted)
    assert r.score == pytest.approx(expected[0], abs=1e-5) and r.tta_scores == pytest.approx(expected, abs=1e-5)
    assert r.tta_mean == pytest.approx(np.mean(r.tta_scores), abs=1e-9)
    assert r.tta_std == pytest.approx(np.std(r.tta_scores), abs=1e-9)
    assert r.risk == risk_groups(r.score, 1, tiny_bundle.tmbrb["risk"]) and r.risk["ecog"] == 1
    assert r.attention["ring_width_mm"] == 5.0 and r.box == box and r.box_proposed is False
    assert r.tumour_mask_info == {"source": "proposed_edited", "uncertain": False, "reasons": []}
    assert r.inputs == {"segmentation_given": True, "n_shifts": 1,
                        "tta_offsets_mm": [list(map(float, o)) for o in offsets]}
    assert r.device_used == "cpu" and r.ct_info == ct_summary(ct) and r.crop_grid == grid
    assert set(r.timings) == {"box", "crop", "forward_cam", "tta_forward", "regions_cam_to_ct", "total"}
    assert r.model == tiny_bundle.info()
    d = r.to_dict()
    assert d["tta"] == {"mean": r.tta_mean, "std": r.tta_std, "n": 2, "scores": r.tta_scores}
    assert d["seed"] == {"lps": [10.0, -20.0, 30.0], "ras": [-10.0, 20.0, 30.0]}
    assert d["box"] == {**box.to_dict(), "proposed": False} and d["score"] == r.score
    assert d["tumour_mask"]["source"] == "proposed_edited" and d["warnings"] == r.warnings
    assert d["ct"] == r.ct_info and d["device"] == "cpu" and d["inputs"] == r.inputs
    assert d["crop_grid"] == grid.to_dict() and d["risk"] == r.risk and d["attention"] == r.attention
    # without a mask: segmented at the seed
    r2 = score_case(ct, TUMOUR, box, None, None, scorer=scorer, n_shifts=0)
    assert r2.inputs["segmentation_given"] is False and r2.tumour_mask_info["source"] == "proposed"
    assert r2.attention["ring_width_mm"] == tiny_bundle.tmbrb["regions"]["ring_width_mm"]
    assert r2.tta_scores == [r2.score] and r2.tta_std == 0.0 and r2.risk["ecog"] is None


def test_a_given_box_segments_while_the_model_runs_and_gives_what_one_after_the_other_gives(case, tiny_bundle,
                                                                                               monkeypatch):
    # the seed segmentation of a given box runs in a thread beside the model: the same mask, shares, warnings and
    # scores as when it runs after the model, and its own time is recorded
    import TMBRBLib.pipeline as pipeline

    ct, _ = case
    scorer = Scorer(tiny_bundle, "cpu")
    box = Box.from_center_size(TUMOUR, (20.0, 20.0, 20.0))
    results = {}
    for overlap in (True, False):
        monkeypatch.setattr(pipeline, "OVERLAP_SEGMENTATION", overlap)
        results[overlap] = score_case(ct, TUMOUR, box, None, 1, scorer=scorer, n_shifts=1)
    a, b = results[True], results[False]
    assert a.tumour_region.data.sum() > 100, "no tumour segmented: the test shows nothing"
    np.testing.assert_array_equal(a.tumour_region.data, b.tumour_region.data)
    np.testing.assert_array_equal(a.ring_region.data, b.ring_region.data)
    assert a.attention == b.attention and a.warnings == b.warnings and a.tta_scores == b.tta_scores
    assert a.tumour_mask_info == b.tumour_mask_info and a.tumour_mask_info["source"] == "proposed"
    for r in (a, b):  # its own time, a part of the case's
        assert 0 < r.timings["seed_segmentation"] < r.timings["total"]


def test_the_seed_segmentation_runs_in_its_own_named_thread_only_when_overlapping(case, tiny_bundle, monkeypatch):
    import threading

    import TMBRBLib.pipeline as pipeline

    real, threads = pipeline.segment_from_seed, []

    def recorded(*a, **k):
        threads.append(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "segment_from_seed", recorded)
    ct, _ = case
    box = Box.from_center_size(TUMOUR, (20.0, 20.0, 20.0))
    for overlap in (False, True):
        monkeypatch.setattr(pipeline, "OVERLAP_SEGMENTATION", overlap)
        score_case(ct, TUMOUR, box, None, None, scorer=Scorer(tiny_bundle, "cpu"), n_shifts=0)
    assert threads[0] == threading.current_thread().name  # off: in the caller's thread, after the model
    assert threads[1].startswith("tmbrb-seed-segmentation")  # on: beside the model, in a thread a profiler names


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_scores_a_given_box_too(case, tiny_bundle, monkeypatch):
    # a researcher's multiprocessing pool (fork) after a case scored in the parent: the child has none of the
    # parent's threads, and a segmentation handed to the parent's thread pool would never run (the case hung)
    import multiprocessing

    import TMBRBLib.pipeline as pipeline

    monkeypatch.setattr(pipeline, "OVERLAP_SEGMENTATION", True)  # the segmentation in a thread beside the model
    ct, _ = case
    box = Box.from_center_size(TUMOUR, (20.0, 20.0, 20.0))
    scorer = Scorer(tiny_bundle, "cpu")
    parent = score_case(ct, TUMOUR, box, None, 1, scorer=scorer, n_shifts=0)
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=lambda: send.send(score_case(ct, TUMOUR, box, None, 1, scorer=scorer,
                                                            n_shifts=0).attention))
    child.start()  # fork: the target is not pickled
    try:
        assert receive.poll(120), "the case scored in a forked child did not finish"
        assert receive.recv() == parent.attention
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()


def test_a_segmentation_that_fails_beside_the_model_fails_the_case_with_its_own_error(case, tiny_bundle,
                                                                                     monkeypatch):
    import TMBRBLib.pipeline as pipeline

    def broken(*a, **k):
        raise TMBRBInputError("The seed is in the air.", "Place it on the tumour.")

    monkeypatch.setattr(pipeline, "segment_from_seed", broken)
    monkeypatch.setattr(pipeline, "OVERLAP_SEGMENTATION", True)
    ct, _ = case
    with pytest.raises(TMBRBInputError, match="The seed is in the air"):
        score_case(ct, TUMOUR, Box.from_center_size(TUMOUR, (20.0, 20.0, 20.0)), None, 1,
                   scorer=Scorer(tiny_bundle, "cpu"), n_shifts=0)


def test_score_case_cancelled_at_a_step_stops(case, tiny_bundle):
    ct, _ = case
    calls = []

    def cancel_at_third():
        calls.append(1)
        return len(calls) == 3

    with pytest.raises(TMBRBCancelled):
        score_case(ct, TUMOUR, None, None, scorer=Scorer(tiny_bundle, "cpu"), n_shifts=0,
                   cancel=cancel_at_third)
    assert len(calls) == 3


def test_score_to_folder_writes_the_result_with_the_ct_path_and_reading_warnings_after_the_notice(case, tiny_bundle, tmp_path):
    ct, mask = case
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nrrd"))
    steps = []
    r, written = score_to_folder(ct, TUMOUR, tmp_path / "out", mask_path=tmp_path / "mask.nrrd", ecog=0,
                                 ct_path=tmp_path / "ct.nrrd", ct_warnings=["from reading", tiny_bundle.notice],
                                 pictures=False, progress=lambda f, m: steps.append((f, m)),
                                 bundle=tiny_bundle, device="cpu", n_shifts=0)
    assert steps == [(0.02, "checking inputs"), (0.08, "box"), (0.15, "cropping"), (0.3, "model (cpu)"),
                     (0.75, "regions and CAM on the CT grid"), (0.95, "done"), (0.96, "writing outputs"),
                     (1.0, "finished")]
    assert r.warnings[:2] == [tiny_bundle.notice, "from reading"]  # the model's notice stays the first line
    assert r.warnings.count(tiny_bundle.notice) == 1  # said by scoring too: once
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["inputs"]["ct_path"] == "../ct.nrrd" and res["inputs"]["segmentation_given"] is True
    assert res["score"] == r.score and res["warnings"][:2] == [tiny_bundle.notice, "from reading"]
    assert res["tumour_mask"]["source"] == "given"  # a given mask, by default
    assert res["risk"]["ecog"] == 0 and "ecog_combined" in res["risk"]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "tumour.nrrd"))),
                          sitk.GetArrayFromImage(mask))
    calls = []
    score_to_folder(ct, TUMOUR, tmp_path / "out2", pictures=False, bundle=tiny_bundle, device="cpu",
                    n_shifts=0, writer=lambda result, out, ct=None, pictures=True: calls.append((out, pictures)))
    assert calls == [(tmp_path / "out2", False)] and not (tmp_path / "out2").exists()


def _features(bundle, crop, layer=None):
    """The deep features of one crop alone, one plain forward pass."""
    from TMBRBLib.model import capture_deep_features

    net = bundle.model("cpu")
    with capture_deep_features(net, layer) as feats, torch.no_grad():
        net(torch.from_numpy(crop)[None, None])
    return feats[0][0].numpy()


def test_scorer_keeps_the_unshifted_crops_deep_features_at_the_bundles_ood_layer(tiny_bundle, monkeypatch):
    scorer = Scorer(tiny_bundle)  # device "auto": the CPU on a machine without CUDA
    if not torch.cuda.is_available():
        assert scorer.device == torch.device("cpu")
    assert scorer.last_features is None  # nothing scored yet
    rng = np.random.default_rng(4)
    crops = [rng.normal(0, 1, (64, 64, 64)).astype(np.float32) for _ in range(2)]
    scorer.run(crops[0], crops[1:], torch.device("cpu"))
    pooled = _features(tiny_bundle, crops[0])
    np.testing.assert_allclose(scorer.last_features, pooled, rtol=0, atol=1e-5)  # no OOD layer: the pooled ones
    assert not np.allclose(_features(tiny_bundle, crops[1]), pooled, atol=1e-4), "the crops look alike to the net"
    monkeypatch.setitem(tiny_bundle.tmbrb, "ood", {"layer": "features.transition1"})
    scorer.run(crops[0], crops[1:], torch.device("cpu"))
    at_layer = _features(tiny_bundle, crops[0], "features.transition1")
    assert scorer.last_features.shape == at_layer.shape != pooled.shape
    np.testing.assert_allclose(scorer.last_features, at_layer, rtol=0, atol=1e-5)
    monkeypatch.setitem(tiny_bundle.tmbrb, "ood", {"layer": "features.no_such_layer"})  # a network without it
    score, _, _, _ = scorer.run(crops[0], crops[1:], torch.device("cpu"))
    assert scorer.last_features is None and 0 <= score <= 1


def test_scorer_batches_many_shifted_crops_in_order_and_times_its_passes(tiny_bundle):
    """Six shifted crops: the first goes with the box through the map's pass, the other five in batches of
    TTA_BATCH (4 + 1); every score is that crop's own, in order."""
    scorer = Scorer(tiny_bundle, "cpu")
    rng = np.random.default_rng(2)
    crops = [rng.normal(0, 1, (64, 64, 64)).astype(np.float32) for _ in range(7)]
    t0 = time.perf_counter()
    score, tta, cam, timings = scorer.run(crops[0], crops[1:], scorer.device)
    wall = time.perf_counter() - t0
    np.testing.assert_allclose([score] + tta, _plain_scores(tiny_bundle, crops), rtol=0, atol=1e-5)
    assert len(tta) == 6 and 0 < timings["forward_cam"] < wall and 0 < timings["tta_forward"] < wall
    assert timings["forward_cam"] + timings["tta_forward"] <= wall


def test_a_gpu_out_of_memory_is_computed_on_the_cpu_with_a_warning(tiny_bundle, monkeypatch):
    scorer = Scorer(tiny_bundle, "cpu")
    x = np.random.default_rng(3).normal(0, 1, (64, 64, 64)).astype(np.float32)
    spacing = (2.0, 1.0, 0.5)
    own = scorer.run(x, [x[::-1].copy()], torch.device("cpu"), spacing)
    real_run, calls = Scorer.run, []

    def run(self, base, shifted, device, spacing_zyx=1.0):  # a GPU that runs out of memory
        calls.append(str(device))
        if device.type == "cuda":
            raise error
        return real_run(self, base, shifted, device, spacing_zyx)

    monkeypatch.setattr(Scorer, "run", run)
    scorer.device = torch.device("cuda:0")
    error, warnings = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), []
    score, tta, cam, _, device = scorer.run_with_fallback(x, [x[::-1].copy()], warnings, spacing)
    assert calls == ["cuda:0", "cpu"] and device == "cpu"
    assert warnings == ["The GPU (cuda:0) ran out of memory; this case was computed on the CPU instead."]
    assert (score, tta) == own[:2] and np.array_equal(cam, own[2])  # the same spacing for the CAM
    error, warnings = RuntimeError("CUDA error: an illegal memory access was encountered"), []
    with pytest.raises(RuntimeError, match="illegal memory access"):  # other errors are not retried
        scorer.run_with_fallback(x, [], warnings)
    assert warnings == [] and calls[2:] == ["cuda:0"]
    scorer.device = torch.device("cpu")
    assert scorer.run_with_fallback(x, [], warnings)[-1] == "cpu" and warnings == []


def test_a_nan_score_stops_the_case_before_any_risk_group(case, tmp_path):
    ct, mask = case
    bundle = _tiny(tmp_path / "nan", nan_bias=True)
    with pytest.raises(TMBRBBundleError) as e:
        score_case(ct, TUMOUR, None, mask, 1, scorer=Scorer(bundle, "cpu"), n_shifts=0)
    assert str(e.value) == (
        "The model gave a score that is not a number (nan) for this crop: the bundle's weights or preprocessing "
        "values are broken. Check it with `tmbrb bundle verify`, or use the bundle that came with TMBRB.")


def test_score_case_checks_the_ct_unless_told_it_was_checked_and_loads_a_bundle_by_path(tiny_bundle):
    ct, mask = make_ct(size=(48, 48, 12), spacing=(1.0, 1.0, 3.5), tumour_lps=TUMOUR, radius_mm=6, noise=10)
    r = score_case(ct, TUMOUR, None, mask, None, bundle=str(tiny_bundle.path), device="cpu", n_shifts=0)
    thick = "3.5 mm slices: outside the training range of most models (0.6-3 mm); the score is less reliable."
    assert r.warnings[:2] == [tiny_bundle.notice, thick] and r.model == tiny_bundle.info()
    again = score_case(ct, TUMOUR, None, mask, None, scorer=Scorer(tiny_bundle, "cpu"), n_shifts=0, ct_checked=True)
    assert thick not in again.warnings and again.score == r.score
    assert all(v == round(v, 4) and v >= 0 for v in r.timings.values())
    assert r.timings["total"] >= r.timings["forward_cam"] + r.timings["crop"]


def test_result_json_holds_every_field_of_the_result(case, tiny_bundle):
    from TMBRBLib import RESEARCH_USE_NOTICE, __version__

    ct, mask = case
    r = score_case(ct, TUMOUR, None, mask, 0, scorer=Scorer(tiny_bundle, "cpu"), n_shifts=0)
    d = r.to_dict()
    assert list(d) == ["tmbrb_version", "notice", "model", "score", "score_definition", "tta", *r.trust, "risk",
                       "attention", "tumour_mask", "seed", "box", "crop_grid", "coordinates_note", "ct", "inputs",
                       "device", "timings_s", "warnings"]
    assert r.trust and all(d[k] == v for k, v in r.trust.items())
    assert d["tmbrb_version"] == __version__ and d["notice"] == RESEARCH_USE_NOTICE and d["model"] == r.model
    assert d["score_definition"] == ("TMBRB = model probability of High-TMB (>= 10 mut/Mb) for the box as "
                                     "given/proposed")
    assert d["coordinates_note"] == ("LPS = ITK/DICOM patient frame; RAS = (-x, -y, z), the frame 3D Slicer shows. "
                                     "mm.")
    assert d["timings_s"] == r.timings and d["tumour_mask"] == {"source": "given", "uncertain": False, "reasons": []}
    assert d["box"]["proposed"] is True and d["tta"] == {"mean": r.score, "std": 0.0, "n": 1, "scores": [r.score]}
    assert json.loads(json.dumps(d)) == d  # JSON as it is


@pytest.mark.parametrize("given, name", [("mask_path", "tumour.nrrd"), ("ct_path", "crop.nrrd")])
def test_score_to_folder_never_replaces_its_ct_or_mask(case, tiny_bundle, tmp_path, given, name):
    ct, mask = case
    out = tmp_path / "out"
    out.mkdir()
    sitk.WriteImage(mask if given == "mask_path" else ct, str(out / name))
    before = (out / name).read_bytes()
    steps = []
    with pytest.raises(TMBRBInputError) as e:
        score_to_folder(ct, TUMOUR, out, pictures=False, bundle=tiny_bundle, device="cpu", n_shifts=0,
                        progress=lambda f, m: steps.append(m), **{given: out / name})
    assert str(e.value) == (f"--out '{out}' would replace the input '{out / name}' with the output {name}. Give --out "
                            "another folder (outputs never overwrite a run's inputs).")
    assert steps == [] and (out / name).read_bytes() == before and sorted(p.name for p in out.iterdir()) == [name]


def test_reading_warnings_go_first_after_the_models_notice_and_never_twice(case, tiny_bundle):
    import dataclasses

    from TMBRBLib.pipeline import add_reading_warnings

    ct, mask = case
    r = score_case(ct, TUMOUR, None, mask, None, scorer=Scorer(tiny_bundle, "cpu"), n_shifts=0)
    notice = tiny_bundle.notice
    for warnings, model, read, expected in [
        ([notice, "scored"], r.model, ["read", "scored"], [notice, "read", "scored"]),
        (["scored"], r.model, ["read 1", "read 2", "scored"], ["read 1", "read 2", "scored"]),
        ([], r.model, ["read"], ["read"]),
        ([notice], None, ["read"], ["read", notice]),  # no model record: nothing is known to be its notice
    ]:
        got = dataclasses.replace(r, warnings=list(warnings), model=model)
        add_reading_warnings(got, read)
        assert got.warnings == expected


def test_score_to_folder_scores_the_given_box_and_writes_pictures_by_default(case, tiny_bundle, tmp_path):
    ct, mask = case
    box = Box.from_center_size(TUMOUR, (20.0, 18.0, 16.0))
    r, written = score_to_folder(ct, TUMOUR, tmp_path / "out", box_lps=box, bundle=tiny_bundle, device="cpu",
                                 n_shifts=0)
    assert r.box == box and r.box_proposed is False
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (res["box"]["lps_min"], res["box"]["proposed"]) == (list(box.min), False)
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir() if p.suffix == ".png")  # the overlays

    polls = []
    with pytest.raises(TMBRBCancelled):  # polled inside scoring too: stopped at the second step, nothing written
        score_to_folder(ct, TUMOUR, tmp_path / "cancelled", bundle=tiny_bundle, device="cpu", n_shifts=0,
                        cancel=lambda: polls.append(1) or len(polls) == 2)
    assert len(polls) == 2 and not (tmp_path / "cancelled").exists()
    polls.clear()
    with pytest.raises(TMBRBCancelled):  # and once more before the files are written
        score_to_folder(ct, TUMOUR, tmp_path / "cancelled", bundle=tiny_bundle, device="cpu", n_shifts=0,
                        cancel=lambda: polls.append(1) or len(polls) == 7)
    assert len(polls) == 7 and not (tmp_path / "cancelled").exists()


def test_score_case_runs_on_the_cpu_by_default_here_and_a_cancel_stops_it_at_the_first_step(case, tiny_bundle):
    ct, mask = case
    calls = []
    with pytest.raises(TMBRBCancelled):
        score_case(ct, TUMOUR, None, mask, bundle=tiny_bundle, cancel=lambda: calls.append(1) or True)
    assert calls == [1]
    if not torch.cuda.is_available():  # device "auto": the CPU on a machine without CUDA
        assert score_case(ct, TUMOUR, None, mask, bundle=tiny_bundle, n_shifts=0).device_used == "cpu"


def _pasted(ct, seg):
    """A seed segmentation's mask pasted into an array of the CT's grid (z, y, x)."""
    full = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    z, y, x = (int(v) for v in np.asarray(seg.lo)[::-1])
    m = sitk.GetArrayFromImage(seg.mask)
    full[z:z + m.shape[0], y:y + m.shape[1], x:x + m.shape[2]] = m
    return full


@pytest.mark.parametrize("overlap", [False, True])
def test_the_tumour_of_a_given_box_is_segmented_inside_that_box_with_the_bundles_settings(case, tiny_bundle,
                                                                                          monkeypatch, overlap):
    # a box that holds half the tumour: the mask stays inside it (not the whole tumour a proposed box would take),
    # and the bundle's proposal settings are the ones used (a tissue range that makes the tumour part-solid)
    import TMBRBLib.pipeline as pipeline
    from TMBRBLib.proposal import segment_from_seed

    monkeypatch.setattr(pipeline, "OVERLAP_SEGMENTATION", overlap)
    ct, _ = case
    box = Box((10.0, -30.0, 20.0), (22.0, -10.0, 40.0))
    settings = {**tiny_bundle.tmbrb["proposal"], "hu_range": [100.0, 500.0]}
    monkeypatch.setitem(tiny_bundle.tmbrb, "proposal", settings)
    r = score_case(ct, TUMOUR, box, None, None, scorer=Scorer(tiny_bundle, "cpu"), n_shifts=0)
    seg = segment_from_seed(ct, TUMOUR, box, settings)
    expected = _pasted(ct, seg)
    assert np.array_equal(sitk.GetArrayFromImage(r.tumour_region.full_image()), expected)
    assert r.tumour_mask_info == seg.info and seg.info["part_solid"] is True
    assert all(w in r.warnings for w in seg.warnings) and seg.warnings
    assert r.warnings[0] == tiny_bundle.notice  # the segmentation's warnings come after the others, not instead
    # the test shows something: with the default settings, or with no box, the mask differs
    assert not np.array_equal(_pasted(ct, segment_from_seed(ct, TUMOUR, box, None)), expected)
    whole = _pasted(ct, segment_from_seed(ct, TUMOUR, None, settings))
    assert whole.sum() > expected.sum() and np.any(whole[:, :, :39] > 0)


def test_the_trust_checks_are_of_this_case_and_flagged_ones_are_warnings(case, tiny_bundle, monkeypatch):
    # a bundle with every trust section: the OOD distance is the unshifted crop's, the acquisition values are the
    # CT's spacing, the crop's HU, the box's longest side and the field of view outside the scan, the spread is the
    # box's and its shifted copies', the calibrated probability the score's; each flag gives its warning, once
    from TMBRBLib.crop import crop_for_model as crop
    from TMBRBLib.ood import (apply_temperature, crop_noise_hu, feature_distance, fit_feature_summary,
                              trust_warnings)

    ct, mask = case
    n = tiny_bundle.tmbrb["architecture"]["n_features"]
    rng = np.random.default_rng(5)
    ood = fit_feature_summary(rng.normal(0, 1, (12, n)), [0, 1] * 6, rng.normal(0, 1, (4, n)), n_components=3)
    ood["threshold"] = 0.0
    monkeypatch.setitem(tiny_bundle.tmbrb, "ood", ood)
    monkeypatch.setitem(tiny_bundle.tmbrb, "acquisition", {"ranges": {"slice_mm": [0.5, 1.5], "box_mm": [1, 99]}})
    monkeypatch.setitem(tiny_bundle.tmbrb, "calibration", {"temperature": 2.0})
    monkeypatch.setitem(tiny_bundle.tmbrb, "tta", {**tiny_bundle.tmbrb["tta"], "spread_flag_level": 0.0})
    box = Box.from_center_size(TUMOUR, (16.0, 18.0, 20.0))
    r = score_case(ct, TUMOUR, box, mask, None, scorer=Scorer(tiny_bundle, "cpu"), n_shifts=2)
    base, crop_img, grid = crop(ct, box, tiny_bundle.tmbrb["preprocessing"])
    hu = sitk.GetArrayFromImage(crop_img).astype(np.float64)
    assert r.trust["ood"]["available"] and r.trust["ood"]["flag"] is True
    assert r.trust["ood"]["distance"] == pytest.approx(feature_distance(ood, _features(tiny_bundle, base))[0],
                                                       rel=1e-4)
    values = r.trust["acquisition"]["values"]
    assert values == pytest.approx({"slice_mm": 2.0, "pixel_mm": 1.0, "box_mm": 20.0,
                                    "fov_outside": fraction_outside_scan(ct, grid),
                                    "crop_hu_p05": np.percentile(hu, 5), "crop_hu_p50": np.percentile(hu, 50),
                                    "crop_noise_hu": crop_noise_hu(hu)})
    assert [o["key"] for o in r.trust["acquisition"]["outside"]] == ["slice_mm"]
    assert r.trust["box_placement"] == {"level": 0.0, "flag": True} and r.tta_std > 0
    assert r.trust["calibration"]["probability"] == pytest.approx(apply_temperature(r.score, 2.0), abs=1e-12)
    said = trust_warnings(r.trust)
    assert len(said) == 3 and all(r.warnings.count(w) == 1 for w in said)


def test_score_case_puts_the_model_on_the_device_asked_for(case, tiny_bundle, monkeypatch):
    # (a machine without a GPU cannot run the model on "cuda:1": the device asked for is recorded where the model's
    # device is chosen, and the case stops there)
    import TMBRBLib.pipeline as pipeline

    class Chosen(Exception):
        pass

    def select_device(device="auto"):
        raise Chosen(device)

    monkeypatch.setattr(pipeline, "select_device", select_device)
    ct, mask = case
    with pytest.raises(Chosen) as e:
        score_case(ct, TUMOUR, None, mask, bundle=tiny_bundle, device="cuda:1")
    assert e.value.args == ("cuda:1",)
    with pytest.raises(Chosen) as e:
        Scorer(tiny_bundle)
    assert e.value.args == ("auto",)


def test_the_fallback_keeps_the_spacing_and_retries_only_a_gpu_out_of_memory(tiny_bundle, monkeypatch):
    scorer, cpu = Scorer(tiny_bundle, "cpu"), torch.device("cpu")
    x = np.random.default_rng(1).normal(0, 1, (64, 64, 64)).astype(np.float32)
    spacing = (2.0, 1.0, 0.5)
    own, plain = scorer.run(x, [], cpu, spacing), scorer.run(x, [], cpu, 1.0)  # the CAM is smoothed in mm
    assert np.array_equal(scorer.run(x, [], cpu)[2], plain[2])  # 1 mm voxels unless told
    assert own[2].max() > 0 and plain[2].max() > 0, "a map of zeros: the test shows nothing"
    assert not np.allclose(own[2] / own[2].max(), plain[2] / plain[2].max(), atol=1e-3)
    warnings = []
    assert np.array_equal(scorer.run_with_fallback(x, [], warnings, spacing)[2], own[2])
    assert np.array_equal(scorer.run_with_fallback(x, [], warnings)[2], plain[2]) and warnings == []  # 1 mm

    calls, emptied = [], []

    def run(self, base, shifted, device, spacing_zyx=1.0):  # every device but the CPU runs out of memory
        calls.append(str(device))
        if device.type != "cpu" or fail_cpu:
            raise torch.OutOfMemoryError("out of memory")
        return 0.5, [], np.zeros((2, 2, 2)), {}

    monkeypatch.setattr(Scorer, "run", run)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    fail_cpu = True  # out of memory on the CPU: nothing else to try, raised as it is
    with pytest.raises(torch.OutOfMemoryError):
        scorer.run_with_fallback(x, [], warnings)
    assert calls == ["cpu"] and warnings == [] and emptied == []
    fail_cpu = False
    scorer.device = torch.device("cuda:0")  # the GPU's cached memory is given back before the CPU computes it
    assert scorer.run_with_fallback(x, [], warnings)[-1] == "cpu" and emptied == [1]
    scorer.device = torch.device("mps")  # another GPU: CUDA's cache is not touched
    assert scorer.run_with_fallback(x, [], warnings)[-1] == "cpu" and emptied == [1]
    assert calls[1:] == ["cuda:0", "cpu", "mps", "cpu"]
    assert warnings[-1] == "The GPU (mps) ran out of memory; this case was computed on the CPU instead."


def test_the_map_is_computed_on_the_crops_own_spacing_with_the_bundles_ring_width(case, tiny_bundle, monkeypatch):
    # the map is smoothed in mm on the crop's (z, y, x) spacing (its voxels are cubes: the field of view is one)
    ct, mask = case
    monkeypatch.setitem(tiny_bundle.tmbrb, "regions", {**tiny_bundle.tmbrb["regions"], "ring_width_mm": 7.0})
    scorer = Scorer(tiny_bundle, "cpu")
    box = Box.from_center_size(TUMOUR, (12.0, 24.0, 40.0))
    r = score_case(ct, TUMOUR, box, mask, None, scorer=scorer, n_shifts=0)
    assert r.attention["ring_width_mm"] == 7.0
    base, _, grid, _, _ = model_inputs(ct, box, tiny_bundle.tmbrb, 0)
    zyx = tuple(grid.spacing[::-1])
    assert zyx != (1.0, 1.0, 1.0), "1 mm voxels: the test shows nothing"
    expected = {s: regions_and_cam(ct, TUMOUR, box, grid, scorer.run(base, [], scorer.device, s)[2], mask, 7.0,
                                   None, [])[0].data for s in (zyx, 1.0)}
    assert np.array_equal(r.cam_region.data, expected[zyx])
    assert not np.allclose(expected[zyx], expected[1.0], atol=1e-3)


def test_a_box_from_a_mask_takes_the_bundles_margin_and_a_bundle_without_regions_a_10_mm_ring(case, tiny_bundle,
                                                                                              monkeypatch):
    ct, _ = case
    part = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    part[18:21, 37:42, 37:42] = 1  # a block inside the tumour: its box is not the tumour's
    mask = sitk.GetImageFromArray(part)
    mask.CopyInformation(ct)
    monkeypatch.setitem(tiny_bundle.tmbrb, "proposal", {**tiny_bundle.tmbrb["proposal"], "margin_mm": 8.0})
    monkeypatch.delitem(tiny_bundle.tmbrb, "regions")
    t0 = time.perf_counter()
    r = score_case(ct, TUMOUR, None, mask, None, scorer=Scorer(tiny_bundle, "cpu"), n_shifts=0)
    wall = time.perf_counter() - t0
    ext = resolve_box(ct, TUMOUR, None, {"margin_mm": 0.0}, [], tumour_mask=mask)[0]  # the mask's own extent
    np.testing.assert_allclose(r.box.min, np.asarray(ext.min) - 8.0)
    np.testing.assert_allclose(r.box.max, np.asarray(ext.max) + 8.0)
    assert r.box_proposed is True and r.attention["ring_width_mm"] == 10.0
    segmented = resolve_box(ct, TUMOUR, None, {"margin_mm": 8.0}, [])[0]  # what the seed alone would give
    assert np.max(np.abs(np.asarray(segmented.size) - np.asarray(r.box.size))) > 2.0
    # the tumour is the mask given: nothing segmented; every step's time is a part of the whole
    assert set(r.timings) == {"box", "crop", "forward_cam", "tta_forward", "regions_cam_to_ct", "total"}
    assert all(0 <= v <= r.timings["total"] for v in r.timings.values())
    assert sum(v for k, v in r.timings.items() if k != "total") <= r.timings["total"] + 0.001
    assert 0 < r.timings["forward_cam"] and r.timings["total"] <= round(wall, 4) + 0.0001


def test_a_given_mask_far_from_the_box_is_said(case, tiny_bundle):
    ct, _ = case
    far = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    far[0:2, 0:2, 0:2] = 1
    m = sitk.GetImageFromArray(far)
    m.CopyInformation(ct)
    r = score_case(ct, TUMOUR, Box.from_center_size(TUMOUR, (16.0, 16.0, 16.0)), m, None,
                   scorer=Scorer(tiny_bundle, "cpu"), n_shifts=0)
    assert r.warnings.count("The given segmentation has no voxel near the box; check that it is the tumour's.") == 1


def test_the_score_is_the_probability_of_the_bundles_class(tiny_bundle, monkeypatch):
    x = np.random.default_rng(7).normal(0, 1, (64, 64, 64)).astype(np.float32)
    p1 = _plain_scores(tiny_bundle, [x])[0]  # class 1 (High-TMB), the bundle's class_index
    cam = dict(tiny_bundle.tmbrb["cam"])
    monkeypatch.setitem(tiny_bundle.tmbrb, "cam", {**cam, "class_index": 0})
    score, tta, _, _ = Scorer(tiny_bundle, "cpu").run(x, [x], torch.device("cpu"))
    assert [score] + tta == pytest.approx([1 - p1, 1 - p1], abs=1e-5)
    monkeypatch.setitem(tiny_bundle.tmbrb, "cam", {k: v for k, v in cam.items() if k != "class_index"})
    score, tta, _, _ = Scorer(tiny_bundle, "cpu").run(x, [x], torch.device("cpu"))  # none said: class 1
    assert [score] + tta == pytest.approx([p1, p1], abs=1e-5)
    assert abs(p1 - 0.5) > 1e-3, "a score of one half: the test shows nothing"


def test_a_case_whose_gpu_runs_out_of_memory_says_so_in_its_result(case, tiny_bundle, monkeypatch):
    ct, mask = case
    scorer = Scorer(tiny_bundle, "cpu")
    real_run = Scorer.run

    def run(self, base, shifted, device, spacing_zyx=1.0):
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, base, shifted, device, spacing_zyx)

    monkeypatch.setattr(Scorer, "run", run)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    scorer.device = torch.device("cuda:0")
    r = score_case(ct, TUMOUR, None, mask, None, scorer=scorer, n_shifts=0)
    assert r.device_used == "cpu"
    assert r.warnings.count("The GPU (cuda:0) ran out of memory; this case was computed on the CPU instead.") == 1
