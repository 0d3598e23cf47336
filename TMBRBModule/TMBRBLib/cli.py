"""The `tmbrb` command: score one case, a batch, the demo, bundle checks and the statistics toolkit."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional

from . import RESEARCH_USE_NOTICE, __version__
from .errors import TMBRBCancelled, TMBRBError, TMBRBInputError


class _Progress:
    """Progress for people (a line on stderr) or for programs (JSON lines on stdout, as the Slicer module reads)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.t0 = time.perf_counter()

    def __call__(self, fraction: float, message: str):
        if self.mode == "jsonl":
            print(json.dumps({"progress": round(fraction, 3), "message": message}), flush=True)
        elif self.mode == "bar":
            width = 30
            done = int(round(fraction * width))
            sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {100 * fraction:3.0f}% {message:<40}")
            sys.stderr.flush()
            if fraction >= 0.95:
                sys.stderr.write("\n")

    def event(self, **kw):
        if self.mode == "jsonl":
            print(json.dumps(kw), flush=True)


def _seed_and_box(args, ct):
    from .geometry import Box, index_to_physical, parse_box, parse_triplet, ras_to_lps
    import numpy as np
    given = [a for a in ("seed_ras", "seed_lps", "seed_index") if getattr(args, a)]
    if len(given) != 1:
        raise TMBRBInputError("Give the seed exactly once: --seed-ras (as 3D Slicer shows), --seed-lps (as DICOM/ITK) "
                              "or --seed-index (voxel i,j,k).")
    if args.seed_ras:
        seed = ras_to_lps(parse_triplet(args.seed_ras, "--seed-ras"))
    elif args.seed_lps:
        seed = parse_triplet(args.seed_lps, "--seed-lps")
    else:
        seed = index_to_physical(ct, parse_triplet(args.seed_index, "--seed-index"))
    boxes = [a for a in ("box_ras", "box_lps", "box_index") if getattr(args, a)]
    if len(boxes) > 1:
        raise TMBRBInputError("Give the box at most once (--box-ras, --box-lps or --box-index).")
    box = None
    if args.box_ras:
        box = Box.from_ras_corners(*parse_box(args.box_ras, "--box-ras"))
    elif args.box_lps:
        box = Box.from_corners(*parse_box(args.box_lps, "--box-lps"))
    elif args.box_index:
        a, b = parse_box(args.box_index, "--box-index")
        lo, hi = np.minimum(a, b) - 0.5, np.maximum(a, b) + 0.5  # inclusive voxel indices -> outer edges
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        pts = np.array([index_to_physical(ct, c) for c in corners])
        box = Box(tuple(pts.min(0)), tuple(pts.max(0)))
    return seed, box


def cmd_score(args) -> int:
    from .io import read_ct
    from .outputs import check_out_dir
    from .pipeline import score_to_folder
    from .risk import check_ecog
    prog = _Progress(args.progress)
    check_ecog(args.ecog)  # fail before any heavy work
    check_out_dir(args.out, [args.ct, args.segmentation])
    dicom_files = _check_dicom_out(args) if args.dicom_out else None
    prog(0.0, "reading the CT")
    ct, warnings = read_ct(args.ct)
    seed, box = _seed_and_box(args, ct)
    result, written = score_to_folder(ct, seed, args.out, box, args.segmentation, args.ecog, ct_path=args.ct,
                                      ct_warnings=warnings, pictures=not args.no_pictures, progress=prog,
                                      bundle=args.model, n_shifts=args.shifts, device=args.device,
                                      ring_width_mm=args.ring_mm, ct_checked=True)
    dicom = None
    if args.dicom_out:
        from .dicom_out import export_dicom
        prog(0.98, "writing the DICOM objects")
        dicom = export_dicom(args.out, args.ct, args.dicom_out, grid=ct, files=dicom_files)  # not read again
    prog.event(done=True, result=str(written["result"]), **({"dicom": {k: str(p) for k, p in dicom.items()}}
                                                             if dicom else {}))
    if args.progress != "jsonl":
        _print_result(result, written)
        if dicom:
            print(f"DICOM (segmentation, CAM parametric map, report) in {args.dicom_out}/: "
                  + ", ".join(p.name for p in dicom.values()))
    return 0


