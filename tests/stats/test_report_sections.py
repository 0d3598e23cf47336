"""The report's parts one at a time, on a small cohort: each section holds the values the single analyses give for the
rows it is documented to use, with its headings, tables, figures and notes; the output functions write what they say.

Fast (well under a second each): the sections are called directly, and except in the tests of ``ReportDoc.fig`` and
``_write_pdf`` a section's figure is kept as it is drawn without being encoded as PNG (``fast_fig``; ``ReportDoc.fig``
itself is tested below). The single analyses are checked against R in the other files of tests/stats;
test_report_values.py builds whole reports.
"""
from __future__ import annotations

import base64
import html
import json
import re
import struct
import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from TMBRBLib.stats import (TMBRBStatsInputError, TMBRBStatsWarning, auc_by_cutoff, cox_ph, cox_scan, decision_curve,
                            kaplan_meier, maxstat_cutpoint, roc_analysis, spearman, table1)
from TMBRBLib.stats import report as rep
from TMBRBLib.stats._result import jsonable
from TMBRBLib.stats.report import ReportConfig, ReportDoc

from _stats_testdata import synthetic_cohort

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def fast_fig(monkeypatch):
    """ReportDoc.fig keeping (title, figure) and a placeholder part, without the PNG encoding (tested on its own)."""
    def fig(self, f, title):
        self.parts.append(f"<figure>{title}</figure>")
        self.figures.append((title, f))
    monkeypatch.setattr(ReportDoc, "fig", fig)


@pytest.fixture(scope="module")
def cohort():
    pred, clin = synthetic_cohort(n_pred=80, n_clin=60, seed=3)
    return pred, clin


def _same(a, b):
    """Two results as they go into report.json."""
    assert json.dumps(jsonable(a), sort_keys=True) == json.dumps(jsonable(b), sort_keys=True)


def _tables(doc):
    """Each HTML table of the report as (header cells, rows of cells)."""
    out = []
    for part in doc.parts:
        if part.startswith("<table"):
            head = re.findall(r"<th>(.*?)</th>", part, re.S)
            rows = [re.findall(r"<td>(.*?)</td>", r, re.S) for r in re.findall(r"<tr>(.*?)</tr>", part, re.S)]
            out.append((head, [r for r in rows if r]))
    return out


def _f(v):
    """A float as the report's tables show it (4 significant digits)."""
    return f"{v:.4g}"


# ---------------------------------------------------------------- ReportDoc and guarded_section
def test_report_doc_headings_paragraphs_and_skips_are_escaped_html():
    doc = ReportDoc()
    doc.h("A & <B>")
    doc.h("Sub", 3)
    doc.p("x < 1")
    doc.pre("a\n<b>")
    doc.skip("Part 'x'", ValueError("bad & worse"))
    assert doc.parts == ["<h2>A &amp; &lt;B&gt;</h2>", "<h3>Sub</h3>", "<p>x &lt; 1</p>", "<pre>a\n&lt;b&gt;</pre>",
                         '<p class="skip">Part &#x27;x&#x27; skipped: bad &amp; worse</p>']
    assert doc.notes == ["Part 'x' skipped: bad & worse"]
    assert doc.figures == [] and doc.results == {}


def test_report_doc_table_shows_four_digits_blank_for_missing_and_no_index():
    doc = ReportDoc()
    doc.table(pd.DataFrame({"name": ["a", "b"], "value": [1.234567, np.nan], "n": [3, 4]}, index=[7, 8]))
    (part,) = doc.parts
    assert part.startswith('<table class="dataframe t">')  # no border attribute: the style sheet draws them
    assert _tables(doc) == [(["name", "value", "n"], [["a", "1.235", "3"], ["b", "", "4"]])]


def _png_size(part):
    data = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', part).group(1))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_doc_fig_embeds_a_png_at_110_dpi_cropped_with_its_padding(monkeypatch):
    monkeypatch.setitem(matplotlib.rcParams, "savefig.format", "svg")  # a user's matplotlibrc: still a PNG
    fig = plt.figure(figsize=(2, 1))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.plot([0, 1], [0, 1])  # tick labels outside the figure: the tight box is larger than the figure
    doc = ReportDoc()
    doc.fig(fig, "A & B")
    (part,) = doc.parts
    assert part.startswith('<figure><img alt="A &amp; B" src="data:image/png;base64,')
    assert part.endswith('"/><figcaption>A &amp; B</figcaption></figure>')
    box = fig.get_tightbbox(fig.canvas.get_renderer())  # in inches; the PNG adds 0.1 in on each side
    w, h = _png_size(part)
    assert (abs(w - (box.width + 0.2) * 110) <= 2, abs(h - (box.height + 0.2) * 110) <= 2) == (True, True), (w, h)
    assert doc.figures == [("A & B", fig)]


