"""The paper's comparator models on a training manifest (same splits as the TMBRB model).

* **radiomic** -- handcrafted pyradiomics features of the tumour (the manifest's mask, or the engine's seed-grown one
  when there is none), standardised on the train split, selected and fitted by an L1-penalised (LASSO) logistic
  regression whose penalty is chosen by stratified cross-validation on the train split (scikit-learn), then applied
  to every split. The extraction settings go into the output folder (``radiomics_settings.json``) and every case's
  features are cached (``cache/radiomics/<case>.json``, keyed by CT, mask and settings; for a seed-grown mask by the
  seed, box, TMBRB version and segmentation rules too), so a re-run extracts nothing.
* **clinical** -- logistic regression on the clinical columns that a univariable test on the train split relates to
  the label (Fisher's exact / chi-square test for text columns, Mann-Whitney U for numbers; p < 0.05). If none
  passes, the column with the smallest p is used and the report says so.
* **tmbrb_histology** -- logistic regression of the label on the TMBRB score and the histology column (train split).
* **diameter** / **volume** -- the tumour's maximum 3D diameter (Feret) and volume from the mask; their probability
  columns are a one-variable logistic fit on the train split (same ranking as the raw measure, up to its direction).

``fit_comparators`` returns one table, one row per case, that ``predictions.csv`` is written from: ``case, cohort
(the split), tmb, label``, one probability column per model (``tmbrb``, ``radiomic``, ``clinical``,
``tmbrb_histology``, ``diameter``, ``volume``) and the raw ``max_diameter_3d_mm``, ``volume_ml`` and
``slice_thickness_mm``; ``tmbrb analyze`` reads it (``--score radiomic``, ``--models tmbrb radiomic ...``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import SimpleITK as sitk

from TMBRBLib.errors import TMBRBInputError

from .manifest import read_manifest

MODEL_COLUMNS = ["tmbrb", "radiomic", "clinical", "tmbrb_histology", "diameter", "volume"]
MEASURE_COLUMNS = ["max_diameter_3d_mm", "volume_ml", "slice_thickness_mm"]
CLINICAL_CANDIDATES = ("histology", "smoking", "sex", "age", "stage", "ecog", "egfr")
RADIOMICS_VERSION_PIN = "pyradiomics-bhklab==3.1.4"
RADIOMICS_SETTINGS = {
    "binWidth": 25,
    "resampledPixelSpacing": [1.0, 1.0, 1.0],
    "interpolator": "sitkBSpline",
    "label": 1,
    "normalize": False,
    "correctMask": True,
    "geometryTolerance": 1e-4,
}
RADIOMICS_CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
UNIVARIABLE_ALPHA = 0.05


# ---------------------------------------------------------------- the cohort
def load_cohort(manifest, clinical_columns: Optional[Sequence[str]] = None, tmb_threshold: float = 10.0
                ) -> Tuple[pd.DataFrame, List]:
    """The manifest as a table (case, split, tmb, label, clinical columns) and its checked cases.

    Parameters
    ----------
    manifest : str or Path
        A training manifest (docs/training.md); read with `training.manifest.read_manifest`.
    clinical_columns : sequence of str, optional
        Clinical columns to use; default those of ``CLINICAL_CANDIDATES`` the manifest has.
    tmb_threshold : float
        High-TMB when ``tmb >= tmb_threshold`` (rows without a label column).

    Returns
    -------
    (pandas.DataFrame, list of Case)
        The table (index = position in the manifest) and the cases.

    Raises
    ------
    TMBRBInputError
        A named clinical column is missing or has empty cells, or a split lacks cases of both classes.
    """
    cases = read_manifest(manifest, tmb_threshold=tmb_threshold)
    header = set(cases[0].extra) if cases else set()
    if clinical_columns is None:
        clinical_columns = [c for c in CLINICAL_CANDIDATES if c in header]
    missing = [c for c in clinical_columns if c.lower() not in header]
    if missing:
        raise TMBRBInputError(f"The manifest '{manifest}' lacks the clinical column(s) {missing} "
                              f"(it has {sorted(header)}).",
                              "Add the columns, or name existing ones with --clinical-columns.")
    rows = []
    for c in cases:
        row = {"case": c.case_id, "cohort": c.split, "tmb": c.tmb, "label": c.label}
        for col in clinical_columns:
            val = c.extra.get(col.lower(), "")
            if val == "":
                raise TMBRBInputError(f"Case '{c.case_id}' has no value in the clinical column '{col}'.",
                                      "Fill every case's clinical columns (or leave that column out).")
            row[col] = val
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in clinical_columns:
        num = pd.to_numeric(df[col], errors="coerce")
        if num.notna().all():
            df[col] = num
    if set(df.loc[df["cohort"] == "train", "label"]) != {0, 1}:
        raise TMBRBInputError("The 'train' split needs both High- and Low-TMB cases to fit the comparators.",
                              "Reassign cases so that the train split holds both classes.")
    df.attrs["clinical_columns"] = list(clinical_columns)
    return df, cases


# ---------------------------------------------------------------- masks and measures
def tumour_mask(case) -> Tuple[sitk.Image, sitk.Image, str]:
    """The case's CT and tumour mask on the same grid, and where the mask came from.

    The manifest's mask (resampled to the CT grid when needed), or the engine's seed-grown segmentation inside the
    box (`TMBRBLib.regions.segment_tumour`), with the CT cropped to the segmentation's sub-grid.
    """
    from TMBRBLib.io import mask_on_ct_grid, read_ct, read_image

    ct, _ = read_ct(case.ct)
    if case.tumour is not None:
        mask, _ = read_image(case.tumour, "tumour mask")
        return ct, mask_on_ct_grid(mask, ct, "tumour mask"), "manifest"
    from TMBRBLib.regions import segment_tumour
    mask, lo, _ = segment_tumour(ct, case.seed_lps, case.box)
    sub = sitk.RegionOfInterest(ct, mask.GetSize(), [int(v) for v in lo])
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    mask.CopyInformation(sub)
    return sub, mask, "seed-grown"


def shape_measures(ct: sitk.Image, mask: sitk.Image) -> Dict[str, float]:
    """Maximum 3D diameter (Feret, mm), volume (ml) of the mask, and the CT's slice thickness (z spacing, mm)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputeFeretDiameterOn()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if 1 not in stats.GetLabels():
        raise TMBRBInputError("The tumour mask is empty.", "Check the mask or the seed of this case.")
    return {"max_diameter_3d_mm": float(stats.GetFeretDiameter(1)), "volume_ml": float(stats.GetPhysicalSize(1)) / 1000,
            "slice_thickness_mm": float(ct.GetSpacing()[2])}


