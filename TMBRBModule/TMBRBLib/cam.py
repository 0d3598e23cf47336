"""Grad-CAM (MONAI) for the High-TMB class, and its mapping back onto the CT's own voxel grid.

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


def _identity(x):
    return x


class ScoringGradCAM(GradCAM):
    """MONAI GradCAM that also returns the logits of the same forward pass (one forward + one backward)."""

    def __init__(self, model: torch.nn.Module, target_layer: str):
        names = dict(model.named_modules())
        if target_layer not in names:
            raise ValueError(f"CAM target layer {target_layer!r} is not a layer of the model")
        # an in-place ReLU right after the target layer (e.g. after features.norm5) would overwrite the activations
        # that the backward hook needs; out-of-place gives the same numbers
        for m in model.modules():
            if isinstance(m, torch.nn.ReLU) and m.inplace:
                m.inplace = False
        super().__init__(nn_module=model, target_layers=target_layer, postprocessing=_identity)

    def logits_and_map(self, x: torch.Tensor, class_idx: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, 2), raw Grad-CAM upsampled to the input size (B, 1, *spatial), >= 0)."""
        with torch.enable_grad():
            # the weights are frozen; gradients flow to the input, so no weight gradients are computed
            x = x.detach().requires_grad_(True)
            logits, acti, grad = self.nn_module(x, class_idx=int(class_idx))
            acti, grad = acti[-1], grad[-1]
            b, c, *spatial = grad.shape
            weights = grad.reshape(b, c, -1).mean(2).reshape(b, c, *[1] * len(spatial))
            acti_map = F.relu((weights * acti).sum(1, keepdim=True))
        return logits.detach(), self._upsample_and_post_process(acti_map.detach(), x)


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