def test_guarded_section_turns_stats_warnings_into_notes_and_bad_input_into_a_skip():
    doc = ReportDoc()
    with rep.guarded_section(doc, "Part"):
        for _ in range(2):  # the same warning twice is reported twice
            warnings.warn("few events & more", TMBRBStatsWarning)
        warnings.warn("not ours", UserWarning)
    assert doc.notes == ["Part: few events & more"] * 2
    assert doc.parts == ['<p class="warn">Warning: few events &amp; more</p>'] * 2
    doc = ReportDoc()
    with rep.guarded_section(doc, "Other"):
        doc.p("before")
        raise TMBRBStatsInputError("column 'x' is empty")
    assert doc.notes == ["Other skipped: column 'x' is empty"]
    assert doc.parts == ["<p>before</p>", '<p class="skip">Other skipped: column &#x27;x&#x27; is empty</p>']
    with pytest.raises(ValueError, match="not bad input"):
        with rep.guarded_section(ReportDoc(), "Third"):
            raise ValueError("not bad input")


def test_the_default_configuration_is_the_papers():
    # He et al. 2020: High-TMB is TMB >= 10 mut/Mb; AUC at TMB cut-offs 3 to 10 (figure 2E); score cut-offs 0.61 for
    # OS and 0.46 for PFS (figure 3)
    cfg = ReportConfig()
    assert (cfg.tmb_cutoff, cfg.os_cutoff, cfg.pfs_cutoff) == (10.0, 0.61, 0.46)
    assert set(range(3, 11)) <= set(cfg.cutoffs) and min(cfg.cutoffs) == 3


def test_an_endpoint_names_its_group_and_high_columns():
    ep = rep._Endpoint("PFS", "t", "e", 0.4)
    assert (ep.group_col, ep.high_col) == ("PFS_group", "PFS_high")


# ---------------------------------------------------------------- predictions
def test_prepare_predictions_adds_one_cohort_and_the_label_from_tmb_keeping_missing_tmb_missing():
    pred = pd.DataFrame({"case": ["a", "b", "c", "d"], "score": [0.1, 0.2, 0.3, 0.4], "TMB": [9.99, 10.0, np.nan, 30]})
    doc = ReportDoc()
    out, cohorts = rep._prepare_predictions(pred, ReportConfig(), doc)
    assert cohorts == ["all"] and out["cohort"].tolist() == ["all"] * 4
    assert out["label"].tolist()[:2] == [0.0, 1.0] and np.isnan(out["label"].iloc[2]) and out["label"].iloc[3] == 1.0
    assert doc.notes == ["label made from TMB >= 10.0"]
    assert list(pred.columns) == ["case", "score", "TMB"]  # the caller's frame is left alone
    # a label given is kept; cohorts in the order they first appear, a missing one not a cohort
    given = pred.assign(label=[1, 0, 1, 0], cohort=["y", None, "x", "y"])
    doc = ReportDoc()
    out, cohorts = rep._prepare_predictions(given, ReportConfig(tmb_cutoff=5.0), doc)
    assert cohorts == ["y", "x"] and out["label"].tolist() == [1, 0, 1, 0]
    assert doc.notes == ["1 prediction row(s) without a cohort left out of the per-cohort sections (ROC, decision "
                         "curves, AUC by cut-off)"]
    # other column names and cut-off
    cfg = ReportConfig(tmb="tmb", label="high", cohort="set", tmb_cutoff=20.0)
    doc = ReportDoc()
    out, cohorts = rep._prepare_predictions(pred.rename(columns={"TMB": "tmb"}), cfg, doc)
    assert cohorts == ["all"] and out["high"].tolist()[:2] == [0.0, 0.0] and out["high"].iloc[3] == 1.0
    assert doc.notes == ["label made from tmb >= 20.0"] and "label" not in out


def test_a_tmb_that_is_not_a_number_is_refused_not_made_a_low_label():
    # bug: "unknown" became label 0 (Low-TMB) and the ROC counted it as a control
    pred = pd.DataFrame({"case": ["a", "b", "c"], "score": [0.1, 0.2, 0.3], "TMB": ["4", "unknown", "12"]})
    with pytest.raises(TMBRBStatsInputError, match="column 'TMB' must be numeric but has non-numeric value"):
        rep._prepare_predictions(pred, ReportConfig(), ReportDoc())


def test_a_score_that_is_not_a_number_is_refused_and_a_numeric_text_score_read_as_numbers():
    # bug: "high" was a missing score to the survival groups, which left the patient out of Kaplan-Meier and Cox unsaid
    pred = pd.DataFrame({"case": ["a", "b", "c"], "score": ["0.1", "high", "0.3"], "TMB": [4, 5, 12]})
    with pytest.raises(TMBRBStatsInputError, match=r"^column 'score' must be numeric but has non-numeric value\(s\) "
                                                   r"\['high'\] \(1 row\(s\)\)"):
        rep._prepare_predictions(pred, ReportConfig(), ReportDoc())
    out, _ = rep._prepare_predictions(pred.assign(score=["0.1", "", "0.3"]), ReportConfig(), ReportDoc())
    assert out["score"].dtype == float and out["score"].tolist()[::2] == [0.1, 0.3] and np.isnan(out["score"][1])


def test_a_cohort_column_without_any_value_is_refused_with_what_to_do():
    # bug: an empty cohort column left no cohort, and the decision curves failed with matplotlib's ValueError
    pred = pd.DataFrame({"case": ["a", "b"], "score": [0.1, 0.2], "label": [0, 1], "cohort": [np.nan, np.nan]})
    with pytest.raises(TMBRBStatsInputError, match="column 'cohort' of the predictions CSV has no value; fill it in, "
                                                   "or remove the column to analyse all rows as one cohort"):
        rep._prepare_predictions(pred, ReportConfig(), ReportDoc())
    with pytest.raises(TMBRBStatsInputError, match=r"^the predictions CSV has no rows; add the cases' scores and try "
                                                   r"again\.$"):
        rep._prepare_predictions(pred.iloc[:0].drop(columns=["cohort"]), ReportConfig(), ReportDoc())


