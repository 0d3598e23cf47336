"""training/trainer.py by its values (issue 16: the trainer's mutation run).

The helpers are checked on numbers worked out by hand (class weights, AUC, shards, the validation loss, the
history row); the loop on a 7-case cohort at 16^3 with a two-block network, where the validation AUC of each epoch is
given by the test, so the best epoch, early stopping and resume are known in advance. Each training run takes about
a second; the history plot is drawn once, by its own test (drawing it after every epoch would triple the time).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from TMBRBLib.bundle import default_tmbrb_metadata, sha256_file
from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.model import build_model
from tqdm import tqdm

import training.trainer as T
from training.data import CropDataset
from training.trainer import TrainConfig

from .conftest import write_tiny_cohort

TINY = {"block_config": [1, 1], "init_features": 4, "growth_rate": 4, "hidden_features": 8}
SHAPE = {"shape": [16, 16, 16], "min_fov_mm": 30.0}
# labels alternate 0, 1, 0, 1, ...: train c0 c1 c2 c4 (one High-TMB of four, so the class weights are not equal),
# validation c3 c6 (one of each), c5 left for testing
SPLITS = ["train", "train", "train", "val", "train", "test", "val"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"), n=7, splits=SPLITS)


def _cfg(manifest, out, **kw) -> TrainConfig:
    base = {"epochs": 5, "batch_size": 2, "shift_fraction": 0.3, "patience": 1, "min_epochs": 1, "margin_vox": 2,
            "threads": 1, "progress": False, "cache": "memory", "architecture": TINY, "preprocessing": SHAPE}
    base.update(kw)
    return TrainConfig(manifest=str(manifest), out=str(out), **base)


def _rows(run: Path):
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def scripted_auc(monkeypatch):
    """Validation AUCs given by the test, one per epoch (the list is consumed); the real metric is tested apart."""
    script = []

    def fake_auc(labels, scores):
        assert len(labels) == len(scores) == 2 and all(np.isfinite(scores))
        return script.pop(0)
    monkeypatch.setattr(T, "auc", fake_auc)
    return script


@pytest.fixture()
def no_plot(monkeypatch):
    """history.png is not drawn (see test_history_plot_shows_the_losses_and_auc): the trainer's fallback is used."""
    import matplotlib.pyplot as plt

    def refuse(*a, **k):
        raise RuntimeError("no plot in this test")
    monkeypatch.setattr(plt, "subplots", refuse)


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("option, value, message", [
    ("epochs", 0, "epochs must be >= 1 (got 0)"),
    ("batch_size", 0, "batch size must be >= 1 (got 0)"),
    ("lr", 0.0, "learning rate must be > 0 (got 0.0)"),
    ("patience", 0, "patience must be >= 1 (got 0)"),
    ("margin_vox", -1, "margin must be >= 0 voxels (got -1)"),
    ("balance", "oversample", "balance must be weighted_loss or none, not 'oversample'"),
    ("cache", "ram", "cache must be disk, memory or none, not 'ram'"),
    # a negative --stop-after ended the run before its first epoch, a negative --max-steps-per-epoch dropped the
    # last batches of every epoch, 0 meant "no limit" for both and a negative --threads was torch's traceback
    ("stop_after", 0, "stop-after must be >= 1 epoch (got 0)"),
    ("stop_after", -1, "stop-after must be >= 1 epoch (got -1)"),
    ("max_steps_per_epoch", 0, "max steps per epoch must be >= 1 (got 0)"),
    ("max_steps_per_epoch", -1, "max steps per epoch must be >= 1 (got -1)"),
    ("threads", 0, "threads must be >= 1 (got 0)"),
])
def test_each_bad_option_is_refused_with_its_message(option, value, message):
    with pytest.raises(TMBRBInputError) as e:
        TrainConfig(manifest="m.csv", out="o", **{option: value}).validate()
    assert str(e.value) == f"Training option: {message}. Fix the option (see `python -m training train -h`)."


def test_options_on_their_bounds_are_accepted():
    for balance in ("weighted_loss", "none"):
        for cache in ("disk", "memory", "none"):
            TrainConfig(manifest="m.csv", out="o", epochs=1, batch_size=1, lr=1e-9, patience=1, margin_vox=0,
                        balance=balance, cache=cache, stop_after=1, max_steps_per_epoch=1, threads=1).validate()


# ---------------------------------------------------------------------------------------------- processes
def test_dist_env_reads_torchruns_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert T.dist_env() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert T.dist_env() == (3, 4, 1)


