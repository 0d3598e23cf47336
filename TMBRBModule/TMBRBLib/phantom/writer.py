"""Write phantom cases (NRRD + JSON) and whole training cohorts with a manifest CSV.

Cohort layout::

    out_dir/manifest.csv          one row per case (paths relative to out_dir)
    out_dir/cohort.json           the generation settings (a resume refuses other settings)
    out_dir/cases/<case_id>/ct.nrrd, tumour.nrrd, signal.nrrd, case.json
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .clinical import CLINICAL_COLUMNS, add_clinical_columns
from .generate import PhantomCase, _check_seed, make_phantom
from .signal import DEFAULT_STRENGTH, HIGH_TMB_CUTOFF, check_signal, check_strength

PAPER_SPLIT = {"train": 236, "validation": 26, "test": 65}
FILES = {"ct": "ct.nrrd", "mask": "tumour.nrrd", "signal_mask": "signal.nrrd", "meta": "case.json"}
MANIFEST_COLUMNS = [
    "case_id", "split", "ct", "mask", "signal_mask", "meta",
    "seed_lps_x", "seed_lps_y", "seed_lps_z",
    "box_min_x", "box_min_y", "box_min_z", "box_max_x", "box_max_y", "box_max_z",
    "com_lps_x", "com_lps_y", "com_lps_z",
    "tmb", "label", "case_seed", "signal", "strength", "signal_amplitude",
    "diameter_mm", "kind", "spiculated", "side",
    "spacing_x", "spacing_y", "spacing_z", "size_x", "size_y", "size_z", "direction_kind", "noise_hu",
] + CLINICAL_COLUMNS  # simulated clinical columns (module ``clinical``), tied to the label
_PATH_COLUMNS = ("ct", "mask", "signal_mask", "meta")
COHORT_VERSION = 2


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_image_atomic(img: sitk.Image, path: pathlib.Path) -> None:
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    sitk.WriteImage(img, str(tmp), useCompression=True)
    os.replace(tmp, path)


def _write_text_atomic(text: str, path: pathlib.Path) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_case(case: PhantomCase, out_dir, *, relative_to=None) -> Dict:
    """Write ct.nrrd (int16), tumour.nrrd, signal.nrrd (uint8) and case.json into ``out_dir``.

    Returns the manifest row; paths are absolute, or relative to ``relative_to`` when given. Each file is
    written under a temporary name and renamed, so an interrupted run never leaves a half-written file.
    """
    if not isinstance(case, PhantomCase):
        raise TypeError(f"write_case needs a PhantomCase (from make_phantom), got {type(case).__name__}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    _write_image_atomic(case.ct, paths["ct"])
    _write_image_atomic(case.tumour, paths["mask"])
    _write_image_atomic(case.signal, paths["signal_mask"])
    base = pathlib.Path(relative_to).resolve() if relative_to is not None else None

    def rel(p: pathlib.Path) -> str:
        p = p.resolve()
        return os.path.relpath(p, base).replace(os.sep, "/") if base is not None else str(p)

    p = case.params
    (lo, hi) = case.box_lps
    row = {
        "case_id": case.case_id,
        "ct": rel(paths["ct"]), "mask": rel(paths["mask"]), "signal_mask": rel(paths["signal_mask"]),
        "meta": rel(paths["meta"]),
        "seed_lps_x": case.seed_lps[0], "seed_lps_y": case.seed_lps[1], "seed_lps_z": case.seed_lps[2],
        "box_min_x": lo[0], "box_min_y": lo[1], "box_min_z": lo[2],
        "box_max_x": hi[0], "box_max_y": hi[1], "box_max_z": hi[2],
        "com_lps_x": case.true_com_lps[0], "com_lps_y": case.true_com_lps[1], "com_lps_z": case.true_com_lps[2],
        "tmb": case.tmb, "label": int(case.high_tmb), "case_seed": p["seed"],
        "signal": p["signal"], "strength": p["strength"], "signal_amplitude": p["signal_amplitude"],
        "diameter_mm": p["diameter_mm"], "kind": p["kind"], "spiculated": p["spiculated"], "side": p["side"],
        "spacing_x": p["spacing"][0], "spacing_y": p["spacing"][1], "spacing_z": p["spacing"][2],
        "size_x": p["shape_xyz"][0], "size_y": p["shape_xyz"][1], "size_z": p["shape_xyz"][2],
        "direction_kind": p["direction_kind"], "noise_hu": p["noise_hu"],
    }
    meta = {
        "case_id": case.case_id,
        "frame": "LPS millimetres (ITK physical space)",
        "seed_lps": list(case.seed_lps),
        "true_com_lps": list(case.true_com_lps),
        "box_lps": [list(lo), list(hi)],
        "tmb": case.tmb,
        "high_tmb": case.high_tmb,
        "high_tmb_cutoff": HIGH_TMB_CUTOFF,
        "params": p,
        "manifest_row": row,
    }
    _write_text_atomic(json.dumps(meta, indent=1, default=_json_default), paths["meta"])
    return row


def split_sizes(n_train: int = 236, n_val: int = 26, n_test: int = 65, scale: float = 1.0) -> Dict[str, int]:
    """Split sizes, scaled (at least 1 case per split)."""
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {n!r}")
    if not isinstance(scale, (int, float)) or not (0 < float(scale) <= 100):
        raise ValueError(f"scale must be a number in (0, 100] (1.0 = the paper's 236/26/65), got {scale!r}")
    return {k: max(1, int(round(n * float(scale)))) for k, n in
            (("train", n_train), ("validation", n_val), ("test", n_test))}


RETRY_STRIDE = 7919  # a case whose tumour cannot be placed in its drawn anatomy takes seed + 7919 * attempt
MAX_ATTEMPTS = 20


def case_seed(cohort_seed: int, index: int) -> int:
    """The make_phantom seed of case ``index`` of a cohort (before any retry; the manifest records the one used)."""
    return 100000 * int(cohort_seed) + int(index)


def stratified_split(labels, fractions, seed: int) -> np.ndarray:
    """Random train/validation/test split, stratified by label: each class is split by ``fractions`` (floor, the
    remainder to train; at least one case of the class in validation and in test while train keeps one), so every
    split keeps the cohort's High-TMB share. Deterministic in ``seed``."""
    f = np.asarray(fractions, float)
    if f.shape != (3,) or not np.all(np.isfinite(f)) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"fractions must be three numbers >= 0 (train, validation, test), got {fractions!r}")
    f = f / f.sum()
    labels = np.asarray(labels, int)
    out = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng([int(seed), 99])
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        counts = np.floor(f * len(idx)).astype(int)
        counts[0] += len(idx) - counts.sum()
        for k in (1, 2):  # a small cohort still gets each class into validation and test, taken from train
            if f[k] > 0 and counts[k] == 0 and counts[0] > 1:
                counts[k], counts[0] = 1, counts[0] - 1
        out[idx] = ["train"] * counts[0] + ["validation"] * counts[1] + ["test"] * counts[2]
    return out


