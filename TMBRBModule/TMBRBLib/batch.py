"""Many cases from a manifest CSV: resumable (finished cases are skipped), one failure never stops the others."""

from __future__ import annotations

import csv
import json
import re
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union


from .errors import TMBRBError, TMBRBInputError
from .geometry import Box, parse_box, parse_triplet, ras_to_lps

SUMMARY_FIELDS = ["case_id", "status", "score", "tta_mean", "tta_std", "os_group", "pfs_group",
                  "ecog", "os_relative_hazard", "pfs_relative_hazard", "attention_tumour", "attention_ring",
                  "n_warnings", "seconds", "error", "output_dir"]


def _get(row: Dict[str, str], *names: str) -> Optional[str]:
    for n in names:
        v = row.get(n)
        if v is not None and str(v).strip() != "":
            return str(v).strip()
    return None


def _triplet_cols(row, prefix) -> Optional[tuple]:
    vals = [_get(row, f"{prefix}_{a}") for a in "xyz"]
    if all(v is not None for v in vals):
        return parse_triplet(",".join(vals), prefix)
    return None


def row_to_case(row: Dict[str, str], base: Path, number: int) -> Dict:
    """Interpret one manifest row (paths relative to the manifest's folder)."""
    case_id = _get(row, "case_id", "case", "id") or f"case{number:04d}"
    case_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", case_id)
    ct = _get(row, "ct", "ct_path", "image")
    if ct is None:
        raise TMBRBInputError("The row has no CT path.", "Fill the 'ct' column.")
    seed = None
    if _get(row, "seed_lps"):
        seed = parse_triplet(_get(row, "seed_lps"), "seed_lps")
    elif _get(row, "seed_ras"):
        seed = ras_to_lps(parse_triplet(_get(row, "seed_ras"), "seed_ras"))
    elif _triplet_cols(row, "seed_lps"):
        seed = _triplet_cols(row, "seed_lps")
    elif _triplet_cols(row, "seed_ras"):
        seed = ras_to_lps(_triplet_cols(row, "seed_ras"))
    if seed is None:
        raise TMBRBInputError("The row has no seed.", "Fill 'seed_ras' or 'seed_lps' with x,y,z in mm.")
    box = None
    if _get(row, "box_lps"):
        box = Box.from_corners(*parse_box(_get(row, "box_lps"), "box_lps"))
    elif _get(row, "box_ras"):
        box = Box.from_ras_corners(*parse_box(_get(row, "box_ras"), "box_ras"))
    elif _triplet_cols(row, "box_lps_min") and _triplet_cols(row, "box_lps_max"):
        box = Box.from_corners(_triplet_cols(row, "box_lps_min"), _triplet_cols(row, "box_lps_max"))
    mask = _get(row, "mask", "segmentation", "tumour_mask")

    def resolve(p):
        q = Path(p)
        return q if q.is_absolute() else base / q
    return {"case_id": case_id, "ct": resolve(ct), "seed_lps": seed, "box": box,
            "mask": resolve(mask) if mask else None, "ecog": _get(row, "ecog", "ecog_ps")}


def summary_row(case_id: str, result: Dict, status: str, seconds: float, out: Path) -> Dict:
    ec = result["risk"].get("ecog_combined") or {}
    return {"case_id": case_id, "status": status, "score": result["score"], "tta_mean": result["tta"]["mean"],
            "tta_std": result["tta"]["std"], "os_group": result["risk"]["os"]["group"],
            "pfs_group": result["risk"]["pfs"]["group"], "ecog": result["risk"].get("ecog"),
            "os_relative_hazard": ec.get("os", {}).get("relative_hazard"),
            "pfs_relative_hazard": ec.get("pfs", {}).get("relative_hazard"),
            "attention_tumour": result["attention"]["tumour"], "attention_ring": result["attention"]["ring"],
            "n_warnings": len(result.get("warnings", [])), "seconds": round(seconds, 2), "error": "",
            "output_dir": str(out)}


