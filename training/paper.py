"""`python -m training paper --work DIR`: the paper's comparison end to end, from a manifest to one HTML report.

Steps (each recorded in ``DIR/state.json`` and skipped when its output is there and its inputs are unchanged, so an
interrupted run continues where it stopped):

1. ``cohort``     the phantom TMB cohort with the demo model's settings (or the user's ``--manifest``);
2. ``model``      the TMBRB bundle: ``--bundle`` as given, or trained on the manifest and exported to ``DIR/bundle``;
3. ``score``      the bundle on every split through the engine (`training.evaluate`): ``DIR/scores/<split>/``;
4. ``features``   tumour measures and pyradiomics features per case (cached in ``DIR/cache``);
5. ``comparators`` the comparator models (`training.comparators`): ``DIR/predictions.csv``, ``DIR/comparators.json``;
6. ``immunotherapy`` the survival cohort: the manifest's cases with OS/PFS, or the simulated immunotherapy cohort
   (`TMBRBLib.phantom.write_immunotherapy_cohort`, whose TMBRB score is simulated from TMB -- it has no images);
7. ``report``     ``DIR/report.html`` (figures in the order of the paper's figures 2-5), ``DIR/report.pdf`` and
   ``DIR/report.json``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from TMBRBLib.bundle import sha256_file as sha256_of
from TMBRBLib.errors import TMBRBInputError

from . import comparators as C

PHANTOM_DEFAULTS = dict(n=280, strength=2.0, haze_hu=300.0, shell_mm=8.0, seed=0, fractions=(0.7, 0.1, 0.2))
COX_COVARIATES = ("ecog", "sex", "smoking", "histology", "stage", "egfr", "age")
SURVIVAL_COLUMNS = ("os_time", "os_event", "pfs_time", "pfs_event")


_T0 = [time.perf_counter()]


def _log(msg: str) -> None:
    print(f"[paper {time.perf_counter() - _T0[0]:6.1f} s] {msg}", file=sys.stderr, flush=True)


class _State:
    """``state.json``: each finished step with the key of its inputs; a step whose key changed is run again."""

    def __init__(self, work: Path):
        self.path = work / "state.json"
        self.data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}

    def done(self, step: str, key: str) -> bool:
        return self.data.get(step, {}).get("key") == key

    def mark(self, step: str, key: str, **info) -> None:
        self.data[step] = {"key": key, **info}
        self.path.write_text(json.dumps(self.data, indent=1, default=str), encoding="utf-8")

    def info(self, step: str) -> Dict:
        return self.data.get(step, {})


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- steps
def _cohort_step(a, work: Path, state: _State) -> Path:
    if a.manifest:
        m = Path(a.manifest)
        if not m.is_file():
            raise TMBRBInputError(f"The manifest '{m}' does not exist.", "Give the CSV that lists the cases.")
        return m
    from .cli import write_phantoms
    kw = dict(PHANTOM_DEFAULTS, n=a.n, seed=a.cohort_seed)
    key = _key("cohort", kw, a.signal)
    if state.done("cohort", key) and (work / "cohort" / "manifest.csv").is_file():
        _log("cohort: done before, reused")
        return work / "cohort" / "manifest.csv"
    _log(f"cohort: {kw['n']} phantoms ({a.signal}, the demo model's settings) in {work / 'cohort'}")
    m = write_phantoms(work / "cohort", kw["n"], kw["fractions"], a.signal, kw["strength"], kw["seed"], a.workers,
                       not a.no_progress, haze_hu=kw["haze_hu"], shell_mm=kw["shell_mm"])
    state.mark("cohort", key, manifest=str(m))
    return m


def _model_step(a, work: Path, manifest: Path, state: _State, command: str) -> Path:
    if a.bundle:
        return Path(a.bundle)
    from .cli import config_from_args
    from .export import export_bundle
    from .trainer import train
    key = _key("model", sha256_of(manifest), a.seed, a.epochs, a.architecture, a.preprocessing)
    bundle = work / "bundle"
    if state.done("model", key) and (bundle / "configs" / "metadata.json").is_file():
        _log("model: trained before, reused")
        return bundle
    _log("model: training TMBRB on the manifest's train/val splits")
    a.resume = (work / "run" / "checkpoints" / "last.pt").is_file()
    train(config_from_args(a, str(manifest), str(work / "run"), command))
    export_bundle(work / "run", bundle, model_id="tmbrb-paper", name="TMBRB (python -m training paper)",
                  command=command, ood_summary=False)
    state.mark("model", key, bundle=str(bundle))
    return bundle


def _score_step(a, work: Path, manifest: Path, bundle, splits: List[str], state: _State) -> pd.DataFrame:
    """The TMBRB score (and attention shares) of every case of every split, through the engine (``bundle``: the
    loaded `TMBRBLib.bundle.Bundle`)."""
    from .evaluate import evaluate
    model_sha = bundle.sha256
    frames = []
    for split in splits:
        out = work / "scores" / split
        key = _key("score", sha256_of(manifest), model_sha, split, a.shifts)
        if not (state.done(f"score_{split}", key) and (out / "predictions.csv").is_file()):
            _log(f"score: {split} split through the engine (score_case)")
            evaluate(bundle, manifest, out, split, a.shifts, a.device, None, not a.no_progress)
            state.mark(f"score_{split}", key)
        frames.append(pd.read_csv(out / "predictions.csv", dtype={"case": str}))
    return pd.concat(frames, ignore_index=True)


def _comparator_step(a, work: Path, manifest: Path, scores: pd.DataFrame):
    """Tumour features (cached per case) and the comparator models; writes predictions.csv and comparators.json."""
    df, cases = C.load_cohort(manifest, a.clinical_columns, a.tmb_threshold)
    cache = Path(a.feature_cache) if a.feature_cache else work / "cache"
    _log(f"features: {len(cases)} cases (cached in {cache}; radiomics {'off' if a.no_radiomics else 'on'})")
    feats = C.case_features(cases, cache, radiomics=not a.no_radiomics, progress=not a.no_progress)
    if not a.no_radiomics:
        C.write_settings(work)
    clinical = df.attrs["clinical_columns"]
    df = df.merge(scores[["case", "score"]].rename(columns={"score": "tmbrb"}), on="case", how="left")
    _log("comparators: fitting on the train split")
    pred, fits = C.fit_comparators(df, feats, clinical_columns=clinical, histology=a.histology_column, seed=a.seed)
    pred.to_csv(work / "predictions.csv", index=False)
    (work / "comparators.json").write_text(json.dumps(fits, indent=1, default=float), encoding="utf-8")
    return df, pred, fits


def _survival_data(a, work: Path, df: pd.DataFrame, cases) -> Optional[pd.DataFrame]:
    """The survival cohort: the manifest's cases with OS/PFS columns, a given CSV, or the simulated one."""
    extra = pd.DataFrame([{"case": c.case_id, **c.extra} for c in cases])
    if {"os_time", "os_event"} <= set(extra.columns) or {"pfs_time", "pfs_event"} <= set(extra.columns):
        cols = [c for c in extra.columns if c in SURVIVAL_COLUMNS + COX_COVARIATES and c not in df.columns]
        surv = df.merge(extra[["case"] + cols], on="case")
        source = "the manifest's cases with OS/PFS, scored by the TMBRB model"
    elif a.immunotherapy:
        path = Path(a.immunotherapy)
        if not path.is_file():
            raise TMBRBInputError(f"The immunotherapy CSV '{path}' does not exist.", "Give its path.")
        surv = pd.read_csv(path)
        source = f"{path.name} (its 'tmbrb' column)"
    elif a.manifest:
        return None
    else:
        from TMBRBLib.phantom import write_immunotherapy_cohort
        path = write_immunotherapy_cohort(work / "immunotherapy.csv", n=a.ici_n, seed=a.cohort_seed)
        surv = pd.read_csv(path)
        source = (f"the simulated immunotherapy cohort (n={a.ici_n}, seed {a.cohort_seed}): its TMBRB score is "
                  "simulated from TMB (Gaussian copula, Spearman ~0.6) and OS/PFS from the paper's hazard ratios; "
                  "it has no images, so figures 3-4 test the statistics, not the model")
    need = [c for c in ("tmbrb",) if c not in surv.columns]
    if need or not ({"os_time", "os_event"} <= set(surv.columns) or {"pfs_time", "pfs_event"} <= set(surv.columns)):
        raise TMBRBInputError(f"The survival data ({source}) needs a 'tmbrb' column and os_time/os_event or "
                              f"pfs_time/pfs_event (it has {sorted(surv.columns)}).", "Add the missing columns.")
    for c in SURVIVAL_COLUMNS:
        if c in surv.columns:
            surv[c] = pd.to_numeric(surv[c], errors="coerce")
    surv.attrs["source"] = source
    return surv


