"""`tmbrb analyze report`: the paper's standard analyses on a predictions CSV (+ clinical CSV) as one HTML/PDF."""
from __future__ import annotations

import base64
import html
import io
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ._input import require_columns, require_unique, to_numeric
from ._result import jsonable
from .classification import auc_by_cutoff, decision_curve, spearman
from .cox import cox_ph, cox_scan
from .cutpoint import maxstat_cutpoint
from .errors import TMBRBStatsInputError, TMBRBStatsWarning
from .roc import plot_roc_curves, roc_analysis
from .survival import kaplan_meier
from .table1 import table1

__all__ = ["ReportConfig", "build_report"]


@dataclass
class ReportConfig:
    case: str = "case"
    score: str = "score"
    tmb: str = "TMB"
    label: str = "label"
    cohort: str = "cohort"
    tmb_cutoff: float = 10.0
    cutoffs: Sequence[float] = tuple(range(3, 12))
    os_time: str = "os_time"
    os_event: str = "os_event"
    pfs_time: str = "pfs_time"
    pfs_event: str = "pfs_event"
    os_cutoff: float = 0.61
    pfs_cutoff: float = 0.46
    covariates: Sequence[str] = ("ecog", "sex", "smoking", "histology", "stage", "egfr", "age")
    continuous: Sequence[str] = ("age",)
    minprop: float = 0.1
    maxprop: float = 0.9
    title: str = "TMBRB validation report"


@dataclass
class ReportDoc:
    """A report being built: its HTML parts, figures, JSON results and notes (also used by ``training paper``)."""
    parts: List[str] = field(default_factory=list)
    figures: List[tuple] = field(default_factory=list)  # (title, fig)
    results: Dict[str, object] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def h(self, text: str, level: int = 2):
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str):
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def pre(self, text: str):
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, df: pd.DataFrame):
        self.parts.append(df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, classes="t"))

    def fig(self, fig, title: str):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        self.parts.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
                          f'{base64.b64encode(buf.getvalue()).decode()}"/><figcaption>{html.escape(title)}</figcaption></figure>')
        self.figures.append((title, fig))

    def skip(self, what: str, exc: Exception):
        msg = f"{what} skipped: {exc}"
        self.notes.append(msg)
        self.parts.append(f'<p class="skip">{html.escape(msg)}</p>')


@contextmanager
def guarded_section(doc: ReportDoc, what: str):
    """Run one section: its TMBRBStatsWarnings become report warnings, bad input skips the section with the reason."""
    try:
        with warnings.catch_warnings(record=True) as wl:
            warnings.simplefilter("always", TMBRBStatsWarning)
            yield
        for w in wl:
            if issubclass(w.category, TMBRBStatsWarning):
                doc.notes.append(f"{what}: {w.message}")
                doc.parts.append(f'<p class="warn">Warning: {html.escape(str(w.message))}</p>')
    except TMBRBStatsInputError as exc:
        doc.skip(what, exc)


@dataclass
class _Endpoint:
    """One survival endpoint (OS or PFS): its columns and the paper's score cut-off."""
    name: str
    time: str
    event: str
    cutoff: float

    @property
    def group_col(self) -> str:
        return f"{self.name}_group"

    @property
    def high_col(self) -> str:
        return f"{self.name}_high"


