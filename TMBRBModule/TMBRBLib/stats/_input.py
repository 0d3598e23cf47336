"""Input checking shared by the statistics functions: columns, numbers, NaN rows, labels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from .errors import TMBRBStatsInputError

ArrayLike = Union[Sequence[float], np.ndarray, pd.Series]


def read_csv(path: Union[str, Path]) -> pd.DataFrame:
    """Read a CSV file with a clear message when it is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise TMBRBStatsInputError(f"CSV file not found: {p}. Check the path given on the command line.")
    try:
        df = pd.read_csv(p)
    except Exception as exc:  # pandas raises several types for malformed files
        raise TMBRBStatsInputError(f"Could not read {p} as CSV ({str(exc).strip()}). Save it as comma-separated text "
                                   "with a header row.") from exc
    if df.shape[0] == 0:
        raise TMBRBStatsInputError(f"{p} has a header but no data rows. Add the cohort rows and try again.")
    return df


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str = "input") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TMBRBStatsInputError(
            f"{what}: missing column(s) {missing}; the table has columns {list(df.columns)}. "
            "Name the right columns with the command-line flags (e.g. --score, --label, --time, --event)."
        )


def require_unique(df: pd.DataFrame, column: str, what: str = "input") -> None:
    """Refuse a table where an id appears on several rows (a patient would count twice).

    >>> require_unique(pd.DataFrame({"case": ["a", "b", "a"]}), "case", "clinical CSV")
    Traceback (most recent call last):
        ...
    TMBRBLib.stats.errors.TMBRBStatsInputError: clinical CSV: 1 case id(s) appear on several rows ('a' 2 times); ...
    """
    counts = df[column].astype(str).str.strip().value_counts()
    dup = counts[counts > 1]
    if len(dup):
        shown = ", ".join(f"{k!r} {v} times" for k, v in list(dup.items())[:5]) + (", ..." if len(dup) > 5 else "")
        raise TMBRBStatsInputError(
            f"{what}: {len(dup)} {column} id(s) appear on several rows ({shown}); each patient must appear once, "
            "or they would be counted twice. Keep one row per patient.")


def to_numeric(values: ArrayLike, name: str) -> np.ndarray:
    """Convert to float; non-numeric entries (other than empty/NaN) are an error that lists examples."""
    s = pd.Series(values)
    if s.dtype == bool or (s.dtype.kind in "iuf"):
        return s.to_numpy(dtype=float, na_value=np.nan)  # already numbers: nothing to check (no string work)
    num = pd.to_numeric(s, errors="coerce")
    bad = (num.isna() & s.notna()).to_numpy()
    if bad.any():  # look at the text only where the conversion failed
        bad[bad] = (s[bad].astype(str).str.strip() != "").to_numpy(dtype=bool)
    if bad.any():
        examples = list(dict.fromkeys(s[bad].astype(str).tolist()))[:5]
        raise TMBRBStatsInputError(
            f"column '{name}' must be numeric but has non-numeric value(s) {examples} "
            f"({int(bad.sum())} row(s)). Fix or remove these entries (empty cells are treated as missing)."
        )
    return num.to_numpy(dtype=float)


def drop_nan_rows(columns: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], int]:
    """Drop rows where any column is NaN; return the cleaned columns and the number of rows dropped."""
    if not columns:
        return columns, 0
    n = len(next(iter(columns.values())))
    for k, v in columns.items():
        if len(v) != n:
            raise TMBRBStatsInputError(f"column '{k}' has {len(v)} values but others have {n}; give arrays of equal length.")
    keep = np.ones(n, dtype=bool)
    for v in columns.values():
        if v.dtype.kind == "f":
            keep &= ~np.isnan(v)
        elif v.dtype == object:
            keep &= ~pd.isna(v)
    out = {k: v[keep] for k, v in columns.items()}
    return out, int(n - keep.sum())


@dataclass
class BinaryLabels:
    y: np.ndarray  # 1 = case, 0 = control
    case_level: object
    control_level: object


def binarize_labels(values: ArrayLike, name: str = "label", positive: Optional[object] = None) -> BinaryLabels:
    """Turn a two-valued column into 0/1 (1 = case).

    Like R's factor()/pROC: without ``positive`` the sorted levels are (control, case), so 0/1 gives 1 = case
    and "Good"/"Poor" gives "Poor" = case.
    """
    arr = np.asarray(values, dtype=object)
    s = pd.Series(arr)
    if s.isna().any():
        raise TMBRBStatsInputError(f"column '{name}' has missing values; drop those rows first.")
    num = pd.to_numeric(s, errors="coerce")
    if not num.isna().any():
        vals = num.to_numpy(dtype=float)
    else:
        vals = s.astype(str).to_numpy()
    levels = sorted(set(vals.tolist()))
    if len(levels) < 2:
        raise TMBRBStatsInputError(
            f"column '{name}' has a single class ({levels[0]!r} for all {len(vals)} rows); ROC/AUC needs both cases "
            "and controls. Check the label column and the cut-off used to make it."
        )
    if len(levels) > 2:
        raise TMBRBStatsInputError(
            f"column '{name}' must have exactly two classes but has {len(levels)} ({levels[:6]}...). "
            "Binarise it first (e.g. TMB >= 10) or pick the label column."
        )
    if positive is None:
        case = levels[1]
    else:
        cand = [lv for lv in levels if str(lv) == str(positive) or (isinstance(lv, float) and _float_eq(lv, positive))]
        if not cand:
            raise TMBRBStatsInputError(f"positive class {positive!r} is not one of the values {levels} of column '{name}'.")
        case = cand[0]
    control = levels[0] if case == levels[1] else levels[1]
    y = (vals == case).astype(int)
    return BinaryLabels(y=y, case_level=_plain(case), control_level=_plain(control))


def _float_eq(a: float, b: object) -> bool:
    try:
        return float(a) == float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _plain(v: object) -> object:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def check_event(event: np.ndarray, name: str = "event") -> np.ndarray:
    vals = set(np.unique(event).tolist())
    if not vals <= {0.0, 1.0}:
        bad = sorted(vals - {0.0, 1.0})[:5]
        raise TMBRBStatsInputError(
            f"column '{name}' must be 0 (censored) or 1 (event) but has value(s) {bad}. Recode it (e.g. R's lung status 1/2 -> 0/1)."
        )
    return event.astype(int)


def check_time(time: np.ndarray, name: str = "time") -> np.ndarray:
    if np.any(time < 0):
        raise TMBRBStatsInputError(f"column '{name}' has negative survival times; times must be >= 0.")
    return time


def require_events(event: np.ndarray, what: str) -> None:
    if event.sum() == 0:
        raise TMBRBStatsInputError(
            f"{what}: all {len(event)} observations are censored (no events), so survival cannot be estimated or compared. "
            "Check the event column coding (1 = event) or use a cohort with events."
        )
