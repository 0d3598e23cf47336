"""make_phantom: one deterministic chest-CT-like case with a tumour, a TMB and a TMB-linked signal.

Pipeline: draw parameters (independent random streams per component, so e.g. the tumour never
depends on TMB) -> place a voxel grid in LPS -> sample the analytic anatomy -> vessels and airways
-> tumour -> TMB signal -> noise and PSF blur -> int16.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import anatomy as _anat
from . import tumour as _tum
from .grid import NAMED_DIRECTIONS, Grid, check_direction, rotation_matrix
from .signal import (
    DEFAULT_STRENGTH,
    HIGH_TMB_CUTOFF,
    check_signal,
    check_strength,
    draw_tmb,
    signal_amplitude,
)

SLICE_THICKNESSES_MM = (0.6, 1.0, 1.25, 2.0, 3.0, 5.0)  # the paper's reconstructions
SLICE_PROBS = (0.1, 0.3, 0.2, 0.1, 0.1, 0.2)
DIRECTION_PROBS = (0.55, 0.15, 0.15, 0.15)  # identity, flip_xy, flip_z, oblique
FOVS = ("tumour", "chest")
PERITUMORAL_HAZE_HU = 110.0  # mean HU added in the shell at amplitude 1
PERITUMORAL_TEXTURE_HU = 60.0  # sd of the fine reticular texture at amplitude 1
CORE_SHIFT_HU = -25.0
CORE_TEXTURE_HU = 45.0
DEFAULT_SHELL_MM = 5.0
DEMO_SEED = 2020


@dataclass
class PhantomCase:
    """One generated case. All positions are LPS millimetres (ITK physical frame)."""

    case_id: str
    ct: sitk.Image  # int16 HU
    tumour: sitk.Image  # uint8 0/1 on the CT grid
    signal: sitk.Image  # uint8 0/1: region carrying the TMB signal (empty for 'none')
    seed_lps: tuple  # annotator seed: true centre of mass + annotator noise
    true_com_lps: tuple  # exact centre of mass of the continuous tumour
    box_lps: tuple  # ((xmin, ymin, zmin), (xmax, ymax, zmax)), encloses the tumour with random margins
    tmb: float
    high_tmb: bool
    params: dict = field(default_factory=dict)
    lung: Optional[sitk.Image] = None  # uint8 lung mask (extra, for checks)


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(stream.encode())]))


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_triplet(name, value, kind, lo, hi):
    try:
        vals = [float(x) for x in value]
    except TypeError:
        raise ValueError(f"{name} must be 3 numbers (x, y, z), got {value!r}") from None
    if len(vals) != 3:
        raise ValueError(f"{name} must be 3 numbers (x, y, z), got {value!r}")
    if not all(math.isfinite(x) and lo <= x <= hi for x in vals):
        raise ValueError(f"{name} values must lie in [{lo}, {hi}], got {value!r}")
    if kind is int:
        if any(x != int(x) for x in vals):
            raise ValueError(f"{name} must be whole numbers of voxels, got {value!r}")
        return tuple(int(x) for x in vals)
    return tuple(vals)


def _direction(direction, acq) -> tuple:
    """(matrix, kind) for a direction argument; 'random' uses the acquisition draws."""
    if direction is None:
        direction = "identity"
    if isinstance(direction, str):
        name = acq["direction_draw"] if direction == "random" else direction
        if name == "identity":
            return np.eye(3), name
        if name == "flip_xy":
            return np.diag([-1.0, -1.0, 1.0]), name
        if name == "flip_z":
            return np.diag([1.0, 1.0, -1.0]), name
        if name == "oblique":
            return rotation_matrix(acq["oblique_axis"], acq["oblique_deg"]), name
        raise ValueError(
            f"direction must be one of {NAMED_DIRECTIONS + ('random',)} or a 3x3 matrix, got {direction!r}"
        )
    return check_direction(direction), "custom"


def _draw_acquisition(rng) -> Dict:
    sp_xy = round(float(rng.uniform(0.6, 1.0)), 4)
    sz = float(rng.choice(SLICE_THICKNESSES_MM, p=SLICE_PROBS))
    axis = rng.normal(size=3)
    return {
        "spacing_draw": [sp_xy, sp_xy, sz],
        "direction_draw": str(rng.choice(NAMED_DIRECTIONS, p=DIRECTION_PROBS)),
        "oblique_axis": (axis / np.linalg.norm(axis)).tolist(),
        "oblique_deg": float(rng.uniform(10.0, 20.0)) * (1 if rng.uniform() < 0.5 else -1),
        "noise_hu": float(rng.uniform(10.0, 20.0)),
        "psf_mm": float(rng.uniform(0.45, 0.7)),
        "fov_jitter_mm": rng.normal(0.0, 4.0, 3).tolist(),
    }


def _check_case_args(seed, signal, strength, diameter_mm, kind, tmb, fov, shell_mm, haze_hu, core_shift_hu,
                     noise_hu, shape_xyz, spacing) -> tuple:
    """Check draw_case_params' arguments (in this order); returns (seed, signal, strength, shape_xyz, spacing)."""
    seed = _check_seed(seed)
    signal = check_signal(signal)
    strength = check_strength(strength)
    if diameter_mm is not None:
        lo, hi = _tum.DIAMETER_RANGE_MM
        try:
            ok = math.isfinite(float(diameter_mm)) and lo <= float(diameter_mm) <= hi
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"diameter_mm must be a number in [{lo:g}, {hi:g}] mm, got {diameter_mm!r}")
    if kind is not None and kind not in _tum.KINDS:
        raise ValueError(f"kind must be one of {_tum.KINDS}, got {kind!r}")
    if tmb is not None:
        try:
            ok = math.isfinite(float(tmb)) and float(tmb) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"tmb must be a finite number of mutations per megabase >= 0, got {tmb!r}")
    if fov is not None and fov not in FOVS:
        raise ValueError(f"fov must be one of {FOVS}, got {fov!r}")
    if not (isinstance(shell_mm, (int, float)) and 0.5 <= float(shell_mm) <= 30.0):
        raise ValueError(f"shell_mm (peritumoral shell thickness) must be in [0.5, 30] mm, got {shell_mm!r}")
    if not (isinstance(haze_hu, (int, float)) and 0.0 <= float(haze_hu) <= 600.0):
        raise ValueError(f"haze_hu (peritumoral haze at full signal amplitude) must be in [0, 600] HU, got {haze_hu!r}")
    if not (isinstance(core_shift_hu, (int, float)) and -600.0 <= float(core_shift_hu) <= 600.0):
        raise ValueError(f"core_shift_hu (tumour HU change at full signal amplitude) must be in [-600, 600] HU, "
                         f"got {core_shift_hu!r}")
    if noise_hu is not None and not (isinstance(noise_hu, (int, float)) and 0.0 <= float(noise_hu) <= 200.0):
        raise ValueError(f"noise_hu must be in [0, 200] HU, got {noise_hu!r}")
    if shape_xyz is not None:
        shape_xyz = _check_triplet("shape_xyz", shape_xyz, int, 16, 2048)
    if spacing is not None:
        spacing = _check_triplet("spacing", spacing, float, 0.05, 20.0)
    return seed, signal, strength, shape_xyz, spacing


