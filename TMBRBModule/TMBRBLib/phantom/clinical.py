"""Simulated clinical columns of the phantom TMB cohort, tied to TMB as in the paper's TMB data set.

The paper's TMB data set (327 patients; its supplementary Table S1/S2): 55.0% men, 55.4% adenocarcinoma, median
age 61.5 years; histological subtype was the only significant independent predictor of High-TMB (the clinical
model on histology alone reached AUC 0.75 in training, 0.71 in test). The simulation draws each column from the
case's High-TMB label (TMB >= 10) with the probabilities in ``CLINICAL_MODEL``:

* ``histology``: squamous in 75% of High-TMB and 33% of Low-TMB cases (AUC of histology alone ~0.71; 44% squamous
  overall at the cohort's 25.7% High-TMB share) -- the strongest association;
* ``smoking``: current or former smoker in 78% of High-TMB and 58% of Low-TMB cases (moderate);
* ``sex``: male in 62% of High-TMB and 53% of Low-TMB cases (weak; 55% overall);
* ``age`` (years, N(61.5, 9.5) clipped to 30-85) and ``stage`` (I/II/III/IV = 45/20/25/10%): unrelated to TMB.

Each case's draws come from its own stream, ``SeedSequence([case_seed, 0xC11])``, so a case's clinical values do not
depend on the other cases, and the CT, masks and every other manifest column are untouched.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

CLINICAL_COLUMNS = ["histology", "smoking", "sex", "age", "stage"]
CLINICAL_MODEL = {
    "histology": {"levels": ("squamous", "adenocarcinoma"), "p_first_high": 0.75, "p_first_low": 0.33},
    "smoking": {"levels": ("current_or_former", "never"), "p_first_high": 0.78, "p_first_low": 0.58},
    "sex": {"levels": ("male", "female"), "p_first_high": 0.62, "p_first_low": 0.53},
    "age": {"mean": 61.5, "sd": 9.5, "min": 30, "max": 85},
    "stage": {"levels": ("I", "II", "III", "IV"), "p": (0.45, 0.20, 0.25, 0.10)},
}
_STREAM = 0xC11


def clinical_values(case_seed: int, high_tmb: int) -> Dict[str, object]:
    """The simulated clinical values of one phantom case.

    Parameters
    ----------
    case_seed : int
        The case's phantom seed (the manifest's ``case_seed``); the values come from their own stream of it.
    high_tmb : int
        The case's label (1 = High-TMB, TMB >= 10).

    Returns
    -------
    dict
        ``histology``, ``smoking``, ``sex`` (text), ``age`` (int, years), ``stage`` (I-IV).

    Examples
    --------
    >>> from TMBRBLib.phantom.clinical import clinical_values
    >>> v = clinical_values(7, 1)
    >>> sorted(v)
    ['age', 'histology', 'sex', 'smoking', 'stage']
    >>> v == clinical_values(7, 1)
    True
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(case_seed), _STREAM]))
    out: Dict[str, object] = {}
    for col in ("histology", "smoking", "sex"):
        m = CLINICAL_MODEL[col]
        p = m["p_first_high"] if int(high_tmb) else m["p_first_low"]
        out[col] = m["levels"][0] if rng.uniform() < p else m["levels"][1]
    a = CLINICAL_MODEL["age"]
    out["age"] = int(round(float(np.clip(rng.normal(a["mean"], a["sd"]), a["min"], a["max"]))))
    s = CLINICAL_MODEL["stage"]
    out["stage"] = s["levels"][int(rng.choice(len(s["levels"]), p=s["p"]))]
    return out


def add_clinical_columns(rows: Sequence[Dict]) -> None:
    """Add the simulated clinical columns to manifest rows in place (from each row's ``case_seed`` and ``label``)."""
    for row in rows:
        row.update(clinical_values(int(row["case_seed"]), int(row["label"])))
