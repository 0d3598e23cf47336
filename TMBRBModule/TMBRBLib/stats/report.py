"""`tmbrb analyze report`: the paper's standard analyses on a predictions CSV (+ clinical CSV) as one HTML/PDF."""
from __future__ import annotations

import base64
import html
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ._input import require_columns
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
class _Doc:
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


def _section(doc: _Doc, what: str, fn):
    try:
        with warnings.catch_warnings(record=True) as wl:
            warnings.simplefilter("always", TMBRBStatsWarning)
            fn()
        for w in wl:
            if issubclass(w.category, TMBRBStatsWarning):
                doc.notes.append(f"{what}: {w.message}")
                doc.parts.append(f'<p class="warn">Warning: {html.escape(str(w.message))}</p>')
    except TMBRBStatsInputError as exc:
        doc.skip(what, exc)


def build_report(predictions: pd.DataFrame, clinical: Optional[pd.DataFrame], out_dir, cfg: ReportConfig = ReportConfig(),
                 fmt: str = "html") -> Path:
    """Run the standard analyses and write report.html (or report.pdf) plus report.json into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    require_columns(predictions, [cfg.case, cfg.score], "predictions CSV")
    doc = _Doc()
    pred = predictions.copy()
    has_cohort = cfg.cohort in pred.columns
    if not has_cohort:
        pred[cfg.cohort] = "all"
    if cfg.label not in pred.columns and cfg.tmb in pred.columns:
        pred[cfg.label] = np.where(pred[cfg.tmb].isna(), np.nan, (pd.to_numeric(pred[cfg.tmb], errors="coerce") >= cfg.tmb_cutoff).astype(float))
        doc.notes.append(f"label made from {cfg.tmb} >= {cfg.tmb_cutoff}")
    cohorts = list(pd.unique(pred[cfg.cohort].dropna()))

    doc.h(cfg.title, 1)
    doc.p(f"Predictions: {len(pred)} rows, cohorts {cohorts}. Research use only; not a medical device.")

    # ---------------------------------------------------------------- discrimination of High-TMB
    if cfg.label in pred.columns:
        doc.h("ROC: score vs High-TMB label (DeLong 95% CI, pROC conventions)")

        def _roc():
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

        _section(doc, "ROC", _roc)

        doc.h("Decision curves")

        def _dca():
            s = pd.to_numeric(pred[cfg.score], errors="coerce")
            if (s.dropna() < 0).any() or (s.dropna() > 1).any():
                raise TMBRBStatsInputError("the score is not a probability in [0, 1], so net benefit is undefined")
            fig, axes = plt.subplots(1, len(cohorts), figsize=(5.5 * len(cohorts), 4), squeeze=False)
            out_d = {}
            for ax, c in zip(axes[0], cohorts):
                sub = pred[pred[cfg.cohort] == c]
                r = decision_curve(sub[cfg.label], {cfg.score: sub[cfg.score]})
                r.plot(ax=ax, title=f"Decision curve: {c}")
                out_d[str(c)] = r.to_dict()
            doc.results["dca"] = out_d
            doc.fig(fig, "Net benefit vs treat-all / treat-none (paper figure 2C/D)")

        _section(doc, "Decision curves", _dca)

    if cfg.tmb in pred.columns:
        doc.h(f"Score vs {cfg.tmb}")

        def _sp():
            r = spearman(pred[cfg.score], pred[cfg.tmb], x_name=cfg.score, y_name=cfg.tmb)
            doc.results["spearman"] = r.to_dict()
            doc.pre(str(r))
            fig, ax = plt.subplots(figsize=(5, 4.5))
            r.plot(ax=ax)
            doc.fig(fig, "Spearman correlation (paper figure 2G)")

        _section(doc, "Spearman", _sp)

        def _abc():
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

        _section(doc, "AUC by cut-off", _abc)

    # ---------------------------------------------------------------- immunotherapy cohort
    if clinical is not None:
        require_columns(clinical, [cfg.case], "clinical CSV")
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
        groups_cols = {}
        for end, tcol, ecol, cut in (("OS", cfg.os_time, cfg.os_event, cfg.os_cutoff),
                                     ("PFS", cfg.pfs_time, cfg.pfs_event, cfg.pfs_cutoff)):
            if tcol not in merged.columns or ecol not in merged.columns:
                doc.notes.append(f"{end}: columns {tcol}/{ecol} not in the clinical CSV; {end} analyses skipped")
                continue
            doc.h(f"{end}", 3)
            gcol = f"{end}_group"
            s = pd.to_numeric(merged[cfg.score], errors="coerce")
            merged[gcol] = np.where(s.isna(), None, np.where(s > cut, f"score > {cut:g}", f"score <= {cut:g}"))
            merged[f"{end}_high"] = np.where(s.isna(), np.nan, (s > cut).astype(float))
            groups_cols[end] = gcol
            res: Dict[str, object] = {}

            def _cut(end=end, tcol=tcol, ecol=ecol, res=res):
                r = maxstat_cutpoint(merged[tcol], merged[ecol], merged[cfg.score], minprop=cfg.minprop, maxprop=cfg.maxprop)
                res["maxstat"] = r.to_dict()
                doc.pre(str(r))
                fig, ax = plt.subplots(figsize=(6, 3.5))
                r.plot(ax=ax, label=cfg.score)
                doc.fig(fig, f"{end}: maximally selected log-rank statistic over cut-points")
                gm = np.where(merged[cfg.score] > r.cutpoint, f"score > {r.cutpoint:.3g}", f"score <= {r.cutpoint:.3g}")
                km = kaplan_meier(merged[tcol], merged[ecol], np.where(merged[cfg.score].isna(), None, gm), time_label=tcol)
                res["km_maxstat"] = km.to_dict()
                km.plot(title=f"{end} by maxstat cut-point {r.cutpoint:.3g} (naive log-rank p; corrected p={r.p_value:.3g})")
                doc.fig(plt.gcf(), f"{end}: Kaplan-Meier at the maxstat cut-point")

            def _km(end=end, tcol=tcol, ecol=ecol, cut=cut, gcol=gcol, res=res):
                for ct in ("log", "log-log"):
                    km = kaplan_meier(merged[tcol], merged[ecol], merged[gcol], conf_type=ct, time_label=tcol)
                    res[f"km_{ct}"] = km.to_dict()
                    s = km.summary.copy()
                    s.insert(0, "CI type", ct)
                    doc.table(s)
                doc.pre(str(km.logrank))
                km.plot(title=f"{end} by the paper's cut-off {cut:g}")
                doc.fig(plt.gcf(), f"{end}: Kaplan-Meier at cut-off {cut:g} with numbers at risk (paper figure 3A/B)")
                cx = cox_ph(merged, tcol, ecol, [f"{end}_high"])
                res["cox_group"] = cx.to_dict()
                doc.pre(str(cx))

            def _scan(end=end, tcol=tcol, ecol=ecol, res=res):
                if not covs:
                    raise TMBRBStatsInputError("no clinical covariates found")
                sc = cox_scan(merged, tcol, ecol, f"{end}_high", covs)
                res["cox_scan"] = sc.to_dict()
                doc.table(sc.table)
                sc.plot(title=f"{end}: two-variable Cox models (score group + covariate)")
                doc.fig(plt.gcf(), f"{end}: hazard ratios in each two-variable model (paper figure 4)")

            _section(doc, f"{end} cut-point", _cut)
            _section(doc, f"{end} Kaplan-Meier / Cox", _km)
            doc.h(f"{end}: score group with each clinical covariate (Cox, Efron ties)", 4)
            _section(doc, f"{end} Cox scan", _scan)
            doc.results[end] = res
        for end, gcol in groups_cols.items():
            doc.h(f"Table 1 by {end} group")

            def _t1(gcol=gcol, end=end):
                cont = [c for c in (*cfg.continuous, cfg.score) if c in merged.columns]
                cat = [c for c in covs if c not in cont]
                t = table1(merged, gcol, continuous=cont, categorical=cat)
                doc.results[f"table1_{end}"] = t.to_dict()
                doc.table(t.table.drop(columns=["p"]))

            _section(doc, f"Table 1 ({end})", _t1)

    if doc.notes:
        doc.h("Notes")
        doc.parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in doc.notes) + "</ul>")
    doc.results["notes"] = doc.notes
    (out / "report.json").write_text(json.dumps(jsonable(doc.results), indent=1), encoding="utf-8")
    if fmt == "pdf":
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
    else:
        path = out / "report.html"
        css = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table.t{border-collapse:collapse;font-size:12px}"
               "table.t td,table.t th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
               ".skip{color:#a00}.warn{color:#a60}pre{background:#f6f6f6;padding:6px}")
        path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(cfg.title)}</title>"
                        f"<style>{css}</style></head><body>" + "\n".join(doc.parts) + "</body></html>", encoding="utf-8")
    for _, f in doc.figures:
        plt.close(f)
    return path
