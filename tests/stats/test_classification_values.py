"""Values of decision curves, Spearman, AUC by cut-off and logistic regression a researcher reads.

R references on pROC::aSAH (tests/stats/fixtures/asah.csv), R 4.2, pROC 1.18:

    ctl <- glm.control(epsilon = 1e-14, maxit = 100)  # glm's default 1e-8 leaves the SEs ~1e-4 off the optimum
    g <- glm(outcome == "Poor" ~ s100b + wfns, data = a, family = binomial, control = ctl); se <- coef(summary(g))[, 2]
    exp(cbind(coef(g), coef(g) - qnorm(0.95) * se, coef(g) + qnorm(0.95) * se))       # 90% Wald intervals
    g2 <- glm(outcome == "Poor" ~ s100b + gender, data = a, family = binomial, control = ctl)
    predict(g2, data.frame(s100b = c(0.1, 0.5), gender = c("Female", "Male")), type = "response")
    s <- a[a$gender == gd, ]; r <- roc(as.integer(s$wfns >= cut), s$s100b, direction = "<", levels = c(0, 1))
    ci.auc(r, method = "delong")
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from TMBRBLib.stats import (TMBRBStatsInputError, auc_by_cutoff, decision_curve, logistic_combination,  # noqa: E402
                            spearman)

from _stats_testdata import fixture_csv, reference  # noqa: E402

GLM = dict(rtol=1e-5, atol=1e-12)
TIGHT = dict(rtol=1e-9, atol=1e-12)

# cut-off, gender, n_pos, n_neg, auc, ci_low, ci_high (pROC, DeLong)
PROC = [(2, "Female", 47, 24, 0.766843971631206, 0.654820180566627, 0.878867762695784),
        (2, "Male", 27, 15, 0.835802469135802, 0.705508282187784, 0.96609665608382),
        (3, "Female", 23, 48, 0.809782608695652, 0.676502931472768, 0.943062285918537),
        (3, "Male", 19, 23, 0.956521739130435, 0.893400316271543, 1.0),
        (4, "Female", 19, 52, 0.88917004048583, 0.780505708138992, 0.997834372832668),
        (4, "Male", 19, 23, 0.956521739130435, 0.893400316271543, 1.0)]


@pytest.fixture(scope="module")
def asah():
    return fixture_csv("asah.csv")


# ------------------------------------------------------------------------------------------ logistic
def test_logistic_odds_ratios_at_ninety_percent_match_glm(asah):
    r = logistic_combination(asah, "outcome", ["s100b", "wfns"], conf_level=0.9)
    expected = [[0.0581807312423898, 0.0252181348969139, 0.134228700962078],
                [5.8832374669566514, 0.5897871511945468, 58.686397325711262],
                [1.9590499782670125, 1.4233616175729373, 2.696346992897128]]
    np.testing.assert_allclose(r.table[["odds_ratio", "or_lower", "or_upper"]].to_numpy(), expected, **GLM)
    assert (r.n, r.n_events, r.n_dropped) == (113, 41, 0)
    lines = str(r).splitlines()
    assert lines[0] == "Logistic regression (maximum likelihood, no penalty): n=113, events=41"
    assert lines[1].split()[:4] == ["term", "coef", "se", "z"]  # no index column
    assert lines[3].split()[:2] == ["s100b", f"{np.log(expected[1][0]):.4g}"]
    assert f"log-likelihood {r.loglik:.4f}" in lines
    d = r.to_dict()
    assert (d["n"], d["n_events"], d["n_dropped"]) == (113, 41, 0)
    assert d["loglik"] == r.loglik and d["roc"]["auc"] == pytest.approx(r.roc.auc)
    assert [row["term"] for row in d["table"]] == ["(Intercept)", "s100b", "wfns"]


def test_logistic_predict_matches_glm_predict_and_drops_nothing_silently(asah):
    import pandas as pd

    r = logistic_combination(asah.assign(s100b=asah["s100b"].where(asah.index != 0)), "outcome", ["s100b", "gender"])
    assert r.n_dropped == 1 and r.n == 112
    g2 = logistic_combination(asah, "outcome", ["s100b", "gender"])
    new = pd.DataFrame({"s100b": [0.1, 0.5, np.nan, 0.3, 0.3], "gender": ["Female", "Male", "Male", None, "Other"]})
    p = g2.predict(new)
    np.testing.assert_allclose(p[:2], [0.164706906333201, 0.776458581587708], **GLM)
    assert np.isnan(p[2]) and np.isnan(p[3])  # a missing predictor gives NaN, as R's predict
    # an unseen level counts as the reference level (Female)
    np.testing.assert_allclose(p[4], 1 / (1 + np.exp(-(-2.121924748870137 + 4.983096443403752 * 0.3))), **GLM)


@pytest.mark.parametrize("kwargs,message", [
    (dict(predictors=[]), r"^logistic regression needs at least one predictor; name them with --predictors\.$"),
    (dict(predictors=["s100b", "grade"]), r"^logistic regression: missing column\(s\) \['grade'\]"),
    (dict(predictors=["s100b", "twice"]), r"^predictors \['s100b', 'twice'\] are collinear \(or constant\); drop one"),
    (dict(predictors=["sep"]), r"^the predictors separate the outcome perfectly \(fitted probabilities 0 or 1\); "
                               r"maximum-likelihood estimates do not exist\. Use fewer predictors\.$"),
])
def test_logistic_bad_input(asah, kwargs, message):
    d = asah.assign(twice=2 * asah["s100b"], sep=np.where(asah["outcome"] == "Poor", 1.0, 0.0))
    with pytest.raises(TMBRBStatsInputError, match=message):
        logistic_combination(d, "outcome", **kwargs)


# ------------------------------------------------------------------------------------------ AUC by cut-off
def test_auc_by_cutoff_matches_proc_per_cohort(asah):
    r = auc_by_cutoff(asah["s100b"], asah["wfns"], [2, 3, 4], cohort=asah["gender"], cohort_order=["Female", "Male"])
    t = r.table
    assert t["cutoff"].tolist() == [2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    assert t["cohort"].tolist() == [row[1] for row in PROC]
    assert t[["n_pos", "n_neg"]].to_numpy().tolist() == [[row[2], row[3]] for row in PROC]
    np.testing.assert_allclose(t[["auc", "ci_low", "ci_high"]].to_numpy(float), [row[4:] for row in PROC], **TIGHT)
    diff = r.difference
    assert list(diff.columns) == ["cutoff", "auc_Female", "auc_Male", "difference"]
    np.testing.assert_allclose(diff["difference"], [PROC[i][4] - PROC[i + 1][4] for i in (0, 2, 4)], **TIGHT)
    assert r.direction == "<" and r.n_dropped == 0
    lines = str(r).splitlines()
    assert lines[0] == "AUC of the score at each cut-off of the target (positive: target >= cut-off)"
    assert lines[2].split() == ["2.0000", "Female", "47", "24"] + [f"{v:.4f}" for v in PROC[0][4:]]
    assert lines[8].split() == ["cutoff", "auc_Female", "auc_Male", "difference"]
    d = r.to_dict()
    assert d["direction"] == "<" and d["n_dropped"] == 0 and len(d["table"]) == 6 and len(d["difference"]) == 3
    axes = r.plot()
    assert len(axes) == 2 and [b.get_height() for b in axes[1].patches] == pytest.approx(np.abs(diff["difference"]))
    assert axes[0].get_legend_handles_labels()[1] == ["Female", "Male"] and axes[1].get_ylabel() == "|AUC difference|"
    plt.close("all")


def test_auc_by_cutoff_one_cohort_in_order_of_appearance_and_dropped_rows(asah):
    score = asah["s100b"].where(asah.index != 3)
    r = auc_by_cutoff(score, asah["wfns"], [3], cohort=asah["gender"].where(asah.index != 5))
    assert r.n_dropped == 2 and r.table["cohort"].tolist() == ["Female", "Male"]  # the first row is Female
    one = auc_by_cutoff(asah["s100b"], asah["wfns"], [3, 9], direction=">")
    assert one.table["cohort"].tolist() == ["all", "all"] and len(one.difference) == 0
    assert np.isnan(one.table["auc"].iloc[1]) and one.table["n_pos"].iloc[1] == 0
    # '>' fixed in advance: higher score = control, so the AUC of a good score falls below 0.5
    assert one.table["auc"].iloc[0] < 0.5
    axes = one.plot()
    assert len(axes) == 1
    plt.close("all")
    with pytest.raises(TMBRBStatsInputError, match=r"^no complete rows with score and target\.$"):
        auc_by_cutoff([np.nan, 1.0], [1.0, np.nan], [1])
    with pytest.raises(TMBRBStatsInputError, match=r"^every cut-off leaves a single class in every cohort; choose "
                                                   r"cut-offs inside the range of the target\.$"):
        auc_by_cutoff([0.1, 0.2, 0.3], [1, 2, 3], [0, 100])


# ------------------------------------------------------------------------------------------ decision curve
def test_decision_curve_default_thresholds_and_counts():
    y = [0, 0, 1, 1, 1, None]
    p = [0.1, 0.6, 0.4, 0.7, 0.9, 0.5]
    r = decision_curve(y, {"m": p})
    t = r.table
    np.testing.assert_allclose(t["threshold"], np.arange(1, 100) / 100, atol=1e-12)
    assert (r.n, r.n_dropped, r.models) == (5, 1, ["m"]) and r.prevalence == pytest.approx(0.6)
    assert (t["treat_none"] == 0).all()
    for pt in (0.05, 0.4, 0.5, 0.65, 0.95):
        row = t.iloc[int(round(pt * 100)) - 1]
        treated = [i for i in range(5) if p[i] >= pt]
        tp = sum(y[i] == 1 for i in treated) / 5
        fp = sum(y[i] == 0 for i in treated) / 5
        assert row["m"] == pytest.approx(tp - fp * pt / (1 - pt))
        assert row["treat_all"] == pytest.approx(0.6 - 0.4 * pt / (1 - pt))
    lines = str(r).splitlines()
    assert lines[0] == "Decision curve analysis: n=5, prevalence 0.600"
    assert lines[1].split() == ["threshold", "treat_all", "treat_none", "m"]
    assert len(lines) == 2 + 11  # every 9th of the 99 thresholds: 0.01, 0.10, ..., 0.91
    assert lines[3].split()[0] == "0.1000"
    d = r.to_dict()
    assert (d["n"], d["n_dropped"], d["models"], d["prevalence"]) == (5, 1, ["m"], pytest.approx(0.6))
    assert len(d["table"]) == 99
    ax = r.plot()
    assert [ln.get_label() for ln in ax.get_lines()] == ["Treat all", "Treat none", "m"]
    assert ax.get_ylim()[1] == pytest.approx(max(0.6, t["m"].max()) * 1.1 + 0.01)
    plt.close("all")


def test_decision_curve_positive_level_and_text_labels():
    r = decision_curve(["poor", "good", "poor", "good"], {"m": [0.8, 0.3, 0.6, 0.7]}, thresholds=[0.5],
                       positive="good")
    # cases are "good" (rows 2 and 4): treated at 0.5 are rows 1, 3, 4 -> TP 1/4, FP 2/4
    assert r.table["m"].iloc[0] == pytest.approx(1 / 4 - 2 / 4 * 1.0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(models={}), r"^decision curve needs at least one model score column\.$"),
    (dict(thresholds=[]), r"^decision curve needs at least one threshold probability \(e\.g\. 0\.01 to 0\.99\)\.$"),
    (dict(thresholds=[0.0, 0.5]), r"^decision-curve thresholds must lie strictly between 0 and 1\.$"),
    (dict(thresholds=[0.5, 1.0]), r"^decision-curve thresholds must lie strictly between 0 and 1\.$"),
    (dict(thresholds=[np.nan]), r"^decision-curve thresholds must lie strictly between 0 and 1\.$"),
    (dict(models={"m": [0.2, -0.1, 0.5]}), r"^model 'm' has values outside \[0, 1\]; decision curves need predicted "
                                          r"probabilities\."),
    (dict(models={"m": [np.nan, np.nan, np.nan]}), r"^no complete rows for the decision curve\.$"),
    (dict(models={"risk": [0.2, "high", 0.5]}), r"^column 'risk' must be numeric but has non-numeric value\(s\) \['high'\]"),
    (dict(y=[1, 1, 1]), r"^column 'label' has a single class \(1\.0 for all 3 rows\)"),
])
def test_decision_curve_bad_input(kwargs, message):
    args = dict(y=[0, 1, 1], models={"m": [0.2, 0.4, 0.5]})
    args.update(kwargs)
    with pytest.raises(TMBRBStatsInputError, match=message):
        decision_curve(args.pop("y"), **args)


# ------------------------------------------------------------------------------------------ Spearman
def test_spearman_printout_plot_and_dropped_rows():
    r = spearman([1, 2, 3, 4, 5, np.nan], [2, 1, 4, 3, 5, 7], x_name="score", y_name="TMB")
    assert (r.n, r.n_dropped) == (5, 1) and r.rho == pytest.approx(0.8)
    assert str(r) == f"Spearman correlation score vs TMB: rho = 0.8000, p = {r.p_value:.4g} (n=5, 1 dropped)"
    assert str(spearman([1, 2, 3], [3, 1, 2])).endswith("(n=3)")
    ax = r.plot()
    assert ax.collections[0].get_offsets().tolist() == [[1, 2], [2, 1], [3, 4], [4, 3], [5, 5]]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("score", "TMB")
    assert ax.get_title() == f"Spearman rho = 0.800, p = {r.p_value:.3g}"
    plt.close("all")


@pytest.mark.parametrize("x,y,message", [
    ([1, 2, np.nan], [1, 2, 3], r"^Spearman correlation needs at least 3 complete pairs, got 2\.$"),
    ([1, 2, 3], [5, 5, 5], r"^Spearman correlation is undefined when one variable is constant\.$"),
    ([1, 2, 3], [1, 2], r"has 2 values but others have 3"),
])
def test_spearman_bad_input(x, y, message):
    with pytest.raises(TMBRBStatsInputError, match=message):
        spearman(x, y)


def test_logistic_predict_on_the_fitted_rows_gives_the_fitted_probabilities(asah):
    # two text predictors: each adds only its own dummies (R: predict(g, type = "response") == fitted(g))
    d = asah.assign(grade=np.where(asah["wfns"] >= 3, "high", "low"))
    r = logistic_combination(d, "outcome", ["s100b", "gender", "grade"])
    np.testing.assert_allclose(r.predict(d), r.fitted, rtol=1e-12)
    # a numeric predictor given as text: numbers are read, anything else gives NaN
    p = r.predict(d.head(2).assign(s100b=["0.13", "n/a"]))
    np.testing.assert_allclose(p[0], r.fitted[0], rtol=1e-12)
    assert np.isnan(p[1])


@pytest.mark.parametrize("call,message", [
    (lambda: spearman(["1", "x", "3"], [1, 2, 3], x_name="score"), r"^column 'score' must be numeric"),
    (lambda: spearman([1, 2, 3], ["1", "2", "y"], y_name="TMB"), r"^column 'TMB' must be numeric"),
    (lambda: auc_by_cutoff(["0.1", "a", "0.3"], [1, 2, 3], [2]), r"^column 'score' must be numeric"),
    (lambda: auc_by_cutoff([0.1, 0.2, 0.3], [1, "b", 3], [2]), r"^column 'target' must be numeric"),
])
def test_non_numeric_columns_are_named(call, message):
    with pytest.raises(TMBRBStatsInputError, match=message):
        call()


# ------------------------------------------------------------------------------------------ boundaries (mutation run)
def test_logistic_default_level_is_ninety_five_percent_wald_and_positive_flips_the_signs(asah):
    # R: g <- glm(outcome ~ s100b + wfns, binomial, aSAH); exp(confint.default(g)) (Wald, 95 %)
    ref = reference()["logistic"]
    r = logistic_combination(asah, "outcome", ["s100b", "wfns"])
    z = 1.959963984540054
    np.testing.assert_allclose(r.table["or_lower"], np.exp(np.array(ref["coef"]) - z * np.array(ref["se"])), **GLM)
    np.testing.assert_allclose(r.table["or_upper"], np.exp(np.array(ref["coef"]) + z * np.array(ref["se"])), **GLM)
    # 'Good' as the event: glm(outcome == "Good" ~ ...) has every coefficient's sign turned, 72 events
    good = logistic_combination(asah, "outcome", ["s100b", "wfns"], positive="Good")
    np.testing.assert_allclose(good.table["coef"], -np.array(ref["coef"]), **GLM)
    assert good.n_events == 72


@pytest.mark.parametrize("positive", [None, "Good"])
def test_logistic_quasi_separation_on_either_side_is_refused(asah, positive):
    # every patient with quasi = 1 had a poor outcome, the others both: the fitted probabilities of that group run
    # to 1 (to 0 with 'Good' as the event) while the rest stay inside (0, 1)
    d = asah.assign(quasi=np.where((asah["outcome"] == "Poor") & (asah["wfns"] >= 4), 1.0, 0.0))
    with pytest.raises(TMBRBStatsInputError, match=r"^the predictors separate the outcome perfectly"):
        logistic_combination(d, "outcome", ["quasi", "s100b"], positive=positive)


def test_auc_by_cutoff_with_a_single_case_and_cohorts_in_the_order_given(asah):
    # one patient at or above the cut-off: pROC still gives the AUC (the share of controls scored lower)
    r = auc_by_cutoff([0.1, 0.4, 0.35, 0.3, 0.2], [1, 2, 3, 9, 2], [5])
    assert (r.table["n_pos"].iloc[0], r.table["n_neg"].iloc[0]) == (1, 4)
    assert r.table["auc"].iloc[0] == pytest.approx(0.5)
    # cohort_order other than the order of appearance (the first row is Female): the given order is kept
    r = auc_by_cutoff(asah["s100b"], asah["wfns"], [3], cohort=asah["gender"], cohort_order=["Male", "Female"])
    assert r.table["cohort"].tolist() == ["Male", "Female"]
    assert list(r.difference.columns) == ["cutoff", "auc_Male", "auc_Female", "difference"]


def test_decision_curve_takes_probabilities_zero_and_one_and_refuses_above_one():
    r = decision_curve([0, 1, 1, 0], {"m": [0.0, 1.0, 0.6, 0.2]}, thresholds=[0.25, 0.5])
    # treat when p >= pt: at 0.25 the two cases, at 0.5 the same; no false positive
    np.testing.assert_allclose(r.table["m"], [0.5, 0.5])
    with pytest.raises(TMBRBStatsInputError) as exc:
        decision_curve([0, 1, 1, 0], {"m": [0.0, 1.5, 0.6, 0.2]})
    assert str(exc.value) == ("model 'm' has values outside [0, 1]; decision curves need predicted probabilities. "
                              "Convert the score first (e.g. `tmbrb analyze logistic` gives fitted probabilities).")


def test_decision_curve_figure_shows_the_three_curves_labelled():
    r = decision_curve([0, 0, 1, 1, 1], {"m": [0.1, 0.6, 0.4, 0.7, 0.9]}, thresholds=np.arange(1, 21) / 25)
    ax = r.plot()
    assert tuple(ax.figure.get_size_inches()) == (6, 4.5)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for name, column in (("Treat all", "treat_all"), ("Treat none", "treat_none"), ("m", "m")):
        np.testing.assert_allclose(lines[name].get_xdata(), r.table["threshold"])
        np.testing.assert_allclose(lines[name].get_ydata(), r.table[column])
    # thin grey and black references, the model in the first colour of the cycle
    assert [(lines[k].get_color(), lines[k].get_linewidth()) for k in ("Treat all", "Treat none")] == [("grey", 1),
                                                                                                      ("k", 1)]
    assert ax.get_ylim() == pytest.approx((-0.05 * 0.6, 0.6 * 1.1 + 0.01))  # net benefit never exceeds the prevalence
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("Threshold probability", "Net benefit",
                                                                  "Decision curves")
    assert [t.get_fontsize() for t in ax.get_legend().get_texts()] == [8, 8, 8]
    # a low prevalence keeps a visible margin below 0
    low = decision_curve([0] * 19 + [1], {"m": [0.1] * 19 + [0.9]}, thresholds=[0.5]).plot(title="DCA")
    assert low.get_ylim()[0] == pytest.approx(-0.005) and low.get_title() == "DCA"
    plt.close("all")
    # the printout shows every row of a short grid and every n // 10-th of a longer one
    assert len(str(decision_curve([0, 1], {"m": [0.2, 0.8]}, thresholds=[0.2, 0.4, 0.6])).splitlines()) == 2 + 3
    assert len(str(r).splitlines()) == 2 + 10  # 20 thresholds: every second


def test_spearman_figure_size_and_points():
    r = spearman([1, 2, 3, 4], [2, 1, 4, 3])
    ax = r.plot()
    assert tuple(ax.figure.get_size_inches()) == (5, 4.5)
    pts = ax.collections[0]
    assert pts.get_sizes().tolist() == [12] and pts.get_alpha() == 0.7
    plt.close("all")


def test_auc_by_cutoff_figure_and_printout(asah):
    # cohorts given Male first (the table's order, not the alphabet's)
    r = auc_by_cutoff(asah["s100b"], asah["wfns"], [2, 3, 4], cohort=asah["gender"], cohort_order=["Male", "Female"])
    axes = r.plot()
    assert len(axes) == 2 and tuple(axes[0].figure.get_size_inches()) == (10, 4)
    ax = axes[0]
    assert ax.get_legend_handles_labels()[1] == ["Male", "Female"]
    assert [t.get_fontsize() for t in ax.get_legend().get_texts()] == [8, 8]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("cut-off of target", "AUC (95% CI)",
                                                                  "AUC across cut-offs")
    # each cohort's points with its CI as the error bar (lower and upper arms)
    for container, (c, g) in zip(ax.containers, r.table.groupby("cohort", sort=False)):
        line, caps, (bars,) = container
        np.testing.assert_allclose(np.asarray(line.get_ydata(), float), g["auc"].to_numpy(float))
        segs = np.array([s[:, 1] for s in bars.get_segments()], dtype=float)
        np.testing.assert_allclose(segs, g[["ci_low", "ci_high"]].to_numpy(float), rtol=1e-12)
        assert len(caps) == 2
    chance = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert len(chance) == 1 and tuple(chance[0].get_ydata()) == (0.5, 0.5) and chance[0].get_color() == "grey"
    bars = axes[1].patches
    assert [round(b.get_width(), 6) for b in bars] == [0.6] * 3
    assert (axes[1].get_xlabel(), axes[1].get_title()) == ("cut-off of target", "Difference between cohorts")
    plt.close("all")
    one = auc_by_cutoff(asah["s100b"], asah["wfns"], [3]).plot(title="one")
    assert len(one) == 1 and tuple(one[0].figure.get_size_inches()) == (5.5, 4) and one[0].get_title() == "one"
    plt.close("all")
    lines = str(r).splitlines()
    # the difference table follows, without an index column, to four decimals
    assert lines[8].split() == ["cutoff", "auc_Male", "auc_Female", "difference"]
    d = r.difference.iloc[0]
    assert lines[9].split() == [f"{v:.4f}" for v in (d["cutoff"], d["auc_Male"], d["auc_Female"], d["difference"])]


def test_logistic_printout_counts_dropped_rows_and_its_roc_is_named_by_the_predictors(asah):
    r = logistic_combination(asah.assign(s100b=asah["s100b"].where(asah.index != 0)), "outcome", ["s100b", "wfns"])
    assert str(r).splitlines()[0] == ("Logistic regression (maximum likelihood, no penalty): n=112, events=41, "
                                      "1 dropped")
    assert (r.roc.name, r.roc.direction) == ("logistic(s100b+wfns)", "<")


def test_spearman_without_names_calls_the_variables_x_and_y():
    r = spearman([1, 2, 3, 4], [2, 1, 4, 3])
    assert str(r).startswith("Spearman correlation x vs y: rho = 0.6000, ")
    ax = r.plot()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y")
    plt.close("all")