# ---------------------------------------------------------------- report: figure 2 (discrimination of High-TMB)
def _models(pred: pd.DataFrame) -> List[str]:
    return [m for m in C.MODEL_COLUMNS if m in pred.columns and pred[m].notna().any()]


def _cohorts(pred: pd.DataFrame) -> List[str]:
    return [c for c in ("train", "test") if (pred["cohort"] == c).any()]


def _roc_section(doc, pred: pd.DataFrame, res: Dict) -> None:
    """ROC of every model per cohort with DeLong CIs, and DeLong tests of TMBRB against each (figure 2A/B, H)."""
    import matplotlib.pyplot as plt
    from TMBRBLib.stats import plot_roc_curves, roc_analysis
    from TMBRBLib.stats.report import guarded_section

    doc.h("Figure 2A/B, H: ROC of each model (AUC with 95% DeLong CI) and DeLong tests against TMBRB")
    with guarded_section(doc, "ROC"):
        cohorts, models = _cohorts(pred), _models(pred)
        rows, tests = [], []
        fig, axes = plt.subplots(1, len(cohorts), figsize=(5.2 * len(cohorts), 5), squeeze=False)
        for ax, c in zip(axes[0], cohorts):
            sub = pred[pred["cohort"] == c]
            rocs = [roc_analysis(sub["label"], sub[m], direction="<", name=m) for m in models]
            rows += [{"cohort": c, "model": r.name, "n_high": r.n_cases, "n_low": r.n_controls, "AUC": r.auc,
                      "CI low": r.ci_low, "CI high": r.ci_high, "sensitivity": r.youden_sensitivity,
                      "specificity": r.youden_specificity} for r in rocs]
            plot_roc_curves(rocs, ax=ax, title=f"ROC: {c} cohort")
            for m in models:
                if m != "tmbrb" and "tmbrb" in models:
                    tests.append(_delong_row(sub, c, m))
        res["roc"], res["delong"] = rows, tests
        doc.table(pd.DataFrame(rows))
        doc.fig(fig, "ROC curves of TMBRB and the comparators (paper figure 2A/B)")
        if tests:
            doc.table(pd.DataFrame(tests))