@pytest.mark.parametrize("device", ["auto", "", None, "cpu"])
def test_one_process_on_the_cpu_starts_no_process_group(monkeypatch, device):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rank, world, dev = T.setup_distributed(device)
    assert (rank, world, dev) == (0, 1, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    assert T.all_gather_objects({"a": 1}, 1) == [{"a": 1}]


def test_param_checksum_follows_names_and_values():
    torch.manual_seed(0)
    a = torch.nn.Linear(2, 1)
    b = torch.nn.Linear(2, 1)
    b.load_state_dict(a.state_dict())
    assert T.param_checksum(a) == T.param_checksum(b) and len(T.param_checksum(a)) == 64
    with torch.no_grad():
        b.bias += 1e-6
    assert T.param_checksum(a) != T.param_checksum(b)


# ---------------------------------------------------------------------------------------------- metrics
def test_auc_by_hand_and_nan_for_one_class():
    # pairs (high, low): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4): 3 of 4
    assert T.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert T.auc([1, 0, 1], [0.5, 0.5, 0.9]) == 0.75  # a tie counts half
    assert math.isnan(T.auc([1, 1, 1], [0.1, 0.2, 0.3])) and math.isnan(T.auc([], []))


def test_class_weights_balance_the_classes():
    w = T.class_weights(np.array([0, 0, 0, 1]))
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor([4 / 6, 2.0]))  # n / (2 n_class): 3 * 4/6 = 1 * 2
    assert torch.allclose(T.class_weights(np.array([0, 0])), torch.tensor([0.5, 1.0]))  # an absent class counts 1


def test_the_best_epoch_is_the_first_with_the_highest_finite_auc():
    s = T._TrainState()
    assert (s.start_epoch, s.best_auc, s.best_epoch, s.history) == (1, -1.0, 0, [])
    got = [s.update_best(e, a) for e, a in enumerate([float("nan"), 0.0, 0.6, 0.6, float("nan"), 0.61], 1)]
    assert got == [False, True, True, False, False, True]
    assert (s.best_auc, s.best_epoch) == (0.61, 6)


# ---------------------------------------------------------------------------------------------- batches and shards
@pytest.mark.parametrize("n, world, shards", [
    (5, 1, [[4, 2, 0, 1, 3]]),
    (5, 2, [[4, 0, 3], [2, 1, 4]]),            # padded with the first case to 3 each
    (4, 2, [[4, 0], [2, 1]]),
    (5, 3, [[4, 1], [2, 3], [0, 4]]),
])
def test_rank_shards_are_equal_sized_and_cover_every_case(n, world, shards):
    order = np.array([4, 2, 0, 1, 3][:n]) if n == 5 else np.array([4, 2, 0, 1])
    assert [T._rank_shard(n, world, r, order).tolist() for r in range(world)] == shards


def _ds(n):
    return CropDataset([None] * n, {"shape": [16, 16, 16]}, None, train=True)


def test_epoch_batches_cover_each_case_once_in_a_seeded_order():
    cfg = TrainConfig(manifest="m", out="o", batch_size=3, seed=5)
    ds = _ds(7)
    b1 = T._epoch_batches(cfg, ds, 1, 0, 1)
    assert ds.epoch == 1 and [len(b) for b in b1] == [3, 3, 1]
    assert sorted(np.concatenate(b1).tolist()) == list(range(7))
    r1 = torch.rand(3)
    again = T._epoch_batches(cfg, ds, 1, 0, 1)
    assert [b.tolist() for b in again] == [b.tolist() for b in b1] and torch.equal(torch.rand(3), r1)
    b2 = T._epoch_batches(cfg, ds, 2, 0, 1)
    assert ds.epoch == 2 and np.concatenate(b2).tolist() != np.concatenate(b1).tolist()
    assert not torch.equal(torch.rand(3), r1)  # dropout's generator is seeded per epoch too
    other = T._epoch_batches(TrainConfig(manifest="m", out="o", batch_size=3, seed=6), ds, 1, 0, 1)
    assert np.concatenate(other).tolist() != np.concatenate(b1).tolist()
    assert not torch.equal(torch.rand(3), r1)  # and so is dropout's: another seed, other draws in the same epoch


def test_epoch_batches_of_two_ranks_and_a_step_limit():
    cfg = TrainConfig(manifest="m", out="o", batch_size=3, seed=5)
    ds = _ds(7)
    ranks = [T._epoch_batches(cfg, ds, 1, r, 2) for r in (0, 1)]
    assert [[len(b) for b in r] for r in ranks] == [[3, 1], [3, 1]]
    assert set(np.concatenate(ranks[0] + ranks[1]).tolist()) == set(range(7))
    cfg.max_steps_per_epoch = 2
    assert [len(b) for b in T._epoch_batches(cfg, ds, 1, 0, 1)] == [3, 3]


