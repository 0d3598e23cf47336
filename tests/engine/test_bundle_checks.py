"""The checks every bundle load runs, on a tiny bundle (issue 16: bundle.py's mutation run).

Each refusal is checked by its whole message (what is wrong, the value, what it must be, what to do), and each bound
from both sides: the value on the bound loads, the one just past it is refused. The bundle is a tiny network (20 KB
of weights) made in a fraction of a second, so this file runs in seconds and can be the selection of a mutation run
(docs/testing.md); the same kinds of bad bundle are checked on the full placeholder in test_bad_input.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from TMBRBLib.bundle import (
    CHECKSUMS_PATH,
    DEMO_NOTICE,
    DEMO_WEIGHTS_SHA256,
    METADATA_PATH,
    PLACEHOLDER_NOTICE,
    WEIGHTS_PATH,
    Bundle,
    check_files,
    default_bundle_path,
    default_metadata,
    load_bundle,
    save_bundle,
    sha256_file,
    sha256_json,
)
from TMBRBLib.errors import TMBRBBundleError
from TMBRBLib.model import build_model

from .test_bundle_integrity import _edit as edit_metadata

FIX = "Fix configs/metadata.json or re-export the bundle."
KNOWN_ARCH = "'TMBRBNet (MONAI DenseNet, 3D)'"


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    """A tiny bundle exported once per module: the paper's metadata with a four-layer network."""
    meta = default_metadata()
    arch = dict(meta["tmbrb"]["architecture"], init_features=4, growth_rate=4, block_config=[1, 1, 1, 1],
                hidden_features=8)
    del arch["n_features"]
    arch["n_features"] = build_model(arch).n_features
    meta["tmbrb"]["architecture"] = arch
    path = tmp_path_factory.mktemp("tiny") / "tiny_bundle"
    save_bundle(build_model(arch), path, meta, model_card="# tiny\n")
    return path


@pytest.fixture()
def tiny(tiny_source, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_source, tmp_path / "tiny_bundle"))


def _edit(bundle: Path, change) -> None:
    """Change the metadata's ``tmbrb`` section in place (the checksums are left: the bundle is then modified)."""
    edit_metadata(bundle, lambda meta: change(meta["tmbrb"]))


def _setter(where: str, value):
    """An edit that sets ``section.key[.key]`` (``value`` None with ``delete``: see _deleter)."""
    *keys, last = where.split(".")

    def change(t):
        d = t
        for k in keys:
            d = d[k]
        d[last] = value
    return change


def _deleter(where: str):
    *keys, last = where.split(".")

    def change(t):
        d = t
        for k in keys:
            d = d[k]
        del d[last]
    return change


def _value(t: dict, where: str):
    for key in where.split("."):
        t = t[key]
    return t


def _refusal(bundle: Path) -> str:
    with pytest.raises(TMBRBBundleError) as e:
        load_bundle(bundle)
    return str(e.value)


def _bad(bundle: Path, where: str, shown: str, need: str) -> str:
    return f"The metadata of '{bundle}' has {where} = {shown}: it must be {need}. {FIX}"


# ---------------------------------------------------------------------------------------------- the good bundle
def test_the_tiny_bundle_loads_verified_with_its_values(tiny):
    b = load_bundle(tiny)
    assert b.integrity == {"status": "verified", "changed": [], "missing": [], "message": ""}
    assert b.sha256 == hashlib.sha256((tiny / WEIGHTS_PATH).read_bytes()).hexdigest()
    assert b.path == tiny and b.tmbrb["architecture"]["n_features"] == 8
    assert b.model().n_features == 8


def test_without_a_path_the_bundle_named_by_tmbrb_model_is_loaded(tiny, monkeypatch):
    monkeypatch.setenv("TMBRB_MODEL", str(tiny))
    b = load_bundle()
    assert b.path == tiny and b.integrity["status"] == "verified"


def test_info_records_what_a_result_needs(tiny):
    b = load_bundle(tiny)
    meta = json.loads((tiny / METADATA_PATH).read_text())
    info = b.info()
    assert info == {
        "name": "TMBRB (untrained placeholder)", "model_id": "tmbrb-untrained", "version": "0.0.1",
        "sha256": sha256_file(tiny / WEIGHTS_PATH),
        "metadata_sha256": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest(),
        "path": "tiny_bundle", "demo": True, "placeholder": True, "notice": PLACEHOLDER_NOTICE,
        "intended_use": "Research use only. Not a medical device; not for diagnosis or treatment decisions.",
        "modified": False, "integrity": {"status": "verified", "changed": [], "missing": [], "message": ""},
        "cam": {"method": "GradCAM-IxG", "target_layer": "features.transition1.relu", "smooth_mm": 2.0,
                "class_index": 1}}
    # the record is a copy: changing it changes neither the bundle nor the next record
    info["integrity"]["changed"].append("x")
    info["cam"]["method"] = "x"
    assert b.integrity["changed"] == [] and b.info()["cam"]["method"] == "GradCAM-IxG"


