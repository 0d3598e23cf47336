"""Run a bundle over a split through the engine itself (TMBRBLib.pipeline.score_case with one Scorer), so the
numbers are those a user gets: same crop, same TTA, same Grad-CAM, same mapping back to the CT grid.

Writes predictions.csv (case, tmb, label, score, TTA mean/spread, attention shares, CAM share in the known signal
region when the manifest has one, the checks against the training data) and metrics.json (AUC with 95% CI, Spearman
with TMB, CAM shares, calibration: Brier score, slope, intercept) and reliability_<split>.png.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from TMBRBLib.bundle import Bundle, load_bundle, sha256_file
from TMBRBLib.io import mask_on_ct_grid, read_ct, read_image
from TMBRBLib.pipeline import Scorer, score_case

from .manifest import read_manifest, select

PRED_COLUMNS = ["case", "split", "tmb", "label", "score", "tta_mean", "tta_std", "tta_n", "attention_tumour",
                "attention_ring", "attention_elsewhere", "cam_share_signal", "model_id", "model_notice",
                "calibrated_probability", "ood_distance", "ood_flag", "acquisition_flag"]


def cam_share(cam: sitk.Image, mask: np.ndarray) -> float:
    c = sitk.GetArrayViewFromImage(cam).astype(np.float64)
    tot = c.sum()
    return float(c[mask].sum() / tot) if tot > 0 else float("nan")


def _signal_share(cam: sitk.Image, signal_path, ct: sitk.Image) -> Optional[float]:
    """CAM share in the case's signal region; None without one (no path, or an empty mask: a 'none' phantom)."""
    if signal_path is None:
        return None
    img, _ = read_image(signal_path, "signal mask")
    if not sitk.GetArrayViewFromImage(img).any():
        return None
    return cam_share(cam, sitk.GetArrayViewFromImage(mask_on_ct_grid(img, ct)) > 0)


def auc_with_ci(labels, scores) -> Dict:
    """AUC with its 95% DeLong CI (TMBRB's statistics toolkit, as pROC), higher score = High-TMB."""
    y = np.asarray(labels, int)
    s = np.asarray(scores, float)
    if len(set(y.tolist())) < 2:
        return {"auc": None, "ci95": None, "n_high": int(y.sum()), "n_low": int((1 - y).sum()),
                "note": "only one class present"}
    from TMBRBLib.stats.roc import roc_analysis
    r = roc_analysis(y, s, direction="<")
    out = {"auc": r.auc, "ci95": [r.ci_low, r.ci_high], "ci_method": "DeLong", "n_high": int(y.sum()),
           "n_low": int((1 - y).sum()), "youden_threshold": r.youden_threshold}
    if not np.all(np.isfinite(out["ci95"])):  # as pROC: no DeLong variance from a single case of a class
        out["ci95"] = None  # (NaN would make metrics.json invalid JSON)
        out["note"] = "no DeLong CI: it needs at least two High-TMB and two Low-TMB cases"
    return out


def spearman(x, y) -> Dict:
    from scipy.stats import spearmanr
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return {"rho": None, "p": None, "n": int(ok.sum())}
    r = spearmanr(x[ok], y[ok])
    # 95% CI by Fisher's z (with the Bonett-Wright variance for Spearman)
    n = int(ok.sum())
    rho = float(r.statistic if hasattr(r, "statistic") else r[0])
    ci = None
    if n > 3 and abs(rho) < 1:
        z, se = np.arctanh(rho), np.sqrt((1 + rho ** 2 / 2) / (n - 3))
        ci = [float(np.tanh(z - 1.96 * se)), float(np.tanh(z + 1.96 * se))]
    return {"rho": rho, "ci95": ci, "p": float(r.pvalue if hasattr(r, "pvalue") else r[1]), "n": n}