# ---------------------------------------------------------------------------------------------- one epoch
class _Batches:
    """A dataset for the loop's helpers: sample i is the number i, labels as given."""

    def __init__(self, labels):
        self._labels = np.asarray(labels)

    def __len__(self):
        return len(self._labels)

    def labels(self):
        return self._labels

    def batch(self, idx):
        idx = np.asarray(idx)
        return torch.tensor(idx, dtype=torch.float32)[:, None], torch.tensor(self._labels[idx])


class _Logit(torch.nn.Module):
    """logits (0, scale * x + shift): the High-TMB probability is sigmoid(scale * x + shift)."""

    def __init__(self, scale=1.0, shift=0.0, dropout=0.9):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))
        self.shift = torch.nn.Parameter(torch.tensor(shift))
        self.norm = torch.nn.BatchNorm1d(1, affine=False)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x):
        self.norm(x)  # running statistics only: what BatchNorm learns in training mode
        z = self.drop(self.scale * x[:, 0] + self.shift)
        return torch.stack([torch.zeros_like(z), z], 1)


def test_predict_scores_every_index_in_eval_mode_in_batches():
    net = _Logit(0.5, -1.0)
    net.train()
    p = T.predict(net, _Batches([0] * 5), [4, 0, 3, 1, 2], "cpu", batch_size=2)
    x = np.array([4, 0, 3, 1, 2])
    assert np.allclose(p, 1 / (1 + np.exp(-(0.5 * x - 1.0))), atol=1e-7)  # dropout off
    assert T.predict(net, _Batches([0]), [], "cpu", 2).shape == (0,)


def test_validate_by_hand():
    net = _Logit(1.0, -1.0)  # p = sigmoid(x - 1): 0.269, 0.5, 0.731, 0.881 for x = 0..3
    m = T._validate(net, _Batches([0, 1, 0, 1]), "cpu", 3, 0, 1, loss_sum=6.0, n_seen=4)
    p = 1 / (1 + np.exp(-(np.arange(4) - 1.0)))
    y = np.array([0, 1, 0, 1])
    assert m.train_loss == 1.5 and m.train_seen == 4
    assert m.val_loss == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-6)
    assert m.val_auc == 0.75  # (0.5 > 0.269), (0.5 < 0.731), (0.881 > both)
    # certain and wrong: the loss is clipped at -log(1e-7) instead of infinite; nothing seen: loss 0
    for shift in (200.0, -200.0):  # p = 1 for a Low-TMB case, then p = 0 for a High-TMB one
        sure = T._validate(_Logit(0.0, shift), _Batches([0, 1]), "cpu", 2, 0, 1, loss_sum=0.0, n_seen=0)
        assert sure.val_loss == pytest.approx(-np.log(1e-7) / 2, rel=1e-6) and sure.train_loss == 0.0
    assert T._validate(net, _Batches([0, 1]), "cpu", 2, 0, 1, loss_sum=0.7, n_seen=1).train_loss == 0.7


def test_one_epoch_sums_the_loss_over_samples_and_steps_the_optimiser():
    net = _Logit(0.0, 0.0, dropout=0.0)  # logits (0, 0): cross-entropy ln 2 for every sample, whatever the weights
    net.eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    buf = io.StringIO()
    bar = tqdm(total=2, file=buf, mininterval=0, miniters=1)
    loss_sum, n = T._train_one_epoch(net, net, _Batches([0, 1, 1, 1, 0]), [np.array([0, 1, 4]), np.array([2, 3])],
                                     opt, torch.tensor([1.0, 3.0]), "cpu", 1, bar)
    assert n == 5 and loss_sum == pytest.approx(5 * math.log(2), rel=1e-6)
    assert "2/2" in buf.getvalue() and "loss=0.693" in buf.getvalue()
    assert net.norm.running_mean.item() != 0.0  # trained in training mode
    before = net.shift.item()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    T._train_one_epoch(net, net, _Batches([1, 1]), [np.array([0, 1])], opt, None, "cpu", 1)
    assert net.shift.item() == pytest.approx(before + 0.5 * 0.5)  # d(CE)/d(shift) = -(1 - 0.5) for label 1


def test_history_row_rounds_what_it_logs():
    m = T._EpochMetrics(train_loss=0.12345678, val_loss=0.7654321, val_auc=2 / 3, train_seen=12)
    assert T._history_row(4, m, 0.001, 3.14159, 7.0, True) == {
        "epoch": 4, "train_loss": 0.123457, "val_loss": 0.765432, "val_auc": 0.666667, "lr": 0.001, "epoch_s": 3.14,
        "train_samples_per_s": 1.714, "best": 1}  # 12 samples in 7 s
    assert T._history_row(1, m, 0.5, 0.0, 0.0, False)["best"] == 0
    assert T._history_row(1, m, 0.5, 0.0, 0.0, False)["train_samples_per_s"] == 12e9


