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
from .manifest import Case, check_for_training, read_manifest

CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
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
                  (self.cache in ("disk", "memory", "none"), f"cache must be disk, memory or none, not {self.cache!r}"),
                  (self.stop_after is None or self.stop_after >= 1,
                   f"stop-after must be >= 1 epoch (got {self.stop_after})"),
                  (self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
                   f"max steps per epoch must be >= 1 (got {self.max_steps_per_epoch})"),
                  (self.threads is None or self.threads >= 1, f"threads must be >= 1 (got {self.threads})")]
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
        arch = {k: v for k, v in t["architecture"].items() if k != "n_features"}
        try:
            n_features = build_model(arch).n_features
        except TypeError as e:
            raise TMBRBInputError(f"--architecture has a key the model does not know ({e}).",
                                  "Use the keys of TMBRBLib.model.TMBRBNet (e.g. block_config, growth_rate).") from None
        except ValueError as e:  # e.g. a name that is not in TMBRBLib.model.ARCHITECTURES
            raise TMBRBInputError(f"--architecture cannot be built: {e}.",
                                  "Give a registered architecture name, or leave 'name' out.") from None
        if cfg.architecture.get("n_features", n_features) != n_features:
            raise TMBRBInputError(f"--architecture says n_features {cfg.architecture['n_features']}, but the network "
                                  f"it describes gives {n_features}.", "Leave n_features out; it is computed.")
        t["architecture"]["n_features"] = n_features
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


@dataclass
class _TrainingData:
    """The cases of a run and their crops: what `_prepare_data` hands to the training loop."""
    train_cases: List[Case]
    val_cases: List[Case]
    manifest_sha256: str
    meta: Dict
    cache: Optional[CropCache]
    train_ds: CropDataset
    val_ds: CropDataset
    cache_s: float


@dataclass
class _TrainState:
    """What a run carries from one epoch to the next, and what ``last.pt`` restores on ``--resume``."""
    start_epoch: int = 1
    best_auc: float = -1.0
    best_epoch: int = 0
    history: List[Dict] = field(default_factory=list)

    def update_best(self, epoch: int, val_auc: float) -> bool:
        """Record `epoch`'s validation AUC; True when it beats the best so far (NaN never does)."""
        improved = np.isfinite(val_auc) and val_auc > self.best_auc
        if improved:
            self.best_auc, self.best_epoch = val_auc, epoch
        return improved


@dataclass
class _EpochMetrics:
    """One epoch's numbers over all processes."""
    train_loss: float
    val_loss: float
    val_auc: float
    train_seen: int     # training samples seen by all processes together


def _setup_torch(cfg: TrainConfig):
    """Process group, device, thread count and deterministic algorithms; returns (rank, world size, device)."""
    rank, world, device = setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    return rank, world, device


def _warm_cache(cache: CropCache, cases: Sequence[Case], rank: int, world: int, progress: bool) -> None:
    """Fill the crop cache: each rank prepares its share of the disk cache, then everyone loads all it needs."""
    mine = cases[rank::world] if (world > 1 and cache.cache_dir) else cases
    bar = _progress_bar(len(mine), "caching crops", progress and rank == 0)
    for c in mine:
        cache.get(c)
        bar and bar.update(1)
    bar and bar.close()
    if world > 1:
        dist.barrier()


def _prepare_data(cfg: TrainConfig, out: Path, rank: int, world: int) -> _TrainingData:
    """Read and check the manifest, build the metadata, the crop cache and the two datasets, and warm the cache."""
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
    t0 = time.perf_counter()
    if cache is not None:
        _warm_cache(cache, train_cases + val_cases, rank, world, cfg.progress)
    return _TrainingData(train_cases, val_cases, manifest_sha, meta, cache, train_ds, val_ds,
                        time.perf_counter() - t0)


