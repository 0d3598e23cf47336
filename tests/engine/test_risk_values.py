"""Risk groups written out in full (issue 16, mutation testing): every field of the result, both operators of each
side, the direction of a relative hazard, and check_ecog's accepted and refused values with their messages."""

import copy

import pytest

from TMBRBLib.bundle import default_tmbrb_metadata
from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.risk import check_ecog, ecog_combined, endpoint_group, risk_groups

RISK = default_tmbrb_metadata()["risk"]
SOURCE = "He et al., J Immunother Cancer 2020;8:e000550 (X-tile cut-offs, figure 3; Cox models, figure 4B)"


def test_risk_groups_in_full_with_ecog():
    r = risk_groups(0.7, 2, RISK)
    assert r == {
        "os": {"group": "low", "cutoff": 0.61, "operator": ">=", "rule": "TMBRB >= 0.61 -> low risk",
               "meets_rule": True, "hr_of_rule": 0.54},
        "pfs": {"group": "high", "cutoff": 0.46, "operator": ">", "rule": "TMBRB > 0.46 -> high risk",
                "meets_rule": True, "hr_of_rule": 1.78},
        "ecog": 2,
        "ecog_combined": {
            "os": {"relative_hazard": pytest.approx(0.54 * 2.33 ** 2), "group": "TMBRB low-risk, ECOG 2",
                   "direction": "higher hazard", "reference": "TMBRB not >= 0.61 and ECOG 0",
                   "tmbrb_hr": 0.54, "ecog_hr": 2.33},
            "pfs": {"relative_hazard": pytest.approx(1.76 * 1.9 ** 2), "group": "TMBRB high-risk, ECOG 2",
                    "direction": "higher hazard", "reference": "TMBRB not > 0.46 and ECOG 0",
                    "tmbrb_hr": 1.76, "ecog_hr": 1.9}},
        "source": SOURCE,
    }


def test_risk_groups_in_full_without_ecog_and_below_both_cutoffs():
    r = risk_groups(0.2, None, RISK)
    assert r["os"] == {"group": "high", "cutoff": 0.61, "operator": ">=", "rule": "TMBRB >= 0.61 -> low risk",
                       "meets_rule": False, "hr_of_rule": 0.54}
    assert r["pfs"]["group"] == "low" and r["pfs"]["meets_rule"] is False
    assert r["ecog"] is None and r["ecog_combined"] is None and r["source"] == SOURCE
    assert risk_groups(0.2, "", RISK)["ecog"] is None   # an empty manifest cell: no ECOG
    no_source = {k: v for k, v in RISK.items() if k != "source"}
    assert risk_groups(0.2, None, no_source)["source"] == ""


@pytest.mark.parametrize("op,score,meets", [(">=", 0.5, True), (">=", 0.4999, False), (">", 0.5, False),
                                            (">", 0.5001, True), ("<=", 0.5, True), ("<=", 0.5001, False),
                                            ("<", 0.5, False), ("<", 0.4999, True)])
def test_each_operator_at_its_cutoff(op, score, meets):
    rule = {"cutoff": "0.5", "operator": op, "group_if_true": "T", "group_if_false": "F"}
    g = endpoint_group(score, rule)
    assert g == {"group": "T" if meets else "F", "cutoff": 0.5, "operator": op,
                 "rule": f"TMBRB {op} 0.5 -> T risk", "meets_rule": meets, "hr_of_rule": None}


@pytest.mark.parametrize("score,ecog,cox,rh,direction,group", [
    (0.9, 0, {"tmbrb_hr": 0.5, "ecog_hr": 2.0}, 0.5, "lower hazard", "TMBRB T-risk, ECOG 0"),
    (0.1, 0, {"tmbrb_hr": 0.5, "ecog_hr": 2.0}, 1.0, "same as reference", "TMBRB F-risk, ECOG 0"),
    (0.1, 1, {"tmbrb_hr": "0.5", "ecog_hr": "2"}, 2.0, "higher hazard", "TMBRB F-risk, ECOG 1"),
    (0.9, 1, {"tmbrb_hr": 0.5, "ecog_hr": 2.0}, 1.0, "same as reference", "TMBRB T-risk, ECOG 1"),
    (0.9, 2, {"tmbrb_hr": 3.0, "ecog_hr": 0.5}, 0.75, "lower hazard", "TMBRB T-risk, ECOG 2"),
])
def test_ecog_combined_direction_and_group(score, ecog, cox, rh, direction, group):
    rule = {"cutoff": 0.5, "operator": ">=", "group_if_true": "T", "group_if_false": "F"}
    r = ecog_combined(score, ecog, rule, cox)
    assert r == {"relative_hazard": pytest.approx(rh, abs=1e-12), "group": group, "direction": direction,
                 "reference": "TMBRB not >= 0.5 and ECOG 0", "tmbrb_hr": float(cox["tmbrb_hr"]),
                 "ecog_hr": float(cox["ecog_hr"])}
    assert isinstance(r["tmbrb_hr"], float) and isinstance(r["ecog_hr"], float)


@pytest.mark.parametrize("value,expected", [(None, None), ("", None), (0, 0), ("1", 1), (2.0, 2), ("2.0", 2)])
def test_check_ecog_accepts(value, expected):
    v = check_ecog(value)
    assert v == expected and (v is None or type(v) is int)


@pytest.mark.parametrize("value,message,hint", [
    ("abc", "ECOG performance status 'abc' is not a number.", "Give 0, 1 or 2 (the paper's cohort), or leave it out."),
    ([1], "ECOG performance status '[1]' is not a number.", "Give 0, 1 or 2 (the paper's cohort), or leave it out."),
    (3, "ECOG performance status 3 is outside 0-2, the range of the paper's cohort.",
     "Give 0, 1 or 2, or leave it out (the ECOG-combined grouping is then not computed)."),
    (-1, "ECOG performance status -1 is outside 0-2, the range of the paper's cohort.",
     "Give 0, 1 or 2, or leave it out (the ECOG-combined grouping is then not computed)."),
    (1.5, "ECOG performance status 1.5 is outside 0-2, the range of the paper's cohort.",
     "Give 0, 1 or 2, or leave it out (the ECOG-combined grouping is then not computed)."),
])
def test_check_ecog_refuses_with_a_message(value, message, hint):
    with pytest.raises(TMBRBInputError) as e:
        check_ecog(value)
    assert str(e.value) == f"{message} {hint}"  # the whole text: what the user reads
    if "not a number" in message:  # raised from the float() error without chaining it (no deep traceback)
        assert e.value.__suppress_context__


def test_a_site_rule_with_less_than():
    site = copy.deepcopy(RISK)
    site["os"].update(operator="<", cutoff=0.3, group_if_true="high", group_if_false="low")
    assert risk_groups(0.29, None, site)["os"]["group"] == "high"
    assert risk_groups(0.3, None, site)["os"]["group"] == "low"
