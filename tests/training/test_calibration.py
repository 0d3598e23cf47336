"""Calibration metrics (`python -m training evaluate`) and temperature scaling (export / ood-summary)."""

import numpy as np
import pytest
from scipy.optimize import minimize

from TMBRBLib.ood import apply_temperature
from training.calibration import calibration_metrics, fit_temperature, logit


def _cases(n=400, seed=0, overconfidence=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-overconfidence * z))  # logits 3x too large: an overconfident model


def test_metrics_equal_direct_computation():
    y, p = _cases()
    m = calibration_metrics(y, p, n_bins=5)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-6)
    # slope and intercept: maximum likelihood of y ~ sigmoid(a + b logit(p)), by scipy
    x = logit(p)

    def nll(ab):
        eta = ab[0] + ab[1] * x
        return np.sum(np.logaddexp(0, eta) - y * eta)
    a, b = minimize(nll, [0.0, 1.0], method="BFGS").x
    assert m["slope"] == pytest.approx(b, abs=1e-3) and m["intercept"] == pytest.approx(a, abs=1e-3)
    assert m["slope"] == pytest.approx(1 / 3, abs=0.1)  # the overconfidence is found
    # reliability curve: observed fraction per uniform bin of the prediction
    bins = np.minimum((p * 5).astype(int), 4)
    frac = [y[bins == k].mean() for k in range(5) if np.any(bins == k)]
    np.testing.assert_allclose(m["curve"]["fraction_positive"], frac)


def test_temperature_scaling_undoes_overconfidence_and_lowers_log_loss():
    y, p = _cases(seed=1)
    t = fit_temperature(y, p)
    assert t["temperature"] == pytest.approx(3.0, rel=0.25)
    assert t["log_loss_after"] < t["log_loss_before"]
    scaled = [apply_temperature(v, t["temperature"]) for v in p]
    assert calibration_metrics(y, scaled)["log_loss"] == pytest.approx(t["log_loss_after"], rel=1e-4)


def test_one_class_has_no_slope():
    m = calibration_metrics([1, 1, 1], [0.2, 0.9, 0.7])
    assert m["slope"] is None and "one class" in m["note"]
