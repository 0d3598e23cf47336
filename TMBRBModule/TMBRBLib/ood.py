"""Is this case like the model's training data? Deep-feature distance, acquisition ranges, box-placement spread.

A bundle may carry, in its metadata's ``tmbrb`` section, what its training data looked like (written by
``python -m training ood-summary`` or at export):

- ``ood``: a compact summary of the training split's deep features at ``ood.layer`` (for new summaries the spatially
  averaged output of transition1, 224 channels; a summary without ``layer`` is of the 1020 pooled features, the
  classifier's input): a PCA to ``k`` components, the class-conditional means there and one shared covariance
  shrunk by Ledoit-Wolf; the distance of a case is the Mahalanobis distance to the nearest class mean (Lee et al.,
  NeurIPS 2018, "A simple unified framework for detecting out-of-distribution samples", at the last layer), and the
  threshold is a high percentile (95th) of the validation split's distances.
- ``acquisition``: the training split's ranges of slice thickness, in-plane pixel spacing, the crop's HU
  percentiles, the box's largest side and the share of the field of view outside the scan.
- ``tta.spread_flag_level``: the box-placement spread (SD of the score over the box and its shifted copies) above
  which a result is flagged.

A bundle without them gives ``available: False`` and the result says "not available", never "in distribution".

>>> assess_features(None, np.zeros(1020))["available"]
False
"""

from __future__ import annotations

import base64
from typing import Dict, List, Optional, Sequence

import numpy as np

OOD_METHOD = "Mahalanobis, nearest class mean, PCA + Ledoit-Wolf shared covariance (Lee et al. 2018)"
OOD_QUANTILE = 0.95
OOD_COMPONENTS = 32
# the layer whose spatially averaged output is summarised: transition1 (224 channels at 16^3) flagged +200 HU
# phantoms and the real CTs where the final pooled features did not (docs/training.md); a summary without a
# ``layer`` is for the final pooled features (``model.deep_feature_layer``)
OOD_LAYER = "features.transition1.relu"
ACQUISITION_QUANTITIES = {
    # key: (what it is, unit)
    "slice_mm": ("slice thickness", "mm"),
    "pixel_mm": ("pixel spacing", "mm"),
    "crop_hu_p05": ("5th HU percentile of the crop", "HU"),
    "crop_hu_p50": ("median HU of the crop", "HU"),
    "crop_noise_hu": ("image noise of the crop (robust SD of its fine detail)", "HU"),
    "box_mm": ("largest box side", "mm"),
    "fov_outside": ("share of the field of view outside the scan", ""),
}
NOT_AVAILABLE = "not available"


