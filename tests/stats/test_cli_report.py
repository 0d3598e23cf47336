"""`analyze` command line and the HTML report on a synthetic cohort and the R datasets."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from TMBRBLib.stats.cli import add_analyze_parser, main

from _stats_testdata import FIXTURES, reference, synthetic_cohort

ASAH = str(FIXTURES / "asah.csv")
LUNG = str(FIXTURES / "lung.csv")


def test_add_analyze_parser_sets_func():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    add_analyze_parser(sub)
    args = p.parse_args(["analyze", "cox", "--csv", LUNG, "--covariates", "age"])
    assert callable(args.func)


@pytest.mark.parametrize("argv,files", [
    (["roc", "--csv", ASAH, "--label", "outcome", "--score", "s100b", "ndka", "--threshold", "0.205"], ["roc.json", "roc.png"]),
    (["compare-roc", "--csv", ASAH, "--label", "outcome", "--score1", "s100b", "--score2", "wfns"], ["compare_roc.json"]),
    (["spearman", "--csv", ASAH, "--x", "s100b", "--y", "ndka"], ["spearman.json", "spearman.png"]),
    (["logistic", "--csv", ASAH, "--label", "outcome", "--predictors", "s100b", "wfns"], ["logistic.json"]),
    (["auc-by-cutoff", "--csv", ASAH, "--score", "s100b", "--target", "wfns", "--cohort", "gender", "--cutoffs", "2", "3", "4"],
     ["auc_by_cutoff.json", "auc_by_cutoff.png"]),
    (["cutpoint", "--csv", LUNG, "--time", "time", "--event", "status", "--marker", "age"], ["cutpoint.json", "cutpoint.png"]),
    (["km", "--csv", LUNG, "--time", "time", "--event", "status", "--marker", "age", "--cutoff", "70"], ["km.json", "km.png"]),
    (["cox", "--csv", LUNG, "--time", "time", "--event", "status", "--covariates", "age", "sex", "ph_ecog"], ["cox.json"]),
    (["cox-scan", "--csv", LUNG, "--time", "time", "--event", "status", "--marker", "sex", "--covariates", "age", "ph_ecog"],
     ["cox_scan.json", "cox_scan.png"]),
    (["table1", "--csv", LUNG, "--group", "sex", "--continuous", "age", "--categorical", "ph_ecog"], ["table1.csv", "table1.html"]),
])
def test_subcommands_write_outputs(tmp_path, argv, files, capsys):
    assert main(["analyze", *argv, "--out", str(tmp_path)]) == 0
    for f in files:
        assert (tmp_path / f).stat().st_size > 0, f


def test_cli_json_values_match_r(tmp_path):
    assert main(["analyze", "compare-roc", "--csv", ASAH, "--label", "outcome", "--score1", "s100b", "--score2", "ndka",
                 "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "compare_roc.json").read_text())
    assert got["p_value"] == pytest.approx(reference()["roc_test"][0]["p"], rel=1e-9)
    assert main(["analyze", "cutpoint", "--csv", LUNG, "--time", "time", "--event", "status", "--marker", "age",
                 "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "cutpoint.json").read_text())
    assert got["p_value"] == pytest.approx(reference()["maxstat"]["lung_age"]["p"], rel=1e-9)


def test_bad_input_exit_code_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "TMBRBLib.stats.cli", "analyze", "km", "--csv", LUNG, "--time", "days",
                           "--event", "status", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "missing column(s) ['days']" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert main(["analyze", "roc", "--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2


def test_report_html(tmp_path):
    pred, clin = synthetic_cohort()
    pred.loc[3, "score"] = None  # a NaN row is dropped, not fatal
    pred.to_csv(tmp_path / "pred.csv", index=False)
    clin.to_csv(tmp_path / "clin.csv", index=False)
    out = tmp_path / "rep"
    assert main(["analyze", "report", "--predictions", str(tmp_path / "pred.csv"), "--clinical", str(tmp_path / "clin.csv"),
                 "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 10
    res = json.loads((out / "report.json").read_text())
    assert {r["name"] for r in res["roc"]} == {"train", "test"}
    assert all(r["auc"] > 0.6 for r in res["roc"])  # the synthetic score carries signal
    assert res["spearman"]["rho"] > 0.3
    for end in ("OS", "PFS"):
        assert res[end]["km_log"]["logrank"]["p_value"] is not None
        assert res[end]["maxstat"]["p_value"] >= res[end]["maxstat"]["naive_p_value"]
        assert len(res[end]["cox_scan"]["table"]) >= 7  # ecog, sex, smoking, histology, stage, egfr, age
    assert res["OS"]["cox_group"]["table"][0]["hr"] < 1  # high score lowers the hazard in the generator
    assert "table1_OS" in res
