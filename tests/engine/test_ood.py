"""Is a case like the model's training data? The demo bundle's deep-feature summary, acquisition ranges and
box-placement level (TMBRBLib/ood.py), on fresh phantoms, shifted acquisitions, the real CTs and an old bundle."""

import doctest
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib import ood
from TMBRBLib.bundle import METADATA_PATH, WEIGHTS_PATH, load_bundle
from TMBRBLib.geometry import Box
from TMBRBLib.phantom import make_phantom
from TMBRBLib.present import by_key, result_lines

# the demo cohort's settings (docs/training.md), another cohort seed than the demo's 0
DEMO_PHANTOM = dict(signal="peritumoral", strength=2.0, haze_hu=300.0, shell_mm=8.0)
FRESH_SEEDS = [900000 + i for i in range(6)]


@pytest.fixture(scope="module")
def demo():
    from training.cli import DEMO_BUNDLE
    b = load_bundle(DEMO_BUNDLE)  # the committed demo bundle, whatever $TMBRB_MODEL says
    if "ood" not in b.tmbrb:
        pytest.fail("the demo bundle has no OOD summary: run `python -m training ood-summary` (docs/training.md)")
    return b


def _stats(bundle, ct, box):
    from training.trust import case_statistics
    return case_statistics(bundle, ct, box, 0, bundle.tmbrb["ood"].get("layer"))


def _flags(bundle, stats):
    o = ood.assess_features(bundle.tmbrb["ood"], stats["features"])
    a = ood.check_acquisition(bundle.tmbrb["acquisition"], stats["acquisition"])
    return bool(o["flag"]), bool(a["flag"])


def _with_hu(ct, fn):
    a = fn(sitk.GetArrayFromImage(ct).astype(np.float32))
    img = sitk.GetImageFromArray(np.round(a).astype(np.int16))
    img.CopyInformation(ct)
    return img


@pytest.fixture(scope="module")
def fresh(demo):
    """Fresh in-distribution phantoms: (case, its statistics) for each seed."""
    out = []
    for s in FRESH_SEEDS:
        c = make_phantom(s, **DEMO_PHANTOM)
        out.append((c, _stats(demo, c.ct, Box(*c.box_lps))))
    return out


def test_docstring_examples_run():
    failed, attempted = doctest.testmod(ood, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failed == 0


def test_distance_is_sklearns_mahalanobis_to_the_nearest_class():
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 40)) @ rng.normal(size=(40, 40))
    y = np.arange(60) % 2
    x[y == 1] += 3.0
    v = rng.normal(size=(20, 40)) @ rng.normal(size=(40, 40))
    s = ood.fit_feature_summary(x, y, v, n_components=8, quantile=0.9)
    pca = PCA(8, svd_solver="full").fit(x)
    z = pca.transform(x)
    means = [z[y == c].mean(0) for c in (0, 1)]
    lw = LedoitWolf(assume_centered=True).fit(z - np.stack(means)[y])
    probe = rng.normal(size=(5, 40)) * 4
    zp = pca.transform(probe)
    expected = np.sqrt(np.min([lw.mahalanobis(zp - m) for m in means], 0))
    np.testing.assert_allclose(ood.feature_distance(s, probe), expected, rtol=1e-4)
    assert s["threshold"] == pytest.approx(np.quantile(ood.feature_distance(s, v), 0.9), rel=1e-6)
    json.dumps(s)  # the summary is JSON as it is stored in the metadata


def test_fresh_in_distribution_phantoms_are_rarely_flagged(demo, fresh):
    flags = [_flags(demo, st) for _c, st in fresh]
    assert np.mean([o for o, _a in flags]) <= 0.17, flags  # at most 1 of 6 (95th percentile threshold)
    assert np.mean([o or a for o, a in flags]) <= 0.17, flags


@pytest.mark.parametrize("shift", ["+200 HU", "sharp-kernel noise"])
def test_shifted_acquisition_is_flagged(demo, fresh, shift):
    rng = np.random.default_rng(1)
    change = {"+200 HU": lambda a: a + 200.0,
              "sharp-kernel noise": lambda a: a + rng.normal(0.0, 60.0, a.shape)}[shift]
    flags = [_flags(demo, _stats(demo, _with_hu(c.ct, change), Box(*c.box_lps))) for c, _st in fresh]
    assert np.mean([o or a for o, a in flags]) >= 0.75, flags