def _cache_key(case, what: str, settings: Dict) -> str:
    parts = [what, json.dumps(settings, sort_keys=True)]
    for p in (case.ct, case.tumour):
        if p is not None:
            st = Path(p).stat()
            parts += [str(Path(p).resolve()), str(st.st_size), str(st.st_mtime_ns)]
    if case.tumour is None:  # a seed-grown mask: the engine's rules and version make it, so they key it too
        from TMBRBLib import __version__
        from TMBRBLib.proposal import DEFAULTS
        parts += [repr(case.seed_lps), repr(case.box.min), repr(case.box.max), __version__,
                  json.dumps(DEFAULTS, sort_keys=True, default=str)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _cached(path: Path, key: str) -> Optional[Dict]:
    if path.is_file():
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if d.get("key") == key:
            return d["values"]
    return None


def _store(path: Path, key: str, values: Dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps({"key": key, "values": values}), encoding="utf-8")
    os.replace(tmp, path)


def case_features(cases, cache_dir, *, radiomics: bool = True, settings: Optional[Dict] = None,
                  extractor: Optional[Callable] = None, progress: bool = True) -> pd.DataFrame:
    """Shape measures and (optionally) radiomic features of every case, each read from its cache when current.

    Parameters
    ----------
    cases : list of Case
        From `load_cohort`.
    cache_dir : str or Path
        ``<cache_dir>/measures/<case>.json`` and ``<cache_dir>/radiomics/<case>.json``; an entry is reused when its
        key (CT and mask files with size and mtime, seed and box, settings) matches.
    radiomics : bool
        Also extract pyradiomics features.
    settings : dict, optional
        pyradiomics settings (default ``RADIOMICS_SETTINGS``).
    extractor : callable, optional
        ``extractor(ct, mask, settings) -> dict`` (default `extract_radiomics`); tests count its calls.
    progress : bool
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per case: ``case``, the measures, ``mask_source``, and ``rad_<feature>`` columns.
    """
    from tqdm.auto import tqdm

    settings = dict(RADIOMICS_SETTINGS if settings is None else settings)
    extractor = extractor or extract_radiomics
    cache = Path(cache_dir)
    rows = []
    for case in tqdm(cases, desc="tumour features", unit="case", disable=not progress):
        safe = hashlib.sha1(case.case_id.encode()).hexdigest()[:8] + "_" + "".join(
            ch if ch.isalnum() or ch in "-_" else "_" for ch in case.case_id)[:60]
        mkey, rkey = _cache_key(case, "measures", {}), _cache_key(case, "radiomics", settings)
        measures = _cached(cache / "measures" / f"{safe}.json", mkey)
        feats = _cached(cache / "radiomics" / f"{safe}.json", rkey) if radiomics else {}
        if measures is None or feats is None:
            ct, mask, source = tumour_mask(case)
            if measures is None:
                measures = dict(shape_measures(ct, mask), mask_source=source)
                _store(cache / "measures" / f"{safe}.json", mkey, measures)
            if feats is None:
                feats = {f"rad_{k}": v for k, v in extractor(ct, mask, settings).items()}
                _store(cache / "radiomics" / f"{safe}.json", rkey, feats)
        rows.append({"case": case.case_id, **measures, **feats})
    return pd.DataFrame(rows)


def extract_radiomics(ct: sitk.Image, mask: sitk.Image, settings: Dict) -> Dict[str, float]:
    """pyradiomics features (original image; classes ``RADIOMICS_CLASSES``) of one tumour; diagnostics left out."""
    try:
        from radiomics import featureextractor, setVerbosity
    except ImportError:
        raise TMBRBInputError("The radiomic model needs pyradiomics, which is not installed.",
                              f"pip install '{RADIOMICS_VERSION_PIN}' (or: pip install 'tmbrb[paper]'), "
                              "or leave the radiomic model out (--no-radiomics).") from None
    setVerbosity(40)
    ex = featureextractor.RadiomicsFeatureExtractor(**settings)
    ex.disableAllFeatures()
    for cls in RADIOMICS_CLASSES:
        ex.enableFeatureClassByName(cls)
    out = ex.execute(sitk.Cast(ct, sitk.sitkFloat32), sitk.Cast(mask > 0, sitk.sitkUInt8))
    return {k: float(v) for k, v in out.items() if not k.startswith("diagnostics_")}


def write_settings(out_dir, settings: Optional[Dict] = None) -> Path:
    """Write the radiomic extraction settings (and the pyradiomics version) to ``radiomics_settings.json``."""
    try:
        import radiomics
        version = getattr(radiomics, "__version__", "unknown")
    except ImportError:
        version = None
    path = Path(out_dir) / "radiomics_settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings or RADIOMICS_SETTINGS, "image_types": {"Original": {}},
                                "feature_classes": list(RADIOMICS_CLASSES), "pyradiomics_version": version,
                                "selection": "StandardScaler on train, L1 logistic regression, penalty by "
                                             "stratified CV (AUC) on train"}, indent=1), encoding="utf-8")
    return path


