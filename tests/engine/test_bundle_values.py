"""bundle.py against values fixed elsewhere (issue 16: mutation testing found the defaults unchecked).

The paper's numbers are written out from He et al. 2020 (figure 3's X-tile cut-offs, figure 4B's Cox models); the
other defaults are compared with the demo bundle shipped in Resources/ (exported from them), and the digests with
hashlib's.
"""

import hashlib
import json

import pytest

from TMBRBLib.bundle import (PLACEHOLDER_NOTICE, default_bundle_path, default_metadata, default_tmbrb_metadata,
                             sha256_file, sha256_json)


def _shipped():
    return json.loads((default_bundle_path() / "configs" / "metadata.json").read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def _no_model_override(monkeypatch):
    monkeypatch.delenv("TMBRB_MODEL", raising=False)


def test_default_risk_rules_are_the_papers():
    risk = default_tmbrb_metadata()["risk"]
    assert risk["os"] == {"cutoff": 0.61, "operator": ">=", "group_if_true": "low", "group_if_false": "high",
                          "hr": 0.54, "hr_ci95": [0.31, 0.95]}
    assert risk["pfs"] == {"cutoff": 0.46, "operator": ">", "group_if_true": "high", "group_if_false": "low",
                           "hr": 1.78, "hr_ci95": [1.07, 2.95]}
    cox = risk["ecog_cox"]
    assert cox["os"] == {"tmbrb_hr": 0.54, "tmbrb_hr_ci95": [0.31, 0.95], "ecog_hr": 2.33,
                         "ecog_hr_ci95": [1.14, 4.77]}
    assert cox["pfs"] == {"tmbrb_hr": 1.76, "tmbrb_hr_ci95": [1.06, 2.92], "ecog_hr": 1.90,
                          "ecog_hr_ci95": [1.14, 3.19]}
    assert "J Immunother Cancer 2020;8:e000550" in risk["source"]


def test_default_preprocessing_is_the_64_cube_of_the_paper():
    pre = default_tmbrb_metadata()["preprocessing"]
    assert pre["shape"] == [64, 64, 64] and pre["hu_window"] == [-1000.0, 400.0] and pre["pad_hu"] == -1000.0
    assert (pre["mode"], pre["margin_mm"], pre["min_fov_mm"], pre["max_fov_mm"]) == ("box_margin", 15.0, 50.0, 160.0)
    assert default_tmbrb_metadata()["architecture"]["n_features"] == 1020  # the paper's deep features


def test_default_metadata_sections_are_those_the_demo_bundle_was_exported_with():
    shipped, meta = _shipped(), default_metadata()
    for key in ("architecture", "preprocessing", "cam", "regions", "proposal", "risk", "bundle_format", "demo"):
        assert meta["tmbrb"][key] == shipped["tmbrb"][key], key
    for key in ("schema", "task", "authors", "copyright", "references", "network_data_format"):
        assert meta[key] == shipped[key], key


def test_default_metadata_is_loud_about_a_placeholder():
    t = default_tmbrb_metadata()
    assert (t["model_id"], t["demo"], t["placeholder"], t["notice"], t["training"]) == (
        "tmbrb-untrained", True, True, PLACEHOLDER_NOTICE, {})
    assert t["tta"] == {"n_shifts": 8, "shift_fraction": 0.1, "max_shift_mm": 5.0, "seed": 0}
    meta = default_metadata()
    assert (meta["name"], meta["version"], meta["changelog"]) == ("TMBRB (untrained placeholder)", "0.0.1",
                                                                  {"0.0.1": "initial"})
    named = default_metadata("site model", "2.1")
    assert (named["name"], named["version"], named["changelog"]) == ("site model", "2.1", {"2.1": "initial"})
    assert meta["intended_use"].startswith("Research use only. Not a medical device")
    assert "1020 deep features" in meta["description"]
    assert "+" not in meta["pytorch_version"]  # "2.5.1", not "2.5.1+cpu"


def test_default_bundle_path_and_its_override(monkeypatch, tmp_path):
    assert default_bundle_path().parts[-3:] == ("Resources", "models", "tmbrb_demo")
    assert (default_bundle_path() / "configs" / "metadata.json").is_file()
    monkeypatch.setenv("TMBRB_MODEL", str(tmp_path))
    assert default_bundle_path() == tmp_path


def test_digests_are_hashlibs(tmp_path):
    f = tmp_path / "abc"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 example
    big = bytes(range(256)) * (3 * 4096 + 7)  # over 3 MiB: several 1 MiB chunks and a short last one
    f.write_bytes(big)
    assert sha256_file(str(f)) == hashlib.sha256(big).hexdigest()
    # keys sorted, json.dumps's default separators
    assert sha256_json({"b": 1, "a": [2, "x"]}) == hashlib.sha256(b'{"a": [2, "x"], "b": 1}').hexdigest()


def test_default_metadata_records_the_library_versions():
    import monai
    import numpy
    import torch

    meta = default_metadata()
    assert meta["monai_version"] == monai.__version__ and meta["numpy_version"] == numpy.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["description"].startswith("3D DenseNet (4 dense blocks")


def test_the_model_is_built_once_per_device_frozen_in_eval_mode_in_float32():
    import torch

    from TMBRBLib.bundle import load_bundle

    b = load_bundle()
    net = b.model()
    assert isinstance(net, torch.nn.Module) and not net.training
    assert b.model("cpu") is net and list(b._models) == ["cpu"]
    params = list(net.parameters())
    assert params and all(not p.requires_grad and p.dtype == torch.float32 for p in params)
    assert next(net.parameters()).device.type == "cpu"


def test_an_architecture_that_cannot_be_built_says_what_to_do(tmp_path):
    from TMBRBLib.bundle import Bundle
    from TMBRBLib.errors import TMBRBBundleError

    b = Bundle(tmp_path, {"tmbrb": {"architecture": {"name": "no such net"}}}, "0" * 64,
               integrity={"status": "verified"})
    with pytest.raises(TMBRBBundleError) as e:
        b.model()
    assert str(e.value) == (f"The architecture in the metadata of '{tmp_path}' cannot be built: the architecture "
                            "'no such net' is not known to this TMBRB (it knows 'TMBRBNet (MONAI DenseNet, 3D)'). "
                            "Fix configs/metadata.json or re-export the bundle.")