def _resume(cfg: TrainConfig, ckdir: Path, manifest_sha: str, net, opt, sched, rank: int) -> _TrainState:
    """Restore the network, optimiser, scheduler and run state from ``ckdir/last.pt``.

    Parameters
    ----------
    cfg : TrainConfig
        The run's settings; its seed and epochs are compared with the checkpoint's.
    ckdir : Path
        The run's checkpoint folder.
    manifest_sha : str
        SHA-256 of the manifest this run trains on.
    net, opt, sched : torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler
        Loaded in place from the checkpoint.
    rank : int
        This process's rank (only rank 0 prints).

    Returns
    -------
    _TrainState
        The state after the checkpoint's epoch; a fresh state (start at epoch 1) when there is no checkpoint.

    Raises
    ------
    TMBRBInputError
        The checkpoint was trained on another manifest or with another seed.
    """
    last = ckdir / LAST_CHECKPOINT
    if not last.is_file():
        if rank == 0:
            print(f"no checkpoint in {ckdir}; starting from scratch", file=sys.stderr)
        return _TrainState()
    ck = torch.load(last, map_location="cpu", weights_only=True)
    if ck["manifest_sha256"] != manifest_sha or ck["seed"] != cfg.seed:
        raise TMBRBInputError(
            f"Cannot resume from '{last}': it was trained on another manifest or seed "
            f"(manifest sha256 {ck['manifest_sha256'][:12]} vs {manifest_sha[:12]}, seed {ck['seed']} vs {cfg.seed}).",
            "Resume with the same manifest and seed, or train into a new --out folder.")
    net.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    state = _TrainState(ck["epoch"] + 1, ck["best_auc"], ck["best_epoch"], ck["history"])
    if ck.get("epochs") not in (None, cfg.epochs) and rank == 0:
        print(f"warning: the run was started with --epochs {ck['epochs']}; resuming with {cfg.epochs} changes "
              "the learning-rate schedule", file=sys.stderr)
    if rank == 0:
        print(f"resuming after epoch {ck['epoch']} (best validation AUC {state.best_auc:.4f} at epoch "
              f"{state.best_epoch})", file=sys.stderr)
    return state


def _epoch_batches(cfg: TrainConfig, train_ds: CropDataset, epoch: int, rank: int, world: int) -> List[np.ndarray]:
    """This rank's batches of training-case indices for `epoch`, seeding the dataset and torch for that epoch."""
    n_train = len(train_ds)
    train_ds.set_epoch(epoch)
    torch.manual_seed(cfg.seed * 100003 + epoch)
    order = np.random.default_rng([cfg.seed, epoch, 1]).permutation(n_train)
    shard = _rank_shard(n_train, world, rank, order)
    batches = [shard[s:s + cfg.batch_size] for s in range(0, len(shard), cfg.batch_size)]
    if cfg.max_steps_per_epoch:
        batches = batches[: cfg.max_steps_per_epoch]
    return batches


def _train_one_epoch(model, net, train_ds: CropDataset, batches: Sequence[np.ndarray], opt, weights, device,
                    world: int, bar=None):
    """One pass over `batches` (one optimiser step each); returns (summed loss, samples seen) of this rank.

    `model` is what is trained (`net`, or its DistributedDataParallel wrapper); after the pass every rank takes
    rank 0's BatchNorm running statistics, which are per process.
    """
    model.train()
    loss_sum, n_seen = 0.0, 0
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
    if world > 1:
        for buf in net.buffers():
            dist.broadcast(buf, 0)
    return loss_sum, n_seen


def _validate(net, val_ds: CropDataset, device, batch_size: int, rank: int, world: int, loss_sum: float,
             n_seen: int) -> _EpochMetrics:
    """Score the validation cases and compute the epoch's metrics over all processes.

    Each rank scores its share of the validation cases; one exchange gathers everyone's scores together with
    everyone's training loss sums (`loss_sum`, `n_seen` are this rank's, from `_train_one_epoch`).
    """
    mine = np.arange(len(val_ds))[rank::world]
    scores = predict(net, val_ds, mine, device, batch_size)
    parts = all_gather_objects((mine.tolist(), scores.tolist(), loss_sum, n_seen), world)
    all_scores = np.zeros(len(val_ds))
    for idx, sc, _, _ in parts:
        all_scores[idx] = sc
    tl = sum(p[2] for p in parts) / max(1, sum(p[3] for p in parts))
    yv = val_ds.labels()
    p = np.clip(all_scores, 1e-7, 1 - 1e-7)
    vl = float(-np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p)))
    return _EpochMetrics(tl, vl, auc(yv, all_scores), sum(pp[3] for pp in parts))


