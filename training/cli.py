"""`python -m training <command>`: train, export, evaluate, ood-summary, bench, phantoms, demo, paper."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from TMBRBLib.errors import TMBRBError, TMBRBInputError

DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "TMBRBModule" / "Resources" / "models" / "tmbrb_demo"


def _json_arg(text: str, what: str) -> dict:
    if not text:
        return {}
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise TMBRBInputError(f"--{what} is not valid JSON ({e}).", "Write it like '{\"shape\": [32, 32, 32]}'.") from None
    if not isinstance(v, dict):
        raise TMBRBInputError(f"--{what} must be a JSON object.", "Write it like '{\"key\": value}'.")
    return v


def _command_line(argv) -> str:
    return "python -m training " + " ".join(shlex.quote(a) for a in argv)


def add_train_args(p: argparse.ArgumentParser, demo: bool = False):
    from .trainer import TrainConfig
    d = TrainConfig(manifest="", out="")
    if not demo:
        p.add_argument("--manifest", required=True, help="CSV: case, ct, seed, box, tmb/label, split")
        p.add_argument("--out", required=True, help="run folder (checkpoints, history.csv/png, train_summary.json)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping: epochs without a better val AUC")
    p.add_argument("--min-epochs", type=int, default=d.min_epochs)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--margin-vox", type=int, default=d.margin_vox, help="cached margin around the model grid (voxels)")
    p.add_argument("--shift-fraction", type=float, default=d.shift_fraction,
                   help="box shift augmentation: at most this fraction of the box size ...")
    p.add_argument("--max-shift-mm", type=float, default=d.max_shift_mm, help="... and at most this many mm")
    p.add_argument("--no-flips", action="store_true", help="no random flips")
    p.add_argument("--balance", choices=["weighted_loss", "none"], default=d.balance,
                   help="class imbalance: class-weighted cross-entropy (default) or none")
    p.add_argument("--cache", choices=["disk", "memory", "none"], default=d.cache)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="for quick checks")
    p.add_argument("--stop-after", type=int, default=None,
                   help="leave after this many epochs in this invocation (continue later with --resume)")
    p.add_argument("--tmb-threshold", type=float, default=d.tmb_threshold, help="High-TMB if tmb >= this")
    p.add_argument("--architecture", default="", help="JSON overrides of the model architecture")
    p.add_argument("--preprocessing", default="", help="JSON overrides of the crop policy, e.g. the input shape")


def config_from_args(a, manifest: str, out: str, command: str):
    from .trainer import TrainConfig
    return TrainConfig(
        manifest=manifest, out=out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
        patience=a.patience, min_epochs=a.min_epochs, seed=a.seed, margin_vox=a.margin_vox,
        shift_fraction=a.shift_fraction, max_shift_mm=a.max_shift_mm, flips=not a.no_flips, balance=a.balance,
        cache=a.cache, cache_dir=a.cache_dir, device=a.device, threads=a.threads, resume=a.resume,
        progress=not a.no_progress, max_steps_per_epoch=a.max_steps_per_epoch, stop_after=a.stop_after, tmb_threshold=a.tmb_threshold,
        architecture=_json_arg(a.architecture, "architecture"), preprocessing=_json_arg(a.preprocessing, "preprocessing"),
        command=command)


def add_export_args(p: argparse.ArgumentParser, demo: bool = False):
    if not demo:
        p.add_argument("--run", required=True, help="the training run folder (train --out)")
        p.add_argument("--bundle", required=True, help="bundle folder to write")
        p.add_argument("--model-id", default="tmbrb-custom")
        p.add_argument("--name", default="TMBRB")
        p.add_argument("--demo", action="store_true", help="mark as a demo model (synthetic data)")
        p.add_argument("--notice", default=None)
        p.add_argument("--metrics", default=None, help="metrics.json from `evaluate`, stored in the provenance")
        p.add_argument("--ood-manifest", default=None,
                       help="manifest whose train/val splits the OOD summary is fitted on (default: the run's)")
    p.add_argument("--no-ood-summary", action="store_true",
                   help="do not store the training data's feature summary and acquisition ranges in the bundle")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    from TMBRBLib.cam import CAM_METHODS, DEFAULT_CAM_METHOD, DEFAULT_CAM_TARGET_LAYER, DEFAULT_SMOOTH_MM
    p.add_argument("--cam-target-layer", default=None, help=f"layer for Grad-CAM (default {DEFAULT_CAM_TARGET_LAYER})")
    p.add_argument("--cam-method", default=None, choices=list(CAM_METHODS),
                   help=f"class activation map written into the bundle (default {DEFAULT_CAM_METHOD}; "
                        "see TMBRBLib/cam.py)")
    p.add_argument("--cam-smooth-mm", type=float, default=None,
                   help=f"Gaussian smoothing of input x gradient for GradCAM-IxG, in mm (default {DEFAULT_SMOOTH_MM:g})")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    try:
        _run(a, _command_line(argv))
    except TMBRBError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m training`: one sub-command per step."""
    ap = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train from a manifest (torchrun --nproc_per_node N -m training train ... "
                                     "for distributed training)")
    add_train_args(p)

    p = sub.add_parser("export", help="write the model bundle the engine loads")
    add_export_args(p)

    p = sub.add_parser("evaluate", help="run a bundle over a split: predictions.csv + metrics.json")
    p.add_argument("--bundle", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--shifts", type=int, default=None, help="test-time box shifts (default: the bundle's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("ood-summary", help="store the training data's feature summary, acquisition ranges and "
                                           "spread level in a bundle's metadata (weights untouched)")
    p.add_argument("--bundle", required=True, help="the bundle folder (its configs/metadata.json is rewritten)")
    p.add_argument("--manifest", required=True, help="the manifest the model was trained on (train and val splits)")
    from TMBRBLib.ood import OOD_COMPONENTS, OOD_LAYER, OOD_QUANTILE
    p.add_argument("--layer", default=OOD_LAYER,
                   help="layer whose spatially averaged output is summarised (default %(default)s)")
    p.add_argument("--components", type=int, default=OOD_COMPONENTS, help="PCA components of the feature summary")
    p.add_argument("--quantile", type=float, default=OOD_QUANTILE,
                   help="validation quantile that sets the distance threshold and the spread level")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("bench", help="training samples/s with and without the crop cache")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=16, help="samples per measurement")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--preprocessing", default="")
    p.add_argument("--architecture", default="")

    p = sub.add_parser("phantoms", help="write a synthetic phantom cohort + manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--signal", default="peritumoral", choices=["peritumoral", "core", "none"])
    p.add_argument("--strength", type=float, default=None, help="signal strength (default: the generator's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="0.7,0.1,0.2", help="train,val,test fractions")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    _add_phantom_signal_args(p)

    p = sub.add_parser("demo", help="re-create the demo model from scratch: phantoms -> train -> export -> evaluate")
    p.add_argument("--work", default="runs/demo", help="folder for the cohort, run and evaluation")
    p.add_argument("--bundle", default=str(DEMO_BUNDLE), help="bundle folder to write")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--signal", default="peritumoral", choices=["peritumoral", "core", "none"])
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("--cohort-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    _add_phantom_signal_args(p)
    p.add_argument("--model-id", default="tmbrb-demo-phantom-peritumoral")
    add_train_args(p, demo=True)
    add_export_args(p, demo=True)
    from .demo import DEMO_DEFAULTS
    p.set_defaults(**DEMO_DEFAULTS)

    p = sub.add_parser("paper", help="the paper's comparison end to end: TMBRB vs radiomic, clinical, diameter and "
                                     "volume models, survival and attention analyses, one HTML report")
    from .paper import add_paper_args
    add_paper_args(p)
    add_train_args(p, demo=True)
    return ap


def _add_phantom_signal_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--haze-hu", type=float, default=None,
                   help="peritumoral haze (HU) at full signal amplitude: how plainly the image carries the signal")
    p.add_argument("--shell-mm", type=float, default=None, help="thickness of the peritumoral signal shell (mm)")
    p.add_argument("--core-shift-hu", type=float, default=None,
                   help="HU change inside the tumour at full signal amplitude (signal 'core')")


def _phantom_kwargs(a) -> dict:
    return {k: getattr(a, k) for k in ("haze_hu", "shell_mm", "core_shift_hu") if getattr(a, k, None) is not None}


def _run(a, command: str) -> None:
    """Run the sub-command that `a` names; its result is printed as one JSON line."""
    if a.cmd == "train":
        from .trainer import train
        s = train(config_from_args(a, a.manifest, a.out, command))
        if s.get("world_size", 1) == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
            print(json.dumps({k: s[k] for k in ("best_val_auc", "best_epoch", "epochs_run", "wall_s",
                                                "world_size", "ranks_in_sync")}))
    elif a.cmd == "export":
        from .export import export_bundle
        metrics = json.loads(Path(a.metrics).read_text()) if a.metrics else None
        b = export_bundle(a.run, a.bundle, model_id=a.model_id, name=a.name, version=a.version, demo=a.demo,
                          notice=a.notice, checkpoint=a.checkpoint, metrics=_test_metrics(metrics),
                          cam_target_layer=a.cam_target_layer, cam_method=a.cam_method,
                          cam_smooth_mm=a.cam_smooth_mm, command=command, dtype=a.dtype,
                          ood_summary=not a.no_ood_summary, ood_manifest=a.ood_manifest)
        print(json.dumps(b.info()))
    elif a.cmd == "ood-summary":
        from .trust import write_trust_summary
        _threads(a.threads)
        b = write_trust_summary(a.bundle, a.manifest, a.components, a.quantile, not a.no_progress, a.layer)
        t = b.tmbrb
        print(json.dumps({"bundle": str(b.path), "weights_sha256": b.sha256, "threshold": t["ood"]["threshold"],
                          "n_components": t["ood"]["n_components"], "spread_flag_level": t["tta"]["spread_flag_level"],
                          "calibration": t["calibration"],
                          "acquisition_ranges": t["acquisition"]["ranges"]}))
    elif a.cmd == "evaluate":
        from .evaluate import evaluate
        _threads(a.threads)
        m = evaluate(a.bundle, a.manifest, a.out, a.split, a.shifts, a.device, a.limit, not a.no_progress)
        print(json.dumps({k: m.get(k) for k in ("split", "n", "auc", "spearman_score_tmb", "cam_share_signal",
                                                "cam_share_signal_high_tmb", "calibration", "notice")}, default=str))
    elif a.cmd == "bench":
        from .bench import bench
        _threads(a.threads)
        print(json.dumps(bench(a.manifest, a.out, a.n, a.batch_size, _json_arg(a.preprocessing, "preprocessing"),
                               _json_arg(a.architecture, "architecture"))))
    elif a.cmd == "phantoms":
        print(write_phantoms(a.out, a.n, _fractions(a.split), a.signal, a.strength, a.seed, a.workers,
                             not a.no_progress, **_phantom_kwargs(a)))
    elif a.cmd == "demo":
        from .demo import run_demo
        run_demo(a, command)
    elif a.cmd == "paper":
        from .paper import run_paper
        _threads(a.threads)
        print(json.dumps({"report": str(run_paper(a, command))}))


def write_phantoms(out, n, fractions, signal="peritumoral", strength=None, seed=0, workers=1, progress=True,
                   **phantom_kwargs):
    """A phantom cohort through the core library's writer (TMBRBLib.phantom.write_cohort); its manifest path."""
    from TMBRBLib.phantom import DEFAULT_STRENGTH, write_cohort
    try:
        return write_cohort(out, n=n, fractions=fractions, signal=signal,
                            strength=DEFAULT_STRENGTH if strength is None else strength, seed=seed, workers=workers,
                            progress=progress, **phantom_kwargs)
    except ValueError as e:
        raise TMBRBInputError(f"Cannot write the phantom cohort: {e}.",
                              "Check --n (4 or more), --split, --strength, --workers and the signal settings.") from None


def _test_metrics(m):
    """The parts of an evaluate metrics.json worth keeping in the bundle's provenance."""
    if not m:
        return None
    keep = {k: m[k] for k in ("split", "n", "auc", "auc_tta_mean", "spearman_score_tmb", "cam_share_signal",
                              "cam_share_signal_high_tmb", "attention_tumour", "attention_ring",
                              "attention_tumour_high_tmb", "attention_ring_high_tmb", "mean_tta_std",
                              "manifest_sha256", "n_shifts", "calibration")
            if k in m}
    return {f"{m.get('split', 'test')}": keep}


def _threads(n):
    if n:
        import torch
        torch.set_num_threads(int(n))


def _fractions(text: str):
    try:
        f = [float(v) for v in text.split(",")]
    except ValueError:
        raise TMBRBInputError(f"--split '{text}' is not three numbers.", "Give train,val,test fractions, e.g. 0.7,0.1,0.2.") from None
    if len(f) != 3 or min(f) < 0 or sum(f) <= 0:
        raise TMBRBInputError(f"--split '{text}' must be three non-negative fractions.", "E.g. 0.7,0.1,0.2.")
    return f
