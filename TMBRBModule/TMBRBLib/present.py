"""One result, in words: the labelled lines every front end shows.

The command line, the 3D Slicer results table and panel, the browser viewer's panel and the PNG overlays all show a
result through :func:`result_lines`, so a score, a risk group or a hazard reads the same everywhere. The input is the
result dict (``CaseResult.to_dict()``, or a ``result.json`` read back), never the engine's objects, so results saved by
an earlier run present the same way.

The risk lines state the condition that applies to this score ("TMBRB 0.30 < 0.61"), not the rule of the other group,
and the ECOG line says in words whom the relative hazard compares this patient with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from . import RESEARCH_USE_NOTICE
from .ood import NOT_AVAILABLE, outside_text

# how a cut-off rule reads when the score does not meet it
_NEGATION = {">=": "<", ">": "<=", "<=": ">", "<": ">="}
_ENDPOINT = {"os": ("OS", "death"), "pfs": ("PFS", "progression or death")}
ATTENTION_REGIONS = ("tumour", "ring", "elsewhere")


@dataclass(frozen=True)
class Line:
    """One labelled line of a result.

    key : a stable identifier that front ends select lines by ("score", "calibrated", "spread", "ood", "acquisition",
        "os", "pfs", "ecog", "os_ecog", "pfs_ecog", "attention", "mask", "cam", "box", "model", "model_sha256", "demo",
        "device", "notice", "warning").
    label : what the line is, for a person ("OS risk group").
    value : the value in words, short enough for a table cell ("low risk: TMBRB 0.734 >= 0.61").
    detail : what the value means or where it comes from (may be empty).
    """

    key: str
    label: str
    value: str
    detail: str = ""

    @property
    def text(self) -> str:
        """``label: value (detail)``, the line as one sentence."""
        return f"{self.label}: {self.explained}"

    @property
    def explained(self) -> str:
        """``value (detail)``, for a place that shows the label itself."""
        return self.value + (f" ({self.detail})" if self.detail else "")


def _number(v, fmt: str = ".3f") -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(x) else format(x, fmt)


def _operator(rule: Dict) -> str:
    op = rule.get("operator")
    if op in _NEGATION:
        return op
    # results written before the operator was stored: "TMBRB >= 0.61 -> low risk"
    parts = str(rule.get("rule", "")).split()
    return parts[1] if len(parts) > 1 and parts[1] in _NEGATION else ">="


def condition(score: float, rule: Dict) -> str:
    """The cut-off condition that holds for this score, e.g. ``TMBRB 0.300 < 0.61``.

    >>> condition(0.3, {"cutoff": 0.61, "operator": ">=", "meets_rule": False})
    'TMBRB 0.300 < 0.61'
    >>> condition(0.5, {"cutoff": 0.46, "operator": ">", "meets_rule": True})
    'TMBRB 0.500 > 0.46'
    """
    op = _operator(rule)
    meets = rule.get("meets_rule")
    if meets is None:
        meets = {">=": score >= rule["cutoff"], ">": score > rule["cutoff"], "<=": score <= rule["cutoff"],
                 "<": score < rule["cutoff"]}[op]
    return f"TMBRB {_number(score)} {op if meets else _NEGATION[op]} {float(rule['cutoff']):g}"


def reference_condition(rule: Dict) -> str:
    """The cut-off condition of the reference group of the ECOG-combined model: the rule NOT met (``TMBRB < 0.61``)."""
    return f"TMBRB {_NEGATION[_operator(rule)]} {float(rule['cutoff']):g}"


def risk_lines(result: Dict) -> List[Line]:
    """The OS and PFS groups, the ECOG status and, with ECOG, the relative hazard of each endpoint in words."""
    risk = result.get("risk") or {}
    score = float(result["score"])
    lines = []
    for ep in ("os", "pfs"):
        r = risk.get(ep)
        if not r:
            continue
        name, _event = _ENDPOINT[ep]
        hr = r.get("hr_of_rule")
        op = _operator(r)
        detail = (f"paper: hazard ratio {float(hr):.2f} for TMBRB {op} {float(r['cutoff']):g} vs "
                  f"{_NEGATION[op]} {float(r['cutoff']):g}") if hr is not None else ""
        lines.append(Line(ep, f"{name} risk group", f"{r['group']} risk: {condition(score, r)}", detail))
    note = _opposite_rules_note(risk)
    if note:
        lines.append(note)
    ecog = risk.get("ecog")
    lines.append(Line("ecog", "ECOG", "not given" if ecog is None else str(ecog),
                      "" if ecog is not None else "give it for the ECOG-combined hazard"))
    for ep, c in (risk.get("ecog_combined") or {}).items():
        if ep not in _ENDPOINT or ep not in risk or not isinstance(c, dict) or "relative_hazard" not in c:
            continue
        name, event = _ENDPOINT[ep]
        value = (f"{float(c['relative_hazard']):.2f} x the hazard of {event} of a patient with "
                 f"{reference_condition(risk[ep])} and ECOG 0")
        tmbrb_factor = float(c["tmbrb_hr"]) if risk[ep].get("meets_rule") and "tmbrb_hr" in c else 1.0
        detail = (f"this patient: {condition(score, risk[ep])} (x {tmbrb_factor:.2f}) and ECOG {ecog} "
                  f"(x {_number(c.get('ecog_hr'), '.2f')}^{ecog}); hazard ratios of the paper's two-variable Cox model")
        lines.append(Line(f"{ep}_ecog", f"{name} relative hazard", value, detail))
    return lines


def _other(group: str) -> str:
    return {"low": "high", "high": "low"}.get(group, group)


def _higher_score_group(rule: Dict) -> str:
    """The group a score above the cut-off falls in under this endpoint's rule."""
    group_if_met = rule["group"] if rule.get("meets_rule") else _other(rule["group"])
    return group_if_met if _operator(rule) in (">", ">=") else _other(group_if_met)


def _opposite_rules_note(risk: Dict) -> Optional[Line]:
    """When the OS and PFS groups differ, say why (the paper's two rules point in opposite directions)."""
    os_, pfs = risk.get("os"), risk.get("pfs")
    if not os_ or not pfs or os_.get("group") == pfs.get("group"):
        return None
    up_os, up_pfs = _higher_score_group(os_), _higher_score_group(pfs)
    if up_os == up_pfs:
        return Line("risk_note", "Why OS and PFS differ", "the score lies between the two rules' cut-offs")
    return Line("risk_note", "Why OS and PFS differ",
                f"the paper's two rules point in opposite directions: a higher TMBRB means {up_os} risk for "
                f"overall survival but {up_pfs} risk for progression-free survival")


def attention_text(attention: Dict) -> str:
    """``tumour 45%, ring (10 mm) 30%, elsewhere 25%`` (n/a where the map is empty)."""
    parts = []
    for k in ATTENTION_REGIONS:
        v = attention.get(k)
        label = f"ring ({float(attention['ring_width_mm']):g} mm)" if k == "ring" and attention.get("ring_width_mm") \
            else k
        parts.append(f"{label} {_number(100 * float(v), '.0f')}%" if v is not None else f"{label} n/a")
    return ", ".join(parts)


_MASK_SOURCE = {"given": "given", "proposed": "proposed from the seed",
                "proposed_edited": "proposed from the seed, then edited"}
MASK_UNCERTAIN = "tumour mask uncertain: review it"


def mask_line(result: Dict) -> Optional[Line]:
    """Where the tumour mask behind the attention shares comes from, and whether a reader should review it.

    None for a result written before the mask was recorded.

    >>> print(mask_line({"tumour_mask": {"source": "proposed", "uncertain": True,
    ...                                  "reasons": ["the mask reaches the search limit"]}}).text)
    Tumour mask: tumour mask uncertain: review it (proposed from the seed; the mask reaches the search limit)
    >>> print(mask_line({"tumour_mask": {"source": "given", "uncertain": False}}).text)
    Tumour mask: given
    """
    info = result.get("tumour_mask")
    if not isinstance(info, dict) or not info:
        return None
    source = _MASK_SOURCE.get(str(info.get("source")), str(info.get("source", "unknown")))
    if info.get("uncertain"):
        return Line("mask", "Tumour mask", MASK_UNCERTAIN, "; ".join([source] + [str(r) for r in
                                                                              info.get("reasons") or []]))
    return Line("mask", "Tumour mask", source)


def _triplet(v) -> str:
    return "(" + ", ".join(f"{float(x):.1f}" for x in v) + ")" if v else "?"


def model_lines(result: Dict) -> List[Line]:
    """Which model produced the result, whether it is a demo, and its notice."""
    model = result.get("model") or {}
    demo = bool(model.get("demo") or model.get("placeholder"))
    name = f"{model.get('name', '')} {model.get('version', '')}".strip() or "unknown"
    return [Line("model", "Model", name, str(model.get("model_id") or "")),
            Line("model_sha256", "Model sha256", str(model.get("sha256", ""))),
            Line("demo", "Demo model", "yes" if demo else "no",
                 "synthetic-phantom weights: the score means nothing for a patient" if demo else ""),
            Line("notice", "Notice", str(model.get("notice") or result.get("notice") or RESEARCH_USE_NOTICE))]


def result_lines(result: Dict, digits: int = 3) -> List[Line]:
    """Every line of a result, in reading order.

    Parameters
    ----------
    result : dict
        A result as ``CaseResult.to_dict()`` gives it or ``result.json`` holds it.
    digits : int
        Decimals of the score and its spread (3 for reading; a table that people copy numbers from may want 4).

    Returns
    -------
    list of Line
        score, spread over the shifted boxes (box-placement sensitivity), likeness to the training data (deep
        features; acquisition ranges), OS and PFS groups, ECOG (and with it the relative hazard per endpoint),
        attention shares, the tumour mask's source (and "uncertain: review it" when it is), CAM method, box, model,
        model sha256, demo flag, device, notice, then one line per warning.

    Examples
    --------
    (run with doctest's NORMALIZE_WHITESPACE: a long line is wrapped)

    >>> result = {"score": 0.3, "tta": {"mean": 0.31, "std": 0.02, "n": 9},
    ...           "risk": {"os": {"group": "high", "cutoff": 0.61, "operator": ">=", "meets_rule": False,
    ...                           "hr_of_rule": 0.54},
    ...                    "pfs": {"group": "low", "cutoff": 0.46, "operator": ">", "meets_rule": False,
    ...                            "hr_of_rule": 1.78},
    ...                    "ecog": 1,
    ...                    "ecog_combined": {"os": {"relative_hazard": 2.33, "tmbrb_hr": 0.54, "ecog_hr": 2.33}}},
    ...           "attention": {"tumour": 0.5, "ring": 0.3, "elsewhere": 0.2, "ring_width_mm": 10.0},
    ...           "model": {"name": "demo", "version": "1", "demo": True}, "warnings": ["check the box"]}
    >>> for line in result_lines(result)[:9]:
    ...     print(line.text)
    TMBRB score: 0.300 (model probability of High-TMB, >= 10 mut/Mb; uncalibrated: the risk cut-offs are on this
    scale)
    Calibrated probability: not available (the model bundle has no calibration)
    Score spread: mean 0.310 +/- 0.020 over 9 boxes (box-placement sensitivity: SD of the score when the box is
    shifted; the box and 8 shifted copies)
    Like the training data: not available (this result or its model has no summary of the training data)
    Acquisition vs training: not available (this result or its model has no training ranges)
    OS risk group: high risk: TMBRB 0.300 < 0.61 (paper: hazard ratio 0.54 for TMBRB >= 0.61 vs < 0.61)
    PFS risk group: low risk: TMBRB 0.300 <= 0.46 (paper: hazard ratio 1.78 for TMBRB > 0.46 vs <= 0.46)
    Why OS and PFS differ: the paper's two rules point in opposite directions: a higher TMBRB means low risk for
    overall survival but high risk for progression-free survival
    ECOG: 1
    >>> print(by_key(result_lines(result))["os_ecog"].value)
    2.33 x the hazard of death of a patient with TMBRB < 0.61 and ECOG 0
    >>> [line.value for line in result_lines(result) if line.key == "warning"]
    ['check the box']
    """
    tta = result.get("tta") or {}
    n = tta.get("n")
    shifts = f" (the box and {int(n) - 1} shifted copies)" if isinstance(n, int) and n > 1 else ""
    fmt = f".{int(digits)}f"
    lines = [Line("score", "TMBRB score", _number(result["score"], fmt),
                  "model probability of High-TMB, >= 10 mut/Mb; uncalibrated: the risk cut-offs are on this scale"),
             calibration_line(result, fmt), spread_line(result, fmt, shifts.strip(" ()"))]
    lines += trust_lines(result)
    lines += risk_lines(result)
    lines.append(Line("attention", "Attention", attention_text(result.get("attention") or {}),
                      "share of the class activation map's mass"))
    mask = mask_line(result)
    if mask is not None:
        lines.append(mask)
    cam = (result.get("model") or {}).get("cam") or {}
    if cam:
        lines.append(Line("cam", "Class activation map", str(cam.get("method", "")),
                          f"for High-TMB at {cam['target_layer']}" if cam.get("target_layer") else "for High-TMB"))
    box = result.get("box") or {}
    if box:
        lines.append(Line("box", "Box", ("proposed from the seed" if box.get("proposed") else "given")
                          + f"; RAS {_triplet(box.get('ras_min'))} to {_triplet(box.get('ras_max'))} mm"))
    lines += model_lines(result)[:3]
    if result.get("device"):
        lines.append(Line("device", "Device", str(result["device"])))
    lines.append(model_lines(result)[3])
    modified = (result.get("model") or {}).get("integrity", {}).get("message") if (result.get("model") or {}).get(
        "modified") else None  # the bundle's files fail their checksums (bundle.check_files): first among warnings
    lines += [Line("warning", f"Warning {i}", str(w))
              for i, w in enumerate(([modified] if modified else []) + list(result.get("warnings") or []), 1)]
    return lines