def _draw_tmb(rng) -> tuple:
    """The TMB stream: the paper-like TMB draw, then the latent noise ``e`` of the signal model."""
    tmb_draw = draw_tmb(rng)
    latent_e = float(rng.normal())
    return tmb_draw, latent_e


def _tmb_params(tmb, tmb_draw: float, latent_e: float, signal: str, strength: float) -> Dict:
    """The case's TMB (the given one, else the drawn one), its class and the signal amplitude it sets."""
    tmb_val = float(tmb) if tmb is not None else tmb_draw
    return {
        "tmb": tmb_val,
        "tmb_drawn": tmb_draw,
        "high_tmb": bool(tmb_val >= HIGH_TMB_CUTOFF),
        "latent_noise": latent_e,
        "signal_amplitude": float(signal_amplitude(tmb_val, strength, latent_e)) if signal != "none" else 0.0,
    }


def _field_centre(A, P, acq, fov: str, shape_xyz, spacing, reach: float) -> tuple:
    """Centre of the field of view (relative mm) and its shape: around the tumour, shifted a quarter of the way to
    its hilum (at most 25 mm), or the whole chest at the tumour's height; both moved by the drawn FOV jitter."""
    c_t = np.asarray(P["centre_rel"])
    jit = np.asarray(acq["fov_jitter_mm"])
    if fov == "tumour":
        off = 0.25 * (_anat.hila(A)[0 if P["side"] == "right" else 1] - c_t)
        n = np.linalg.norm(off)
        if n > 25.0:
            off *= 25.0 / n
        centre_rel = c_t + off + jit
        if shape_xyz is None:
            need = np.linalg.norm(centre_rel - c_t) + reach + 2.0
            nz0 = int(np.clip(round(96.0 / spacing[2]), 24, 120))
            shape_xyz = tuple(
                max(d0, int(math.ceil(2.0 * need / s)) + 1) for d0, s in zip((160, 160, nz0), spacing)
            )
    else:
        centre_rel = np.array([jit[0], jit[1], c_t[2] + jit[2]])
        if shape_xyz is None:
            shape_xyz = (512, 512, int(np.clip(round(300.0 / spacing[2]), 60, 300)))
    return centre_rel, shape_xyz


