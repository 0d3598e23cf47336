"""Samples per second of training with and without the crop cache (same model, same augmentation)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F

from TMBRBLib.model import build_model

from .data import CropCache, CropDataset
from .manifest import read_manifest, select
from .trainer import TrainConfig, build_metadata


def bench(manifest, out_dir, n: int = 16, batch_size: int = 8, preprocessing: Dict = None,
          architecture: Dict = None) -> Dict:
    cfg = TrainConfig(manifest=str(manifest), out=str(out_dir), preprocessing=preprocessing or {},
                      architecture=architecture or {})
    meta = build_metadata(cfg)
    policy = meta["tmbrb"]["preprocessing"]
    cases = select(read_manifest(manifest), "train")[:n]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = build_model(meta["tmbrb"]["architecture"])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    cache = CropCache(policy, cfg.margin_vox, out / "bench_cache")
    res: Dict = {"n_samples": len(cases), "batch_size": batch_size, "threads": torch.get_num_threads(),
                 "input_shape": policy["shape"]}
    t = time.perf_counter()
    for c in cases:
        cache.get(c)
    res["cache_fill_s"] = round(time.perf_counter() - t, 2)
    warm = CropDataset(cases, policy, cache, True)  # one untimed step: thread pools and allocator warm-up
    x, y = warm.batch(range(min(batch_size, len(cases))))
    F.cross_entropy(net(x), y).backward()
    opt.zero_grad()
    for name, ds in (("no_cache", CropDataset(cases, policy, None, True, margin_vox=cfg.margin_vox)),
                     ("cache", CropDataset(cases, policy, cache, True))):
        ds.set_epoch(1)
        t = time.perf_counter()
        for i in range(len(ds)):
            ds.array(i)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        net.train()
        for s in range(0, len(ds), batch_size):
            x, y = ds.batch(range(s, min(len(ds), s + batch_size)))
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        step_s = time.perf_counter() - t
        res[name] = {"data_samples_per_s": round(len(ds) / load_s, 2),
                     "train_samples_per_s": round(len(ds) / step_s, 2)}
    (out / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    return res