def _check_dicom_out(args) -> list:
    """--dicom-out needs a DICOM series as the CT, highdicom, and a writable folder: checked before any work.
    Returns the series' files (for the export, which then scans the folder no more)."""
    from .dicom_out import check_dicom_out_dir, require_highdicom
    from .io import dicom_series_files
    files = dicom_series_files(args.ct)
    if not files:
        raise TMBRBInputError(f"--dicom-out needs a DICOM series as the CT; '{args.ct}' is not a folder holding one.",
                              "Give --ct the DICOM series folder, or leave out --dicom-out (the NRRD outputs in "
                              "--out open in 3D Slicer).")
    require_highdicom()
    check_dicom_out_dir(args.dicom_out, args.ct, [args.segmentation])
    return files


def cmd_dicom_export(args) -> int:
    """`tmbrb dicom-export`: the DICOM objects of a case scored before, from its output folder and DICOM series."""
    from .dicom_out import export_dicom
    written = export_dicom(args.result, args.dicom, args.out)
    print(f"DICOM (segmentation, CAM parametric map, report) in {args.out}/: "
          + ", ".join(p.name for p in written.values()))
    return 0


def cmd_attention(args) -> int:
    """`tmbrb attention`: the attention shares, ring and outlines of a scored case again, from an edited tumour mask,
    in its output folder; the model is not run (the class activation map does not depend on the mask)."""
    from .attention import update_attention_folder
    from .present import result_lines

    result, written = update_attention_folder(args.result, args.segmentation, ring_width_mm=args.ring_mm,
                                              pictures=not args.no_pictures, ct=args.ct)
    for line in result_lines(result):
        if line.key == "warning":
            print(f"warning: {line.value}")
        elif line.key not in ("notice", "demo"):
            print(line.text)
    print(f"Updated in {Path(args.result)}/: " + ", ".join(sorted(p.name for p in written.values())))
    return 0


def _print_result(result, written) -> None:
    """The result's lines (TMBRBLib.present), then where the files are."""
    from .present import result_lines

    m = result.model
    if m.get("placeholder") or m.get("demo"):
        print("!" * 78 + f"\n!! {m['notice']}\n" + "!" * 78)
    for line in result_lines(result.to_dict()):
        if line.key == "warning":
            print(f"warning: {line.value}")
        elif line.key not in ("notice", "demo"):
            print(line.text)
    out = Path(written["result"]).parent
    print(f"Outputs in {out}/: " + ", ".join(sorted(p.name for p in written.values())))
    if "summary" in written:
        print(f"Pictures: {written['summary']}")
    print(RESEARCH_USE_NOTICE)


def cmd_batch(args) -> int:
    """`tmbrb batch`: exit 0 when every case scored (or was done before), 3 when some failed.

    Under torchrun each process scores its share; only process 0 (which merges the summary) prints it and reports
    failures in its exit code, so that the launcher does not stop the others when one process's case failed.
    """
    import csv

    from .batch import DEFAULT_WAIT_S, dist_env, run_batch, summary_names
    from .outputs import check_out_dir
    rank, world, _ = dist_env()
    check_out_dir(args.out, [args.manifest], names=summary_names(world))
    if args.dicom_out:
        from .dicom_out import require_highdicom
        require_highdicom()  # before any case (a dicom_out column without highdicom: a note per row)
    path = run_batch(args.manifest, args.out, bundle=args.model, device=args.device, n_shifts=args.shifts,
                     pictures=not args.no_pictures, progress_bar=not args.quiet, ring_width_mm=args.ring_mm,
                     wait_timeout_s=DEFAULT_WAIT_S if args.wait_timeout is None else args.wait_timeout,
                     dicom_out=args.dicom_out)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    failed = [r for r in rows if r["status"] == "failed"]
    if rank != 0:
        print(f"process {rank} of {world}: {len(rows) - len(failed)} of {len(rows)} cases of its share scored; "
              f"partial summary: {path}")
        return 0
    rescored = sum(r["note"].startswith("re-scored") and r["status"] == "ok" for r in rows)
    print(f"{len(rows) - len(failed)} of {len(rows)} cases scored ({sum(r['status'] == 'done-before' for r in rows)} "
          f"already done, {rescored} re-scored because their inputs changed); summary: {path}")
    for r in failed:
        print(f"failed: {r['case_id']}: {r['error']}")
    return 0 if not failed else 3


