"""Many cases from a manifest CSV: resumable, one failure never stops the others, one or many processes.

A case counts as done when its ``result.json`` was written for the same inputs (``inputs_key``: CT and mask file
identity, seed, box, ECOG, model, shift count, ring width); otherwise it is scored again and its folder replaced
whole. Under ``torchrun`` (or any launcher that sets RANK, WORLD_SIZE and LOCAL_RANK) each process scores its share of
the manifest and process 0 merges the partial summaries through files in the output folder (docs/engine.md, "Batch").
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union


from .errors import TMBRBCancelled, TMBRBError, TMBRBInputError, csv_cell
from .geometry import Box, parse_box, parse_triplet, ras_to_lps

SUMMARY_FIELDS = ["row", "case_id", "status", "score", "tta_mean", "tta_std", "os_group", "pfs_group",
                  "ecog", "os_relative_hazard", "pfs_relative_hazard", "attention_tumour", "attention_ring",
                  "n_warnings", "seconds", "error", "note", "inputs_key", "output_dir"]
INPUTS_KEY_VERSION = 2  # 2: files named by name + path sha256, not the path
INPUT_LABELS = {"key_version": "the inputs key's format", "ct": "CT file", "seed_lps": "seed", "box_lps": "box",
                "mask": "mask file", "ecog": "ECOG", "model": "model", "n_shifts": "shift count",
                "ring_width_mm": "ring width"}
DEFAULT_WAIT_S = 1800.0
DICOM_DIR = "dicom"  # a case's DICOM objects (the manifest's dicom_out column, or tmbrb batch --dicom-out)
_YES, _NO = ("1", "yes", "y", "true"), ("0", "no", "n", "false")


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


MAX_CASE_ID = 120  # characters of a case folder's name (file systems allow 255 bytes)


def _case_id(row: Dict[str, str], number: int) -> str:
    """The row's case id as a safe folder name (no path separators, no leading dot, never '.' or '..')."""
    raw = _get(row, "case_id", "case", "id") or ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).lstrip(".") or f"case{number:04d}"


def summary_names(world: int = 1) -> List[str]:
    """The files a batch writes beside the case folders (summary.csv and each process's partial summary)."""
    return ["summary.csv", "summary.csv.part"] + [f"summary.rank{k}.{ext}" for k in range(max(1, world))
                                                  for ext in ("csv", "json", "csv.part", "json.part")]


def reserved_case_id(case_id: str) -> Optional[str]:
    """Why a (safe) case id cannot be a case folder's name, or None: the batch's own files, over-long names.

    >>> reserved_case_id("summary.csv") is not None, reserved_case_id("x.error.log") is not None
    (True, True)
    >>> reserved_case_id("LUNG1-001") is None
    True
    """
    low = case_id.lower()
    if low.startswith("summary") and low.endswith((".csv", ".json", ".part")) or low.endswith(".error.log"):
        return (f"The case id '{case_id}' is the name of a file the batch writes in the output folder "
                "(summary*.csv/json, <case>.error.log); rename the case.")
    if len(case_id) > MAX_CASE_ID:
        return f"The case id '{case_id[:40]}...' is {len(case_id)} characters long; use at most {MAX_CASE_ID}."
    return None


def _inputs_inside(case: Dict, case_out: Path) -> Optional[str]:
    """A message when the case's CT or mask lies in its own output folder (replacing the folder would delete it)."""
    root = case_out.resolve()
    for key in ("ct", "mask"):
        p = case.get(key)
        if p and (Path(p).resolve() == root or root in Path(p).resolve().parents):
            return (f"The case's {key} '{p}' lies in its output folder '{case_out}', which the batch replaces. "
                    "Keep inputs outside --out.")
    return None


