"""Class activation maps for the High-TMB class, and their mapping back onto the CT's own voxel grid.

Two methods, chosen by the bundle's ``cam.method``:

``GradCAM``
    MONAI's Grad-CAM at ``cam.target_layer``, upsampled trilinearly to the crop. Coarse: at
    ``features.transition2.relu`` one map cell is 1/8 of the field of view (6-20 mm).
``GradCAM-IxG`` (the default for new bundles)
    Grad-CAM multiplied voxel by voxel by the positive part of input x gradient, smoothed with a Gaussian of
    ``cam.smooth_mm`` (default 2 mm). The structure of Guided Grad-CAM (Selvaraju et al., ICCV 2017: a class map
    times a fine-grained map), with input x gradient (Shrikumar et al., 2016) in place of guided backpropagation,
    which does not depend on the model's upper layers (Adebayo et al., NeurIPS 2018, "Sanity checks for saliency
    maps"). It costs nothing extra: Grad-CAM's backward pass already reaches the input. Its positive part is
    evidence *for* High-TMB carried by brighter-than-air voxels; evidence carried by a darkening shows up weakly
    (docs/training.md, "CAM faithfulness").

Two MONAI pitfalls are avoided on purpose: its default post-processing maps the maximum to 0 (we normalise so the map
is HIGH where the model looked), and with a batch above one and class_idx=None each sample gets its own argmax class
(we always pass the class).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM

from .crop import CropGrid

CAM_METHODS = ("GradCAM", "GradCAM-IxG")
DEFAULT_SMOOTH_MM = 2.0


def _identity(x):
    return x


def check_cam_settings(method, smooth_mm=DEFAULT_SMOOTH_MM) -> Tuple[str, float]:
    if method not in CAM_METHODS:
        raise ValueError(f"CAM method {method!r} is not known; use one of {', '.join(CAM_METHODS)}")
    try:
        s = float(smooth_mm)
    except (TypeError, ValueError):
        raise ValueError(f"cam.smooth_mm must be a number of millimetres >= 0, got {smooth_mm!r}") from None
    if not np.isfinite(s) or s < 0 or s > 20:
        raise ValueError(f"cam.smooth_mm must be between 0 and 20 mm, got {smooth_mm!r}")
    return method, s


def gaussian_smooth(x: torch.Tensor, sigma_vox) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, C, *spatial) with per-axis sigma in voxels (MONAI's GaussianFilter)."""
    from monai.networks.layers import GaussianFilter

    sig = [float(v) for v in np.broadcast_to(np.asarray(sigma_vox, float), (x.ndim - 2,))]
    if max(sig) <= 0:
        return x
    return GaussianFilter(x.ndim - 2, sigma=sig).to(x.device)(x)


class ScoringGradCAM(GradCAM):
    """MONAI GradCAM that also returns the logits of the same forward pass (one forward + one backward)."""

    def __init__(self, model: torch.nn.Module, target_layer: str, method: str = "GradCAM",
                 smooth_mm: float = DEFAULT_SMOOTH_MM):
        self.method, self.smooth_mm = check_cam_settings(method, smooth_mm)
        names = dict(model.named_modules())
        if target_layer not in names:
            raise ValueError(f"CAM target layer {target_layer!r} is not a layer of the model")
        # an in-place ReLU right after the target layer (e.g. after features.norm5) would overwrite the activations
        # that the backward hook needs; out-of-place gives the same numbers
        for m in model.modules():
            if isinstance(m, torch.nn.ReLU) and m.inplace:
                m.inplace = False
        super().__init__(nn_module=model, target_layers=target_layer, postprocessing=_identity)

    def logits_and_map(self, x: torch.Tensor, class_idx: int, spacing_mm=1.0) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, 2), raw map at the input size (B, 1, *spatial), >= 0).

        ``spacing_mm`` (scalar or per spatial axis of ``x``, in x's axis order) converts ``smooth_mm`` to voxels.
        """
        with torch.enable_grad():
            # the weights are frozen; gradients flow to the input, so no weight gradients are computed
            x = x.detach().requires_grad_(True)
            logits, acti, grad = self.nn_module(x, class_idx=int(class_idx))
            acti, grad = acti[-1], grad[-1]
            b, c, *spatial = grad.shape
            weights = grad.reshape(b, c, -1).mean(2).reshape(b, c, *[1] * len(spatial))
            acti_map = F.relu((weights * acti).sum(1, keepdim=True))
            cam = self._upsample_and_post_process(acti_map.detach(), x)
            if self.method == "GradCAM-IxG":
                sigma = self.smooth_mm / np.broadcast_to(np.asarray(spacing_mm, float), (x.ndim - 2,))
                ixg = gaussian_smooth((x.grad * x).detach(), sigma)
                cam = cam * F.relu(ixg)
        return logits.detach(), cam


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] with the maximum at 1 (high = where the model looked); all-zero stays zero."""
    m = float(cam.max()) if cam.size else 0.0
    if not np.isfinite(m) or m <= 0:
        return np.zeros_like(cam, dtype=np.float32)
    return np.clip(cam / m, 0, 1).astype(np.float32)


def cam_image(cam_zyx: np.ndarray, grid: CropGrid) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(cam_zyx, dtype=np.float32))
    img.SetOrigin(grid.origin)
    img.SetSpacing(grid.spacing)
    return img


def cam_to_reference(cam: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Resample a crop-grid CAM onto a reference grid (a region of the CT's grid); zero outside the crop."""
    out = sitk.Resample(cam, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.clip(sitk.GetArrayFromImage(out), 0, 1)