def _fit_grid(c0, centre_rel, c_t, shape_xyz, spacing, dmat, reach: float, shell_mm) -> Grid:
    """The voxel grid centred on the field, else on the tumour; it must hold the tumour and its shell."""
    grid = Grid.centred(c0 + centre_rel, shape_xyz, spacing, dmat)
    lo, hi = c0 + c_t - reach, c0 + c_t + reach
    if not grid.contains_box(lo, hi):
        grid = Grid.centred(c0 + c_t, shape_xyz, spacing, dmat)  # try centring on the tumour
        if not grid.contains_box(lo, hi):
            ext = np.asarray(shape_xyz) * np.asarray(spacing)
            raise ValueError(
                f"the field of view {np.round(ext, 1).tolist()} mm (shape_xyz x spacing) cannot hold the tumour and "
                f"its {shell_mm:g} mm shell ({2 * reach:.0f} mm across); enlarge shape_xyz or spacing, or pass a "
                "smaller diameter_mm"
            )
    return grid


def _grid_params(grid: Grid) -> Dict:
    return {
        "shape_xyz": [int(s) for s in grid.shape_xyz],
        "spacing": [float(s) for s in grid.spacing],
        "origin": [float(o) for o in grid.origin],
        "direction": [float(x) for x in grid.direction.ravel()],
    }