def _delong_row(sub: pd.DataFrame, cohort: str, model: str) -> Dict:
    """One row of the DeLong table: TMBRB against ``model`` in one cohort (p NaN, with the reason, when undefined)."""
    from TMBRBLib.stats import TMBRBStatsInputError, delong_test
    try:
        t = delong_test(sub["label"], sub["tmbrb"], sub[model], direction1="<", direction2="<", name1="tmbrb",
                        name2=model)
    except TMBRBStatsInputError as e:
        return {"cohort": cohort, "TMBRB vs": model, "DeLong p": np.nan, "note": str(e)[:120]}
    return {"cohort": cohort, "TMBRB vs": model, "AUC TMBRB": t.auc1, "AUC other": t.auc2,
            "difference": t.difference, "z": t.z, "DeLong p": t.p_value}


def _dca_section(doc, pred: pd.DataFrame, res: Dict) -> None:
    """Decision curves of every model per cohort (figure 2C/D)."""
    import matplotlib.pyplot as plt
    from TMBRBLib.stats import decision_curve
    from TMBRBLib.stats.report import guarded_section

    doc.h("Figure 2C/D: decision curves")
    with guarded_section(doc, "Decision curves"):
        cohorts = _cohorts(pred)
        fig, axes = plt.subplots(1, len(cohorts), figsize=(5.5 * len(cohorts), 4), squeeze=False)
        for ax, c in zip(axes[0], cohorts):
            sub = pred[pred["cohort"] == c]
            r = decision_curve(sub["label"], {m: sub[m] for m in _models(pred)})
            r.plot(ax=ax, title=f"Decision curves: {c} cohort")
            res.setdefault("dca", {})[c] = r.to_dict()
        doc.fig(fig, "Net benefit of each model vs treat-all / treat-none (paper figure 2C/D)")


def _combined_section(doc, fits: Dict, res: Dict) -> None:
    """The TMBRB + histology logistic regression fitted on the train split (the comparator's own fit): coefficients,
    odds ratios and p; its test AUC is in the ROC table."""
    from TMBRBLib.stats import TMBRBStatsInputError
    from TMBRBLib.stats.report import guarded_section

    doc.h("TMBRB + histology (logistic regression on the train split)")
    with guarded_section(doc, "TMBRB + histology"):
        fit = fits.get("tmbrb_histology")
        if not fit:
            raise TMBRBStatsInputError("no TMBRB + histology model (the comparator notes say why)")
        res["tmbrb_histology"] = {k: fit[k] for k in ("predictors", "table", "n_train", "train_auc", "train_auc_ci")}
        doc.table(pd.DataFrame(fit["table"]))
        lo, hi = fit["train_auc_ci"]
        doc.p(f"Train AUC of the fitted probability {fit['train_auc']:.3f} ({lo:.3f}-{hi:.3f}); "
              "its test AUC is the 'tmbrb_histology' row of the ROC table (the same fit).")


