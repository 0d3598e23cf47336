"""The CAM must be high where the model looked: checked on a small network whose evidence is known."""

import numpy as np
import pytest
import torch
from torch import nn

from TMBRBLib.cam import GradCAMIxG, ScoringGradCAM, make_cam, normalise_cam


class BlobDetector(nn.Module):
    """High-TMB logit = mean of a positive feature map that responds to bright voxels; Low-TMB = its negative."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool3d(2))
        with torch.no_grad():
            self.features[0].weight.fill_(1.0 / 27)
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten())

    def forward(self, x):
        s = self.head(self.features(x)).mean(1, keepdim=True)
        return torch.cat([-s, s], 1)


def test_grad_cam_peaks_at_the_evidence_and_is_not_inverted():
    net = BlobDetector().eval()
    x = torch.zeros(2, 1, 16, 16, 16)
    x[0, 0, 2:5, 2:5, 2:5] = 1.0       # sample 0: blob near the corner
    x[1, 0, 10:14, 10:14, 10:14] = 1.0  # sample 1: blob elsewhere (a batch must not mix samples)
    cam = ScoringGradCAM(net, "features.1")
    logits, maps = cam.logits_and_map(x, class_idx=1)
    assert logits.shape == (2, 2) and maps.shape == (2, 1, 16, 16, 16)
    m0 = normalise_cam(maps[0, 0].numpy())
    m1 = normalise_cam(maps[1, 0].numpy())
    assert m0.max() == 1.0 and m0.min() >= 0
    peak0 = np.unravel_index(np.argmax(m0), m0.shape)
    peak1 = np.unravel_index(np.argmax(m1), m1.shape)
    assert all(1 <= p <= 6 for p in peak0), peak0
    assert all(9 <= p <= 14 for p in peak1), peak1
    assert m0[3, 3, 3] > 0.5 and m0[12, 12, 12] < 0.1


def test_normalise_cam_keeps_an_all_zero_map_zero():
    assert not normalise_cam(np.zeros((4, 4, 4))).any()
    assert normalise_cam(np.array([0.0, 2.0, 4.0])).tolist() == [0.0, 0.5, 1.0]


def test_every_dense_layer_output_can_be_the_cam_target_including_norm5():
    from TMBRBLib.model import TMBRBNet
    torch.manual_seed(0)
    net = TMBRBNet().eval()
    x = torch.randn(1, 1, 32, 32, 32)
    for layer in ("features.transition2.relu", "features.norm5"):
        logits, maps = ScoringGradCAM(net, layer).logits_and_map(x, 1)
        assert maps.shape == (1, 1, 32, 32, 32) and torch.isfinite(maps).all(), layer
    with torch.no_grad():
        assert torch.allclose(net(x), logits)


def test_gradcam_ixg_is_finer_than_gradcam_and_stays_on_the_evidence():
    """Grad-CAM x smoothed input-gradient: peaks on the bright blob, is zero in air, puts more mass on the blob."""
    net = BlobDetector().eval()
    x = torch.zeros(1, 1, 16, 16, 16)
    x[0, 0, 2:5, 2:5, 2:5] = 1.0
    blob = np.zeros((16, 16, 16), bool)
    blob[2:5, 2:5, 2:5] = True
    _, coarse = ScoringGradCAM(net, "features.1").logits_and_map(x, 1)
    logits, fine = GradCAMIxG(net, "features.1", smooth_mm=0.5).logits_and_map(x, 1, 1.0)
    coarse, fine = coarse[0, 0].numpy(), fine[0, 0].numpy()
    assert fine.min() >= 0 and np.unravel_index(np.argmax(fine), fine.shape) in {tuple(p) for p in np.argwhere(blob)}
    assert fine[12, 12, 12] == 0 and fine[8:, 8:, 8:].max() < 1e-6 * fine.max()
    share = lambda m: m[blob].sum() / m.sum()  # noqa: E731
    assert share(fine) > 0.8 and share(fine) > share(coarse) + 0.1, (share(fine), share(coarse))
    # evidence against the class gives no map (positive evidence only)
    _, against = GradCAMIxG(net, "features.1").logits_and_map(x, 0, 1.0)
    assert not against.any()


def test_smoothing_width_is_set_in_millimetres_per_axis():
    from TMBRBLib.cam import gaussian_smooth
    x = torch.zeros(1, 1, 41, 41, 41)
    x[0, 0, 20, 20, 20] = 1.0
    # 2 mm on a grid of (2, 1, 0.5) mm voxels = sigma (1, 2, 4) voxels
    y = gaussian_smooth(x, 2.0 / np.array([2.0, 1.0, 0.5]))[0, 0].numpy()
    idx = np.arange(41) - 20
    for axis, want in enumerate((1.0, 2.0, 4.0)):
        prof = y.sum(axis=tuple(a for a in range(3) if a != axis))
        sd = np.sqrt((prof * idx ** 2).sum() / prof.sum())
        assert abs(sd - want) < 0.05, (axis, sd, want)
    assert abs(y.sum() - 1.0) < 1e-3


def test_unknown_cam_method_or_smoothing_is_refused_with_the_choices():
    net = BlobDetector().eval()
    with pytest.raises(ValueError, match="GradCAM-IxG"):
        make_cam(net, {"target_layer": "features.1", "method": "ScoreCAM"})
    with pytest.raises(ValueError, match="smooth_mm"):
        make_cam(net, {"target_layer": "features.1", "method": "GradCAM-IxG", "smooth_mm": -1})


def test_make_cam_builds_the_class_the_bundle_names_with_the_legacy_default():
    from TMBRBLib.cam import CAM_METHODS, DEFAULT_CAM_METHOD, LEGACY_CAM_METHOD
    from TMBRBLib.bundle import default_tmbrb_metadata
    net = BlobDetector().eval()
    assert set(CAM_METHODS) == {"GradCAM", "GradCAM-IxG"}  # the names in existing bundles' metadata
    assert default_tmbrb_metadata()["cam"]["method"] == DEFAULT_CAM_METHOD == "GradCAM-IxG"
    # a bundle written before cam.method existed keeps plain Grad-CAM
    assert LEGACY_CAM_METHOD == "GradCAM" and type(make_cam(net, {"target_layer": "features.1"})) is ScoringGradCAM
    cam = make_cam(net, {"target_layer": "features.1", "method": "GradCAM-IxG", "smooth_mm": 0.5})
    assert type(cam) is GradCAMIxG and cam.smooth_mm == 0.5
    x = torch.zeros(1, 1, 16, 16, 16)
    x[0, 0, 2:5, 2:5, 2:5] = 1.0
    same = GradCAMIxG(net, "features.1", smooth_mm=0.5).logits_and_map(x, 1, 1.0)[1]
    assert torch.equal(cam.logits_and_map(x, 1, 1.0)[1], same)
    with pytest.raises(ValueError, match="not a layer of the model"):
        make_cam(net, {"target_layer": "features.9"})


# ---- mutation survivors (issue 16, mio3): what the pipeline and a bundle's settings rely on, by value
def test_normalise_cam_gives_float32_in_zero_to_one_of_the_same_shape():
    for cam in (np.zeros((4, 4, 4)), np.full((2, 3), np.nan), np.zeros((0,))):  # nothing to show: zeros
        out = normalise_cam(cam)
        assert out.dtype == np.float32 and out.shape == cam.shape and not out.any()
    out = normalise_cam(np.array([-1.0, 0.0, 1.0, 4.0]))  # negative values (interpolation undershoot) clip to 0
    assert out.dtype == np.float32 and out.tolist() == [0.0, 0.0, 0.25, 1.0]


def test_smoothing_is_accepted_up_to_its_limit_and_refused_with_the_value():
    from TMBRBLib.cam import MAX_SMOOTH_MM, check_cam_settings, check_smooth_mm
    assert check_smooth_mm(MAX_SMOOTH_MM) == 20.0 and check_smooth_mm(0) == 0.0
    with pytest.raises(ValueError) as e:
        check_smooth_mm("wide")
    assert str(e.value) == "cam.smooth_mm must be a number of millimetres >= 0, got 'wide'"
    with pytest.raises(ValueError) as e:
        check_cam_settings("ScoreCAM")
    assert str(e.value) == "CAM method 'ScoreCAM' is not known; use one of GradCAM, GradCAM-IxG"


def test_gradcam_ixg_smooths_in_millimetres_of_the_spacing_given():
    """smooth_mm 2 on 2 mm voxels is a sigma of 1 voxel: the map of smooth_mm 1 on 1 mm voxels (the default)."""
    net = BlobDetector().eval()
    x = torch.zeros(1, 1, 16, 16, 16)
    x[0, 0, 2:5, 2:5, 2:5] = 1.0
    def shape(cam, *spacing):  # the map scaled to its maximum (its values are small)
        m = cam.logits_and_map(x, 1, *spacing)[1]
        return m / m.max()

    one_voxel = shape(GradCAMIxG(net, "features.1", smooth_mm=1.0))  # spacing not given: 1 mm
    assert torch.allclose(shape(GradCAMIxG(net, "features.1", smooth_mm=1.0), 1.0), one_voxel)
    two_mm = GradCAMIxG(net, "features.1", smooth_mm=2.0)
    assert torch.allclose(shape(two_mm, 2.0), one_voxel, atol=1e-5)
    assert torch.allclose(shape(two_mm, (2.0, 2.0, 2.0)), one_voxel, atol=1e-5)
    assert (shape(two_mm, 1.0) - one_voxel).abs().max() > 0.05  # 2 voxels: wider


def test_a_crop_cam_is_put_on_the_reference_grid_at_its_place_and_zero_outside():
    import SimpleITK as sitk
    from TMBRBLib.cam import cam_image, cam_to_reference
    from TMBRBLib.crop import CropGrid

    cam = np.zeros((4, 4, 4), np.float32)  # z, y, x
    cam[1, 2, 3] = 1.0
    cam[2, 1, 0] = 0.5
    grid = CropGrid(origin=(10.0, 20.0, 30.0), spacing=(2.0, 2.0, 2.0), size_xyz=(4, 4, 4))
    img = cam_image(cam, grid)
    assert img.GetOrigin() == (10.0, 20.0, 30.0) and img.GetSpacing() == (2.0, 2.0, 2.0)
    assert img.GetPixelID() == sitk.sitkFloat32 and np.array_equal(sitk.GetArrayFromImage(img), cam)
    ref = sitk.Image([12, 12, 12], sitk.sitkUInt8)  # a region of the CT's grid: 1 mm voxels from (6, 16, 26)
    ref.SetOrigin((6.0, 16.0, 26.0))
    out = cam_to_reference(img, ref)
    assert out.dtype == np.float32 and out.shape == (12, 12, 12)
    # crop voxel (x, y, z) lies at 10 + 2x, 20 + 2y, 30 + 2z mm: reference index 4 + 2x, 4 + 2y, 4 + 2z
    assert out[6, 8, 10] == pytest.approx(1.0) and out[8, 6, 4] == pytest.approx(0.5)
    assert out[6, 8, 9] == pytest.approx(0.5)  # linear between voxels
    assert not out[:3].any() and not out[:, :, :3].any()  # outside the crop: zero
    over = cam_image(np.full((4, 4, 4), 3.0), grid)  # values are clipped to [0, 1]; float64 is stored as float32
    assert over.GetPixelID() == sitk.sitkFloat32 and cam_to_reference(over, ref).max() == 1.0
    under = sitk.GetImageFromArray(np.full((4, 4, 4), -2.0))  # a float64 image of negative values
    under.CopyInformation(img)
    got = cam_to_reference(under, ref)
    assert got.dtype == np.float32 and got.min() == 0.0 and got.max() == 0.0