def build_report(predictions: pd.DataFrame, clinical: Optional[pd.DataFrame], out_dir, cfg: ReportConfig = ReportConfig(),
                 fmt: str = "html") -> Path:
    """Run the standard analyses and write report.html (or report.pdf) plus report.json into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    require_columns(predictions, [cfg.case, cfg.score], "predictions CSV")
    require_unique(predictions, cfg.case, "predictions CSV")
    if clinical is not None:  # before any output: a bad clinical CSV must not leave half a report
        require_columns(clinical, [cfg.case], "clinical CSV")
        require_unique(clinical, cfg.case, "clinical CSV")
    doc = ReportDoc()
    pred, cohorts = _prepare_predictions(predictions, cfg, doc)
    doc.h(cfg.title, 1)
    doc.p(f"Predictions: {len(pred)} rows, cohorts {cohorts}. Research use only; not a medical device.")
    if cfg.label in pred.columns:
        _roc_section(doc, pred, cohorts, cfg)
        _decision_curve_section(doc, pred, cohorts, cfg)
    if cfg.tmb in pred.columns:
        doc.h(f"Score vs {cfg.tmb}")
        _spearman_section(doc, pred, cfg)
        _auc_by_cutoff_section(doc, pred, cohorts, cfg)
    if clinical is not None:
        _survival_sections(doc, pred, clinical, cfg)
    notes_section(doc)
    write_report_json(doc, out)
    path = _write_pdf(doc, out, cfg) if fmt == "pdf" else write_report_html(doc, out, cfg)
    for _, f in doc.figures:
        plt.close(f)
    return path


def _prepare_predictions(predictions: pd.DataFrame, cfg: ReportConfig, doc: ReportDoc):
    """Copy of the predictions with a cohort column ("all" if absent) and a label (TMB >= cut-off if absent)."""
    pred = predictions.copy()
    if len(pred) == 0:
        raise TMBRBStatsInputError("the predictions CSV has no rows; add the cases' scores and try again.")
    if cfg.cohort not in pred.columns:
        pred[cfg.cohort] = "all"
    n_without = int(pred[cfg.cohort].isna().sum())
    if n_without == len(pred):
        raise TMBRBStatsInputError(f"column '{cfg.cohort}' of the predictions CSV has no value; fill it in, or remove "
                                   "the column to analyse all rows as one cohort.")
    if n_without:
        doc.notes.append(f"{n_without} prediction row(s) without a {cfg.cohort} left out of the per-cohort sections "
                         "(ROC, decision curves, AUC by cut-off)")
    # a score that is not a number is refused here: the survival groups would leave such a patient out unsaid
    pred[cfg.score] = to_numeric(pred[cfg.score], cfg.score)
    if cfg.label not in pred.columns and cfg.tmb in pred.columns:
        tmb = to_numeric(pred[cfg.tmb], cfg.tmb)  # text is refused: it must not become a Low-TMB label
        pred[cfg.label] = np.where(np.isnan(tmb), np.nan, (tmb >= cfg.tmb_cutoff).astype(float))
        doc.notes.append(f"label made from {cfg.tmb} >= {cfg.tmb_cutoff}")
    return pred, list(pd.unique(pred[cfg.cohort].dropna()))


# ---------------------------------------------------------------- discrimination of High-TMB
def _roc_section(doc: ReportDoc, pred: pd.DataFrame, cohorts: list, cfg: ReportConfig) -> None:
    """ROC per cohort: table of AUC (DeLong CI) and Youden point, and the curves (paper figure 2A/B)."""
    import matplotlib.pyplot as plt

    doc.h("ROC: score vs High-TMB label (DeLong 95% CI, pROC conventions)")
    with guarded_section(doc, "ROC"):
        res = []
        for c in cohorts:
            sub = pred[pred[cfg.cohort] == c]
            try:
                res.append(roc_analysis(sub[cfg.label], sub[cfg.score], name=str(c)))
            except TMBRBStatsInputError as exc:
                doc.skip(f"ROC in cohort {c}", exc)
        if not res:
            return
        doc.results["roc"] = [r.to_dict() for r in res]
        doc.table(pd.DataFrame([{"cohort": r.name, "n_cases": r.n_cases, "n_controls": r.n_controls, "AUC": r.auc,
                                 "CI low": r.ci_low, "CI high": r.ci_high, "direction": r.direction,
                                 "Youden threshold": r.youden_threshold, "sensitivity": r.youden_sensitivity,
                                 "specificity": r.youden_specificity, "dropped": r.n_dropped} for r in res]))
        fig, ax = plt.subplots(figsize=(5, 5))
        plot_roc_curves(res, ax=ax, title="ROC by cohort")
        doc.fig(fig, "ROC curves by cohort (paper figure 2A/B)")


def _decision_curve_section(doc: ReportDoc, pred: pd.DataFrame, cohorts: list, cfg: ReportConfig) -> None:
    """Net benefit of the score per cohort (paper figure 2C/D); skipped when the score is not a probability."""
    import matplotlib.pyplot as plt

    doc.h("Decision curves")
    with guarded_section(doc, "Decision curves"):
        s = pd.to_numeric(pred[cfg.score], errors="coerce")
        if (s.dropna() < 0).any() or (s.dropna() > 1).any():
            raise TMBRBStatsInputError("the score is not a probability in [0, 1], so net benefit is undefined")
        done = {}
        for c in cohorts:  # a cohort that cannot have a curve is skipped, as in the ROC section
            sub = pred[pred[cfg.cohort] == c]
            try:
                done[str(c)] = decision_curve(sub[cfg.label], {cfg.score: sub[cfg.score]})
            except TMBRBStatsInputError as exc:
                doc.skip(f"Decision curve in cohort {c}", exc)
        if not done:
            return
        fig, axes = plt.subplots(1, len(done), figsize=(5.5 * len(done), 4), squeeze=False)
        for ax, (c, r) in zip(axes[0], done.items()):
            r.plot(ax=ax, title=f"Decision curve: {c}")
        doc.results["dca"] = {c: r.to_dict() for c, r in done.items()}
        doc.fig(fig, "Net benefit vs treat-all / treat-none (paper figure 2C/D)")


def _spearman_section(doc: ReportDoc, pred: pd.DataFrame, cfg: ReportConfig) -> None:
    """Spearman correlation of the score with TMB, with a scatter plot (paper figure 2G)."""
    import matplotlib.pyplot as plt

    with guarded_section(doc, "Spearman"):
        r = spearman(pred[cfg.score], pred[cfg.tmb], x_name=cfg.score, y_name=cfg.tmb)
        doc.results["spearman"] = r.to_dict()
        doc.pre(str(r))
        fig, ax = plt.subplots(figsize=(5, 4.5))
        r.plot(ax=ax)
        doc.fig(fig, "Spearman correlation (paper figure 2G)")


def _auc_by_cutoff_section(doc: ReportDoc, pred: pd.DataFrame, cohorts: list, cfg: ReportConfig) -> None:
    """AUC of the score at each TMB cut-off in the first two cohorts, and their difference (paper figure 2E/F)."""
    import matplotlib.pyplot as plt

    with guarded_section(doc, "AUC by cut-off"):
        order = cohorts[:2] if len(cohorts) >= 2 else cohorts
        sub = pred[pred[cfg.cohort].isin(order)]
        r = auc_by_cutoff(sub[cfg.score], sub[cfg.tmb], cfg.cutoffs, cohort=sub[cfg.cohort], cohort_order=order)
        doc.results["auc_by_cutoff"] = r.to_dict()
        doc.table(r.table)
        if len(r.difference):
            doc.table(r.difference)
        fig = plt.figure(figsize=(10, 4))
        axes = fig.subplots(1, 2 if len(r.difference) else 1)
        r.plot(axes=axes)
        doc.fig(fig, "AUC at each TMB cut-off and the difference between cohorts (paper figure 2E/F)")


# ---------------------------------------------------------------- immunotherapy cohort
def _survival_sections(doc: ReportDoc, pred: pd.DataFrame, clinical: pd.DataFrame, cfg: ReportConfig) -> None:
    """Clinical cohort: for OS and PFS the cut-point, Kaplan-Meier/Cox and Cox scan sections, then Table 1 by group."""
    require_columns(clinical, [cfg.case], "clinical CSV")
    require_unique(clinical, cfg.case, "clinical CSV")
    if cfg.score in clinical.columns:
        raise TMBRBStatsInputError(
            f"the clinical CSV also has a '{cfg.score}' column; the score comes from the predictions CSV. "
            f"Remove or rename that column in the clinical CSV.")
    merged = clinical.merge(pred[[cfg.case, cfg.score]], on=cfg.case, how="inner")
    n_unmatched = len(clinical) - len(merged)
    doc.h("Immunotherapy cohort: survival")
    doc.p(f"{len(merged)} patients with both a score and clinical data"
          + (f"; {n_unmatched} clinical rows without a prediction were left out" if n_unmatched else "") + ".")
    doc.results["clinical_n"] = len(merged)
    doc.results["clinical_unmatched"] = n_unmatched
    covs = [c for c in cfg.covariates if c in merged.columns]
    missing_covs = [c for c in cfg.covariates if c not in merged.columns]
    if missing_covs:
        doc.notes.append(f"covariates not in the clinical CSV, left out: {missing_covs}")
    done = []
    for ep in (_Endpoint("OS", cfg.os_time, cfg.os_event, cfg.os_cutoff),
               _Endpoint("PFS", cfg.pfs_time, cfg.pfs_event, cfg.pfs_cutoff)):
        if ep.time not in merged.columns or ep.event not in merged.columns:
            doc.notes.append(f"{ep.name}: columns {ep.time}/{ep.event} not in the clinical CSV; {ep.name} analyses skipped")
            continue
        _endpoint_sections(doc, merged, covs, ep, cfg)
        done.append(ep)
    for ep in done:
        _table1_section(doc, merged, covs, ep, cfg)


def _endpoint_sections(doc: ReportDoc, merged: pd.DataFrame, covs: List[str], ep: _Endpoint, cfg: ReportConfig) -> None:
    """One endpoint: score groups at the paper's cut-off (added to ``merged``), then its three sections."""
    doc.h(f"{ep.name}", 3)
    s = pd.to_numeric(merged[cfg.score], errors="coerce")
    merged[ep.group_col] = np.where(s.isna(), None, np.where(s > ep.cutoff, f"score > {ep.cutoff:g}", f"score <= {ep.cutoff:g}"))
    merged[ep.high_col] = np.where(s.isna(), np.nan, (s > ep.cutoff).astype(float))
    res: Dict[str, object] = {}
    _cutpoint_section(doc, merged, ep, cfg, res)
    _km_cox_section(doc, merged, ep, res)
    doc.h(f"{ep.name}: score group with each clinical covariate (Cox, Efron ties)", 4)
    _cox_scan_section(doc, merged, covs, ep, res)
    doc.results[ep.name] = res


