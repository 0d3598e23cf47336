"""`tmbrb analyze ...` on the R datasets: each sub-command passes its options on and writes the values R gives.

The reference values are tests/stats/fixtures/reference.json (tools/r_reference/make_reference.R: pROC, survival,
maxstat on aSAH, lung, veteran); a value is checked in the file the user reads (the JSON) and in the printout.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats.cli import main

from _stats_testdata import FIXTURES, fixture_csv, reference

ASAH = str(FIXTURES / "asah.csv")
LUNG = str(FIXTURES / "lung.csv")
R = dict(rel=1e-6)


def _run(tmp_path, capsys, *argv):
    out = tmp_path / "out"
    rc = main(["analyze", *argv, "--out", str(out)])
    cap = capsys.readouterr()
    return rc, out, cap.out, cap.err


def _json(out, name):
    return json.loads((out / name).read_text(encoding="utf-8"))


def test_roc_of_two_scores_with_a_threshold(tmp_path, capsys):
    rc, out, text, _ = _run(tmp_path, capsys, "roc", "--csv", ASAH, "--label", "outcome", "--score", "s100b", "wfns",
                            "--threshold", "0.205")
    assert rc == 0
    got, ref = _json(out, "roc.json"), reference()["roc"]
    assert list(got) == ["s100b", "wfns"]
    for s in ("s100b", "wfns"):
        assert [got[s][k] for k in ("auc", "ci_low", "ci_high")] == pytest.approx(
            [ref[s][k] for k in ("auc", "ci_low", "ci_high")], **R)
        assert (got[s]["name"], got[s]["direction"], got[s]["ci_method"], got[s]["threshold"]) == (s, "<", "delong",
                                                                                                    0.205)
    assert got["s100b"]["threshold_sensitivity"] == pytest.approx(ref["s100b"]["at"][0]["sensitivity"], **R)
    assert got["s100b"]["threshold_specificity"] == pytest.approx(ref["s100b"]["at"][0]["specificity"], **R)
    lines = text.splitlines()
    assert lines[0].startswith("ROC s100b: AUC 0.7314 (95% CI 0.6301-0.8326, delong)")
    assert sum(ln.startswith("ROC wfns: AUC 0.8237") for ln in lines) == 1
    assert lines[-1] == f"wrote {out / 'roc.json'}"
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_roc_direction_positive_and_bootstrap_are_passed_on(tmp_path, capsys):
    rc, out, _, _ = _run(tmp_path, capsys, "roc", "--csv", ASAH, "--label", "outcome", "--score", "s100b",
                         "--direction", ">", "--positive", "Good", "--ci", "bootstrap", "--n-boot", "200",
                         "--seed", "3")
    assert rc == 0
    got = _json(out, "roc.json")["s100b"]
    # 'Good' as case with controls > cases: the same ordering as R's, so the same AUC
    assert (got["case_level"], got["control_level"], got["direction"], got["ci_method"]) == ("Good", "Poor", ">",
                                                                                             "bootstrap")
    assert got["auc"] == pytest.approx(reference()["roc"]["s100b"]["auc"], **R)
    rc, out2, _, _ = _run(tmp_path / "again", capsys, "roc", "--csv", ASAH, "--label", "outcome", "--score", "s100b",
                          "--direction", ">", "--positive", "Good", "--ci", "bootstrap", "--n-boot", "200",
                          "--seed", "4")
    other = _json(out2, "roc.json")["s100b"]
    assert (other["ci_low"], other["ci_high"]) != (got["ci_low"], got["ci_high"])  # the seed reaches the bootstrap


def test_compare_roc_names_the_scores_and_gives_rs_p(tmp_path, capsys):
    rc, out, text, _ = _run(tmp_path, capsys, "compare-roc", "--csv", ASAH, "--label", "outcome", "--score1", "s100b",
                            "--score2", "ndka")
    ref = reference()["roc_test"][0]
    got = _json(out, "compare_roc.json")
    assert rc == 0 and (got["name1"], got["name2"]) == ("s100b", "ndka")
    assert [got["z"], got["p_value"]] == pytest.approx([ref["z"], ref["p"]], **R)
    assert text.splitlines()[-1] == f"wrote {out / 'compare_roc.json'}"
    assert not (out / "compare_roc.png").exists()


def test_compare_roc_positive_is_passed_on(tmp_path, capsys):
    rc, out, _, _ = _run(tmp_path, capsys, "compare-roc", "--csv", ASAH, "--label", "outcome", "--score1", "s100b",
                         "--score2", "ndka", "--positive", "Good")
    got = _json(out, "compare_roc.json")
    # 'Good' as case: the 72 good outcomes are the cases, the curves turn round (direction '>'), the AUCs stay
    assert rc == 0 and (got["n_cases"], got["n_controls"], got["direction1"], got["direction2"]) == (72, 41, ">", ">")
    assert got["p_value"] == pytest.approx(reference()["roc_test"][0]["p"], **R)


def test_decision_curve_on_the_threshold_grid_given(tmp_path, capsys):
    d = fixture_csv("asah.csv").assign(p=lambda x: x["s100b"].clip(0, 1))
    d.to_csv(tmp_path / "asah_p.csv", index=False)
    rc, out, text, _ = _run(tmp_path, capsys, "dca", "--csv", str(tmp_path / "asah_p.csv"), "--label", "outcome",
                            "--models", "p", "--min-threshold", "0.1", "--max-threshold", "0.3", "--step", "0.1")
    assert rc == 0
    table = pd.DataFrame(_json(out, "dca.json")["table"])
    np.testing.assert_allclose(table["threshold"], [0.1, 0.2, 0.3])  # the upper end included
    y, p, n = (d["outcome"] == "Poor").to_numpy(), d["p"].to_numpy(), len(d)
    for pt, nb_all, nb in zip(table["threshold"], table["treat_all"], table["p"]):
        odds = pt / (1 - pt)
        assert nb_all == pytest.approx(y.mean() - (1 - y.mean()) * odds, rel=1e-12)
        treat = p >= pt
        assert nb == pytest.approx((y & treat).sum() / n - (~y & treat).sum() / n * odds, rel=1e-12)
    assert text.splitlines()[-1] == f"wrote {out / 'dca.json'}" and (out / "dca.png").is_file()


def test_decision_curve_default_grid_and_positive(tmp_path, capsys):
    d = fixture_csv("asah.csv").assign(p=lambda x: x["s100b"].clip(0, 1))
    d.to_csv(tmp_path / "asah_p.csv", index=False)
    rc, out, _, _ = _run(tmp_path, capsys, "dca", "--csv", str(tmp_path / "asah_p.csv"), "--label", "outcome",
                         "--models", "p", "--positive", "Good")
    got = _json(out, "dca.json")
    np.testing.assert_allclose([r["threshold"] for r in got["table"]], np.arange(1, 100) / 100)
    assert rc == 0 and got["prevalence"] == pytest.approx(72 / 113)


def test_spearman_names_its_columns(tmp_path, capsys):
    rc, out, text, _ = _run(tmp_path, capsys, "spearman", "--csv", ASAH, "--x", "s100b", "--y", "ndka")
    got, ref = _json(out, "spearman.json"), reference()["spearman"]
    assert rc == 0 and (got["x_name"], got["y_name"], got["n"]) == ("s100b", "ndka", 113)
    assert [got["rho"], got["p_value"]] == pytest.approx([ref["rho"], ref["p"]], **R)
    assert text.splitlines()[0] == "Spearman correlation s100b vs ndka: rho = -0.0600, p = 0.5282 (n=113)"
    assert (out / "spearman.png").is_file()
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # the figure is closed once written


def test_auc_by_cutoff_per_cohort_and_direction(tmp_path, capsys):
    rc, out, _, _ = _run(tmp_path, capsys, "auc-by-cutoff", "--csv", ASAH, "--score", "s100b", "--target", "wfns",
                         "--cohort", "gender", "--cutoffs", "2", "3", "--direction", ">")
    assert rc == 0
    got = pd.DataFrame(_json(out, "auc_by_cutoff.json")["table"])
    d = fixture_csv("asah.csv")
    for _, row in got.iterrows():
        sub = d[d["gender"] == row["cohort"]]
        y = (sub["wfns"] >= row["cutoff"]).to_numpy()
        s = sub["s100b"].to_numpy()
        # direction '>': AUC = P(score of a case < score of a control) + ties / 2
        pairs = s[y][:, None] - s[~y][None, :]
        assert row["auc"] == pytest.approx(np.mean((pairs < 0) + 0.5 * (pairs == 0)), rel=1e-12)
    assert sorted(set(got["cohort"])) == ["Female", "Male"] and sorted(set(got["cutoff"])) == [2.0, 3.0]


def test_logistic_with_a_reference_level_matches_glm(tmp_path, capsys):
    rc, out, text, _ = _run(tmp_path, capsys, "logistic", "--csv", ASAH, "--label", "outcome", "--predictors",
                            "s100b", "wfns")
    got, ref = _json(out, "logistic.json"), reference()["logistic"]
    assert rc == 0
    coefs = {r["term"]: r["coef"] for r in got["table"]}
    assert [coefs[t] for t in ref["terms"]] == pytest.approx(ref["coef"], **R)
    assert got["roc"]["auc"] == pytest.approx(ref["auc"], **R)
    assert text.splitlines()[-1] == f"wrote {out / 'logistic.json'}" and not (out / "logistic.png").exists()
    rc, out, _, _ = _run(tmp_path, capsys, "logistic", "--csv", ASAH, "--label", "outcome", "--predictors", "s100b",
                         "gender", "--reference", "gender=Male", "--positive", "Good")
    terms = [r["term"] for r in _json(out, "logistic.json")["table"]]
    assert rc == 0 and terms == ["(Intercept)", "s100b", "gender[Female]"]
    assert _json(out, "logistic.json")["n_events"] == 72  # 'Good' outcomes are the events


def test_cutpoint_bounds_and_permutations_are_passed_on(tmp_path, capsys):
    ref = reference()["maxstat"]["lung_karno"]
    rc, out, _, _ = _run(tmp_path, capsys, "cutpoint", "--csv", LUNG, "--time", "time", "--event", "status",
                         "--marker", "ph_karno", "--minprop", "0.2", "--maxprop", "0.8", "--permutations", "50",
                         "--seed", "2")
    got = _json(out, "cutpoint.json")
    assert rc == 0
    assert [got["statistic"], got["p_value"], got["cutpoint"]] == pytest.approx(
        [ref["statistic"], ref["p"], ref["estimate"]], **R)
    assert got["permutations"] == 50 and 0 < got["p_value_permutation"] <= 0.1  # 1 + B in the denominator: > 0
    assert (out / "cutpoint.png").is_file()


def test_km_by_marker_cutoff_with_log_log_bands_and_risk_times(tmp_path, capsys):
    rc, out, text, _ = _run(tmp_path, capsys, "km", "--csv", LUNG, "--time", "time", "--event", "status", "--group",
                            "sex", "--conf-type", "log-log", "--risk-times", "0", "200", "400")
    ref = reference()["km"]["lung_sex_loglog"]
    got = _json(out, "km.json")
    assert rc == 0
    assert got["conf_type"] == "log-log"
    assert [[g["median"], g["median_lower"], g["median_upper"]] for g in got["summary"]] == [
        list(v) for v in zip(ref["median"], ref["lcl"], ref["ucl"])]
    np.testing.assert_allclose([c["lower"] for c in got["curves"]["1"]][:5], ref["lower"][:5], rtol=1e-6)
    assert got["at_risk"]["time"] == [0, 200, 400]
    assert got["at_risk"]["n_risk"] == {"1": [138, 78, 31], "2": [90, 66, 26]}  # R's summary(fit, times = ...)
    rc, out, _, _ = _run(tmp_path, capsys, "km", "--csv", LUNG, "--time", "time", "--event", "status", "--marker",
                         "age", "--cutoff", "70")
    groups = {g["group"]: g["n"] for g in _json(out, "km.json")["summary"]}
    lung = fixture_csv("lung.csv")
    assert groups == {"age <= 70": int((lung["age"] <= 70).sum()), "age > 70": int((lung["age"] > 70).sum())}


def test_cox_with_breslow_ties_and_the_scan_with_a_marker_cutoff(tmp_path, capsys):
    rc, out, _, _ = _run(tmp_path, capsys, "cox", "--csv", LUNG, "--time", "time", "--event", "status",
                         "--covariates", "age", "sex", "ph_ecog")
    ref = reference()["cox"]["lung_multi"]
    got = _json(out, "cox.json")
    assert rc == 0 and got["ties"] == "efron"
    assert [r["coef"] for r in got["table"]] == pytest.approx(ref["coef"], **R)
    assert not (out / "cox.png").exists()
    rc, out, _, _ = _run(tmp_path, capsys, "cox-scan", "--csv", LUNG, "--time", "time", "--event", "status",
                         "--marker", "age", "--cutoff", "70", "--covariates", "sex", "--ties", "breslow")
    got = _json(out, "cox_scan.json")
    assert rc == 0 and got["marker"] == "age>70" and got["models"]["sex"]["ties"] == "breslow"
    lung = fixture_csv("lung.csv").assign(old=lambda d: (d["age"] > 70).astype(float))
    from TMBRBLib.stats import cox_ph
    alone = cox_ph(lung, "time", "status", ["old", "sex"], ties="breslow")
    assert got["table"][0]["marker_hr"] == pytest.approx(alone.table["hr"].iloc[0], rel=1e-9)
    assert (out / "cox_scan.png").is_file()


def test_table1_welch_by_default_and_student_when_asked(tmp_path, capsys):
    ref = reference()["table1"]
    t1 = fixture_csv("lung.csv")[["sex", "ph_ecog", "age", "wt_loss"]].dropna()
    t1.to_csv(tmp_path / "t1.csv", index=False)
    for extra, key in (([], "welch_age"), (["--equal-var"], "student_age")):
        rc, out, text, _ = _run(tmp_path, capsys, "table1", "--csv", str(tmp_path / "t1.csv"), "--group", "sex",
                                "--continuous", "age", *extra)
        got = _json(out, "table1.json")
        row = [r for r in got["table"] if r["variable"].startswith("age")][0]
        assert rc == 0 and row["p"] == pytest.approx(ref[key]["p"], rel=1e-6), key
        assert text.splitlines()[-1] == f"wrote {out / 'table1.csv'}"
        assert "<table" in (out / "table1.html").read_text(encoding="utf-8")


def test_table1_by_marker_cutoff_and_without_a_group(tmp_path, capsys):
    rc, out, _, _ = _run(tmp_path, capsys, "table1", "--csv", LUNG, "--marker", "age", "--cutoff", "70",
                         "--categorical", "sex")
    header = (out / "table1.csv").read_text(encoding="utf-8").splitlines()[0]
    assert rc == 0 and "age <= 70" in header and "age > 70" in header
    rc, _, _, err = _run(tmp_path, capsys, "table1", "--csv", LUNG, "--categorical", "sex")
    assert rc == 2 and err == "error: table1 needs --group COLUMN, or --marker COLUMN with --cutoff VALUE.\n"


def test_warnings_go_to_stderr_and_errors_exit_2(tmp_path, capsys):
    small = fixture_csv("lung.csv").head(8)  # 6 events
    small.to_csv(tmp_path / "small.csv", index=False)
    rc, _, _, err = _run(tmp_path, capsys, "cox", "--csv", str(tmp_path / "small.csv"), "--time", "time", "--event",
                         "status", "--covariates", "age")
    assert rc == 0 and err.startswith("warning: only 6 events (< 10) for the Cox model; ") and err.count("\n") == 1
    rc, _, _, err = _run(tmp_path, capsys, "cox", "--csv", LUNG, "--time", "days", "--event", "status",
                         "--covariates", "age")
    assert rc == 2 and err.startswith(f"error: {LUNG}: missing column(s) ['days']; the table has columns ")


def test_the_default_output_folder_is_analysis(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "spearman", "--csv", ASAH, "--x", "s100b", "--y", "ndka"]) == 0
    assert json.loads((tmp_path / "analysis" / "spearman.json").read_text())["x_name"] == "s100b"


def test_table1_printout_and_csv_without_an_index_column(tmp_path, capsys):
    rc, out, text, _ = _run(tmp_path, capsys, "table1", "--csv", LUNG, "--group", "sex", "--continuous", "age")
    lines = text.splitlines()
    assert rc == 0 and lines[0].split()[:3] == ["variable", "level", "All"]
    assert lines[1].split()[:4] == ["age", "mean±SD", "62.4±9.1", "63.3±9.1"] and lines[1].endswith("Welch t-test")
    csv_lines = (out / "table1.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0] == "variable,level,All (n=228),1 (n=138),2 (n=90),p,p_text,test"
    assert csv_lines[1].startswith("age,mean±SD,62.4±9.1,63.3±9.1,61.1±8.8,0.0639")


@pytest.mark.parametrize("bounds,ok", [
    (["--min-threshold", "0"], False),
    (["--min-threshold", "0.3", "--max-threshold", "0.3"], True),   # one threshold
    (["--max-threshold", "1"], False),
    (["--max-threshold", "1.5"], False),
    (["--step", "1"], False),
    (["--step", "1.5"], False),
])
def test_decision_curve_threshold_bounds(tmp_path, capsys, bounds, ok):
    d = fixture_csv("asah.csv").assign(p=lambda x: x["s100b"].clip(0, 1))
    d.to_csv(tmp_path / "asah_p.csv", index=False)
    rc, out, _, err = _run(tmp_path, capsys, "dca", "--csv", str(tmp_path / "asah_p.csv"), "--label", "outcome",
                           "--models", "p", *bounds)
    if ok:
        assert rc == 0 and [r["threshold"] for r in _json(out, "dca.json")["table"]] == [0.3]
    else:
        assert rc == 2 and err.startswith("error: need 0 < --min-threshold <= --max-threshold < 1 and 0 < --step < 1; ")


def test_cutpoint_permutation_p_is_repeatable_with_its_seed(tmp_path, capsys):
    args = ["cutpoint", "--csv", LUNG, "--time", "time", "--event", "status", "--marker", "age", "--permutations", "40"]
    ps = []
    for i, seed in enumerate(("7", "7", "8")):
        rc, out, _, _ = _run(tmp_path / str(i), capsys, *args, "--seed", seed)
        ps.append(_json(out, "cutpoint.json")["p_value_permutation"])
    assert rc == 0 and ps[0] == ps[1] and ps[2] != ps[0]


def test_cox_scan_marker_cutoff_keeps_missing_values_missing_and_takes_the_reference(tmp_path, capsys):
    vet = fixture_csv("veteran.csv")
    vet.loc[:4, "karno"] = np.nan  # five patients without a Karnofsky score
    vet.to_csv(tmp_path / "vet.csv", index=False)
    rc, out, _, _ = _run(tmp_path, capsys, "cox-scan", "--csv", str(tmp_path / "vet.csv"), "--time", "time", "--event",
                         "status", "--marker", "karno", "--cutoff", "50", "--covariates", "celltype", "--reference",
                         "celltype=large")
    got = _json(out, "cox_scan.json")
    assert rc == 0 and got["marker"] == "karno>50" and got["table"][0]["n"] == len(vet) - 5
    terms = [t["term"] for t in got["models"]["celltype"]["table"]]
    assert terms == ["karno>50", "celltype[adeno]", "celltype[smallcell]", "celltype[squamous]"]
    vet.assign(karno=vet["karno"].astype(object).where(vet.index != 7, "high")).to_csv(tmp_path / "bad.csv", index=False)
    rc, _, _, err = _run(tmp_path, capsys, "cox-scan", "--csv", str(tmp_path / "bad.csv"), "--time", "time",
                         "--event", "status", "--marker", "karno", "--cutoff", "50", "--covariates", "celltype")
    assert rc == 2 and err.startswith("error: column 'karno' must be numeric but has non-numeric value(s) ['high']")


def test_roc_fixed_direction_seed_json_layout_and_no_figure_left_open(tmp_path, capsys):
    import matplotlib.pyplot as plt

    plt.close("all")
    args = ["roc", "--csv", ASAH, "--label", "outcome", "--score", "s100b", "--positive", "Good", "--direction", "<",
            "--ci", "bootstrap", "--n-boot", "100"]
    rc, out, _, _ = _run(tmp_path / "a", capsys, *args, "--seed", "5")
    first = _json(out, "roc.json")["s100b"]
    # 'Good' as case with the direction fixed at '<': the curve below the diagonal, 1 - R's AUC
    assert rc == 0 and first["auc"] == pytest.approx(1 - reference()["roc"]["s100b"]["auc"], **R)
    assert (out / "roc.json").read_text(encoding="utf-8").splitlines()[:2] == ["{", ' "s100b": {']
    assert plt.get_fignums() == []  # the command closes its figure
    rc, out, _, _ = _run(tmp_path / "b", capsys, *args, "--seed", "5")
    again = _json(out, "roc.json")["s100b"]
    assert (again["ci_low"], again["ci_high"]) == (first["ci_low"], first["ci_high"])


def test_auc_by_cutoff_without_a_cohort_column(tmp_path, capsys):
    rc, out, _, _ = _run(tmp_path, capsys, "auc-by-cutoff", "--csv", ASAH, "--score", "s100b", "--target", "wfns",
                         "--cutoffs", "3")
    got = _json(out, "auc_by_cutoff.json")
    assert rc == 0 and [r["cohort"] for r in got["table"]] == ["all"] and got["difference"] == []


@pytest.mark.parametrize("sub,extra", [("km", ["--time", "time", "--event", "status"]), ("table1", ["--continuous", "age"])])
def test_a_marker_without_a_cutoff_is_refused(tmp_path, capsys, sub, extra):
    # km used to draw one curve of the whole cohort, as if the marker had not been given
    rc, out, _, err = _run(tmp_path, capsys, sub, "--csv", LUNG, "--marker", "age", *extra)
    assert rc == 2 and err == "error: --marker age needs --cutoff VALUE (the marker is split at it), or give --group COLUMN.\n"
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("item", ["celltype=", "=large", "celltype", " = "])
def test_a_malformed_reference_item_is_refused_whole(tmp_path, capsys, item):
    rc, _, _, err = _run(tmp_path, capsys, "cox", "--csv", str(FIXTURES / "veteran.csv"), "--time", "time", "--event",
                         "status", "--covariates", "celltype", "--reference", item)
    assert rc == 2 and err == (f"error: --reference {item!r} is not COLUMN=LEVEL; write e.g. --reference "
                               "histology=squamous (one item per text covariate).\n")


def test_usage_names_the_program_and_its_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0
    assert text.startswith("usage: tmbrb [-h] COMMAND ...\n\nTMBRB statistics toolkit\n")
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert capsys.readouterr().err.endswith("tmbrb: error: the following arguments are required: COMMAND\n")


def test_km_marker_split_leaves_missing_values_out_and_names_a_text_marker(tmp_path, capsys):
    lung = fixture_csv("lung.csv")
    lung.loc[:9, "age"] = np.nan  # ten patients without an age: in neither group
    lung.to_csv(tmp_path / "l.csv", index=False)
    rc, out, _, _ = _run(tmp_path, capsys, "km", "--csv", str(tmp_path / "l.csv"), "--time", "time", "--event", "status",
                         "--marker", "age", "--cutoff", "70")
    got = _json(out, "km.json")
    groups = {g["group"]: g["n"] for g in got["summary"]}
    assert rc == 0 and groups == {"age <= 70": int((lung["age"] <= 70).sum()), "age > 70": int((lung["age"] > 70).sum())}
    assert got["n_dropped"] == 10
    lung.assign(age=lung["age"].astype(object).where(lung.index != 20, "old")).to_csv(tmp_path / "t.csv", index=False)
    rc, _, _, err = _run(tmp_path, capsys, "km", "--csv", str(tmp_path / "t.csv"), "--time", "time", "--event",
                         "status", "--marker", "age", "--cutoff", "70")
    assert rc == 2 and err.startswith("error: column 'age' must be numeric but has non-numeric value(s) ['old']")