def _history_row(epoch: int, m: _EpochMetrics, lr: float, epoch_s: float, train_s: float, improved: bool) -> Dict:
    """The history.csv row of one epoch."""
    return {"epoch": epoch, "train_loss": round(m.train_loss, 6), "val_loss": round(m.val_loss, 6),
            "val_auc": round(m.val_auc, 6), "lr": lr, "epoch_s": round(epoch_s, 2),
            "train_samples_per_s": round(m.train_seen / max(train_s, 1e-9), 3), "best": int(improved)}


def _save_checkpoints(ckdir: Path, net, opt, sched, state: _TrainState, epoch: int, val_auc: float, improved: bool,
                     manifest_sha: str, cfg: TrainConfig) -> None:
    """Write ``best.pt`` (weights, when `epoch` improved) and ``last.pt`` (everything `_resume` needs, atomically)."""
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    if improved:
        torch.save({"model": weights, "epoch": epoch, "val_auc": val_auc}, ckdir / BEST_CHECKPOINT)
    tmp = ckdir / (LAST_CHECKPOINT + ".tmp")
    torch.save({"model": weights, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "best_auc": state.best_auc, "best_epoch": state.best_epoch, "history": state.history,
                "manifest_sha256": manifest_sha, "seed": cfg.seed, "epochs": cfg.epochs}, tmp)
    os.replace(tmp, ckdir / LAST_CHECKPOINT)


def _run_summary(cfg: TrainConfig, data: _TrainingData, state: _TrainState, stopped_early: bool, world: int, device,
                checksums: List[str], train_samples: int, train_time: float, t_wall: float) -> Dict:
    """The content of train_summary.json (and `train`'s return value)."""
    return {
        "best_val_auc": state.best_auc, "best_epoch": state.best_epoch, "epochs_run": len(state.history),
        "stopped_early": stopped_early, "last_epoch": state.history[-1]["epoch"] if state.history else 0,
        "world_size": world, "device": str(device), "rank_param_checksums": checksums,
        "ranks_in_sync": len(set(checksums)) == 1,
        "n_train": len(data.train_cases), "n_val": len(data.val_cases),
        "n_train_high": int(data.train_ds.labels().sum()), "n_val_high": int(data.val_ds.labels().sum()),
        "manifest": str(Path(cfg.manifest).resolve()), "manifest_sha256": data.manifest_sha256,
        "config": asdict(cfg), "metadata": data.meta, "cache_s": round(data.cache_s, 2),
        "ct_reads_rank0": data.cache.ct_reads if data.cache is not None else None,
        "train_samples_per_s": round(train_samples / max(train_time, 1e-9), 3),
        "wall_s": round(time.perf_counter() - t_wall, 1),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
    }


