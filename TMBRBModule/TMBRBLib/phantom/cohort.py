"""Synthetic immunotherapy cohort like the paper's Table 1, with survival from known hazard ratios.

The paper's immunotherapy data set: 123 advanced NSCLC patients on anti-PD-1/PD-L1, age 61.8 +/- 10.2,
82.1% male, 62.6% current/former smokers, ECOG 0/1/2 = 8.9/84.6/6.5%, adenocarcinoma 65.0%, stage
III/IV = 14.6/85.4%, EGFR mutation 23.6%, TMBRB 0.55 +/- 0.16 (0.07-0.83). Its two-variable Cox models:
OS: TMBRB >= 0.61 HR 0.54, ECOG PS HR 2.33 per level; PFS: TMBRB > 0.46 HR 1.76, ECOG PS HR 1.90.
Medians: OS 301 vs 533 days (high vs low risk), PFS 134 vs 288 days.

Simulation (the truth is in ``df.attrs["truth"]`` and the JSON sidecar of ``write_immunotherapy_cohort``):

* categorical columns get exactly the Table-1 proportions (largest-remainder rounding, so n=123 gives
  Table 1's counts) in a random order, independently of each other; age ~ N(61.8, 10.2) clipped to 35-85;
* ``tmb`` is drawn like the TMB cohort (``signal.draw_tmb``) and ``tmbrb`` is a score in (0, 1)
  correlated with log TMB (Gaussian copula, Spearman ~ ``tmbrb_tmb_rho``), with a Beta marginal of mean
  0.55 and sd 0.16;
* OS and PFS are Weibull proportional hazards: h(t|x) = h0(t) exp(b.x), x = (risk-group indicator,
  ECOG); OS indicator ``tmbrb >= 0.61`` (log HR ln 0.54), PFS indicator ``tmbrb > 0.46`` (ln 1.76);
  baselines are set so the reference group (indicator 0, ECOG 1) has the paper's median (OS 301 days,
  PFS 288 days). The two event times share a Gaussian copula (``pfs_os_correlation``, default 1: the
  same survival quantile) and, with ``cap_pfs_at_os`` (default), PFS is capped at OS (death ends
  progression-free survival). With the defaults only the few patients whose PFS hazard is below their OS
  hazard (TMBRB <= 0.46 and ECOG 2, ~2%) are capped; a Cox fit on n=5x5000 then gives PFS HRs ~1.71
  (TMBRB) and ~1.89 (ECOG) instead of 1.76/1.90, OS HRs are unbiased. ``cap_pfs_at_os=False`` makes
  both models exactly proportional hazards (PFS may then exceed OS);
* censoring: administrative (accrual uniform over ``accrual_days``, data lock at ``accrual_days +
  min_followup_days``) and random loss to follow-up (exponential, rate ``dropout_per_year``); the same
  censoring time applies to OS and PFS.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Dict, Optional

import numpy as np

from .signal import HIGH_TMB_CUTOFF, draw_tmb, standardised_log_tmb

TABLE1 = {
    "n": 123,
    "age_mean": 61.8,
    "age_sd": 10.2,
    "sex": {"male": 0.821, "female": 0.179},
    "smoking": {"current_or_former": 0.626, "never": 0.374},
    "ecog": {0: 0.089, 1: 0.846, 2: 0.065},
    "histology": {"adenocarcinoma": 0.650, "squamous": 0.350},
    "stage": {"III": 0.146, "IV": 0.854},
    "egfr": {"wild_type": 0.764, "mutant": 0.236},
    "tmbrb_mean": 0.55,
    "tmbrb_sd": 0.16,
}

PAPER_HR = {
    "os": {"tmbrb_cutoff": 0.61, "tmbrb_rule": ">=", "tmbrb_hr": 0.54, "ecog_hr": 2.33, "ref_median_days": 301.0},
    "pfs": {"tmbrb_cutoff": 0.46, "tmbrb_rule": ">", "tmbrb_hr": 1.76, "ecog_hr": 1.90, "ref_median_days": 288.0},
}


def _exact_categories(rng, n: int, props: Dict) -> np.ndarray:
    """Exactly round(n * p) of each category (largest remainder), shuffled."""
    keys = list(props)
    p = np.array([props[k] for k in keys], dtype=float)
    p = p / p.sum()
    raw = n * p
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
    vals = np.concatenate([np.full(c, k, dtype=object) for k, c in zip(keys, counts)])
    return vals[rng.permutation(n)]


def _check_hr(name, hr) -> Dict:
    base = PAPER_HR[name]
    if hr is None:
        return dict(base)
    if not isinstance(hr, dict):
        raise ValueError(f"hr['{name}'] must be a dict with keys among {sorted(base)}, got {hr!r}")
    unknown = set(hr) - set(base)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in hr['{name}']; allowed: {sorted(base)}")
    out = dict(base)
    out.update(hr)
    for k in ("tmbrb_hr", "ecog_hr", "ref_median_days"):
        v = out[k]
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"hr['{name}']['{k}'] must be a positive number, got {v!r}")
    if not (0.0 < float(out["tmbrb_cutoff"]) < 1.0):
        raise ValueError(f"hr['{name}']['tmbrb_cutoff'] must be in (0, 1), got {out['tmbrb_cutoff']!r}")
    if out["tmbrb_rule"] not in (">=", ">"):
        raise ValueError(f"hr['{name}']['tmbrb_rule'] must be '>=' or '>', got {out['tmbrb_rule']!r}")
    return out


def _check_arguments(n, seed, hr, numbers: Dict) -> Dict:
    """Raise ValueError for a bad argument; return the hazard-ratio settings of OS and PFS (PAPER_HR + `hr`)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n (number of patients) must be a whole number >= 2, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if hr is not None and (not isinstance(hr, dict) or set(hr) - {"os", "pfs"}):
        raise ValueError(f"hr must be a dict with keys 'os' and/or 'pfs', got {hr!r}")
    cfg = {k: _check_hr(k, (hr or {}).get(k)) for k in ("os", "pfs")}
    ranges = {"weibull_shape": (0.2, 5.0), "pfs_os_correlation": (0.0, 1.0), "accrual_days": (1.0, 1e5),
              "min_followup_days": (0.0, 1e5), "dropout_per_year": (0.0, 10.0), "tmbrb_tmb_rho": (-0.99, 0.99)}
    for name, (lo, hi) in ranges.items():
        val = numbers[name]
        if not isinstance(val, (int, float)) or not (lo <= float(val) <= hi):
            raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {val!r}")
    return cfg


