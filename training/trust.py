"""What the training data looked like, written into a bundle: deep-feature summary, acquisition ranges, spread level.

`python -m training ood-summary --bundle B --manifest M` (and `export`, from the run's manifest) runs the bundle's
own network on the manifest's training and validation cases, exactly as the engine crops them, and writes into the
bundle's metadata (``tmbrb.ood``, ``tmbrb.acquisition``, ``tmbrb.tta.spread_flag_level``; see TMBRBLib/ood.py). The
weights are not touched: their file and sha256 stay as they were.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
import torch

from TMBRBLib.bundle import Bundle, load_bundle, sha256_file, write_metadata
from TMBRBLib.crop import fraction_outside_scan
from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.io import read_ct
from TMBRBLib.model import capture_deep_features
from TMBRBLib.ood import (OOD_COMPONENTS, OOD_LAYER, OOD_QUANTILE, acquisition_stats, fit_acquisition_ranges,
                          fit_feature_summary)
from TMBRBLib.pipeline import model_inputs

from .manifest import read_manifest, select


def case_statistics(bundle: Bundle, ct: sitk.Image, box, n_shifts: Optional[int] = 0,
                    layer: Optional[str] = OOD_LAYER) -> Dict:
    """One case as the engine sees it: the unshifted box's deep features and score, the spread of the score over
    the box and its ``n_shifts`` shifted copies (None: the bundle's), and the acquisition quantities.

    Parameters
    ----------
    bundle : Bundle
        The loaded bundle (its network, crop policy and shifts).
    ct : SimpleITK.Image
        The CT.
    box : Box
        The tumour's box, LPS mm.
    n_shifts : int or None
        Test-time shifts (0: the unshifted box only).
    layer : str or None
        The layer whose spatially averaged output are the features (None: the final pooled features).

    Returns
    -------
    dict
        ``features`` (1-D array), ``score``, ``tta_std``, ``acquisition`` (``TMBRBLib.ood.acquisition_stats``).
    """
    meta = bundle.tmbrb
    base, crop_img, grid, _offsets, shifted = model_inputs(ct, box, meta, n_shifts)
    net = bundle.model("cpu")
    cls = int(meta["cam"].get("class_index", 1))
    x = torch.from_numpy(np.stack([base] + list(shifted)))[:, None]
    with capture_deep_features(net, layer) as feats, torch.no_grad():
        probs = torch.softmax(net(x).float(), 1)[:, cls].numpy()
    if not feats:
        raise TMBRBInputError("The bundle's network gives no deep features.",
                              "Use a network with a deep-feature layer (TMBRBLib.model.deep_feature_layer).")
    return {"features": feats[0][0].float().numpy(), "score": float(probs[0]), "tta_std": float(probs.std()),
            "acquisition": acquisition_stats(ct.GetSpacing(), sitk.GetArrayViewFromImage(crop_img), box.size,
                                             fraction_outside_scan(ct, grid))}


def _split_statistics(bundle: Bundle, cases, n_shifts, what: str, progress: bool, layer=OOD_LAYER) -> List[Dict]:
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cases), desc=what, leave=False, dynamic_ncols=True)
    for c in cases:
        ct, _ = read_ct(c.ct)
        rows.append({"label": c.label, **case_statistics(bundle, ct, c.box, n_shifts, layer)})
        bar and bar.update(1)
    bar and bar.close()
    return rows


def fit_trust_summary(bundle: Bundle, manifest, n_components: int = OOD_COMPONENTS,
                      quantile: float = OOD_QUANTILE, progress: bool = True, tmb_threshold: float = 10.0,
                      layer: str = OOD_LAYER) -> Dict:
    """The ``ood``, ``acquisition`` and spread level for ``bundle`` from the manifest's train and val splits.

    The feature means, covariance and acquisition ranges come from the training split; the distance threshold and
    the spread level (the same quantile of the validation cases' spreads over the bundle's shifted boxes) from
    the validation split.

    Returns
    -------
    dict
        ``{"ood": ..., "calibration": ..., "acquisition": ..., "spread_flag_level": float, "provenance": ...}``;
        ``calibration`` is the temperature fitted on the validation cases' unshifted scores.

    Raises
    ------
    TMBRBInputError
        When the manifest has too few training (4) or validation (2) cases.
    """
    cases = read_manifest(manifest, tmb_threshold)
    train, val = select(cases, "train"), select(cases, "val")
    if len(train) < 4 or len(val) < 2:
        raise TMBRBInputError(f"The manifest has {len(train)} training and {len(val)} validation cases; the "
                              "summary needs at least 4 and 2.", "Give the manifest the model was trained on.")
    t0 = time.perf_counter()
    tr = _split_statistics(bundle, train, 0, "training features", progress, layer)
    va = _split_statistics(bundle, val, None, "validation features and spreads", progress, layer)
    ood = fit_feature_summary(np.stack([r["features"] for r in tr]), [r["label"] for r in tr],
                              np.stack([r["features"] for r in va]), n_components, quantile)
    ood["layer"] = layer
    spreads = np.array([r["tta_std"] for r in va])
    from .calibration import fit_temperature
    temperature = fit_temperature([r["label"] for r in va], [r["score"] for r in va])
    return {"ood": ood, "calibration": {"method": "temperature scaling", "fitted_on": "validation", **temperature}, "acquisition": fit_acquisition_ranges([r["acquisition"] for r in tr]),
            "spread_flag_level": float(np.quantile(spreads, quantile)),
            "provenance": {"manifest": Path(manifest).name, "manifest_sha256": sha256_file(manifest),
                           "n_train": len(tr), "n_val": len(va), "seconds": round(time.perf_counter() - t0, 1),
                           "spread_level_rule": f"{quantile:g} quantile of the validation cases' spreads"}}


def write_trust_summary(bundle_dir, manifest, n_components: int = OOD_COMPONENTS, quantile: float = OOD_QUANTILE,
                        progress: bool = True, layer: str = OOD_LAYER) -> Bundle:
    """Fit the summary for the bundle in ``bundle_dir`` and write it into its metadata; the weights stay as they are.

    Returns the bundle loaded again (verified against the unchanged weights' sha256).
    """
    bundle = load_bundle(bundle_dir)
    weights_sha = bundle.sha256
    if layer not in dict(bundle.model("cpu").named_modules()):
        raise TMBRBInputError(f"'{layer}' is not a layer of the bundle's network.",
                              "Give --layer features.transition1.relu or another name from model.named_modules().")
    s = fit_trust_summary(bundle, manifest, n_components, quantile, progress, layer=layer)
    meta = bundle.metadata
    t = meta["tmbrb"]
    t["ood"] = {**s["ood"], "provenance": s["provenance"]}
    t["acquisition"] = s["acquisition"]
    t.setdefault("tta", {})["spread_flag_level"] = s["spread_flag_level"]
    t["tta"]["spread_flag_rule"] = s["provenance"]["spread_level_rule"]
    t["calibration"] = s["calibration"]
    write_metadata(bundle_dir, meta)  # and the bundle's checksums
    out = load_bundle(bundle_dir)
    assert out.sha256 == weights_sha  # the weights were not touched
    return out