def cmd_demo(args) -> int:
    from .geometry import Box
    from .io import write_image
    from .outputs import write_outputs
    from .outputs import check_out_dir
    from .phantom import make_demo_case
    from .pipeline import score_case
    out = check_out_dir(args.out)
    prog = _Progress(args.progress)
    prog(0.0, "generating the demo phantom")
    t = time.perf_counter()
    case = make_demo_case()
    gen_s = time.perf_counter() - t
    inp = out / "input"
    write_image(case.ct, inp / "ct.nrrd")
    write_image(case.tumour, inp / "tumour_truth.nrrd")
    # the box as the phantom's annotator drew it, as a radiologist would (the demo model was trained on such boxes);
    # --propose-box shows the box proposed from the seed instead
    box = None if args.propose_box else Box.from_corners(*case.box_lps)
    result = score_case(case.ct, case.seed_lps, box, None, args.ecog, bundle=args.model, n_shifts=args.shifts,
                        device=args.device, progress=prog)
    result.inputs.update({"ct_path": str((inp / "ct.nrrd").resolve()), "demo_phantom": True,
                          "phantom_tmb_mut_per_mb": case.tmb, "phantom_high_tmb": bool(case.high_tmb),
                          "phantom_generation_s": round(gen_s, 3)})
    written = write_outputs(result, out, ct=case.ct)
    _print_result(result, written)
    print(f"Demo phantom: TMB {case.tmb:.1f} mut/Mb ({'High' if case.high_tmb else 'Low'}-TMB); input CT in {inp}/")
    print(f"Open the pictures: {', '.join(str(written[k]) for k in ('summary', 'overlay_axial', 'overlay_coronal', 'overlay_sagittal'))}")
    return 0


def cmd_bundle(args) -> int:
    from .bundle import load_bundle, make_placeholder_bundle
    if args.action == "placeholder":
        if not args.path:
            raise TMBRBInputError("bundle placeholder needs the folder to write.", "Give it: tmbrb bundle placeholder DIR.")
        if Path(args.path).exists() and any(Path(args.path).iterdir() if Path(args.path).is_dir() else [1]) \
                and not args.force:
            raise TMBRBInputError(
                f"'{args.path}' already exists and is not empty (it may hold a trained bundle): a placeholder "
                "would replace its weights with random ones.", "Give a new folder, or --force to replace it.")
        b = make_placeholder_bundle(args.path)
        print(f"wrote placeholder bundle {b.path} (sha256 {b.sha256})")
        return 0
    b = load_bundle(args.path)
    b.model("cpu")  # also checks that the weights fit the architecture
    print(json.dumps(b.info(), indent=2))
    if b.is_modified:
        print(f"bundle verify failed: {b.integrity['message']}. Restore the bundle from its source, or re-export it "
              "from its training run.", file=sys.stderr)
        return 2 if args.action == "verify" else 0
    how = ("its files match their checksums" if b.integrity["status"] == "verified"
           else "no checksums file, so edits to its metadata cannot be detected")
    print(f"bundle OK: weights checksum and format verified, weights fit the architecture; {how}")
    return 0