def run_batch(manifest: Union[str, Path], out_dir: Union[str, Path], *, bundle=None, device: str = "auto",
              n_shifts: Optional[int] = None, pictures: bool = True, progress_bar: bool = True,
              on_case: Optional[Callable[[int, int, Dict], None]] = None) -> Path:
    """Score every row of the manifest into out_dir/<case_id>/ and write out_dir/summary.csv. Returns its path."""
    from .bundle import Bundle, load_bundle
    from .io import read_ct, read_mask
    from .outputs import write_outputs
    from .pipeline import Scorer, score_case

    manifest = Path(manifest)
    if not manifest.is_file():
        raise TMBRBInputError(f"The manifest '{manifest}' does not exist.", "Give a CSV file with one row per case.")
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise TMBRBInputError(f"The manifest '{manifest}' has no rows.", "Add one row per case (columns ct, seed_ras...).")
    if "ct" not in rows[0] and "ct_path" not in rows[0] and "image" not in rows[0]:
        raise TMBRBInputError(f"The manifest '{manifest}' has no 'ct' column (columns: {list(rows[0])}).",
                              "Name the CT path column 'ct'.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    scorer = Scorer(b, device)
    summary: List[Dict] = []
    seen = set()
    iterator = enumerate(rows, 1)
    bar = None
    if progress_bar:
        from tqdm import tqdm
        bar = tqdm(total=len(rows), desc="TMBRB batch", unit="case")
    for number, row in iterator:
        t0 = time.perf_counter()
        case_id = _get(row, "case_id", "case", "id") or f"case{number:04d}"
        try:
            case = row_to_case(row, manifest.parent, number)
            case_id = case["case_id"]
            if case_id in seen:
                raise TMBRBInputError(f"The case id '{case_id}' appears twice in the manifest.", "Make case ids unique.")
            seen.add(case_id)
            case_out = out_dir / case_id
            done = case_out / "result.json"
            if done.is_file():
                res = json.loads(done.read_text(encoding="utf-8"))
                summary.append(summary_row(case_id, res, "done-before", 0.0, case_out))
            else:
                ct, warn = read_ct(case["ct"])
                mask = read_mask(case["mask"], ct) if case["mask"] else None
                r = score_case(ct, case["seed_lps"], case["box"], mask, case["ecog"], n_shifts=n_shifts,
                               scorer=scorer)
                r.warnings[:0] = [w for w in warn if w not in r.warnings]
                r.inputs.update({"ct_path": str(Path(case["ct"]).resolve()), "case_id": case_id,
                                 "mask_path": str(Path(case["mask"]).resolve()) if case["mask"] else None})
                write_outputs(r, case_out, ct=ct, pictures=pictures)
                summary.append(summary_row(case_id, r.to_dict(), "ok", time.perf_counter() - t0, case_out))
        except TMBRBError as e:
            summary.append({**{k: "" for k in SUMMARY_FIELDS}, "case_id": case_id, "status": "failed",
                            "error": str(e), "seconds": round(time.perf_counter() - t0, 2)})
        except Exception as e:  # noqa: BLE001 - one broken case must not stop the batch; the error is recorded
            summary.append({**{k: "" for k in SUMMARY_FIELDS}, "case_id": case_id, "status": "failed",
                            "error": f"internal error: {type(e).__name__}: {e}",
                            "seconds": round(time.perf_counter() - t0, 2)})
            (out_dir / f"{case_id}.error.log").write_text(traceback.format_exc(), encoding="utf-8")
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{case_id}: {summary[-1]['status']}")
        if on_case is not None:
            on_case(number, len(rows), summary[-1])
        _write_summary(out_dir / "summary.csv", summary)
    if bar is not None:
        bar.close()
    return out_dir / "summary.csv"


def _write_summary(path: Path, rows: List[Dict]) -> None:
    tmp = path.with_suffix(".csv.part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in SUMMARY_FIELDS})
    tmp.replace(path)
