import copy

import pytest

from TMBRBLib.bundle import default_tmbrb_metadata
from TMBRBLib.model import TMBRBNet
from TMBRBLib.risk import risk_groups

RISK = default_tmbrb_metadata()["risk"]


@pytest.mark.parametrize("score,os_group,pfs_group", [
    (0.61, "low", "high"), (0.6099, "high", "high"), (0.46, "high", "low"), (0.4601, "high", "high"),
    (0.07, "high", "low"), (0.83, "low", "high")])
def test_paper_cutoffs(score, os_group, pfs_group):
    r = risk_groups(score, None, RISK)
    assert r["os"]["group"] == os_group and r["pfs"]["group"] == pfs_group
    assert r["ecog_combined"] is None


def test_ecog_combined_relative_hazards_follow_the_two_variable_cox_models():
    r = risk_groups(0.7, 2, RISK)["ecog_combined"]
    assert r["os"]["relative_hazard"] == pytest.approx(0.54 * 2.33 ** 2)
    assert r["pfs"]["relative_hazard"] == pytest.approx(1.76 * 1.90 ** 2)
    r = risk_groups(0.3, 0, RISK)["ecog_combined"]
    assert r["os"]["relative_hazard"] == 1.0 and r["pfs"]["relative_hazard"] == 1.0
    r = risk_groups(0.5, 1, RISK)["ecog_combined"]  # OS: not >= 0.61; PFS: > 0.46
    assert r["os"]["relative_hazard"] == pytest.approx(2.33)
    assert r["pfs"]["relative_hazard"] == pytest.approx(1.76 * 1.90)


def test_a_site_can_put_its_own_cutoffs_and_hazard_ratios():
    site = copy.deepcopy(RISK)
    site["os"]["cutoff"] = 0.5
    site["ecog_cox"]["os"]["ecog_hr"] = 3.0
    r = risk_groups(0.55, 1, site)
    assert r["os"]["group"] == "low" and r["ecog_combined"]["os"]["relative_hazard"] == pytest.approx(0.54 * 3.0)


def test_model_has_1020_features_and_the_papers_classifier():
    import torch
    net = TMBRBNet().eval()
    assert net.n_features == 1020
    x = torch.zeros(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert net.deep_features(x).shape == (1, 1020)
        assert net(x).shape == (1, 2)
    fc = [m for m in net.class_layers.out if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in fc] == [(1020, 128), (128, 2)]