# ---------------------------------------------------------------------------------------------- metadata and data
def test_metadata_without_overrides_is_the_papers():
    meta = T.build_metadata(TrainConfig(manifest="m", out="o"))
    assert meta["name"] == "TMBRB" and meta["version"] == "0.1.0"
    assert meta["tmbrb"]["architecture"] == default_tmbrb_metadata()["architecture"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64, 64]


def test_metadata_with_overrides_computes_n_features_and_the_input_shape():
    meta = T.build_metadata(TrainConfig(manifest="m", out="o", architecture=dict(TINY, n_features=8),
                                        preprocessing={"shape": [16.0, 24, 32], "margin_mm": 5.0}))
    arch = meta["tmbrb"]["architecture"]
    assert arch["n_features"] == 8 == build_model({k: v for k, v in arch.items() if k != "n_features"}).n_features
    assert arch["block_config"] == [1, 1] and arch["bn_size"] == 2
    assert meta["tmbrb"]["preprocessing"]["margin_mm"] == 5.0
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [16, 24, 32]


@pytest.mark.parametrize("arch, message", [
    ({"colour": "red"}, "--architecture has a key the model does not know ("),
    ({"name": "ResNet"}, "--architecture cannot be built: the architecture 'ResNet' is not known to this TMBRB"),
    (dict(TINY, n_features=9), ("--architecture says n_features 9, but the network it describes gives 8. "
                                "Leave n_features out; it is computed.")),
])
def test_bad_architecture_overrides_say_what_to_do(arch, message):
    with pytest.raises(TMBRBInputError) as e:
        T.build_metadata(TrainConfig(manifest="m", out="o", architecture=arch))
    assert str(e.value).startswith(message)
    hint = {"colour": "Use the keys of TMBRBLib.model.TMBRBNet (e.g. block_config, growth_rate).",
            "name": "Give a registered architecture name, or leave 'name' out."}
    for key, text in hint.items():
        if key in arch:
            assert str(e.value).endswith(". " + text)


def test_prepared_data_shifts_and_flips_training_crops_only(manifest, tmp_path):
    data = T._prepare_data(_cfg(manifest, tmp_path, seed=1), tmp_path, 0, 1)
    assert [c.case_id for c in data.train_cases] == ["c0", "c1", "c2", "c4"]
    assert [c.case_id for c in data.val_cases] == ["c3", "c6"]
    assert data.manifest_sha256 == hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    assert data.meta["tmbrb"]["architecture"]["block_config"] == [1, 1] and data.cache_s >= 0
    assert data.cache.cache_dir is None and data.cache.ct_reads == 6 and data.cache.margin == 2  # memory, warmed
    train_aug = [data.train_ds.augmentation(i) for i in range(4)]
    assert any(s.any() for s, _ in train_aug) and any(f.any() for _, f in train_aug)
    assert all(np.abs(s).max() <= 2 for s, _ in train_aug)  # within the margin
    for i in range(2):
        s, f = data.val_ds.augmentation(i)
        assert not s.any() and not f.any()  # validation scores the box itself, as inference does
    other = T._prepare_data(_cfg(manifest, tmp_path, seed=2), tmp_path, 0, 1)
    assert [a[0].tolist() for a in map(other.train_ds.augmentation, range(4))] != [s.tolist() for s, _ in train_aug]


@pytest.mark.parametrize("option", [{"flips": False}, {"shift_fraction": 0.0}, {"max_shift_mm": 0.0}])
def test_augmentation_options_reach_the_training_crops(manifest, tmp_path, option):
    data = T._prepare_data(_cfg(manifest, tmp_path, cache="none", **option), tmp_path, 0, 1)
    assert data.cache is None and data.cache_s < 0.01  # nothing to warm
    aug = [data.train_ds.augmentation(i) for i in range(4)]
    if "flips" in option:
        assert not any(f.any() for _, f in aug) and any(s.any() for s, _ in aug)
    else:
        assert not any(s.any() for s, _ in aug) and any(f.any() for _, f in aug)


def test_the_disk_cache_goes_to_out_or_where_it_is_told(manifest, tmp_path, capsys):
    data = T._prepare_data(_cfg(manifest, tmp_path / "run", cache="disk", progress=True), tmp_path / "run", 0, 1)
    assert data.cache.cache_dir == tmp_path / "run" / "cache" and len(list((tmp_path / "run" / "cache").iterdir()))
    assert "caching crops" in capsys.readouterr().err
    data = T._prepare_data(_cfg(manifest, tmp_path / "run", cache="disk", cache_dir=str(tmp_path / "c")),
                           tmp_path / "run", 0, 1)
    assert data.cache.cache_dir == tmp_path / "c" and len(list((tmp_path / "c").iterdir()))
    assert capsys.readouterr().err == ""


