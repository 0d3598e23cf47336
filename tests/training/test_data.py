"""The training crops are the engine's crops: cached sub-crops equal TMBRBLib.crop.crop_for_model on the shifted box."""

from __future__ import annotations

import numpy as np

from TMBRBLib.bundle import default_metadata
from TMBRBLib.crop import crop_for_model, crop_grid
from TMBRBLib.io import read_ct
from training.data import CropCache, CropDataset
from training.manifest import read_manifest


def _policy():
    p = default_metadata()["tmbrb"]["preprocessing"]
    p.update({"shape": [24, 24, 24], "min_fov_mm": 30.0})
    return p


def test_cached_crop_equals_engine_crop_with_and_without_shift(tiny_manifest, tmp_path):
    policy = _policy()
    cases = read_manifest(tiny_manifest)
    cache = CropCache(policy, margin_vox=3, cache_dir=tmp_path / "cache")
    train = CropDataset(cases, policy, cache, train=True, seed=1, max_shift_mm=5, shift_fraction=0.3, flips=False)
    val = CropDataset(cases, policy, cache, train=False)
    nocache = CropDataset(cases, policy, None, train=True, seed=1, margin_vox=3, max_shift_mm=5, shift_fraction=0.3,
                          flips=False)
    shifted = 0
    for ep in (1, 2):
        train.set_epoch(ep)
        nocache.set_epoch(ep)
        for i, c in enumerate(cases):
            ct, _ = read_ct(c.ct)
            ref = crop_for_model(ct, c.box, policy)[0]
            assert np.allclose(val.array(i), ref, atol=1e-5)       # validation input == inference input
            shift, _ = train.augmentation(i)
            spacing = np.asarray(crop_grid(c.box, policy).spacing)
            ref_s = crop_for_model(ct, c.box.shifted(shift * spacing), policy)[0]
            assert np.allclose(train.array(i), ref_s, atol=1e-5)   # shifted box == sub-crop of the cached crop
            assert np.allclose(nocache.array(i), ref_s, atol=1e-5)
            shifted += int(np.any(shift != 0))
    assert shifted > 0  # the augmentation does shift
    assert cache.ct_reads == len(cases)  # each CT read once, however many epochs


def test_augmentation_is_seeded_per_epoch_and_flips(tiny_manifest):
    policy = _policy()
    cases = read_manifest(tiny_manifest)
    a = CropDataset(cases, policy, CropCache(policy, 3), train=True, seed=7, max_shift_mm=5, shift_fraction=0.3)
    b = CropDataset(cases, policy, CropCache(policy, 3), train=True, seed=7, max_shift_mm=5, shift_fraction=0.3)
    a.set_epoch(3)
    b.set_epoch(3)
    aug = [a.augmentation(i) for i in range(len(cases))]
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
               for x, y in zip(aug, [b.augmentation(i) for i in range(len(cases))]))
    assert any(f.any() for _, f in aug)
    b.set_epoch(4)
    assert any(not np.array_equal(a.augmentation(i)[0], b.augmentation(i)[0]) for i in range(len(cases)))
    # a flipped sample is the flipped unflipped sample
    i = next(k for k, (_, f) in enumerate(aug) if f.any())
    shift, flip = a.augmentation(i)
    plain = CropDataset(cases, policy, a.cache, train=True, seed=7, max_shift_mm=5, shift_fraction=0.3, flips=False)
    plain.set_epoch(3)
    assert np.array_equal(a.array(i), np.flip(plain.array(i), tuple(np.flatnonzero(flip))))
