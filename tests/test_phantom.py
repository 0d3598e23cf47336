"""The synthetic chest-CT phantom: determinism, physical geometry, realism, the TMB signal, files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from TMBRBLib import phantom as ph
from TMBRBLib.phantom import writer as phw

FAST = dict(spacing=(1.0, 1.0, 2.0))  # 160 x 160 x 48 voxels: quick


def arr(img):
    return sitk.GetArrayFromImage(img)


def mask_points(img) -> np.ndarray:
    """LPS centres of the non-zero voxels, through the image's own index->physical mapping."""
    kji = np.argwhere(arr(img) > 0)
    m = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    return np.asarray(img.GetOrigin()) + kji[:, ::-1] @ m.T


@pytest.fixture(scope="module")
def demo():
    return ph.make_demo_case()


@pytest.fixture(scope="module")
def oriented_cases():
    return {d: ph.make_phantom(5, direction=d, **FAST) for d in ("identity", "flip_xy", "flip_z", "oblique")}


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_bit_identical_case_and_other_seed_differs():
    a = ph.make_phantom(3, **FAST)
    b = ph.make_phantom(3, **FAST)
    c = ph.make_phantom(4, **FAST)
    for img in ("ct", "tumour", "signal"):
        assert np.array_equal(arr(getattr(a, img)), arr(getattr(b, img)))
    assert a.seed_lps == b.seed_lps and a.box_lps == b.box_lps and a.tmb == b.tmb
    assert json.dumps(a.params, default=str) == json.dumps(b.params, default=str)
    assert a.ct.GetOrigin() == b.ct.GetOrigin() and a.ct.GetDirection() == b.ct.GetDirection()
    assert a.tmb != c.tmb and a.true_com_lps != c.true_com_lps


def test_case_fields_types_and_grid(demo):
    assert demo.ct.GetPixelID() == sitk.sitkInt16 and demo.ct.GetDimension() == 3
    for m in (demo.tumour, demo.signal):
        assert m.GetPixelID() == sitk.sitkUInt8
        assert m.GetSize() == demo.ct.GetSize() and m.GetOrigin() == demo.ct.GetOrigin()
        assert m.GetSpacing() == demo.ct.GetSpacing() and m.GetDirection() == demo.ct.GetDirection()
        assert set(np.unique(arr(m))) <= {0, 1}
    assert demo.high_tmb == (demo.tmb >= 10.0)
    assert len(demo.seed_lps) == 3 and len(demo.box_lps) == 2


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("direction", ["identity", "flip_xy", "flip_z", "oblique"])
def test_mask_centre_of_mass_matches_truth_for_every_direction(oriented_cases, direction):
    case = oriented_cases[direction]
    com = mask_points(case.tumour).mean(axis=0)
    voxel = float(np.linalg.norm(case.ct.GetSpacing()))
    assert np.linalg.norm(com - np.asarray(case.true_com_lps)) < voxel
    # the CT agrees with the mask in physical space: dense tissue at the centre of mass
    idx = case.ct.TransformPhysicalPointToIndex(case.true_com_lps)
    assert case.ct[idx] > -300 and case.tumour[idx] == 1


def test_flipped_and_oblique_grids_place_the_same_anatomy_at_the_same_lps_position(oriented_cases):
    ref = oriented_cases["identity"]
    vol_ref = arr(ref.tumour).sum() * np.prod(ref.tumour.GetSpacing())
    rng = np.random.default_rng(0)
    pts = np.asarray(ref.true_com_lps) + rng.uniform(-35, 35, (300, 3)) * [1, 1, 0.5]

    def sample(img):
        return np.array([img[img.TransformPhysicalPointToIndex(tuple(p))] for p in pts], dtype=float)

    lung_ref, hu_ref = sample(ref.lung), sample(ref.ct)
    for d, case in oriented_cases.items():
        assert np.allclose(case.true_com_lps, ref.true_com_lps)
        vol = arr(case.tumour).sum() * np.prod(case.tumour.GetSpacing())
        assert abs(vol - vol_ref) / vol_ref < 0.08, d
        if d != "identity":
            assert not np.allclose(case.ct.GetDirection(), ref.ct.GetDirection())
        assert (sample(case.lung) == lung_ref).mean() > 0.95, d
        assert np.corrcoef(sample(case.ct), hu_ref)[0, 1] > 0.9, d
    a_identity = mask_points(ref.tumour)
    a_flip = mask_points(oriented_cases["flip_xy"].tumour)
    assert np.allclose(np.sort(a_identity[:, 2]), np.sort(a_flip[:, 2]), atol=1e-3)  # same voxels, other order
    assert np.allclose(np.sort(a_identity[:, 0]), np.sort(a_flip[:, 0]), atol=1e-3)