# ---------------------------------------------------------------- discrimination sections
@pytest.fixture(scope="module")
def pred3(cohort):
    """Predictions with their own column names, three cohorts (the third small) and a label."""
    pred, _ = cohort
    p = pred.rename(columns={"score": "s", "label": "y", "cohort": "grp", "TMB": "tmb"})
    p.loc[p.index[-12:], "grp"] = "extra"
    return p


CFG3 = ReportConfig(score="s", label="y", cohort="grp", tmb="tmb", cutoffs=(5.0, 8.0, 10.0))


def test_roc_section_gives_each_cohorts_roc_as_roc_analysis_with_its_table_and_figure(pred3, fast_fig):
    doc = ReportDoc()
    cohorts = ["test", "train", "extra"]
    rep._roc_section(doc, pred3, cohorts, CFG3)
    one = [roc_analysis(pred3.loc[pred3["grp"] == c, "y"], pred3.loc[pred3["grp"] == c, "s"], name=c) for c in cohorts]
    _same(doc.results["roc"], [r.to_dict() for r in one])
    assert doc.parts[0] == "<h2>ROC: score vs High-TMB label (DeLong 95% CI, pROC conventions)</h2>"
    ((head, rows),) = _tables(doc)
    assert head == ["cohort", "n_cases", "n_controls", "AUC", "CI low", "CI high", "direction", "Youden threshold",
                    "sensitivity", "specificity", "dropped"]
    assert rows == [[r.name, str(r.n_cases), str(r.n_controls), _f(r.auc), _f(r.ci_low), _f(r.ci_high), "&lt;",
                     _f(r.youden_threshold), _f(r.youden_sensitivity), _f(r.youden_specificity), "0"] for r in one]
    assert [t for t, _ in doc.figures] == ["ROC curves by cohort (paper figure 2A/B)"]
    assert doc.parts[2:] == ["<figure>ROC curves by cohort (paper figure 2A/B)</figure>"] and doc.notes == []
    fig = doc.figures[0][1]
    assert tuple(fig.get_size_inches()) == (5, 5)  # square: the diagonal at 45 degrees
    (ax,) = fig.axes
    assert ax.get_title() == "ROC by cohort"
    assert [t.get_text()[:len(c) + 6] for t, c in zip(ax.get_legend().get_texts(), cohorts)] == [
        f"{c}: AUC " for c in cohorts]


def test_roc_section_skips_a_cohort_with_one_class_and_shows_nothing_when_none_is_left(pred3, fast_fig):
    p = pred3.assign(y=np.where(pred3["grp"] == "extra", 1, pred3["y"]))
    doc = ReportDoc()
    rep._roc_section(doc, p, ["extra", "train"], CFG3)
    assert [r["name"] for r in doc.results["roc"]] == ["train"]
    assert doc.notes[0].startswith("ROC in cohort extra skipped: column 'label' has a single class (1")
    assert len(doc.notes) == 1 and len(doc.figures) == 1 and len(_tables(doc)) == 1
    doc = ReportDoc()
    rep._roc_section(doc, p, ["extra"], CFG3)
    assert "roc" not in doc.results and doc.figures == [] and len(doc.parts) == 2 and len(doc.notes) == 1


def test_decision_curve_section_gives_each_cohorts_net_benefit_side_by_side(pred3, fast_fig):
    doc = ReportDoc()
    cohorts = ["train", "test"]
    p = pred3.copy()
    p.loc[p.index[:2], "s"] = [0.0, 1.0]  # a probability may be 0 or 1
    rep._decision_curve_section(doc, p, cohorts, CFG3)
    assert doc.notes == [] and list(doc.results["dca"]) == cohorts
    for c in cohorts:
        sub = p[p["grp"] == c]
        _same(doc.results["dca"][c], decision_curve(sub["y"], {"s": sub["s"]}).to_dict())
    assert doc.parts == ["<h2>Decision curves</h2>",
                         "<figure>Net benefit vs treat-all / treat-none (paper figure 2C/D)</figure>"]
    fig = doc.figures[0][1]
    assert tuple(fig.get_size_inches()) == (11, 4) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["Decision curve: train", "Decision curve: test"]
    assert [ln.get_label() for ln in fig.axes[0].get_lines()][-1] == "s"
    # one cohort: one panel
    doc = ReportDoc()
    rep._decision_curve_section(doc, p, ["test"], CFG3)
    assert list(doc.results["dca"]) == ["test"] and tuple(doc.figures[0][1].get_size_inches()) == (5.5, 4)


