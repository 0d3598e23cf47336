import numpy as np
import pytest
import SimpleITK as sitk
import torch

from TMBRBLib.geometry import Box
from TMBRBLib.io import same_grid
from TMBRBLib.pipeline import Scorer, score_case

from .synthetic import DIRECTIONS, make_ct


@pytest.fixture(scope="module")
def oblique_case():
    tumour = np.array([12.0, -22.0, 31.0])
    ct, mask = make_ct(DIRECTIONS["oblique"], (0.7, 0.7, 1.5), (120, 110, 56), tumour_lps=tumour, radius_mm=8,
                       noise=12)
    return ct, mask, tumour


def test_outputs_lie_on_the_ct_grid_and_cam_is_zero_outside_the_crop(oblique_case, scorer):
    ct, mask, tumour = oblique_case
    box = Box.from_center_size(tumour, (22, 22, 22))
    r = score_case(ct, tumour, box, ecog=1, scorer=scorer, n_shifts=2)
    for img in (r.cam, r.tumour_mask, r.ring_mask):
        assert same_grid(img, ct, tol=1e-9)
        assert img.GetDirection() == ct.GetDirection() and img.GetOrigin() == ct.GetOrigin()
    cam = sitk.GetArrayFromImage(r.cam)
    assert cam.dtype == np.float32 and cam.min() >= 0 and cam.max() <= 1
    # zero outside the crop: map every voxel with CAM > 0 to physical space, it must lie in the crop's box
    zz, yy, xx = np.nonzero(cam > 0)
    if xx.size:
        d = np.array(ct.GetDirection()).reshape(3, 3) @ np.diag(ct.GetSpacing())
        pts = np.stack([xx, yy, zz], 1) @ d.T + np.array(ct.GetOrigin())
        gb = r.crop_grid.box
        assert np.all(pts >= np.asarray(gb.min) - 1.0) and np.all(pts <= np.asarray(gb.max) + 1.0)
    # tumour segmented from the seed overlaps the true sphere; the ring lies outside it
    t = sitk.GetArrayFromImage(r.tumour_mask) > 0
    truth = sitk.GetArrayFromImage(mask) > 0
    assert (t & truth).sum() / truth.sum() > 0.8
    ring = sitk.GetArrayFromImage(r.ring_mask) > 0
    assert ring.any() and not (ring & t).any()
    assert r.crop.GetSize() == (64, 64, 64)
    assert 0.0 <= r.score <= 1.0 and len(r.tta_scores) == 3
    assert abs(sum(r.attention[k] for k in ("tumour", "ring", "elsewhere")) - 1) < 1e-6 or r.attention["total_mass"] == 0


@pytest.mark.bit_exact  # one torch thread (tests/conftest.py)
def test_the_same_input_gives_bit_identical_output_on_cpu(oblique_case, placeholder_bundle):
    ct, mask, tumour = oblique_case
    outs = []
    for _ in range(2):
        scorer = Scorer(placeholder_bundle, "cpu")  # a fresh model each time
        r = score_case(ct, tumour, None, scorer=scorer, n_shifts=3)
        outs.append(r)
    a, b = outs
    assert a.score == b.score and a.tta_scores == b.tta_scores
    assert np.array_equal(sitk.GetArrayFromImage(a.cam), sitk.GetArrayFromImage(b.cam))
    assert a.box == b.box


def test_result_json_says_which_model_and_both_frames(oblique_case, scorer):
    ct, mask, tumour = oblique_case
    r = score_case(ct, tumour, None, scorer=scorer, n_shifts=1)
    d = r.to_dict()
    assert d["model"]["sha256"] == scorer.bundle.sha256 and d["model"]["placeholder"] is True
    assert "PLACEHOLDER" in d["warnings"][0]
    assert d["seed"]["ras"] == [-tumour[0], -tumour[1], tumour[2]]
    assert d["box"]["proposed"] is True and len(d["box"]["ras_min"]) == 3
    assert set(d["timings_s"]) >= {"crop", "forward_cam", "total"}


def test_gpu_out_of_memory_falls_back_to_cpu_and_says_so(oblique_case, placeholder_bundle, monkeypatch):
    ct, mask, tumour = oblique_case
    scorer = Scorer(placeholder_bundle, "cpu")
    scorer.device = torch.device("cuda")  # pretend a GPU was chosen; the first attempt runs out of memory
    real_run = Scorer.run
    calls = []

    def run(self, base, shifted, device, spacing_zyx=1.0):
        calls.append(device.type)
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, base, shifted, device, spacing_zyx)

    monkeypatch.setattr(Scorer, "run", run)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    r = score_case(ct, tumour, None, scorer=scorer, n_shifts=1)
    assert calls == ["cuda", "cpu"] and r.device_used == "cpu"
    assert any("ran out of memory" in w and "CPU" in w for w in r.warnings)


def test_cancel_stops_the_run(oblique_case, scorer):
    from TMBRBLib.errors import TMBRBCancelled
    ct, mask, tumour = oblique_case
    seen = []
    with pytest.raises(TMBRBCancelled):
        score_case(ct, tumour, None, scorer=scorer, progress=lambda f, m: seen.append(f),
                   cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2


def test_region_volumes_write_full_grid_nrrds_equal_to_the_full_images(oblique_case, scorer, tmp_path):
    from TMBRBLib.outputs import write_outputs
    ct, mask, tumour = oblique_case
    r = score_case(ct, tumour, None, scorer=scorer, n_shifts=0)
    written = write_outputs(r, tmp_path, ct=ct, pictures=False)
    for key, full in (("cam", r.cam), ("tumour", r.tumour_mask), ("ring", r.ring_mask)):
        back = sitk.ReadImage(str(written[key]))
        assert same_grid(back, ct, tol=1e-9), key
        assert back.GetPixelID() == full.GetPixelID()
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(full)), key
    assert sitk.GetArrayFromImage(r.tumour_mask).sum() == r.tumour_region.data.sum() > 0
