"""`analyze report` on small cohorts: report.json holds the values the single analyses give, the notes say what was
made, left out or skipped, and report.html / report.pdf show them.

The single analyses are checked against R in the other files of tests/stats; here the report must give the same
numbers for the same rows (its cohorts, labels and score groups made as documented).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats import auc_by_cutoff, cox_ph, roc_analysis, spearman
from TMBRBLib.stats.report import ReportConfig, build_report

from _stats_testdata import synthetic_cohort


@pytest.fixture(scope="module")
def cohort():
    pred, clin = synthetic_cohort(n_pred=80, n_clin=60, seed=3)
    return pred.drop(columns=["label"]), clin


def _report(tmp_path, pred, clin=None, **kw):
    fmt = kw.pop("fmt", "html")
    cfg = ReportConfig(cutoffs=(5.0, 8.0), **kw)
    path = build_report(pred, clin, tmp_path / "rep", cfg, fmt=fmt)
    return path, json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))


def test_predictions_only_label_from_tmb_and_every_section_as_the_single_analyses(tmp_path, cohort):
    pred, _ = cohort
    path, res = _report(tmp_path, pred, tmb_cutoff=8.0, title="Cohort A & B")
    assert path == tmp_path / "rep" / "report.html"
    assert res["notes"] == ["label made from TMB >= 8.0"]
    cohorts = list(pd.unique(pred["cohort"]))
    assert [r["name"] for r in res["roc"]] == cohorts
    for r in res["roc"]:
        sub = pred[pred["cohort"] == r["name"]]
        one = roc_analysis((sub["TMB"] >= 8.0).astype(float), sub["score"])
        assert (r["auc"], r["ci_low"], r["ci_high"], r["n_cases"]) == pytest.approx(
            (one.auc, one.ci_low, one.ci_high, one.n_cases), rel=1e-12)
    assert list(res["dca"]) == cohorts
    rho = spearman(pred["score"], pred["TMB"])
    assert (res["spearman"]["rho"], res["spearman"]["x_name"], res["spearman"]["y_name"]) == (
        pytest.approx(rho.rho, rel=1e-12), "score", "TMB")
    abc = auc_by_cutoff(pred["score"], pred["TMB"], [5.0, 8.0], cohort=pred["cohort"], cohort_order=cohorts)
    assert [row["auc"] for row in res["auc_by_cutoff"]["table"]] == pytest.approx(abc.table["auc"].tolist(), rel=1e-12)
    assert len(res["auc_by_cutoff"]["difference"]) == 2
    assert "clinical_n" not in res and "OS" not in res
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Cohort A &amp; B</title>")
    assert "<h1>Cohort A &amp; B</h1>" in page
    assert (f"<p>Predictions: {len(pred)} rows, cohorts {cohorts}. Research use only; not a medical device.</p>"
            in page.replace("&#x27;", "'"))
    assert page.count('<img alt="') == 4  # ROC, decision curves, Spearman, AUC by cut-off
    assert page.endswith("<h2>Notes</h2>\n<ul><li>label made from TMB &gt;= 8.0</li></ul></body></html>")


def test_a_score_outside_zero_one_skips_the_decision_curves_with_the_reason(tmp_path, cohort):
    pred, _ = cohort
    pred = pred.assign(score=pred["score"] * 10, label=(pred["TMB"] >= 10).astype(int))
    path, res = _report(tmp_path, pred)
    reason = "Decision curves skipped: the score is not a probability in [0, 1], so net benefit is undefined"
    assert res["notes"] == [reason] and "dca" not in res and len(res["roc"]) == 2
    assert f'<p class="skip">{reason}</p>' in path.read_text(encoding="utf-8")


def test_one_cohort_without_a_cohort_column_and_a_cohort_with_one_class(tmp_path, cohort):
    pred, _ = cohort
    pred = pred.drop(columns=["cohort"]).assign(label=(pred["TMB"] >= 10).astype(int))
    _, res = _report(tmp_path, pred)
    assert [r["name"] for r in res["roc"]] == ["all"] and list(res["dca"]) == ["all"]
    assert res["auc_by_cutoff"]["difference"] == []
    # a cohort where everyone is High-TMB: its ROC is skipped with the reason, the other is reported
    two = pred.assign(cohort=np.where(np.arange(len(pred)) < 40, "a", "b"), label=np.where(np.arange(len(pred)) < 40, 1,
                                                                                           pred["label"]))
    _, res = _report(tmp_path / "two", two)
    assert [r["name"] for r in res["roc"]] == ["b"]
    assert res["notes"][0].startswith("ROC in cohort a skipped: column 'label' has a single class (1.0 for all 40 rows)")


def test_clinical_sections_give_the_cox_model_of_the_score_group_and_say_what_was_left_out(tmp_path, cohort):
    pred, clin = cohort
    clin = clin.drop(columns=["pfs_time", "smoking", "histology", "stage"])
    clin = pd.concat([clin, clin.head(2).assign(case=["X1", "X2"])], ignore_index=True)  # two without a prediction
    path, res = _report(tmp_path, pred, clin, covariates=("ecog", "sex", "egfr", "age", "smoking"), os_cutoff=0.5)
    assert (res["clinical_n"], res["clinical_unmatched"]) == (60, 2)
    assert res["notes"][:3] == ["label made from TMB >= 10.0", "covariates not in the clinical CSV, left out: ['smoking']",
                                "PFS: columns pfs_time/pfs_event not in the clinical CSV; PFS analyses skipped"]
    assert "PFS" not in res and "table1_PFS" not in res
    merged = clin.merge(pred[["case", "score"]], on="case")
    ref = cox_ph(merged.assign(high=(merged["score"] > 0.5).astype(float)), "os_time", "os_event", ["high"])
    got = res["OS"]["cox_group"]
    assert got["table"][0]["term"] == "OS_high" and got["table"][0]["hr"] == pytest.approx(ref.table["hr"].iloc[0],
                                                                                              rel=1e-9)
    assert [r["covariate"] for r in res["OS"]["cox_scan"]["table"]] == ["ecog", "sex[male]", "egfr", "age"]
    groups = sorted(g["group"] for g in res["OS"]["km_log"]["summary"])
    assert groups == ["score <= 0.5", "score > 0.5"] and res["OS"]["km_log-log"]["conf_type"] == "log-log"
    assert res["OS"]["maxstat"]["minprop"] == 0.1 and res["OS"]["km_maxstat"]["summary"]
    t1 = res["table1_OS"]
    n_high = int((merged["score"] > 0.5).sum())
    assert [c for c in t1["table"][0] if c.startswith("score")] == [f"score <= 0.5 (n={60 - n_high})",
                                                                    f"score > 0.5 (n={n_high})"]
    page = path.read_text(encoding="utf-8")
    assert "<p>60 patients with both a score and clinical data; 2 clinical rows without a prediction were left out.</p>" in page
    assert "<h2>Table 1 by OS group</h2>" in page
    # the notes as one list, an item each
    assert ("<h2>Notes</h2>\n<ul><li>label made from TMB &gt;= 10.0</li><li>covariates not in the clinical CSV, left "
            "out: [&#x27;smoking&#x27;]</li><li>PFS: columns") in page


def _pdf_lines(data: bytes):
    """(font size, text) of each line matplotlib wrote into an uncompressed PDF (one TJ array per line)."""
    out = []
    for size, arr in re.findall(rb"/F\d+ ([\d.]+) Tf\s+[-\d. ]+Td\s+\[(.*?)\]\s*TJ", data, re.S):
        parts = re.findall(rb"\(((?:\\.|[^\\)])*)\)", arr, re.S)
        text = re.sub(rb"\\(.)", rb"\1", b"".join(parts)).decode("latin-1")
        out.append((float(size), text))
    return out


def test_pdf_report_has_a_title_page_and_one_page_per_figure(tmp_path, cohort, monkeypatch):
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "pdf.compression", 0)  # to read the text back
    pred, _ = cohort
    path, res = _report(tmp_path, pred, fmt="pdf", title="Cohort PDF")
    assert path == tmp_path / "rep" / "report.pdf" and not (tmp_path / "rep" / "report.html").exists()
    data = path.read_bytes()
    assert data[:5] == b"%PDF-" and data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") == 1 + 4
    assert res["notes"] == ["label made from TMB >= 10.0"]
    lines = _pdf_lines(data)
    # the title page: A4, the title, the notes and where the numbers are, in 8 pt monospace
    assert lines[:3] == [(8.0, "Cohort PDF"), (8.0, "label made from TMB >= 10.0"),
                         (8.0, "Tables and numbers: report.json")]
    assert re.search(rb"/MediaBox \[\s*0 0 595\.44 841\.68\s*\]", data) and b"DejaVuSansMono" in data
    # each figure page carries its title in 9 pt, in the report's order (matplotlib writes the "fi"/"ff" glyphs of
    # "figure" and "cut-off" as separate runs, so the titles are matched up to them)
    titles = "|".join(t for size, t in lines if size == 9.0 and t.isprintable())
    starts = [titles.find(t) for t in ("ROC curves by cohort (paper ", "Net bene",
                                       "Spearman correlation (paper ", "AUC at each TMB cut-o")]
    assert -1 not in starts and starts == sorted(starts)