def test_info_of_a_bundle_without_a_name_version_or_intended_use(tiny):
    def strip(path):
        meta = json.loads(path.read_text())
        for key in ("name", "version", "intended_use"):
            del meta[key]
        del meta["tmbrb"]["cam"]["smooth_mm"]
        meta["tmbrb"]["placeholder"] = False
        meta["tmbrb"]["demo"] = False
        meta["tmbrb"]["notice"] = "Trained here."
        path.write_text(json.dumps(meta))
    strip(tiny / METADATA_PATH)
    info = load_bundle(tiny).info()
    assert (info["name"], info["version"], info["intended_use"]) == ("tiny_bundle", "?", "")
    assert (info["demo"], info["placeholder"], info["notice"], info["modified"]) == (False, False, "Trained here.",
                                                                                      True)
    assert info["cam"] == {"method": "GradCAM-IxG", "target_layer": "features.transition1.relu", "class_index": 1}


def test_a_bundle_given_its_integrity_does_not_check_its_files_again(tiny):
    given = {"status": "verified", "changed": [], "missing": []}
    (tiny / CHECKSUMS_PATH).unlink()
    assert Bundle(tiny, {"tmbrb": {}}, "0" * 64, given).integrity is given
    assert Bundle(tiny, {"tmbrb": {}}, "0" * 64).integrity["status"] == "unverified"
    assert Bundle(tiny, {"tmbrb": {}}, "0" * 64, given).info()["cam"] == {}  # a bundle without CAM settings


# ---------------------------------------------------------------------------------------------- folder and metadata
def test_not_a_folder_no_metadata_bad_json_no_tmbrb_section(tiny, tmp_path):
    missing = tmp_path / "missing"
    assert _refusal(missing) == (f"The model bundle '{missing}' is not a folder. Give the folder that holds "
                                 "configs/metadata.json and models/model.safetensors.")
    (tiny / METADATA_PATH).write_text("{not json")
    assert _refusal(tiny) == (f"The metadata of the model bundle '{tiny}' is not valid JSON (Expecting property name "
                              "enclosed in double quotes: line 1 column 2 (char 1)).")
    (tiny / METADATA_PATH).write_bytes(b'{"name": "\xff"}')
    assert _refusal(tiny).startswith(f"The metadata of the model bundle '{tiny}' is not valid JSON ('utf-8' codec")
    for text in ("[1, 2]", '{"name": "x"}', '{"tmbrb": [1]}', '{"tmbrb": null}'):
        (tiny / METADATA_PATH).write_text(text)
        assert _refusal(tiny) == f"The metadata of '{tiny}' has no 'tmbrb' section: it is not a TMBRB bundle."
    (tiny / METADATA_PATH).unlink()
    assert _refusal(tiny) == f"The model bundle '{tiny}' has no configs/metadata.json. It is not a TMBRB bundle."


@pytest.mark.parametrize("fmt, shown", [(99, "99"), ("1", "'1'"), (None, "None"), (0, "0")])
def test_a_bundle_of_another_format_is_refused(tiny, fmt, shown):
    _edit(tiny, _setter("bundle_format", fmt))
    assert _refusal(tiny) == (f"The model bundle '{tiny}' has format {shown}; this TMBRB reads format 1. Use a TMBRB "
                              "version that matches the bundle, or re-export the bundle.")


def test_a_bundle_without_a_format_is_refused(tiny):
    _edit(tiny, _deleter("bundle_format"))
    assert "has format None; this TMBRB reads format 1." in _refusal(tiny)


@pytest.mark.parametrize("section", ["architecture", "preprocessing", "risk", "weights"])
def test_each_needed_section_is_required(tiny, section):
    _edit(tiny, _deleter(section))
    assert _refusal(tiny) == f"The metadata of '{tiny}' lacks the '{section}' section. Re-export the bundle."


def test_an_unknown_architecture_name_is_refused(tiny):
    _edit(tiny, _setter("architecture.name", "ResNet"))
    assert _refusal(tiny) == (f"The metadata of '{tiny}' cannot be used: the architecture 'ResNet' is not known to "
                              f"this TMBRB (it knows {KNOWN_ARCH}). Use a TMBRB version that has this architecture, "
                              "or re-export the bundle.")


def test_an_architecture_without_a_name_is_the_default(tiny):
    _edit(tiny, _deleter("architecture.name"))
    assert load_bundle(tiny).model().n_features == 8


@pytest.mark.parametrize("cam", [None, [1], {"method": "GradCAM"}])
def test_a_missing_cam_section_or_target_layer_is_refused(tiny, cam):
    _edit(tiny, _setter("cam", cam))
    assert _refusal(tiny) == (f"The metadata of '{tiny}' lacks the 'cam' section (method, target_layer). "
                              "Re-export the bundle.")


