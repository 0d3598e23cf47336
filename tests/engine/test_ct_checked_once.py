"""A CT read by `io.read_ct` is checked once (issue 12: the check reads a sample of the whole volume, and the command
line, batch and the warm worker used to run it twice per case); its warnings reach result.json exactly once."""

import json

import pytest

from TMBRBLib import pipeline
from TMBRBLib.cli import main
from TMBRBLib.io import write_image
from TMBRBLib.phantom import make_phantom

SLICE_WARNING = "5 mm slices"


@pytest.fixture(scope="module")
def thick_ct(tmp_path_factory):
    """A phantom on 5 mm slices (read_ct warns about them) written as a file."""
    case = make_phantom(2, spacing=(0.8, 0.8, 5.0), shape_xyz=(160, 160, 40))
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    write_image(case.ct, path)
    return case, path


def count_checks(monkeypatch):
    calls = []
    real = pipeline.validate_ct

    def counted(ct, *a, **k):
        calls.append(1)
        return real(ct, *a, **k)

    monkeypatch.setattr(pipeline, "validate_ct", counted)
    return calls


def test_score_command_checks_the_ct_once_and_reports_its_warning_once(thick_ct, tmp_path, monkeypatch,
                                                                      placeholder_bundle):
    case, path = thick_ct
    calls = count_checks(monkeypatch)
    rc = main(["score", "--ct", str(path), "--seed-lps", ",".join(map(str, case.seed_lps)), "--out",
               str(tmp_path / "out"), "--shifts", "0", "--device", "cpu", "--progress", "none", "--no-pictures",
               "--model", str(placeholder_bundle.path)])
    assert rc == 0
    assert calls == []  # read_ct checked it; score_case does not again
    warnings = json.loads((tmp_path / "out" / "result.json").read_text())["warnings"]
    assert sum(SLICE_WARNING in w for w in warnings) == 1, warnings


def test_score_case_still_checks_a_ct_it_is_given_unchecked(thick_ct, monkeypatch, placeholder_bundle):
    case, _ = thick_ct
    calls = count_checks(monkeypatch)
    r = pipeline.score_case(case.ct, case.seed_lps, bundle=placeholder_bundle, n_shifts=0, device="cpu")
    assert calls == [1]
    assert sum(SLICE_WARNING in w for w in r.warnings) == 1, r.warnings