def row_to_case(row: Dict[str, str], base: Path, number: int) -> Dict:
    """Interpret one manifest row (paths relative to the manifest's folder).

    Parameters
    ----------
    row : dict
        The CSV row (columns ct, case_id, seed_ras/seed_lps, box_ras/box_lps, mask, ecog).
    base : Path
        The manifest's folder.
    number : int
        The row's number (1-based), for a default case id.

    Returns
    -------
    dict
        case_id, ct (Path), seed_lps, box (Box or None), mask (Path or None), ecog (str or None), dicom_out
        (bool: the column says yes).

    Raises
    ------
    TMBRBInputError
        No CT path, no seed, or malformed coordinates.
    """
    case_id = _case_id(row, number)
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
    dicom_out = (_get(row, "dicom_out") or "").strip().lower()
    if dicom_out not in _YES + _NO + ("",):
        raise TMBRBInputError(f"The row's dicom_out is '{_get(row, 'dicom_out')}'.",
                              "Write yes (DICOM objects for a DICOM series) or no (or leave it empty).")

    def resolve(p):  # absolute: a message naming it is shown relative to the output folder (outputs.relative_path)
        q = Path(p)
        return (q if q.is_absolute() else base / q).absolute()
    return {"case_id": case_id, "ct": resolve(ct), "seed_lps": seed, "box": box,
            "mask": resolve(mask) if mask else None, "ecog": _get(row, "ecog", "ecog_ps"),
            "dicom_out": dicom_out in _YES}