@pytest.mark.parametrize("direction", ["identity", "flip_z", "oblique"])
def test_box_encloses_the_tumour_and_seed_is_near_the_centre(oriented_cases, direction):
    case = oriented_cases[direction]
    lo, hi = np.asarray(case.box_lps[0]), np.asarray(case.box_lps[1])
    pts = mask_points(case.tumour)
    assert np.all(pts >= lo) and np.all(pts <= hi)
    assert np.all(hi - lo < (pts.max(0) - pts.min(0)) + 2 * 3.0 + 2 * 4 * 0.05 * case.params["diameter_mm"] + 5)
    seed = np.asarray(case.seed_lps)
    d = np.linalg.norm(seed - np.asarray(case.true_com_lps))
    assert 0 < d < 5 * (1.0 + 0.03 * case.params["diameter_mm"])
    assert np.all(seed > lo) and np.all(seed < hi)


def test_tumour_lies_inside_a_lung_and_in_the_field_of_view():
    for s in range(6):
        case = ph.make_phantom(s, **FAST)
        t = arr(case.tumour).astype(bool)
        lung = arr(case.lung).astype(bool)
        assert t.any()
        assert not (t & ~lung).any(), f"seed {s}: tumour outside the lung"
        # not touching the border of the volume
        assert not (t[0].any() or t[-1].any() or t[:, 0].any() or t[:, -1].any() or t[:, :, 0].any() or t[:, :, -1].any())


def test_diameter_override_and_range():
    for d in (8.0, 60.0):
        case = ph.make_phantom(1, diameter_mm=d, spiculated=False, **FAST)
        eq = case.params["equivalent_diameter_mm"]
        assert 0.75 * d < eq < 1.25 * d
        vox = arr(case.tumour).sum() * np.prod(case.tumour.GetSpacing())
        assert abs(vox - case.params["volume_mm3"]) / case.params["volume_mm3"] < 0.25


# ---------------------------------------------------------------------------------------------- realism


def test_demo_case_looks_like_a_chest_ct(demo):
    ct = arr(demo.ct).astype(float)
    lung = arr(demo.lung).astype(bool) & ~arr(demo.tumour).astype(bool) & ~arr(demo.signal).astype(bool)
    assert demo.ct.GetSize()[0] >= 256 and all(0.6 <= s <= 1.0 for s in demo.ct.GetSpacing()[:2])
    assert ct[:, :4, :4].mean() < -950  # air outside the body
    lung_hu = ct[lung]
    assert -900 < np.median(lung_hu) < -800
    assert 0.15 < lung.mean() < 0.5
    body = ct > -500
    assert 0.2 < (body & ~lung).mean() < 0.7
    assert (ct > 300).sum() > 2000  # spine, ribs
    fat = (ct > -150) & (ct < -60)
    assert fat.sum() > 10000  # subcutaneous / mediastinal fat
    vessels = arr(demo.lung).astype(bool) & ~arr(demo.tumour).astype(bool) & (ct > -300)
    assert vessels.sum() > 2000  # vessels in the lungs
    assert 25 <= demo.params["equivalent_diameter_mm"] <= 35
    tum = ct[arr(demo.tumour).astype(bool)]
    assert -150 < np.median(tum) < 100
    q25, q75 = np.percentile(lung_hu, [25, 75])
    assert 5 < (q75 - q25) / 1.349 < 60  # noise and texture (robust sd), not a flat region