def test_decision_curves_skip_a_cohort_with_one_class_and_keep_the_others(pred3, fast_fig):
    # bug: one such cohort skipped every cohort's curve and left the section's figure open
    p = pred3.assign(y=np.where(pred3["grp"] == "extra", 1, pred3["y"]))
    plt.close("all")
    doc = ReportDoc()
    rep._decision_curve_section(doc, p, ["extra", "test"], CFG3)
    assert list(doc.results["dca"]) == ["test"] and len(doc.notes) == 1
    assert doc.notes[0].startswith("Decision curve in cohort extra skipped: column 'label' has a single class (1")
    fig = doc.figures[0][1]
    assert [ax.get_title() for ax in fig.axes] == ["Decision curve: test"] and plt.get_fignums() == [fig.number]
    doc = ReportDoc()
    rep._decision_curve_section(doc, p, ["extra"], CFG3)
    assert "dca" not in doc.results and doc.figures == [] and plt.get_fignums() == [fig.number]
    assert doc.parts[0] == "<h2>Decision curves</h2>" and len(doc.parts) == 2


@pytest.mark.parametrize("bad", [-0.01, 1.01])
def test_decision_curves_are_skipped_for_a_score_outside_zero_one(pred3, fast_fig, bad):
    doc = ReportDoc()
    p = pred3.copy()
    p.loc[p.index[3], "s"] = bad
    rep._decision_curve_section(doc, p, ["train"], CFG3)
    reason = "Decision curves skipped: the score is not a probability in [0, 1], so net benefit is undefined"
    assert doc.notes == [reason] and "dca" not in doc.results and doc.figures == []
    assert doc.parts == ["<h2>Decision curves</h2>", f'<p class="skip">{reason}</p>']


def test_spearman_section_gives_spearman_of_the_score_and_tmb_with_its_scatter(pred3, fast_fig):
    doc = ReportDoc()
    rep._spearman_section(doc, pred3, CFG3)
    r = spearman(pred3["s"], pred3["tmb"], x_name="s", y_name="tmb")
    _same(doc.results["spearman"], r.to_dict())
    assert doc.results["spearman"]["x_name"] == "s" and doc.results["spearman"]["y_name"] == "tmb"
    assert doc.parts == [f"<pre>{str(r)}</pre>", "<figure>Spearman correlation (paper figure 2G)</figure>"]
    fig = doc.figures[0][1]
    assert tuple(fig.get_size_inches()) == (5, 4.5) and fig.axes[0].get_title().startswith("Spearman rho = ")
    doc = ReportDoc()
    rep._spearman_section(doc, pred3.assign(tmb=np.nan), CFG3)
    assert doc.notes[0].startswith("Spearman skipped: ") and "spearman" not in doc.results


def test_auc_by_cutoff_section_compares_the_first_two_cohorts(pred3, fast_fig):
    doc = ReportDoc()
    rep._auc_by_cutoff_section(doc, pred3, ["train", "test", "extra"], CFG3)
    sub = pred3[pred3["grp"].isin(["train", "test"])]
    r = auc_by_cutoff(sub["s"], sub["tmb"], (5.0, 8.0, 10.0), cohort=sub["grp"], cohort_order=["train", "test"])
    _same(doc.results["auc_by_cutoff"], r.to_dict())
    assert sorted(row["cohort"] for row in doc.results["auc_by_cutoff"]["table"]) == ["test"] * 3 + ["train"] * 3
    tabs = _tables(doc)
    assert len(tabs) == 2 and tabs[0][0] == list(r.table.columns) and tabs[1][0] == list(r.difference.columns)
    i, j = list(r.table.columns).index("cohort"), list(r.table.columns).index("cutoff")
    assert [(row[i], row[j]) for row in tabs[0][1]] == [(c, f"{k:g}") for c, k in zip(r.table["cohort"], r.table["cutoff"])]
    title = "AUC at each TMB cut-off and the difference between cohorts (paper figure 2E/F)"
    assert doc.parts[-1] == f"<figure>{title}</figure>" and doc.notes == []
    fig = doc.figures[0][1]
    assert tuple(fig.get_size_inches()) == (10, 4) and len(fig.axes) == 2
    assert fig.axes[1].get_title() == "Difference between cohorts"
    left, right = (ax.get_position() for ax in fig.axes)
    assert right.x0 > left.x1 and (right.y0, right.y1) == (left.y0, left.y1)  # side by side
    # one cohort: its table only, one panel
    doc = ReportDoc()
    rep._auc_by_cutoff_section(doc, pred3, ["extra"], CFG3)
    sub = pred3[pred3["grp"] == "extra"]
    assert [row["cohort"] for row in doc.results["auc_by_cutoff"]["table"]] == ["extra"] * 3
    assert doc.results["auc_by_cutoff"]["difference"] == [] and len(_tables(doc)) == 1
    assert len(doc.figures[0][1].axes) == 1
    # no TMB at all: skipped with the reason
    doc = ReportDoc()
    rep._auc_by_cutoff_section(doc, pred3.assign(tmb=np.nan), ["train", "test"], CFG3)
    assert doc.notes[0].startswith("AUC by cut-off skipped: ") and len(doc.notes) == 1
    assert doc.parts == [f'<p class="skip">{html.escape(doc.notes[0])}</p>'] and doc.figures == []


# ---------------------------------------------------------------- survival sections
CFGS = ReportConfig(os_cutoff=0.5, pfs_cutoff=0.4, minprop=0.2, maxprop=0.8,
                    covariates=("ecog", "sex", "absent", "age"), continuous=("age", "ecog"))


