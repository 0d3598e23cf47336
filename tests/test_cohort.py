"""The synthetic immunotherapy cohort: Table-1 marginals, known hazard ratios, censoring, files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from lifelines import CoxPHFitter
from scipy.stats import spearmanr

from TMBRBLib.phantom import PAPER_HR, make_immunotherapy_cohort, write_immunotherapy_cohort


@pytest.fixture(scope="module")
def paper_size():
    return make_immunotherapy_cohort()


@pytest.fixture(scope="module")
def large():
    return make_immunotherapy_cohort(n=5000, seed=7)


def test_table1_counts_at_n_123(paper_size):
    df = paper_size
    assert len(df) == 123 and df.patient_id.is_unique
    assert df.sex.value_counts().to_dict() == {"male": 101, "female": 22}
    assert df.smoking.value_counts().to_dict() == {"current_or_former": 77, "never": 46}
    assert df.ecog.value_counts().to_dict() == {1: 104, 0: 11, 2: 8}
    assert df.histology.value_counts().to_dict() == {"adenocarcinoma": 80, "squamous": 43}
    assert df.stage.value_counts().to_dict() == {"IV": 105, "III": 18}
    assert df.egfr.value_counts().to_dict() == {"wild_type": 94, "mutant": 29}
    assert 58 < df.age.mean() < 66 and 7 < df.age.std() < 13


def test_tmbrb_score_like_the_paper(large):
    s = large.tmbrb
    assert s.between(0, 1).all()
    assert abs(s.mean() - 0.55) < 0.02 and abs(s.std() - 0.16) < 0.02
    assert 0.45 < spearmanr(large.tmb, s)[0] < 0.75
    assert (large.tmbrb_os_high == (s >= 0.61)).all() and (large.tmbrb_pfs_high == (s > 0.46)).all()


def test_columns_times_events_and_truth(paper_size):
    df = paper_size
    for c in ("age", "sex", "smoking", "ecog", "histology", "stage", "egfr", "tmb", "tmbrb",
              "os_time", "os_event", "pfs_time", "pfs_event"):
        assert c in df.columns
    assert (df.os_time > 0).all() and (df.pfs_time > 0).all() and (df.pfs_time <= df.os_time).all()
    assert set(df.os_event) <= {0, 1} and set(df.pfs_event) <= {0, 1}
    truth = df.attrs["truth"]
    assert truth["os"]["hr"] == {"tmbrb_os_high": 0.54, "ecog": 2.33}
    assert truth["pfs"]["hr"] == {"tmbrb_pfs_high": 1.76, "ecog": 1.90}
    # some censoring, some events, like a real cohort
    assert 0.4 < df.os_event.mean() < 0.85 and 0.6 < df.pfs_event.mean() < 0.95
    # determinism
    again = make_immunotherapy_cohort()
    pd.testing.assert_frame_equal(df, again)
    assert not make_immunotherapy_cohort(seed=1).equals(df)


def _cox(df, name, ind):
    cols = [f"{name}_time", f"{name}_event", ind, "ecog"]
    return CoxPHFitter().fit(df[cols], f"{name}_time", f"{name}_event").params_


def test_cox_recovers_the_hazard_ratios(large):
    os_ = _cox(large, "os", "tmbrb_os_high")
    pfs = _cox(large, "pfs", "tmbrb_pfs_high")
    tol = 0.15  # on the log scale; SE ~0.04-0.06 at n=5000, PFS capping bias ~0.03
    assert abs(os_["tmbrb_os_high"] - math.log(0.54)) < tol
    assert abs(os_["ecog"] - math.log(2.33)) < tol
    assert abs(pfs["tmbrb_pfs_high"] - math.log(1.76)) < tol
    assert abs(pfs["ecog"] - math.log(1.90)) < tol


def test_other_hazard_ratios_and_exact_pfs_model():
    df = make_immunotherapy_cohort(n=5000, seed=3, hr={"os": {"tmbrb_hr": 1.0}, "pfs": {"tmbrb_hr": 2.5}},
                                   cap_pfs_at_os=False)
    assert abs(_cox(df, "os", "tmbrb_os_high")["tmbrb_os_high"]) < 0.12
    assert abs(_cox(df, "pfs", "tmbrb_pfs_high")["tmbrb_pfs_high"] - math.log(2.5)) < 0.12
    assert df.attrs["truth"]["pfs_capped_at_os_fraction"] == 0.0


def test_reference_group_median_survival(large):
    ref = large[(large.tmbrb_os_high == 0) & (large.ecog == 1)]
    # without censoring the median would be 301 days; check with Kaplan-Meier
    from lifelines import KaplanMeierFitter

    km = KaplanMeierFitter().fit(ref.os_time, ref.os_event)
    assert 250 < km.median_survival_time_ < 360


def test_write_cohort_csv_and_truth_sidecar(tmp_path):
    path = write_immunotherapy_cohort(tmp_path / "ici" / "cohort.csv", n=50, seed=4)
    df = pd.read_csv(path)
    assert len(df) == 50 and "os_time" in df.columns
    truth = json.loads(path.with_suffix(".truth.json").read_text())
    assert truth["os"]["log_hr"]["ecog"] == pytest.approx(math.log(2.33))
    assert truth["n"] == 50 and truth["seed"] == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=1), "n \\(number of patients\\)"),
        (dict(n=12.5), "n \\(number"),
        (dict(seed=-2), "seed"),
        (dict(hr={"dfs": {}}), "hr must be a dict"),
        (dict(hr={"os": {"tmbrb_hr": -1}}), "positive"),
        (dict(hr={"os": {"hazard": 2}}), "unknown keys"),
        (dict(hr={"pfs": {"tmbrb_cutoff": 1.5}}), "tmbrb_cutoff"),
        (dict(hr={"pfs": {"tmbrb_rule": "<"}}), "tmbrb_rule"),
        (dict(weibull_shape=0), "weibull_shape"),
        (dict(pfs_os_correlation=2), "pfs_os_correlation"),
        (dict(dropout_per_year=-1), "dropout_per_year"),
    ],
)
def test_bad_cohort_arguments_are_rejected_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_immunotherapy_cohort(**kwargs)


def test_bad_cohort_path(tmp_path):
    with pytest.raises(ValueError, match=".csv"):
        write_immunotherapy_cohort(tmp_path / "cohort.xlsx")
    assert PAPER_HR["os"]["tmbrb_hr"] == 0.54  # the module's defaults are the paper's