def test_unusable_cam_settings_are_refused(tiny):
    _edit(tiny, _setter("cam.method", "X"))
    assert _refusal(tiny) == (f"The 'cam' settings in the metadata of '{tiny}' cannot be used: CAM method 'X' is not "
                              f"known; use one of GradCAM, GradCAM-IxG. {FIX}")


# ---------------------------------------------------------------------------------------------- values and bounds
# (where, a value on the bound that loads, a value just past it, its JSON, what it must be)
BOUNDS = [
    ("preprocessing.margin_mm", 0.0, -0.01, "-0.01", "a finite number from 0 to 200"),
    ("preprocessing.margin_mm", 200, 200.5, "200.5", "a finite number from 0 to 200"),
    ("preprocessing.min_fov_mm", 1.0, 0.5, "0.5", "a finite number from 1 to 1000"),
    ("preprocessing.max_fov_mm", 1000.0, 1001, "1001", "a finite number from 1 to 1000"),
    ("preprocessing.fov_mm", 1.0, 0.0, "0.0", "a finite number from 1 to 1000"),
    ("preprocessing.pad_hu", -3100, -3101, "-3101", "a finite number from -3100 to 5000"),
    ("preprocessing.pad_hu", 5000, 5001, "5001", "a finite number from -3100 to 5000"),
    ("preprocessing.training_slice_mm_max", 0.1, 0.09, "0.09", "a finite number from 0.1 to 20"),
    ("architecture.num_classes", 2, 1, "1", "a whole number from 2 to 64"),
    ("architecture.in_channels", 1, 2, "2", "a whole number from 1 to 1"),
    ("architecture.dropout_prob", 0.99, 1.0, "1.0", "a finite number from 0 to 0.99"),
    ("tta.n_shifts", 0, -1, "-1", "a whole number from 0 to 26"),
    ("tta.n_shifts", 26, 27, "27", "a whole number from 0 to 26"),
    ("tta.n_shifts", 3.0, 2.5, "2.5", "a whole number from 0 to 26"),
    ("tta.n_shifts", 2, True, "true", "a whole number from 0 to 26"),
    ("tta.seed", 2**32 - 1, 2**32, "4294967296", "a whole number from 0 to 4.29497e+09"),
    ("tta.shift_fraction", 1.0, "0.5", '"0.5"', "a finite number from 0 to 1"),
    ("tta.max_shift_mm", 100.0, float("inf"), "Infinity", "a finite number from 0 to 100"),
    ("regions.ring_width_mm", 50.0, float("nan"), "NaN", "a finite number from 0.1 to 50"),
    ("proposal.max_half_size_mm", 1.0, None, "null", "a finite number from 1 to 200"),
    ("proposal.margin_mm", 100.0, 100.01, "100.01", "a finite number from 0 to 100"),
    ("risk.os.cutoff", 1.0, 1.01, "1.01", "a finite number from 0 to 1"),
    ("risk.pfs.cutoff", 0, -0.01, "-0.01", "a finite number from 0 to 1"),
    ("risk.os.hr", 0.001, 0.0009, "0.0009", "a finite number from 0.001 to 1000"),
    ("risk.pfs.hr", 1000, 1000.5, "1000.5", "a finite number from 0.001 to 1000"),
    ("risk.ecog_cox.os.ecog_hr", 1000, 1e4, "10000.0", "a finite number from 0.001 to 1000"),
    ("risk.ecog_cox.pfs.tmbrb_hr", 0.001, 0, "0", "a finite number from 0.001 to 1000"),
    ("cam.class_index", 0, -1, "-1", "a whole number from 0 to 1"),
    ("cam.class_index", 1, 2, "2", "a whole number from 0 to 1"),
]


@pytest.mark.parametrize("where, ok, bad, shown, need", BOUNDS)
def test_each_value_loads_on_its_bound_and_is_refused_past_it(tiny, where, ok, bad, shown, need):
    _edit(tiny, _setter(where, ok))
    assert _value(load_bundle(tiny).tmbrb, where) == ok  # loads
    _edit(tiny, _setter(where, bad))
    assert _refusal(tiny) == _bad(tiny, where, shown, need)