def _run_survival(cohort):
    """The survival sections on 58 matched patients (one with a score of exactly 0.5 and one without a score), two
    clinical rows without a prediction and a covariate left out."""
    pred, clin = cohort
    pred = pred.copy()
    pred.loc[pred["case"] == clin["case"].iloc[0], "score"] = 0.5
    pred.loc[pred["case"] == clin["case"].iloc[1], "score"] = np.nan
    clin = pd.concat([clin.iloc[:58], clin.head(2).assign(case=["X1", "X2"])], ignore_index=True)
    doc = ReportDoc()
    rep._survival_sections(doc, pred, clin, CFGS)
    return doc, clin.iloc[:58].merge(pred[["case", "score"]], on="case")


def _groups(score, cut, fmt):
    return np.where(score.isna(), None, np.where(score > cut, f"score > {cut:{fmt}}", f"score <= {cut:{fmt}}"))


def test_survival_sections_give_the_single_analyses_of_each_endpoints_score_groups(cohort, fast_fig):
    # one test for the whole run (about a second): mutmut runs a mutant's tests by the functions each test calls
    doc, merged = _run_survival(cohort)
    _check_overview(doc)
    _check_endpoint(doc, merged, "OS")
    _check_endpoint(doc, merged, "PFS")
    _check_display(doc, merged)


def _check_overview(doc):
    """The matching, the notes, the headings and figures in order."""
    assert (doc.results["clinical_n"], doc.results["clinical_unmatched"]) == (58, 2)
    assert doc.parts[:2] == ["<h2>Immunotherapy cohort: survival</h2>",
                             "<p>58 patients with both a score and clinical data; 2 clinical rows without a prediction "
                             "were left out.</p>"]
    assert doc.notes == ["covariates not in the clinical CSV, left out: ['absent']"]
    heads = [p for p in doc.parts if re.match(r"<h\d>", p)]
    assert heads == ["<h2>Immunotherapy cohort: survival</h2>",
                     "<h3>OS</h3>", "<h4>OS: score group with each clinical covariate (Cox, Efron ties)</h4>",
                     "<h3>PFS</h3>", "<h4>PFS: score group with each clinical covariate (Cox, Efron ties)</h4>",
                     "<h2>Table 1 by OS group</h2>", "<h2>Table 1 by PFS group</h2>"]
    assert [t for t, _ in doc.figures] == [
        f"{e}: {t}" for e, cut in (("OS", "0.5"), ("PFS", "0.4")) for t in (
            "maximally selected log-rank statistic over cut-points", "Kaplan-Meier at the maxstat cut-point",
            f"Kaplan-Meier at cut-off {cut} with numbers at risk (paper figure 3A/B)",
            "hazard ratios in each two-variable model (paper figure 4)")]


def _check_endpoint(doc, merged, ep):
    """report.json's results of one endpoint: the single analyses on the same rows and score groups."""
    time, event = f"{ep.lower()}_time", f"{ep.lower()}_event"
    cut = {"OS": 0.5, "PFS": 0.4}[ep]
    res = doc.results[ep]
    assert list(res) == ["maxstat", "km_maxstat", "km_log", "km_log-log", "cox_group", "cox_scan"]
    ms = maxstat_cutpoint(merged[time], merged[event], merged["score"], minprop=0.2, maxprop=0.8)
    _same(res["maxstat"], ms.to_dict())
    km = kaplan_meier(merged[time], merged[event], _groups(merged["score"], ms.cutpoint, ".3g"), time_label=time)
    _same(res["km_maxstat"], km.to_dict())
    groups = _groups(merged["score"], cut, "g")
    for ct in ("log", "log-log"):
        k = kaplan_meier(merged[time], merged[event], groups, conf_type=ct, time_label=time)
        _same(res[f"km_{ct}"], k.to_dict())
        assert k.n_dropped == 1  # the patient without a score
    # the patient with a score of exactly 0.5 is in the low OS group
    assert sorted((g["group"], g["n"]) for g in res["km_log"]["summary"]) == [
        (f"score <= {cut:g}", int((merged["score"] <= cut).sum())), (f"score > {cut:g}", int((merged["score"] > cut).sum()))]
    high = merged.assign(**{f"{ep}_high": np.where(merged["score"].isna(), np.nan, (merged["score"] > cut) * 1.0)})
    _same(res["cox_group"], cox_ph(high, time, event, [f"{ep}_high"]).to_dict())
    _same(res["cox_scan"], cox_scan(high, time, event, f"{ep}_high", ["ecog", "sex", "age"]).to_dict())
    t1 = table1(merged.assign(g=groups), "g", continuous=["age", "ecog", "score"], categorical=["sex"])
    got = doc.results[f"table1_{ep}"]
    assert got["group"] == f"{ep}_group"
    _same({k: v for k, v in got.items() if k != "group"}, {k: v for k, v in t1.to_dict().items() if k != "group"})