def _spearman_cutoff_section(doc, pred: pd.DataFrame, cutoffs, res: Dict) -> None:
    """Spearman of TMBRB with TMB (figure 2G) and TMBRB's AUC at TMB cut-offs 3-11 (figure 2E/F)."""
    import matplotlib.pyplot as plt
    from TMBRBLib.stats import auc_by_cutoff, spearman
    from TMBRBLib.stats.report import guarded_section

    doc.h("Figure 2E/F/G: TMBRB vs TMB (Spearman) and AUC across TMB cut-offs")
    with guarded_section(doc, "Spearman"):
        rows = []
        for c in _cohorts(pred):
            sub = pred[pred["cohort"] == c]
            r = spearman(sub["tmbrb"], sub["tmb"], x_name="TMBRB", y_name="TMB")
            rows.append({"cohort": c, **{k: v for k, v in r.to_dict().items() if not isinstance(v, (list, dict))}})
        res["spearman"] = rows
        doc.table(pd.DataFrame(rows))
        fig, ax = plt.subplots(figsize=(5, 4.5))
        r.plot(ax=ax)
        doc.fig(fig, f"Spearman correlation of TMBRB with TMB, {c} cohort (paper figure 2G)")
    with guarded_section(doc, "AUC by cut-off"):
        order = _cohorts(pred)
        sub = pred[pred["cohort"].isin(order)]
        r = auc_by_cutoff(sub["tmbrb"], sub["tmb"], cutoffs, cohort=sub["cohort"], cohort_order=order)
        res["auc_by_cutoff"] = r.to_dict()
        doc.table(r.table)
        if len(r.difference):
            doc.table(r.difference)
        fig = plt.figure(figsize=(10, 4))
        r.plot(axes=fig.subplots(1, 2 if len(r.difference) else 1))
        doc.fig(fig, "TMBRB's AUC at each TMB cut-off and the train-test difference (paper figure 2E/F)")


def _strata(values: pd.Series, train_values: pd.Series) -> pd.Series:
    """'<= m' / '> m' at the train split's median m (two strata of a measure)."""
    m = float(np.median(train_values))
    return pd.Series(np.where(values <= m, f"<= {m:.3g}", f"> {m:.3g}"), index=values.index)


def _stratified_section(doc, pred: pd.DataFrame, res: Dict) -> None:
    """TMBRB's AUC within strata of diameter, volume and slice thickness (train median split; supplement S2)."""
    import matplotlib.pyplot as plt
    from TMBRBLib.stats import TMBRBStatsInputError, roc_analysis
    from TMBRBLib.stats.report import guarded_section

    doc.h("Stratified analysis: TMBRB's AUC by maximum 3D diameter, volume and slice thickness")
    with guarded_section(doc, "Stratified analysis"):
        rows = []
        train = pred[pred["cohort"] == "train"]
        for col in ("max_diameter_3d_mm", "volume_ml", "slice_thickness_mm"):
            if col not in pred.columns:
                continue
            for c in _cohorts(pred):
                sub = pred[pred["cohort"] == c]
                for s, part in sub.groupby(_strata(sub[col], train[col])):
                    row = {"measure": col, "cohort": c, "stratum": s, "n": len(part), "n_high": int(part["label"].sum())}
                    try:
                        r = roc_analysis(part["label"], part["tmbrb"], direction="<", name=s)
                        row.update({"AUC": r.auc, "CI low": r.ci_low, "CI high": r.ci_high})
                    except TMBRBStatsInputError as e:
                        row.update({"AUC": np.nan, "note": str(e)[:80]})
                    rows.append(row)
        t = pd.DataFrame(rows)
        res["stratified"] = rows
        doc.table(t)
        fig, ax = plt.subplots(figsize=(9, 3.8))
        ok = t.dropna(subset=["AUC"])
        lab = ok["measure"].str.replace("_", " ") + " " + ok["stratum"] + " (" + ok["cohort"] + ")"
        ax.errorbar(np.arange(len(ok)), ok["AUC"], yerr=[ok["AUC"] - ok["CI low"], ok["CI high"] - ok["AUC"]], fmt="o")
        ax.set_xticks(np.arange(len(ok)), lab, rotation=60, ha="right", fontsize=7)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("TMBRB AUC (95% CI)")
        doc.fig(fig, "TMBRB's AUC within strata (split at the train median; paper supplementary figure S2)")


