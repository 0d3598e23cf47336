"""Cox model values a researcher reads: the printout, intervals at other levels, the scan's CIs, bad input.

Reference values are R 4.2 survival 3.x on the 15-patient cohort below (the 14 of cox_ph's docstring and one with
ECOG missing):

    d <- data.frame(time = c(5, 8, 3, 12, 15, 9, 20, 22, 18, 30, 7, 11, 14, 25, 16),
                    event = c(1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1),
                    ecog = c(2, 1, 2, 1, 0, 1, 0, 1, 0, 0, 1, 2, 1, 0, NA),
                    high = c(0, 0, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0),
                    age = c(70, 64, 58, 71, 49, 66, 55, 62, 60, 52, 68, 59, 63, 57, 61))
    f <- coxph(Surv(time, event) ~ ecog, data = d); s <- summary(f, conf.int = 0.9)
    f2 <- coxph(Surv(time, event) ~ high + ecog, data = d); s2 <- summary(f2)
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats import TMBRBStatsInputError, TMBRBStatsWarning, cox_ph, cox_scan

from _stats_testdata import arr, fixture_csv, reference

COX = dict(rtol=1e-5, atol=1e-12)

# s$coefficients, s$conf.int (0.90), s$logtest, s$sctest, f$loglik, s$concordance
R_ECOG = dict(coef=1.60409479093674, hr=4.97335563793407, se=0.534272956290365, z=3.00238814645327,
              p=0.00267870392410827, lower90=2.06533818091167, upper90=11.9758916626683,
              lr=10.2595316891692, lr_p=0.00135980194022015, score=11.1495219954862, score_p=8.40533287524809e-04,
              loglik=(-23.3994617135106, -18.2696958689260), concordance=0.8023255813953488)
# s2: high + ecog, 95% intervals
R_HIGH_ECOG = dict(coef=[-0.704047814840355, 1.519192902778013], hr=[0.494579281172308, 4.568536453675594],
                   se=[0.72072734248375, 0.54437492306793], p=[0.32863977011874013, 0.00525924628719342],
                   lower=[0.120434716002033, 1.571825463410530], upper=[2.03104780319977, 13.27852602875891],
                   score_p=0.00269963985503503, lr_p=0.00366632524077412, concordance=0.8313953488372092)


@pytest.fixture()
def d15() -> pd.DataFrame:
    return pd.DataFrame({"time": [5, 8, 3, 12, 15, 9, 20, 22, 18, 30, 7, 11, 14, 25, 16],
                         "event": [1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1],
                         "ecog": [2, 1, 2, 1, 0, 1, 0, 1, 0, 0, 1, 2, 1, 0, np.nan],
                         "high": [0, 0, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0],
                         "age": [70, 64, 58, 71, 49, 66, 55, 62, 60, 52, 68, 59, 63, 57, 61]})


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def test_ninety_percent_intervals_and_tests_match_coxph(d15):
    r = cox_ph(d15, "time", "event", ["ecog"], conf_level=0.9)
    row = r.table.iloc[0]
    np.testing.assert_allclose([row["coef"], row["hr"], row["se"], row["z"], row["p"], row["hr_lower"], row["hr_upper"]],
                               [R_ECOG[k] for k in ("coef", "hr", "se", "z", "p", "lower90", "upper90")], **COX)
    assert (r.n, r.n_events, r.n_dropped, r.lr_df) == (14, 12, 1, 1)
    np.testing.assert_allclose([r.lr_stat, r.lr_p, r.score_stat, r.score_p, r.concordance],
                               [R_ECOG[k] for k in ("lr", "lr_p", "score", "score_p", "concordance")], **COX)
    np.testing.assert_allclose([r.loglik_null, r.loglik], R_ECOG["loglik"], **COX)
    # one term: the Wald test is z squared and its p the term's p (R prints the statistic rounded)
    np.testing.assert_allclose([r.wald_stat, r.wald_p], [R_ECOG["z"] ** 2, R_ECOG["p"]], **COX)


def test_printout_has_counts_four_digit_table_tests_and_every_warning(d15):
    with pytest.warns(TMBRBStatsWarning, match=r"only 12 events \(< 20\)"):
        r = cox_ph(d15, "time", "event", ["ecog"], conf_level=0.9, min_events=20)
    lines = str(r).splitlines()
    assert lines[0] == "Cox PH (Efron ties): n = 14, events = 12, 1 row(s) with missing values dropped"
    assert lines[1].split() == ["term", "coef", "hr", "hr_lower", "hr_upper", "se", "z", "p"]  # no index column
    assert lines[2].split() == ["ecog"] + [_fmt(R_ECOG[k]) for k in ("coef", "hr", "lower90", "upper90", "se", "z", "p")]
    assert lines[3] == f"Concordance = {R_ECOG['concordance']:.4f}"
    assert lines[4] == f"Likelihood ratio test = {R_ECOG['lr']:.3f} on 1 df, p = {R_ECOG['lr_p']:.4g}"
    assert lines[5] == f"Wald test = {R_ECOG['z'] ** 2:.3f}, p = {R_ECOG['p']:.4g}"
    assert lines[6] == f"Score (logrank) test = {R_ECOG['score']:.3f}, p = {R_ECOG['score_p']:.4g}"
    assert lines[7].startswith("WARNING: only 12 events (< 20) for the Cox model") and len(lines) == 8
    # two warnings: each on its own line after the tests
    r.warnings.append("second note")
    assert str(r).splitlines()[7:] == [f"WARNING: {r.warnings[0]}", "WARNING: second note"]


def test_printout_of_complete_rows_says_nothing_about_dropped_rows(d15):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TMBRBStatsWarning)
        r = cox_ph(d15.dropna(), "time", "event", ["ecog"], ties="breslow", min_events=12)
    assert str(r).splitlines()[0] == "Cox PH (Breslow ties): n = 14, events = 12"
    assert "WARNING" not in str(r) and r.warnings == []


def test_scan_intervals_match_two_variable_coxph():
    ref = reference()["cox_scan"]
    r = cox_scan(fixture_csv("lung.csv"), "time", "status", "sex", list(ref))
    t = r.table.set_index("covariate")
    for cv, m in ref.items():
        np.testing.assert_allclose(t.loc[cv, ["marker_hr_lower", "covariate_hr_lower"]].to_numpy(float),
                                   arr(m["hr_lower"]), **COX, err_msg=cv)
        np.testing.assert_allclose(t.loc[cv, ["marker_hr_upper", "covariate_hr_upper"]].to_numpy(float),
                                   arr(m["hr_upper"]), **COX, err_msg=cv)
        np.testing.assert_allclose(t.loc[cv, "model_lr_p"], m["lr_test"][2], **COX)
        np.testing.assert_allclose(t.loc[cv, "concordance"], m["concordance"], **COX)
        assert t.loc[cv, "events"] == m["nevent"]


def test_scan_printout_and_dict(d15):
    scan = cox_scan(d15, "time", "event", "high", ["ecog"], min_events=5)
    lines = str(scan).splitlines()
    assert lines[0] == "Two-variable Cox models of 'high' with each covariate (Efron ties)"
    assert lines[1].split()[:3] == ["covariate", "n", "events"]  # no index column
    row = scan.table.iloc[0]
    assert lines[2].split()[:6] == ["ecog", "14", "12"] + [_fmt(v) for v in R_HIGH_ECOG["hr"][:1] + R_HIGH_ECOG["lower"][:1]
                                                          + R_HIGH_ECOG["upper"][:1]]
    np.testing.assert_allclose([row["covariate_hr"], row["covariate_hr_lower"], row["covariate_hr_upper"],
                                row["covariate_p"], row["marker_p"], row["model_logrank_p"], row["model_lr_p"],
                                row["concordance"]],
                               [R_HIGH_ECOG["hr"][1], R_HIGH_ECOG["lower"][1], R_HIGH_ECOG["upper"][1],
                                R_HIGH_ECOG["p"][1], R_HIGH_ECOG["p"][0], R_HIGH_ECOG["score_p"], R_HIGH_ECOG["lr_p"],
                                R_HIGH_ECOG["concordance"]], **COX)
    d = scan.to_dict()
    assert d["marker"] == "high" and d["table"][0]["covariate"] == "ecog"
    assert d["table"][0]["marker_hr"] == pytest.approx(R_HIGH_ECOG["hr"][0], rel=1e-5)
    assert d["models"]["ecog"]["table"][1]["term"] == "ecog" and d["models"]["ecog"]["n"] == 14  # complete rows of the pair


@pytest.mark.parametrize("kwargs,message", [
    (dict(covariates=["ecog", "stage"]), r"^Cox scan: missing column\(s\) \['stage'\]"),
    (dict(covariates=["ecog"], reference={"histology": "adeno"}),
     r"^reference level given for \['histology'\], which are not among the covariates \['high', 'ecog'\]; "
     r"name a covariate of the scan\.$"),
    (dict(covariates=[]), r"^Cox scan needs at least one covariate"),
])
def test_scan_bad_input_is_a_clear_error(d15, kwargs, message):
    with pytest.raises(TMBRBStatsInputError, match=message):
        cox_scan(d15, "time", "event", "high", **kwargs)


def test_scan_passes_level_and_min_events_to_both_models(d15):
    # summary(f2, conf.int = 0.9)$conf.int
    with pytest.warns(TMBRBStatsWarning, match=r"only 12 events \(< 13\)") as caught:
        scan = cox_scan(d15, "time", "event", "high", ["ecog"], conf_level=0.9, min_events=13)
    # the two-variable model and the covariate alone each warn once, passed on to the caller
    assert sum("only 12 events" in str(w.message) for w in caught) == 2
    row = scan.table.iloc[0]
    np.testing.assert_allclose([row["marker_hr_lower"], row["marker_hr_upper"], row["covariate_hr_lower"],
                                row["covariate_hr_upper"]],
                               [0.151141499500889, 1.61840835358047, 1.865960317549343, 11.18540685579764], **COX)


def test_scan_breslow_reaches_the_univariable_model():
    # coxph(Surv(time, status) ~ trt + karno, veteran, ties = "breslow") and ~ karno alone, both Breslow
    scan = cox_scan(fixture_csv("veteran.csv"), "time", "status", "trt", ["karno"], ties="breslow")
    row = scan.table.iloc[0]
    np.testing.assert_allclose([row["marker_p"], row["covariate_p"], row["covariate_univariable_p"]],
                               [3.43056746140721e-01, 3.08928605478585e-11, 5.65587554074403e-11], **COX)
    assert str(scan).splitlines()[0].endswith("(Breslow ties)")


def test_collinear_covariates_are_a_clear_error(d15):
    d15["ecog_twice"] = 2 * d15["ecog"] + 1
    with pytest.raises(TMBRBStatsInputError, match=r"^Cox model did not converge \(the information matrix is singular\): "
                       r"two covariates are collinear or one takes a single value among the rows at risk; drop or "
                       r"merge it\.$"):
        cox_ph(d15, "time", "event", ["ecog", "ecog_twice"])


def test_an_infinite_covariate_is_named(d15):
    # it used to be reported as a diverging fit ("coefficients became infinite ... separates events")
    d15["age"] = d15["age"].astype(float)
    d15.loc[[0, 3], "age"] = [np.inf, -np.inf]
    with pytest.raises(TMBRBStatsInputError, match=r"^Cox model: covariate\(s\) with infinite values \(rows per column: "
                       r"\{'age': 2\}\); fix these entries or leave the rows out\.$"):
        cox_ph(d15, "time", "event", ["ecog", "age"])


@pytest.mark.parametrize("name", ["T", "E", "_t", "_e"])
def test_a_covariate_may_be_called_t_or_e(d15, name):
    # T stage is a usual clinical column; it used to clash with the internal time/event columns (ValueError)
    r = cox_ph(d15.rename(columns={"ecog": name}), "time", "event", [name], conf_level=0.9)
    assert r.table["term"].tolist() == [name] and (r.n, r.n_dropped) == (14, 1)
    np.testing.assert_allclose(r.table[["coef", "se", "hr_lower"]].to_numpy()[0],
                               [R_ECOG["coef"], R_ECOG["se"], R_ECOG["lower90"]], **COX)
    np.testing.assert_allclose(r.concordance, R_ECOG["concordance"], **COX)


def _bad(d15, name, values):
    d = d15.copy()
    d[name] = values
    return d


@pytest.mark.parametrize("change,covariates,message", [
    (None, [], "Cox model needs at least one covariate; name them with --covariates."),
    (None, ["ecog", "stage"], "Cox model: missing column(s) ['stage']; the table has columns ['time', 'event', 'ecog', "
                              "'high', 'age']. Name the right columns with the command-line flags (e.g. --score, "
                              "--label, --time, --event)."),
    (("time", ["x"] + [1] * 14), ["ecog"], "column 'time' must be numeric but has non-numeric value(s) ['x'] (1 row(s)). "
                                           "Fix or remove these entries (empty cells are treated as missing)."),
    (("event", ["yes"] + [1] * 14), ["ecog"], "column 'event' must be numeric but has non-numeric value(s) ['yes'] "
                                              "(1 row(s)). Fix or remove these entries (empty cells are treated as "
                                              "missing)."),
    (("time", [-1] + [1] * 14), ["ecog"], "column 'time' has negative survival times; times must be >= 0."),
    (("event", [2] + [1] * 14), ["ecog"], "column 'event' must be 0 (censored) or 1 (event) but has value(s) [2.0]. "
                                          "Recode it (e.g. R's lung status 1/2 -> 0/1)."),
    (("event", [0] * 15), ["ecog"], "Cox model: all 14 observations are censored (no events), so survival cannot be "
                                    "estimated or compared. Check the event column coding (1 = event) or use a cohort "
                                    "with events."),
    (("time", [np.nan] * 15), ["ecog"], "Cox model: no complete rows after dropping rows with missing values."),
    (("high", [1] * 15), ["ecog", "high"], "Cox model: covariate(s) ['high'] take a single value in the complete rows; "
                                           "a constant cannot be estimated. Leave it out."),
])
def test_cox_bad_input_messages(d15, change, covariates, message):
    d = _bad(d15, *change) if change else d15
    with pytest.raises(TMBRBStatsInputError) as exc:
        cox_ph(d, "time", "event", covariates)
    assert str(exc.value) == message


def test_few_events_warning_at_the_boundary_points_at_the_caller(d15):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TMBRBStatsWarning)
        assert cox_ph(d15, "time", "event", ["ecog"], min_events=12).warnings == []  # 12 events: enough
    with pytest.warns(TMBRBStatsWarning) as caught:
        r = cox_ph(d15, "time", "event", ["ecog"], min_events=13)
    msg = ("only 12 events (< 13) for the Cox model; hazard ratios and p values are unreliable. Report them with "
           "caution or use a larger cohort.")
    assert [str(w.message) for w in caught] == [msg] and r.warnings == [msg]
    # stacklevel: the warning points at the caller's line, not at the library (under mutmut the caller is its
    # trampoline, so only "not cox.py" is asserted)
    assert not caught[0].filename.endswith("cox.py")


def _quasi_separated(seed=0, n=60):
    rng = np.random.default_rng(seed)
    grp = np.r_[np.zeros(n // 2), np.ones(n // 2)]
    event = np.r_[np.zeros(n // 2), (rng.random(n // 2) < 0.7).astype(int)]  # no event at all with grp = 0
    return pd.DataFrame({"time": rng.exponential(10, n), "status": event, "grp": grp, "age": rng.normal(60, 10, n)})


@pytest.mark.parametrize("flip,direction", [(False, "infinity"), (True, "zero")])
def test_quasi_separation_message_names_the_level_its_rows_and_the_direction(flip, direction):
    d = _quasi_separated()
    level = 0
    if flip:  # the level without events is now grp = 1: the hazard ratio runs off towards zero
        d["grp"] = 1 - d["grp"]
        level = 1
    with pytest.warns(TMBRBStatsWarning):
        r = cox_ph(d, "time", "status", ["grp", "age"])
    assert r.warnings == [f"Cox model: no event among the 30 rows with grp = {level} (quasi-separation): the hazard "
                          f"ratio of grp runs off towards {direction} and its CI and p value mean nothing. Merge "
                          "levels, leave the covariate out or use Firth's penalised Cox regression."]
    assert (r.table["coef"].iloc[0] > 5) == (direction == "infinity")


def test_diverging_continuous_coefficient_message_gives_the_hazard_ratio_per_sd():
    x = np.linspace(0, 1, 40)
    d = pd.DataFrame({"time": 100 - 90 * x, "status": 1, "x": x})  # events in the order of the marker
    with pytest.warns(TMBRBStatsWarning):
        r = cox_ph(d, "time", "status", ["x"])
    b = r.table["coef"].iloc[0]
    assert abs(b) * np.std(x) > 10
    assert r.warnings == [f"Cox model: the coefficient of x diverged ({b:.3g}, a hazard ratio of e^{abs(b) * np.std(x):.0f} "
                          "per standard deviation): the covariate (quasi-)separates events from censored rows, so its "
                          "hazard ratio, CI and p value mean nothing. Leave it out or use a penalised Cox regression."]
    # a strong but finite effect (under e^10 per SD) gives no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", TMBRBStatsWarning)
        cox_ph(fixture_csv("lung.csv"), "time", "status", ["ph_karno"])


def test_text_covariate_with_twelve_levels_is_fitted_and_thirteen_refused():
    rng = np.random.default_rng(3)
    n = 130
    d = pd.DataFrame({"time": rng.exponential(10, n), "event": (rng.random(n) < 0.8).astype(int),
                      "site": [f"s{i % 12:02d}" for i in range(n)]})
    r = cox_ph(d, "time", "event", ["site"])
    assert r.table["term"].tolist() == [f"site[s{i:02d}]" for i in range(1, 12)]  # s00 is the reference
    d["site"] = [f"s{i % 13:02d}" for i in range(n)]
    with pytest.raises(TMBRBStatsInputError) as exc:
        cox_ph(d, "time", "event", ["site"])
    assert str(exc.value) == ("covariate 'site' is not numeric and has 13 distinct values; it looks like a typo'd numeric "
                              "column (check for text such as 'n/a') or an identifier. Fix the values or leave it out.")


def test_unknown_reference_level_lists_the_levels(d15):
    d15["stage"] = np.where(d15["ecog"] > 0, "II", "I")
    with pytest.raises(TMBRBStatsInputError) as exc:
        cox_ph(d15, "time", "event", ["stage"], reference={"stage": "III"})
    assert str(exc.value) == "reference level 'III' of covariate 'stage' is not one of its values ['I', 'II']; pick one of these."