def _add_plugin_commands(sub) -> None:
    """Front doors installed beside the core (e.g. the browser viewer, package tmbrb_viewer) add their subcommands
    through the `tmbrb.commands` entry point group; the core knows none of them by name."""
    try:
        from importlib.metadata import entry_points
        eps = entry_points()
        group = eps.select(group="tmbrb.commands") if hasattr(eps, "select") else eps.get("tmbrb.commands", [])
    except Exception:  # noqa: BLE001 - no metadata (e.g. inside 3D Slicer): no plugins
        return
    for ep in group:
        try:
            ep.load()(sub)
        except ImportError:
            continue


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tmbrb", description="TMBRB: CT biomarker of tumour mutational burden "
                                "(He et al., JITC 2020). " + RESEARCH_USE_NOTICE)
    p.add_argument("--version", action="version", version=f"tmbrb {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def model_opts(sp):
        sp.add_argument("--model", help="model bundle folder (default: the bundled demo model, or $TMBRB_MODEL)")
        sp.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1 ...")
        sp.add_argument("--shifts", type=int, default=None, help="test-time box shifts (default from the bundle: 8)")

    s = sub.add_parser("score", help="score one case")
    s.add_argument("--ct", required=True, help="CT file (NRRD/NIfTI/MHA) or DICOM series folder")
    s.add_argument("--seed-ras", help="tumour centre x,y,z in RAS mm (what 3D Slicer shows)")
    s.add_argument("--seed-lps", help="tumour centre x,y,z in LPS mm (DICOM/ITK)")
    s.add_argument("--seed-index", help="tumour centre as voxel index i,j,k (0-based)")
    s.add_argument("--box-ras", help="box xmin,ymin,zmin,xmax,ymax,zmax in RAS mm")
    s.add_argument("--box-lps", help="box in LPS mm")
    s.add_argument("--box-index", help="box as inclusive voxel indices i0,j0,k0,i1,j1,k1")
    s.add_argument("--segmentation", help="tumour label map (any non-zero = tumour)")
    s.add_argument("--ecog", help="ECOG performance status 0, 1 or 2")
    s.add_argument("--ring-mm", type=float, default=None, help="peritumoral ring width (default from the bundle)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--no-pictures", action="store_true", help="skip the PNG overlays")
    s.add_argument("--dicom-out", metavar="DIR", help="for a DICOM series: also write a DICOM Segmentation, the CAM "
                   "as a Parametric Map and a structured report in DIR (needs highdicom: pip install 'tmbrb[dicom]')")
    s.add_argument("--progress", choices=["bar", "jsonl", "none"], default="bar")
    model_opts(s)
    s.set_defaults(func=cmd_score)

    de = sub.add_parser("dicom-export", help="write the DICOM Segmentation, CAM Parametric Map and report of a case "
                        "scored from a DICOM series")
    de.add_argument("--result", required=True, help="the output folder of `tmbrb score`")
    de.add_argument("--dicom", required=True, help="the DICOM series folder the case was scored from")
    de.add_argument("--out", required=True, help="folder for seg.dcm, cam_pm.dcm and report_sr.dcm")
    de.set_defaults(func=cmd_dicom_export)

    b = sub.add_parser("batch", help="score every case of a manifest CSV (resumable on the inputs; several processes under torchrun)")
    b.add_argument("manifest", help="CSV: ct, seed_ras or seed_lps, optional case_id, box_ras/box_lps, mask, ecog")
    b.add_argument("--out", required=True)
    b.add_argument("--no-pictures", action="store_true")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--dicom-out", action="store_true",
                   help="for each row whose CT is a DICOM series: also a DICOM Segmentation, CAM parametric map and "
                        "report in <case>/dicom/ (as a dicom_out column of yes does per row; other rows get a note)")
    b.add_argument("--ring-mm", type=float, default=None, help="peritumoral ring width (default from the bundle)")
    b.add_argument("--wait-timeout", type=float, default=None, metavar="S",
                   help="under torchrun/srun: process 0 stops waiting for the others after S seconds without news "
                        "from any of them (default 1800); their unfinished rows are failed in summary.csv")
    model_opts(b)
    b.set_defaults(func=cmd_batch)

    a = sub.add_parser("attention", help="recompute the attention shares of a scored case from an edited tumour "
                       "mask, without running the model")
    a.add_argument("--result", required=True, help="the output folder of `tmbrb score` (result.json, cam.nrrd); "
                   "result.json, tumour.nrrd, ring.nrrd and the pictures there are updated")
    a.add_argument("--segmentation", required=True, help="the edited tumour label map (any non-zero = tumour; edit a "
                   "copy of tumour.nrrd, not the file itself)")
    a.add_argument("--ring-mm", type=float, default=None, help="ring width (default: the one the result used)")
    a.add_argument("--no-pictures", action="store_true", help="do not draw the PNG overlays again")
    a.add_argument("--ct", default=None, help="the CT to draw the overlays on (default: the one result.json records; "
                   "it records where only when the CT was at most one folder above the result)")
    a.set_defaults(func=cmd_attention)

    d = sub.add_parser("demo", help="generate a phantom chest CT and score it with the bundled model")
    d.add_argument("--out", default="tmbrb-demo-output")
    d.add_argument("--ecog", default="1")
    d.add_argument("--propose-box", action="store_true", help="propose the box from the seed instead of using the "
                   "phantom annotator's box")
    d.add_argument("--progress", choices=["bar", "jsonl", "none"], default="bar")
    model_opts(d)
    d.set_defaults(func=cmd_demo)

    bu = sub.add_parser("bundle", help="verify or describe a model bundle")
    bu.add_argument("action", choices=["verify", "info", "placeholder"])
    bu.add_argument("path", nargs="?", default=None)
    bu.add_argument("--force", action="store_true", help="placeholder: replace an existing bundle")
    bu.set_defaults(func=cmd_bundle)

    from .stats.cli import add_analyze_parser
    add_analyze_parser(sub)
    _add_plugin_commands(sub)
    return p