def draw_case_params(
    seed: int = 0,
    *,
    shape_xyz=None,
    spacing=None,
    direction=None,
    tmb: Optional[float] = None,
    signal: str = "peritumoral",
    strength: float = DEFAULT_STRENGTH,
    diameter_mm: Optional[float] = None,
    kind: Optional[str] = None,
    spiculated: Optional[bool] = None,
    side: Optional[str] = None,
    fov: Optional[str] = None,
    shell_mm: float = DEFAULT_SHELL_MM,
    noise_hu: Optional[float] = None,
    haze_hu: float = PERITUMORAL_HAZE_HU,
    core_shift_hu: float = CORE_SHIFT_HU,
) -> Dict:
    """Everything random about a case, without rendering (cheap); :func:`make_phantom` renders exactly this.

    Each random component draws from its own stream of ``seed`` (anatomy, tumour, placement, acquisition, TMB),
    always in full, so an override (e.g. ``tmb`` or ``diameter_mm``) never changes the other components.

    Parameters
    ----------
    seed : int
        Non-negative case seed.
    shape_xyz, spacing : 3 numbers, optional
        Grid size in voxels (16-2048 each) and voxel size in mm (0.05-20). Default: ``spacing`` drawn (in-plane
        0.6-1.0 mm, slices 0.6/1/1.25/2/3/5 mm); ``shape_xyz`` a field of about 160x160x(24..120) voxels around
        the tumour, or 512x512x(60..300) for ``fov='chest'``.
    direction : str or 3x3 array, optional
        'identity' (default), 'flip_xy', 'flip_z', 'oblique', 'random' (drawn) or a direction matrix.
    tmb : float, optional
        TMB in mut/Mb (>= 0); default drawn like the paper's cohort.
    signal : {'peritumoral', 'core', 'none'}
        Where the TMB signal lives.
    strength : float
        Signal strength (>= 0); see ``signal.achievable_auc``.
    diameter_mm, kind, spiculated, side : optional
        Tumour overrides: diameter 8-60 mm, 'solid' or 'part-solid', spicules or not, 'right' or 'left' lung.
    fov : {'tumour', 'chest'}, optional
        Field of view; default 'tumour', or 'chest' when ``shape_xyz`` is given.
    shell_mm, haze_hu, core_shift_hu : float
        Peritumoral shell thickness (0.5-30 mm), its haze (0-600 HU) and the tumour's HU change for
        ``signal='core'`` (-600..600 HU), both at full amplitude.
    noise_hu : float, optional
        Image noise SD (0-200 HU); default drawn (10-20 HU).

    Returns
    -------
    dict
        The case's parameters: the arguments as used, ``tmb``, ``high_tmb``, ``signal_amplitude``, the tumour's
        ``diameter_mm``/``kind``/``spiculated``/``side``/``tumour_centre_lps``, the grid (``shape_xyz``,
        ``spacing``, ``origin``, ``direction``, ``direction_kind``), ``noise_hu``, ``psf_mm`` and the drawn
        ``anatomy`` and ``tumour`` descriptions.

    Raises
    ------
    ValueError
        If an argument is out of range, or the field of view cannot hold the tumour and its shell.
    RuntimeError
        If the drawn tumour cannot be placed inside the drawn lungs.
    """
    seed, signal, strength, shape_xyz, spacing = _check_case_args(
        seed, signal, strength, diameter_mm, kind, tmb, fov, shell_mm, haze_hu, core_shift_hu, noise_hu, shape_xyz,
        spacing)
    A = _anat.draw_anatomy(_rng(seed, "anatomy"))
    T = _tum.draw_tumour(_rng(seed, "tumour"), diameter_mm, kind, spiculated)
    P = _tum.place_tumour(A, T, _rng(seed, "placement"), side=side)
    acq = _draw_acquisition(_rng(seed, "acquisition"))
    tmb_draw, latent_e = _draw_tmb(_rng(seed, "tmb"))

    spacing = list(spacing) if spacing is not None else list(acq["spacing_draw"])
    dmat, dkind = _direction(direction, acq)
    fov = fov or ("chest" if shape_xyz is not None else "tumour")
    reach = _tum.bounding_radius(T) + float(shell_mm) + 2.0 * max(spacing)
    centre_rel, shape_xyz = _field_centre(A, P, acq, fov, shape_xyz, spacing, reach)
    c0, c_t = np.asarray(A["centre_lps"]), np.asarray(P["centre_rel"])
    grid = _fit_grid(c0, centre_rel, c_t, shape_xyz, spacing, dmat, reach, shell_mm)
    return {
        "seed": seed,
        "signal": signal,
        "strength": strength,
        "shell_mm": float(shell_mm),
        "haze_hu": float(haze_hu),
        "core_shift_hu": float(core_shift_hu),
        **_tmb_params(tmb, tmb_draw, latent_e, signal, strength),
        "diameter_mm": T["diameter_mm"],
        "kind": T["kind"],
        "spiculated": T["spiculated"],
        "side": P["side"],
        "tumour_centre_lps": (c0 + c_t).tolist(),
        "fov": fov,
        **_grid_params(grid),
        "direction_kind": dkind,
        "noise_hu": float(noise_hu) if noise_hu is not None else acq["noise_hu"],
        "psf_mm": acq["psf_mm"],
        "anatomy": A,
        "tumour": T,
    }


def _grid_of(p) -> Grid:
    return Grid(tuple(p["shape_xyz"]), tuple(p["spacing"]), tuple(p["origin"]), np.asarray(p["direction"]).reshape(3, 3))


def _smooth_noise(rng, shape, sigma_vox):
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, mode="reflect")
    sd = float(f.std())
    return f / sd if sd > 0 else f


def _kernel_energy(sigma: float, truncate: float = 3.0) -> float:
    """Sum of squared weights of scipy's 1D Gaussian kernel: the variance factor for white noise."""
    if sigma <= 0:
        return 1.0
    r = int(truncate * sigma + 0.5)
    x = np.zeros(2 * r + 1)
    x[r] = 1.0
    k = ndimage.gaussian_filter1d(x, sigma, truncate=truncate, mode="constant")
    return float(np.sum(k ** 2))