@pytest.mark.parametrize("where, bad, shown, need", [
    ("preprocessing.mode", "cube", '"cube"', "one of 'box_margin', 'fixed_fov'"),
    ("preprocessing.interpolation", "cubic", '"cubic"', "one of 'linear', 'nearest', 'bspline'"),
    ("risk.os.operator", "=>", '"=>"', "one of >=, >, <=, <"),
    ("risk.pfs.operator", None, "null", "one of >=, >, <=, <"),
    ("risk.os.group_if_true", "", '""', 'a group name such as "low" or "high"'),
    ("risk.pfs.group_if_false", 1, "1", 'a group name such as "low" or "high"'),
    ("risk.os", 0.61, "0.61", "a section with cutoff, operator, group_if_true, group_if_false"),
    ("risk.ecog_cox.os.tmbrb_hr", None, "null", "a finite number from 0.001 to 1000"),
    ("tta", 3, "3", "a section (a JSON object)"),
    ("architecture", [1], "[1]", "a section (a JSON object)"),
    # each of these gave a traceback (AttributeError, OverflowError) instead of this message
    ("weights", [], "[]", "a section (a JSON object) with the weights' sha256"),
    ("risk.ecog_cox", [1], "[1]", "a section (a JSON object) or absent"),
    ("risk.ecog_cox.pfs", "x", '"x"', "a section with tmbrb_hr and ecog_hr, or absent"),
    pytest.param("tta.n_shifts", 10**400, "1" + "0" * 400, "a whole number from 0 to 26", id="n_shifts-1e400"),
    pytest.param("risk.os.hr", -10**400, "-1" + "0" * 400, "a finite number from 0.001 to 1000", id="hr--1e400"),
    pytest.param("regions.tumour_hu_range", [0, 10**400], "[0, 1" + "0" * 400 + "]",
                 "two finite numbers [low, high] with high - low of at least 1", id="hu_range-1e400"),
])
def test_values_of_the_wrong_kind_are_refused(tiny, where, bad, shown, need):
    _edit(tiny, _setter(where, bad))
    assert _refusal(tiny) == _bad(tiny, where, shown, need)


def test_a_risk_section_of_the_wrong_kind_is_refused(tiny):
    _edit(tiny, _setter("risk", [0.61]))
    assert _refusal(tiny) == _bad(tiny, "risk", "[0.61]", "a section (a JSON object)")


def test_a_risk_rule_that_is_missing_is_refused(tiny):
    _edit(tiny, _deleter("risk.pfs"))
    assert _refusal(tiny) == _bad(tiny, "risk.pfs", "null",
                                  "a section with cutoff, operator, group_if_true, group_if_false")


@pytest.mark.parametrize("where", ["tta.n_shifts", "regions.ring_width_mm", "risk.os.hr", "risk.ecog_cox",
                                   "risk.ecog_cox.os", "preprocessing.min_fov_mm", "preprocessing.max_fov_mm",
                                   "regions", "proposal", "tta", "cam.class_index", "architecture.num_classes"])
def test_optional_values_may_be_left_out(tiny, where):
    _edit(tiny, _deleter(where))
    assert load_bundle(tiny).is_modified  # loads, edited


def test_a_null_hazard_ratio_or_cox_section_is_allowed(tiny):
    _edit(tiny, lambda t: (t["risk"]["os"].update(hr=None), t["risk"].update(ecog_cox=None)))
    assert load_bundle(tiny).tmbrb["risk"]["os"]["hr"] is None


def test_the_class_index_is_bounded_by_the_number_of_classes(tiny):
    _edit(tiny, lambda t: (t["architecture"].update(num_classes=3), t["cam"].update(class_index=2)))
    assert load_bundle(tiny).tmbrb["cam"]["class_index"] == 2  # loads; the weights (2 classes) would not fit
    _edit(tiny, lambda t: t["cam"].update(class_index=3))
    assert _refusal(tiny) == _bad(tiny, "cam.class_index", "3", "a whole number from 0 to 2")
    # without num_classes the network has the model's default 2 classes: class 1 is the last one
    _edit(tiny, lambda t: (t["architecture"].pop("num_classes", None), t["cam"].update(class_index=1)))
    assert load_bundle(tiny, verify=False).tmbrb["cam"]["class_index"] == 1
    _edit(tiny, lambda t: t["cam"].update(class_index=2))
    assert _refusal(tiny) == _bad(tiny, "cam.class_index", "2", "a whole number from 0 to 1")


@pytest.mark.parametrize("where, ok, bad, shown", [
    ("preprocessing.hu_window", [-1000.0, -999.0], [400.0, 400.5], "[400.0, 400.5]"),
    ("regions.tumour_hu_range", [0, 1], [0, 0.5], "[0, 0.5]"),
    ("proposal.hu_range", [-400.0, 500.0], [500.0, -400.0], "[500.0, -400.0]"),
    ("proposal.hu_range", [1, 2], [1, 2, 3], "[1, 2, 3]"),
    ("proposal.hu_range", [1, 2], [1], "[1]"),
    ("regions.tumour_hu_range", [1, 2], "1, 2", '"1, 2"'),
    ("regions.tumour_hu_range", [1, 2], [False, 2], "[false, 2]"),
    ("preprocessing.hu_window", [1, 2], [-1000.0, float("nan")], "[-1000.0, NaN]"),
    ("preprocessing.hu_window", [1, 2], [-1000.0, "400"], '[-1000.0, "400"]'),
])
def test_hu_ranges_need_two_finite_numbers_at_least_1_hu_apart(tiny, where, ok, bad, shown):
    _edit(tiny, _setter(where, ok))
    assert _value(load_bundle(tiny).tmbrb, where) == ok
    _edit(tiny, _setter(where, bad))
    assert _refusal(tiny) == _bad(tiny, where, shown, "two finite numbers [low, high] with high - low of at least 1")


