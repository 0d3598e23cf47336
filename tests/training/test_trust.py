"""`python -m training ood-summary`: the training data's summary written into a bundle, its weights untouched."""

import json
import shutil

from TMBRBLib.bundle import METADATA_PATH, load_bundle, sha256_file, WEIGHTS_PATH
from TMBRBLib.ood import ACQUISITION_QUANTITIES
from training.cli import main

from .conftest import write_tiny_cohort


def _copy(bundle, dest):
    shutil.copytree(bundle.path, dest)
    return dest


def test_ood_summary_writes_the_sections_and_keeps_the_weights(placeholder_bundle, tiny_manifest, tmp_path, capsys):
    b = _copy(placeholder_bundle, tmp_path / "b")
    before = sha256_file(b / WEIGHTS_PATH)
    assert main(["ood-summary", "--bundle", str(b), "--manifest", str(tiny_manifest), "--components", "3",
                 "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    loaded = load_bundle(b)
    t = loaded.tmbrb
    assert sha256_file(b / WEIGHTS_PATH) == before == loaded.sha256 == printed["weights_sha256"]
    assert t["ood"]["n_train"] == 6 and t["ood"]["n_val"] == 2 and t["ood"]["n_components"] == 3
    assert t["ood"]["threshold"] == printed["threshold"] > 0
    assert set(t["acquisition"]["ranges"]) == set(ACQUISITION_QUANTITIES)
    assert t["tta"]["spread_flag_level"] >= 0
    # the acquisition ranges hold every training case's values
    from TMBRBLib.io import read_ct
    from training.manifest import read_manifest, select
    from training.trust import case_statistics

    for case in select(read_manifest(tiny_manifest), "train"):
        values = case_statistics(loaded, read_ct(case.ct)[0], case.box, 0)["acquisition"]
        for key, (lo, hi) in t["acquisition"]["ranges"].items():
            assert lo <= values[key] <= hi, (case.ct, key, values[key], (lo, hi))


def test_ood_summary_refuses_a_manifest_with_too_few_cases(placeholder_bundle, tmp_path, capsys):
    b = _copy(placeholder_bundle, tmp_path / "b")
    meta_before = (b / METADATA_PATH).read_text()
    m = write_tiny_cohort(tmp_path / "few", n=5, splits=["train"] * 4 + ["val"])
    assert main(["ood-summary", "--bundle", str(b), "--manifest", str(m), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "4 training and 1 validation cases" in err and "at least 4 and 2" in err
    assert (b / METADATA_PATH).read_text() == meta_before  # nothing written
