"""`tmbrb analyze ...`: the statistics toolkit on CSV files (JSON + PNG into --out).

Wire into the top-level command with ``add_analyze_parser(subparsers)``; standalone:
``python -m TMBRBLib.stats.cli analyze roc --csv preds.csv --label label --score score --out out/``.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np

from .errors import TMBRBStatsInputError, TMBRBStatsWarning

__all__ = ["add_analyze_parser", "main"]


def _out(args) -> Path:
    p = Path(args.out)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _load(args, cols: List[str]):
    from ._input import read_csv, require_columns

    df = read_csv(args.csv)
    require_columns(df, [c for c in cols if c], f"{args.csv}")
    return df


def _save(result, out: Path, name: str, plot=True, **plot_kw):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result.save_json(out / f"{name}.json")
    print(result)
    if plot and hasattr(result, "plot"):
        result.plot(**plot_kw)
        plt.gcf().savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
        plt.close("all")
    print(f"wrote {out / (name + '.json')}")


def _groups(df, args):
    """Group column: --group as is, or --marker split at --cutoff (x > cutoff vs x <= cutoff)."""
    if getattr(args, "group", None):
        return df[args.group].to_numpy(dtype=object)
    if getattr(args, "marker", None) and args.cutoff is None:  # a marker alone would silently give one group
        raise TMBRBStatsInputError(f"--marker {args.marker} needs --cutoff VALUE (the marker is split at it), or give "
                                   "--group COLUMN.")
    if getattr(args, "marker", None):
        from ._input import to_numeric

        x = to_numeric(df[args.marker], args.marker)
        return np.where(np.isnan(x), None, np.where(x > args.cutoff, f"{args.marker} > {args.cutoff:g}",
                                                     f"{args.marker} <= {args.cutoff:g}")).astype(object)
    return None


def _cmd_roc(args) -> int:
    from .roc import plot_roc_curves, roc_analysis
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = _load(args, [args.label, *args.score])
    out = _out(args)
    res = [roc_analysis(df[args.label], df[s], direction=args.direction, positive=args.positive, ci_method=args.ci,
                        n_boot=args.n_boot, seed=args.seed, threshold=args.threshold, name=s) for s in args.score]
    for r in res:
        print(r)
    (out / "roc.json").write_text(json.dumps({r.name: r.to_dict() for r in res}, indent=1), encoding="utf-8")
    plot_roc_curves(res)
    plt.gcf().savefig(out / "roc.png", dpi=120, bbox_inches="tight")
    plt.close("all")
    print(f"wrote {out / 'roc.json'}")
    return 0


def _cmd_compare(args) -> int:
    from .roc import delong_test

    df = _load(args, [args.label, args.score1, args.score2])
    r = delong_test(df[args.label], df[args.score1], df[args.score2], positive=args.positive, name1=args.score1,
                    name2=args.score2)
    _save(r, _out(args), "compare_roc", plot=False)
    return 0


def _cmd_dca(args) -> int:
    from .classification import decision_curve

    if not (0 < args.min_threshold <= args.max_threshold < 1 and 0 < args.step < 1):  # also refuses NaN
        raise TMBRBStatsInputError(
            f"need 0 < --min-threshold <= --max-threshold < 1 and 0 < --step < 1; got {args.min_threshold:g}, "
            f"{args.max_threshold:g} and {args.step:g}. The defaults are 0.01, 0.99 and 0.01.")
    df = _load(args, [args.label, *args.models])
    thr = np.arange(args.min_threshold, args.max_threshold + 1e-12, args.step)
    r = decision_curve(df[args.label], {m: df[m] for m in args.models}, thresholds=thr, positive=args.positive)
    _save(r, _out(args), "dca")
    return 0


def _cmd_spearman(args) -> int:
    from .classification import spearman

    df = _load(args, [args.x, args.y])
    _save(spearman(df[args.x], df[args.y], x_name=args.x, y_name=args.y), _out(args), "spearman")
    return 0


def _cmd_abc(args) -> int:
    from .classification import auc_by_cutoff

    df = _load(args, [args.score, args.target, args.cohort])
    r = auc_by_cutoff(df[args.score], df[args.target], args.cutoffs,
                      cohort=df[args.cohort] if args.cohort else None, direction=args.direction)
    _save(r, _out(args), "auc_by_cutoff")
    return 0


def _cmd_logistic(args) -> int:
    from .classification import logistic_combination

    df = _load(args, [args.label, *args.predictors])
    r = logistic_combination(df, args.label, args.predictors, positive=args.positive,
                             reference=_reference(args.reference))
    _save(r, _out(args), "logistic", plot=False)
    return 0


def _cmd_cutpoint(args) -> int:
    from .cutpoint import maxstat_cutpoint

    df = _load(args, [args.time, args.event, args.marker])
    r = maxstat_cutpoint(df[args.time], df[args.event], df[args.marker], minprop=args.minprop, maxprop=args.maxprop,
                         permutations=args.permutations, seed=args.seed)
    _save(r, _out(args), "cutpoint", label=args.marker)
    return 0


def _cmd_km(args) -> int:
    from .survival import kaplan_meier

    df = _load(args, [args.time, args.event, args.group, args.marker])
    r = kaplan_meier(df[args.time], df[args.event], _groups(df, args), conf_type=args.conf_type, time_label=args.time,
                     risk_times=args.risk_times)
    _save(r, _out(args), "km", risk_times=args.risk_times)
    return 0


def _reference(items: Optional[List[str]]) -> dict:
    """``COLUMN=LEVEL`` items of --reference as a dict, with a clear error for a malformed item."""
    out = {}
    for item in items or []:
        col, sep, level = item.partition("=")
        if not sep or not col.strip() or not level.strip():
            raise TMBRBStatsInputError(f"--reference {item!r} is not COLUMN=LEVEL; write e.g. --reference "
                                       "histology=squamous (one item per text covariate).")
        out[col.strip()] = level.strip()
    return out


def _cmd_cox(args) -> int:
    from .cox import cox_ph

    df = _load(args, [args.time, args.event, *args.covariates])
    r = cox_ph(df, args.time, args.event, args.covariates, ties=args.ties, reference=_reference(args.reference))
    _save(r, _out(args), "cox", plot=False)
    return 0


def _cmd_cox_scan(args) -> int:
    from .cox import cox_scan

    df = _load(args, [args.time, args.event, args.marker, *args.covariates])
    marker = args.marker
    if args.cutoff is not None:
        from ._input import to_numeric

        x = to_numeric(df[marker], marker)
        marker = f"{args.marker}>{args.cutoff:g}"
        df[marker] = np.where(np.isnan(x), np.nan, (x > args.cutoff).astype(float))
    r = cox_scan(df, args.time, args.event, marker, args.covariates, ties=args.ties,
                 reference=_reference(args.reference))
    _save(r, _out(args), "cox_scan")
    return 0


def _cmd_table1(args) -> int:
    from ..errors import csv_cell
    from .table1 import table1

    df = _load(args, [args.group, args.marker, *args.continuous, *args.categorical])
    g = _groups(df, args)
    if g is None:
        raise TMBRBStatsInputError("table1 needs --group COLUMN, or --marker COLUMN with --cutoff VALUE.")
    df["__group"] = g
    r = table1(df, "__group", continuous=args.continuous, categorical=args.categorical, equal_var=args.equal_var)
    out = _out(args)
    r.save_json(out / "table1.json")
    r.table.map(csv_cell).rename(columns=csv_cell).to_csv(out / "table1.csv", index=False)
    (out / "table1.html").write_text(r.to_html(), encoding="utf-8")
    print(r)
    print(f"wrote {out / 'table1.csv'}")
    return 0


def _cmd_report(args) -> int:
    from ._input import read_csv
    from .report import ReportConfig, build_report

    pred = read_csv(args.predictions)
    clin = read_csv(args.clinical) if args.clinical else None
    cfg = ReportConfig(case=args.case, score=args.score, tmb=args.tmb, label=args.label, cohort=args.cohort,
                       tmb_cutoff=args.tmb_cutoff, cutoffs=args.cutoffs, os_time=args.os_time, os_event=args.os_event,
                       pfs_time=args.pfs_time, pfs_event=args.pfs_event, os_cutoff=args.os_cutoff,
                       pfs_cutoff=args.pfs_cutoff, covariates=args.covariates, continuous=args.continuous)
    path = build_report(pred, clin, _out(args), cfg, fmt=args.format)
    print(f"wrote {path}")
    return 0


def add_analyze_parser(subparsers) -> argparse.ArgumentParser:
    """Register `analyze` with its sub-commands on an argparse subparsers object; returns the `analyze` parser."""
    an = subparsers.add_parser("analyze", help="statistics of the paper on a CSV (ROC, DCA, KM, Cox, ...)",
                               description="Statistics of He et al. 2020 on CSV files; results agree with R "
                                           "(pROC, survival, maxstat). Each writes JSON (+ PNG) into --out.")
    sub = an.add_subparsers(dest="analysis", metavar="ANALYSIS")
    sub.required = True
    _add_classification_parsers(sub)
    _add_survival_parsers(sub)
    _add_table1_parser(sub)
    _add_report_parser(sub)
    return an


def _subcommand(sub, name: str, help_: str, func, csv: bool = True) -> argparse.ArgumentParser:
    """One `analyze` sub-command with --out (and --csv unless ``csv`` is False)."""
    p = sub.add_parser(name, help=help_, description=help_)
    if csv:
        p.add_argument("--csv", required=True, help="input CSV file with a header row")
    p.add_argument("--out", default="analysis", help="output folder for JSON and PNG (default: analysis)")
    p.set_defaults(func=func)
    return p


def _add_label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", default="label", help="binary outcome column (default: label)")
    p.add_argument("--positive", default=None, help="value of --label that is a case (default: the larger/"
                                                      "later-sorted value, as R's factor levels)")


def _add_time_event_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time", default="os_time", help="survival time column (default: os_time)")
    p.add_argument("--event", default="os_event", help="event column: 1 event, 0 censored (default: os_event)")


def _add_classification_parsers(sub) -> None:
    """roc, compare-roc, dca, spearman, auc-by-cutoff, logistic."""
    p = _subcommand(sub, "roc", "ROC curve(s): AUC with DeLong (or bootstrap) CI, direction, Youden point", _cmd_roc)
    _add_label_args(p)
    p.add_argument("--score", nargs="+", default=["score"], help="score column(s); several give one plot")
    p.add_argument("--direction", default="auto", choices=["auto", "<", ">"], help="pROC direction (default auto)")
    p.add_argument("--threshold", type=float, default=None, help="also report sensitivity/specificity here")
    p.add_argument("--ci", default="delong", choices=["delong", "bootstrap"],
                   help="CI of the AUC: DeLong or stratified bootstrap (default: delong)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default: 2000, as pROC)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")

    p = _subcommand(sub, "compare-roc", "paired DeLong test of two correlated ROC curves", _cmd_compare)
    _add_label_args(p)
    p.add_argument("--score1", required=True, help="first score column")
    p.add_argument("--score2", required=True, help="second score column")

    p = _subcommand(sub, "dca", "decision curve analysis (net benefit vs treat-all / treat-none)", _cmd_dca)
    _add_label_args(p)
    p.add_argument("--models", nargs="+", default=["score"], help="predicted-probability column(s)")
    p.add_argument("--min-threshold", type=float, default=0.01, help="first threshold probability (default: 0.01)")
    p.add_argument("--max-threshold", type=float, default=0.99, help="last threshold probability (default: 0.99)")
    p.add_argument("--step", type=float, default=0.01, help="threshold step (default: 0.01)")

    p = _subcommand(sub, "spearman", "Spearman correlation with a scatter plot", _cmd_spearman)
    p.add_argument("--x", default="score", help="first column (default: score)")
    p.add_argument("--y", default="TMB", help="second column (default: TMB)")

    p = _subcommand(sub, "auc-by-cutoff", "AUC of a score for target >= each cut-off, per cohort, with the difference",
                    _cmd_abc)
    p.add_argument("--score", default="score", help="score column (default: score)")
    p.add_argument("--target", default="TMB", help="target column; a case is target >= cut-off (default: TMB)")
    p.add_argument("--cohort", default=None, help="cohort/split column (two cohorts give their difference)")
    p.add_argument("--cutoffs", type=float, nargs="+", default=[float(c) for c in range(3, 12)],
                   help="cut-offs of the target (default: 3 to 11)")
    p.add_argument("--direction", default="<", choices=["<", ">"],
                   help="pROC direction, the same at every cut-off (default: <, a higher score is a case)")

    p = _subcommand(sub, "logistic", "logistic regression combining scores/covariates, with AUC", _cmd_logistic)
    _add_label_args(p)
    p.add_argument("--predictors", nargs="+", required=True, help="score and covariate columns")
    _add_reference_option(p)


def _add_survival_parsers(sub) -> None:
    """cutpoint, km, cox, cox-scan."""
    p = _subcommand(sub, "cutpoint", "survival cut-point: maximally selected log-rank (maxstat, Lau92, Lau94 and permutation p)", _cmd_cutpoint)
    _add_time_event_args(p)
    p.add_argument("--marker", default="score", help="marker column (default: score)")
    p.add_argument("--minprop", type=float, default=0.1, help="lowest quantile of the cut-points (default: 0.1)")
    p.add_argument("--maxprop", type=float, default=0.9, help="highest quantile of the cut-points (default: 0.9)")
    p.add_argument("--permutations", type=int, default=0,
                   help="B permutations for a Monte-Carlo p of the search (maxstat's condMC; X-tile's Monte-Carlo p)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations")

    p = _subcommand(sub, "km", "Kaplan-Meier per group, median (CI), numbers at risk, log-rank", _cmd_km)
    _add_time_event_args(p)
    p.add_argument("--group", default=None, help="group column")
    p.add_argument("--marker", default=None, help="or: marker column split at --cutoff")
    p.add_argument("--cutoff", type=float, default=None, help="groups marker > cutoff and marker <= cutoff")
    p.add_argument("--conf-type", default="log", choices=["log", "log-log", "plain"],
                   help="CI type for survival and the median (R's default: log)")
    p.add_argument("--risk-times", type=float, nargs="+", default=None, help="times for the numbers-at-risk table")

    p = _subcommand(sub, "cox", "Cox proportional hazards (Efron or Breslow ties): HR, CI, Wald p, LR/score tests, "
                    "concordance", _cmd_cox)
    _add_time_event_args(p)
    p.add_argument("--covariates", nargs="+", required=True, help="covariate columns (text columns give dummies)")
    _add_cox_options(p)

    p = _subcommand(sub, "cox-scan", "paper figure 4: marker + each covariate in two-variable Cox models, forest plot",
                    _cmd_cox_scan)
    _add_time_event_args(p)
    p.add_argument("--marker", default="score", help="marker column (default: score)")
    p.add_argument("--cutoff", type=float, default=None, help="use the marker as a group (marker > cutoff)")
    p.add_argument("--covariates", nargs="+", required=True, help="covariates, each in a model with the marker")
    _add_cox_options(p)


def _add_cox_options(p) -> None:
    p.add_argument("--ties", default="efron", choices=["efron", "breslow"], help="tied event times (R's default: efron)")
    _add_reference_option(p)


def _add_reference_option(p) -> None:
    p.add_argument("--reference", nargs="+", default=None, metavar="COLUMN=LEVEL",
                   help="reference level of a text covariate (default: the first sorted level, as R)")


def _add_table1_parser(sub) -> None:
    p = _subcommand(sub, "table1", "cohort characteristics by group with chi-square/Fisher and t-tests", _cmd_table1)
    p.add_argument("--group", default=None, help="group column")
    p.add_argument("--marker", default=None, help="or: marker column split at --cutoff")
    p.add_argument("--cutoff", type=float, default=None, help="groups marker > cutoff and marker <= cutoff")
    p.add_argument("--continuous", nargs="*", default=[], help="columns summarised as mean±SD (t-test or ANOVA)")
    p.add_argument("--categorical", nargs="*", default=[], help="columns summarised as counts (chi-square or Fisher)")
    p.add_argument("--equal-var", action="store_true", help="Student's t-test instead of Welch's")


def _add_report_parser(sub) -> None:
    p = _subcommand(sub, "report", "run the standard set on predictions (+ clinical) CSV; HTML or PDF report", _cmd_report,
                    csv=False)
    p.add_argument("--predictions", required=True, help="CSV with case, score, TMB, label, cohort")
    p.add_argument("--clinical", default=None, help="CSV with case, OS/PFS time and event, covariates")
    p.add_argument("--format", default="html", choices=["html", "pdf"],
                   help="report.html or report.pdf (default: html)")
    for flag, default in (("case", "case"), ("score", "score"), ("tmb", "TMB"), ("label", "label"), ("cohort", "cohort"),
                          ("os-time", "os_time"), ("os-event", "os_event"), ("pfs-time", "pfs_time"),
                          ("pfs-event", "pfs_event")):
        p.add_argument(f"--{flag}", default=default, help=f"column name (default: {default})")
    p.add_argument("--tmb-cutoff", type=float, default=10.0, help="High-TMB when TMB >= this (if no label column)")
    p.add_argument("--cutoffs", type=float, nargs="+", default=[float(c) for c in range(3, 12)],
                   help="TMB cut-offs of the AUC-by-cut-off section (default: 3 to 11)")
    p.add_argument("--os-cutoff", type=float, default=0.61, help="score cut-off for OS groups (paper: 0.61)")
    p.add_argument("--pfs-cutoff", type=float, default=0.46, help="score cut-off for PFS groups (paper: 0.46)")
    p.add_argument("--covariates", nargs="*", default=["ecog", "sex", "smoking", "histology", "stage", "egfr", "age"],
                   help="clinical columns of the Cox scan and Table 1 (default: ecog sex smoking histology stage egfr "
                        "age)")
    p.add_argument("--continuous", nargs="*", default=["age"], help="covariates summarised as mean±SD in Table 1")


def _run(args) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", TMBRBStatsWarning)
            warnings.showwarning = lambda m, c, *a, **k: print(f"warning: {m}", file=sys.stderr)
            return int(args.func(args) or 0)
    except TMBRBStatsInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tmbrb", description="TMBRB statistics toolkit")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs.required = True
    add_analyze_parser(subs)
    args = parser.parse_args(argv)
    func = args.func
    args.func = lambda a: func(a)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
