"""evaluate's AUC with its DeLong CI: a class with a single case has no DeLong variance (as pROC); metrics.json must
stay valid JSON (no NaN) and say why the CI is missing."""

import json

import pytest

from training.evaluate import auc_with_ci


def test_single_high_tmb_case_gives_the_auc_without_a_ci_and_says_why():
    r = auc_with_ci([1, 0, 0, 0], [0.9, 0.2, 0.4, 0.95])
    assert r["auc"] == pytest.approx(2 / 3)  # the case outranks two of the three controls
    assert r["ci95"] is None and "two High-TMB and two Low-TMB" in r["note"]
    json.loads(json.dumps(r), parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))


def test_two_of_each_keep_the_delong_ci():
    r = auc_with_ci([1, 1, 0, 0], [0.9, 0.3, 0.4, 0.1])
    assert r["auc"] == pytest.approx(0.75)
    lo, hi = r["ci95"]
    assert lo < 0.75 < hi and "note" not in r