def _table1_columns(rng, n: int):
    """patient_id, age and the categorical columns with Table 1's proportions."""
    import pandas as pd

    df = pd.DataFrame({"patient_id": [f"ICI{i + 1:04d}" for i in range(n)]})
    df["age"] = np.round(np.clip(rng.normal(TABLE1["age_mean"], TABLE1["age_sd"], n), 35, 85), 0).astype(int)
    for col in ("sex", "smoking", "ecog", "histology", "stage", "egfr"):
        df[col] = _exact_categories(rng, n, TABLE1[col])
    df["ecog"] = df["ecog"].astype(int)
    return df


def _add_tmb_and_score(df, rng, cfg: Dict, rho: float) -> Dict:
    """Add tmb, high_tmb, the TMBRB-like score and its OS/PFS risk groups; return the score's marginal (truth).

    The score has a Beta marginal with Table 1's mean and sd and a Gaussian copula (correlation `rho`) with the
    standardised log TMB.
    """
    from scipy import stats

    n = len(df)
    tmb = draw_tmb(rng, n)
    m, s = TABLE1["tmbrb_mean"], TABLE1["tmbrb_sd"]
    k = m * (1 - m) / s ** 2 - 1
    a_beta, b_beta = m * k, (1 - m) * k
    z = rho * standardised_log_tmb(tmb) + math.sqrt(1 - rho ** 2) * rng.normal(size=n)
    score = stats.beta.ppf(stats.norm.cdf(z), a_beta, b_beta)
    df["tmb"] = tmb
    df["high_tmb"] = (tmb >= HIGH_TMB_CUTOFF).astype(int)
    df["tmbrb"] = np.round(score, 4)
    for name in ("os", "pfs"):
        c = cfg[name]
        high = df["tmbrb"] >= c["tmbrb_cutoff"] if c["tmbrb_rule"] == ">=" else df["tmbrb"] > c["tmbrb_cutoff"]
        df[f"tmbrb_{name}_high"] = high.astype(int)
    return {"marginal": "beta", "a": a_beta, "b": b_beta, "copula_rho_with_std_log_tmb": rho}


