"""Values computed by hand, where other tests check only shapes, sums or "non-empty" (issue 16).

Each test names the plausible bug it catches; each was checked by putting that bug into the code by hand and
seeing the test fail (docs/testing.md lists them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from TMBRBLib.cam import ScoringGradCAM, make_cam
from TMBRBLib.regions import attention_shares, ring_and_shares, ring_from_tumour

from .synthetic import DIRECTIONS, make_ct


# ------------------------------------------------------------------------------------------------ attention shares
def test_attention_shares_on_a_toy_cam_computed_by_hand():
    """Tumour 3, ring 2, elsewhere 5 of a mass of 10. Catches tumour and ring swapped, a ring voxel inside the
    tumour counted twice, or the shares taken over the voxel count instead of the CAM's mass."""
    cam = np.zeros((2, 3, 4))
    tumour = np.zeros(cam.shape, np.uint8)
    ring = np.zeros(cam.shape, np.uint8)
    cam[0, 0, 0], cam[0, 0, 1] = 1.0, 2.0            # tumour: 3
    tumour[0, 0, :2] = 1
    cam[1, 2, 3] = 2.0                               # ring: 2
    ring[1, 2, 3] = 1
    ring[0, 0, 1] = 1                                # a ring voxel inside the tumour counts for the tumour only
    ring[1, 1, 1] = 1                                # a ring voxel with no mass
    cam[0, 2, 2], cam[1, 0, 0] = 4.0, 1.0            # elsewhere: 5
    s = attention_shares(cam, tumour, ring)
    assert s == pytest.approx({"tumour": 0.3, "ring": 0.2, "elsewhere": 0.5, "total_mass": 10.0}, abs=1e-12)


def test_attention_shares_sum_a_float32_map_in_float64():
    """The CAM on the CT grid is float32 and can be large; summed in float32, 2^24 + 1 is 2^24. The shares are the
    float64 sums: (2^24 + 1) / (2^25 + 3) each for tumour and ring."""
    cam = np.zeros((1, 1, 5), np.float32)
    cam[0, 0] = [2.0 ** 24, 1.0, 2.0 ** 24, 1.0, 1.0]
    tumour = np.array([[[1, 1, 0, 0, 0]]], np.uint8)
    ring = np.array([[[0, 0, 1, 1, 0]]], np.uint8)
    s = attention_shares(cam, tumour, ring)
    assert s["total_mass"] == 2.0 ** 25 + 3
    assert s["tumour"] == pytest.approx((2 ** 24 + 1) / (2 ** 25 + 3), rel=1e-15)
    assert s["ring"] == pytest.approx((2 ** 24 + 1) / (2 ** 25 + 3), rel=1e-15)


def test_attention_shares_of_a_map_with_little_mass():
    """A map whose total mass is below 1 (a faint, normalised CAM) still has shares; only a zero map has none."""
    cam = np.array([[[0.1, 0.3, 0.1]]])
    s = attention_shares(cam, np.array([[[0, 1, 0]]]), np.array([[[1, 0, 0]]]))
    assert s == pytest.approx({"tumour": 0.6, "ring": 0.2, "elsewhere": 0.2, "total_mass": 0.5}, abs=1e-12)


def test_attention_shares_of_an_empty_map_are_zero():
    s = attention_shares(np.zeros((2, 2, 2)), np.ones((2, 2, 2)), np.zeros((2, 2, 2)))
    assert s == {"tumour": 0.0, "ring": 0.0, "elsewhere": 0.0, "total_mass": 0.0}