def summarise(rows: List[Dict]) -> Dict:
    y = [r["label"] for r in rows]
    m = {"n": len(rows), "auc": auc_with_ci(y, [r["score"] for r in rows]),
         "auc_tta_mean": auc_with_ci(y, [r["tta_mean"] for r in rows]),
         "mean_tta_std": float(np.mean([r["tta_std"] for r in rows])) if rows else None}
    tmb = [r["tmb"] for r in rows if r["tmb"] not in (None, "")]
    if len(tmb) == len(rows):
        m["spearman_score_tmb"] = spearman([r["score"] for r in rows], tmb)
    # the map is for the High-TMB class: on High-TMB cases it shows the evidence the model found; on Low-TMB cases
    # there is little to find, so the shares are also given for the High-TMB cases alone
    for suffix, subset in (("", rows), ("_high_tmb", [r for r in rows if r["label"] == 1])):
        for key in ("attention_tumour", "attention_ring", "cam_share_signal"):
            v = np.array([r[key] for r in subset if r.get(key) not in (None, "")], float)
            v = v[np.isfinite(v)]
            if len(v):
                m[key + suffix] = {"mean": float(v.mean()), "median": float(np.median(v)),
                                   "share_of_cases_ge_0.6": float(np.mean(v >= 0.6)), "n": int(len(v))}
    return m


def _trust_columns(trust: Dict) -> Dict:
    """The result's checks against the training data as predictions.csv columns (None where not available)."""
    cal, o, acq = trust.get("calibration") or {}, trust.get("ood") or {}, trust.get("acquisition") or {}
    return {"calibrated_probability": cal.get("probability"), "ood_distance": o.get("distance"),
            "ood_flag": o.get("flag"), "acquisition_flag": acq.get("flag")}


def _calibration(rows: List[Dict], out: Path, split: str) -> Dict:
    """Calibration of the score (and of the bundle's temperature-scaled probability) with the reliability PNG."""
    from .calibration import calibration_metrics, reliability_diagram
    y = [r["label"] for r in rows]
    m = {"score": calibration_metrics(y, [r["score"] for r in rows]),
         "scale": "the score is the model's uncalibrated probability of High-TMB; the risk cut-offs are on it"}
    png = reliability_diagram(m["score"], out / f"reliability_{split}.png")
    m["reliability_png"] = png.name if png else None
    cal = [r["calibrated_probability"] for r in rows]
    if rows and all(v is not None for v in cal):
        m["temperature_scaled"] = calibration_metrics(y, cal)
    return m


def evaluate(bundle, manifest, out_dir, split: str = "test", n_shifts: Optional[int] = None, device: str = "cpu",
             limit: Optional[int] = None, progress: bool = True, tmb_threshold: float = 10.0) -> Dict:
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)  # a loaded bundle is not hashed again
    cases = select(read_manifest(manifest, tmb_threshold), split)
    if not cases:
        from TMBRBLib.errors import TMBRBInputError
        raise TMBRBInputError(f"The manifest has no '{split}' cases.", "Choose --split train, val or test.")
    if limit:
        cases = cases[:limit]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scorer = Scorer(b, device)
    rows: List[Dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cases), desc=f"evaluating {split}", leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    for c in cases:
        ct, _ = read_ct(c.ct)
        tumour = None
        if c.tumour is not None:
            tumour, _ = read_image(c.tumour, "tumour mask")
        res = score_case(ct, c.seed_lps, box_lps=(c.box.min, c.box.max), tumour_mask=tumour, scorer=scorer,
                         n_shifts=n_shifts)
        row = {"case": c.case_id, "split": c.split, "tmb": c.tmb, "label": c.label, "score": res.score,
               "tta_mean": res.tta_mean, "tta_std": res.tta_std, "tta_n": len(res.tta_scores),
               "attention_tumour": res.attention.get("tumour"), "attention_ring": res.attention.get("ring"),
               "attention_elsewhere": res.attention.get("elsewhere"),
               "cam_share_signal": _signal_share(res.cam, c.signal, ct),
               "model_id": b.tmbrb.get("model_id"), "model_notice": b.notice, **_trust_columns(res.trust)}
        rows.append(row)
        bar and bar.update(1)
    bar and bar.close()
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PRED_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else r[k]) for k in PRED_COLUMNS})
    metrics = {"split": split, "notice": b.notice, "model": b.info(), "manifest_sha256": sha256_file(manifest),
               "n_shifts": (rows[0]["tta_n"] - 1) if rows else n_shifts, "seconds": round(time.perf_counter() - t0, 1), **summarise(rows)}
    metrics["calibration"] = _calibration(rows, out, split)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics
