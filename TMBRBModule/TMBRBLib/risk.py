"""Risk groups from the TMBRB score, with the cut-offs and hazard ratios of the bundle's metadata (paper defaults)."""

from __future__ import annotations

import operator
from typing import Dict, Optional

from .errors import TMBRBInputError

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def check_ecog(ecog) -> Optional[int]:
    if ecog is None or ecog == "":
        return None
    try:
        v = float(ecog)
    except (TypeError, ValueError):
        raise TMBRBInputError(f"ECOG performance status '{ecog}' is not a number.",
                              "Give 0, 1 or 2 (the paper's cohort), or leave it out.") from None
    if v not in (0, 1, 2):
        raise TMBRBInputError(f"ECOG performance status {ecog} is outside 0-2, the range of the paper's cohort.",
                              "Give 0, 1 or 2, or leave it out (the ECOG-combined grouping is then not computed).")
    return int(v)


def _meets(score: float, rule: Dict) -> bool:
    return bool(_OPS[rule["operator"]](score, float(rule["cutoff"])))


def endpoint_group(score: float, rule: Dict) -> Dict:
    meets = _meets(score, rule)
    group = rule["group_if_true"] if meets else rule["group_if_false"]
    return {"group": group, "cutoff": float(rule["cutoff"]), "operator": rule["operator"],
            "rule": f"TMBRB {rule['operator']} {rule['cutoff']} -> {rule['group_if_true']} risk",
            "meets_rule": meets, "hr_of_rule": rule.get("hr")}


def ecog_combined(score: float, ecog: int, rule: Dict, cox: Dict) -> Dict:
    """Relative hazard from the two-variable Cox model (TMBRB rule indicator + ECOG per level) vs the reference."""
    meets = _meets(score, rule)
    rh = (float(cox["tmbrb_hr"]) if meets else 1.0) * float(cox["ecog_hr"]) ** int(ecog)
    tm = rule["group_if_true"] if meets else rule["group_if_false"]
    return {"relative_hazard": rh,
            "group": f"TMBRB {tm}-risk, ECOG {ecog}",
            "direction": "higher hazard" if rh > 1 else ("lower hazard" if rh < 1 else "same as reference"),
            "reference": f"TMBRB not {rule['operator']} {rule['cutoff']} and ECOG 0",
            "tmbrb_hr": float(cox["tmbrb_hr"]), "ecog_hr": float(cox["ecog_hr"])}


def risk_groups(score: float, ecog: Optional[int], risk_meta: Dict) -> Dict:
    ecog = check_ecog(ecog)
    out = {"os": endpoint_group(score, risk_meta["os"]), "pfs": endpoint_group(score, risk_meta["pfs"]),
           "ecog": ecog, "ecog_combined": None, "source": risk_meta.get("source", "")}
    if ecog is not None:
        out["ecog_combined"] = {ep: ecog_combined(score, ecog, risk_meta[ep], risk_meta["ecog_cox"][ep])
                                for ep in ("os", "pfs")}
    return out