def test_part_solid_tumour_has_a_ground_glass_component():
    solid = ph.make_phantom(2, kind="solid", diameter_mm=30, spiculated=False, signal="none", **FAST)
    part = ph.make_phantom(2, kind="part-solid", diameter_mm=30, spiculated=False, signal="none", **FAST)
    fs = (arr(solid.ct)[arr(solid.tumour) > 0] < -300).mean()
    fp = (arr(part.ct)[arr(part.tumour) > 0] < -300).mean()
    assert fs < 0.15 and fp > 0.3


def test_random_spacing_and_directions_are_realistic():
    kinds = set()
    for s in range(60):
        p = ph.draw_case_params(s, direction="random")
        sx, sy, sz = p["spacing"]
        assert 0.6 <= sx <= 1.0 and sx == sy
        assert sz in (0.6, 1.0, 1.25, 2.0, 3.0, 5.0)
        d = np.asarray(p["direction"]).reshape(3, 3)
        assert np.allclose(d.T @ d, np.eye(3), atol=1e-9)
        kinds.add(p["direction_kind"])
        if p["direction_kind"] == "oblique":
            angle = np.degrees(np.arccos((np.trace(d) - 1) / 2))
            assert 10 <= angle <= 20
    assert kinds == {"identity", "flip_xy", "flip_z", "oblique"}


# ---------------------------------------------------------------------------------------------- TMB and signal


def test_tmb_distribution_matches_the_paper_cohort():
    t = ph.draw_tmb(np.random.default_rng(1), 20000)
    assert 5.5 < np.median(t) < 6.6
    assert 0.22 < (t >= 10).mean() < 0.30
    assert t.min() >= 0 and t.max() <= 42.151


def test_signal_none_nothing_correlates_with_tmb():
    ps = [ph.draw_case_params(s, signal="none") for s in range(200)]
    tmb = np.array([p["tmb"] for p in ps])
    features = {
        "diameter": [p["diameter_mm"] for p in ps],
        "x": [p["tumour_centre_lps"][0] for p in ps],
        "y": [p["tumour_centre_lps"][1] for p in ps],
        "z": [p["tumour_centre_lps"][2] for p in ps],
        "part_solid": [p["kind"] == "part-solid" for p in ps],
        "spiculated": [p["spiculated"] for p in ps],
        "solid_hu": [p["tumour"]["hu_solid"] for p in ps],
        "noise": [p["noise_hu"] for p in ps],
        "slice": [p["spacing"][2] for p in ps],
    }
    for name, f in features.items():
        rho = spearmanr(f, tmb)[0]
        assert abs(rho) < 0.25, f"{name} correlates with TMB (rho={rho:.2f})"
    assert all(p["signal_amplitude"] == 0.0 for p in ps)


def test_signal_none_image_does_not_depend_on_tmb():
    lo = ph.make_phantom(8, signal="none", tmb=1.0, **FAST)
    hi = ph.make_phantom(8, signal="none", tmb=40.0, **FAST)
    assert np.array_equal(arr(lo.ct), arr(hi.ct))
    assert arr(lo.signal).sum() == 0 and arr(hi.signal).sum() == 0
    assert lo.high_tmb is False and hi.high_tmb is True


