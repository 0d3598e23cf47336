"""Calibration of the score: Brier score, calibration slope and intercept, reliability diagram, temperature scaling.

The TMBRB score is the network's softmax probability of High-TMB, uncalibrated; the risk cut-offs (OS 0.61,
PFS 0.46) are defined on that scale and stay on it. Temperature scaling (Guo et al., ICML 2017) divides the logit
difference by one number T fitted on the validation split; the calibrated probability is reported beside the score,
never in its place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

EPS = 1e-6


def logit(p) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [1e-6, 1 - 1e-6]."""
    p = np.clip(np.asarray(p, float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def calibration_metrics(labels: Sequence[int], probs: Sequence[float], n_bins: int = 5) -> Dict:
    """Brier score, log-loss, calibration slope and intercept, and the reliability curve.

    Parameters
    ----------
    labels : sequence of 0/1
    probs : sequence of float
        Predicted probability of class 1.
    n_bins : int
        Bins of the reliability curve (scikit-learn ``calibration_curve``, uniform).

    Returns
    -------
    dict
        ``brier`` (scikit-learn ``brier_score_loss``), ``log_loss``, ``slope`` and ``intercept`` (logistic regression
        of the label on logit(p), unpenalised: 1 and 0 for a calibrated model), ``curve`` (mean predicted and
        observed fraction per non-empty bin), ``n``.

    Examples
    --------
    >>> m = calibration_metrics([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9], n_bins=2)
    >>> round(m["brier"], 4), m["n"]
    (0.1138, 6)
    """
    from sklearn.calibration import calibration_curve
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, log_loss

    y = np.asarray(labels, int)
    p = np.clip(np.asarray(probs, float), 0.0, 1.0)
    out = {"n": int(len(y)), "brier": float(brier_score_loss(y, p)),
           "log_loss": float(log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1]))}
    if len(set(y.tolist())) == 2:
        lr = LogisticRegression(C=np.inf).fit(logit(p)[:, None], y)
        out["slope"], out["intercept"] = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        frac_pos, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
        out["curve"] = {"mean_predicted": mean_pred.tolist(), "fraction_positive": frac_pos.tolist(),
                        "n_bins": int(n_bins)}
    else:
        out["slope"] = out["intercept"] = None
        out["note"] = "one class only: no slope, intercept or curve"
    return out


def fit_temperature(labels: Sequence[int], probs: Sequence[float]) -> Dict:
    """The temperature T minimising the log-loss of sigmoid(logit(p) / T) on these cases (validation split).

    Returns ``{"temperature", "log_loss_before", "log_loss_after", "n"}``.

    >>> t = fit_temperature([0, 1, 0, 1, 1, 0], [0.01, 0.99, 0.6, 0.97, 0.3, 0.02])
    >>> t["temperature"] > 1, t["log_loss_after"] < t["log_loss_before"]
    (True, True)
    """
    from scipy.optimize import minimize_scalar
    from sklearn.metrics import log_loss

    y = np.asarray(labels, int)
    z = logit(probs)

    def nll(log_t):
        return log_loss(y, np.clip(1 / (1 + np.exp(-z / np.exp(log_t))), EPS, 1 - EPS), labels=[0, 1])

    r = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return {"temperature": float(np.exp(r.x)), "log_loss_before": float(nll(0.0)), "log_loss_after": float(r.fun),
            "n": int(len(y))}


def reliability_diagram(metrics: Dict, path, title: str = "") -> Optional[Path]:
    """Write the reliability diagram (observed fraction of High-TMB against mean predicted probability) as a PNG."""
    curve = metrics.get("curve")
    if not curve:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
    ax.plot(curve["mean_predicted"], curve["fraction_positive"], "o-", label="model")
    ax.set_xlabel("mean predicted probability (score, uncalibrated)")
    ax.set_ylabel("observed fraction High-TMB")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or f"Brier {metrics['brier']:.3f}, slope {metrics['slope']:.2f}, "
                          f"intercept {metrics['intercept']:.2f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)
    return Path(path)