_COORD_FLAGS = {"--seed-ras", "--seed-lps", "--seed-index", "--box-ras", "--box-lps", "--box-index"}


def _join_negative_coordinates(argv: List[str]) -> List[str]:
    """Let `--seed-ras -21.9,120.5,-611.5` work: argparse would take a value starting with '-' for an option."""
    out: List[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in _COORD_FLAGS and i + 1 < len(argv) and argv[i + 1][:2].replace(".", "0")[1:].isdigit() \
                and argv[i + 1].startswith("-"):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _safe_streams() -> None:
    """On a terminal that is not UTF-8, print what it can rather than fail on a '±'."""
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if "utf8" not in enc and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


MAX_RING_MM = 50.0


def check_device(device: Optional[str]) -> None:
    """Refuse a --device that torch does not know or that this computer does not have (before any work).

    Parameters
    ----------
    device : str or None
        auto (None), cpu, cuda, cuda:N or mps.

    Raises
    ------
    TMBRBInputError
        For a name torch does not parse (e.g. "tpu"), a GPU number this computer lacks, or a device type it lacks.
    """
    import torch

    text = (device or "auto").strip()
    if text == "auto":
        return
    hint = "Give auto, cpu, cuda or cuda:N (a GPU number), or mps on a Mac."
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise TMBRBInputError(f"--device '{text}' is not a device name.", hint) from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise TMBRBInputError(f"--device {text}: this computer has no CUDA GPU that torch can use.",
                                  "Give --device cpu (or auto).")
        if dev.index is not None and dev.index >= n:
            raise TMBRBInputError(f"--device {text}: this computer has {n} CUDA GPU(s), numbered 0 to {n - 1}.",
                                  hint)
        return
    if dev.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return
    raise TMBRBInputError(f"--device {text}: not available on this computer.", hint)


def check_options(args) -> None:
    """Options shared by score, batch and demo, checked before any work: --shifts, --ring-mm, --device."""
    import math

    from .crop import MAX_SHIFTS

    shifts = getattr(args, "shifts", None)
    if shifts is not None and not 0 <= shifts <= MAX_SHIFTS:
        raise TMBRBInputError(f"--shifts {shifts} is out of range.", f"Give 0 to {MAX_SHIFTS} (0 = the box only).")
    ring = getattr(args, "ring_mm", None)
    if ring is not None and not (math.isfinite(ring) and 0 < ring <= MAX_RING_MM):
        raise TMBRBInputError(f"--ring-mm {ring} is not a ring width.",
                              f"Give a width in mm above 0 and at most {MAX_RING_MM:g} (the bundle's default: 10).")
    if hasattr(args, "device"):
        check_device(args.device)


def main(argv: Optional[List[str]] = None) -> int:
    _safe_streams()
    parser = build_parser()
    args = parser.parse_args(_join_negative_coordinates(list(sys.argv[1:] if argv is None else argv)))
    jsonl = getattr(args, "progress", None) == "jsonl"
    try:
        if getattr(args, "command", None) in ("score", "batch", "demo", "attention"):
            check_options(args)
        return int(args.func(args) or 0)
    except TMBRBCancelled as e:
        _fail(str(e), jsonl)
        return 130
    except (TMBRBError, ValueError) as e:
        if args.debug:
            traceback.print_exc()
        _fail(str(e), jsonl)
        return 2
    except KeyboardInterrupt:
        _fail("interrupted", jsonl)
        return 130
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        _fail(f"internal error ({type(e).__name__}: {e}). Please report it with the traceback above.", jsonl)
        return 1


def _fail(message: str, jsonl: bool) -> None:
    if jsonl:
        print(json.dumps({"error": message}), flush=True)
    print(f"tmbrb: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