# ------------------------------------------------------------------------------------------------ ring in mm
def _one_voxel_tumour(spacing_xyz, size=(13, 13, 13)):
    arr = np.zeros(size[::-1], np.uint8)
    c = tuple(s // 2 for s in size[::-1])
    arr[c] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin((-5.0, 7.0, 100.0))
    return img, c


def test_ring_width_is_in_mm_on_an_anisotropic_grid():
    """One tumour voxel, spacing x 1, y 2, z 3 mm, ring 3 mm: the ring is every voxel whose centre lies within 3 mm
    of the tumour voxel's centre, by hand: in the tumour's slice dx^2 + 4 dy^2 <= 9 (7 + 2 x 5 = 17 voxels, less the
    tumour: 16); one slice up and down only the voxel straight above (2). 18 voxels, reaching 3 voxels along x, 1
    along y and 1 along z. A ring measured in voxels (3 voxels each way) would reach 3 along every axis."""
    img, (cz, cy, cx) = _one_voxel_tumour((1.0, 2.0, 3.0))
    ring = sitk.GetArrayFromImage(ring_from_tumour(img, 3.0))
    expected = np.zeros_like(ring)
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in range(-3, 4):
                if (dx * 1.0) ** 2 + (dy * 2.0) ** 2 + (dz * 3.0) ** 2 <= 9.0 and (dx, dy, dz) != (0, 0, 0):
                    expected[cz + dz, cy + dy, cx + dx] = 1
    assert int(expected.sum()) == 18  # the count worked out by hand in the docstring
    np.testing.assert_array_equal(ring, expected)
    zs, ys, xs = np.nonzero(ring)
    assert (np.ptp(xs), np.ptp(ys), np.ptp(zs)) == (6, 2, 2)
    out = ring_from_tumour(img, 3.0)
    assert out.GetSpacing() == img.GetSpacing() and out.GetOrigin() == img.GetOrigin()
    assert out.GetPixelID() == sitk.sitkUInt8  # a label map, as the tumour mask


def test_ring_and_shares_use_that_ring_and_report_its_width():
    img, (cz, cy, cx) = _one_voxel_tumour((1.0, 2.0, 3.0))
    cam = np.zeros(sitk.GetArrayViewFromImage(img).shape)
    cam[cz, cy, cx] = 1.0            # tumour
    cam[cz, cy, cx + 3] = 3.0        # 3 mm along x: ring
    cam[cz + 2, cy, cx] = 6.0        # 6 mm along z: elsewhere (two voxels: in a ring taken in voxels)
    ring, s = ring_and_shares(cam, img, 3.0)
    assert s == pytest.approx({"tumour": 0.1, "ring": 0.3, "elsewhere": 0.6, "total_mass": 10.0,
                               "ring_width_mm": 3.0}, abs=1e-12)
    assert sitk.GetArrayViewFromImage(ring).sum() == 18


# ------------------------------------------------------------------------------------------------ Grad-CAM sign
class _Toy(torch.nn.Module):
    """One 1x1x1 convolution (weight 1: activations = input) then the mean; logits (-mean, +mean)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv3d(1, 1, 1, bias=False)
        self.head = torch.nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


def _signed_input():
    """+1 .. +4 in the upper half (evidence for class 1), -1 .. -4 in the lower half (evidence against)."""
    x = torch.zeros(1, 1, 4, 4, 4, dtype=torch.float64)
    vals = torch.arange(1, 5, dtype=torch.float64).reshape(1, 1, 1, 1, 4).expand(1, 1, 2, 4, 4)
    x[:, :, :2] = vals
    x[:, :, 2:] = -vals
    return x


def test_gradcam_keeps_positive_evidence_only():
    """Grad-CAM = ReLU(sum_k w_k A_k) with w_k the mean gradient. Here A = x and d logit_1 / d A = 1/N everywhere,
    so the class-1 map is ReLU(x) / N: the negative half is zero (abs() would give |x| / N there). The class-0
    logit is -mean, so its map is ReLU(-x) / N: the negative half, and zero where class 1's evidence is."""
    net = _Toy().double()
    x = _signed_input()
    n = x.numel()
    gc = ScoringGradCAM(net, "features")
    logits, cam1 = gc.logits_and_map(x, class_idx=1)
    np.testing.assert_allclose(logits.numpy(), [[-x.mean().item(), x.mean().item()]], atol=1e-12)
    np.testing.assert_allclose(cam1.detach().numpy(), (torch.relu(x) / n).numpy(), atol=1e-12)
    assert cam1[:, :, 2:].abs().max().item() == 0.0
    _, cam0 = gc.logits_and_map(x, class_idx=0)
    np.testing.assert_allclose(cam0.detach().numpy(), (torch.relu(-x) / n).numpy(), atol=1e-12)


def test_gradcam_ixg_keeps_positive_input_times_gradient_only():
    """GradCAM-IxG = Grad-CAM x ReLU(x * dlogit/dx), unsmoothed here (smooth_mm 0). With a bias of 10 on the
    convolution, A = x + 10 > 0 everywhere, so Grad-CAM is (x + 10) / N over the whole input, negative half included;
    dlogit_1/dx = 1/N, so the map is (x + 10) / N x ReLU(x) / N: zero on the negative half only through the ReLU of
    input x gradient (abs() there would not be zero)."""
    net = _Toy().double()
    net.features.bias = torch.nn.Parameter(torch.full((1,), 10.0, dtype=torch.float64))
    x = _signed_input()
    n = x.numel()
    gc = make_cam(net, {"method": "GradCAM-IxG", "target_layer": "features", "smooth_mm": 0.0})
    _, cam = gc.logits_and_map(x, class_idx=1)
    np.testing.assert_allclose(cam.detach().numpy(), ((x + 10) / n * torch.relu(x) / n).numpy(), atol=1e-15)
    assert cam[:, :, 2:].abs().max().item() == 0.0


def test_gaussian_smooth_per_axis_sigma_in_voxels():
    """No smoothing at sigma 0 (the input itself); below one voxel it still smooths; each axis its own sigma; the
    mass of an impulse away from the borders is kept."""
    from TMBRBLib.cam import gaussian_smooth

    x = torch.zeros(1, 1, 15, 15, 15)
    x[0, 0, 7, 7, 7] = 1.0
    assert gaussian_smooth(x, 0.0) is x and gaussian_smooth(x, [0, 0, 0]) is x
    y = gaussian_smooth(x, 0.8)
    assert y[0, 0, 7, 7, 7].item() < 0.5 and y.sum().item() == pytest.approx(1.0, abs=1e-4)
    z = gaussian_smooth(x, [2.0, 0.5, 0.5])[0, 0]   # (z, y, x) axes: wide along the first only
    assert z[7 + 2, 7, 7].item() > 10 * z[7, 7 + 2, 7].item() and z[7, 7 + 2, 7].item() == pytest.approx(
        z[7, 7, 7 + 2].item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------ TTA summary
TUMOUR = (10.0, -20.0, 30.0)


@pytest.fixture(scope="module")
def tumour_case():
    return make_ct(size=(64, 64, 40), tumour_lps=TUMOUR, radius_mm=7, noise=10)


@pytest.mark.slow
def test_tta_mean_and_std_are_those_of_the_box_and_each_shifted_box_scored_alone(tumour_case, scorer):
    """tta_scores = [the box's score, each shifted box's score]; tta_mean/tta_std = their mean and population
    standard deviation (numpy's, ddof 0). Each shifted box is scored again on its own (no shifts) and must give its
    entry. Catches a mean that leaves out the unshifted box, or shifted scores in another order."""
    from TMBRBLib.crop import n_shifts_of, shift_offsets
    from TMBRBLib.pipeline import score_case

    ct, mask = tumour_case
    r = score_case(ct, TUMOUR, None, mask, scorer=scorer, n_shifts=3)
    assert len(r.tta_scores) == 4 and r.tta_scores[0] == r.score
    offsets = shift_offsets(r.box, scorer.bundle.tmbrb.get("tta", {}), n_shifts_of({}, 3))
    alone = [score_case(ct, TUMOUR, r.box.shifted(o), mask, scorer=scorer, n_shifts=0).score for o in offsets]
    np.testing.assert_allclose(r.tta_scores[1:], alone, rtol=0, atol=1e-6)
    every = [r.score] + alone
    assert r.tta_mean == pytest.approx(sum(every) / 4, abs=1e-6)
    assert r.tta_std == pytest.approx((sum((v - sum(every) / 4) ** 2 for v in every) / 4) ** 0.5, abs=1e-6)
    assert len(set(np.round(every, 9))) > 1, "the shifted boxes all gave the same score: the test shows nothing"
    tta = r.to_dict()["tta"]  # what result.json carries
    assert tta == {"mean": r.tta_mean, "std": r.tta_std, "n": 4, "scores": r.tta_scores}


# ------------------------------------------------------------------------------------------------ batch resume
def _batch_manifest(tmp_path, ct, names):
    import csv

    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"), True)
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "ct", "seed_lps"])
        for name in names:
            w.writerow([name, "ct.nrrd", ",".join(map(str, TUMOUR))])
    return tmp_path / "m.csv"