def encode_array(a: np.ndarray) -> Dict:
    """A float array as JSON: ``{"dtype": "float32", "shape": [...], "base64": ...}`` (little-endian float32).

    >>> decode_array(encode_array(np.arange(6.0).reshape(2, 3))).tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "float32", "shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: Dict) -> np.ndarray:
    """The array that :func:`encode_array` wrote, as float64."""
    a = np.frombuffer(base64.b64decode(d["base64"]), dtype="<f4")
    return a.reshape(d["shape"]).astype(np.float64)


def fit_feature_summary(train_features: np.ndarray, train_labels: Sequence[int], val_features: np.ndarray,
                        n_components: int = OOD_COMPONENTS, quantile: float = OOD_QUANTILE) -> Dict:
    """The compact summary of the training split's deep features and the threshold from the validation split.

    Parameters
    ----------
    train_features : array (n_train, n_features)
        Deep features of the training cases (unshifted boxes).
    train_labels : sequence of int
        Their classes (0 Low-TMB, 1 High-TMB).
    val_features : array (n_val, n_features)
        Deep features of the validation cases: their distances set the threshold.
    n_components : int
        PCA components kept (fewer when there are fewer training cases).
    quantile : float
        The threshold is this quantile of the validation distances.

    Returns
    -------
    dict
        JSON-ready: ``method``, ``pca_mean``, ``components``, ``class_means``, ``precision`` (encoded arrays),
        ``threshold``, ``quantile``, ``n_train``, ``n_val``, ``n_components``, ``explained_variance``.

    Raises
    ------
    ValueError
        With fewer than 4 training or 2 validation cases, or features of another length in the two splits.
    """
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    x = np.asarray(train_features, np.float64)
    v = np.asarray(val_features, np.float64)
    y = np.asarray(train_labels, int)
    if x.ndim != 2 or len(x) < 4 or v.ndim != 2 or len(v) < 2 or x.shape[1] != v.shape[1] or len(y) != len(x):
        raise ValueError(f"need >= 4 training and >= 2 validation feature vectors of one length, got "
                         f"{x.shape} and {v.shape} (labels {len(y)})")
    k = int(max(1, min(n_components, len(x) - 2, x.shape[1])))
    pca = PCA(n_components=k, svd_solver="full").fit(x)
    z = pca.transform(x)
    classes = sorted(set(y.tolist()))
    means = np.stack([z[y == c].mean(0) for c in classes])
    centred = z - means[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    summary = {"method": OOD_METHOD, "n_components": k, "classes": classes,
               "explained_variance": float(pca.explained_variance_ratio_.sum()),
               "pca_mean": encode_array(pca.mean_), "components": encode_array(pca.components_),
               "class_means": encode_array(means), "precision": encode_array(precision),
               "n_train": int(len(x)), "n_val": int(len(v)), "quantile": float(quantile)}
    d_val = feature_distance(summary, v)
    summary["threshold"] = float(np.quantile(d_val, quantile))
    summary["val_distance_median"] = float(np.median(d_val))
    summary["train_distance_median"] = float(np.median(feature_distance(summary, x)))
    return summary


def feature_distance(summary: Dict, features: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each feature vector (n, n_features) to the nearest class mean, in the summary's
    PCA space with its shared shrunk covariance; shape (n,)."""
    f = np.atleast_2d(np.asarray(features, np.float64))
    mean, comps = decode_array(summary["pca_mean"]), decode_array(summary["components"])
    means, prec = decode_array(summary["class_means"]), decode_array(summary["precision"])
    if f.shape[1] != mean.shape[0]:
        raise ValueError(f"features of length {f.shape[1]}, the summary is for {mean.shape[0]}")
    z = (f - mean) @ comps.T
    diff = z[:, None, :] - means[None, :, :]
    d2 = np.einsum("ncj,jk,nck->nc", diff, prec, diff)
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def assess_features(summary: Optional[Dict], features: Optional[np.ndarray]) -> Dict:
    """The result's ``ood`` entry: ``available``, and with a summary ``distance``, ``threshold``, ``flag``.

    Parameters
    ----------
    summary : dict or None
        The bundle's ``tmbrb.ood`` section (None for a bundle without it).
    features : array or None
        The unshifted box's deep features (None when the network gives none).

    Returns
    -------
    dict
        ``{"available": False, "reason": ...}``, or ``{"available": True, "distance", "threshold", "flag",
        "quantile", "method"}`` where ``flag`` is True when the distance is above the threshold.
    """
    if not summary:
        return {"available": False, "reason": "the model bundle has no summary of its training data's features"}
    if features is None:
        return {"available": False, "reason": "the network gives no deep features"}
    try:
        d = float(feature_distance(summary, features)[0])
        thr = float(summary["threshold"])
        if not (np.isfinite(d) and np.isfinite(thr)):
            raise ValueError("a distance or threshold that is not a finite number")
    except (KeyError, ValueError, TypeError, IndexError) as e:
        return {"available": False, "reason": f"the bundle's feature summary cannot be used ({e})"}
    return {"available": True, "distance": d, "threshold": thr, "flag": bool(d > thr),
            "quantile": float(summary.get("quantile", OOD_QUANTILE)), "method": summary.get("method", OOD_METHOD)}


def acquisition_stats(spacing_xyz: Sequence[float], crop_hu: np.ndarray, box_size_mm: Sequence[float],
                      fov_outside: float) -> Dict[str, float]:
    """The quantities that ``ACQUISITION_QUANTITIES`` names, for one case.

    Parameters
    ----------
    spacing_xyz : 3 floats
        The CT's voxel spacing (x, y, z), mm.
    crop_hu : array
        The model's crop in HU (before the window), e.g. ``sitk.GetArrayViewFromImage(result.crop)``.
    box_size_mm : 3 floats
        The box's sides, mm.
    fov_outside : float
        Share of the field of view outside the scan (``crop.fraction_outside_scan``).

    Examples
    --------
    >>> s = acquisition_stats((0.7, 0.7, 1.25), np.full((4, 4, 4), -800.0), (20, 22, 18), 0.0)
    >>> s["slice_mm"], s["pixel_mm"], s["crop_hu_p50"], s["box_mm"]
    (1.25, 0.7, -800.0, 22.0)
    """
    hu = np.asarray(crop_hu, np.float64)
    p05, p50 = np.percentile(hu, [5, 50])
    return {"slice_mm": float(spacing_xyz[2]), "pixel_mm": float(max(spacing_xyz[0], spacing_xyz[1])),
            "crop_hu_p05": float(p05), "crop_hu_p50": float(p50), "crop_noise_hu": crop_noise_hu(hu),
            "box_mm": float(max(box_size_mm)),
            "fov_outside": float(fov_outside)}