def test_the_hu_window_is_required(tiny):
    _edit(tiny, _deleter("preprocessing.hu_window"))
    assert _refusal(tiny) == _bad(tiny, "preprocessing.hu_window", "null", "given ([low, high] HU)")


@pytest.mark.parametrize("ok, bad, shown", [
    ([8, 8, 8], [8, 8, 7], "[8, 8, 7]"),
    ([256, 256, 256], [256, 257, 256], "[256, 257, 256]"),
    ([32, 32, 32], [32, 32], "[32, 32]"),
    ([32, 32, 32], [32, 32, 32, 32], "[32, 32, 32, 32]"),
    ([32, 32, 32], [32, 32, 32.0], "[32, 32, 32.0]"),
    ([32, 32, 32], [32, True, 32], "[32, true, 32]"),
    ([32, 32, 32], "32", '"32"'),
])
def test_the_input_shape_is_three_whole_numbers_from_8_to_256(tiny, ok, bad, shown):
    _edit(tiny, _setter("preprocessing.shape", ok))
    assert load_bundle(tiny).tmbrb["preprocessing"]["shape"] == ok
    _edit(tiny, _setter("preprocessing.shape", bad))
    assert _refusal(tiny) == _bad(tiny, "preprocessing.shape", shown, "three whole numbers from 8 to 256 (z, y, x)")


def test_min_fov_may_equal_but_not_exceed_max_fov(tiny):
    _edit(tiny, lambda t: t["preprocessing"].update(min_fov_mm=100.0, max_fov_mm=100.0))
    assert load_bundle(tiny).is_modified  # loads, edited
    _edit(tiny, lambda t: t["preprocessing"].update(min_fov_mm=100.5))
    assert _refusal(tiny) == _bad(tiny, "preprocessing.min_fov_mm", "100.5", "at most max_fov_mm")
    _edit(tiny, lambda t: (t["preprocessing"].pop("max_fov_mm"), t["preprocessing"].update(min_fov_mm=1000.0)))
    assert load_bundle(tiny).is_modified  # loads, edited: max_fov_mm left out is 1000 mm


def test_an_unknown_architecture_setting_is_refused_naming_the_known_ones(tiny):
    _edit(tiny, lambda t: t["architecture"].update(colour="red", depth=3))
    assert _refusal(tiny) == _bad(tiny, "architecture.colour", '"red"', "absent: the network has no such setting "
                                  "(it takes block_config, bn_size, classifier_dropout, dropout_prob, growth_rate, "
                                  "hidden_features, in_channels, init_features, n_features, num_classes, "
                                  "spatial_dims)")


@pytest.mark.parametrize("ok, bad, shown", [
    ([1], [], "[]"),
    ([1] * 8, [1] * 9, "[1, 1, 1, 1, 1, 1, 1, 1, 1]"),
    ([128], [129], "[129]"),
    ([1, 1], [1, 0], "[1, 0]"),
    ([1, 1], [1, 1.0], "[1, 1.0]"),
    ([1, 1], [1, True], "[1, true]"),
    ([1, 1], "1", '"1"'),
])
def test_block_config_is_1_to_8_blocks_of_1_to_128_layers(tiny, ok, bad, shown):
    _edit(tiny, _setter("architecture.block_config", ok))
    assert load_bundle(tiny).tmbrb["architecture"]["block_config"] == ok  # loads; the weights would not fit
    _edit(tiny, _setter("architecture.block_config", bad))
    assert _refusal(tiny) == _bad(tiny, "architecture.block_config", shown, "1 to 8 whole numbers from 1 to 128")


def test_block_config_left_out_is_the_papers(tiny):
    _edit(tiny, _deleter("architecture.block_config"))
    assert load_bundle(tiny).is_modified  # loads, edited


# ---------------------------------------------------------------------------------------------- weights
def test_a_bundle_without_weights_is_refused(tiny):
    (tiny / WEIGHTS_PATH).unlink()
    assert _refusal(tiny) == f"The model bundle '{tiny}' has no weights file models/model.safetensors."


def test_tampered_weights_are_refused_unless_not_verified(tiny):
    w = tiny / WEIGHTS_PATH
    expected = sha256_file(w)
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    digest = hashlib.sha256(bytes(data)).hexdigest()
    assert _refusal(tiny) == (f"The weights of the model bundle '{tiny}' fail their checksum (sha256 {digest[:12]}..., "
                              f"metadata says {expected[:12]}...). The file is corrupt or was replaced: restore the "
                              "bundle from its source.")
    b = load_bundle(tiny, verify=False)
    assert b.sha256 == digest
    assert b.integrity["status"] == "modified" and b.integrity["changed"] == ["models/model.safetensors"]