# ---------------------------------------------------------------- models
def _train(df: pd.DataFrame) -> pd.Series:
    return df["cohort"] == "train"


def _logistic(df: pd.DataFrame, columns: Sequence[str]) -> Tuple[np.ndarray, Dict]:
    """Unpenalised logistic regression of the label on ``columns``, fitted once on the train split with
    `TMBRBLib.stats.logistic_combination` (R's glm; text columns as treatment dummies ``column[level]`` against the
    first sorted level); P(High) for every row from that fit, and the fit (coefficients with SE, p, odds ratios)."""
    from TMBRBLib.stats import logistic_combination

    r = logistic_combination(df[_train(df)], "label", list(columns), positive=1)
    coef = dict(zip(r.table["term"], r.table["coef"].astype(float)))
    return r.predict(df), {"predictors": list(columns), "intercept": coef.pop("(Intercept)"), "coefficients": coef,
                           "table": r.table.to_dict("records"), "n_train": r.n, "train_auc": r.roc.auc,
                           "train_auc_ci": [r.roc.ci_low, r.roc.ci_high]}


def _fit_logistic(out: pd.DataFrame, fits: Dict, name: str, df: pd.DataFrame, columns: Sequence[str]) -> None:
    """``out[name]`` and ``fits[name]`` from `_logistic`; a fit without a maximum-likelihood estimate (e.g. the
    predictors separate the train split perfectly) leaves the model out with a note."""
    from TMBRBLib.stats import TMBRBStatsInputError

    try:
        out[name], fits[name] = _logistic(df, columns)
    except TMBRBStatsInputError as e:
        fits["notes"].append(f"no {name} model: {e}")


