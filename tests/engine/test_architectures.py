"""Networks are looked up by the bundle's architecture.name: an unknown name is refused clearly, a registered one
loads and scores."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from TMBRBLib import model as model_module
from TMBRBLib.bundle import default_metadata, load_bundle, save_bundle
from TMBRBLib.errors import TMBRBBundleError
from TMBRBLib.model import ARCHITECTURES, DEFAULT_ARCHITECTURE, TMBRBNet, build_model
from TMBRBLib.pipeline import score_case

from .synthetic import make_ct

TINY = "Tiny test net (3D)"


class TinyNet(nn.Module):
    """One convolution, pooled: enough to give logits and a CAM."""

    def __init__(self, channels: int = 4, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, channels, 3, padding=1), nn.ReLU(), nn.AvgPool3d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def _write_metadata(bundle_dir, edit):
    m = bundle_dir / "configs" / "metadata.json"
    meta = json.loads(m.read_text())
    edit(meta["tmbrb"])
    m.write_text(json.dumps(meta))


@pytest.fixture
def bundle_copy(placeholder_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(placeholder_bundle.path, dst)
    return dst


def test_the_demo_bundles_name_is_the_default_architecture():
    assert DEFAULT_ARCHITECTURE == "TMBRBNet (MONAI DenseNet, 3D)" and ARCHITECTURES[DEFAULT_ARCHITECTURE] is TMBRBNet
    assert load_bundle().tmbrb["architecture"]["name"] == DEFAULT_ARCHITECTURE


def test_unknown_architecture_name_is_refused_naming_the_known_ones(bundle_copy):
    _write_metadata(bundle_copy, lambda t: t["architecture"].update(name="ResNet-3D"))
    with pytest.raises(TMBRBBundleError, match=r"architecture 'ResNet-3D' is not known .*'TMBRBNet \(MONAI DenseNet, "
                                               r"3D\)'") as e:
        load_bundle(bundle_copy)
    assert str(bundle_copy) in str(e.value) and "re-export" in str(e.value)
    with pytest.raises(ValueError, match="ResNet-3D"):
        build_model({"name": "ResNet-3D"})


def test_a_bundle_without_an_architecture_name_gets_the_default(bundle_copy):
    _write_metadata(bundle_copy, lambda t: t["architecture"].pop("name"))
    b = load_bundle(bundle_copy)
    assert "name" not in b.tmbrb["architecture"] and type(b.model("cpu")) is TMBRBNet


def test_a_registered_second_architecture_loads_and_scores(monkeypatch, tmp_path):
    monkeypatch.setitem(model_module.ARCHITECTURES, TINY, TinyNet)
    meta = default_metadata()
    t = meta["tmbrb"]
    t["architecture"] = {"name": TINY, "channels": 4}
    t["preprocessing"]["shape"] = [16, 16, 16]
    t["cam"]["target_layer"] = "features.1"
    torch.manual_seed(0)
    b = save_bundle(TinyNet(channels=4), tmp_path / "tiny", meta)
    assert type(b.model("cpu")) is TinyNet
    ct, _ = make_ct(size=(60, 60, 40), tumour_lps=(10, -20, 30), radius_mm=7)
    r = score_case(ct, (10.0, -20.0, 30.0), bundle=b, n_shifts=2, device="cpu")
    assert 0 <= r.score <= 1 and len(r.tta_scores) == 3 and r.crop_grid.size_xyz == (16, 16, 16)
    assert r.to_dict()["model"]["sha256"] == b.sha256 and np.isfinite(r.cam_region.data).all()
    monkeypatch.undo()  # without its entry the same bundle is refused
    with pytest.raises(TMBRBBundleError, match=re.escape(f"architecture '{TINY}' is not known")):
        load_bundle(tmp_path / "tiny")