def crop_noise_hu(crop_hu: np.ndarray) -> float:
    """Image noise of a crop: 1.4826 x the median absolute difference between the crop and its Gaussian smoothing
    (1 voxel), a robust SD of the fine detail that a sharp reconstruction kernel or a low dose raises.

    >>> rng = np.random.default_rng(0)
    >>> smooth, noisy = np.zeros((32, 32, 32)), rng.normal(0, 50, (32, 32, 32))
    >>> crop_noise_hu(smooth), crop_noise_hu(noisy) > 20
    (0.0, True)
    """
    from scipy.ndimage import gaussian_filter

    hu = np.asarray(crop_hu, np.float64)
    if hu.ndim != 3 or min(hu.shape) < 3:
        return 0.0
    d = hu - gaussian_filter(hu, 1.0)
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def fit_acquisition_ranges(stats: List[Dict[str, float]], margin: float = 0.05) -> Dict:
    """The training split's range of each quantity, widened by ``margin`` of its width on each side.

    ``fov_outside`` keeps its lower end at 0 (a field of view wholly inside the scan is always fine).
    """
    if not stats:
        raise ValueError("no training cases to take acquisition ranges from")
    out = {"margin": float(margin), "n": len(stats), "ranges": {}}
    for key in ACQUISITION_QUANTITIES:
        v = np.array([s[key] for s in stats], float)
        lo, hi = float(v.min()), float(v.max())
        pad = margin * (hi - lo)
        out["ranges"][key] = [0.0 if key == "fov_outside" else lo - pad, hi + pad]
    return out


def check_acquisition(section: Optional[Dict], stats: Dict[str, float]) -> Dict:
    """The result's ``acquisition`` entry: each quantity, its training range, and which lie outside.

    >>> sec = fit_acquisition_ranges([acquisition_stats((0.7, 0.7, 1.0), np.full(8, -800.0), (20, 20, 20), 0.0),
    ...                               acquisition_stats((0.9, 0.9, 3.0), np.full(8, -700.0), (40, 40, 40), 0.0)], 0)
    >>> r = check_acquisition(sec, acquisition_stats((0.8, 0.8, 5.0), np.full(8, -750.0), (30, 30, 30), 0.0))
    >>> r["flag"], [o["key"] for o in r["outside"]]
    (True, ['slice_mm'])
    >>> check_acquisition(None, {})["available"]
    False
    """
    if not section or not section.get("ranges"):
        return {"available": False, "reason": "the model bundle has no ranges of its training data's acquisition"}
    ranges = _finite_ranges(section["ranges"])
    if ranges is None:
        return {"available": False, "reason": "the model bundle's acquisition ranges cannot be used (each must be a "
                                              "pair of finite numbers, low <= high)"}
    outside = []
    for key, (lo, hi) in ranges.items():
        value = stats.get(key)
        if value is not None and not (lo <= value <= hi):
            what, unit = ACQUISITION_QUANTITIES.get(key, (key, ""))
            outside.append({"key": key, "what": what, "unit": unit, "value": float(value), "range": [lo, hi]})
    return {"available": True, "flag": bool(outside), "outside": outside, "values": dict(stats),
            "ranges": section["ranges"]}


def _finite_ranges(ranges) -> Optional[Dict[str, List[float]]]:
    """{key: [lo, hi]} as floats, or None when any entry is not a pair of finite numbers with lo <= hi."""
    try:
        out = {str(k): [float(v[0]), float(v[1])] for k, v in dict(ranges).items() if len(v) == 2}
        if len(out) != len(ranges) or not all(np.isfinite(r).all() and r[0] <= r[1] for r in out.values()):
            return None
        return out
    except (TypeError, ValueError, IndexError):
        return None