def test_five_mm_slices_and_lesion_size_outside_the_training_ranges_are_flagged():
    # the demo's phantoms were drawn with 0.6-5 mm slices and 8-60 mm lesions, so a 5 mm or a 60 mm case is inside
    # its ranges; a model trained on thin slices and mid-sized lesions flags them
    thin = [ood.acquisition_stats((0.7, 0.7, sz), np.full((8, 8, 8), -800.0), (d, d, d), 0.0)
            for sz, d in ((0.6, 15), (1.0, 25), (1.25, 30), (2.0, 40))]
    ranges = ood.fit_acquisition_ranges(thin)
    thick = ood.check_acquisition(ranges, ood.acquisition_stats((0.7, 0.7, 5.0), np.full((8, 8, 8), -800.0),
                                                                (30, 30, 30), 0.0))
    big = ood.check_acquisition(ranges, ood.acquisition_stats((0.7, 0.7, 1.0), np.full((8, 8, 8), -800.0),
                                                              (70, 60, 60), 0.0))
    assert [o["key"] for o in thick["outside"]] == ["slice_mm"]
    assert [o["key"] for o in big["outside"]] == ["box_mm"]
    assert "slice thickness 5 mm (training" in ood.outside_text(thick["outside"])


def test_real_cts_are_flagged_by_the_demo_model(demo, real_ct_data):
    from TMBRBLib.io import read_ct
    meta = json.loads((real_ct_data / "cases.json").read_text())
    flagged = []
    for name in ("pyradiomics/lung1_image.nrrd", "pyradiomics/lung2_image.nrrd",
                 "lidc_voi/LIDC-IDRI-0072_R_1_image.nii.gz", "lidc_voi/LIDC-IDRI-0874_R_1_image.nii.gz"):
        m = meta[name]
        ct, _ = read_ct(real_ct_data / name)
        half = np.array(m["spacing_mm"]) / 2
        box = Box(tuple(np.array(m["bbox_lps_mm_min"]) - half), tuple(np.array(m["bbox_lps_mm_max"]) + half))
        o, a = _flags(demo, _stats(demo, ct, box))
        flagged.append(o or a)
    assert all(flagged), flagged


def test_score_case_carries_the_checks_into_result_json_and_lines(demo, fresh):
    from TMBRBLib.pipeline import Scorer, score_case
    c, st = fresh[0]
    r = score_case(c.ct, c.seed_lps, box_lps=c.box_lps, scorer=Scorer(demo, "cpu"), n_shifts=2)
    d = json.loads(json.dumps(r.to_dict()))
    # the engine's features (from the Grad-CAM forward) are those of the unshifted box
    assert d["ood"]["available"] and d["ood"]["distance"] == pytest.approx(
        ood.assess_features(demo.tmbrb["ood"], st["features"])["distance"], rel=1e-3)
    assert d["ood"]["threshold"] == demo.tmbrb["ood"]["threshold"]
    assert d["acquisition"]["available"] and set(d["acquisition"]["values"]) == set(ood.ACQUISITION_QUANTITIES)
    assert d["box_placement"]["level"] == demo.tmbrb["tta"]["spread_flag_level"]
    lines = by_key(result_lines(d))
    assert lines["ood"].value in ("within the training data's range", "unlike the training data: interpret with care")
    assert "threshold" in lines["ood"].detail
    assert "box-placement sensitivity" in lines["spread"].detail


def test_shifted_case_says_so_in_its_lines_and_warnings(demo, fresh):
    from TMBRBLib.pipeline import Scorer, score_case
    c, _st = fresh[1]
    r = score_case(_with_hu(c.ct, lambda a: a + 200.0), c.seed_lps, box_lps=c.box_lps, scorer=Scorer(demo, "cpu"),
                   n_shifts=0)
    lines = by_key(result_lines(r.to_dict()))
    assert lines["acquisition"].value == "outside the training data's ranges"
    assert "HU" in lines["acquisition"].detail
    assert any("acquisition ranges" in w for w in r.warnings)


