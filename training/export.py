"""Export a training run as the model bundle the engine loads (TMBRBLib.bundle.save_bundle).

The bundle's metadata is the run's metadata (architecture and crop policy exactly as trained) with the paper's
risk/cut-off defaults kept, and a `training` section that says where the model came from: the manifest's sha256,
the command, seed, epochs, validation metrics and, when given, test metrics with confidence intervals.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import platform
import shlex
import sys
from pathlib import Path, PureWindowsPath
from typing import Dict, Optional

import torch

from TMBRBLib.bundle import Bundle, save_bundle
from TMBRBLib.cam import CAM_METHODS, LEGACY_CAM_METHOD, MAX_SMOOTH_MM, cam_settings_of
from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.model import build_model

from .trainer import CHECKPOINT_DIR, SUMMARY_JSON

DEMO_NOTICE = "demo model trained on synthetic phantoms — not for clinical or research conclusions"


def _model_card(meta: Dict) -> str:
    t = meta["tmbrb"]
    tr = t.get("training", {})
    lines = [f"# {meta.get('name')} ({t.get('model_id')}, version {meta.get('version')})", ""]
    if t.get("demo"):
        lines += [f"**{t.get('notice')}**", ""]
    lines += [meta.get("description", ""), "", f"Intended use: {meta.get('intended_use', '')}", "",
              "## Training", "", f"- manifest sha256: `{tr.get('manifest_sha256')}`",
              f"- cases: {tr.get('n_train')} train, {tr.get('n_val')} validation",
              f"- seed: {tr.get('seed')}; epochs run: {tr.get('epochs_run')} (best epoch {tr.get('best_epoch')})",
              f"- wall time: {tr.get('wall_s')} s on {tr.get('device')} (world size {tr.get('world_size')})",
              f"- command: `{tr.get('command')}`", ""]
    m = tr.get("metrics", {})
    if m:
        lines += ["## Metrics", "", "```json", json.dumps(m, indent=2), "```", ""]
    p = t["preprocessing"]
    lines += ["## Input", "", f"Crop: {p['mode']} (margin {p.get('margin_mm')} mm, field of view "
              f"{p.get('min_fov_mm')}-{p.get('max_fov_mm')} mm), shape {p['shape']}, HU window {p['hu_window']}.",
              _cam_line(t["cam"]), ""]
    return "\n".join(lines)


def _cam_line(cam: Dict) -> str:
    method = cam.get("method", LEGACY_CAM_METHOD)
    smoothed = method in CAM_METHODS and CAM_METHODS[method].uses_smoothing
    return (f"Class activation map: {method} at {cam['target_layer']}"
            + (f", smoothed {cam.get('smooth_mm')} mm" if smoothed else "") + ".")


def portable_command(command: Optional[str]) -> Optional[str]:
    """A command line as a bundle records it: each path in it reduced to its last part (file or folder name).

    A bundle is meant to be shared; the folders of a training machine often name patients or record numbers.

    Parameters
    ----------
    command : str or None
        The command line as run.

    Returns
    -------
    str or None
        The same command with ``/work/runs/PAT-001/run`` written ``run`` (also in ``--opt=/a/b``).

    Examples
    --------
    >>> portable_command("python -m training demo --work /data/PAT-0012345_DOE/demo64 --out=runs/x/bundle -n 3")
    'python -m training demo --work demo64 --out=bundle -n 3'
    """
    if not command:
        return command
    try:
        tokens = shlex.split(command)
    except ValueError:  # unbalanced quotes: split on spaces
        tokens = command.split()

    def name_of(token: str) -> str:
        if "/" in token or "\\" in token or token.startswith("~"):
            return PureWindowsPath(token).name if "\\" in token else (Path(token).name or token)
        return token

    out = []
    for tok in tokens:
        if tok.startswith("-") and "=" in tok:
            opt, _, value = tok.partition("=")
            out.append(f"{opt}={name_of(value)}")
        else:
            out.append(name_of(tok))
    return " ".join(shlex.quote(t) for t in out)


def export_bundle(run_dir, bundle_dir, model_id: str = "tmbrb-custom", name: str = "TMBRB",
                  version: str = "0.1.0", demo: bool = False, notice: Optional[str] = None,
                  checkpoint: str = "best", metrics: Optional[Dict] = None, cam_target_layer: Optional[str] = None,
                  cam_method: Optional[str] = None, cam_smooth_mm: Optional[float] = None,
                  command: Optional[str] = None, dtype: str = "float16", ood_summary: bool = True,
                  ood_manifest=None, progress: bool = False) -> Bundle:
    """Write a bundle from a training run folder (what `train` wrote). Returns the loaded, verified bundle.

    With ``ood_summary`` the bundle also gets what its training data looked like (``training.trust``: deep-feature
    summary, acquisition ranges, spread level) from ``ood_manifest``, by default the run's own manifest; a manifest
    that is not there, or has too few training/validation cases, leaves the bundle without it (and says so on
    stderr): its results then say "not available".
    """
    run = Path(run_dir)
    summary_path = run / SUMMARY_JSON
    if not summary_path.is_file():
        raise TMBRBInputError(f"'{run}' holds no {SUMMARY_JSON}: it is not a finished training run.",
                              "Give the --out folder of a `python -m training train` that has finished.")
    summary = json.loads(summary_path.read_text())
    ck_path = run / CHECKPOINT_DIR / f"{checkpoint}.pt"
    if not ck_path.is_file():
        raise TMBRBInputError(f"The checkpoint '{ck_path}' does not exist.", "Use --checkpoint best or last.")
    ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    meta = copy.deepcopy(summary["metadata"])
    net = build_model(meta["tmbrb"]["architecture"])
    net.load_state_dict(ck["model"])
    t = meta["tmbrb"]
    t["model_id"] = model_id
    t["placeholder"] = False
    t["demo"] = bool(demo)
    if demo:
        t["notice"] = notice or DEMO_NOTICE
        meta["intended_use"] = DEMO_NOTICE + ". " + meta.get("intended_use", "")
        meta["description"] = f"{DEMO_NOTICE}. " + meta.get("description", "")
    else:
        t["notice"] = notice or "Research use only. Not a medical device."
    if cam_target_layer:
        if cam_target_layer not in dict(net.named_modules()):
            raise TMBRBInputError(f"The CAM target layer '{cam_target_layer}' is not a layer of the model.",
                                  "Give a module name such as features.transition2.relu or features.denseblock3.")
        t["cam"]["target_layer"] = cam_target_layer
    if cam_method is not None or cam_smooth_mm is not None:
        settings = dict(t["cam"])
        if cam_method:
            settings["method"] = cam_method
        if cam_smooth_mm is not None:
            settings["smooth_mm"] = cam_smooth_mm
        try:
            method, smooth = cam_settings_of(settings)
        except ValueError as e:
            raise TMBRBInputError(str(e) + ".", f"Use --cam-method {' or '.join(CAM_METHODS)} and "
                                                f"--cam-smooth-mm 0-{MAX_SMOOTH_MM:g}.") from None
        t["cam"]["method"], t["cam"]["smooth_mm"] = method, smooth
    meta["name"] = name
    meta["version"] = version
    cfg = summary.get("config", {})
    meta["changelog"] = {version: f"trained {portable_command(cfg.get('command')) or ''}".strip()}
    t["training"] = {
        "manifest_sha256": summary["manifest_sha256"],
        "manifest": Path(summary["manifest"]).name if summary.get("manifest") else None,
        "command": portable_command(cfg.get("command")), "seed": cfg.get("seed"), "checkpoint": checkpoint,
        "checkpoint_epoch": ck.get("epoch"), "best_epoch": summary.get("best_epoch"),
        "epochs_run": summary.get("epochs_run"), "stopped_early": summary.get("stopped_early"),
        "n_train": summary.get("n_train"), "n_val": summary.get("n_val"),
        "n_train_high": summary.get("n_train_high"), "n_val_high": summary.get("n_val_high"),
        "augmentation": {k: cfg.get(k) for k in ("margin_vox", "shift_fraction", "max_shift_mm", "flips")},
        "optimiser": {k: cfg.get(k) for k in ("lr", "weight_decay", "batch_size", "balance")},
        "wall_s": summary.get("wall_s"), "device": summary.get("device"), "world_size": summary.get("world_size"),
        "train_samples_per_s": summary.get("train_samples_per_s"),
        "metrics": {"val_auc": summary.get("best_val_auc"), **(metrics or {})},
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "export_command": portable_command(command), "platform": platform.platform(), "torch_version": torch.__version__,
    }
    bundle = save_bundle(net, bundle_dir, meta, dtype=dtype, model_card=_model_card(meta))
    if not ood_summary:
        return bundle
    manifest = Path(ood_manifest or summary.get("manifest") or "")
    if not manifest.is_file():
        print(f"note: no manifest '{manifest}' to summarise the training data from; the bundle has no OOD summary "
              "(run `python -m training ood-summary`)", file=sys.stderr)
        return bundle
    from .trust import write_trust_summary
    try:
        return write_trust_summary(bundle_dir, manifest, progress=progress)
    except TMBRBInputError as e:
        print(f"note: the bundle has no OOD summary: {e}", file=sys.stderr)
        return bundle