def _event_times(df, rng, cfg: Dict, kshape: float, pfs_os_correlation: float):
    """Uncensored OS and PFS times (days) from the Weibull proportional-hazards models; returns (times, truth).

    H(t|x) = lam * exp(b.x) * t^k, with lam set so that the reference group (indicator 0, ECOG 1) has the
    configured median; the two survival quantiles share a Gaussian copula.
    """
    from scipy import stats

    n = len(df)
    z_os, z_ind = rng.normal(size=n), rng.normal(size=n)
    z_pfs = pfs_os_correlation * z_os + math.sqrt(max(0.0, 1.0 - pfs_os_correlation ** 2)) * z_ind
    u = stats.norm.sf(np.stack([z_os, z_pfs], axis=1))  # survival probabilities, correlated between OS and PFS
    times, truth = {}, {}
    for j, (name, ind_col) in enumerate((("os", "tmbrb_os_high"), ("pfs", "tmbrb_pfs_high"))):
        c = cfg[name]
        b_t, b_e = math.log(c["tmbrb_hr"]), math.log(c["ecog_hr"])
        lam = math.log(2.0) / c["ref_median_days"] ** kshape / math.exp(b_e * 1)
        lp = b_t * df[ind_col].to_numpy() + b_e * df["ecog"].to_numpy()
        times[name] = (-np.log(u[:, j]) / (lam * np.exp(lp))) ** (1.0 / kshape)
        truth[name] = {
            "covariates": [ind_col, "ecog"],
            "log_hr": {ind_col: b_t, "ecog": b_e},
            "hr": {ind_col: c["tmbrb_hr"], "ecog": c["ecog_hr"]},
            "tmbrb_cutoff": c["tmbrb_cutoff"],
            "tmbrb_rule": c["tmbrb_rule"],
            "baseline": {"distribution": "weibull", "shape": kshape, "scale_lambda": lam,
                         "cumulative_hazard": "lambda * exp(lp) * t**shape",
                         "reference_median_days": c["ref_median_days"]},
        }
    return times, truth


def _add_censored_outcomes(df, rng, t_os, t_pfs, cap_pfs_at_os: bool, accrual_days: float,
                           min_followup_days: float, dropout_per_year: float) -> None:
    """Add os_time/os_event and pfs_time/pfs_event: administrative censoring and loss to follow-up."""
    n = len(df)
    entry = rng.uniform(0.0, accrual_days, n)
    admin = accrual_days + min_followup_days - entry
    drop = rng.exponential(365.25 / dropout_per_year, n) if dropout_per_year > 0 else np.full(n, np.inf)
    cens = np.minimum(admin, drop)
    df["os_time"] = np.maximum(np.round(np.minimum(t_os, cens), 1), 1.0)
    df["os_event"] = (t_os <= cens).astype(int)
    df["pfs_time"] = np.maximum(np.round(np.minimum(t_pfs, cens), 1), 1.0)
    df["pfs_event"] = (t_pfs <= cens).astype(int)
    if cap_pfs_at_os:
        df["pfs_time"] = np.minimum(df["pfs_time"], df["os_time"])