def _cutpoint_section(doc: ReportDoc, merged: pd.DataFrame, ep: _Endpoint, cfg: ReportConfig, res: Dict[str, object]) -> None:
    """Maximally selected log-rank cut-point of the score, its statistic plot, and Kaplan-Meier at that cut-point."""
    import matplotlib.pyplot as plt

    with guarded_section(doc, f"{ep.name} cut-point"):
        r = maxstat_cutpoint(merged[ep.time], merged[ep.event], merged[cfg.score], minprop=cfg.minprop, maxprop=cfg.maxprop)
        res["maxstat"] = r.to_dict()
        doc.pre(str(r))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        r.plot(ax=ax, label=cfg.score)
        doc.fig(fig, f"{ep.name}: maximally selected log-rank statistic over cut-points")
        gm = np.where(merged[cfg.score] > r.cutpoint, f"score > {r.cutpoint:.3g}", f"score <= {r.cutpoint:.3g}")
        km = kaplan_meier(merged[ep.time], merged[ep.event], np.where(merged[cfg.score].isna(), None, gm), time_label=ep.time)
        res["km_maxstat"] = km.to_dict()
        km.plot(title=f"{ep.name} by maxstat cut-point {r.cutpoint:.3g} (naive log-rank p; corrected p={r.p_value:.3g} "
                      f"Lau92, {r.p_value_lau94:.3g} Lau94)")
        doc.fig(plt.gcf(), f"{ep.name}: Kaplan-Meier at the maxstat cut-point")