def test_peritumoral_signal_is_a_shell_outside_the_tumour_and_grows_with_tmb():
    lo = ph.make_phantom(9, tmb=1.0, **FAST)
    hi = ph.make_phantom(9, tmb=40.0, **FAST)
    sig = arr(hi.signal).astype(bool)
    tum = arr(hi.tumour).astype(bool)
    assert sig.any() and np.array_equal(sig, arr(lo.signal).astype(bool))
    assert not (sig & tum).any()
    assert not (sig & ~arr(hi.lung).astype(bool)).any()
    sp = np.asarray(hi.ct.GetSpacing())[::-1]
    dist = ndimage.distance_transform_edt(~tum, sampling=sp)
    assert dist[sig].max() <= hi.params["shell_mm"] + 1e-6
    # the images differ only around the shell (PSF blur spreads it by a voxel or two)
    diff = arr(hi.ct) != arr(lo.ct)
    near = ndimage.binary_dilation(sig, iterations=3)
    assert diff.any() and not (diff & ~near).any()
    shift = arr(hi.ct)[sig].mean() - arr(lo.ct)[sig].mean()
    assert shift > 40
    assert hi.params["signal_amplitude"] > lo.params["signal_amplitude"]


def test_core_signal_lives_inside_the_tumour():
    lo = ph.make_phantom(9, signal="core", tmb=1.0, **FAST)
    hi = ph.make_phantom(9, signal="core", tmb=40.0, **FAST)
    assert np.array_equal(arr(hi.signal), arr(hi.tumour))
    diff = arr(hi.ct) != arr(lo.ct)
    near = ndimage.binary_dilation(arr(hi.tumour).astype(bool), iterations=3)
    assert diff.any() and not (diff & ~near).any()
    t = arr(hi.tumour).astype(bool)
    assert arr(hi.ct)[t].std() > arr(lo.ct)[t].std()


def test_strength_maps_to_a_moderate_achievable_auc():
    auc = ph.achievable_auc(ph.DEFAULT_STRENGTH)
    assert 0.85 <= auc <= 0.90
    assert abs(ph.achievable_auc(0.0) - 0.5) < 0.02
    assert ph.achievable_auc(0.5) < ph.achievable_auc(1.0) < ph.achievable_auc(2.0)
    s = ph.strength_for_auc(0.8, n=50_000)
    assert abs(ph.achievable_auc(s, n=50_000) - 0.8) < 0.01
    # the cases' own amplitudes reach about that AUC
    ps = [ph.draw_case_params(i) for i in range(300)]
    y = [p["high_tmb"] for p in ps]
    a = [p["signal_amplitude"] for p in ps]
    assert abs(roc_auc_score(y, a) - auc) < 0.08


def test_rendered_images_carry_the_amplitude():
    amps, shell_hu = [], []
    for s in range(10):
        case = ph.make_phantom(100 + s, strength=4.0, spacing=(1.0, 1.0, 2.5))
        ct = arr(case.ct).astype(float)
        sig = arr(case.signal).astype(bool)
        lung = arr(case.lung).astype(bool) & ~sig & ~arr(case.tumour).astype(bool)
        amps.append(case.params["signal_amplitude"])
        shell_hu.append(np.median(ct[sig]) - np.median(ct[lung]))
    assert spearmanr(amps, shell_hu)[0] > 0.8


def test_haze_sets_how_plainly_the_shell_carries_the_signal():
    def shell_minus_lung(haze):
        case = ph.make_phantom(105, strength=4.0, spacing=(1.0, 1.0, 2.5), haze_hu=haze)
        ct = arr(case.ct).astype(float)
        sig = arr(case.signal).astype(bool)
        lung = arr(case.lung).astype(bool) & ~sig & ~arr(case.tumour).astype(bool)
        return np.median(ct[sig]) - np.median(ct[lung]), case.params["signal_amplitude"]
    (weak, amp), (strong, amp2) = shell_minus_lung(0.0), shell_minus_lung(300.0)
    assert amp == amp2 > 0.2 and strong - weak > 0.5 * 300 * amp
    with pytest.raises(ValueError, match="haze_hu"):
        ph.make_phantom(1, haze_hu=-5)


def test_core_shift_sets_the_tumour_hu_change():
    def tumour_median(shift):
        case = ph.make_phantom(7, signal="core", strength=4.0, spacing=(1.0, 1.0, 2.5), core_shift_hu=shift,
                               kind="solid")
        return np.median(arr(case.ct)[arr(case.tumour) > 0]), case.params["signal_amplitude"]
    (a, amp), (b, _) = tumour_median(0.0), tumour_median(-300.0)
    assert amp > 0.1 and a - b > 0.5 * 300 * amp
    with pytest.raises(ValueError, match="core_shift_hu"):
        ph.make_phantom(1, core_shift_hu=1000)