@pytest.mark.slow
def test_batch_resume_scores_a_half_written_case_folder_again(tumour_case, placeholder_bundle, tmp_path,
                                                              monkeypatch):
    """A case folder left by an interrupted run (some outputs, no result.json; or a truncated result.json) is not
    done: it is scored again and ends with a whole result. Catches resume treating any existing folder as done."""
    from TMBRBLib.cli import main

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TMBRB_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    ct, _ = tumour_case
    man = _batch_manifest(tmp_path, ct, ["partial", "truncated", "whole"])
    out = tmp_path / "out"
    args = ["batch", str(man), "--out", str(out), "--model", str(placeholder_bundle.path), "--shifts", "0",
            "--no-pictures", "--quiet"]
    assert main(args) == 0
    whole_before = (out / "whole" / "result.json").read_bytes()
    (out / "partial" / "result.json").unlink()                       # the cam was written, the result not yet
    text = (out / "truncated" / "result.json").read_text()
    (out / "truncated" / "result.json").write_text(text[: len(text) // 2])
    assert main(args) == 0
    import csv

    with open(out / "summary.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert {k: r["status"] for k, r in rows.items()} == {"partial": "ok", "truncated": "ok", "whole": "done-before"}
    assert rows["truncated"]["note"] == "re-scored: the earlier result.json could not be read"
    for name in ("partial", "truncated"):
        res = json.loads((out / name / "result.json").read_text())
        assert res["score"] == pytest.approx(float(rows["whole"]["score"]), abs=1e-6)
    assert (out / "whole" / "result.json").read_bytes() == whole_before


# ------------------------------------------------------------------------------------------------ CLI seed
@pytest.mark.slow
def test_cli_seed_as_ras_lps_or_index_is_the_same_point_hard_coded(placeholder_bundle, tmp_path):
    """The tumour at LPS (10, -20, 30) is RAS (-10, 20, 30) (x and y negated), and on this CT (directions diag(-1,
    -1, 1), spacing 0.8 x 0.8 x 1 mm, 64 x 64 x 40 voxels centred on it) voxel index (31.5, 31.5, 19.5): numbers
    written here, not computed with the project's converter. All three give the same seed and the same score."""
    from TMBRBLib.cli import main

    ct, _ = make_ct(direction=DIRECTIONS["flipped"], size=(64, 64, 40), tumour_lps=TUMOUR, radius_mm=7, noise=10)
    np.testing.assert_allclose(ct.TransformPhysicalPointToContinuousIndex(TUMOUR), (31.5, 31.5, 19.5), atol=1e-9)
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"), True)
    results = {}
    for flag, val in (("--seed-lps", "10,-20,30"), ("--seed-ras", "-10,20,30"), ("--seed-index", "31.5,31.5,19.5")):
        out = tmp_path / flag.strip("-")
        assert main(["score", "--ct", str(tmp_path / "ct.nrrd"), flag, val, "--model", str(placeholder_bundle.path),
                     "--shifts", "0", "--out", str(out), "--no-pictures", "--progress", "none"]) == 0
        results[flag] = json.loads((out / "result.json").read_text())
    for flag, res in results.items():
        np.testing.assert_allclose(res["seed"]["lps"], [10.0, -20.0, 30.0], atol=1e-6, err_msg=flag)
        np.testing.assert_allclose(res["seed"]["ras"], [-10.0, 20.0, 30.0], atol=1e-6, err_msg=flag)
        assert res["score"] == pytest.approx(results["--seed-lps"]["score"], abs=1e-6), flag