# ---------------------------------------------------------------- report: figures 3-4 (immunotherapy)
def _survival_section(doc, surv: pd.DataFrame, res: Dict, covariates: Optional[List[str]] = None,
                      permutations: int = 0) -> None:
    """Per endpoint: X-tile-style cut-off (maxstat), Kaplan-Meier with log-rank, two-variable Cox forest plot."""
    doc.h("Figures 3-4: immunotherapy cohort")
    doc.p(f"Source: {surv.attrs.get('source', '')}; {len(surv)} patients.")
    covs = [c for c in (covariates or COX_COVARIATES) if c in surv.columns]
    for ep in ("os", "pfs"):
        if not {f"{ep}_time", f"{ep}_event"} <= set(surv.columns):
            continue
        res[ep] = {}
        _endpoint(doc, surv, ep, covs, res[ep], permutations)


def _endpoint(doc, surv: pd.DataFrame, ep: str, covs: List[str], res: Dict, permutations: int = 0) -> None:
    import matplotlib.pyplot as plt
    from TMBRBLib.stats import cox_scan, kaplan_meier, maxstat_cutpoint
    from TMBRBLib.stats.report import guarded_section

    t, e, name = f"{ep}_time", f"{ep}_event", ep.upper()
    doc.h(f"{name}: TMBRB cut-off (maximally selected log-rank, the X-tile step), Kaplan-Meier, Cox", 3)
    with guarded_section(doc, f"{name} cut-off"):
        cp = maxstat_cutpoint(surv[t], surv[e], surv["tmbrb"], permutations=permutations)
        res["cutpoint"] = cp.to_dict()
        doc.table(pd.DataFrame([{"endpoint": name, "cut-off": cp.cutpoint, "statistic": cp.statistic,
                                 "p (corrected)": cp.p_value, "p method": cp.p_method, "p Lau94": cp.p_value_lau94,
                                 f"p ({cp.permutations} permutations)": cp.p_value_permutation,
                                 "naive log-rank p": cp.naive_p_value,
                                 "n low": cp.n_low, "n high": cp.n_high}]))
        grp = np.where(surv["tmbrb"] > cp.cutpoint, f"TMBRB > {cp.cutpoint:.3g}", f"TMBRB <= {cp.cutpoint:.3g}")
        km = kaplan_meier(surv[t], surv[e], grp, time_label=f"{name} (days)")
        res["km"] = km.to_dict()
        doc.table(km.summary)
        doc.pre(str(km.logrank))
        km.plot(title=f"{name} by TMBRB cut-off {cp.cutpoint:.3g}")
        doc.fig(plt.gcf(), f"{name}: Kaplan-Meier by the TMBRB cut-off with log-rank test (paper figure 3A/B)")
        surv[f"tmbrb_{ep}_group"] = (surv["tmbrb"] > cp.cutpoint).astype(int)
    with guarded_section(doc, f"{name} Cox"):
        if f"tmbrb_{ep}_group" not in surv.columns or not covs:
            from TMBRBLib.stats import TMBRBStatsInputError
            raise TMBRBStatsInputError("no cut-off group or no clinical covariates (ECOG, sex, ...)")
        sc = cox_scan(surv, t, e, f"tmbrb_{ep}_group", covs)
        res["cox_scan"] = sc.to_dict()
        doc.table(sc.table)
        sc.plot(title=f"{name}: TMBRB group with ECOG and each clinical characteristic (two-variable Cox)")
        doc.fig(plt.gcf(), f"{name}: hazard ratios of the two-variable Cox models (paper figure 4)")


# ---------------------------------------------------------------- report: figure 5 (attention)
def _attention_section(doc, scores: pd.DataFrame, res: Dict) -> None:
    """Share of the attention map in the tumour vs the peritumoral ring, test split, by label (figure 5)."""
    import matplotlib.pyplot as plt
    from scipy.stats import wilcoxon
    from TMBRBLib.stats import TMBRBStatsInputError
    from TMBRBLib.stats.report import guarded_section

    doc.h("Figure 5: attention map -- tumour vs peritumoral share (test split)")
    with guarded_section(doc, "Attention"):
        s = scores[scores["split"] == "test"].dropna(subset=["attention_tumour", "attention_ring"])
        if s.empty:
            raise TMBRBStatsInputError("no attention shares (the test cases need a tumour mask or a seed)")
        rows = []
        for lab, part in (("High-TMB", s[s["label"] == 1]), ("Low-TMB", s[s["label"] == 0]), ("all", s)):
            if len(part):
                d = part["attention_ring"] - part["attention_tumour"]
                p = wilcoxon(d).pvalue if len(part) > 1 and d.abs().sum() > 0 else np.nan
                rows.append({"cases": lab, "n": len(part), "tumour mean": part["attention_tumour"].mean(),
                             "ring mean": part["attention_ring"].mean(), "tumour median": part["attention_tumour"].median(),
                             "ring median": part["attention_ring"].median(), "Wilcoxon p (ring vs tumour)": p})
        res["attention"] = rows
        doc.table(pd.DataFrame(rows))
        fig, ax = plt.subplots(figsize=(6, 4))
        groups = [(f"{w} {lab}", s.loc[s["label"] == v, f"attention_{w}"]) for v, lab in ((1, "High"), (0, "Low"))
                  for w in ("tumour", "ring")]
        ax.boxplot([g for _, g in groups])
        ax.set_xticks(range(1, len(groups) + 1), [n for n, _ in groups])
        ax.set_ylabel("share of the map's mass")
        doc.fig(fig, "Share of the attention map in the tumour and in the peritumoral ring (paper figure 5)")