def test_old_bundle_and_old_result_say_not_available(demo, tmp_path):
    from TMBRBLib.pipeline import score_case
    old = tmp_path / "old"
    (old / "configs").mkdir(parents=True)
    (old / "models").mkdir()
    shutil.copy(demo.path / WEIGHTS_PATH, old / WEIGHTS_PATH)
    meta = json.loads((demo.path / METADATA_PATH).read_text())
    for key in ("ood", "acquisition"):
        meta["tmbrb"].pop(key)
    for key in ("spread_flag_level", "spread_flag_rule"):
        meta["tmbrb"]["tta"].pop(key, None)
    (old / METADATA_PATH).write_text(json.dumps(meta))
    c = make_phantom(FRESH_SEEDS[0], **DEMO_PHANTOM)
    r = score_case(c.ct, c.seed_lps, box_lps=c.box_lps, bundle=old, n_shifts=0, device="cpu")
    d = r.to_dict()
    assert d["ood"] == {"available": False, "reason": "the model bundle has no summary of its training data's features"}
    assert d["acquisition"]["available"] is False and d["box_placement"]["flag"] is None
    for result in (d, {k: v for k, v in d.items() if k not in ("ood", "acquisition", "box_placement")}):
        lines = by_key(result_lines(result))
        assert lines["ood"].value == "not available" and lines["acquisition"].value == "not available"
        assert "within" not in lines["ood"].text and "within" not in lines["spread"].text


def test_a_broken_summary_says_not_available_with_the_reason(demo):
    s = dict(demo.tmbrb["ood"])
    r = ood.assess_features(s, np.zeros(17))
    assert r["available"] is False and "length 17" in r["reason"]
    del s["precision"]
    assert ood.assess_features(s, np.zeros(1020))["available"] is False
    assert ood.assess_features(demo.tmbrb["ood"], None)["reason"] == "the network gives no deep features"


def test_the_summary_names_the_layer_whose_features_the_engine_captures(demo):
    import copy
    from TMBRBLib.bundle import Bundle
    from TMBRBLib.pipeline import Scorer
    x = np.zeros((64, 64, 64), np.float32)
    sizes = {}
    for layer in ("features.transition1.relu", None):
        meta = copy.deepcopy(demo.metadata)
        meta["tmbrb"]["ood"].pop("layer", None)
        if layer:
            meta["tmbrb"]["ood"]["layer"] = layer
        scorer = Scorer(Bundle(demo.path, meta, demo.sha256), "cpu")
        scorer.run(x, [], scorer.device)
        sizes[layer] = scorer.last_features.shape
    # a summary without a layer (written before the key existed) is for the final pooled features
    assert sizes == {"features.transition1.relu": (224,), None: (1020,)}
    assert demo.tmbrb["ood"]["layer"] == ood.OOD_LAYER


@pytest.mark.parametrize("summary_change", [
    lambda s: s.pop("threshold"),
    lambda s: s.update(threshold="high"),
    lambda s: s.update(threshold=float("nan")),
], ids=["no threshold", "a word", "NaN"])
def test_a_malformed_feature_summary_is_not_available_not_a_crash(summary_change):
    from TMBRBLib.ood import assess_features, fit_feature_summary

    rng = np.random.default_rng(0)
    train, labels = rng.normal(size=(40, 12)), np.repeat([0, 1], 20)
    summary = fit_feature_summary(train, labels, rng.normal(size=(10, 12)), n_components=4)
    assert assess_features(summary, train[0])["available"]
    summary_change(summary)
    got = assess_features(summary, train[0])
    assert got == {"available": False, "reason": got["reason"]} and "cannot be used" in got["reason"]


@pytest.mark.parametrize("temperature", [float("nan"), -1.0, 0.0, 1000.0, "warm"])
def test_a_calibration_temperature_outside_the_fit_bounds_is_not_used(temperature):
    from TMBRBLib.ood import calibrated

    assert calibrated({"temperature": 2.0}, 0.9)["probability"] == pytest.approx(0.75)
    got = calibrated({"temperature": temperature}, 0.7)
    assert not got["available"] and "probability" not in got


@pytest.mark.parametrize("ranges", [{"slice_mm": [0.5]}, {"slice_mm": [3.0, 1.0]}, {"slice_mm": [0.5, float("nan")]},
                                    {"slice_mm": "0.5-5"}])
def test_malformed_acquisition_ranges_are_not_available_not_a_crash(ranges):
    from TMBRBLib.ood import check_acquisition

    got = check_acquisition({"ranges": ranges}, {"slice_mm": 1.0})
    assert not got["available"] and "cannot be used" in got["reason"]
    assert check_acquisition({"ranges": {"slice_mm": [0.5, 5.0]}}, {"slice_mm": 6.0})["flag"]


def test_a_spread_level_that_is_not_a_number_gives_no_flag():
    from TMBRBLib.ood import spread_check

    assert spread_check(0.08, 9, "x")["flag"] is None and spread_check(0.08, 9, float("nan"))["flag"] is None
    assert spread_check(0.08, 9, "0.05")["flag"] is True