def test_the_tmb_threshold_given_sets_the_training_labels(manifest, tmp_path):
    """A case with TMB 12 is High-TMB at the default threshold 10 and Low-TMB at 13: the run's threshold is used."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.update({k: str(Path(manifest).parent / r[k]) for k in ("ct", "tumour", "signal")})
    rows[0]["tmb"] = "12.0"  # c0, a training case (Low-TMB at 4.0 before)
    edited = tmp_path / "manifest.csv"
    with open(edited, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    default = T._prepare_data(_cfg(edited, tmp_path, cache="none"), tmp_path, 0, 1)
    assert default.train_ds.labels().tolist() == [1, 1, 0, 0]
    higher = T._prepare_data(_cfg(edited, tmp_path, cache="none", tmb_threshold=13.0), tmp_path, 0, 1)
    assert higher.train_ds.labels().tolist() == [0, 1, 0, 0] and higher.val_ds.labels().tolist() == [1, 0]


def test_without_a_cache_the_margin_option_bounds_the_shifts(manifest, tmp_path):
    """--cache none: the shifts stay within --margin-vox; with margin 0 the training boxes are not shifted at all,
    where margin 1 (or the default 8) lets the same run shift them by a voxel."""
    def shifts(**kw):
        data = T._prepare_data(_cfg(manifest, tmp_path, cache="none", **kw), tmp_path, 0, 1)
        out = []
        for epoch in range(1, 6):
            data.train_ds.set_epoch(epoch)
            out += [np.abs(data.train_ds.augmentation(i)[0]).max() for i in range(4)]
        return out
    assert max(shifts(margin_vox=0)) == 0
    assert max(shifts(margin_vox=1)) == 1


def test_cached_epochs_read_no_ct(manifest, tmp_path, monkeypatch):
    """After the cache is warmed, training and validation batches come from it: no CT is read again."""
    import training.data as D
    data = T._prepare_data(_cfg(manifest, tmp_path), tmp_path, 0, 1)
    reads = []
    real = D.read_ct
    monkeypatch.setattr(D, "read_ct", lambda *a, **k: (reads.append(a), real(*a, **k))[1])
    x, y = data.train_ds.batch(range(4))
    xv, yv = data.val_ds.batch(range(2))
    assert reads == [] and data.cache.ct_reads == 6
    assert tuple(x.shape) == (4, 1, 16, 16, 16) and tuple(xv.shape) == (2, 1, 16, 16, 16)
    assert y.tolist() == [0, 1, 0, 0] and yv.tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------- the plot
def test_history_plot_shows_the_losses_and_auc(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figs.append(fig), real_close(fig)))
    T.write_history(tmp_path, [])
    assert not list(tmp_path.iterdir())
    hist = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "val_auc": 0.5, "best": 1},
            {"epoch": 2, "train_loss": 0.6, "val_loss": 0.65, "val_auc": 0.75, "best": 1}]
    T.write_history(tmp_path, hist)
    assert _rows(tmp_path) == [{k: str(v) for k, v in h.items()} for h in hist]
    from PIL import Image
    assert Image.open(tmp_path / "history.png").size == (810, 306)  # 9 x 3.4 inches at 90 dpi
    (fig,) = figs
    loss, auc_ax = fig.axes
    # side by side, the losses on the left, at the same height
    assert loss.get_position().x1 < auc_ax.get_position().x0 and loss.get_position().y0 == auc_ax.get_position().y0
    assert [(list(ln.get_xdata()), list(ln.get_ydata()), ln.get_marker(), ln.get_linestyle())
            for ln in loss.lines] == [([1, 2], [0.7, 0.6], "o", "-"), ([1, 2], [0.69, 0.65], "s", "-")]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train", "validation"]
    assert (loss.get_xlabel(), loss.get_ylabel()) == ("epoch", "cross-entropy")
    curve, chance = auc_ax.lines
    assert (list(curve.get_xdata()), list(curve.get_ydata()), curve.get_marker(), curve.get_color()) == (
        [1, 2], [0.5, 0.75], "o", "C2")
    assert (list(chance.get_ydata()), chance.get_color(), chance.get_linewidth(), chance.get_linestyle()) == (
        [0.5, 0.5], "grey", 0.8, ":")
    assert (auc_ax.get_xlabel(), auc_ax.get_ylabel(), auc_ax.get_ylim()) == ("epoch", "validation AUC", (0, 1.02))


def test_a_plot_that_fails_leaves_the_csv_and_a_warning(tmp_path, no_plot, capsys):
    T.write_history(tmp_path, [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "val_auc": 0.5}])
    assert (tmp_path / "history.csv").is_file() and not (tmp_path / "history.png").exists()
    assert capsys.readouterr().err == "warning: could not draw history.png: no plot in this test\n"


# ---------------------------------------------------------------------------------------------- the loop
def _ck(run: Path, name: str):
    return torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)


EPOCH_LINE = re.compile(r"^epoch (\d+): train loss \d\.\d{4}  val loss \d\.\d{4}  val AUC (\d\.\d{4})(  \(best\))?"
                        r"  \[\d+\.\d+ s\]$")


class _Clock:
    """The trainer's clock for one test: each reading is STEP seconds after the one before (under a third of a
    second, so that three epochs' training takes under a second)."""
    STEP = 0.123457

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += self.STEP
        return self.now