def train(cfg: TrainConfig) -> Dict:
    """Train a TMBRB network from a manifest, on one process or on each process started by torchrun.

    Each epoch trains on a seeded shuffle of the training cases (box shifts and flips from (seed, epoch, case)),
    scores the validation cases, keeps the best validation AUC in ``checkpoints/best.pt`` and everything needed to
    go on in ``checkpoints/last.pt``, and logs ``history.csv``/``history.png``; the run ends after ``cfg.epochs``,
    after ``cfg.stop_after`` epochs of this invocation, or by early stopping (`should_stop`).

    Parameters
    ----------
    cfg : TrainConfig
        The run's settings: manifest, output folder, epochs, optimiser, augmentation, cache, device, resume.

    Returns
    -------
    dict
        The run summary, also written to ``<cfg.out>/train_summary.json``: best validation AUC and epoch, epochs
        run, whether it stopped early, case counts, the manifest's SHA-256, the bundle metadata, each rank's
        parameter checksum, timings.

    Raises
    ------
    TMBRBInputError
        A bad option, a manifest that cannot be trained on (missing file, bad row, a split without both classes),
        an unknown architecture key, or a ``--resume`` from a run with another manifest or seed.
    RuntimeError
        Distributed training ended with different weights on different processes.

    Examples
    --------
    Two epochs of a tiny network on 12 phantoms at 32^3 (seconds on a CPU; the epoch log goes to stderr):

    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> from TMBRBLib.phantom import write_cohort
    >>> from training.trainer import TrainConfig, train
    >>> work = Path(tempfile.mkdtemp())
    >>> manifest = write_cohort(work / "cohort", n=12, fractions=(0.5, 0.5, 0.0), seed=3, progress=False)
    >>> tiny = {"block_config": [1, 1, 1, 1], "init_features": 4, "growth_rate": 4, "hidden_features": 8}
    >>> cfg = TrainConfig(manifest=str(manifest), out=str(work / "run"), epochs=2, batch_size=3, margin_vox=3,
    ...                   threads=1, progress=False, architecture=tiny, preprocessing={"shape": [32, 32, 32]})
    >>> summary = train(cfg)
    >>> summary["epochs_run"], summary["n_train"], summary["n_val"], summary["ranks_in_sync"]
    (2, 6, 6, True)
    >>> sorted(p.name for p in (work / "run" / "checkpoints").iterdir())
    ['best.pt', 'last.pt']
    >>> shutil.rmtree(work)
    """
    cfg.validate()
    t_wall = time.perf_counter()
    rank, world, device = _setup_torch(cfg)
    out = Path(cfg.out)
    ckdir = out / CHECKPOINT_DIR
    if rank == 0:
        ckdir.mkdir(parents=True, exist_ok=True)
    data = _prepare_data(cfg, out, rank, world)

    torch.manual_seed(cfg.seed)
    net = build_model(data.meta["tmbrb"]["architecture"]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    weights = class_weights(data.train_ds.labels()).to(device) if cfg.balance == "weighted_loss" else None
    state = _resume(cfg, ckdir, data.manifest_sha256, net, opt, sched, rank) if cfg.resume else _TrainState()

    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    stopped_early = False
    train_samples, train_time = 0, 0.0
    for epoch in range(state.start_epoch, cfg.epochs + 1):
        if cfg.stop_after and epoch - state.start_epoch >= cfg.stop_after:
            break
        if should_stop(epoch, state.best_epoch, cfg.patience, cfg.min_epochs):
            stopped_early = True
            break
        t_ep = time.perf_counter()
        batches = _epoch_batches(cfg, data.train_ds, epoch, rank, world)
        bar = _progress_bar(len(batches), f"epoch {epoch}/{cfg.epochs}", cfg.progress and rank == 0)
        lr = opt.param_groups[0]["lr"]  # the rate this epoch trains with (the scheduler's step below sets the next)
        loss_sum, n_seen = _train_one_epoch(model, net, data.train_ds, batches, opt, weights, device, world, bar)
        sched.step()
        t_train = time.perf_counter() - t_ep
        m = _validate(net, data.val_ds, device, cfg.batch_size, rank, world, loss_sum, n_seen)
        train_samples += m.train_seen
        train_time += t_train
        improved = state.update_best(epoch, m.val_auc)
        row = _history_row(epoch, m, lr, time.perf_counter() - t_ep, t_train, improved)
        state.history.append(row)
        if rank == 0:
            _save_checkpoints(ckdir, net, opt, sched, state, epoch, m.val_auc, improved, data.manifest_sha256, cfg)
            write_history(out, state.history)
            print(f"epoch {epoch}: train loss {m.train_loss:.4f}  val loss {m.val_loss:.4f}  val AUC {m.val_auc:.4f}"
                  f"{'  (best)' if improved else ''}  [{row['epoch_s']} s]", file=sys.stderr, flush=True)

    checksums = all_gather_objects(param_checksum(net), world)
    summary = _run_summary(cfg, data, state, stopped_early, world, device, checksums, train_samples, train_time,
                          t_wall)
    if rank == 0:
        (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if not summary["ranks_in_sync"]:
        raise RuntimeError(f"The {world} processes ended with different weights ({checksums}); "
                           "distributed training went out of sync.")
    return summary