# ------------------------------------------------------------------------------------------------ inputs key (resume)
def file_identity(path: Union[str, Path]) -> Dict:
    """A file's identity for resuming: name, sha256 of its absolute path, size and modification time (ns).

    The absolute path itself is not recorded (result.json may be shared; folder names may hold patient names): its
    sha256 tells a moved or other file apart. A DICOM folder's identity is its name, path sha256, number of files and
    a sha256 over the sorted (name, size, mtime_ns) of the files directly inside it. A missing path gives
    ``{"name": ..., "path_sha256": ..., "missing": True}`` (reading it then fails with the usual message).

    Parameters
    ----------
    path : str or Path
        The CT or mask (file or DICOM folder).

    Returns
    -------
    dict
        JSON-ready; equal for the same, untouched file.
    """
    from .outputs import path_sha256

    p = Path(path).resolve()
    where = {"name": p.name, "path_sha256": path_sha256(p)}
    if p.is_dir():
        listing = sorted((c.name, c.stat().st_size, c.stat().st_mtime_ns) for c in p.iterdir() if c.is_file())
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        return {**where, "files": len(listing), "listing_sha256": digest}
    if not p.exists():
        return {**where, "missing": True}
    st = p.stat()
    return {**where, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _ecog_for_key(ecog) -> object:
    from .risk import check_ecog
    try:
        return check_ecog(ecog)
    except TMBRBInputError:
        return str(ecog)  # scoring will refuse it with its message; the key still tells it apart


def case_inputs(case: Dict, bundle, n_shifts: Optional[int] = None, ring_width_mm: Optional[float] = None) -> Dict:
    """Everything a case's result depends on, as canonical JSON-ready values (what ``inputs_key`` hashes).

    Parameters
    ----------
    case : dict
        A case from :func:`row_to_case`.
    bundle : Bundle
        The loaded model bundle (its weights' and metadata's sha256 count).
    n_shifts, ring_width_mm : optional
        As given to the batch; None means the bundle's value, which is what is recorded.

    Returns
    -------
    dict
        key_version, ct, seed_lps, box_lps, mask, ecog, model, n_shifts, ring_width_mm.
    """
    from .crop import n_shifts_of
    box = case["box"]
    info = bundle.info()
    return {"key_version": INPUTS_KEY_VERSION, "ct": file_identity(case["ct"]),
            "seed_lps": [round(float(v), 6) for v in case["seed_lps"]],
            "box_lps": None if box is None else [round(float(v), 6) for v in (*box.min, *box.max)],
            "mask": file_identity(case["mask"]) if case["mask"] else None, "ecog": _ecog_for_key(case["ecog"]),
            "model": {"sha256": info["sha256"], "metadata_sha256": info["metadata_sha256"]},
            "n_shifts": n_shifts_of(bundle.tmbrb.get("tta", {}), n_shifts),
            "ring_width_mm": float(bundle.tmbrb.get("regions", {}).get("ring_width_mm", 10.0)
                                   if ring_width_mm is None else ring_width_mm)}


def inputs_key(inputs: Dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of :func:`case_inputs`."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def resume_decision(case_out: Path, key: str, inputs: Dict) -> Tuple[Optional[Dict], str]:
    """(the earlier result when it was written for these inputs, else None; why the case is scored again).

    Parameters
    ----------
    case_out : Path
        The case's folder.
    key, inputs : str, dict
        This run's :func:`inputs_key` and :func:`case_inputs`.

    Returns
    -------
    (dict or None, str)
        The earlier result and "" when the case is done; None and "" when it was never finished; None and
        "re-scored: <what> changed" (or why the earlier result does not count) otherwise.
    """
    done = case_out / "result.json"
    if not done.is_file():
        return None, ""
    try:
        old = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, "re-scored: the earlier result.json could not be read"
    old_inputs = old.get("inputs", {})
    if not old_inputs.get("inputs_key"):
        return None, "re-scored: inputs changed (the earlier result.json has no inputs key: written by an older version)"
    if old_inputs["inputs_key"] == key:
        return old, ""
    before = old_inputs.get("keyed_inputs") or {}
    changed = [INPUT_LABELS.get(k, k) for k in inputs if before.get(k) != inputs[k]]
    return None, "re-scored: " + (", ".join(changed) if changed else "inputs") + " changed"


# ---------------------------------------------------------------------------------------------------- one case
def _replace_folder(new: Path, final: Path) -> None:
    """Put the finished folder `new` at `final`: two renames, so `final` is always the old case or the new one whole
    (a crash in between leaves no result.json there, and the case is scored on the next run)."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def _clear_leftovers(out_dir: Path, case_id: str) -> None:
    """Temporary folders of this case left by a run that was killed."""
    for p in list(out_dir.glob(f".{case_id}.part-*")) + list(out_dir.glob(f".{case_id}.old-*")):
        shutil.rmtree(p, ignore_errors=True)


def score_into_folder(case: Dict, case_out: Path, *, scorer, keyed: Dict, key: str, n_shifts: Optional[int],
                      ring_width_mm: Optional[float], pictures: bool,
                      cancel: Optional[Callable[[], bool]] = None,
                      after_write: Optional[Callable[[Path, object], None]] = None) -> Dict:
    """Score one case into a temporary folder beside `case_out`, then put it in place of `case_out` whole.

    Parameters
    ----------
    case : dict
        From :func:`row_to_case`.
    case_out : Path
        The case's folder (replaced when it exists).
    scorer : Scorer
        The model on its device.
    keyed, key : dict, str
        :func:`case_inputs` and :func:`inputs_key`, recorded in result.json under "inputs".
    n_shifts, ring_width_mm, pictures
        As for ``score_case`` / ``write_outputs``.
    cancel : callable, optional
        As for ``score_case``.
    after_write : callable(folder, CT image), optional
        Called once the outputs are written, before the folder is put in place (the DICOM export).

    Returns
    -------
    dict
        The result (as in result.json).
    """
    from .io import read_ct, read_mask
    from .outputs import write_outputs
    from .pipeline import add_reading_warnings, score_case

    _clear_leftovers(case_out.parent, case_out.name)
    ct, warn = read_ct(case["ct"])
    mask = read_mask(case["mask"], ct) if case["mask"] else None
    r = score_case(ct, case["seed_lps"], case["box"], mask, case["ecog"], n_shifts=n_shifts, scorer=scorer,
                   ring_width_mm=ring_width_mm, cancel=cancel, ct_checked=True)  # read_ct checked it
    add_reading_warnings(r, warn)
    r.inputs.update({"ct_path": str(Path(case["ct"]).resolve()), "case_id": case["case_id"],
                     "mask_path": str(Path(case["mask"]).resolve()) if case["mask"] else None,
                     "inputs_key": key, "keyed_inputs": keyed})
    tmp = case_out.parent / f".{case_out.name}.part-{os.getpid()}"
    try:
        write_outputs(r, tmp, ct=ct, pictures=pictures)
        if after_write is not None:
            after_write(tmp, ct)
        _replace_folder(tmp, case_out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return r.to_dict()


def export_case_dicom(case: Dict, case_out: Path, ct=None) -> str:
    """Write a scored case's DICOM objects into ``case_out/dicom`` when its CT is a DICOM series; the summary's note.

    Parameters
    ----------
    case : dict
        From :func:`row_to_case`.
    case_out : Path
        The case's result folder (result.json, tumour.nrrd, ring.nrrd, cam.nrrd).
    ct : SimpleITK.Image, optional
        The CT as scoring read it (not read again when given).

    Returns
    -------
    str
        Where the objects went, or why there are none (a CT that is not a DICOM series, highdicom missing, a series
        without the UIDs DICOM objects reference): the row's result stands either way.
    """
    from .dicom_out import DICOM_OUT_NAMES, export_dicom
    from .io import dicom_series_files

    try:
        files = dicom_series_files(case["ct"])
        if not files:
            return (f"no DICOM export: the CT '{Path(case['ct']).name}' is not a DICOM series folder (DICOM objects "
                    "are made for DICOM inputs only; the results are in the case folder)")
        export_dicom(case_out, case["ct"], case_out / DICOM_DIR, grid=ct, files=files)
    except TMBRBError as e:
        return f"no DICOM export: {e}"
    return f"DICOM objects in {DICOM_DIR}/ ({', '.join(DICOM_OUT_NAMES)})"


def summary_row(case_id: str, result: Dict, status: str, seconds: float, out: Path,
                folder: Optional[Path] = None) -> Dict:
    """One summary.csv row from a result (as in result.json); ``output_dir`` is the case folder ``out`` relative to
    the summary's ``folder`` (default ``out``'s parent: the batch folder), so no absolute path is recorded."""
    from .outputs import relative_path

    ec = result["risk"].get("ecog_combined") or {}
    return {"case_id": case_id, "status": status, "score": result["score"], "tta_mean": result["tta"]["mean"],
            "tta_std": result["tta"]["std"], "os_group": result["risk"]["os"]["group"],
            "pfs_group": result["risk"]["pfs"]["group"], "ecog": result["risk"].get("ecog"),
            "os_relative_hazard": ec.get("os", {}).get("relative_hazard"),
            "pfs_relative_hazard": ec.get("pfs", {}).get("relative_hazard"),
            "attention_tumour": result["attention"]["tumour"], "attention_ring": result["attention"]["ring"],
            "n_warnings": len(result.get("warnings", [])), "seconds": round(seconds, 2), "error": "",
            "inputs_key": result.get("inputs", {}).get("inputs_key", ""),
            "output_dir": relative_path(out, out.parent if folder is None else folder),
            "note": _model_note(result.get("model") or {})}


def _model_note(model: Dict) -> str:
    """The summary's word on a result whose model bundle fails its checksums (``bundle.check_files``)."""
    return f"model bundle {model.get('path', '')} MODIFIED after export" if model.get("modified") else ""


def failed_row(case_id: str, error: str, seconds: float, folder: Optional[Path] = None, **extra) -> Dict:
    """A summary.csv row for a case that failed: every field empty but its id, "failed", the error and the time.

    With the summary's ``folder``, the quoted absolute paths of the error are shown as ``outputs.relative_path``
    shows them (made once here: :func:`write_summary` writes rows as they are).

    >>> r = failed_row("c1", "no CT", 0.123, note="x")
    >>> r["status"], r["error"], r["seconds"], r["note"], r["score"]
    ('failed', 'no CT', 0.12, 'x', '')
    >>> failed_row("c2", "The CT '/data/batch/ct/c2.nrrd' does not exist.", 0.0, folder=Path("/data/batch"))["error"]
    "The CT 'ct/c2.nrrd' does not exist."
    """
    from .outputs import paths_in_message

    if folder is not None:
        error = paths_in_message(error, folder)
    return {**{k: "" for k in SUMMARY_FIELDS}, "case_id": case_id, "status": "failed", "error": error,
            "seconds": round(seconds, 2), **extra}


def run_case(plan: Tuple[Optional[Dict], str, str], out_dir: Path, scorer, bundle, n_shifts: Optional[int],
             ring_width_mm: Optional[float], pictures: bool, cancel: Optional[Callable[[], bool]] = None,
             dicom_out: bool = False) -> Dict:
    """One row of a batch, as ``tmbrb batch``, the engine worker's ``case`` request and Slicer's batch score it.

    Parameters
    ----------
    plan : (case or None, case id, error)
        One item of :func:`plan_cases`.
    out_dir : Path
        The batch's output folder; the case goes into ``out_dir / case_id``.
    scorer, bundle
        The model on its device, and its bundle.
    n_shifts, ring_width_mm, pictures
        As for ``score_case`` / ``write_outputs``.
    cancel : callable, optional
        Polled between the engine's steps; when it returns True the case stops with TMBRBCancelled (raised, not
        recorded as a failed row) and its folder is left as it was.
    dicom_out : bool
        Also write the DICOM objects (:func:`export_case_dicom`) for a DICOM input, as the row's dicom_out column
        does; the summary's note says where they went or why there are none.

    Returns
    -------
    dict
        The summary row: done before (same inputs), scored (first time or inputs changed) or failed.
    """
    case, case_id, error = plan
    if case is None:
        return failed_row(case_id, error, 0.0, folder=out_dir)
    t0 = time.perf_counter()
    note, key, dicom_notes = "", "", []
    want_dicom = dicom_out or case.get("dicom_out", False)
    try:
        keyed = case_inputs(case, bundle, n_shifts, ring_width_mm)
        key = inputs_key(keyed)
        case_out = out_dir / case_id
        inside = _inputs_inside(case, case_out)
        if inside:
            raise TMBRBInputError(inside)
        old, note = resume_decision(case_out, key, keyed)
        if old is not None:
            row = summary_row(case_id, old, "done-before", 0.0, case_out, out_dir)
            if want_dicom and not (case_out / DICOM_DIR / "seg.dcm").is_file():
                dicom_notes.append(export_case_dicom(case, case_out))
            return {**row, "note": "; ".join(n for n in (row["note"], *dicom_notes) if n)}
        after = (lambda folder, ct: dicom_notes.append(export_case_dicom(case, folder, ct))) if want_dicom else None
        res = score_into_folder(case, case_out, scorer=scorer, keyed=keyed, key=key, n_shifts=n_shifts,
                                ring_width_mm=ring_width_mm, pictures=pictures, cancel=cancel, after_write=after)
        row = summary_row(case_id, res, "ok", time.perf_counter() - t0, case_out, out_dir)
        return {**row, "note": "; ".join(n for n in (row["note"], note, *dicom_notes) if n)}
    except TMBRBCancelled:
        raise
    except TMBRBError as e:
        return failed_row(case_id, str(e), time.perf_counter() - t0, out_dir, note=note, inputs_key=key)
    except Exception as e:  # noqa: BLE001 - one broken case must not stop the batch; the error is recorded
        (out_dir / f"{case_id}.error.log").write_text(traceback.format_exc(), encoding="utf-8")
        return failed_row(case_id, f"internal error: {type(e).__name__}: {e}", time.perf_counter() - t0,
                           out_dir, note=note, inputs_key=key)


# ------------------------------------------------------------------------------------------------------ the manifest
def read_manifest(manifest: Union[str, Path]) -> List[Dict[str, str]]:
    """The manifest's rows; TMBRBInputError when it is missing, empty or has no CT column."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise TMBRBInputError(f"The manifest '{manifest}' does not exist.", "Give a CSV file with one row per case.")
    with open(manifest, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark is not a name
        rows = list(csv.DictReader(f))
    if not rows:
        raise TMBRBInputError(f"The manifest '{manifest}' has no rows.", "Add one row per case (columns ct, seed_ras...).")
    if "ct" not in rows[0] and "ct_path" not in rows[0] and "image" not in rows[0]:
        raise TMBRBInputError(f"The manifest '{manifest}' has no 'ct' column (columns: {list(rows[0])}).",
                              "Name the CT path column 'ct'.")
    return rows


def plan_cases(rows: List[Dict[str, str]], base: Path) -> List[Tuple[Optional[Dict], str, str]]:
    """(case or None, case id, error) for every row; a case id seen before fails on its second row.

    Every process plans the whole manifest (it is cheap), so a duplicate is found whichever process scores it.
    """
    plans: List[Tuple[Optional[Dict], str, str]] = []
    seen = set()
    for number, row in enumerate(rows, 1):
        case_id = _case_id(row, number)
        try:
            case = row_to_case(row, base, number)
        except TMBRBError as e:
            plans.append((None, case_id, str(e)))
            continue
        if reserved_case_id(case_id):
            plans.append((None, case_id, reserved_case_id(case_id)))
            continue
        if case_id.lower() in seen:  # 'A' and 'a' are one folder on macOS and Windows
            plans.append((None, case_id, str(TMBRBInputError(
                f"The case id '{case_id}' appears twice in the manifest (as a folder name, ignoring case and the "
                "characters replaced by '_').", "Make case ids unique."))))
            continue
        seen.add(case_id.lower())
        plans.append((case, case_id, ""))
    return plans


# ----------------------------------------------------------------------------------------------- many processes
def dist_env() -> Tuple[int, int, int]:
    """(rank, world size, local rank) from RANK, WORLD_SIZE and LOCAL_RANK (as torchrun sets them); (0, 1, 0) else.

    Raises
    ------
    TMBRBInputError
        The variables are not integers, or RANK is not in [0, WORLD_SIZE).
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise TMBRBInputError("RANK, WORLD_SIZE or LOCAL_RANK is not an integer.",
                              "Start the processes with torchrun, or set the three variables to integers.") from None
    if world < 1 or not 0 <= rank < world:
        raise TMBRBInputError(f"RANK={rank} does not fit WORLD_SIZE={world}.", "Give 0 <= RANK < WORLD_SIZE.")
    return rank, world, local


def run_token() -> Optional[str]:
    """What tells this run's partial summaries from an earlier run's: $TMBRB_RUN_ID, else torchrun's run id (when not
    "none") with its restart count, else SLURM's job and step id; None when there is none."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if os.environ.get("TMBRB_RUN_ID"):
        return "tmbrb:" + os.environ["TMBRB_RUN_ID"]
    if os.environ.get("TORCHELASTIC_RUN_ID", "none") not in ("", "none"):
        return f"torchrun:{os.environ['TORCHELASTIC_RUN_ID']}:{restart}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '')}:{restart}"
    return None


def rank_device(device: str, world: int, local: int) -> str:
    """The device of one process: with several processes, "auto" and "cuda" mean cuda:LOCAL_RANK (modulo the GPUs
    there are), "auto" the CPU without CUDA; a named device ("cpu", "cuda:1") is kept."""
    if world == 1 or device not in (None, "", "auto", "cuda"):
        return device
    import torch
    if torch.cuda.is_available():
        return f"cuda:{local % torch.cuda.device_count()}"
    return "cpu" if device != "cuda" else device


class RankFiles:
    """The partial summary of each process in the output folder: summary.rank<k>.csv (its rows) and
    summary.rank<k>.json (run token, rows done, whether it finished, its error). Written atomically after each case.

    Parameters
    ----------
    out_dir : Path
        The batch's output folder (shared by all processes).
    world : int
        The number of processes.
    token : str
        This run's :func:`run_token`; a state file with another token is an earlier run's and is ignored.
    """

    def __init__(self, out_dir: Path, world: int, token: str):
        self.out_dir, self.world, self.token = out_dir, world, token

    def csv_path(self, rank: int) -> Path:
        return self.out_dir / f"summary.rank{rank}.csv"

    def state_path(self, rank: int) -> Path:
        return self.out_dir / f"summary.rank{rank}.json"

    def publish(self, rank: int, rows: List[Dict], share: int, finished: bool, error: Optional[str] = None) -> None:
        """Write this process's rows, then its state (so a finished state always follows its whole CSV)."""
        write_summary(self.csv_path(rank), rows)
        state = {"run": self.token, "rank": rank, "world": self.world, "share": share, "done": len(rows),
                 "finished": finished, "error": error}
        tmp = self.state_path(rank).with_suffix(".json.part")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        tmp.replace(self.state_path(rank))

    def state(self, rank: int) -> Optional[Dict]:
        """Process `rank`'s state in this run, or None (not started yet, or an earlier run's file)."""
        try:
            st = json.loads(self.state_path(rank).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return st if st.get("run") == self.token and st.get("world") == self.world else None

    def rows(self, rank: int) -> List[Dict]:
        with open(self.csv_path(rank), newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def others_done(self) -> int:
        return sum((self.state(k) or {}).get("done", 0) for k in range(1, self.world))

    def wait_for_others(self, timeout_s: float, on_poll: Callable[[], None] = lambda: None,
                        poll_s: float = 0.2) -> Dict[int, Optional[Dict]]:
        """Process 0 waits until every other process has finished, or until none has written anything for
        `timeout_s` seconds. Returns the last state of each (None: never seen in this run)."""
        seen: Dict[int, Optional[Dict]] = {k: None for k in range(1, self.world)}
        last_news = time.monotonic()
        while True:
            for k in seen:
                st = self.state(k)
                if st != seen[k]:
                    seen[k], last_news = st, time.monotonic()
            on_poll()
            if all(st and st["finished"] for st in seen.values()) or time.monotonic() - last_news > timeout_s:
                return seen
            time.sleep(poll_s)

    def merge(self, own: List[Dict], plans: List[Tuple[Optional[Dict], str, str]], timeout_s: float,
              states: Dict[int, Optional[Dict]]) -> List[Dict]:
        """All processes' rows in manifest order; a row no process reported is failed, saying which and why."""
        by_row = {int(r["row"]): r for r in own}
        for k, st in states.items():
            if st and st["finished"]:
                by_row.update((int(r["row"]), r) for r in self.rows(k))
        merged = []
        for i, (_, case_id, _) in enumerate(plans):
            if i + 1 in by_row:
                merged.append(by_row[i + 1])
                continue
            st = states.get(i % self.world)
            why = (f"process {i % self.world} stopped: {st['error']}" if st and st.get("error") else
                   f"process {i % self.world} of {self.world} did not finish (no news from any process for "
                   f"{timeout_s:g} s)")
            merged.append(failed_row(case_id, f"not scored: {why}", 0.0, self.out_dir, row=i + 1))
        return merged


# ------------------------------------------------------------------------------------------------------- the batch
def run_batch(manifest: Union[str, Path], out_dir: Union[str, Path], *, bundle=None, device: str = "auto",
              n_shifts: Optional[int] = None, pictures: bool = True, progress_bar: bool = True,
              on_case: Optional[Callable[[int, int, Dict], None]] = None, ring_width_mm: Optional[float] = None,
              wait_timeout_s: float = DEFAULT_WAIT_S, dicom_out: bool = False) -> Path:
    """Score every row of the manifest into ``out_dir/<case_id>/`` and write ``out_dir/summary.csv``.

    A case whose result.json was written for the same inputs (:func:`inputs_key`) is 'done-before'; one whose inputs
    changed is scored again (the summary's ``note`` says what changed) and its folder replaced whole. Under a launcher
    that sets RANK/WORLD_SIZE/LOCAL_RANK each process scores rows i with i % WORLD_SIZE == RANK and process 0 merges.

    Parameters
    ----------
    manifest : str or Path
        The manifest CSV (paths relative to its folder).
    out_dir : str or Path
        Where each case's folder and summary.csv go.
    bundle : Bundle, str, Path or None
        The model bundle (None: the default one).
    device : str
        "auto", "cpu", "cuda", "cuda:1"...; with several processes "auto"/"cuda" mean cuda:LOCAL_RANK.
    n_shifts, ring_width_mm : optional
        Test-time shifts and ring width (None: the bundle's).
    pictures : bool
        Also write the PNG overlays.
    progress_bar : bool
        A tqdm bar on stderr (process 0 only; it counts the cases of all processes).
    on_case : callable(row number, number of rows, summary row), optional
        Called after each case this process handled.
    wait_timeout_s : float
        With several processes: process 0 gives up waiting when no other process has written anything for this long;
        their missing rows are then failed in the summary.
    dicom_out : bool
        DICOM objects for every row whose CT is a DICOM series (into its folder's ``dicom/``), as if each row's
        dicom_out column said yes; a row whose CT is not gets a note, not a failure.

    Returns
    -------
    Path
        summary.csv (process 0 or a single process), or summary.rank<k>.csv (process k > 0).

    Raises
    ------
    TMBRBInputError
        The manifest cannot be read or lacks the ct column, or several processes run without a run id (a bad *case*
        is recorded in the summary, not raised).
    """
    from .bundle import Bundle, load_bundle
    from .pipeline import Scorer

    manifest = Path(manifest)
    rows = read_manifest(manifest)
    rank, world, local = dist_env()
    files = None
    if world > 1:
        token = run_token()
        if token is None:
            raise TMBRBInputError(f"This is process {rank} of {world} (WORLD_SIZE), but nothing identifies the run.",
                                  "Start the processes with torchrun --standalone, srun, or set TMBRB_RUN_ID to the "
                                  "same new value for every process.")
        files = RankFiles(Path(out_dir), world, token)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_cases(rows, manifest.parent)
    mine = [i for i in range(len(rows)) if i % world == rank]
    bar = None
    if progress_bar and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=len(rows), desc="TMBRB batch", unit="case")
    summary: List[Dict] = []
    try:
        if files is not None:
            files.publish(rank, summary, len(mine), finished=False)
        b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        scorer = Scorer(b, rank_device(device, world, local))
        for i in mine:
            summary.append({**run_case(plans[i], out_dir, scorer, b, n_shifts, ring_width_mm, pictures,
                                       dicom_out=dicom_out), "row": i + 1})
            if files is not None:
                files.publish(rank, summary, len(mine), finished=False)
            else:
                write_summary(out_dir / "summary.csv", summary)
            _show(bar, len(summary) + (files.others_done() if files is not None and bar is not None else 0),
                  f"{summary[-1]['case_id']}: {summary[-1]['status']}")
            if on_case is not None:
                on_case(i + 1, len(rows), summary[-1])
    except BaseException as e:
        if files is not None:
            files.publish(rank, summary, len(mine), finished=True, error=f"{type(e).__name__}: {e}")
        raise
    if files is None:
        _close(bar)
        return out_dir / "summary.csv"
    files.publish(rank, summary, len(mine), finished=True)
    if rank != 0:
        return files.csv_path(rank)
    states = files.wait_for_others(wait_timeout_s, lambda: _show(bar, len(summary) + files.others_done()))
    write_summary(out_dir / "summary.csv", files.merge(summary, plans, wait_timeout_s, states))
    _close(bar)
    return out_dir / "summary.csv"


def _show(bar, done: int, text: Optional[str] = None) -> None:
    if bar is not None:
        bar.n = done
        if text:
            bar.set_postfix_str(text, refresh=False)
        bar.refresh()


def _close(bar) -> None:
    if bar is not None:
        bar.close()


def write_summary(path: Path, rows: List[Dict]) -> None:
    """Write summary.csv (SUMMARY_FIELDS, CSV-safe cells) through a temporary file, so a reader never sees half.

    The rows are written as they are: :func:`summary_row` and :func:`failed_row` recorded their paths relative to
    the summary's folder when they were made."""
    tmp = path.with_suffix(".csv.part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else csv_cell(r.get(k))) for k in SUMMARY_FIELDS})
    tmp.replace(path)