def test_weights_without_a_checksum_in_the_metadata_are_refused(tiny):
    _edit(tiny, lambda t: t["weights"].pop("sha256"))
    assert "metadata says None..." in _refusal(tiny)


def _weights_refusal(tiny, missing, unexpected, other, example):
    with pytest.raises(TMBRBBundleError) as e:
        load_bundle(tiny).model()
    assert str(e.value) == (
        f"The weights in '{tiny}' do not fit the architecture in its metadata ({missing} missing, {unexpected} "
        f"unexpected, {other} of other shape, e.g. {example}). The bundle is mismatched: re-export it with "
        "`python -m training export` or use the bundle that came with TMBRB.")


def _rewrite_weights(tiny, change):
    w = tiny / WEIGHTS_PATH
    state = load_file(str(w))
    change(state)
    save_file(state, str(w))
    _edit(tiny, lambda t: t["weights"].update(sha256=sha256_file(w)))


def test_weights_that_do_not_fit_the_architecture_are_refused_with_counts(tiny):
    _edit(tiny, _setter("architecture.hidden_features", 9))
    _weights_refusal(tiny, 0, 0, 3,
                     "['class_layers.out.0.weight', 'class_layers.out.0.bias', 'class_layers.out.3.weight']")


def test_missing_and_unexpected_weights_are_counted(tiny):
    _rewrite_weights(tiny, lambda s: (s.pop("class_layers.out.3.bias"),
                                      s.update(extra=s["class_layers.out.0.bias"].clone())))
    _weights_refusal(tiny, 1, 1, 0, "['class_layers.out.3.bias', 'extra']")


def test_one_weight_of_another_shape_is_refused(tiny):
    _rewrite_weights(tiny, lambda s: s.update({"class_layers.out.3.bias": s["class_layers.out.3.bias"][:1].clone()}))
    _weights_refusal(tiny, 0, 0, 1, "['class_layers.out.3.bias']")


def test_unreadable_weights_are_refused(tiny):
    w = tiny / WEIGHTS_PATH
    w.write_bytes(b"not safetensors")
    _edit(tiny, lambda t: t["weights"].update(sha256=sha256_file(w)))
    with pytest.raises(TMBRBBundleError, match=r"^The weights file '.*model.safetensors' cannot be read \(.*\)\. "
                                               r"The bundle is corrupt: restore it from its source\.$"):
        load_bundle(tiny).model()


# ---------------------------------------------------------------------------------------------- checksums file
UNVERIFIED = {"status": "unverified", "changed": [], "missing": [],
              "message": "the bundle has no checksums.sha256 (exported by an older TMBRB): its metadata cannot be "
                         "checked for edits"}
DAMAGED = {"status": "modified", "changed": ["checksums.sha256"], "missing": [],
           "message": "MODIFIED BUNDLE: its checksums.sha256 is damaged or does not list the metadata and weights"}


def _listing(tiny) -> dict:
    return {line[66:]: line[:64] for line in (tiny / CHECKSUMS_PATH).read_text().splitlines()}


def test_the_checksums_file_lists_every_file_in_sha256sum_format(tiny):
    assert _listing(tiny) == {name: sha256_file(tiny / name)
                              for name in ("configs/metadata.json", "docs/README.md", "models/model.safetensors")}


def test_no_checksums_file_is_unverified(tiny):
    (tiny / CHECKSUMS_PATH).unlink()
    assert check_files(tiny) == UNVERIFIED
    assert load_bundle(tiny).integrity == UNVERIFIED  # not the demo's weights: said, not called modified


def _write_listing(tiny, lines):
    (tiny / CHECKSUMS_PATH).write_text("".join(line + "\n" for line in lines))


def test_a_listing_in_binary_mode_with_blank_lines_verifies(tiny):
    entries = _listing(tiny)
    _write_listing(tiny, [""] + [f"{d}  *{n}" for n, d in entries.items()] + ["   "])
    assert check_files(tiny)["status"] == "verified"
    _write_listing(tiny, [f"{d}  {n}" for n, d in entries.items() if n != "docs/README.md"])
    assert check_files(tiny)["status"] == "verified"  # only listed files are checked


@pytest.mark.parametrize("bad_line", [
    "{d} {n}",                    # one space
    "{d}",                        # no name
    "{d}  ",                      # empty name
    "{d}  *",                     # binary mark and no name
    "{short}  {n}",               # 63 hex digits
    "{d}0  {n}",                  # 65
    "{upper}  {n}",               # sha256sum writes lower case
    "{x_digit}  {n}",             # not hex
    "{d}  /etc/{n}",              # absolute
    "{d}  docs/../{n}",           # climbs
])
def test_a_malformed_or_unsafe_line_makes_the_listing_damaged(tiny, bad_line):
    entries = _listing(tiny)
    d, n = entries["docs/README.md"], "docs/README.md"
    line = bad_line.format(d=d, n=n, short=d[:63], upper=d.upper(), x_digit="X" + d[1:])
    _write_listing(tiny, [f"{dd}  {nn}" for nn, dd in entries.items()] + [line])
    assert check_files(tiny) == DAMAGED