def _round_row(row: Dict) -> Dict:
    """Seed, box and centre in the manifest to 0.1 micrometre (the CSV stays readable; case.json keeps all digits)."""
    return {k: (round(float(v), 4) if k.startswith(("seed_lps_", "box_", "com_lps_")) else v) for k, v in row.items()}


def _make_and_write(job) -> Dict:
    """Generate (or read back) one case of a cohort. Module-level so that a process pool can run it."""
    out, cid, seed0, signal, strength, kwargs = job
    out = pathlib.Path(out)
    cdir = out / "cases" / cid
    if all((cdir / f).exists() for f in FILES.values()):  # resumable: a finished case is read back
        return json.loads((cdir / FILES["meta"]).read_text(encoding="utf-8"))["manifest_row"]
    for attempt in range(MAX_ATTEMPTS):
        try:
            case = make_phantom(seed0 + RETRY_STRIDE * attempt, case_id=cid, signal=signal, strength=strength,
                                **kwargs)
            break
        except RuntimeError:  # the drawn tumour does not fit the drawn lungs: the next seed (recorded as case_seed)
            if attempt == MAX_ATTEMPTS - 1:
                raise
    return write_case(case, cdir, relative_to=out)


def _check_cohort_args(n, fractions, n_train, n_val, n_test, scale, signal, strength, seed, workers,
                       phantom_kwargs) -> tuple:
    """Check write_cohort's arguments before any work; returns (seed, signal, strength, n, fractions)."""
    seed = _check_seed(seed)
    signal = check_signal(signal)
    strength = check_strength(strength)
    if "tmb" in phantom_kwargs:
        raise ValueError("write_cohort draws each case's TMB; do not pass tmb (use make_phantom for a fixed TMB)")
    if n is None:
        sizes = split_sizes(n_train, n_val, n_test, scale)
        n = sum(sizes.values())
        fractions = fractions or (sizes["train"], sizes["validation"], sizes["test"])
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4:
        raise ValueError(f"a cohort needs n >= 4 cases (whole number), got {n!r}")
    fractions = tuple(float(v) for v in (fractions or (n_train, n_val, n_test)))
    stratified_split([0, 1], fractions, 0)  # checks the fractions
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    return seed, signal, strength, n, fractions


def _claim_folder(out: pathlib.Path, settings: Dict) -> None:
    """Record the cohort's settings in ``out/cohort.json``; refuse a folder that holds a cohort of other settings."""
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "cohort.json"
    if settings_path.exists():
        old = json.loads(settings_path.read_text(encoding="utf-8"))
        if json.loads(json.dumps(settings, default=_json_default)) != old:
            raise ValueError(
                f"{out} already holds a cohort made with other settings ({settings_path}: {old}); "
                "use a new folder or delete the old one to regenerate"
            )
    else:
        _write_text_atomic(json.dumps(settings, indent=1, default=_json_default), settings_path)


