"""The demo model from scratch: phantom cohort -> train -> export -> evaluate on the test split -> export again
with the test metrics in the bundle's provenance. One command: `python -m training demo` (see docs/training.md)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .cli import config_from_args, write_phantoms
from .export import DEMO_NOTICE, export_bundle

DEMO_DEFAULTS = dict(epochs=40, patience=12, min_epochs=15, batch_size=8, lr=3e-4, threads=2, strength=2.0, n=280,
                     preprocessing='{"shape": [64, 64, 64]}', margin_vox=4, workers=2, haze_hu=300.0, shell_mm=8.0)


def _log(msg: str):
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def run_demo(a, command: str) -> dict:
    t0 = time.perf_counter()
    work = Path(a.work)
    cohort = work / "cohort"
    _log(f"phantoms: {a.n} cases ({a.signal}, strength {a.strength}) in {cohort} (finished cases are reused)")
    from .cli import _phantom_kwargs
    phantom_kw = _phantom_kwargs(a)
    manifest = write_phantoms(cohort, a.n, (0.7, 0.1, 0.2), a.signal, a.strength, a.cohort_seed, a.workers,
                              not a.no_progress, **phantom_kw)
    t_cohort = time.perf_counter() - t0
    from .trainer import train
    cfg = config_from_args(a, str(manifest), str(work / "run"), command)
    _log("training")
    summary = train(cfg)
    _log(f"best validation AUC {summary['best_val_auc']:.3f} at epoch {summary['best_epoch']}; exporting")
    kw = dict(model_id=a.model_id, name="TMBRB demo (synthetic phantoms)", version=a.version, demo=True,
              notice=DEMO_NOTICE, checkpoint=a.checkpoint, cam_target_layer=a.cam_target_layer,
              cam_method=a.cam_method, cam_smooth_mm=a.cam_smooth_mm, command=command,
              dtype=a.dtype)
    export_bundle(work / "run", a.bundle, ood_summary=False, **kw)
    _log("evaluating on the test split through the engine (score_case)")
    from .evaluate import evaluate
    from .cli import _test_metrics
    m = evaluate(a.bundle, manifest, work / "eval_test", "test", None, "cpu", None, not a.no_progress)
    metrics = _test_metrics(m)
    metrics["phantom"] = {"signal": a.signal, "strength": a.strength, "n": a.n, "cohort_seed": a.cohort_seed,
                          **phantom_kw}
    metrics["timing_s"] = {"cohort": round(t_cohort, 1), "train": summary["wall_s"],
                           "total": round(time.perf_counter() - t0, 1)}
    b = export_bundle(work / "run", a.bundle, metrics=metrics, progress=not a.no_progress,
                      ood_summary=not a.no_ood_summary, **kw)
    report = {"bundle": b.info(), "val_auc": summary["best_val_auc"], "test": m.get("auc"),
              "spearman": m.get("spearman_score_tmb"), "cam_share_signal": m.get("cam_share_signal"),
              "cam_share_signal_high_tmb": m.get("cam_share_signal_high_tmb"),
              "timing_s": metrics["timing_s"]}
    (work / "demo_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _log(json.dumps(report, default=str))
    return report