def _km_cox_section(doc: ReportDoc, merged: pd.DataFrame, ep: _Endpoint, res: Dict[str, object]) -> None:
    """Kaplan-Meier at the paper's cut-off (log and log-log CIs, figure 3A/B) and the Cox HR of the score group."""
    import matplotlib.pyplot as plt

    with guarded_section(doc, f"{ep.name} Kaplan-Meier / Cox"):
        for ct in ("log", "log-log"):
            km = kaplan_meier(merged[ep.time], merged[ep.event], merged[ep.group_col], conf_type=ct, time_label=ep.time)
            res[f"km_{ct}"] = km.to_dict()
            s = km.summary.copy()
            s.insert(0, "CI type", ct)
            doc.table(s)
        doc.pre(str(km.logrank))
        km.plot(title=f"{ep.name} by the paper's cut-off {ep.cutoff:g}")
        doc.fig(plt.gcf(), f"{ep.name}: Kaplan-Meier at cut-off {ep.cutoff:g} with numbers at risk (paper figure 3A/B)")
        cx = cox_ph(merged, ep.time, ep.event, [ep.high_col])
        res["cox_group"] = cx.to_dict()
        doc.pre(str(cx))


def _cox_scan_section(doc: ReportDoc, merged: pd.DataFrame, covs: List[str], ep: _Endpoint, res: Dict[str, object]) -> None:
    """Two-variable Cox models of the score group with each clinical covariate, as a table and forest plot (figure 4)."""
    import matplotlib.pyplot as plt

    with guarded_section(doc, f"{ep.name} Cox scan"):
        if not covs:
            raise TMBRBStatsInputError("no clinical covariates found")
        sc = cox_scan(merged, ep.time, ep.event, ep.high_col, covs)
        res["cox_scan"] = sc.to_dict()
        doc.table(sc.table)
        sc.plot(title=f"{ep.name}: two-variable Cox models (score group + covariate)")
        doc.fig(plt.gcf(), f"{ep.name}: hazard ratios in each two-variable model (paper figure 4)")