def make_immunotherapy_cohort(
    n: int = 123,
    seed: int = 0,
    hr: Optional[Dict] = None,
    *,
    weibull_shape: float = 1.0,
    pfs_os_correlation: float = 1.0,
    cap_pfs_at_os: bool = True,
    accrual_days: float = 1100.0,
    min_followup_days: float = 150.0,
    dropout_per_year: float = 0.05,
    tmbrb_tmb_rho: float = 0.6,
):
    """Simulate the paper's immunotherapy cohort: Table 1's patients with OS and PFS from known hazard ratios.

    Parameters
    ----------
    n : int, default 123
        Number of patients (>= 2); n = 123 gives Table 1's counts exactly.
    seed : int, default 0
        Non-negative seed; the same arguments give the same cohort.
    hr : dict, optional
        Overrides of ``PAPER_HR``'s entries, e.g. ``{"os": {"tmbrb_hr": 0.5}}`` (keys ``os`` and/or ``pfs``;
        inner keys among tmbrb_cutoff, tmbrb_rule, tmbrb_hr, ecog_hr, ref_median_days).
    weibull_shape : float, default 1.0
        Shape k of the Weibull baseline hazards (1: exponential), in [0.2, 5].
    pfs_os_correlation : float, default 1.0
        Correlation of the Gaussian copula between the OS and PFS survival quantiles, in [0, 1].
    cap_pfs_at_os : bool, default True
        Cap PFS at OS (death ends progression-free survival); False keeps both models exactly proportional
        hazards.
    accrual_days, min_followup_days : float, default 1100.0, 150.0
        Uniform accrual period and follow-up of the last patient (administrative censoring).
    dropout_per_year : float, default 0.05
        Rate of exponential loss to follow-up, in [0, 10].
    tmbrb_tmb_rho : float, default 0.6
        Gaussian-copula correlation of the TMBRB score with the standardised log TMB, in [-0.99, 0.99].

    Returns
    -------
    pandas.DataFrame
        One row per patient: patient_id, age, sex, smoking, ecog, histology, stage, egfr, tmb, high_tmb,
        tmbrb, tmbrb_os_high (tmbrb >= 0.61), tmbrb_pfs_high (tmbrb > 0.46), os_time, os_event, pfs_time,
        pfs_event (times in days, events 1 = death / progression, 0 = censored). ``df.attrs["truth"]`` holds
        the simulation's truth (hazard ratios, baselines, censoring, event rates, Table 1).

    Raises
    ------
    ValueError
        An argument is out of range or of the wrong type, or `hr` has an unknown key.

    See Also
    --------
    write_immunotherapy_cohort : the same cohort as CSV with a JSON truth sidecar.

    Examples
    --------
    >>> from TMBRBLib.phantom import make_immunotherapy_cohort
    >>> df = make_immunotherapy_cohort(n=20, seed=1)
    >>> df.shape
    (20, 17)
    >>> list(df.columns)  # doctest: +NORMALIZE_WHITESPACE
    ['patient_id', 'age', 'sex', 'smoking', 'ecog', 'histology', 'stage', 'egfr', 'tmb', 'high_tmb', 'tmbrb',
     'tmbrb_os_high', 'tmbrb_pfs_high', 'os_time', 'os_event', 'pfs_time', 'pfs_event']
    >>> df["sex"].value_counts().to_dict()   # Table 1's 82.1% male, largest-remainder rounding
    {'male': 16, 'female': 4}
    >>> df.attrs["truth"]["os"]["hr"]
    {'tmbrb_os_high': 0.54, 'ecog': 2.33}
    >>> bool((df["pfs_time"] <= df["os_time"]).all())
    True
    """
    numbers = dict(weibull_shape=weibull_shape, pfs_os_correlation=pfs_os_correlation, accrual_days=accrual_days,
                   min_followup_days=min_followup_days, dropout_per_year=dropout_per_year,
                   tmbrb_tmb_rho=tmbrb_tmb_rho)
    cfg = _check_arguments(n, seed, hr, numbers)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1C1]))
    n = int(n)
    df = _table1_columns(rng, n)
    tmbrb_truth = _add_tmb_and_score(df, rng, cfg, tmbrb_tmb_rho)
    times, truth = _event_times(df, rng, cfg, float(weibull_shape), pfs_os_correlation)
    t_os = times["os"]
    capped = (times["pfs"] > t_os) if cap_pfs_at_os else np.zeros(n, dtype=bool)
    t_pfs = np.where(capped, t_os, times["pfs"])
    _add_censored_outcomes(df, rng, t_os, t_pfs, cap_pfs_at_os, accrual_days, min_followup_days, dropout_per_year)
    df.attrs["truth"] = {
        "source": "TMBRB synthetic immunotherapy cohort (He et al., JITC 2020, Table 1 and Cox models)",
        "n": n,
        "seed": int(seed),
        "os": truth["os"],
        "pfs": truth["pfs"],
        "pfs_capped_at_os_fraction": float(capped.mean()),
        "pfs_os_correlation": pfs_os_correlation,
        "cap_pfs_at_os": bool(cap_pfs_at_os),
        "censoring": {"accrual_days": accrual_days, "min_followup_days": min_followup_days,
                      "dropout_per_year": dropout_per_year},
        "event_rate": {"os": float(df["os_event"].mean()), "pfs": float(df["pfs_event"].mean())},
        "tmbrb": tmbrb_truth,
        "table1": {k: (v if not isinstance(v, dict) else {str(kk): vv for kk, vv in v.items()})
                   for k, v in TABLE1.items()},
    }
    return df


def write_immunotherapy_cohort(path, n: int = 123, seed: int = 0, hr: Optional[Dict] = None, **kwargs) -> pathlib.Path:
    """Write the simulated immunotherapy cohort as CSV and its truth as a JSON sidecar.

    Parameters
    ----------
    path : str or pathlib.Path
        The CSV file to write (must end in ``.csv``); its folder is created. The truth goes to
        ``<path without .csv>.truth.json``.
    n, seed, hr
        As for `make_immunotherapy_cohort`.
    **kwargs
        The keyword-only options of `make_immunotherapy_cohort` (weibull_shape, pfs_os_correlation, ...).

    Returns
    -------
    pathlib.Path
        The CSV path.

    Raises
    ------
    ValueError
        `path` does not end in ``.csv``, or an argument of `make_immunotherapy_cohort` is bad.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from TMBRBLib.phantom import write_immunotherapy_cohort
    >>> with tempfile.TemporaryDirectory() as d:
    ...     csv = write_immunotherapy_cohort(pathlib.Path(d) / "ici.csv", n=10, seed=2)
    ...     print(csv.name, len(csv.read_text().splitlines()), csv.with_suffix(".truth.json").is_file())
    ici.csv 11 True
    """
    path = pathlib.Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"path must end in .csv, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    df = make_immunotherapy_cohort(n=n, seed=seed, hr=hr, **kwargs)
    df.to_csv(path, index=False)
    truth_path = path.with_suffix(".truth.json")
    truth_path.write_text(json.dumps(df.attrs["truth"], indent=1), encoding="utf-8")
    return path
