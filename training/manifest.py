"""The training manifest: one row per case (CT, seed, box, TMB value or label, split).

CSV columns (names are case-insensitive; paths may be relative to the manifest's folder):

    case      an identifier, unique
    ct        CT file (NRRD/NIfTI/MHA) or DICOM folder
    seed      "x,y,z" in LPS mm            (or seed_x/_y/_z, seed_lps_x/_y/_z; or seed_lps)
    box       "xmin,ymin,zmin,xmax,ymax,zmax" in LPS mm (or box_xmin ... box_zmax, box_min_x ... box_max_z)
    tmb       mutations/Mb (float)          and/or
    label     1/0, High/Low, true/false     (derived from tmb >= threshold when absent)
    split     train / val / test
    tumour    optional tumour mask (for attention shares)
    signal    optional mask of the region that carries the known signal (phantoms: CAM faithfulness)

RAS coordinates can be given instead as seed_ras / box_ras (converted to LPS here).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from TMBRBLib.errors import TMBRBInputError
from TMBRBLib.geometry import Box, ras_to_lps

SPLITS = ("train", "val", "test")
SIGNAL_KINDS = {"peritumoral", "core", "none"}  # a phantom manifest's 'signal' column may name the kind
SEED_PARTS = (("seed_x", "seed_y", "seed_z"), ("seed_lps_x", "seed_lps_y", "seed_lps_z"))
BOX_PARTS = (("box_xmin", "box_ymin", "box_zmin", "box_xmax", "box_ymax", "box_zmax"),
             ("box_min_x", "box_min_y", "box_min_z", "box_max_x", "box_max_y", "box_max_z"))
SPLIT_ALIASES = {"training": "train", "tr": "train", "valid": "val", "validation": "val", "va": "val",
                 "testing": "test", "te": "test"}
TRUE_LABELS = {"1", "high", "high-tmb", "high_tmb", "true", "yes", "pos", "positive"}
FALSE_LABELS = {"0", "low", "low-tmb", "low_tmb", "false", "no", "neg", "negative"}


@dataclass
class Case:
    case_id: str
    ct: Path
    seed_lps: Tuple[float, float, float]
    box: Box
    label: int
    split: str
    tmb: Optional[float] = None
    tumour: Optional[Path] = None
    signal: Optional[Path] = None
    extra: Dict[str, str] = field(default_factory=dict)


def _numbers(text: str, n: int, what: str, where: str) -> List[float]:
    try:
        vals = [float(v) for v in str(text).replace(";", ",").replace(" ", ",").split(",") if v != ""]
    except ValueError:
        raise TMBRBInputError(f"{where}: {what} '{text}' is not {n} numbers.",
                              f"Write it as {n} comma-separated numbers in mm.") from None
    if len(vals) != n or not np.all(np.isfinite(vals)):
        raise TMBRBInputError(f"{where}: {what} '{text}' must be {n} finite numbers (got {len(vals)}).",
                              f"Write it as {n} comma-separated numbers in mm.")
    return vals


def _get_vector(row: Dict[str, str], name: str, n: int, parts: Sequence[Sequence[str]], where: str
                ) -> Optional[List[float]]:
    """A vector from one column (name, name_lps, name_ras) or from n part columns (e.g. name_x, name_y, name_z)."""
    for col, ras in ((name, False), (f"{name}_lps", False), (f"{name}_ras", True)):
        if row.get(col, "").strip():
            v = _numbers(row[col], n, col, where)
            if ras:
                v = list(ras_to_lps(v[:3])) + (list(ras_to_lps(v[3:])) if n == 6 else [])
            return v
    for cols in parts:
        if all(row.get(c, "").strip() for c in cols):
            return _numbers(",".join(row[c] for c in cols), n, "/".join(cols), where)
    return None


def _label(row: Dict[str, str], tmb: Optional[float], threshold: float, where: str) -> int:
    raw = row.get("label", row.get("high_tmb", "")).strip().lower()
    if raw:
        if raw in TRUE_LABELS:
            return 1
        if raw in FALSE_LABELS:
            return 0
        raise TMBRBInputError(f"{where}: label '{raw}' is not understood.",
                              "Use 1/0, High/Low or true/false (High-TMB = 1).")
    if tmb is None:
        raise TMBRBInputError(f"{where}: neither a TMB value nor a label is given.",
                              "Fill the 'tmb' column (mut/Mb) or the 'label' column (1 = High-TMB).")
    return int(tmb >= threshold)


def read_manifest(path, tmb_threshold: float = 10.0, check_files: bool = True) -> List[Case]:
    """Read and check a manifest. Raises TMBRBInputError naming the row and the problem."""
    p = Path(path)
    if not p.is_file():
        raise TMBRBInputError(f"The manifest '{p}' does not exist.",
                              "Give the CSV file that lists the cases (see docs/training.md).")
    base = p.resolve().parent
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise TMBRBInputError(f"The manifest '{p}' is empty.", "It needs a header row and one row per case.")
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in reader]
    header = {(k or "").strip().lower() for k in reader.fieldnames}
    missing = [c for c in ("ct", "split") if c not in header]
    if not any(c in header for c in ("case", "case_id", "id")):
        missing.insert(0, "case")
    if missing:
        raise TMBRBInputError(f"The manifest '{p}' lacks the column(s) {missing} (it has {sorted(header)}).",
                              "See docs/training.md for the columns a manifest needs.")
    if not rows:
        raise TMBRBInputError(f"The manifest '{p}' has a header but no cases.", "Add one row per case.")

    def resolve(v: str) -> Path:
        q = Path(v).expanduser()
        return q if q.is_absolute() else (base / q)

    cases: List[Case] = []
    seen = set()
    for i, row in enumerate(rows, start=2):
        cid = row.get("case") or row.get("case_id") or row.get("id") or ""
        where = f"manifest '{p.name}' line {i} (case '{cid}')"
        if not cid:
            raise TMBRBInputError(f"manifest '{p.name}' line {i}: the case identifier is empty.", "Fill the 'case' column.")
        if cid in seen:
            raise TMBRBInputError(f"{where}: the case identifier is used twice.", "Give every case its own identifier.")
        seen.add(cid)
        split = SPLIT_ALIASES.get(row.get("split", "").lower(), row.get("split", "").lower())
        if split not in SPLITS:
            raise TMBRBInputError(f"{where}: split '{row.get('split')}' is not one of {SPLITS}.",
                                  "Put each case into train, val or test.")
        ct = resolve(row["ct"]) if row.get("ct") else None
        if ct is None:
            raise TMBRBInputError(f"{where}: the CT path is empty.", "Fill the 'ct' column.")
        if check_files and not ct.exists():
            raise TMBRBInputError(f"{where}: the CT '{ct}' does not exist.",
                                  "Fix the path (relative paths are read from the manifest's folder).")
        seed = _get_vector(row, "seed", 3, SEED_PARTS, where)
        box = _get_vector(row, "box", 6, BOX_PARTS, where)
        if box is None:
            raise TMBRBInputError(f"{where}: no bounding box.",
                                  "Give 'box' as xmin,ymin,zmin,xmax,ymax,zmax in LPS mm (or box_ras in RAS).")
        try:
            b = Box.from_corners(box[:3], box[3:])
        except TMBRBInputError as e:
            raise TMBRBInputError(f"{where}: {e.problem}", e.hint) from None
        if seed is None:
            seed = list(b.center)
        tmb_txt = row.get("tmb", "")
        tmb = None
        if tmb_txt:
            try:
                tmb = float(tmb_txt)
            except ValueError:
                raise TMBRBInputError(f"{where}: TMB '{tmb_txt}' is not a number.",
                                      "Give mutations per megabase, e.g. 12.5.") from None
            if not np.isfinite(tmb) or tmb < 0:
                raise TMBRBInputError(f"{where}: TMB {tmb} must be a finite non-negative number.", "Fix the value.")
        label = _label(row, tmb, tmb_threshold, where)
        opt = {}
        for key, aliases in (("tumour", ("tumour", "tumor", "tumour_mask", "tumor_mask", "mask")),
                             ("signal", ("signal_mask", "signal"))):
            val = next((row[a] for a in aliases if row.get(a) and row[a].lower() not in SIGNAL_KINDS), "")
            opt[key] = resolve(val) if val else None
            if check_files and opt[key] is not None and not opt[key].exists():
                raise TMBRBInputError(f"{where}: the {key} mask '{opt[key]}' does not exist.", "Fix the path.")
        cases.append(Case(cid, ct, tuple(float(v) for v in seed), b, label, split, tmb, opt["tumour"],
                          opt["signal"], row))
    return cases


def select(cases: Sequence[Case], split: str) -> List[Case]:
    return [c for c in cases if c.split == split]


def check_for_training(cases: Sequence[Case]) -> Tuple[List[Case], List[Case]]:
    """The train and val cases, checked: both present, both classes in each."""
    train, val = select(cases, "train"), select(cases, "val")
    for name, part in (("train", train), ("val", val)):
        if not part:
            raise TMBRBInputError(f"The manifest has no '{name}' cases.",
                                  "Mark some cases split=train and some split=val (early stopping needs val).")
        labels = {c.label for c in part}
        if labels != {0, 1}:
            raise TMBRBInputError(
                f"The '{name}' split holds only {'High' if 1 in labels else 'Low'}-TMB cases; it needs both classes "
                "(training needs both; validation AUC is undefined otherwise).",
                "Reassign cases so that each split has High- and Low-TMB cases.")
    return train, val