def _true_com(T, centre_rel, c0, reach) -> tuple:
    """Centre of mass (LPS) and volume (mm^3) of the continuous tumour, on a fine isotropic grid."""
    hs = float(np.clip(2.0 * reach / 80.0, 0.2, 0.8))
    n = int(math.ceil(2.0 * reach / hs)) + 1
    fine = Grid.centred(np.asarray(c0) + centre_rel, (n, n, n), (hs, hs, hs), np.eye(3))
    box = tuple(slice(0, n) for _ in range(3))
    lesion, _ = _tum.occupancy(T, fine, box, c0, centre_rel, hs)
    m = lesion >= 0.5
    com = fine.mask_points_lps(m).mean(axis=0)
    return tuple(com.tolist()), float(m.sum() * hs ** 3)


def _slabs(nk: int, nj: int, ni: int):
    """Slices along k of about 2 M voxels each: the slabs in which the big arrays are filled."""
    step = max(1, (1 << 21) // (nj * ni))
    for k0 in range(0, nk, step):
        yield slice(k0, min(nk, k0 + step))


def _render_body(grid: Grid, A, c0) -> tuple:
    """HU (float32, [k, j, i]) and lung mask of the analytic anatomy, sampled slab by slab."""
    nk, nj, ni = grid.shape_kji
    hu = np.empty((nk, nj, ni), dtype=np.float32)
    lung = np.empty((nk, nj, ni), dtype=bool)
    for sk in _slabs(nk, nj, ni):
        sl = (sk, slice(0, nj), slice(0, ni))
        u, v, w = grid.coords(sl, ref=c0, broadcast=True)
        hu[sl], lung[sl] = _anat.render_anatomy(u, v, w, A)
        del u, v, w
    return hu, lung


def _render_tumour(hu, grid: Grid, T, c0, c_t, sl_t, tex_rng, h: float) -> np.ndarray:
    """Blend the tumour into ``hu`` (in place) inside the box ``sl_t``: the solid core with a smooth
    heterogeneity from ``tex_rng``, a ground-glass rim for part-solid tumours. Returns the tumour mask on the box."""
    sp = np.asarray(grid.spacing)
    lesion, core = _tum.occupancy(T, grid, sl_t, c0, c_t, h)
    het = _smooth_noise(tex_rng, lesion.shape, 2.5 / sp[::-1])
    sub = hu[sl_t]
    solid_hu = np.float32(T["hu_solid"]) + np.float32(T["hu_heterogeneity"]) * het
    if T["kind"] == "part-solid":
        sub += lesion * (np.float32(T["ggo_add_hu"]) + 40.0 * het)
        np.minimum(sub, np.float32(60.0), out=sub, where=lesion > 0)
    sub += core * (solid_hu - sub)
    mask_t = lesion >= 0.5
    if not mask_t.any():
        raise ValueError("the tumour is smaller than one voxel on this grid; use a finer spacing or a larger diameter")
    return mask_t


def _render_signal(hu, lung, grid: Grid, p, sl_t, mask_t, tex_rng) -> np.ndarray:
    """Add the TMB signal (fine texture from ``tex_rng``, scaled by the case's amplitude) to ``hu`` in place:
    haze in the lung shell around the tumour ('peritumoral') or a shift of the tumour's HU ('core'); nothing for
    'none'. Returns the region that carries it, on the box ``sl_t``."""
    sp = np.asarray(grid.spacing)
    sub = hu[sl_t]
    amp = np.float32(p["signal_amplitude"])
    tex = _smooth_noise(tex_rng, mask_t.shape, 0.6 / sp[::-1])
    region = np.zeros(mask_t.shape, dtype=bool)
    if p["signal"] == "peritumoral":
        dist = ndimage.distance_transform_edt(~mask_t, sampling=sp[::-1])
        region = (dist > 0) & (dist <= p["shell_mm"]) & lung[sl_t]
        haze = np.float32(p.get("haze_hu", PERITUMORAL_HAZE_HU))
        sub[region] += amp * (haze + np.float32(PERITUMORAL_TEXTURE_HU) * tex[region])
    elif p["signal"] == "core":
        shift = np.float32(p.get("core_shift_hu", CORE_SHIFT_HU))
        sub[mask_t] += amp * (shift + np.float32(CORE_TEXTURE_HU) * tex[mask_t])
        region = mask_t
    return region


def _psf_sigma_vox(p, sp) -> np.ndarray:
    """The scanner's PSF as Gaussian sigmas in voxels, [k, j, i]; the slice profile widens it along z."""
    sig_mm = np.array([p["psf_mm"], p["psf_mm"], math.sqrt(p["psf_mm"] ** 2 + (sp[2] / 2.355) ** 2)])
    return (sig_mm / sp)[::-1]


def _add_quantum_noise(hu, p, sig_vox_kji, noise_rng) -> None:
    """White noise, added in place before the PSF (so that it ends up correlated like CT noise), scaled so that
    its SD after the blur is ``p['noise_hu']``."""
    gain = math.sqrt(np.prod([_kernel_energy(s) for s in sig_vox_kji]))
    sd_pre = np.float32(p["noise_hu"] / gain)
    for sl in _slabs(*hu.shape):
        hu[sl] += sd_pre * noise_rng.standard_normal(hu[sl].shape, dtype=np.float32)


def _blur(hu, sig_vox_kji) -> np.ndarray:
    return ndimage.gaussian_filter(hu, sig_vox_kji, mode="nearest", truncate=3.0)


def _to_int16_hu(out) -> np.ndarray:
    """Round and clip (in place) to the int16 HU range of a CT."""
    np.rint(out, out=out)
    np.clip(out, -1024, 3071, out=out)
    return out.astype(np.int16)


def _annotate(T, grid: Grid, mask_t, sl_t, c_t, c0, ann) -> tuple:
    """What an annotator gives: the seed (true centre of mass + noise) and a box around the tumour voxels with
    random margins, both from the ``ann`` stream. Returns (true_com, volume_mm3, seed_lps, box_lo, box_hi)."""
    true_com, volume = _true_com(T, c_t, c0, _tum.bounding_radius(T) + 1.0)
    d = T["diameter_mm"]
    seed_lps = np.asarray(true_com) + ann.normal(0.0, 1.0 + 0.03 * d, 3)
    pts = grid.mask_points_lps(mask_t, tuple(s.start for s in sl_t))
    half = grid.voxel_half_extent_lps
    margins = ann.uniform(1.0, 3.0, 6) + np.abs(ann.normal(0.0, 0.05 * d, 6))
    box_lo = pts.min(axis=0) - half - margins[:3]
    box_hi = pts.max(axis=0) + half + margins[3:]
    return true_com, volume, seed_lps, box_lo, box_hi


def _on_grid(grid: Grid, sl_t, box_mask) -> np.ndarray:
    """A uint8 mask on the whole grid from a mask on the box ``sl_t``."""
    full = np.zeros(grid.shape_kji, dtype=np.uint8)
    full[sl_t] = box_mask
    return full


def make_phantom(seed: int = 0, *, case_id: Optional[str] = None, **kwargs) -> PhantomCase:
    """Generate one chest-CT-like case with a tumour, a TMB and a TMB-linked signal.

    Same arguments, bit-identical arrays. The steps: draw the parameters (:func:`draw_case_params`), place the
    voxel grid, sample the anatomy, add vessels and airways, the tumour, the TMB signal, quantum noise and the
    scanner's blur, then the annotator's seed and box.

    Parameters
    ----------
    seed : int
        Non-negative case seed.
    case_id : str, optional
        The case's name; default ``phantom_<seed:06d>``.
    **kwargs
        Those of :func:`draw_case_params` (``shape_xyz``, ``spacing``, ``direction``, ``tmb``, ``signal``,
        ``strength``, ``diameter_mm``, ``kind``, ``spiculated``, ``side``, ``fov``, ``shell_mm``, ``haze_hu``,
        ``core_shift_hu``, ``noise_hu``), documented there.

    Returns
    -------
    PhantomCase
        The int16 CT, the tumour and signal masks (uint8, same grid), the lung mask, the annotator's seed and box,
        the true centre of mass (all LPS mm), the TMB, its class and the parameters (those of
        :func:`draw_case_params` plus ``volume_mm3``, ``equivalent_diameter_mm`` and ``mask_voxels``).

    Raises
    ------
    ValueError
        If an argument is out of range, the field of view cannot hold the tumour and its shell, or the tumour
        is smaller than one voxel on the grid.
    RuntimeError
        If the drawn tumour cannot be placed inside the drawn lungs (``write_cohort`` then takes another seed).

    Examples
    --------
    >>> case = make_phantom(7, spacing=(1.0, 1.0, 2.0), signal="core", tmb=14.2)
    >>> case.ct.GetSize(), case.ct.GetPixelIDTypeAsString()
    ((160, 160, 54), '16-bit signed integer')
    >>> idx = case.ct.TransformPhysicalPointToIndex(case.seed_lps)
    >>> all(0 <= i < n for i, n in zip(idx, case.ct.GetSize()))  # the annotator's seed lies inside the CT
    True
    >>> case.tmb, case.high_tmb, case.params["signal"]
    (14.2, True, 'core')
    """
    p = draw_case_params(seed, **kwargs)
    seed = p["seed"]
    A, T = p["anatomy"], p["tumour"]
    grid = _grid_of(p)
    c0 = np.asarray(A["centre_lps"])
    c_t = np.asarray(p["tumour_centre_lps"]) - c0
    sp = np.asarray(grid.spacing)
    h = float(np.prod(sp) ** (1.0 / 3.0))

    hu, lung = _render_body(grid, A, c0)
    _anat.render_tubes(hu, grid, c0, _anat.build_tubes(A, _rng(seed, "vessels")), h)
    reach = _tum.bounding_radius(T) + p["shell_mm"] + 2.0 * float(sp.max())
    sl_t = grid.slices_for_box(c0 + c_t - reach, c0 + c_t + reach)
    tex_rng = _rng(seed, "texture")  # the tumour's heterogeneity, then the signal's texture
    mask_t = _render_tumour(hu, grid, T, c0, c_t, sl_t, tex_rng, h)
    region = _render_signal(hu, lung, grid, p, sl_t, mask_t, tex_rng)

    sig_vox_kji = _psf_sigma_vox(p, sp)
    _add_quantum_noise(hu, p, sig_vox_kji, _rng(seed, "noise"))
    blurred = _blur(hu, sig_vox_kji)
    del hu
    ct = _to_int16_hu(blurred)
    del blurred

    true_com, volume, seed_lps, box_lo, box_hi = _annotate(T, grid, mask_t, sl_t, c_t, c0, _rng(seed, "annotator"))
    p = dict(p)
    p["volume_mm3"] = volume
    p["equivalent_diameter_mm"] = float((6.0 * volume / math.pi) ** (1.0 / 3.0))
    p["mask_voxels"] = int(mask_t.sum())
    return PhantomCase(
        case_id=case_id or f"phantom_{seed:06d}",
        ct=grid.to_image(ct),
        tumour=grid.to_image(_on_grid(grid, sl_t, mask_t)),
        signal=grid.to_image(_on_grid(grid, sl_t, region)),
        seed_lps=tuple(float(x) for x in seed_lps),
        true_com_lps=tuple(float(x) for x in true_com),
        box_lps=(tuple(float(x) for x in box_lo), tuple(float(x) for x in box_hi)),
        tmb=float(p["tmb"]),
        high_tmb=bool(p["high_tmb"]),
        params=p,
        lung=grid.to_image(lung.view(np.uint8)),
    )


DEMO_KWARGS = dict(
    shape_xyz=(384, 384, 96),
    spacing=(0.9, 0.9, 2.5),
    direction="identity",
    diameter_mm=30.0,
    kind="solid",
    spiculated=True,
    side="right",
    tmb=14.2,
    # the signal as the bundled demo model was trained on it (python -m training demo: strength 2.0, haze 300 HU,
    # 8 mm shell), so the demo shows the model on data like its own
    strength=2.0,
    haze_hu=300.0,
    shell_mm=8.0,
    signal="peritumoral",
)


def make_demo_case() -> PhantomCase:
    """The fixed demo case: whole-chest field, 30 mm spiculated solid tumour in the right lung, High-TMB.

    ``make_phantom(DEMO_SEED, case_id="tmbrb_demo", **DEMO_KWARGS)``: 384x384x96 voxels of 0.9x0.9x2.5 mm,
    TMB 14.2 and the peritumoral signal as the bundled demo model was trained on it.

    Returns
    -------
    PhantomCase
        The demo case, bit-identical on every call.
    """
    return make_phantom(DEMO_SEED, case_id="tmbrb_demo", **DEMO_KWARGS)
