"""Chest anatomy of the phantom, defined analytically in physical space.

Coordinates are (u, v, w) = LPS millimetres relative to the chest centre: u to the patient's left,
v posterior, w superior. The same anatomy comes out whatever voxel grid samples it.

Tissue (HU before PSF blur and noise): air -1000, skin +25, subcutaneous fat -100, muscle +45,
ribs +550 (costal cartilage +120), sternum/spine bone +250..+700, mediastinal fat -80, heart and
great vessels +40..+45, liver/abdomen +55, lungs about -880 (anterior) to -830 (posterior, gravity),
pulmonary vessels +40 branching from each hilum and thinning to the periphery, trachea/bronchi air.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from .grid import Grid

# ----------------------------------------------------------------------------------------------- params


def draw_anatomy(rng: np.random.Generator) -> Dict:
    """Draw one patient's body habitus. Every number is drawn, whatever is used later.

    Body layers are concentric scaled ellipses (so fat is thicker laterally than front and back, as in
    patients): skin, subcutaneous fat, muscle, rib cage, thoracic cavity with semi-axes (a_in, b_in).
    """
    a_b = rng.uniform(150.0, 175.0)  # body half width (mm)
    b_b = a_b * rng.uniform(0.66, 0.74)  # body half depth (AP)
    t_fat = rng.uniform(6.0, 18.0)
    t_mus = rng.uniform(6.0, 11.0)
    t_rib = 10.0
    f_skin = 1.0 - 2.0 / a_b
    f_fat = f_skin - t_fat / a_b
    f_mus = f_fat - t_mus / a_b
    f_cav = f_mus - t_rib / a_b
    centre = [rng.normal(0.0, 8.0), rng.normal(15.0, 8.0), rng.uniform(-260.0, -120.0)]
    w_apex = rng.uniform(125.0, 150.0)
    dome_right = rng.uniform(-70.0, -50.0)
    dome_left = dome_right - rng.uniform(8.0, 20.0)
    carina = rng.uniform(30.0, 45.0)
    return {
        "centre_lps": [float(c) for c in centre],
        "a_body": a_b,
        "b_body": b_b,
        "f_skin": f_skin,
        "f_fat": f_fat,
        "f_muscle": f_mus,
        "f_cavity": f_cav,
        "a_in": a_b * f_cav,
        "b_in": b_b * f_cav,
        "w_apex": w_apex,
        "w_lung_centre": rng.uniform(-20.0, 0.0),
        "dome_right": dome_right,
        "dome_left": dome_left,
        "w_carina": carina,
        "w_heart": dome_right + rng.uniform(25.0, 40.0),
        "rib_pitch": rng.uniform(24.0, 30.0),
        "rib_phase": rng.uniform(0.0, 1.0),
        "lung_hu": rng.uniform(-885.0, -860.0),
        "lung_gradient_hu": rng.uniform(30.0, 60.0),
    }


# --------------------------------------------------------------------------------------- analytic shapes


def _ell(u, v, a, b):
    return (u / a) ** 2 + (v / b) ** 2


def _lung_centres(A):
    return [(-0.50 * A["a_in"], "right"), (0.50 * A["a_in"], "left")]


def _mediastinum(u, v, w, A):
    a_in, b_in = A["a_in"], A["b_in"]
    med = _ell(u - 0.03 * a_in, v + 0.2 * b_in, 0.21 * a_in, 0.78 * b_in) < 1.0
    med |= (np.abs(u - 0.02 * a_in) < 0.12 * a_in) & (v > -0.2 * b_in)  # posterior mediastinum to the spine
    return med


def _heart(u, v, w, A):
    a_in, b_in = A["a_in"], A["b_in"]
    return ((u - 0.2 * a_in) / (0.42 * a_in)) ** 2 + ((v + 0.4 * b_in) / (0.5 * b_in)) ** 2 + (
        (w - A["w_heart"]) / 58.0
    ) ** 2


def _spine_centre(A):
    return 0.0, A["b_in"] - 12.0


def _aorta_desc(u, v, A):
    vs = _spine_centre(A)[1]
    return _ell(u - 24.0, v - (vs - 20.0), 12.0, 12.0)


def lung_inside(u, v, w, A, cav=None) -> np.ndarray:
    """Boolean: is the point (relative LPS mm) inside a lung? Works on arrays or scalars."""
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    a_in, b_in = A["a_in"], A["b_in"]
    if cav is None:
        cav = _ell(u, v, a_in, b_in) < 1.0
    right = u < 0
    ul = np.where(right, -0.5 * a_in, 0.5 * a_in).astype(np.float32)
    wl = np.float32(A["w_lung_centre"])
    aw = np.where(w > wl, A["w_apex"] - wl, 400.0).astype(np.float32)
    env = ((u - ul) / (0.62 * a_in)) ** 2 + ((v - 0.05 * b_in) / (1.05 * b_in)) ** 2 + ((w - wl) / aw) ** 2 < 1.0
    peak = np.where(right, A["dome_right"], A["dome_left"]).astype(np.float32)
    r2 = ((u - ul) / (0.55 * a_in)) ** 2 + (v / (0.95 * b_in)) ** 2
    dome = peak - 60.0 * r2
    lung = cav & env & (w > dome)
    lung &= ~_mediastinum(u, v, w, A)
    lung &= _heart(u, v, w, A) > 1.0
    lung &= _aorta_desc(u, v, A) > 1.0
    us, vs = _spine_centre(A)
    lung &= _ell(u - us, v - vs, 27.0, 27.0) > 1.0
    return lung


def render_anatomy(u, v, w, A):
    """HU (float32) and lung mask for coordinate arrays (relative LPS mm)."""
    a_b, b_b, a_in, b_in = A["a_body"], A["b_body"], A["a_in"], A["b_in"]
    f32 = np.float32
    put = np.copyto
    r2 = (u * f32(1.0 / a_b)) ** 2 + (v * f32(1.0 / b_b)) ** 2  # squared normalised body radius
    hu = np.full(np.broadcast_shapes(u.shape, v.shape, w.shape), -1000.0, dtype=f32)
    put(hu, f32(25.0), where=r2 < 1.0)  # skin
    put(hu, f32(-100.0), where=r2 < A["f_skin"] ** 2)  # subcutaneous fat
    put(hu, f32(45.0), where=r2 < A["f_fat"] ** 2)  # muscle
    cav = r2 < A["f_cavity"] ** 2
    ribzone = (r2 < A["f_muscle"] ** 2) & ~cav
    put(hu, f32(40.0), where=ribzone)  # intercostal muscle
    # ribs: oblique bands (posterior ends higher), cartilage anteriorly
    phase = (w - f32(17.5 / b_in) * v) * f32(1.0 / A["rib_pitch"]) + f32(A["rib_phase"])
    phase -= np.floor(phase)
    in_rib = ribzone & (phase < 11.0 / A["rib_pitch"]) & (w > -150.0) & (w < A["w_apex"] + 15.0)
    put(hu, np.where(v < -0.6 * b_in, f32(120.0), f32(550.0)), where=in_rib)
    # sternum
    put(hu, f32(330.0), where=(_ell(u, v + (b_b * A["f_muscle"] + b_in) / 2, 15.0, 6.0) < 1.0) & (w < A["w_apex"]))

    # thoracic cavity contents
    put(hu, f32(40.0), where=cav)  # soft tissue (neck, mediastinal structures)
    dome = np.where(u < 0, f32(A["dome_right"]), f32(A["dome_left"]))
    put(hu, f32(55.0), where=cav & (w < dome - 5.0))  # liver, spleen
    put(hu, f32(-80.0), where=cav & _mediastinum(u, v, w, A))  # mediastinal fat
    e_h = _heart(u, v, w, A)
    put(hu, f32(-90.0), where=e_h < 1.25)  # pericardial fat
    put(hu, f32(40.0), where=e_h < 1.0)
    put(hu, f32(45.0), where=_aorta_desc(u, v, A) < 1.0)
    put(hu, f32(35.0), where=_ell(u - 0.03 * a_in, v - (b_in - 40.0), 7.0, 6.0) < 1.0)  # oesophagus

    lung = lung_inside(u, v, w, A, cav=cav)
    grad = f32(A["lung_hu"] + 0.5 * A["lung_gradient_hu"]) + f32(0.5 * A["lung_gradient_hu"] / b_in) * np.clip(
        v, -b_in, b_in
    )
    put(hu, np.broadcast_to(grad, hu.shape), where=lung)

    # spine: vertebral body (cancellous + cortex), canal, lamina, spinous process
    us, vs = _spine_centre(A)
    e_v = _ell(u - us, v - vs, 16.0, 15.0)
    put(hu, f32(650.0), where=e_v < 1.25)
    put(hu, f32(230.0), where=e_v < 1.0)
    put(hu, f32(500.0), where=_ell(u - us, v - (vs + 27.0), 13.0, 12.0) < 1.0)
    put(hu, f32(15.0), where=_ell(u - us, v - (vs + 26.0), 7.5, 7.0) < 1.0)  # canal
    put(hu, f32(480.0), where=_ell(u - us, v - (vs + 48.0), 4.0, 12.0) < 1.0)  # spinous process
    put(hu, f32(-1000.0), where=r2 >= 1.0)
    return hu, np.broadcast_to(lung, hu.shape)


# --------------------------------------------------------------------------------------------- tubes


def hila(A) -> List[np.ndarray]:
    """Right and left hilum points (relative mm)."""
    a_in, b_in = A["a_in"], A["b_in"]
    w = A["w_carina"] - 22.0
    return [np.array([-(0.24 * a_in + 10.0), -0.02 * b_in, w]), np.array([0.30 * a_in + 10.0, -0.02 * b_in, w - 8.0])]


def _carina(A) -> np.ndarray:
    return np.array([0.0, 0.12 * A["b_in"], A["w_carina"]])


def _central_tubes(A) -> List[tuple]:
    """Trachea (wall, lumen) from above the apex to the carina."""
    top, carina = np.array([0.0, 0.05 * A["b_in"], A["w_apex"] + 60.0]), _carina(A)
    return [(top, carina, 11.5, 11.0, 30.0, "soft"), (top, carina, 9.5, 9.0, -990.0, "air")]


def _hilar_tubes(A, rng: np.random.Generator) -> tuple:
    """Main bronchi and pulmonary arteries to each hilum, and the branches that start there.

    Returns (tubes, branches): branches is a dict of arrays, one row per live branch: start ``P``, unit direction
    ``D``, radius ``R``, hilum ``H``, airway? ``AIR``, max depth ``MAXD`` and min radius ``RMIN``.
    """
    tubes: List[tuple] = []
    a_in, b_in = A["a_in"], A["b_in"]
    carina = _carina(A)
    trunk = np.array([0.10 * a_in, -0.38 * b_in, A["w_carina"] - 30.0])
    rows = []  # (start, direction, radius, hilum, airway?, max depth, min radius)

    def add(p, d, r, h, is_air, md, rm):
        rows.append((p, d / np.linalg.norm(d), r, h, is_air, md, rm))

    for side, h in enumerate(hila(A)):
        sgn = -1.0 if side == 0 else 1.0
        hb = h + np.array([0.0, 8.0, 0.0])
        tubes.append((carina, hb, 8.0, 6.5, 30.0, "soft"))
        tubes.append((carina, hb, 6.5, 5.5, -990.0, "air"))
        tubes.append((trunk, h, 11.0, 8.0, 42.0, "soft"))
        lat = np.array([sgn, 0.0, 0.0])
        dirs = [lat * 0.55 + np.array([0, -0.1, 0.83]), lat * 0.5 + np.array([0, 0.5, 0.6]),
                lat * 0.9 + np.array([0, -0.45, 0.1]), lat * 0.9 + np.array([0, 0.4, -0.1]),
                lat * 0.45 + np.array([0, 0.4, -0.8]), lat * 0.5 + np.array([0, -0.5, -0.7])]
        hv = h + np.array([0.0, -12.0, -18.0])
        for d in dirs:
            d = d / np.linalg.norm(d)
            add(h, d, rng.uniform(3.5, 5.0), h, False, 9, 0.45)  # artery
            add(hv, d + rng.normal(0.0, 0.25, 3), rng.uniform(3.5, 5.0), hv, False, 9, 0.45)  # vein
        for d in dirs[::2]:
            add(hb, d, 3.2, h, True, 2, 1.5)  # airway
    branches = {k: np.array([r[i] for r in rows]) for i, k in enumerate(("P", "D", "R", "H", "AIR", "MAXD", "RMIN"))}
    return tubes, branches


def _grow_segments(br, depth: int, A, rng: np.random.Generator, tubes: List[tuple]) -> tuple:
    """Each live branch grows one segment (4-7 radii long; cut to half where its end leaves the lungs, dropped
    where both leave), appended to ``tubes``. Returns (end points, kept?)."""
    P, D, R = br["P"], br["D"], br["R"]
    L = R * rng.uniform(4.0, 7.0, len(P)) + 2.0
    Q = P + D * L[:, None]
    Q2 = P + D * (0.5 * L)[:, None]
    ok = lung_inside(Q[:, 0], Q[:, 1], Q[:, 2], A) | (depth == 0)
    ok2 = lung_inside(Q2[:, 0], Q2[:, 1], Q2[:, 2], A)
    keep = ok | ok2
    Q = np.where(ok[:, None], Q, Q2)
    for n in np.flatnonzero(keep):
        if br["AIR"][n]:  # airway: wall then lumen
            tubes.append((P[n], Q[n], R[n] + 1.0, 0.92 * R[n] + 0.6, 30.0, "soft"))
            tubes.append((P[n], Q[n], R[n], 0.92 * R[n], -990.0, "air"))
        else:
            tubes.append((P[n], Q[n], R[n], 0.92 * R[n], 40.0, "soft"))
    return Q, keep


def _bifurcate(br, Q, rng: np.random.Generator) -> Dict:
    """Two children at each end point ``Q`` of the branches ``br``: thinner (72-86% and 55-75% of the radius),
    18-42 degrees either side of the parent in a random plane, bent away from their hilum."""
    D, R, H = br["D"], br["R"], br["H"]
    k = len(D)
    out = Q - H
    out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-9
    nrm = rng.normal(size=(k, 3))
    nrm -= np.sum(nrm * D, axis=1, keepdims=True) * D
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    fr = np.stack([rng.uniform(0.72, 0.86, k), rng.uniform(0.55, 0.75, k)])
    ang = np.deg2rad(rng.uniform(18.0, 42.0, (2, k)))
    kids = []
    for c, sgn in enumerate((1.0, -1.0)):
        dd = np.cos(ang[c])[:, None] * D + sgn * np.sin(ang[c])[:, None] * nrm + 0.3 * out
        kids.append(dd / np.linalg.norm(dd, axis=1, keepdims=True))
    children = {key: np.concatenate([br[key], br[key]]) for key in ("H", "AIR", "MAXD", "RMIN")}
    children.update(P=np.concatenate([Q, Q]), D=np.concatenate(kids), R=np.concatenate([R * fr[0], R * fr[1]]))
    return children


def _great_vessels(A) -> List[tuple]:
    """Ascending aorta, arch, descending aorta above the heart, SVC."""
    a_in, b_in = A["a_in"], A["b_in"]
    asc = np.array([-0.04 * a_in, -0.35 * b_in, A["w_heart"] + 20.0])
    arch_top = np.array([0.0, -0.05 * b_in, A["w_carina"] + 35.0])
    desc_top = np.array([24.0, _spine_centre(A)[1] - 20.0, A["w_carina"] + 20.0])
    return [
        (asc, arch_top, 15.0, 13.0, 45.0, "soft"),
        (arch_top, desc_top, 13.0, 12.0, 45.0, "soft"),
        (np.array([-0.17 * a_in, -0.22 * b_in, A["w_heart"] + 25.0]),
         np.array([-0.16 * a_in, -0.2 * b_in, A["w_apex"] + 30.0]), 9.0, 9.0, 40.0, "soft"),
    ]


def build_tubes(A, rng: np.random.Generator) -> List[tuple]:
    """Vessel and airway tubes: (p0, p1, r0, r1, hu, mode). mode 'soft' blends only into low density tissue.

    Pulmonary arteries and veins branch from each hilum (radius ~5 mm) down to ~0.5 mm at the periphery,
    grown breadth-first so that each generation is checked against the lungs in one vectorised call.
    """
    tubes = _central_tubes(A)
    hilar, br = _hilar_tubes(A, rng)
    tubes += hilar
    depth = 0
    while len(br["P"]):
        Q, keep = _grow_segments(br, depth, A, rng, tubes)
        g = keep & (br["R"] >= br["RMIN"]) & (depth < br["MAXD"])
        br = _bifurcate({k: v[g] for k, v in br.items()}, Q[g], rng)
        depth += 1
    return tubes + _great_vessels(A)


def tube_occupancy(u, v, w, p0, p1, r0, r1, h):
    """Anti-aliased occupancy in [0, 1] of a tapered tube (float32 arrays, relative mm)."""
    dx, dy, dz = (float(p1[0] - p0[0]), float(p1[1] - p0[1]), float(p1[2] - p0[2]))
    inv_l2 = 1.0 / (dx * dx + dy * dy + dz * dz + 1e-9)
    du, dv, dw = u - np.float32(p0[0]), v - np.float32(p0[1]), w - np.float32(p0[2])
    t = du * np.float32(dx * inv_l2)
    t += dv * np.float32(dy * inv_l2)
    t += dw * np.float32(dz * inv_l2)
    np.clip(t, 0.0, 1.0, out=t)
    du -= t * np.float32(dx)
    dv -= t * np.float32(dy)
    dw -= t * np.float32(dz)
    du *= du
    dv *= dv
    dw *= dw
    du += dv
    du += dw
    dist = np.sqrt(du, out=du)
    inv_h = 1.0 / h
    occ = t * np.float32((r1 - r0) * inv_h)
    occ += np.float32(r0 * inv_h + 0.5)
    occ -= dist * np.float32(inv_h)
    return np.clip(occ, 0.0, 1.0, out=occ)


def split_long_tubes(tubes, max_len_factor: float = 3.0, min_len: float = 8.0):
    """Cut long tubes into pieces no longer than max(min_len, factor * radius): smaller boxes to evaluate.

    Returns arrays (P0, P1, R0, R1, index of the source tube).
    """
    P0 = np.array([t[0] for t in tubes], dtype=float).reshape(-1, 3)
    P1 = np.array([t[1] for t in tubes], dtype=float).reshape(-1, 3)
    R0 = np.array([t[2] for t in tubes], dtype=float)
    R1 = np.array([t[3] for t in tubes], dtype=float)
    L = np.linalg.norm(P1 - P0, axis=1)
    n = np.maximum(1, np.ceil(L / np.maximum(min_len, max_len_factor * np.maximum(R0, R1)))).astype(int)
    src = np.repeat(np.arange(len(tubes)), n)
    k = np.arange(len(src)) - np.repeat(np.cumsum(n) - n, n)
    a = (k / n[src])[:, None]
    b = ((k + 1) / n[src])[:, None]
    d = (P1 - P0)[src]
    dr = (R1 - R0)[src]
    return P0[src] + a * d, P0[src] + b * d, R0[src] + a[:, 0] * dr, R0[src] + b[:, 0] * dr, src


def render_tubes(hu: np.ndarray, grid: Grid, ref, tubes, h: float) -> None:
    """Blend tubes into ``hu`` (full grid, [k, j, i]) in place, each only inside its own small index box."""
    if not tubes:
        return
    # soft tissue first, then air lumens, so that no vessel is drawn inside an airway
    tubes = [t for t in tubes if t[5] == "soft"] + [t for t in tubes if t[5] != "soft"]
    P0, P1, R0, R1, src = split_long_tubes(tubes)
    ref = np.asarray(ref, dtype=float)
    R = np.maximum(R0, R1) + h
    lo = np.minimum(P0, P1) - R[:, None] + ref
    hi = np.maximum(P0, P1) + R[:, None] + ref
    # index boxes of all pieces at once (8 corners each)
    sel = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)])
    corners = np.where(sel[None, :, :] == 0, lo[:, None, :], hi[:, None, :])
    idx = (corners - np.asarray(grid.origin)) @ np.linalg.inv(grid.matrix).T
    imin = np.maximum(np.floor(idx.min(axis=1)).astype(int) - 1, 0)
    imax = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 2, np.asarray(grid.shape_xyz))
    for n in np.flatnonzero(np.all(imax > imin, axis=1)):
        val, mode = tubes[src[n]][4], tubes[src[n]][5]
        sl = (slice(imin[n, 2], imax[n, 2]), slice(imin[n, 1], imax[n, 1]), slice(imin[n, 0], imax[n, 0]))
        u, v, w = grid.coords(sl, ref)
        occ = tube_occupancy(u, v, w, P0[n], P1[n], R0[n], R1[n], h)
        sub = hu[sl]
        occ *= sub < (-30.0 if mode == "soft" else 150.0)  # soft: into lung/fat only; air lumen: all but bone
        occ *= np.float32(val) - sub
        sub += occ