def univariable_tests(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """p-value of each clinical column against the label on the train split.

    Text columns: Fisher's exact test (2x2) or chi-square; numbers: Mann-Whitney U (two-sided).

    Parameters
    ----------
    df : pandas.DataFrame
        From `load_cohort`.
    columns : sequence of str
        The clinical columns.

    Returns
    -------
    pandas.DataFrame
        ``column, test, p``, sorted by p.
    """
    from scipy import stats

    tr = df[_train(df)]
    y = tr["label"].to_numpy(int)
    rows = []
    for col in columns:
        if pd.api.types.is_numeric_dtype(tr[col]) and tr[col].nunique() > 5:
            p = stats.mannwhitneyu(tr.loc[y == 1, col], tr.loc[y == 0, col]).pvalue
            test = "Mann-Whitney U"
        else:
            table = pd.crosstab(tr[col].astype(str), y).to_numpy()
            if table.shape[0] < 2 or table.shape[1] < 2:
                p, test = 1.0, "constant on train"
            elif table.shape == (2, 2):
                p, test = stats.fisher_exact(table).pvalue, "Fisher exact"
            else:
                p, test = stats.chi2_contingency(table).pvalue, "chi-square"
        rows.append({"column": col, "test": test, "p": float(p)})
    return pd.DataFrame(rows, columns=["column", "test", "p"]).sort_values("p", kind="stable").reset_index(drop=True)


def radiomic_model(df: pd.DataFrame, features: pd.DataFrame, seed: int = 0) -> Tuple[np.ndarray, Dict]:
    """LASSO logistic regression on the standardised radiomic features (penalty by stratified CV on train).

    Parameters
    ----------
    df : pandas.DataFrame
        The cohort (``case``, ``cohort``, ``label``).
    features : pandas.DataFrame
        ``case`` and ``rad_*`` columns (`case_features`).
    seed : int
        Seed of the CV folds.

    Returns
    -------
    (numpy.ndarray, dict)
        P(High-TMB) for every row of ``df``, and the fit (selected features, C, CV AUC).
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    cols = [c for c in features.columns if c.startswith("rad_")]
    X = df[["case"]].merge(features, on="case", how="left")[cols].to_numpy(float)
    keep = np.all(np.isfinite(X), axis=0)
    tr = _train(df).to_numpy()
    keep &= X[tr].std(0) > 0
    X, cols = X[:, keep], [c for c, k in zip(cols, keep) if k]
    y = df.loc[tr, "label"].to_numpy(int)
    folds = int(min(5, np.bincount(y, minlength=2).min()))
    if folds < 2:
        raise TMBRBInputError("The train split has fewer than 2 cases of one class; the radiomic model's "
                              "cross-validation needs at least 2 of each.", "Add cases to the train split.")
    scaler = StandardScaler().fit(X[tr])
    Z = scaler.transform(X)
    with warnings.catch_warnings():  # scikit-learn 1.8 deprecates 'penalty' in favour of l1_ratios; both still work
        warnings.simplefilter("ignore", FutureWarning)
        m = LogisticRegressionCV(Cs=20, penalty="l1", solver="liblinear", scoring="roc_auc", max_iter=2000,
                                 cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).fit(Z[tr], y)
    coef = m.coef_[0]
    selected = {c: float(v) for c, v in zip(cols, coef) if v != 0}
    cv_auc = float(np.max(m.scores_[1].mean(0)))
    return m.predict_proba(Z)[:, 1], {"n_features": len(cols), "selected": selected, "C": float(m.C_[0]),
                                      "cv_folds": folds, "cv_auc": cv_auc}


def fit_comparators(df: pd.DataFrame, features: pd.DataFrame, *, clinical_columns: Optional[Sequence[str]] = None,
                    histology: str = "histology", seed: int = 0) -> Tuple[pd.DataFrame, Dict]:
    """Fit every comparator on the train split and apply it to all splits.

    Parameters
    ----------
    df : pandas.DataFrame
        `load_cohort`'s table with a ``tmbrb`` column (the TMBRB score of every case; NaN where missing).
    features : pandas.DataFrame
        `case_features`' table (measures; ``rad_*`` columns for the radiomic model).
    clinical_columns : sequence of str, optional
        Candidates of the clinical model (default ``df.attrs["clinical_columns"]`` from `load_cohort`).
    histology : str
        The histology column of the TMBRB + histology model.
    seed : int
        Seed of the radiomic model's CV folds.

    Returns
    -------
    (pandas.DataFrame, dict)
        The predictions table (``case, cohort, tmb, label`` + ``MODEL_COLUMNS`` + ``MEASURE_COLUMNS``) and a
        description of every fit (selected columns, coefficients, notes).
    """
    out = df[["case", "cohort", "tmb", "label"] + (["tmbrb"] if "tmbrb" in df.columns else [])].copy()
    out = out.merge(features[["case"] + [c for c in MEASURE_COLUMNS if c in features.columns]], on="case", how="left")
    fits: Dict[str, Dict] = {"notes": []}
    if any(c.startswith("rad_") for c in features.columns):
        out["radiomic"], fits["radiomic"] = radiomic_model(df, features, seed)
    clinical = list(df.attrs.get("clinical_columns", []) if clinical_columns is None else clinical_columns)
    if clinical:
        tests = univariable_tests(df, clinical)
        chosen = tests.loc[tests["p"] < UNIVARIABLE_ALPHA, "column"].tolist()
        if not chosen:
            chosen = tests["column"].iloc[:1].tolist()
            fits["notes"].append(f"no clinical column has p < {UNIVARIABLE_ALPHA} on the train split; the clinical "
                                 f"model uses the one with the smallest p ({chosen[0]})")
        _fit_logistic(out, fits, "clinical", df, chosen)
        fits.setdefault("clinical", {})["univariable"] = tests.to_dict("records")
    else:
        fits["notes"].append("no clinical columns in the manifest: no clinical model")
    if "tmbrb" in df.columns and histology in df.columns and df["tmbrb"].notna().all():
        _fit_logistic(out, fits, "tmbrb_histology", df, ["tmbrb", histology])
    else:
        fits["notes"].append(f"no TMBRB score for every case or no '{histology}' column: no TMBRB + histology model")
    for name, col in (("diameter", "max_diameter_3d_mm"), ("volume", "volume_ml")):
        if col in out.columns:
            _fit_logistic(out, fits, name, out, [col])
    return out[[c for c in ["case", "cohort", "tmb", "label"] + MODEL_COLUMNS + MEASURE_COLUMNS
                if c in out.columns]], fits