# ---------------------------------------------------------------------------------------------- files


def test_write_case_round_trip(tmp_path):
    case = ph.make_phantom(11, direction="oblique", **FAST)
    row = ph.write_case(case, tmp_path / "c")
    for key in ("ct", "mask", "signal_mask"):
        img = sitk.ReadImage(row[key])
        ref = {"ct": case.ct, "mask": case.tumour, "signal_mask": case.signal}[key]
        assert np.array_equal(arr(img), arr(ref))
        assert np.allclose(img.GetDirection(), ref.GetDirection()) and np.allclose(img.GetOrigin(), ref.GetOrigin())
        with open(row[key], "rb") as f:
            assert b"encoding: gzip" in f.read(2000)
    meta = json.loads((tmp_path / "c" / "case.json").read_text())
    assert meta["seed_lps"] == list(case.seed_lps) and meta["tmb"] == case.tmb
    assert row["label"] == int(case.high_tmb)
    assert not list((tmp_path / "c").glob(".*partial*"))


def test_write_cohort_split_manifest_and_resume(tmp_path, monkeypatch):
    path = ph.write_cohort(tmp_path, scale=0.03, seed=2, progress=False, spacing=(1.0, 1.0, 2.5))
    df = ph.read_manifest(path)
    sizes = ph.split_sizes(scale=0.03)
    assert list(df.columns) == ph.MANIFEST_COLUMNS
    assert len(df) == sum(sizes.values()) and set(df.split) == set(sizes)
    counts = df.split.value_counts().to_dict()
    assert all(abs(counts[k] - sizes[k]) <= 2 for k in sizes), (counts, sizes)
    # case i has seed 100000 * cohort seed + i (no retry was needed here)
    assert df.case_seed.tolist() == [200000 + i for i in range(len(df))]
    assert df.case_id.is_unique
    assert ((df.tmb >= 10).astype(int) == df.label).all()
    for c in ("ct", "mask", "signal_mask", "meta"):
        assert all(os.path.isfile(p) for p in df[c])
    # resume: nothing is regenerated...
    first = path.read_text()

    def boom(*a, **k):
        raise AssertionError("regenerated a finished case")

    monkeypatch.setattr(phw, "make_phantom", boom)
    assert ph.write_cohort(tmp_path, scale=0.03, seed=2, progress=False, spacing=(1.0, 1.0, 2.5)).read_text() == first
    # ...except a case whose files are missing
    (tmp_path / "cases" / "case_0003" / "ct.nrrd").unlink()
    monkeypatch.undo()
    calls = []
    real = ph.make_phantom

    def counting(*a, **k):
        calls.append(k["case_id"])
        return real(*a, **k)

    monkeypatch.setattr(phw, "make_phantom", counting)
    assert ph.write_cohort(tmp_path, scale=0.03, seed=2, progress=False, spacing=(1.0, 1.0, 2.5)).read_text() == first
    assert calls == ["case_0003"]
    with pytest.raises(ValueError, match="other settings"):
        ph.write_cohort(tmp_path, scale=0.03, seed=3, progress=False, spacing=(1.0, 1.0, 2.5))


def test_full_paper_split_sizes():
    assert ph.split_sizes() == {"train": 236, "validation": 26, "test": 65}
    assert ph.split_sizes(scale=0.5) == {"train": 118, "validation": 13, "test": 32}
    labels = np.array([i % 4 == 0 for i in range(327)])
    split = phw.stratified_split(labels, (236, 26, 65), seed=0)
    for name, n in ph.split_sizes().items():
        sel = split == name
        assert abs(sel.sum() - n) <= 2 and abs(labels[sel].mean() - 0.25) < 0.06