def _table1_section(doc: ReportDoc, merged: pd.DataFrame, covs: List[str], ep: _Endpoint, cfg: ReportConfig) -> None:
    """Table 1 (cohort characteristics with tests) by the endpoint's score group."""
    doc.h(f"Table 1 by {ep.name} group")
    with guarded_section(doc, f"Table 1 ({ep.name})"):
        cont = [c for c in (*cfg.continuous, cfg.score) if c in merged.columns]
        cat = [c for c in covs if c not in cont]
        t = table1(merged, ep.group_col, continuous=cont, categorical=cat)
        doc.results[f"table1_{ep.name}"] = t.to_dict()
        doc.table(t.table.drop(columns=["p"]))


# ---------------------------------------------------------------- output
def notes_section(doc: ReportDoc) -> None:
    """List of notes (skipped sections, warnings, assumptions) at the end; also stored in the JSON."""
    if doc.notes:
        doc.h("Notes")
        doc.parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in doc.notes) + "</ul>")
    doc.results["notes"] = doc.notes


def write_report_json(doc: ReportDoc, out: Path) -> Path:
    """report.json: the results of every section, JSON-safe."""
    path = out / "report.json"
    path.write_text(json.dumps(jsonable(doc.results), indent=1), encoding="utf-8")
    return path


def _write_pdf(doc: ReportDoc, out: Path, cfg: ReportConfig) -> Path:
    """report.pdf: a title page with the notes, then one page per figure (tables and numbers are in report.json)."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    path = out / "report.pdf"
    with PdfPages(path) as pdf:
        fig = plt.figure(figsize=(8.27, 11.69))
        text = "\n".join([cfg.title, ""] + [n for n in doc.notes] + ["", "Tables and numbers: report.json"])
        fig.text(0.05, 0.95, text, va="top", family="monospace", fontsize=8, wrap=True)
        pdf.savefig(fig)
        for title, f in doc.figures:
            f.suptitle(title, fontsize=9)
            pdf.savefig(f, bbox_inches="tight")
    return path


def write_report_html(doc: ReportDoc, out: Path, cfg: ReportConfig) -> Path:
    """report.html: one self-contained page (figures embedded as base64 PNG)."""
    path = out / "report.html"
    css = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table.t{border-collapse:collapse;font-size:12px}"
           "table.t td,table.t th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
           ".skip{color:#a00}.warn{color:#a60}pre{background:#f6f6f6;padding:6px}")
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(cfg.title)}</title>"
                    f"<style>{css}</style></head><body>" + "\n".join(doc.parts) + "</body></html>", encoding="utf-8")
    return path
