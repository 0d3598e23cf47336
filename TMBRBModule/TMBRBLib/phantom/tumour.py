"""The tumour: a lobulated (zonal-harmonic) body, optional spicules, solid or part-solid.

The shape is an implicit function of physical position, so the tumour mask, its exact centre of
mass and the CT agree in physical space whatever the voxel grid.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .anatomy import hila, lung_inside

DIAMETER_RANGE_MM = (8.0, 60.0)
KINDS = ("solid", "part-solid")


def _unit(rng, n):
    x = rng.normal(size=(n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def draw_tumour(rng: np.random.Generator, diameter_mm: Optional[float] = None, kind: Optional[str] = None,
                spiculated: Optional[bool] = None) -> Dict:
    """Draw the tumour's shape and density. All random numbers are drawn whatever the overrides."""
    d = float(np.clip(np.exp(rng.normal(np.log(24.0), 0.45)), *DIAMETER_RANGE_MM))
    k = "part-solid" if rng.uniform() < 0.3 else "solid"
    sp = bool(rng.uniform() < 0.45)
    n_modes = 6
    axes = _unit(rng, n_modes)
    orders = rng.integers(2, 7, size=n_modes)
    amps = rng.uniform(0.02, 0.09, size=n_modes) * (rng.uniform(0.4, 1.0))
    n_sp = int(rng.integers(6, 22))
    sp_dirs = _unit(rng, 24)
    sp_len = rng.uniform(0.25, 0.6, size=24)
    sp_rad = rng.uniform(0.6, 1.2, size=24)
    solid_fraction = rng.uniform(0.3, 0.65)
    hu_solid = rng.uniform(20.0, 45.0)
    hu_het = rng.uniform(5.0, 18.0)
    ggo_add = rng.uniform(260.0, 360.0)
    if diameter_mm is not None:
        d = float(diameter_mm)
    if kind is not None:
        k = kind
    if spiculated is not None:
        sp = bool(spiculated)
    r0 = d / 2.0
    max_len = float(np.clip(48.0 - 1.3 * r0, 3.0, 14.0))  # big tumours get shorter spicules (they must fit a lung)
    spikes = []
    if sp:
        for m in range(n_sp):
            spikes.append({
                "dir": sp_dirs[m].tolist(),
                "length_mm": float(min(max_len, sp_len[m] * r0 + 2.0)),
                "radius_mm": float(sp_rad[m]),
            })
    return {
        "diameter_mm": d,
        "kind": k,
        "spiculated": sp,
        "lobe_axes": axes.tolist(),
        "lobe_orders": orders.tolist(),
        "lobe_amplitudes": amps.tolist(),
        "spikes": spikes,
        "solid_fraction": float(solid_fraction) if k == "part-solid" else 1.0,
        "hu_solid": float(hu_solid),
        "hu_heterogeneity": float(hu_het),
        "ggo_add_hu": float(ggo_add),
    }


def _cheb(order, x):
    t0, t1 = np.ones_like(x), x
    if order == 0:
        return t0
    for _ in range(order - 1):
        t0, t1 = t1, 2 * x * t1 - t0
    return t1


def radius_function(T, n):
    """R(n) for unit direction rows ``n`` (..., 3) float32."""
    r = np.ones(n.shape[:-1], dtype=np.float32)
    for ax, o, a in zip(T["lobe_axes"], T["lobe_orders"], T["lobe_amplitudes"]):
        c = n[..., 0] * np.float32(ax[0]) + n[..., 1] * np.float32(ax[1]) + n[..., 2] * np.float32(ax[2])
        r += np.float32(a) * _cheb(int(o), c)
    return np.float32(T["diameter_mm"] / 2.0) * np.maximum(r, np.float32(0.5))


def bounding_radius(T) -> float:
    """Radius (mm) of a ball around the centre that holds the whole tumour, spicules included."""
    lob = 1.0 + float(np.sum(T["lobe_amplitudes"]))
    r = T["diameter_mm"] / 2.0 * lob
    if T["spikes"]:
        r += max(s["length_mm"] for s in T["spikes"]) + 1.5
    return float(r)


def _spike_segments(T, centre_rel):
    segs = []
    for s in T["spikes"]:
        d = np.asarray(s["dir"], dtype=np.float32)
        rd = float(radius_function(T, d[None, :])[0])
        p0 = centre_rel + d * 0.85 * rd
        p1 = centre_rel + d * (rd + s["length_mm"])
        segs.append((p0, p1, s["radius_mm"], 0.15))
    return segs