def _run_jobs(jobs, workers: int, progress: bool) -> list:
    """Manifest rows of the jobs, in job order: in this process, or in a pool of ``workers`` spawned processes."""
    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(total=len(jobs), desc="phantom cohort", unit="case", disable=not progress)
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(int(workers)) as pool:
            for row in pool.imap(_make_and_write, jobs, chunksize=2):
                rows.append(row)
                bar.update(1)
    else:
        for job in jobs:
            rows.append(_make_and_write(job))
            bar.update(1)
    bar.close()
    return rows


def _write_manifest(out: pathlib.Path, rows, fractions, seed: int) -> pathlib.Path:
    """Split the cases (stratified by label), add the simulated clinical columns and write ``out/manifest.csv``."""
    import pandas as pd

    add_clinical_columns(rows)
    for row, split in zip(rows, stratified_split([int(r["label"]) for r in rows], fractions, seed)):
        row["split"] = split
    df = pd.DataFrame([_round_row(r) for r in rows])[MANIFEST_COLUMNS]
    path = out / "manifest.csv"
    _write_text_atomic(df.to_csv(index=False), path)
    return path


def write_cohort(
    out_dir,
    *,
    n: Optional[int] = None,
    fractions: Optional[Sequence[float]] = None,
    n_train: int = 236,
    n_val: int = 26,
    n_test: int = 65,
    scale: float = 1.0,
    signal: str = "peritumoral",
    strength: float = DEFAULT_STRENGTH,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    **phantom_kwargs,
) -> pathlib.Path:
    """Generate a cohort of phantom cases and write ``manifest.csv`` (readable by ``python -m training``).

    Case i uses phantom seed ``100000 * seed + i`` (the next seed in steps of 7919 if its tumour cannot be
    placed). The split is stratified by label (each class split by the fractions, remainder to train), so the
    sizes can differ from the requested ones by a case or two. Resumable: cases whose files are all present are
    read back, not regenerated.

    Parameters
    ----------
    out_dir : str or path
        The cohort's folder (created); see the module docstring for its layout.
    n : int, optional
        Number of cases (>= 4), split by ``fractions``.
    fractions : 3 numbers, optional
        Train, validation, test proportions; default the paper's 236:26:65.
    n_train, n_val, n_test : int
        Without ``n``: the split sizes (default the paper's), times ``scale``.
    scale : float
        Factor on ``n_train/n_val/n_test`` (0-100].
    signal, strength
        As in :func:`make_phantom`.
    seed : int
        Cohort seed (>= 0).
    workers : int
        Processes that generate cases (>= 1); the result is the same for any number.
    progress : bool
        Show a progress bar.
    **phantom_kwargs
        Passed to :func:`make_phantom` (e.g. ``direction='random'``, ``haze_hu``); not ``tmb`` (each case draws
        its own).

    Returns
    -------
    pathlib.Path
        The manifest's path (``out_dir/manifest.csv``).

    Raises
    ------
    ValueError
        If an argument is out of range, ``tmb`` is given, or ``out_dir`` holds a cohort made with other settings.
    RuntimeError
        If a case's tumour cannot be placed in 20 attempts.
    """
    seed, signal, strength, n, fractions = _check_cohort_args(
        n, fractions, n_train, n_val, n_test, scale, signal, strength, seed, workers, phantom_kwargs)
    out = pathlib.Path(out_dir)
    _claim_folder(out, {
        "version": COHORT_VERSION, "seed": seed, "n": int(n), "fractions": list(fractions), "signal": signal,
        "strength": strength, "phantom_kwargs": phantom_kwargs,
    })
    jobs = [(str(out), f"case_{i:04d}", case_seed(seed, i), signal, strength, phantom_kwargs) for i in range(n)]
    rows = _run_jobs(jobs, workers, progress)
    return _write_manifest(out, rows, fractions, seed)


def read_manifest(path):
    """Read a cohort manifest; path columns become absolute paths (strings)."""
    import pandas as pd

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path} (write one with write_cohort)")
    df = pd.read_csv(path)
    missing = [c for c in ("case_id", "ct", "mask", "tmb", "label", "split") if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a phantom manifest: missing columns {missing}")
    for c in _PATH_COLUMNS:
        if c in df.columns:
            df[c] = [str((path.parent / p).resolve()) for p in df[c]]
    return df


def box_from_row(row) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
    """((xmin, ymin, zmin), (xmax, ymax, zmax)) LPS box of a manifest row."""
    return ((row["box_min_x"], row["box_min_y"], row["box_min_z"]), (row["box_max_x"], row["box_max_y"], row["box_max_z"]))