def _check_display(doc, merged):
    """OS's printouts, tables and figures, and Table 1's columns."""
    i = doc.parts.index("<h3>OS</h3>")
    part = doc.parts[i:doc.parts.index("<h3>PFS</h3>")]
    ms = maxstat_cutpoint(merged["os_time"], merged["os_event"], merged["score"], minprop=0.2, maxprop=0.8)
    assert part[1] == f"<pre>{html.escape(str(ms))}</pre>"
    km = kaplan_meier(merged["os_time"], merged["os_event"], _groups(merged["score"], 0.5, "g"), conf_type="log-log")
    high = np.where(merged["score"].isna(), np.nan, (merged["score"] > 0.5) * 1.0)
    cx = cox_ph(merged.assign(OS_high=high), "os_time", "os_event", ["OS_high"])
    pres = [p for p in part if p.startswith("<pre>")]
    assert pres[1:] == [f"<pre>{html.escape(str(km.logrank))}</pre>", f"<pre>{html.escape(str(cx))}</pre>"]
    tabs = _tables(ReportDoc(parts=part))
    assert [t[0][:2] for t in tabs[:2]] == [["CI type", "group"]] * 2 and len(tabs) == 3
    assert {r[0] for r in tabs[0][1]} == {"log"} and {r[0] for r in tabs[1][1]} == {"log-log"}
    assert tabs[2][0][0] == "covariate" and [r[0] for r in tabs[2][1]] == ["ecog", "sex[male]", "age"]
    figs = dict(doc.figures)
    f1 = figs["OS: maximally selected log-rank statistic over cut-points"]
    assert tuple(f1.get_size_inches()) == (6, 3.5) and f1.axes[0].get_xlabel() == "cut-point of score"
    f2 = figs["OS: Kaplan-Meier at the maxstat cut-point"]
    assert f2.axes[0].get_title() == (f"OS by maxstat cut-point {ms.cutpoint:.3g} (naive log-rank p; corrected "
                                      f"p={ms.p_value:.3g} Lau92, {ms.p_value_lau94:.3g} Lau94)")
    assert f2.axes[0].get_xlabel() == "os_time"
    f3 = figs["OS: Kaplan-Meier at cut-off 0.5 with numbers at risk (paper figure 3A/B)"]
    assert f3.axes[0].get_title() == "OS by the paper's cut-off 0.5" and f3.axes[0].get_xlabel() == "os_time"
    f4 = figs["OS: hazard ratios in each two-variable model (paper figure 4)"]
    assert f4.axes[0].get_title() == "OS: two-variable Cox models (score group + covariate)"
    assert len({id(f) for f in figs.values()}) == 8  # a figure each
    # Table 1: the groups' columns, without the p column
    t1h = _tables(ReportDoc(parts=doc.parts[doc.parts.index("<h2>Table 1 by OS group</h2>"):]))[0][0]
    n_high = int((merged["score"] > 0.5).sum())
    assert [c for c in t1h if c.startswith("score ")] == [f"score &lt;= 0.5 (n={57 - n_high})",
                                                          f"score &gt; 0.5 (n={n_high})"]
    assert "p" not in t1h and "test" in t1h


def test_survival_sections_refuse_a_score_column_in_the_clinical_csv(cohort):
    pred, clin = cohort
    with pytest.raises(TMBRBStatsInputError, match="the clinical CSV also has a 'score' column; the score comes from "
                                                   "the predictions CSV. Remove or rename that column"):
        rep._survival_sections(ReportDoc(), pred, clin.assign(score=1.0), ReportConfig())
    with pytest.raises(TMBRBStatsInputError, match="^clinical CSV: missing column"):
        rep._survival_sections(ReportDoc(), pred, clin.drop(columns=["case"]), ReportConfig())
    with pytest.raises(TMBRBStatsInputError, match="^clinical CSV: 1 case id"):
        rep._survival_sections(ReportDoc(), pred, pd.concat([clin, clin.head(1)]), ReportConfig())


def test_an_endpoint_without_its_columns_is_skipped_with_a_note(cohort, fast_fig, monkeypatch):
    pred, clin = cohort
    done = []
    monkeypatch.setattr(rep, "_endpoint_sections", lambda doc, merged, covs, ep, cfg: done.append(("ep", ep, covs)))
    monkeypatch.setattr(rep, "_table1_section", lambda doc, merged, covs, ep, cfg: done.append(("t1", ep, covs)))
    doc = ReportDoc()
    cfg = ReportConfig(os_time="t_os", os_event="os_event", pfs_cutoff=0.3, covariates=("sex", "ecog"))
    rep._survival_sections(doc, pred, clin.drop(columns=["pfs_event"]).rename(columns={"os_time": "t_os"}), cfg)
    assert doc.notes == ["PFS: columns pfs_time/pfs_event not in the clinical CSV; PFS analyses skipped"]
    assert done == [("ep", rep._Endpoint("OS", "t_os", "os_event", 0.61), ["sex", "ecog"]),
                    ("t1", rep._Endpoint("OS", "t_os", "os_event", 0.61), ["sex", "ecog"])]
    assert doc.parts[1] == "<p>60 patients with both a score and clinical data.</p>"
    done.clear()
    doc = ReportDoc()
    rep._survival_sections(doc, pred, clin.drop(columns=["os_time"]), cfg)
    assert doc.notes == ["OS: columns t_os/os_event not in the clinical CSV; OS analyses skipped"]
    assert done == [("ep", rep._Endpoint("PFS", "pfs_time", "pfs_event", 0.3), ["sex", "ecog"]),
                    ("t1", rep._Endpoint("PFS", "pfs_time", "pfs_event", 0.3), ["sex", "ecog"])]