def test_splits_are_stratified_and_seeded():
    labels = [0] * 70 + [1] * 30
    s = phw.stratified_split(labels, (0.7, 0.1, 0.2), seed=1)
    assert s.tolist() == phw.stratified_split(labels, (0.7, 0.1, 0.2), seed=1).tolist()
    assert s.tolist() != phw.stratified_split(labels, (0.7, 0.1, 0.2), seed=2).tolist()
    for split, n_high, n in (("train", 21, 70), ("validation", 3, 10), ("test", 6, 20)):
        assert sum(1 for x in s if x == split) == n
        assert sum(1 for x, y in zip(s, labels) if x == split and y == 1) == n_high


def test_cohort_in_two_processes_equals_one(tmp_path):
    one = ph.write_cohort(tmp_path / "one", n=6, fractions=(4, 1, 1), seed=5, progress=False, spacing=(1.0, 1.0, 2.5))
    two = ph.write_cohort(tmp_path / "two", n=6, fractions=(4, 1, 1), seed=5, workers=2, progress=False,
                          spacing=(1.0, 1.0, 2.5))
    assert one.read_text() == two.read_text()
    for i in (0, 5):
        a = sitk.ReadImage(str(tmp_path / "one" / "cases" / f"case_{i:04d}" / "ct.nrrd"))
        b = sitk.ReadImage(str(tmp_path / "two" / "cases" / f"case_{i:04d}" / "ct.nrrd"))
        assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(signal="halo"), "signal must be one of"),
        (dict(strength=-1), "strength"),
        (dict(strength="big"), "strength"),
        (dict(diameter_mm=100), "diameter_mm"),
        (dict(kind="cystic"), "kind"),
        (dict(tmb=-3), "tmb"),
        (dict(tmb=float("nan")), "tmb"),
        (dict(direction="sideways"), "direction"),
        (dict(direction=[[1, 0, 0], [0, 2, 0], [0, 0, 1]]), "orthonormal"),
        (dict(direction=[1, 2, 3]), "direction"),
        (dict(spacing=(0, 1, 1)), "spacing"),
        (dict(spacing=(1, 1)), "spacing"),
        (dict(shape_xyz=(10, 10, 10)), "shape_xyz"),
        (dict(shape_xyz=(64.5, 64, 64)), "whole numbers"),
        (dict(shape_xyz=(40, 40, 20), spacing=(0.6, 0.6, 0.6)), "field of view"),
        (dict(fov="lobe"), "fov"),
        (dict(side="middle"), "side"),
        (dict(shell_mm=0), "shell_mm"),
        (dict(noise_hu=-5), "noise_hu"),
    ],
)
def test_bad_phantom_arguments_are_rejected_clearly(kwargs, match):
    seed = kwargs.pop("seed", 0)
    with pytest.raises(ValueError, match=match):
        ph.make_phantom(seed, **kwargs)


def test_bad_writer_arguments_are_rejected_clearly(tmp_path):
    with pytest.raises(TypeError, match="PhantomCase"):
        ph.write_case("ct.nrrd", tmp_path)
    with pytest.raises(ValueError, match="tmb"):
        ph.write_cohort(tmp_path, scale=0.01, tmb=5.0, progress=False)
    with pytest.raises(ValueError, match="n >= 4"):
        ph.write_cohort(tmp_path, n=2, progress=False)
    with pytest.raises(ValueError, match="fractions"):
        ph.write_cohort(tmp_path, n=10, fractions=(0.7, -0.1, 0.4), progress=False)
    with pytest.raises(ValueError, match="workers"):
        ph.write_cohort(tmp_path, n=10, workers=0, progress=False)
    with pytest.raises(ValueError, match="n_train"):
        ph.split_sizes(n_train=0)
    with pytest.raises(ValueError, match="scale"):
        ph.split_sizes(scale=-1)
    with pytest.raises(FileNotFoundError, match="write_cohort"):
        ph.read_manifest(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        ph.read_manifest(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="target_auc"):
        ph.strength_for_auc(1.2)
