"""Class activation maps for the High-TMB class, and their mapping back onto the CT's own voxel grid.

Two methods, chosen by the bundle's ``cam.method``; each is a class, looked up by that name in ``CAM_METHODS``
(``make_cam`` builds the one a bundle names):

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

A new method is a subclass of ``ScoringGradCAM`` with its own ``method`` name and ``compute_map``, added to
``CAM_METHODS``. The defaults of the ``cam`` section are stated once, here: ``DEFAULT_CAM_METHOD`` (new bundles),
``LEGACY_CAM_METHOD`` (a bundle whose metadata names no method), ``DEFAULT_SMOOTH_MM``, ``DEFAULT_CAM_TARGET_LAYER``.

>>> sorted(CAM_METHODS)
['GradCAM', 'GradCAM-IxG']
>>> CAM_METHODS[DEFAULT_CAM_METHOD].__name__, CAM_METHODS[LEGACY_CAM_METHOD].__name__
('GradCAMIxG', 'ScoringGradCAM')
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple, Type

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM

from .crop import CropGrid

# The defaults of a bundle's ``cam`` section, each stated here only.
DEFAULT_CAM_METHOD = "GradCAM-IxG"          # what new bundles get (bundle.default_tmbrb_metadata, training export)
# Bundles written before ``cam.method`` existed were scored with plain Grad-CAM; a bundle without the key keeps that
# map, so that its maps do not change under it.
LEGACY_CAM_METHOD = "GradCAM"
DEFAULT_CAM_TARGET_LAYER = "features.transition1.relu"   # 16^3 cells on a 64^3 input
DEFAULT_SMOOTH_MM = 2.0
MAX_SMOOTH_MM = 20.0


def _identity(x):
    return x


def gaussian_smooth(x: torch.Tensor, sigma_vox) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, C, *spatial) with per-axis sigma in voxels (MONAI's GaussianFilter)."""
    from monai.networks.layers import GaussianFilter

    sig = [float(v) for v in np.broadcast_to(np.asarray(sigma_vox, float), (x.ndim - 2,))]
    if max(sig) <= 0:
        return x
    return GaussianFilter(x.ndim - 2, sigma=sig).to(x.device)(x)


class ScoringGradCAM(GradCAM):
    """MONAI's Grad-CAM that also returns the logits of the same forward pass (one forward + one backward).

    The base of every CAM method here, and itself the method ``"GradCAM"``: the class map at ``target_layer``,
    upsampled trilinearly to the input size. A subclass changes the map by overriding :meth:`compute_map`.

    Parameters
    ----------
    model : torch.nn.Module
        The network; its in-place ReLUs are made out-of-place (same numbers) so that the hooks see the activations.
    target_layer : str
        Name of the layer (``model.named_modules()``) whose activations and gradients make the map.
    smooth_mm : float, default DEFAULT_SMOOTH_MM
        Smoothing in millimetres, for the methods that smooth (checked for every method: 0 to MAX_SMOOTH_MM).

    Raises
    ------
    ValueError
        When ``target_layer`` is not a layer of ``model`` or ``smooth_mm`` is out of range.
    """

    method = "GradCAM"        # the name in a bundle's ``cam.method`` (the key in CAM_METHODS)
    uses_smoothing = False    # whether ``smooth_mm`` changes the map

    def __init__(self, model: torch.nn.Module, target_layer: str, smooth_mm: float = DEFAULT_SMOOTH_MM):
        self.smooth_mm = check_smooth_mm(smooth_mm)
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
            cam = self.compute_map(x, acti[-1], grad[-1], spacing_mm)
        return logits.detach(), cam

    def compute_map(self, x: torch.Tensor, acti: torch.Tensor, grad: torch.Tensor, spacing_mm=1.0) -> torch.Tensor:
        """The map from one forward/backward: ``x`` (its ``.grad`` filled), the target layer's activations and
        gradients. Grad-CAM: ReLU of the gradient-weighted sum of the channels, upsampled to the input size."""
        b, c, *spatial = grad.shape
        weights = grad.reshape(b, c, -1).mean(2).reshape(b, c, *[1] * len(spatial))
        acti_map = F.relu((weights * acti).sum(1, keepdim=True))
        return self._upsample_and_post_process(acti_map.detach(), x)


