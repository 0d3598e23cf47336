"""The result in words (TMBRBLib.present): what every front end shows must be true of the numbers it describes."""

from __future__ import annotations

import doctest
import json
import operator
import re

import pytest

from TMBRBLib import present
from TMBRBLib.bundle import default_tmbrb_metadata
from TMBRBLib.cli import main
from TMBRBLib.geometry import lps_to_ras
from TMBRBLib.present import by_key, result_lines, select
from TMBRBLib.risk import risk_groups

RISK = default_tmbrb_metadata()["risk"]
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
CONDITION = re.compile(r"TMBRB (\d\.\d+) (>=|>|<=|<) (\d\.\d+)")


def result_for(score, ecog=None, risk_meta=RISK):
    return {"score": score, "tta": {"mean": score, "std": 0.0, "n": 1}, "risk": risk_groups(score, ecog, risk_meta),
            "attention": {"tumour": 0.5, "ring": 0.25, "elsewhere": 0.25, "ring_width_mm": 10.0},
            "model": {"name": "m", "version": "1"}, "warnings": []}


SCORES = [0.0, 0.2, 0.459, 0.46, 0.461, 0.5, 0.609, 0.61, 0.611, 0.9, 1.0]


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("endpoint", ["os", "pfs"])
def test_risk_line_states_the_condition_that_holds_for_the_score(score, endpoint):
    line = by_key(result_lines(result_for(score)))[endpoint]
    rule = RISK[endpoint]
    m = CONDITION.search(line.value)
    assert m, line.value
    shown, op, cutoff = float(m.group(1)), m.group(2), float(m.group(3))
    assert shown == pytest.approx(score, abs=5e-4) and cutoff == rule["cutoff"]
    assert OPS[op](score, cutoff), f"'{line.value}' is false for the score {score}"
    meets = OPS[rule["operator"]](score, rule["cutoff"])
    group = rule["group_if_true"] if meets else rule["group_if_false"]
    assert line.value.startswith(f"{group} risk:")
    # never the group next to the other group's rule: the operator shown is the rule's only when the rule holds
    assert (op == rule["operator"]) == meets