def calibration_line(result: Dict, fmt: str = ".3f") -> Line:
    """The score after the bundle's temperature scaling, or "not available".

    >>> cal = {"available": True, "probability": 0.62, "temperature": 1.8, "fitted_on": "validation"}
    >>> print(calibration_line({"calibration": cal}).text)
    Calibrated probability: 0.620 (temperature scaling, T = 1.80, fitted on the validation split; the risk groups
    use the uncalibrated score)
    """
    cal = result.get("calibration") or {}
    if not cal.get("available"):
        return Line("calibrated", "Calibrated probability", NOT_AVAILABLE,
                    str(cal.get("reason") or "the model bundle has no calibration"))
    return Line("calibrated", "Calibrated probability", _number(cal.get("probability"), fmt),
                f"temperature scaling, T = {_number(cal.get('temperature'), '.2f')}, fitted on the "
                f"{cal.get('fitted_on') or 'validation'} split; the risk groups use the uncalibrated score")


def spread_line(result: Dict, fmt: str = ".3f", shifts: str = "") -> Line:
    """The score's spread over the shifted boxes, said as what it is: sensitivity to the box's placement.

    >>> r = {"tta": {"mean": 0.5, "std": 0.09, "n": 9}, "box_placement": {"level": 0.05, "flag": True}}
    >>> print(spread_line(r).text)
    Score spread: mean 0.500 +/- 0.090 over 9 boxes: sensitive to the box's placement (above 0.050) (box-placement
    sensitivity: SD of the score when the box is shifted)
    """
    tta = result.get("tta") or {}
    n = tta.get("n")
    value = f"mean {_number(tta.get('mean'), fmt)} +/- {_number(tta.get('std'), fmt)} over " \
            f"{n if n is not None else '?'} boxes"
    placement = result.get("box_placement") or {}
    if placement.get("flag") is True:
        value += f": sensitive to the box's placement (above {_number(placement.get('level'))})"
    elif placement.get("flag") is False:
        value += f": within the bundle's level ({_number(placement.get('level'))})"
    detail = "box-placement sensitivity: SD of the score when the box is shifted" + (f"; {shifts}" if shifts else "")
    return Line("spread", "Score spread", value, detail)


def trust_lines(result: Dict) -> List[Line]:
    """Whether the case is like the model's training data: deep-feature distance (``ood``) and acquisition ranges.

    A result without the checks (an older result.json, or a bundle without the training summary) says
    "not available", never that the case is within the training data.

    >>> [line.value for line in trust_lines({})]
    ['not available', 'not available']
    >>> ood = {"available": True, "distance": 31.2, "threshold": 12.5, "flag": True, "quantile": 0.95}
    >>> print(trust_lines({"ood": ood})[0].text)
    Like the training data: unlike the training data: interpret with care (deep-feature distance 31.2 > threshold 12.5,
    the validation cases' 95th percentile)
    """
    ood = result.get("ood") or {}
    if not ood.get("available"):
        lines = [Line("ood", "Like the training data", NOT_AVAILABLE,
                      str(ood.get("reason") or "this result or its model has no summary of the training data"))]
    else:
        pct = f"the validation cases' {100 * float(ood.get('quantile', 0.95)):.0f}th percentile"
        flagged = bool(ood.get("flag"))
        lines = [Line("ood", "Like the training data",
                      "unlike the training data: interpret with care" if flagged
                      else "within the training data's range",
                      f"deep-feature distance {_number(ood.get('distance'), '.1f')} {'>' if flagged else '<='} "
                      f"threshold {_number(ood.get('threshold'), '.1f')}, {pct}")]
    acq = result.get("acquisition") or {}
    if not acq.get("available"):
        lines.append(Line("acquisition", "Acquisition vs training", NOT_AVAILABLE,
                          str(acq.get("reason") or "this result or its model has no training ranges")))
    elif acq.get("flag"):
        lines.append(Line("acquisition", "Acquisition vs training", "outside the training data's ranges",
                          outside_text(acq.get("outside") or [])))
    else:
        lines.append(Line("acquisition", "Acquisition vs training", "within the training data's ranges",
                          "slice thickness, pixel spacing, crop HU, box size, field of view"))
    return lines


def select(lines: Iterable[Line], keys: Sequence[str]) -> List[Line]:
    """The lines with these keys, in the order of ``keys`` (a key may match several lines, e.g. "warning")."""
    lines = list(lines)
    return [line for k in keys for line in lines if line.key == k]


def by_key(lines: Iterable[Line]) -> Dict[str, Line]:
    """{key: line} for the keys that occur once (warnings are left out; take them with :func:`select`)."""
    return {line.key: line for line in lines if line.key != "warning"}


def as_text(lines: Iterable[Line], keys: Optional[Sequence[str]] = None) -> str:
    """The lines (or those with ``keys``) as plain text, one per line."""
    chosen = select(lines, keys) if keys is not None else list(lines)
    return "\n".join(line.text for line in chosen)