# ---------------------------------------------------------------- report: provenance, finding, assembly
def provenance(manifest: Path, bundle, a, command: str) -> Dict:
    """Manifest and model hashes, software versions, seeds and the command of this report (``bundle``: the loaded
    `TMBRBLib.bundle.Bundle`)."""
    import importlib.metadata as md

    def version(pkg: str) -> Optional[str]:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    from .export import portable_command

    b = bundle
    # file names and hashes only: a report is shared, and the folders of a machine often name patients
    return {"command": portable_command(command), "manifest": Path(manifest).name,
            "manifest_sha256": sha256_of(manifest), "model_id": b.tmbrb.get("model_id"), "model_sha256": b.sha256,
            "bundle": Path(b.path).name,
            "seeds": {"comparators_cv": a.seed, "cutpoint_permutations": a.permutations, "cohort": None if a.manifest else a.cohort_seed,
                      "immunotherapy": None if (a.manifest or a.immunotherapy) else a.cohort_seed},
            "radiomics_settings": None if a.no_radiomics else C.RADIOMICS_SETTINGS,
            "python": platform.python_version(),
            "versions": {p: version(p) for p in ("tmbrb", "torch", "monai", "numpy", "scipy", "pandas", "scikit-learn",
                                                 "SimpleITK", "pyradiomics-bhklab", "lifelines", "matplotlib")}}


def finding(res: Dict, signal: Optional[str]) -> str:
    """One sentence on what the test split shows: TMBRB against the tumour-only radiomic model."""
    roc = {(r["cohort"], r["model"]): r for r in res.get("roc", [])}
    t, r = roc.get(("test", "tmbrb")), roc.get(("test", "radiomic"))
    if not t or not r:
        return "The test split has no TMBRB or no radiomic AUC to compare."
    p = next((d["DeLong p"] for d in res.get("delong", []) if d["cohort"] == "test" and d["TMBRB vs"] == "radiomic"),
             float("nan"))
    where = f" on phantoms whose signal is {signal}" if signal else ""
    if not p < 0.05:  # a NaN p (DeLong undefined) is no evidence either way
        verdict = (f"no significant difference ({'DeLong p >= 0.05' if p == p else 'no DeLong test'}): the "
                   "tumour-only radiomic model does not clearly fall behind TMBRB here, unlike in the paper (p < 0.05 "
                   "there)")
    elif t["AUC"] > r["AUC"]:
        verdict = "the tumour-only radiomic model falls behind TMBRB, as in the paper"
    else:
        verdict = "the tumour-only radiomic model does NOT fall behind TMBRB here: it is significantly ahead"
    return (f"Test split{where}: TMBRB AUC {t['AUC']:.3f} ({t['CI low']:.3f}-{t['CI high']:.3f}) vs radiomic "
            f"{r['AUC']:.3f} ({r['CI low']:.3f}-{r['CI high']:.3f}), DeLong p = {p:.3g}: {verdict}.")


IMAGE_MODELS = ("tmbrb", "radiomic", "diameter", "volume")


def cohort_signal(manifest: Path, a) -> Optional[str]:
    """Where the cohort's TMB signal lives: the manifest's ``signal`` column (phantom cohorts), else ``--signal`` for
    the phantom cohort this command writes; None for a user's manifest without that column."""
    head = pd.read_csv(manifest, nrows=0).columns
    if "signal" in head:
        values = pd.read_csv(manifest, usecols=["signal"])["signal"].dropna().astype(str).unique()
        if len(values) == 1 and values[0] in ("peritumoral", "core", "none"):
            return values[0]
    return None if a.manifest else a.signal


