"""The training loop: one code path for one process, and for N processes under torchrun (DistributedDataParallel;
gloo on CPU, nccl on GPU).

Everything random is derived from (seed, epoch, sample): the order of the training cases in an epoch, each sample's
box shift and flips, and torch's generator (dropout) at the start of each epoch. So a run is reproducible, a resumed
run continues exactly where a stopped one was, and validation AUC does not depend on how fast the machine is.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from TMBRBLib.bundle import default_metadata, sha256_file
from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.model import build_model

from .data import CropCache, CropDataset
from .manifest import check_for_training, read_manifest

CHECKPOINT_DIR = "checkpoints"
HISTORY_CSV = "history.csv"
HISTORY_PNG = "history.png"
SUMMARY_JSON = "train_summary.json"


@dataclass
class TrainConfig:
    manifest: str
    out: str
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8
    min_epochs: int = 3
    seed: int = 0
    margin_vox: int = 8
    shift_fraction: float = 0.15
    max_shift_mm: float = 6.0
    flips: bool = True
    balance: str = "weighted_loss"      # weighted_loss | none
    cache: str = "disk"                 # disk | memory | none
    cache_dir: Optional[str] = None     # default <out>/cache
    device: str = "auto"
    threads: Optional[int] = None
    resume: bool = False
    progress: bool = True
    max_steps_per_epoch: Optional[int] = None   # for quick checks
    stop_after: Optional[int] = None    # leave after this many epochs in this invocation (time slots); --resume goes on
    tmb_threshold: float = 10.0
    architecture: Dict = field(default_factory=dict)    # overrides of the bundle's architecture
    preprocessing: Dict = field(default_factory=dict)   # overrides of the bundle's preprocessing (crop policy)
    command: str = ""

    def validate(self):
        checks = [(self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})"),
                  (self.batch_size >= 1, f"batch size must be >= 1 (got {self.batch_size})"),
                  (self.lr > 0, f"learning rate must be > 0 (got {self.lr})"),
                  (self.patience >= 1, f"patience must be >= 1 (got {self.patience})"),
                  (self.margin_vox >= 0, f"margin must be >= 0 voxels (got {self.margin_vox})"),
                  (self.balance in ("weighted_loss", "none"), f"balance must be weighted_loss or none, not {self.balance!r}"),
                  (self.cache in ("disk", "memory", "none"), f"cache must be disk, memory or none, not {self.cache!r}")]
        for ok, msg in checks:
            if not ok:
                raise TMBRBInputError(f"Training option: {msg}.", "Fix the option (see `python -m training train -h`).")


# ----------------------------------------------------------------------------------------------- distributed helpers
def dist_env():
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def setup_distributed(device_str: str):
    rank, world, local = dist_env()
    if device_str in ("auto", "", None):
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(device_str)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_gather_objects(obj, world: int):
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def param_checksum(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- metrics
def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    from sklearn.metrics import roc_auc_score
    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, float)))


def class_weights(labels: np.ndarray) -> torch.Tensor:
    counts = np.bincount(labels, minlength=2).astype(float)
    return torch.tensor(len(labels) / (2.0 * np.maximum(counts, 1.0)), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------- log
def write_history(out: Path, history: List[Dict]):
    if not history:
        return
    keys = list(history[0].keys())
    with open(out / HISTORY_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        ep = [h["epoch"] for h in history]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
        ax[0].plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
        ax[0].set_xlabel("epoch"), ax[0].set_ylabel("cross-entropy"), ax[0].legend()
        ax[1].plot(ep, [h["val_auc"] for h in history], "o-", color="C2")
        ax[1].axhline(0.5, color="grey", lw=0.8, ls=":")
        ax[1].set_xlabel("epoch"), ax[1].set_ylabel("validation AUC"), ax[1].set_ylim(0, 1.02)
        fig.tight_layout()
        fig.savefig(out / HISTORY_PNG, dpi=90)
        plt.close(fig)
    except Exception as e:  # noqa: BLE001 - the plot is a convenience; the CSV is the record
        print(f"warning: could not draw {HISTORY_PNG}: {e}", file=sys.stderr)


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------- training
def build_metadata(cfg: TrainConfig) -> Dict:
    meta = default_metadata(name="TMBRB", version="0.1.0")
    t = meta["tmbrb"]
    if cfg.architecture:
        t["architecture"].update(cfg.architecture)
        if "n_features" not in cfg.architecture:
            arch = {k: v for k, v in t["architecture"].items() if k != "n_features"}
            try:
                t["architecture"]["n_features"] = build_model(arch).n_features
            except TypeError as e:
                raise TMBRBInputError(f"--architecture has a key the model does not know ({e}).",
                                      "Use the keys of TMBRBLib.model.TMBRBNet (e.g. block_config, growth_rate).") from None
    t["preprocessing"].update(cfg.preprocessing)
    shape = [int(v) for v in t["preprocessing"]["shape"]]
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = shape
    return meta


def predict(net, ds: CropDataset, indices: Sequence[int], device, batch_size: int) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(indices), batch_size):
            x, _ = ds.batch(indices[s:s + batch_size])
            out.append(torch.softmax(net(x.to(device)).float(), 1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def should_stop(epoch: int, best_epoch: int, patience: int, min_epochs: int) -> bool:
    """Early stopping before `epoch`: more than `patience` epochs since the best validation AUC (after min_epochs)."""
    return best_epoch > 0 and epoch > min_epochs and epoch - best_epoch > patience


def _rank_shard(n: int, world: int, rank: int, order: np.ndarray) -> np.ndarray:
    per = math.ceil(n / world)
    padded = np.concatenate([order, order[: per * world - n]]) if per * world > n else order
    return padded[rank: per * world: world]


def train(cfg: TrainConfig) -> Dict:
    """Train from a manifest; writes checkpoints, history.csv/png and train_summary.json under cfg.out."""
    cfg.validate()
    t_wall = time.perf_counter()
    rank, world, device = setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    out = Path(cfg.out)
    ckdir = out / CHECKPOINT_DIR
    if rank == 0:
        ckdir.mkdir(parents=True, exist_ok=True)

    cases = read_manifest(cfg.manifest, cfg.tmb_threshold)
    train_cases, val_cases = check_for_training(cases)
    manifest_sha = sha256_file(cfg.manifest)
    meta = build_metadata(cfg)
    policy = meta["tmbrb"]["preprocessing"]

    cache = None
    if cfg.cache != "none":
        cache = CropCache(policy, cfg.margin_vox,
                          Path(cfg.cache_dir or out / "cache") if cfg.cache == "disk" else None)
    aug = dict(seed=cfg.seed, margin_vox=cfg.margin_vox, shift_fraction=cfg.shift_fraction,
               max_shift_mm=cfg.max_shift_mm, flips=cfg.flips)
    train_ds = CropDataset(train_cases, policy, cache, train=True, **aug)
    val_ds = CropDataset(val_cases, policy, cache, train=False, **aug)

    # warm the cache: each rank prepares its share of the disk cache, then everyone loads all it needs
    t0 = time.perf_counter()
    if cache is not None:
        todo = train_cases + val_cases
        mine = todo[rank::world] if (world > 1 and cache.cache_dir) else todo
        bar = _progress_bar(len(mine), "caching crops", cfg.progress and rank == 0)
        for c in mine:
            cache.get(c)
            bar and bar.update(1)
        bar and bar.close()
        if world > 1:
            dist.barrier()
    cache_s = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    net = build_model(meta["tmbrb"]["architecture"]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    weights = class_weights(train_ds.labels()).to(device) if cfg.balance == "weighted_loss" else None

    history: List[Dict] = []
    start_epoch, best_auc, best_epoch = 1, -1.0, 0
    last = ckdir / "last.pt"
    if cfg.resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        if ck["manifest_sha256"] != manifest_sha or ck["seed"] != cfg.seed:
            raise TMBRBInputError(
                f"Cannot resume from '{last}': it was trained on another manifest or seed "
                f"(manifest sha256 {ck['manifest_sha256'][:12]} vs {manifest_sha[:12]}, seed {ck['seed']} vs {cfg.seed}).",
                "Resume with the same manifest and seed, or train into a new --out folder.")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, best_auc, best_epoch = ck["epoch"] + 1, ck["best_auc"], ck["best_epoch"]
        history = ck["history"]
        if ck.get("epochs") not in (None, cfg.epochs) and rank == 0:
            print(f"warning: the run was started with --epochs {ck['epochs']}; resuming with {cfg.epochs} changes "
                  "the learning-rate schedule", file=sys.stderr)
        if rank == 0:
            print(f"resuming after epoch {ck['epoch']} (best validation AUC {best_auc:.4f} at epoch {best_epoch})",
                  file=sys.stderr)
    elif cfg.resume and rank == 0:
        print(f"no checkpoint in {ckdir}; starting from scratch", file=sys.stderr)

    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    n_train = len(train_ds)
    val_idx = np.arange(len(val_ds))
    stopped_early = False
    train_samples, train_time = 0, 0.0
    for epoch in range(start_epoch, cfg.epochs + 1):
        if cfg.stop_after and epoch - start_epoch >= cfg.stop_after:
            break
        if should_stop(epoch, best_epoch, cfg.patience, cfg.min_epochs):
            stopped_early = True
            break
        t_ep = time.perf_counter()
        train_ds.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100003 + epoch)
        order = np.random.default_rng([cfg.seed, epoch, 1]).permutation(n_train)
        shard = _rank_shard(n_train, world, rank, order)
        batches = [shard[s:s + cfg.batch_size] for s in range(0, len(shard), cfg.batch_size)]
        if cfg.max_steps_per_epoch:
            batches = batches[: cfg.max_steps_per_epoch]
        model.train()
        loss_sum, n_seen = 0.0, 0
        bar = _progress_bar(len(batches), f"epoch {epoch}/{cfg.epochs}", cfg.progress and rank == 0)
        for b in batches:
            x, y = train_ds.batch(b)
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x).float(), y, weight=weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.item()) * len(b)
            n_seen += len(b)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar and bar.close()
        if world > 1:  # BatchNorm running statistics are per process: take rank 0's everywhere
            for buf in net.buffers():
                dist.broadcast(buf, 0)
        sched.step()
        t_train = time.perf_counter() - t_ep
        # validation: each rank scores its share of the validation cases, everyone gathers all scores
        mine = val_idx[rank::world]
        scores = predict(net, val_ds, mine, device, cfg.batch_size)
        parts = all_gather_objects((mine.tolist(), scores.tolist(), loss_sum, n_seen), world)
        all_scores = np.zeros(len(val_ds))
        for idx, sc, _, _ in parts:
            all_scores[idx] = sc
        tl = sum(p[2] for p in parts) / max(1, sum(p[3] for p in parts))
        yv = val_ds.labels()
        p = np.clip(all_scores, 1e-7, 1 - 1e-7)
        vl = float(-np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p)))
        va = auc(yv, all_scores)
        seen_all = sum(pp[3] for pp in parts)
        train_samples += seen_all
        train_time += t_train
        improved = np.isfinite(va) and va > best_auc
        if improved:
            best_auc, best_epoch = va, epoch
        row = {"epoch": epoch, "train_loss": round(tl, 6), "val_loss": round(vl, 6), "val_auc": round(va, 6),
               "lr": opt.param_groups[0]["lr"], "epoch_s": round(time.perf_counter() - t_ep, 2),
               "train_samples_per_s": round(seen_all / max(t_train, 1e-9), 3), "best": int(improved)}
        history.append(row)
        if rank == 0:
            state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            if improved:
                torch.save({"model": state, "epoch": epoch, "val_auc": va}, ckdir / "best.pt")
            torch.save({"model": state, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "epoch": epoch, "best_auc": best_auc, "best_epoch": best_epoch, "history": history,
                        "manifest_sha256": manifest_sha, "seed": cfg.seed, "epochs": cfg.epochs}, ckdir / "last.pt.tmp")
            os.replace(ckdir / "last.pt.tmp", last)
            write_history(out, history)
            print(f"epoch {epoch}: train loss {tl:.4f}  val loss {vl:.4f}  val AUC {va:.4f}"
                  f"{'  (best)' if improved else ''}  [{row['epoch_s']} s]", file=sys.stderr, flush=True)

    checksums = all_gather_objects(param_checksum(net), world)
    in_sync = len(set(checksums)) == 1
    summary = {
        "best_val_auc": best_auc, "best_epoch": best_epoch, "epochs_run": len(history),
        "stopped_early": stopped_early, "last_epoch": history[-1]["epoch"] if history else 0,
        "world_size": world, "device": str(device), "rank_param_checksums": checksums, "ranks_in_sync": in_sync,
        "n_train": len(train_cases), "n_val": len(val_cases),
        "n_train_high": int(train_ds.labels().sum()), "n_val_high": int(val_ds.labels().sum()),
        "manifest": str(Path(cfg.manifest).resolve()), "manifest_sha256": manifest_sha,
        "config": asdict(cfg), "metadata": meta, "cache_s": round(cache_s, 2),
        "ct_reads_rank0": cache.ct_reads if cache is not None else None,
        "train_samples_per_s": round(train_samples / max(train_time, 1e-9), 3),
        "wall_s": round(time.perf_counter() - t_wall, 1),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
    }
    if rank == 0:
        (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if not in_sync:
        raise RuntimeError(f"The {world} processes ended with different weights ({checksums}); "
                           "distributed training went out of sync.")
    return summary