def spread_check(tta_std: float, n_boxes: int, level: Optional[float]) -> Dict:
    """Whether the box-placement spread is above the bundle's level (``tta.spread_flag_level``).

    >>> spread_check(0.08, 9, 0.05)["flag"], spread_check(0.01, 9, 0.05)["flag"], spread_check(0.08, 9, None)["flag"]
    (True, False, None)
    >>> spread_check(0.08, 1, 0.05)["flag"] is None  # no shifted boxes: no spread to judge
    True
    """
    try:
        level = None if level is None else float(level)
    except (TypeError, ValueError):
        level = None
    if level is None or not np.isfinite(level) or level < 0 or n_boxes < 2:
        return {"level": level, "flag": None}
    return {"level": level, "flag": bool(tta_std > level)}


def apply_temperature(prob: float, temperature: float) -> float:
    """The temperature-scaled probability sigmoid(logit(prob) / temperature) (prob clipped to [1e-6, 1 - 1e-6]).

    >>> round(apply_temperature(0.9, 1.0), 6), round(apply_temperature(0.9, 2.0), 4)
    (0.9, 0.75)
    """
    p = min(max(float(prob), 1e-6), 1 - 1e-6)
    return float(1 / (1 + np.exp(-np.log(p / (1 - p)) / float(temperature))))


def calibrated(section: Optional[Dict], score: float) -> Dict:
    """The result's ``calibration`` entry: the score after the bundle's temperature scaling, when it has one."""
    if not section or not section.get("temperature"):
        return {"available": False, "reason": "the model bundle has no calibration"}
    try:
        t = float(section["temperature"])
    except (TypeError, ValueError):
        t = float("nan")
    if not (np.isfinite(t) and 0.05 <= t <= 20):  # the fit's bounds: a NaN or negative one would flip or void it
        return {"available": False, "reason": f"the model bundle's calibration temperature ({section['temperature']!r}) "
                                              "is not a number between 0.05 and 20"}
    return {"available": True, "probability": apply_temperature(score, t), "temperature": t,
            "method": section.get("method", "temperature scaling"), "fitted_on": section.get("fitted_on", "")}


def case_trust(meta: Dict, features: Optional[np.ndarray], spacing_xyz: Sequence[float], crop_hu: np.ndarray,
               box_size_mm: Sequence[float], fov_outside: float, tta_scores: Sequence[float]) -> Dict:
    """The three checks of one case, as the result dict carries them: ``ood``, ``acquisition``, ``box_placement``.

    Parameters
    ----------
    meta : dict
        The bundle's ``tmbrb`` section (``ood``, ``acquisition`` and ``tta.spread_flag_level`` are read when there).
    features : array or None
        The unshifted box's deep features.
    spacing_xyz, crop_hu, box_size_mm, fov_outside
        As for :func:`acquisition_stats`.
    tta_scores : sequence of float
        The scores of the box and its shifted copies.
    """
    scores = np.asarray(list(tta_scores), float)
    placement = spread_check(float(scores.std()) if len(scores) else 0.0, len(scores),
                             (meta.get("tta") or {}).get("spread_flag_level"))
    return {"ood": assess_features(meta.get("ood"), features),
            "acquisition": check_acquisition(meta.get("acquisition"),
                                             acquisition_stats(spacing_xyz, crop_hu, box_size_mm, fov_outside)),
            "box_placement": placement,
            "calibration": calibrated(meta.get("calibration"), float(scores[0]) if len(scores) else float("nan"))}


def trust_warnings(trust: Dict) -> List[str]:
    """Warnings for the checks that flag this case (a flagged case must not go unnoticed in any front end)."""
    out = []
    if (trust.get("ood") or {}).get("flag"):
        o = trust["ood"]
        out.append(f"This CT is unlike the model's training data (feature distance {o['distance']:.1f} > "
                   f"{o['threshold']:.1f}): interpret the score with care.")
    acq = trust.get("acquisition") or {}
    if acq.get("flag"):
        out.append("Outside the training data's acquisition ranges: " + outside_text(acq["outside"]) + ".")
    if (trust.get("box_placement") or {}).get("flag"):
        out.append("The score is sensitive to the box's placement (spread over shifted boxes above "
                   f"{trust['box_placement']['level']:.3f}): check the box.")
    return out


def outside_text(outside: List[Dict]) -> str:
    """``slice thickness 5 mm (training 0.6-3)`` for each quantity outside its range, joined by '; '."""
    parts = []
    for o in outside:
        unit = f" {o['unit']}" if o.get("unit") else ""
        lo, hi = o["range"]
        parts.append(f"{o['what']} {o['value']:.3g}{unit} (training {lo:.3g} to {hi:.3g})")
    return "; ".join(parts)