@pytest.mark.parametrize("drop", ["configs/metadata.json", "models/model.safetensors"])
def test_a_listing_without_the_metadata_or_weights_is_damaged(tiny, drop):
    _write_listing(tiny, [f"{d}  {n}" for n, d in _listing(tiny).items() if n != drop])
    assert check_files(tiny) == DAMAGED


def test_file_names_with_two_spaces_or_a_leading_x_verify(tiny):
    from TMBRBLib.bundle import write_checksums
    for name in ("docs/two  spaces.md", "docs/*star.md", "X-ray notes.md"):
        (tiny / name).write_text(name)
    write_checksums(tiny)
    assert {"docs/two  spaces.md", "docs/*star.md", "X-ray notes.md"} <= _listing(tiny).keys()
    assert check_files(tiny)["status"] == "verified"
    (tiny / "docs" / "two  spaces.md").write_text("changed")
    assert check_files(tiny)["changed"] == ["docs/two  spaces.md"]


def test_an_unreadable_listing_is_damaged(tiny):
    (tiny / CHECKSUMS_PATH).write_bytes(b"\xff\xfe not utf-8\n")
    assert check_files(tiny) == DAMAGED


def test_changed_and_missing_files_are_named(tiny):
    (tiny / "docs" / "README.md").write_text("# validated\n")
    assert check_files(tiny) == {
        "status": "modified", "changed": ["docs/README.md"], "missing": [],
        "message": "MODIFIED BUNDLE: docs/README.md changed after export (cut-offs, name or notice may not be the "
                   "exporter's); results from it are not those of the model as published"}
    _edit(tiny, _setter("notice", "x"))
    (tiny / "docs" / "README.md").unlink()
    r = check_files(tiny)
    assert (r["changed"], r["missing"]) == (["configs/metadata.json"], ["docs/README.md"])
    assert r["message"].startswith("MODIFIED BUNDLE: configs/metadata.json, docs/README.md (missing) changed after")


def test_a_digest_handed_in_replaces_hashing_that_file(tiny):
    right = sha256_file(tiny / WEIGHTS_PATH)
    assert check_files(tiny, known={"models/model.safetensors": right})["status"] == "verified"
    assert check_files(tiny, known={"models/model.safetensors": "0" * 64})["changed"] == ["models/model.safetensors"]
    assert check_files(tiny, known={"docs/other.md": "0" * 64})["status"] == "verified"


def test_the_demo_weights_without_their_checksums_are_modified(tmp_path):
    """The demo model was shipped with its checksums file: removing it cannot make an edited demo look unverified."""
    demo = default_bundle_path()
    dst = tmp_path / "demo"
    (dst / "configs").mkdir(parents=True)
    (dst / "models").mkdir()
    shutil.copy(demo / METADATA_PATH, dst / METADATA_PATH)
    (dst / WEIGHTS_PATH).symlink_to(demo / WEIGHTS_PATH)
    b = load_bundle(dst)
    assert b.sha256 in DEMO_WEIGHTS_SHA256
    assert b.integrity == {**UNVERIFIED, "status": "modified",
                           "message": "MODIFIED BUNDLE: the demo model's checksums.sha256 was removed"}
    assert b.is_modified and b.notice == DEMO_NOTICE


def test_digests_of_json_are_key_order_free(tiny):
    meta = json.loads((tiny / METADATA_PATH).read_text())
    shuffled = dict(reversed(list(copy.deepcopy(meta).items())))
    assert sha256_json(shuffled) == sha256_json(meta) == load_bundle(tiny).info()["metadata_sha256"]


# ---------------------------------------------------------------------------------------------- writing a bundle
def _tiny_metadata():
    meta = default_metadata()
    meta["tmbrb"]["architecture"].update(init_features=4, growth_rate=4, block_config=[1, 1, 1, 1],
                                         hidden_features=8, n_features=8)
    return meta