def test_a_failing_survival_section_is_skipped_with_its_name_and_the_others_still_run(cohort, fast_fig):
    pred, clin = cohort
    merged = clin.merge(pred[["case", "score"]], on="case").assign(os_event=lambda d: d["os_event"] * 2)
    doc = ReportDoc()
    rep._endpoint_sections(doc, merged, [], rep._Endpoint("OS", "os_time", "os_event", 0.5), ReportConfig())
    assert [n.split(" skipped: ")[0] for n in doc.notes] == ["OS cut-point", "OS Kaplan-Meier / Cox", "OS Cox scan"]
    assert doc.notes[-1] == "OS Cox scan skipped: no clinical covariates found"
    assert doc.results["OS"] == {} and doc.figures == []
    doc = ReportDoc()
    rep._table1_section(doc, merged.assign(OS_group="one"), ["sex"], rep._Endpoint("OS", "os_time", "os_event", 0.5),
                        ReportConfig())
    assert doc.parts[0] == "<h2>Table 1 by OS group</h2>" and doc.notes[0].startswith("Table 1 (OS) skipped: ")


def test_few_events_are_a_warning_of_the_cox_sections(cohort, fast_fig):
    pred, clin = cohort
    merged = clin.merge(pred[["case", "score"]], on="case")
    merged["os_event"] = 0
    merged.loc[merged.index[:8], "os_event"] = 1  # 8 events (< 10)
    doc = ReportDoc()
    ep = rep._Endpoint("OS", "os_time", "os_event", 0.5)
    merged["OS_group"] = _groups(merged["score"], 0.5, "g")
    merged["OS_high"] = (merged["score"] > 0.5) * 1.0
    res = {}
    rep._km_cox_section(doc, merged, ep, res)
    assert doc.notes == ["OS Kaplan-Meier / Cox: only 8 events (< 10) for the Cox model; hazard ratios and p values "
                         "are unreliable. Report them with caution or use a larger cohort."]
    assert list(res) == ["km_log", "km_log-log", "cox_group"]


# ---------------------------------------------------------------- build_report and the output
def test_build_report_runs_the_sections_the_columns_allow_in_order(tmp_path, cohort, fast_fig):
    pred, _ = cohort
    p = pred.drop(columns=["label"]).rename(columns={"cohort": "grp"})
    cfg = ReportConfig(cohort="grp", cutoffs=(5.0, 8.0), title="T & t")
    path = rep.build_report(p, None, tmp_path, cfg)
    assert path == tmp_path / "report.html" and plt.get_fignums() == []
    heads = [x for x in re.findall(r"<h\d>.*?</h\d>", path.read_text(encoding="utf-8"))]
    assert heads == ["<h1>T &amp; t</h1>", "<h2>ROC: score vs High-TMB label (DeLong 95% CI, pROC conventions)</h2>",
                     "<h2>Decision curves</h2>", "<h2>Score vs TMB</h2>", "<h2>Notes</h2>"]
    res = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert list(res) == ["roc", "dca", "spearman", "auc_by_cutoff", "notes"]
    assert res["notes"] == ["label made from TMB >= 10.0"]
    cohorts = list(pd.unique(p["grp"]))
    assert [r["name"] for r in res["roc"]] == cohorts
    # a label and no TMB: the discrimination sections only; neither: the introduction only
    q = tmp_path / "q"
    rep.build_report(pred.drop(columns=["TMB"]), None, q)
    assert list(json.loads((q / "report.json").read_text(encoding="utf-8"))) == ["roc", "dca", "notes"]
    page = rep.build_report(pred[["case", "score"]], None, tmp_path / "r").read_text(encoding="utf-8")
    assert "<p>Predictions: 80 rows, cohorts [&#x27;all&#x27;]. Research use only; not a medical device.</p>" in page
    assert re.findall(r"<h\d>", page) == ["<h1>"]


def test_build_report_with_clinical_data_adds_the_survival_sections(tmp_path, cohort, fast_fig, monkeypatch):
    pred, clin = cohort
    seen = []

    def survival(doc, p, c, cfg):
        doc.p(f"survival of {cfg.title}")
        seen.append((list(p.columns), c is clin))
    monkeypatch.setattr(rep, "_survival_sections", survival)
    page = rep.build_report(pred, clin, tmp_path / "new" / "folder", ReportConfig(title="X")).read_text(encoding="utf-8")
    assert seen == [(["case", "score", "TMB", "label", "cohort"], True)]
    assert page.endswith("(paper figure 2E/F)</figure>\n<p>survival of X</p></body></html>")  # after the others


def test_build_report_checks_both_csvs_before_writing_anything(tmp_path, cohort):
    pred, clin = cohort
    cases = [(pred.drop(columns=["score"]), None, "predictions CSV"),
             (pd.concat([pred, pred.head(1)]), None, "predictions CSV"),
             (pred, clin.drop(columns=["case"]), "clinical CSV"),
             (pred, pd.concat([clin, clin.head(1)]), "clinical CSV")]
    for i, (p, c, what) in enumerate(cases):
        with pytest.raises(TMBRBStatsInputError, match=f"^{what}: "):
            rep.build_report(p, c, tmp_path / str(i), ReportConfig())
        assert list((tmp_path / str(i)).iterdir()) == []