@pytest.mark.parametrize("score", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("ecog", [0, 1, 2])
def test_ecog_line_says_whom_the_relative_hazard_compares_with(score, ecog):
    res = result_for(score, ecog)
    lines = by_key(result_lines(res))
    assert lines["ecog"].value == str(ecog)
    for ep, event in (("os", "death"), ("pfs", "progression or death")):
        line = lines[f"{ep}_ecog"]
        cox, rule = RISK["ecog_cox"][ep], RISK[ep]
        meets = OPS[rule["operator"]](score, rule["cutoff"])
        expected = (cox["tmbrb_hr"] if meets else 1.0) * cox["ecog_hr"] ** ecog
        assert float(line.value.split(" x ")[0]) == pytest.approx(expected, abs=0.005)
        # the reference: the rule NOT met and ECOG 0, in words
        ref = re.search(r"a patient with TMBRB (>=|>|<=|<) (\d\.\d+) and ECOG 0", line.value)
        assert ref and f"hazard of {event}" in line.value, line.value
        assert ref.group(1) != rule["operator"] and float(ref.group(2)) == rule["cutoff"]
        assert f"ECOG {ecog}" in line.detail and CONDITION.search(line.detail)


@pytest.mark.parametrize("score", SCORES)
def test_a_note_says_why_os_and_pfs_groups_differ(score):
    lines = by_key(result_lines(result_for(score)))
    differ = lines["os"].value.split()[0] != lines["pfs"].value.split()[0]
    assert ("risk_note" in lines) == differ
    if differ:  # the paper: a higher score went with longer OS (low risk) but shorter PFS (high risk)
        assert "a higher TMBRB means low risk for overall survival but high risk for progression-free" \
            in lines["risk_note"].value


def test_no_ecog_gives_no_hazard_line_and_says_so():
    lines = result_lines(result_for(0.7))
    assert not select(lines, ("os_ecog", "pfs_ecog"))
    assert by_key(lines)["ecog"].value == "not given"


def test_a_result_json_written_before_the_operator_was_stored_reads_the_same():
    res = result_for(0.3, 1)
    old = json.loads(json.dumps(res))
    for ep in ("os", "pfs"):
        del old["risk"][ep]["operator"]
    assert [line.text for line in result_lines(old)] == [line.text for line in result_lines(res)]


def test_site_cutoffs_and_rules_from_the_bundle_are_what_the_lines_say():
    meta = json.loads(json.dumps(RISK))
    meta["os"].update(cutoff=0.3, operator="<", group_if_true="high", group_if_false="low")
    line = by_key(result_lines(result_for(0.5, risk_meta=meta)))["os"]
    assert line.value == "low risk: TMBRB 0.500 >= 0.3"


def test_demo_model_warnings_and_missing_values():
    res = result_for(0.5)
    res["model"] = {"name": "demo", "version": "2", "demo": True, "notice": "DEMO weights"}
    res["warnings"] = ["first", "second"]
    res["attention"] = {"tumour": None, "ring": None, "elsewhere": None}
    lines = result_lines(res)
    line = by_key(lines)
    assert line["demo"].value == "yes" and line["notice"].value == "DEMO weights"
    assert [w.value for w in select(lines, ("warning",))] == ["first", "second"]
    assert line["attention"].value == "tumour n/a, ring n/a, elsewhere n/a"
    assert line["score"].value == "0.500" and by_key(result_lines(res, digits=4))["score"].value == "0.5000"


def test_the_command_line_prints_the_lines_of_its_own_result_json(tmp_path, capsys, placeholder_bundle):
    from tests.engine.synthetic import make_ct

    ct, _ = make_ct(size=(64, 64, 32), tumour_lps=(10.0, -20.0, 30.0), radius_mm=7, noise=10)
    import SimpleITK as sitk

    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    seed = ",".join(f"{v:.3f}" for v in lps_to_ras((10.0, -20.0, 30.0)))
    rc = main(["score", "--ct", str(tmp_path / "ct.nrrd"), "--seed-ras", seed, "--ecog", "1", "--shifts", "0",
               "--model", str(placeholder_bundle.path), "--out", str(tmp_path / "out"), "--progress", "none",
               "--no-pictures"])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    for line in result_lines(res):
        if line.key not in ("notice", "demo", "warning"):
            assert line.text in printed, line.text
    assert sum(p.startswith("warning: ") for p in printed) == len(res["warnings"])
    assert res["tumour_mask"]["source"] == "proposed" and by_key(result_lines(res))["mask"].text in printed


@pytest.mark.parametrize("source, words", [("given", "given"), ("proposed", "proposed from the seed"),
                                           ("proposed_edited", "proposed from the seed, then edited")])
@pytest.mark.parametrize("uncertain", [False, True])
def test_mask_line_says_where_the_mask_comes_from_and_when_to_review_it(source, words, uncertain):
    res = result_for(0.4)
    reasons = ["the mask reaches the search limit (120 mm around the seed)"] if uncertain else []
    res["tumour_mask"] = {"source": source, "uncertain": uncertain, "reasons": reasons}
    lines = result_lines(res)
    keys = [line.key for line in lines]
    assert keys[keys.index("attention") + 1] == "mask"  # next to the attention figures
    line = by_key(lines)["mask"]
    if uncertain:
        assert line.value == "tumour mask uncertain: review it"
        assert words in line.detail and reasons[0] in line.detail
    else:
        assert line.value == words and "uncertain" not in line.text


def test_a_result_json_written_before_the_mask_was_recorded_has_no_mask_line():
    assert "mask" not in by_key(result_lines(result_for(0.4)))


def test_examples_in_the_docstrings_run():
    failed, attempted = doctest.testmod(present, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failed == 0


@pytest.mark.parametrize("uncertain", [False, True])
def test_the_viewer_panel_shows_the_mask_line_and_marks_an_uncertain_one(uncertain):
    from tmbrb_viewer.app import format_result  # trame is imported only to serve, not by format_result

    res = result_for(0.4)
    res["tumour_mask"] = {"source": "proposed", "uncertain": uncertain, "reasons": ["it reaches the search limit"]}
    state = format_result(res)
    assert state["r_mask"] == by_key(result_lines(res))["mask"].text
    assert ("review it" in state["r_mask"]) is uncertain and state["r_mask_uncertain"] is uncertain
    assert format_result(result_for(0.4))["r_mask"] == ""  # an older result.json: no line rather than a guess


def test_the_viewer_panel_shows_whether_the_case_is_like_the_training_data():
    from tmbrb_viewer.app import format_result

    res = result_for(0.4)
    lines = by_key(result_lines(res))
    expected = [lines[k].text for k in ("ood", "acquisition") if k in lines]
    assert expected, "result_lines gives the training-data lines (with 'not available' without a summary)"
    assert format_result(res)["r_trust"] == expected