def occupancy(T, grid, box, ref, centre_rel, h):
    """(lesion, core) anti-aliased occupancies in [0, 1] on the index box ``box`` of ``grid``.

    Spicules belong to both (they are solid strands); each is evaluated only in its own small box.
    """
    from .anatomy import tube_occupancy
    from .grid import intersect_slices

    u, v, w = grid.coords(box, ref)
    qu = u - np.float32(centre_rel[0])
    qv = v - np.float32(centre_rel[1])
    qw = w - np.float32(centre_rel[2])
    rho = np.sqrt(qu * qu + qv * qv + qw * qw)
    inv = 1.0 / np.maximum(rho, np.float32(1e-6))
    n = np.stack([qu * inv, qv * inv, qw * inv], axis=-1)
    del qu, qv, qw, u, v, w
    R = radius_function(T, n)
    del n
    hh = np.float32(h)
    lesion = np.clip((R - rho) / hh + 0.5, 0.0, 1.0)
    if T["kind"] == "part-solid":
        core = np.clip((np.float32(T["solid_fraction"]) * R - rho) / hh + 0.5, 0.0, 1.0)
    else:
        core = lesion.copy()
    c = np.asarray(centre_rel, dtype=np.float32)
    ref = np.asarray(ref, dtype=float)
    for p0, p1, r0, r1 in _spike_segments(T, c):
        sub = grid.slices_for_box(np.minimum(p0, p1) - r0 - h + ref, np.maximum(p0, p1) + r0 + h + ref)
        both = intersect_slices(box, sub) if sub is not None else None
        if both is None:
            continue
        loc = both[0]
        glob = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, loc))
        su, sv, sw = grid.coords(glob, ref)
        occ = tube_occupancy(su, sv, sw, p0, p1, r0, r1, h)
        np.maximum(lesion[loc], occ, out=lesion[loc])
        np.maximum(core[loc], occ, out=core[loc])
    return lesion, core


def _fibonacci_sphere(n):
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    th = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], axis=1)


def surface_points(T, centre_rel, margin_mm: float = 0.0, n_dirs: int = 200) -> np.ndarray:
    """Points on the tumour surface pushed out by ``margin_mm`` (plus spicule tips), relative mm."""
    dirs = _fibonacci_sphere(n_dirs).astype(np.float32)
    r = radius_function(T, dirs)
    pts = [np.asarray(centre_rel) + (r[:, None] + margin_mm) * dirs]
    for p0, p1, r0, r1 in _spike_segments(T, np.asarray(centre_rel, dtype=np.float32)):
        d = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-9)
        pts.append((p1 + margin_mm * d)[None, :])
    return np.concatenate(pts, axis=0)


def place_tumour(A, T, rng: np.random.Generator, side: Optional[str] = None, margin_mm: float = 3.0) -> Dict:
    """Choose a tumour centre (relative mm) inside a lung so that the whole tumour keeps ``margin_mm`` inside it.

    Candidates are drawn uniformly in the chosen lung's bounding region and the first whose surface (every
    direction, spicule tips included, pushed out by the margin) lies in the lung is kept; if the chosen lung
    has no room (very large tumours) the other lung is tried.
    """
    side_draw = "right" if rng.uniform() < 0.55 else "left"
    if side is not None and side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left' (the patient's lung), got {side!r}")
    a_in, b_in = A["a_in"], A["b_in"]
    cand = np.stack([
        rng.uniform(0.12, 1.0, 4000) * a_in,
        rng.uniform(-1.0, 1.0, 4000) * b_in,
        rng.uniform(A["dome_right"] - 40.0, A["w_apex"] - 10.0, 4000),
    ], axis=1)
    offsets = surface_points(T, np.zeros(3), margin_mm)
    r_min = float(radius_function(T, _fibonacci_sphere(200).astype(np.float32)).min())
    sides = [side] if side is not None else [side_draw, "left" if side_draw == "right" else "right"]
    for sd in sides:
        sgn = -1.0 if sd == "right" else 1.0
        c_all = cand * np.array([sgn, 1.0, 1.0])
        hl = hila(A)[0 if sd == "right" else 1]
        for start in range(0, len(c_all), 250):
            c = c_all[start:start + 250]
            ok = lung_inside(c[:, 0], c[:, 1], c[:, 2], A)
            ok &= np.linalg.norm(c - hl, axis=1) > r_min + 15.0
            for idx in np.flatnonzero(ok):
                pts = c[idx] + offsets
                if np.all(lung_inside(pts[:, 0], pts[:, 1], pts[:, 2], A)):
                    inner = c[idx] + 0.5 * offsets
                    if np.all(lung_inside(inner[:, 0], inner[:, 1], inner[:, 2], A)):
                        return {"side": sd, "centre_rel": c[idx].tolist()}
    raise RuntimeError(
        f"could not place this {T['diameter_mm']:.0f} mm tumour inside the {' or '.join(sides)} lung of this "
        "anatomy; use a smaller diameter_mm or another seed"
    )