def test_early_stopping_keeps_the_first_best_epoch(manifest, tmp_path, scripted_auc, no_plot, capsys, monkeypatch):
    """AUC 0.5, 0.7, 0.7: epoch 2 is the best (a tie does not replace it); with patience 1, epoch 3 runs (one epoch
    without improvement is allowed) and epoch 4 does not."""
    scripted_auc[:] = [0.5, 0.7, 0.7]
    monkeypatch.setattr(T, "time", _Clock())
    run = tmp_path / "full"
    cfg = _cfg(manifest, run, lr=2e-3)
    s = T.train(cfg)
    assert not scripted_auc
    assert (s["best_val_auc"], s["best_epoch"], s["epochs_run"], s["stopped_early"], s["last_epoch"]) == (
        0.7, 2, 3, True, 3)
    rows = _rows(run)
    assert [(r["epoch"], r["val_auc"], r["best"]) for r in rows] == [("1", "0.5", "1"), ("2", "0.7", "1"),
                                                                      ("3", "0.7", "0")]
    # the rate each epoch trained with: cosine from 2e-3 over 5 epochs (the old log gave the next epoch's)
    lr = [1e-3 * (1 + math.cos(math.pi * e / 5)) for e in (0, 1, 2, 3)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(lr[:3], rel=1e-9)
    assert all(0 < float(r["train_loss"]) < 5 and 0 < float(r["val_loss"]) < 5 for r in rows)
    # timings, on a clock that ticks STEP s a reading: an epoch's training is one tick (its 4 samples), the epoch
    # (training and validation) two
    step = _Clock.STEP
    assert all((r["epoch_s"], r["train_samples_per_s"]) == (str(round(2 * step, 2)), str(round(4 / step, 3)))
               for r in rows)
    best, last = _ck(run, "best.pt"), _ck(run, "last.pt")
    assert (best["epoch"], best["val_auc"]) == (2, 0.7)
    assert (last["epoch"], last["best_epoch"], last["best_auc"], last["seed"], last["epochs"]) == (3, 2, 0.7, 0, 5)
    assert last["manifest_sha256"] == sha256_file(manifest) and len(last["history"]) == 3
    assert last["history"][2]["val_auc"] == 0.7 and last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr[3])
    assert last["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4 and last["scheduler"]["T_max"] == 5
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert not torch.equal(best["model"]["class_layers.out.3.bias"], last["model"]["class_layers.out.3.bias"])
    # the log on stderr: one line per epoch, "(best)" where the AUC improved
    err = capsys.readouterr().err
    lines = [m.groups() for m in map(EPOCH_LINE.match, err.splitlines()) if m]
    assert lines == [("1", "0.5000", "  (best)"), ("2", "0.7000", "  (best)"), ("3", "0.7000", None)]
    assert "checkpoint" not in err and "resum" not in err  # a run without --resume does not look for last.pt
    assert "epoch 1/5" not in err  # progress=False: no progress bar
    # the summary: returned and written
    text = (run / "train_summary.json").read_text()
    assert json.loads(text) == json.loads(json.dumps(s, default=str))
    assert text.startswith('{\n  "best_val_auc": 0.7,\n') and text.endswith("}\n")  # indented, one line a key
    assert (s["n_train"], s["n_val"], s["n_train_high"], s["n_val_high"]) == (4, 2, 1, 1)
    assert (s["world_size"], s["device"], s["ranks_in_sync"], s["threads"]) == (1, "cpu", True, 1)
    net = build_model(s["metadata"]["tmbrb"]["architecture"])
    net.load_state_dict(last["model"])
    assert s["rank_param_checksums"] == [T.param_checksum(net)]
    assert s["manifest"] == str(Path(manifest).resolve()) and s["manifest_sha256"] == sha256_file(manifest)
    assert s["config"] == asdict(cfg) and s["ct_reads_rank0"] == 6 and s["torch_version"] == torch.__version__
    # warming the cache took one tick; the run 12 (13 readings: its start, the cache's start and end, three an
    # epoch, its end); 12 samples in 3 ticks of training
    assert (s["cache_s"], s["wall_s"], s["train_samples_per_s"]) == (round(step, 2), round(12 * step, 1),
                                                                     round(12 / (3 * step), 3))
    assert s["metadata"]["network_data_format"]["inputs"]["image"]["spatial_shape"] == [16, 16, 16]


def test_a_resumed_run_is_the_uninterrupted_run(manifest, tmp_path, scripted_auc, no_plot, capsys):
    """Stopped after 2 epochs and resumed, the run ends as the uninterrupted one: same history, same weights, the
    same best epoch and the same early stop (the state comes back from last.pt)."""
    scripted_auc[:] = [0.5, 0.7, 0.7]
    T.train(_cfg(manifest, tmp_path / "full"))
    scripted_auc[:] = [0.5, 0.7]
    part = T.train(_cfg(manifest, tmp_path / "part", stop_after=2, cache="disk"))
    assert (part["epochs_run"], part["last_epoch"], part["stopped_early"], part["best_epoch"]) == (2, 2, False, 2)
    assert len(_rows(tmp_path / "part")) == 2
    assert part["ct_reads_rank0"] == 6 and len(list((tmp_path / "part" / "cache").iterdir())) == 6  # <out>/cache
    capsys.readouterr()
    scripted_auc[:] = [0.7]
    s = T.train(_cfg(manifest, tmp_path / "part", resume=True, cache="disk"))
    assert (s["epochs_run"], s["last_epoch"], s["stopped_early"], s["best_epoch"], s["best_val_auc"]) == (
        3, 3, True, 2, 0.7)
    assert s["ct_reads_rank0"] == 0  # the crops come back from the disk cache
    assert "resuming after epoch 2 (best validation AUC 0.7000 at epoch 2)" in capsys.readouterr().err
    assert _rows(tmp_path / "part") == [{**r, "epoch_s": r2["epoch_s"], "train_samples_per_s":
                                         r2["train_samples_per_s"]}
                                        for r, r2 in zip(_rows(tmp_path / "full"), _rows(tmp_path / "part"))]
    a, b = _ck(tmp_path / "full", "last.pt"), _ck(tmp_path / "part", "last.pt")
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _ck(tmp_path / "part", "best.pt")["epoch"] == 2


def test_setup_torch_sets_the_threads_asked_for_and_deterministic_algorithms():
    """The run's torch settings: the threads asked for (none: the process's count stays), deterministic algorithms
    with warnings only where there are none. No network runs here: training with two threads in a process forked
    from one that has used torch (mutmut's workers) can hang."""
    before = torch.get_num_threads()
    torch.use_deterministic_algorithms(False)
    try:
        assert T._setup_torch(TrainConfig(manifest="m", out="o", device="cpu", threads=2)) == (0, 1, torch.device("cpu"))
        assert torch.get_num_threads() == 2
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        torch.set_num_threads(3)
        T._setup_torch(TrainConfig(manifest="m", out="o"))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_resume_without_a_checkpoint_starts_afresh(manifest, tmp_path, scripted_auc, no_plot, capsys, monkeypatch):
    weights = []
    real_loss = T.F.cross_entropy

    def loss(*a, weight=None, **k):
        weights.append(None if weight is None else weight.tolist())
        return real_loss(*a, weight=weight, **k)
    monkeypatch.setattr(T.F, "cross_entropy", loss)
    scripted_auc[:] = [0.5]
    s = T.train(_cfg(manifest, tmp_path / "run", resume=True, epochs=1, balance="none", progress=True, cache="none"))
    assert s["ct_reads_rank0"] is None and not (tmp_path / "run" / "cache").exists()  # no cache
    assert (s["epochs_run"], s["best_epoch"]) == (1, 1)
    err = capsys.readouterr().err
    assert f"no checkpoint in {tmp_path / 'run' / 'checkpoints'}; starting from scratch" in err
    # the epoch's progress bar, to its end (2 steps) with the loss; no cache to fill
    assert "epoch 1/1" in err and "1/2" in err and "2/2" in err and "loss=" in err and "caching crops" not in err
    # the loss of each step (2 of 4 training cases): unweighted with balance none, else weighted by the training
    # split's classes (1 High-TMB of 4: 4 / (2 * 3) and 4 / (2 * 1))
    assert weights == [None, None]
    scripted_auc[:] = [0.5]
    T.train(_cfg(manifest, tmp_path / "weighted", epochs=1, cache="none"))
    assert weights[2:] == [pytest.approx([4 / 6, 2.0])] * 2
    assert _rows(tmp_path / "run")[0]["train_loss"] != _rows(tmp_path / "weighted")[0]["train_loss"]


def _parts(epochs: int):
    """A small network, its optimiser after one step and its schedule after one epoch."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    net(torch.ones(3, 2)).sum().backward()
    opt.step()
    return net, opt, sched


def test_checkpoints_hold_the_best_weights_and_what_resume_needs(tmp_path, capsys):
    """_save_checkpoints then _resume, without training: best.pt only when improved, last.pt always; a resume from
    another manifest or seed is refused by its message, another length warned."""
    sha = "a" * 64
    cfg = TrainConfig(manifest="m.csv", out=str(tmp_path), epochs=1)
    net, opt, sched = _parts(1)
    sched.step()
    state = T._TrainState()
    state.update_best(1, 0.5)
    state.history.append({"epoch": 1, "val_auc": 0.5})
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    T._save_checkpoints(ckdir, net, opt, sched, state, 1, 0.5, True, sha, cfg)
    best, last = _ck(tmp_path, "best.pt"), _ck(tmp_path, "last.pt")
    assert (best.keys(), best["epoch"], best["val_auc"]) == ({"model", "epoch", "val_auc"}, 1, 0.5)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in best["model"].items())
    assert ({k: last[k] for k in ("epoch", "best_auc", "best_epoch", "history", "manifest_sha256", "seed", "epochs")}
            == {"epoch": 1, "best_auc": 0.5, "best_epoch": 1, "history": [{"epoch": 1, "val_auc": 0.5}],
                "manifest_sha256": sha, "seed": 0, "epochs": 1})
    assert sorted(p.name for p in ckdir.iterdir()) == ["best.pt", "last.pt"]
    with torch.no_grad():
        net[0].bias += 1.0
    T._save_checkpoints(ckdir, net, opt, sched, state, 2, 0.4, False, sha, cfg)  # not improved: best.pt stays
    assert _ck(tmp_path, "best.pt")["epoch"] == 1 and _ck(tmp_path, "last.pt")["epoch"] == 2

    another_seed = (TrainConfig(manifest="m", out="o", epochs=1, seed=9), sha, f"{sha[:12]} vs {sha[:12]}, seed 0 vs 9")
    another_manifest = (TrainConfig(manifest="m", out="o", epochs=1), "f" * 64,
                        f"{sha[:12]} vs {'f' * 12}, seed 0 vs 0")
    for other, manifest_sha, said in (another_seed, another_manifest):
        with pytest.raises(TMBRBInputError) as e:
            T._resume(other, ckdir, manifest_sha, *_parts(1), 0)
        assert str(e.value) == (f"Cannot resume from '{ckdir / 'last.pt'}': it was trained on another manifest or seed "
                                f"(manifest sha256 {said}). Resume with the same manifest and seed, or train into a "
                                "new --out folder.")
    capsys.readouterr()
    longer = TrainConfig(manifest="m", out="o", epochs=4)
    net2, opt2, sched2 = _parts(4)
    state = T._resume(longer, ckdir, sha, net2, opt2, sched2, 0)
    assert (state.start_epoch, state.best_epoch, state.best_auc, state.history) == (3, 1, 0.5, [{"epoch": 1,
                                                                                                 "val_auc": 0.5}])
    assert sched2.last_epoch == 1 and opt2.state_dict()["state"][0]["step"] == 1  # optimiser and schedule restored
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in net2.state_dict().items())  # epoch 2's weights
    assert capsys.readouterr().err == (
        "warning: the run was started with --epochs 1; resuming with 4 changes the learning-rate schedule\n"
        "resuming after epoch 2 (best validation AUC 0.5000 at epoch 1)\n")
    T._resume(TrainConfig(manifest="m", out="o", epochs=1), ckdir, sha, *_parts(1), 0)  # same length: no warning
    assert capsys.readouterr().err == "resuming after epoch 2 (best validation AUC 0.5000 at epoch 1)\n"
    T._resume(longer, ckdir, sha, *_parts(4), 1)  # other ranks print nothing
    assert capsys.readouterr().err == ""
    fresh = T._resume(longer, tmp_path / "none", sha, *_parts(4), 0)
    assert (fresh.start_epoch, fresh.best_epoch, fresh.history) == (1, 0, [])
    assert capsys.readouterr().err == f"no checkpoint in {tmp_path / 'none'}; starting from scratch\n"
    T._resume(longer, tmp_path / "none", sha, *_parts(4), 1)
    assert capsys.readouterr().err == ""


def test_processes_that_end_with_different_weights_stop_the_run_with_a_message(manifest, tmp_path, scripted_auc,
                                                                              no_plot, monkeypatch):
    """Under torchrun each process sends its parameter checksum; when they differ the run ends with an error that
    says so (simulated here in one process: the gathered checksums are its own and another)."""
    scripted_auc[:] = [0.5]
    monkeypatch.setattr(T, "all_gather_objects", lambda obj, world: [obj, "f" * 64] if isinstance(obj, str) else [obj])
    with pytest.raises(RuntimeError) as e:
        T.train(_cfg(manifest, tmp_path / "run", epochs=1))
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["ranks_in_sync"] is False and summary["rank_param_checksums"][1] == "f" * 64
    assert str(e.value) == (f"The 1 processes ended with different weights ({summary['rank_param_checksums']}); "
                            "distributed training went out of sync.")