def control_finding(res: Dict) -> str:
    """The control cohort's result (signal 'none': no TMB signal in the images): each image-based model's test AUC
    and whether its 95% CI includes 0.5; records ``res['control']``."""
    roc = {r["model"]: r for r in res.get("roc", []) if r["cohort"] == "test"}
    rows = [{"model": m, "AUC": roc[m]["AUC"], "CI low": roc[m]["CI low"], "CI high": roc[m]["CI high"],
             "CI includes 0.5": bool(roc[m]["CI low"] <= 0.5 <= roc[m]["CI high"])} for m in IMAGE_MODELS if m in roc]
    if not rows:
        return "Control cohort (signal none): the test split has no image-based model's AUC."
    off = [r["model"] for r in rows if not r["CI includes 0.5"]]
    res["control"] = {"signal": "none", "test": rows, "as_expected": not off}
    aucs = ", ".join(f"{r['model']} {r['AUC']:.3f} ({r['CI low']:.3f}-{r['CI high']:.3f})" for r in rows)
    verdict = ("every image-based model's 95% CI includes 0.5, as expected with no signal in the images" if not off
               else f"NOT as expected: the 95% CI of {', '.join(off)} excludes 0.5 with no signal in the images")
    rest = [f"{m} {roc[m]['AUC']:.3f}" for m in ("clinical", "tmbrb_histology") if m in roc]
    tail = (f" The clinical columns are simulated from TMB, not from the images, so {' and '.join(rest)} keep "
            "their link to TMB." if rest else "")
    return f"Control cohort (signal none), test split AUC: {aucs}: {verdict}.{tail}"