def test_build_report_pdf_for_predictions_without_label_or_tmb(tmp_path, cohort):
    pred, _ = cohort
    path = rep.build_report(pred[["case", "score"]], None, tmp_path, ReportConfig(), fmt="pdf")
    assert path == tmp_path / "report.pdf" and path.read_bytes()[:5] == b"%PDF-"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["report.json", "report.pdf"]


def test_notes_section_lists_the_notes_and_stores_them():
    doc = ReportDoc(notes=["a < b", "c"])
    rep.notes_section(doc)
    assert doc.parts == ["<h2>Notes</h2>", "<ul><li>a &lt; b</li><li>c</li></ul>"]
    assert doc.results == {"notes": ["a < b", "c"]}
    doc = ReportDoc()
    rep.notes_section(doc)
    assert doc.parts == [] and doc.results == {"notes": []}


def test_write_report_json_writes_the_results_json_safe_and_indented(tmp_path):
    doc = ReportDoc(results={"a": np.float64(0.5), "b": [np.int64(2), np.nan], "c": "ü"})
    path = rep.write_report_json(doc, tmp_path)
    assert path == tmp_path / "report.json"
    assert path.read_bytes() == b'{\n "a": 0.5,\n "b": [\n  2,\n  null\n ],\n "c": "\\u00fc"\n}'


def test_write_report_html_is_one_page_with_the_styles_the_parts_use(tmp_path):
    doc = ReportDoc(parts=["<p>ä</p>", "<p>b</p>"])
    path = rep.write_report_html(doc, tmp_path, ReportConfig(title="Kohorte & µ"))
    assert path == tmp_path / "report.html"
    page = path.read_bytes().decode("utf-8")
    head, body = page.split("<body>")
    assert head.startswith("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Kohorte &amp; µ</title><style>")
    assert head.endswith("</style></head>") and body == "<p>ä</p>\n<p>b</p></body></html>"
    css = re.search(r"<style>(.*)</style>", head).group(1)
    rules = dict(re.findall(r"([^{}]+)\{([^{}]*)\}", css))
    assert rules == {"body": "font-family:sans-serif;max-width:1100px;margin:auto",
                     "table.t": "border-collapse:collapse;font-size:12px",
                     "table.t td,table.t th": "border:1px solid #ccc;padding:2px 6px", "img": "max-width:100%",
                     ".skip": "color:#a00", ".warn": "color:#a60", "pre": "background:#f6f6f6;padding:6px"}


def _pdf_text(data: bytes):
    """(font size, x, y, text) of each line matplotlib wrote into an uncompressed PDF (one TJ array per line)."""
    out = []
    for x, y, size, arr in re.findall(rb"1 0 -?0 1 ([-\d.]+) ([-\d.]+) cm\s+BT\s+/F\d+ ([\d.]+) Tf\s+[-\d. ]+Td\s+"
                                      rb"\[(.*?)\]\s*TJ", data, re.S):
        parts = re.findall(rb"\(((?:\\.|[^\\)])*)\)", arr, re.S)
        text = re.sub(rb"\\(.)", rb"\1", b"".join(parts)).decode("latin-1")
        out.append((float(size), float(x), float(y), text))
    return out


def test_write_pdf_has_an_a4_title_page_with_the_notes_then_a_titled_page_per_figure(tmp_path, monkeypatch):
    monkeypatch.setitem(matplotlib.rcParams, "pdf.compression", 0)  # to read the text back
    figs = []
    for _ in range(2):
        f = plt.figure(figsize=(2, 1.5))
        f.add_axes([0.2, 0.2, 0.7, 0.5]).plot([0, 1])
        figs.append(f)
    long = "word " * 60  # wider than the page: wrapped
    doc = ReportDoc(notes=["first note", long.strip()], figures=[("Alpha", figs[0]), ("Beta", figs[1])])
    path = rep._write_pdf(doc, tmp_path, ReportConfig(title="My title"))
    assert path == tmp_path / "report.pdf"
    data = path.read_bytes()
    assert data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") == 3
    boxes = re.findall(rb"/MediaBox \[\s*([\d. ]+?)\s*\]", data)
    assert boxes[0].split() == [b"0", b"0", b"595.44", b"841.68"]  # A4 (8.27 x 11.69 in)
    lines = _pdf_text(data)
    title_page = [t for t in lines if t[0] == 8.0]
    assert title_page[0][3] == "My title" and title_page[1][3] == "first note"
    assert abs(title_page[0][1] - 0.05 * 595.44) < 1 and 0.93 * 841.68 < title_page[0][2] < 0.95 * 841.68
    wrapped = [t[3] for t in title_page[2:-1]]
    assert len(wrapped) >= 2 and " ".join(wrapped).split() == ["word"] * 60
    assert title_page[-1][3] == "Tables and numbers: report.json"
    assert [t[3] for t in lines if t[0] == 9.0] == ["Alpha", "Beta"]
    assert b"DejaVuSansMono" in data
    assert [f._suptitle.get_text() for f in figs] == ["Alpha", "Beta"]
    # each figure's page is cropped to what is drawn (with 0.1 in around it), not the whole figure
    box = figs[0].get_tightbbox(figs[0].canvas.get_renderer())
    page = [float(v) for v in boxes[1].split()]
    assert page[:2] == [0, 0] and abs(page[2] - (box.width + 0.2) * 72) < 1.5 and abs(page[3] - (box.height + 0.2) * 72) < 1.5
    assert page[2:] != [144, 108]
