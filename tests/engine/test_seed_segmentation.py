"""Seed -> tumour mask and proposed box (TMBRBLib.proposal.segment_from_seed): real CTs, phantoms, bad seeds.

The floors on the real CTs sit just under what the segmentation reaches (benchmarks/bench_seed_segmentation.py prints
the same table with the time); before issue 13 lung2 reached Dice 0.22 (the mask ran into the chest wall and the
heart) and LIDC-0874 0.66 with 94 % of its label inside the proposed box.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from TMBRBLib.geometry import index_to_physical_matrix
from TMBRBLib.io import paste_region, read_ct, read_mask
from TMBRBLib.geometry import Box
from TMBRBLib.phantom import make_demo_case, make_phantom
from TMBRBLib.pipeline import score_case
from TMBRBLib.present import by_key, result_lines
from TMBRBLib.proposal import UNCERTAIN, segment_from_seed

from .seed_cases import NEW_SET, OLD_CHEST, OLD_PHANTOMS, Painted, anchor, build, chest_case, lung_and_vessels

# case: (Dice floor, label-inside-box floor); reached: 0.801, 0.811, 0.813, 0.818 and 100, 100, 99.7, 99.9 %
FLOORS = {"pyradiomics/lung1_image.nrrd": (0.79, 0.99), "pyradiomics/lung2_image.nrrd": (0.80, 0.99),
          "lidc_voi/LIDC-IDRI-0072_R_1_image.nii.gz": (0.80, 0.99),
          "lidc_voi/LIDC-IDRI-0874_R_1_image.nii.gz": (0.80, 0.99)}


def full_mask(seg, shape) -> np.ndarray:
    full = np.zeros(shape, np.uint8)
    paste_region(full, sitk.GetArrayViewFromImage(seg.mask), seg.lo)
    return full > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def points_of(mask: np.ndarray, img: sitk.Image) -> np.ndarray:
    zz, yy, xx = np.nonzero(mask)
    m, o = index_to_physical_matrix(img)
    return np.stack([xx, yy, zz], 1) @ m.T + o


def inside_box(pts: np.ndarray, box) -> float:
    return float(np.mean(np.all((pts >= np.asarray(box.min)) & (pts <= np.asarray(box.max)), axis=1)))


@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(FLOORS))
def test_real_ct_seed_alone_gives_the_tumour_and_a_box_around_it(name, real_ct_data):
    meta = json.loads((real_ct_data / "cases.json").read_text())[name]
    ct, _ = read_ct(real_ct_data / name)
    label = sitk.GetArrayFromImage(read_mask(real_ct_data / meta["label"], ct)) > 0
    seg = segment_from_seed(ct, meta["seed_com_lps_mm"])
    dice_floor, box_floor = FLOORS[name]
    assert dice(full_mask(seg, label.shape), label) >= dice_floor
    assert inside_box(points_of(label, ct), seg.box) >= box_floor
    assert seg.found and not seg.uncertain, seg.uncertain  # these are lung lesions: nothing to flag


# ------------------------------------------------------------------------------------------------ phantoms

PHANTOMS = [(1, {}), (2, {}), (5, {"diameter_mm": 60}), (6, {"spiculated": True}), (7, {"diameter_mm": 10}),
            (8, {"kind": "solid", "diameter_mm": 40})]


@pytest.mark.parametrize("seed, kw", PHANTOMS)
def test_phantom_tumours_solid_part_solid_spiculated_small_and_large(seed, kw):
    case = make_phantom(seed, signal="none", **kw)
    truth = sitk.GetArrayFromImage(case.tumour) > 0
    seg = segment_from_seed(case.ct, case.seed_lps)
    d = dice(full_mask(seg, truth.shape), truth)
    # measured 0.84-0.99 (mean 0.92); the 10 mm nodule on 3 mm slices is the lowest
    assert d >= (0.82 if seed == 7 else 0.85), (seed, kw, d)
    assert inside_box(points_of(truth, case.ct), seg.box) >= 0.99


def test_the_demo_case_with_its_box_is_not_flagged_and_its_haze_is_left_out():
    # the CLI's demo: the annotator's box around a 30 mm spiculated solid tumour in an 8 mm shell of peritumoral haze
    # (ground-glass HU). The box delimits the tumour, so the haze that runs past it is not the tumour's ground glass;
    # before, the mask was flagged ("ground glass ... could not be delimited") and the rim took the haze (Dice 0.78)
    case = make_demo_case()
    truth = sitk.GetArrayFromImage(case.tumour) > 0
    seg = segment_from_seed(case.ct, case.seed_lps, Box.from_corners(*case.box_lps))
    assert seg.found and not seg.uncertain, seg.uncertain
    assert not any(w.startswith(UNCERTAIN) for w in seg.warnings)
    assert seg.info["ground_glass_outside_box"] is True and seg.info["part_solid"] is False
    assert dice(full_mask(seg, truth.shape), truth) >= 0.84  # measured 0.851


def test_the_demo_case_with_the_seed_alone_is_flagged_when_its_haze_is_taken_as_ground_glass():
    # without the box the 8 mm haze shell around the 30 mm solid tumour reads as a part-solid lesion's ground glass
    # (Dice 0.37); nothing in the image tells the two apart, so the result must say so (it was unflagged before)
    case = make_demo_case()
    seg = segment_from_seed(case.ct, case.seed_lps)
    assert seg.info["part_solid"] is True and seg.info["solid_ratio"] >= 0.6  # measured 0.67
    assert any("haze around a solid tumour" in r for r in seg.uncertain), seg.uncertain
    assert any(w.startswith(UNCERTAIN) for w in seg.warnings)


def test_a_part_solid_lesion_with_a_small_solid_part_is_not_taken_for_haze():
    case = make_phantom(302, signal="none", kind="part-solid")  # solid part a third of the diameter
    seg = segment_from_seed(case.ct, case.seed_lps)
    assert seg.info["part_solid"] is True and seg.info["solid_ratio"] < 0.6  # measured 0.40
    assert not seg.uncertain, seg.uncertain


def test_ground_glass_that_fits_in_the_given_box_is_the_lesions_own():
    # a part-solid lesion boxed with its ground glass: the box does not cut the ground glass away
    case = make_phantom(302, signal="none", kind="part-solid")  # 24 mm, solid part a third of it
    truth = sitk.GetArrayFromImage(case.tumour) > 0
    seg = segment_from_seed(case.ct, case.seed_lps, Box.from_corners(*case.box_lps))
    assert seg.info["part_solid"] is True and seg.info["ground_glass_outside_box"] is False
    assert dice(full_mask(seg, truth.shape), truth) >= 0.95  # measured 0.972; the solid part alone is far below


def test_a_small_part_solid_lesion_on_thick_slices_is_flagged_and_keeps_its_ground_glass():
    case = make_phantom(4, signal="none", kind="part-solid")  # 16 mm, 5 mm slices: ground glass blurs into lung
    truth = sitk.GetArrayFromImage(case.tumour) > 0
    seg = segment_from_seed(case.ct, case.seed_lps)
    assert seg.uncertain and any(w.startswith(UNCERTAIN) for w in seg.warnings)
    # before, its ground glass ran on along the vessels' blur and was left out (Dice 0.20, the solid part alone);
    # without that blur it is the lesion's own (measured 0.74, flagged: a thick attachment was cut)
    assert seg.info["part_solid"] is True
    assert dice(full_mask(seg, truth.shape), truth) >= 0.7


def test_the_blur_of_vessels_touching_a_part_solid_lesion_is_not_its_ground_glass():
    # a 24 mm ground-glass ball with a 10 mm solid core; a 4 mm vessel runs past it touching its ground glass and a
    # 3 mm vessel crosses its ground glass. Before, the ground glass (from -700 HU) ran on along the first vessel's
    # blur and was left out (Dice 0.17, the solid core alone)
    n = 96
    zz, yy, xx = np.indices((n, n, n)).astype(float)
    r = np.sqrt((xx - 48) ** 2 + (yy - 48) ** 2 + (zz - 48) ** 2)
    arr = np.full((n, n, n), -870.0)
    lesion = r <= 12.0
    arr[lesion] = -550.0
    arr[r <= 5.0] = 30.0
    past = np.sqrt((yy - 61.5) ** 2 + (zz - 48) ** 2) <= 2.0
    across = np.sqrt((xx - 56.5) ** 2 + (zz - 48) ** 2) <= 1.5
    arr[past | across] = 40.0
    img = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(arr.astype(np.float32)), 0.7)
    noise = sitk.GetImageFromArray(np.random.default_rng(1).normal(0.0, 10.0, arr.shape).astype(np.float32))
    seg = segment_from_seed(sitk.Cast(img + noise, sitk.sitkInt16), (48.0, 48.0, 48.0))
    mask = full_mask(seg, arr.shape)
    assert seg.info["part_solid"] is True and not seg.uncertain, seg.uncertain
    assert dice(mask, lesion) >= 0.93  # measured 0.969
    assert (mask & past & (r > 13.5)).sum() < 0.05 * past.sum()  # the vessel running past stays out (24 voxels)
    assert (mask & across & (r < 11.0)).sum() == (across & (r < 11.0)).sum()  # the crossing one is not hollowed out


@pytest.fixture(scope="module")
def chest():
    """A chest phantom (whole field of view) and handles on its anatomy (LPS mm)."""
    case = make_phantom(11, fov="chest", shape_xyz=(224, 224, 64), spacing=(1.5, 1.5, 3.0), signal="none")
    a = case.params["anatomy"]
    c = np.asarray(a["centre_lps"])
    lung = sitk.GetArrayFromImage(case.lung) > 0
    pts = points_of(lung, case.ct)
    right = pts[pts[:, 0] < c[0]]
    zc, yc = np.median(right[:, 2]), np.median(right[:, 1])
    row = right[(np.abs(right[:, 2] - zc) < 2) & (np.abs(right[:, 1] - yc) < 1)]
    return {"case": case, "lung": lung, "lateral": row[np.argmin(row[:, 0])], "right_centre": (right[:, 0].mean(),
            yc, zc), "heart": c + [0.2 * a["a_in"], -0.4 * a["b_in"], a["w_heart"]],
            "spine": c + [0.0, a["b_in"] - 12.0, zc - c[2]]}


def with_tumour(chest, centre, radius_mm):
    """The chest CT with a soft-tissue ball painted where it overlaps the lung; (CT, true mask, its centre)."""
    ct = chest["case"].ct
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    zz, yy, xx = np.indices(arr.shape)
    m, o = index_to_physical_matrix(ct)
    pts = np.stack([xx, yy, zz], -1) @ m.T + o
    truth = (np.linalg.norm(pts - np.asarray(centre), axis=-1) <= radius_mm) & chest["lung"]
    arr[truth] = 35.0 + np.random.default_rng(0).normal(0.0, 12.0, int(truth.sum()))
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.CopyInformation(ct)
    return img, truth, points_of(truth, ct).mean(0)


def test_a_tumour_against_the_chest_wall_is_cut_from_it(chest):
    # a ball centred 7.5 mm inside the lung from the lateral chest wall: broad contact (26 mm chord)
    ct, truth, seed = with_tumour(chest, chest["lateral"] + [7.5, 0.0, 0.0], 15.0)
    seg = segment_from_seed(ct, seed)
    assert dice(full_mask(seg, truth.shape), truth) >= 0.85  # measured 0.92; the whole chest wall is 10x larger
    assert not seg.uncertain


def test_a_mass_larger_than_80_mm_is_not_cut_flat_by_the_search_limit(chest):
    ct, truth, seed = with_tumour(chest, chest["right_centre"], 46.0)
    extent = np.ptp(points_of(truth, ct), axis=0)
    assert extent.max() > 80.0
    seg = segment_from_seed(ct, seed)
    assert dice(full_mask(seg, truth.shape), truth) >= 0.9  # measured 0.99
    assert np.all(np.asarray(seg.box.size) >= extent)
    assert max(seg.info["search_box_mm"]) > 80.0


def test_a_tumour_that_is_a_bump_on_the_heart_is_not_separated_but_flagged(chest):
    # no neck between the two blobs: the shape cannot tell them apart (a known limit); the result must say so
    case = chest["case"]
    pts = points_of(chest["lung"], case.ct)
    border = pts[np.argmin(np.linalg.norm(pts - chest["heart"], axis=1))]
    u = (border - chest["heart"]) / np.linalg.norm(border - chest["heart"])
    ct, truth, seed = with_tumour(chest, border + 7.5 * u, 15.0)
    seg = segment_from_seed(ct, seed)
    assert seg.uncertain and any(w.startswith(UNCERTAIN) for w in seg.warnings)


# ------------------------------------------------------------------------------------------------ a fresh set
# Phantoms and positions not used to set the thresholds: Dice >= 0.85 is the goal. The kinds that miss it are
# marked xfail (strict: a fix makes them pass and fail the run until the mark is removed), with the reason measured.

MISS_VESSEL = ("a thick vessel it touches or that runs through it: the runaway cut takes the vessel's far length off "
               "(Dice 0.42 -> 0.66 alongside, 0.65 -> 0.69 through) and flags the mask; the mask is then opened with "
               "the thick-strand ball (0.66 -> 0.74, 0.72 -> 0.83), but the vessel's part as thick as that ball stays")
MISS_THICK = ("part-solid on 5 mm slices: its ground glass blurs into the lung and along vessels (0.50, flagged: the "
              "lesion is thinner than a slice)")
MISS_SPICULES = ("spiculated: the spicules and the lung between them are not delimited; the mask is up to 1.5x the "
                 "true tumour (Dice 0.74-0.82, flagged: a runaway strand was cut)")

FRESH_CHEST = [("chest wall lateral", "lateral", (8.0, 0.0, 0.0), 15.0), ("chest wall posterior", "posterior",
               (0.0, -7.0, 0.0), 12.0), ("mass 92 mm", "centre", (0.0, 0.0, 0.0), 46.0), ("mass 86 mm", "centre", (0.0, 5.0, 0.0), 43.0),
               ("chest wall anterior", "anterior", (0.0, 6.0, 0.0), 10.0),
               ("mediastinum", "medial", (-8.0, 0.0, 0.0), 15.0),  # 0.77 before the thick strand along it was cut
               pytest.param("vessel through it", "vessel", (4.0, 0.0, 0.0), 12.0,
                            marks=pytest.mark.xfail(strict=True, reason=MISS_VESSEL)),
               pytest.param("vessel alongside", "vessel", (0.0, 0.0, 11.0), 10.0,
                            marks=pytest.mark.xfail(strict=True, reason=MISS_VESSEL))]
# floors just under what a case reaches, where that is well above the goal: the anterior wall reached 0.11 before the
# lung's envelope cut the chest wall the watershed could not (no neck), 0.949 with it
FRESH_FLOORS = {"chest wall anterior": 0.93}


@pytest.fixture(scope="module")
def fresh_chest():
    """The old set's chest phantom (seed 23, tests/engine/seed_cases.py) and points on it (LPS mm): the right lung's
    lateral, posterior, anterior and medial borders at mid-height, its centre, and a vessel (>= 1.5 mm radius) at least
    18 mm inside the lung."""
    points = {w: anchor(Painted(w, OLD_CHEST, "right", w, (0.0, 0.0, 0.0), 1.0))
              for w in ("lateral", "medial", "posterior", "anterior", "centre", "vessel")}
    return {"case": chest_case(OLD_CHEST), "lung": lung_and_vessels(OLD_CHEST)[0], **points}


@pytest.mark.parametrize("name, where, shift, radius", FRESH_CHEST)
def test_fresh_tumours_against_the_chest_wall_mediastinum_and_vessels_and_masses_over_80_mm(fresh_chest, name, where,
                                                                                            shift, radius):
    ct, truth, seed = with_tumour(fresh_chest, fresh_chest[where] + np.asarray(shift), radius)
    seg = segment_from_seed(ct, seed)
    assert dice(full_mask(seg, truth.shape), truth) >= FRESH_FLOORS.get(name, 0.85), name
    assert inside_box(points_of(truth, ct), seg.box) >= 0.99
    if name.startswith("chest wall"):
        assert not seg.uncertain, seg.uncertain


@pytest.mark.parametrize("name", ["vessel through it", "vessel alongside"])
def test_a_tumour_on_a_thick_vessel_has_the_vessels_run_cut_off_and_is_flagged(fresh_chest, name):
    _, where, shift, radius = next(p.values for p in FRESH_CHEST if getattr(p, "values", [None])[0] == name)
    ct, truth, seed = with_tumour(fresh_chest, fresh_chest[where] + np.asarray(shift), radius)
    seg = segment_from_seed(ct, seed)
    # before, the vessel's length stayed in the mask (Dice 0.65 / 0.42) and nothing said so; after the runaway cut its
    # base along the tumour stayed (0.72 / 0.66) until the mask that had a vessel cut was opened with the thick-strand
    # ball (measured 0.830 / 0.736)
    assert dice(full_mask(seg, truth.shape), truth) >= {"vessel through it": 0.81, "vessel alongside": 0.72}[name]
    assert any("running away from the lesion was cut off" in r for r in seg.uncertain), seg.uncertain


@pytest.mark.parametrize("name, floor", [("mediastinum", 0.87), ("vessel through it", 0.70)])
def test_a_thick_vessel_lying_along_the_tumour_is_cut_off_and_flagged(fresh_chest, name, floor):
    # the mask took a hilar vessel along a tumour against the mediastinum (Dice 0.77) and nothing said so. The vessel
    # is a piece that an opening by half the inscribed radius removes, reaching 2.3x that radius from the rest (a lobe
    # of a right mask: up to 1.6x): it is cut (measured 0.893; the vessel through the other tumour 0.69 -> 0.72)
    _, where, shift, radius = next(p.values if hasattr(p, "values") else p for p in FRESH_CHEST
                                   if (p.values if hasattr(p, "values") else p)[0] == name)
    ct, truth, seed = with_tumour(fresh_chest, fresh_chest[where] + np.asarray(shift), radius)
    seg = segment_from_seed(ct, seed)
    assert dice(full_mask(seg, truth.shape), truth) >= floor
    assert any("of a thick strand lying along the lesion" in r for r in seg.uncertain), seg.uncertain
    assert any(w.startswith(UNCERTAIN) and "lying along the lesion" in w for w in seg.warnings)


# the old set's tumour-field phantoms (tests/engine/seed_cases.py, OLD_PHANTOMS, with what each reached before)
FRESH_MISSES = {(104, "part-solid"): MISS_THICK, (104, "solid"): MISS_SPICULES, (314, "solid"): MISS_SPICULES}
FRESH_PHANTOMS = [pytest.param(seed, kw, marks=pytest.mark.xfail(strict=True, reason=FRESH_MISSES[seed, kw["kind"]]))
                  if (seed, kw["kind"]) in FRESH_MISSES else (seed, kw) for seed, kw in OLD_PHANTOMS]


@pytest.mark.parametrize("seed, kw", FRESH_PHANTOMS)
def test_fresh_phantom_tumours_solid_and_part_solid(seed, kw):
    case = make_phantom(seed, signal="none", **kw)
    truth = sitk.GetArrayFromImage(case.tumour) > 0
    seg = segment_from_seed(case.ct, case.seed_lps)
    assert dice(full_mask(seg, truth.shape), truth) >= 0.85, (seed, kw)
    assert inside_box(points_of(truth, case.ct), seg.box) >= 0.99


@pytest.mark.parametrize("seed, kw", [(104, {"kind": "solid"}), (314, {"kind": "solid", "diameter_mm": 12}),
                                      (104, {"kind": "part-solid"})])
def test_fresh_phantom_misses_are_flagged(seed, kw):
    # the misses above that the result flags (before, none of 102 / 104 / 314 was): a reader is told to review them
    case = make_phantom(seed, signal="none", **kw)
    seg = segment_from_seed(case.ct, case.seed_lps)
    assert seg.uncertain and any(w.startswith(UNCERTAIN) for w in seg.warnings)


@pytest.mark.shared_data
def test_a_lesion_thinner_than_a_slice_is_flagged_and_the_real_ct_on_5_mm_slices_is_not(real_ct_data):
    # part-solid phantom 104 on 5 mm slices: the largest ball inside the mask is 4.3 mm across, and the mask takes a
    # vessel along it (Dice 0.50); before, nothing said so. lung1 (5 mm slices, 5.7 mm across) is segmented right
    case = make_phantom(104, signal="none", kind="part-solid")
    seg = segment_from_seed(case.ct, case.seed_lps)
    assert 2 * seg.info["inscribed_radius_mm"] < max(case.ct.GetSpacing())
    assert any("thinner than a slice" in r and "5.0 mm apart" in r for r in seg.uncertain), seg.uncertain
    meta = json.loads((real_ct_data / "cases.json").read_text())["pyradiomics/lung1_image.nrrd"]
    ct, _ = read_ct(real_ct_data / "pyradiomics/lung1_image.nrrd")
    lung1 = segment_from_seed(ct, meta["seed_com_lps_mm"])
    assert not lung1.uncertain and 2 * lung1.info["inscribed_radius_mm"] > max(ct.GetSpacing())


# ------------------------------------------------------------------------------------------------ bad seeds

@pytest.mark.parametrize("where, reason", [("heart", "search limit"), ("spine", "bone"),
                                           ("chest wall", "surroundings is lung")])
def test_a_seed_off_the_lung_tumour_gives_a_flagged_mask_not_a_silent_leak(chest, where, reason):
    point = {"heart": chest["heart"], "spine": chest["spine"], "chest wall": chest["lateral"] - [6.0, 0.0, 0.0]}
    seg = segment_from_seed(chest["case"].ct, point[where])
    assert seg.found and any(reason in r for r in seg.uncertain), seg.uncertain
    assert seg.info["uncertain"] is True
    assert any(w.startswith(UNCERTAIN) and reason in w for w in seg.warnings)


def test_a_seed_in_air_finds_no_lesion_and_says_so(chest):
    ct = chest["case"].ct
    seg = segment_from_seed(ct, np.asarray(ct.GetOrigin()) + [5.0, 5.0, 30.0])
    assert not seg.found and seg.uncertain == ["no lesion was found at the seed"]
    assert any("No soft-tissue lesion was found at the seed" in w for w in seg.warnings)
    # the stand-in is a 5 mm sphere (0.52 mL), not a leak
    assert seg.info["volume_ml"] < 0.6 and np.all(np.asarray(seg.box.size) <= 30.0 + 1e-6)


def test_the_result_records_the_mask_source_and_its_doubt(chest, scorer):
    r = score_case(chest["case"].ct, chest["heart"], None, scorer=scorer, n_shifts=0)
    d = r.to_dict()
    assert d["tumour_mask"]["source"] == "proposed" and d["tumour_mask"]["uncertain"] is True
    assert by_key(result_lines(d))["mask"].value == "tumour mask uncertain: review it"
    given = score_case(chest["case"].ct, chest["heart"], None, tumour_mask=r.tumour_mask, scorer=scorer,
                       n_shifts=0, mask_source="proposed_edited")
    assert given.to_dict()["tumour_mask"] == {"source": "proposed_edited", "uncertain": False, "reasons": []}
    assert by_key(result_lines(given.to_dict()))["mask"].value == "proposed from the seed, then edited"


def test_a_given_box_bounds_the_segmentation(chest):
    ct, truth, seed = with_tumour(chest, chest["lateral"] + [7.5, 0.0, 0.0], 15.0)
    box = Box.from_center_size(seed, (12.0, 12.0, 12.0))  # smaller than the tumour
    seg = segment_from_seed(ct, seed, box)
    assert seg.box == box
    voxel = np.asarray(ct.GetSpacing())  # the region is whole voxels, at least 5 a side
    assert inside_box(points_of(full_mask(seg, truth.shape), ct), Box(tuple(np.asarray(box.min) - voxel),
                                                                      tuple(np.asarray(box.max) + voxel))) == 1.0
    assert np.isfinite(seg.info["inscribed_radius_mm"]) and seg.info["inscribed_radius_mm"] < 12.0
    assert any("edge of the given box" in r for r in seg.uncertain)


@pytest.mark.parametrize("radius", [[1, 1, 0], [3, 3, 1], [5, 5, 1], [13, 13, 2], [3, 3, 4]])
def test_the_ball_morphology_by_distance_maps_is_simpleitks_voxel_for_voxel(radius):
    # the runaway and attachment cuts open the lesion with distance maps instead of SimpleITK's ball filters (8x less
    # time for lung2's 13 x 13 x 2 ball); the masks must not change: blobs touching the border, thick-slice spacing
    from TMBRBLib.proposal import _ball_dilation, _ball_opening
    noise = np.random.default_rng(sum(radius)).normal(size=(22, 100, 100)).astype(np.float32)
    blobs = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 4.0)
    mask = sitk.Cast(blobs > 0.0, sitk.sitkUInt8)
    mask.SetSpacing((0.627, 0.627, 5.0))
    for ours, theirs in [(_ball_dilation, sitk.BinaryDilate), (_ball_opening, sitk.BinaryMorphologicalOpening)]:
        a = sitk.GetArrayFromImage(ours(mask, radius))
        b = sitk.GetArrayFromImage(theirs(mask, radius, sitk.sitkBall))
        assert b.any() and np.array_equal(a > 0, b > 0), (ours.__name__, int((a != b).sum()))


@pytest.mark.parametrize("radius", [[1, 1, 0], [1, 1, 1], [3, 3, 1], [2, 1, 3]])
def test_the_airway_lumens_dilation_by_shifted_arrays_is_simpleitks_voxel_for_voxel(radius):
    # the lung's envelope dilates the airway lumen (a few scattered voxels or a trachea) by shifted ORs of the array
    # instead of sitk.BinaryDilate; set voxels on the array's corners and faces, and clusters
    from TMBRBLib.proposal import _dilate_array
    arr = np.random.default_rng(sum(radius)).random((15, 30, 40)) > 0.99
    arr[0, 0, 0] = arr[-1, -1, -1] = arr[7, 0, 20] = True
    arr[5:8, 10:14, 20:25] = True
    theirs = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(arr.astype(np.uint8)), radius,
                                                      sitk.sitkBall)) > 0
    ours = _dilate_array(arr, radius)
    assert theirs.sum() > arr.sum() and np.array_equal(ours, theirs), int((ours != theirs).sum())


# ------------------------------------------------------------------------------------------------ the new set
# Drawn once (tests/engine/seed_cases.py, NEW_SET: two chest phantoms on 5 mm and 1.25 mm slices with tumours against
# the chest wall, the mediastinum and thick vessels and masses over 80 mm; 28 tumour-field phantoms) and measured before
# any change to the code (benchmarks/bench_seed_phantoms.py): mean Dice 0.788, 31 of 46 reach 0.85, 15 misses, 14
# flagged. Since: the unflagged one (6559, a small solid part in its ground glass) is flagged, and two part-solid
# misses are right (83520: its ground glass widens the search; 51858: up to 40x the solid part's volume): mean 0.818,
# 33 reach 0.85, the 13 misses all flagged. Stop 16: the lung's envelope finds the lung air within its own ball and
# leaves airways' lumen out (three tumours against the mediastinum right), and a mask that had a thick vessel cut is
# opened with the thick-strand ball (the vessel's base goes): mean 0.868, 38 reach 0.85, the 8 misses all flagged; the
# real CTs' masks are the same voxel for voxel. Each case keeps a floor just under what it reaches (none under 0.75: a miss
# below that is only asserted flagged); every miss (below 0.85) must be flagged.
NEW_REACHED = {  # Dice and % of the true mask inside the box now (before any change, where it differed)
    "5 mm chest lateral left 1": (0.960, 100.0),
    "5 mm chest anterior left 2": (0.087, 97.9),  # before: 0.119, 100 % (flagged either way)
    "5 mm chest posterior right 3": (0.951, 100.0),
    "5 mm chest lateral left 4": (0.943, 100.0),
    "5 mm chest medial right 5": (0.948, 100.0),  # before: 0.007 (the envelope found no lung air)
    "5 mm chest medial left 6": (0.971, 100.0),
    "5 mm chest vessel through it": (0.652, 100.0),  # before: 0.557
    "5 mm chest vessel alongside": (0.616, 100.0),  # before: 0.571
    "5 mm chest mass": (0.994, 100.0),
    "1.25 mm chest lateral left 1": (0.907, 100.0),
    "1.25 mm chest anterior left 2": (0.906, 100.0),
    "1.25 mm chest posterior right 3": (0.961, 100.0),
    "1.25 mm chest lateral left 4": (0.938, 100.0),
    "1.25 mm chest medial right 5": (0.920, 100.0),  # before: 0.584, then 0.604 (the airway in the envelope)
    "1.25 mm chest medial left 6": (0.966, 100.0),  # before: 0.431, then 0.418 (the airway in the envelope)
    "1.25 mm chest vessel through it": (0.924, 100.0),  # before: 0.806 (the vessel's base stayed)
    "1.25 mm chest vessel alongside": (0.928, 100.0),  # before: 0.824 (the vessel's base stayed)
    "1.25 mm chest mass": (0.975, 100.0),
    "6559 part-solid": (0.441, 97.5),
    "54293 part-solid": (0.973, 100.0),
    "83520 part-solid": (0.968, 100.0),  # before: 0.483, 90.4 %
    "88168 part-solid": (0.974, 100.0),
    "66972 part-solid": (0.964, 100.0),
    "38347 part-solid": (0.954, 100.0),
    "31926 solid": (0.922, 100.0),
    "23832 solid": (0.892, 100.0),
    "43284 solid": (0.964, 100.0),
    "62666 solid": (0.948, 100.0),
    "52430 solid": (0.880, 100.0),
    "10345 solid spiculated": (0.612, 100.0),  # before: 0.527
    "88794 solid spiculated": (0.934, 100.0),
    "9040 solid spiculated": (0.877, 99.9),
    "66922 solid spiculated": (0.896, 100.0),
    "34016 solid 5.0 mm slices": (0.937, 100.0),  # before: 0.890
    "76134 part-solid 5.0 mm slices": (0.377, 100.0),
    "50080 solid 5.0 mm slices": (0.921, 100.0),  # before: 0.883
    "39453 part-solid 5.0 mm slices": (0.950, 100.0),
    "83885 solid 0.625 mm slices": (0.941, 100.0),
    "68089 part-solid 0.625 mm slices": (0.590, 99.9),
    "43402 solid 0.625 mm slices": (0.916, 100.0),
    "7333 part-solid 0.625 mm slices": (0.976, 100.0),
    "19603 solid 51.9 mm": (0.950, 100.0),
    "51858 part-solid 57.2 mm": (0.980, 100.0),  # before: 0.081, 28.4 %
    "54503 solid 59.0 mm": (0.951, 100.0),
    "25012 solid 9.2 mm": (0.894, 100.0),
    "62347 solid 10.5 mm": (0.803, 100.0),
}
SLOW_NEW = {"1.25 mm chest anterior left 2", "1.25 mm chest medial right 5", "1.25 mm chest medial left 6"}  # 6-9 s


def new_floor(name: str):
    """(Dice floor or None, whether the box must hold >= 99 % of the true mask) for a case of the new set."""
    reached, in_box = NEW_REACHED[name]
    floor = np.floor(100 * reached - 1) / 100
    return (floor if floor >= 0.75 else None), in_box >= 99.0


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name, marks=[pytest.mark.slow] if s.name in SLOW_NEW else [])
                                  for s in NEW_SET])
def test_new_set_keeps_its_floors_and_every_miss_is_flagged(spec):
    case = build(spec)
    seg = segment_from_seed(case.ct, case.seed_lps)
    d = dice(full_mask(seg, case.truth.shape), case.truth)
    floor, box_holds = new_floor(spec.name)
    if floor is not None:
        assert d >= floor, (spec.name, d)
    if box_holds:
        assert inside_box(points_of(case.truth, case.ct), seg.box) >= 0.99
    if d < 0.85:  # a wrong mask must say so
        assert seg.uncertain and any(w.startswith(UNCERTAIN) for w in seg.warnings), (spec.name, d)


def test_the_new_sets_misses_and_floors_are_what_was_measured():
    # the set and its table go together: every case has its measured figures, and 8 of the 46 miss 0.85 (13 before
    # stop 16's envelope and vessel-base changes)
    assert [s.name for s in NEW_SET] == list(NEW_REACHED)
    assert sum(d < 0.85 for d, _ in NEW_REACHED.values()) == 8
    assert len({s.name for s in NEW_SET}) == len(NEW_SET)


def test_a_small_solid_part_in_ground_glass_is_flagged():
    # new-set phantom 6559: a 10.6 mm part-solid spiculated lesion whose solid part is 2.2 mm across (its largest inner
    # ball); only 17 % of the lung 1.5-4 mm around it is ground glass (under the 35 % that segments it as part-solid),
    # so the mask is the solid part alone (Dice 0.44, 97.5 % of it in the box) and nothing said so before
    case = build(next(s for s in NEW_SET if s.name == "6559 part-solid"))
    seg = segment_from_seed(case.ct, case.seed_lps)
    assert seg.info["part_solid"] is False and 2 * seg.info["inscribed_radius_mm"] < 4.0
    assert any(r.startswith("the lesion at the seed is small") and "ground glass" in r for r in seg.uncertain), \
        seg.uncertain
    assert any(w.startswith(UNCERTAIN) and "solid part of a part-solid lesion" in w for w in seg.warnings)


@pytest.mark.parametrize("name, floor", [("83520 part-solid", 0.95), ("51858 part-solid 57.2 mm", 0.97)])
def test_a_part_solid_lesions_ground_glass_is_kept_past_the_first_cube_and_at_37x_its_solid_part(name, floor):
    # 83520 (43 mm): its ground glass reached the first 80 mm search cube's face, which the solid part did not, and was
    # left out (Dice 0.48); now the search widens for it as for a solid lesion. 51858 (57 mm, a solid part of about a
    # third of the diameter): its ground glass is 24x the solid part's volume, over the old limit of 20x (Dice 0.08)
    case = build(next(s for s in NEW_SET if s.name == name))
    seg = segment_from_seed(case.ct, case.seed_lps)
    assert seg.info["part_solid"] is True, seg.uncertain
    assert not any("could not be delimited" in r for r in seg.uncertain)
    assert dice(full_mask(seg, case.truth.shape), case.truth) >= floor
    assert inside_box(points_of(case.truth, case.ct), seg.box) >= 0.99
