"""Small base class for result dataclasses: readable print, JSON-ready dict, save."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd


def jsonable(obj: Any) -> Any:
    """Convert numpy/pandas/dataclass values into plain JSON types (NaN/inf -> None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, pd.DataFrame):
        return [jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, pd.Series):
        return jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if (math.isnan(f) or math.isinf(f)) else f
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


class Result:
    """Mixin for result dataclasses."""

    def to_dict(self) -> dict:
        return jsonable(self)

    def save_json(self, path: Union[str, Path]) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return p

    def _summary_lines(self) -> list:
        lines = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name.startswith("_"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, (pd.DataFrame, np.ndarray)) or (isinstance(v, (list, dict)) and len(v) > 6):
                continue
            if isinstance(v, float):
                v = f"{v:.6g}"
            lines.append(f"  {f.name}: {v}")
        return lines

    def __str__(self) -> str:
        return type(self).__name__ + "\n" + "\n".join(self._summary_lines())