def test_save_bundle_stores_half_precision_weights_and_records_them(tmp_path):
    import torch
    meta = _tiny_metadata()
    before = copy.deepcopy(meta)
    torch.manual_seed(0)
    net = build_model(meta["tmbrb"]["architecture"])
    p = tmp_path / "saved"
    b = save_bundle(net, p, meta)
    assert meta == before  # the caller's metadata is not changed
    w = p / WEIGHTS_PATH
    assert b.tmbrb["weights"] == {"file": "models/model.safetensors", "sha256": sha256_file(w), "dtype": "float16"}
    state = load_file(str(w))
    own = net.state_dict()
    assert state.keys() == own.keys()
    for k, v in state.items():
        want = own[k].to(torch.float16) if own[k].is_floating_point() else own[k]
        assert v.dtype == want.dtype and torch.equal(v, want), k
    assert _listing(p).keys() == {"configs/metadata.json", "models/model.safetensors"}
    assert sorted(f.name for f in p.iterdir()) == ["checksums.sha256", "configs", "models"]  # no docs/ without a card
    assert b.integrity["status"] == "verified"
    # saved again into the same folder (`bundle placeholder --force`), in float32 with a model card
    b = save_bundle(net, p, meta, dtype="float32", model_card="# card é\n")
    assert all(v.dtype == own[k].dtype for k, v in load_file(str(w)).items())
    assert b.tmbrb["weights"]["dtype"] == "float32" and (p / "docs" / "README.md").read_bytes() == "# card é\n".encode()
    assert _listing(p).keys() == {"configs/metadata.json", "docs/README.md", "models/model.safetensors"}
    assert b.integrity["status"] == "verified"
    save_bundle(net, p, meta, model_card="# card 2\n")  # the docs folder exists already
    assert (p / "docs" / "README.md").read_text() == "# card 2\n"


def test_write_metadata_gives_back_the_shipped_demo_bundle_byte_for_byte(tmp_path):
    """Writing the shipped metadata unchanged reproduces its file and its checksums exactly (`sha256sum -c` passes)."""
    from TMBRBLib.bundle import write_metadata
    demo = default_bundle_path()
    dst = tmp_path / "demo"
    (dst / "models").mkdir(parents=True)
    shutil.copy(demo / WEIGHTS_PATH, dst / WEIGHTS_PATH)
    shutil.copytree(demo / "docs", dst / "docs")
    (dst / "configs").mkdir()
    (dst / "docs" / "README.md.tmp").write_text("left over")  # not listed
    target = write_metadata(dst, json.loads((demo / METADATA_PATH).read_text(encoding="utf-8")))
    assert target == dst / METADATA_PATH
    assert target.read_bytes() == (demo / METADATA_PATH).read_bytes()
    assert (dst / CHECKSUMS_PATH).read_bytes() == (demo / CHECKSUMS_PATH).read_bytes()
    assert not (dst / "checksums.sha256.tmp").exists()


def test_write_metadata_makes_a_new_bundle_folder_and_lists_no_link(tmp_path):
    from TMBRBLib.bundle import write_metadata
    p = tmp_path / "new" / "bundle"
    write_metadata(p, {"name": "x"})
    (p / "docs").mkdir()
    (p / "docs" / "link.md").symlink_to(p / METADATA_PATH)
    write_metadata(p, {"name": "y"})
    assert json.loads((p / METADATA_PATH).read_text()) == {"name": "y"}
    assert _listing(p) == {"configs/metadata.json": sha256_file(p / METADATA_PATH)}


def test_a_placeholder_bundle_is_loud_and_follows_its_seed(tmp_path):
    from TMBRBLib.bundle import make_placeholder_bundle
    b = make_placeholder_bundle(tmp_path / "p0", seed=3)
    assert (b.is_demo, b.notice, b.tmbrb["placeholder"]) == (True, PLACEHOLDER_NOTICE, True)
    assert b.tmbrb["training"] == {"note": "untrained: random initialisation", "seed": 3}
    assert b.tmbrb["architecture"] == default_metadata()["tmbrb"]["architecture"] and b.model().n_features == 1020
    assert (tmp_path / "p0" / "docs" / "README.md").read_text() == ("# TMBRB placeholder bundle\n\n"
                                                                     + PLACEHOLDER_NOTICE + "\n")
    assert b.integrity["status"] == "verified" and b.tmbrb["weights"]["dtype"] == "float16"
    assert make_placeholder_bundle(tmp_path / "p1", seed=3).sha256 == b.sha256
    assert make_placeholder_bundle(tmp_path / "p2", seed=4).sha256 != b.sha256


def test_the_model_is_frozen_in_eval_mode_and_kept(tiny):
    b = load_bundle(tiny)
    net = b.model()
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    assert b.model("cpu") is net


@pytest.mark.parametrize("change, counts, example", [
    (lambda s: s.pop("class_layers.out.3.bias"), (1, 0, 0), "['class_layers.out.3.bias']"),
    (lambda s: s.update(extra=s["class_layers.out.3.bias"].clone()), (0, 1, 0), "['extra']"),
])
def test_one_missing_or_one_unexpected_weight_is_refused(tiny, change, counts, example):
    _rewrite_weights(tiny, change)
    _weights_refusal(tiny, *counts, example)


def test_the_message_names_three_of_many_mismatched_weights(tiny):
    _edit(tiny, lambda t: t["architecture"].update(growth_rate=5, n_features=9))
    with pytest.raises(TMBRBBundleError) as e:
        load_bundle(tiny).model()
    example = re.search(r"e\.g\. (\[.*?\])\)", str(e.value)).group(1)
    assert len(eval(example)) == 3 and int(re.search(r"(\d+) of other shape", str(e.value)).group(1)) > 3