class GradCAMIxG(ScoringGradCAM):
    """Grad-CAM times the positive part of input x gradient smoothed by ``smooth_mm`` (the method ``"GradCAM-IxG"``).

    See the module docstring for why; the input gradient comes from Grad-CAM's own backward pass.
    """

    method = "GradCAM-IxG"
    uses_smoothing = True

    def compute_map(self, x: torch.Tensor, acti: torch.Tensor, grad: torch.Tensor, spacing_mm=1.0) -> torch.Tensor:
        cam = super().compute_map(x, acti, grad, spacing_mm)
        sigma = self.smooth_mm / np.broadcast_to(np.asarray(spacing_mm, float), (x.ndim - 2,))
        ixg = gaussian_smooth((x.grad * x).detach(), sigma)
        return cam * F.relu(ixg)


# The CAM methods a bundle's ``cam.method`` may name, each to its class (the names are in existing bundles: keep them)
CAM_METHODS: Dict[str, Type[ScoringGradCAM]] = {cls.method: cls for cls in (ScoringGradCAM, GradCAMIxG)}


def check_smooth_mm(smooth_mm) -> float:
    """``smooth_mm`` as a float; ValueError unless it is a number of millimetres in [0, MAX_SMOOTH_MM]."""
    try:
        s = float(smooth_mm)
    except (TypeError, ValueError):
        raise ValueError(f"cam.smooth_mm must be a number of millimetres >= 0, got {smooth_mm!r}") from None
    if not np.isfinite(s) or s < 0 or s > MAX_SMOOTH_MM:
        raise ValueError(f"cam.smooth_mm must be between 0 and {MAX_SMOOTH_MM:g} mm, got {smooth_mm!r}")
    return s


def check_cam_settings(method, smooth_mm=DEFAULT_SMOOTH_MM) -> Tuple[str, float]:
    """(method, smooth_mm as float); ValueError naming the known methods, or the smoothing's range."""
    if method not in CAM_METHODS:
        raise ValueError(f"CAM method {method!r} is not known; use one of {', '.join(CAM_METHODS)}")
    return method, check_smooth_mm(smooth_mm)


def cam_settings_of(cam: Mapping[str, Any]) -> Tuple[str, float]:
    """(method, smooth_mm) of a bundle's ``cam`` section, with the defaults for absent keys, checked.

    >>> cam_settings_of({"target_layer": "features.transition1.relu"})
    ('GradCAM', 2.0)
    >>> cam_settings_of({"method": "GradCAM-IxG", "smooth_mm": 1})
    ('GradCAM-IxG', 1.0)
    """
    return check_cam_settings(cam.get("method", LEGACY_CAM_METHOD), cam.get("smooth_mm", DEFAULT_SMOOTH_MM))


def make_cam(model: torch.nn.Module, cam_settings: Mapping[str, Any]) -> ScoringGradCAM:
    """The CAM method that a bundle's ``cam`` section names, set on ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        The network (e.g. ``Bundle.model(device)``).
    cam_settings : mapping
        A bundle's ``cam`` section: ``target_layer`` (required), ``method`` (a key of CAM_METHODS; absent means
        LEGACY_CAM_METHOD) and ``smooth_mm`` (absent means DEFAULT_SMOOTH_MM).

    Returns
    -------
    ScoringGradCAM
        An instance of ``CAM_METHODS[method]``; ``logits_and_map(x, class_idx, spacing_mm)`` gives logits and map.

    Raises
    ------
    ValueError
        For an unknown method (the message lists the known ones), a smoothing out of range, or a target layer the
        model does not have.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
    >>> cam = make_cam(net, {"method": "GradCAM-IxG", "target_layer": "1", "smooth_mm": 1.0})
    >>> type(cam).__name__, cam.method, cam.smooth_mm
    ('GradCAMIxG', 'GradCAM-IxG', 1.0)
    >>> logits, cam_map = cam.logits_and_map(torch.rand(1, 1, 8, 8, 8), class_idx=1)
    >>> tuple(logits.shape), tuple(cam_map.shape), bool(cam_map.min() >= 0)
    ((1, 2), (1, 1, 8, 8, 8), True)
    >>> make_cam(net, {"method": "ScoreCAM", "target_layer": "1"})
    Traceback (most recent call last):
    ...
    ValueError: CAM method 'ScoreCAM' is not known; use one of GradCAM, GradCAM-IxG
    """
    method, smooth_mm = cam_settings_of(cam_settings)
    return CAM_METHODS[method](model, cam_settings["target_layer"], smooth_mm)


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
