"""Shared helpers for the statistics tests: R fixtures and a small synthetic cohort."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# maxstat cases of reference.json (and reference_survival.json): key, CSV, time, event, marker, minprop, maxprop
MAXSTAT_CASES = [("dlbcl_mge", "dlbcl.csv", "time", "cens", "MGE", 0.1, 0.9),
                 ("lung_age", "lung.csv", "time", "status", "age", 0.1, 0.9),
                 ("lung_karno", "lung.csv", "time", "status", "ph_karno", 0.2, 0.8)]


@lru_cache(maxsize=None)
def reference() -> dict:
    with open(FIXTURES / "reference.json") as f:
        return json.load(f)


def fixture_csv(name: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / name)


def arr(x) -> np.ndarray:
    """R JSON arrays (null = NA) to float arrays."""
    if not isinstance(x, list):
        x = [x]
    return np.array([np.nan if v is None else v for v in x], dtype=float)


def synthetic_cohort(n_pred: int = 200, n_clin: int = 123, seed: int = 1):
    """Predictions (case, score, TMB, label, cohort) and clinical rows (OS/PFS, covariates) with real signal."""
    rng = np.random.default_rng(seed)
    tmb = rng.lognormal(np.log(6), 0.7, n_pred)
    score = 1 / (1 + np.exp(-(np.log(tmb) - np.log(8)) * 2.0 - rng.normal(0, 0.8, n_pred)))
    pred = pd.DataFrame({"case": [f"P{i:04d}" for i in range(n_pred)], "score": score, "TMB": tmb,
                         "label": (tmb >= 10).astype(int),
                         "cohort": np.where(rng.random(n_pred) < 0.7, "train", "test")})
    idx = rng.choice(n_pred, n_clin, replace=False)
    s = score[idx]
    ecog = rng.choice([0, 1, 2], n_clin, p=[0.1, 0.8, 0.1])
    hz = 0.002 * np.exp(-1.2 * (s > 0.5) + 0.6 * ecog)
    os_t = rng.exponential(1 / hz)
    cens = rng.uniform(200, 1100, n_clin)
    pfs_t = os_t * rng.uniform(0.3, 0.9, n_clin)
    clin = pd.DataFrame({
        "case": pred["case"].to_numpy()[idx],
        "os_time": np.round(np.minimum(os_t, cens)), "os_event": (os_t <= cens).astype(int),
        "pfs_time": np.round(np.minimum(pfs_t, cens)), "pfs_event": (pfs_t <= cens).astype(int),
        "ecog": ecog, "sex": rng.choice(["male", "female"], n_clin, p=[0.8, 0.2]),
        "smoking": rng.choice(["never", "ever"], n_clin), "histology": rng.choice(["adeno", "squamous"], n_clin),
        "stage": rng.choice(["III", "IV"], n_clin, p=[0.15, 0.85]), "egfr": rng.choice([0, 1], n_clin, p=[0.75, 0.25]),
        "age": np.round(rng.normal(62, 10, n_clin)),
    })
    return pred, clin