def _paper_doc():
    """A `ReportDoc` that also records its headings and tables as text, in order, in ``texts``."""
    from TMBRBLib.stats.report import ReportDoc

    class PaperDoc(ReportDoc):
        def h(self, text: str, level: int = 2):
            super().h(text, level)
            self.texts.append(("h", text))

        def table(self, df: pd.DataFrame):
            super().table(df)
            self.texts.append(("table", df.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")))

    doc = PaperDoc()
    doc.texts = []
    return doc


PDF_LINES_PER_PAGE, PDF_LINE_CHARS = 72, 190


def _text_page(pdf, lines: List[str], title: str) -> None:
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(11.69, 8.27))  # A4 landscape
    fig.text(0.03, 0.97, title, fontsize=10, weight="bold", va="top")
    fig.text(0.03, 0.94, "\n".join(line[:PDF_LINE_CHARS] for line in lines), family="monospace", fontsize=6,
             va="top")
    pdf.savefig(fig)
    plt.close(fig)


def write_report_pdf(doc, path: Path, finding_text: str) -> Dict:
    """``report.pdf``: a title page with the finding, one page per figure (in the HTML's order), then the tables as
    text pages.

    Parameters
    ----------
    doc : ReportDoc
        The built report (`_paper_doc`: its ``figures`` and ``texts``).
    path : pathlib.Path
        The PDF to write.
    finding_text : str
        The report's first sentence.

    Returns
    -------
    dict
        ``pages`` (count), ``figure_pages`` (the figure titles, one page each, in order) and ``text_pages``.
    """
    import textwrap

    from matplotlib.backends.backend_pdf import PdfPages

    lines = []
    for kind, text in doc.texts:
        lines += ["", f"== {text}"] if kind == "h" else text.splitlines()
    chunks = [lines[i:i + PDF_LINES_PER_PAGE] for i in range(0, len(lines), PDF_LINES_PER_PAGE)]
    with PdfPages(path, metadata={"Title": "TMBRB paper report", "Creator": "python -m training paper"}) as pdf:
        _text_page(pdf, textwrap.wrap(finding_text, 120) + ["", "Research use only."],
                   "TMBRB: the paper's comparison (He et al., JITC 2020) on this cohort")
        for title, fig in doc.figures:
            fig.suptitle(title, fontsize=8, y=1.02)
            pdf.savefig(fig, bbox_inches="tight")
        for i, chunk in enumerate(chunks):
            _text_page(pdf, chunk, f"Tables ({i + 1}/{len(chunks)})")
    return {"file": path.name, "pages": 1 + len(doc.figures) + len(chunks),
            "figure_pages": [t for t, _ in doc.figures], "text_pages": len(chunks)}


def build_paper_report(work: Path, df: pd.DataFrame, pred: pd.DataFrame, scores: pd.DataFrame, fits: Dict,
                       surv: Optional[pd.DataFrame], prov: Dict, a, signal: Optional[str] = None) -> Path:
    """Write ``report.html`` (figures embedded, in the order of the paper's figures 2-5), ``report.pdf`` (the same
    figures, one a page, and the tables as text) and ``report.json``; ``signal`` 'none' makes it a control report."""
    import html as _html

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from TMBRBLib.stats.report import notes_section, write_report_html, write_report_json, ReportConfig

    doc, res = _paper_doc(), {}
    doc.h("TMBRB: the paper's comparison (He et al., JITC 2020) on this cohort", 1)
    doc.p("Research use only. " + ("Synthetic phantoms: not for clinical or research conclusions. " if not a.manifest else ""))
    finding_at = len(doc.parts)
    _roc_section(doc, pred, res)
    _dca_section(doc, pred, res)
    _combined_section(doc, fits, res)
    _spearman_cutoff_section(doc, pred, [float(c) for c in range(3, 12)], res)
    _stratified_section(doc, pred, res)
    if surv is not None:
        _survival_section(doc, surv, res, a.cox_covariates, a.permutations)
    _attention_section(doc, scores, res)
    doc.h("Comparator fits")
    doc.pre(json.dumps(fits, indent=1, default=float)[:6000])
    doc.h("Provenance")
    doc.pre(json.dumps(prov, indent=1, default=str))
    res["finding"] = control_finding(res) if signal == "none" else finding(res, signal)
    doc.parts.insert(finding_at, f"<p><b>{_html.escape(res['finding'])}</b></p>")
    doc.notes += fits.get("notes", [])
    notes_section(doc)
    try:
        res["pdf"] = write_report_pdf(doc, work / "report.pdf", res["finding"])
    finally:
        for _, f in doc.figures:
            plt.close(f)
    doc.results.update({"paper": res, "provenance": prov})
    write_report_json(doc, work)
    return write_report_html(doc, work, ReportConfig(title="TMBRB paper report"))


def run_paper(a, command: str = "python -m training paper") -> Path:
    """Run every step (skipping finished ones) and write the report; returns ``report.html``'s path."""
    t0 = _T0[0] = time.perf_counter()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    state = _State(work)
    manifest = _cohort_step(a, work, state)
    df, cases = C.load_cohort(manifest, a.clinical_columns, a.tmb_threshold)  # bad columns stop here, before work
    from TMBRBLib.bundle import load_bundle
    bundle = load_bundle(_model_step(a, work, manifest, state, command))  # loaded (and hashed) once
    scores = _score_step(a, work, manifest, bundle, [s for s in ("train", "val", "test") if (df["cohort"] == s).any()],
                         state)
    df, pred, fits = _comparator_step(a, work, manifest, scores)
    surv = _survival_data(a, work, df, cases)
    _log("report: analyses and figures")
    path = build_paper_report(work, df, pred, scores, fits, surv, provenance(manifest, bundle, a, command), a,
                              cohort_signal(manifest, a))
    _log(f"done in {time.perf_counter() - t0:.0f} s: {path}")
    return path


def add_paper_args(p) -> None:
    """The options of `python -m training paper` (the training options come from `add_train_args`)."""
    p.add_argument("--work", required=True, help="folder for every step's output and the report (resumable)")
    p.add_argument("--manifest", default=None, help="your manifest (default: the phantom cohort with the demo's settings)")
    p.add_argument("--bundle", default=None, help="use this TMBRB bundle (e.g. the demo bundle) instead of training")
    p.add_argument("--n", type=int, default=PHANTOM_DEFAULTS["n"], help="phantom cohort size")
    p.add_argument("--signal", default="peritumoral", choices=["peritumoral", "core", "none"])
    p.add_argument("--cohort-seed", type=int, default=PHANTOM_DEFAULTS["seed"])
    p.add_argument("--workers", type=int, default=2, help="processes that write the phantoms")
    p.add_argument("--immunotherapy", default=None, help="CSV with tmbrb, os/pfs time and event and covariates")
    p.add_argument("--cox-covariates", nargs="*", default=None,
                   help=f"covariates of the two-variable Cox models (default those among {list(COX_COVARIATES)})")
    p.add_argument("--ici-n", type=int, default=123, help="size of the simulated immunotherapy cohort")
    p.add_argument("--permutations", type=int, default=10000,
                   help="permutations for the Monte-Carlo p of each survival cut-off (0: none; Lau92/Lau94 always)")
    p.add_argument("--clinical-columns", nargs="*", default=None,
                   help=f"clinical columns of the manifest (default: those among {list(C.CLINICAL_CANDIDATES)})")
    p.add_argument("--histology-column", default="histology")
    p.add_argument("--no-radiomics", action="store_true", help="leave the radiomic model out")
    p.add_argument("--feature-cache", default=None,
                   help="folder of the per-case feature cache (default WORK/cache; share it between work folders)")
    p.add_argument("--shifts", type=int, default=None, help="test-time box shifts (default: the bundle's)")
