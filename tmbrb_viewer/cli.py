"""`tmbrb viewer` / `python -m tmbrb_viewer`: serve the browser viewer.

add_viewer_parser(subparsers) registers the `viewer` subcommand on the `tmbrb` parser; main(argv) runs it alone.
Nothing here imports trame or slicer; the app module is imported only when the server starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from TMBRBLib import RESEARCH_USE_NOTICE
from TMBRBLib.crop import DEFAULT_N_SHIFTS, MAX_SHIFTS
from . import INSTALL_HINT, missing_packages
from .file_access import DEFAULT_MAX_UPLOAD_MB, check_data_dir

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ct", help="CT to open at start: a NRRD/NIfTI/MHA file or a DICOM series folder")
    p.add_argument("--seed-ras", help="with --ct: place the seed at this point, x,y,z in RAS mm (as 3D Slicer shows); "
                                      "the box is proposed from it")
    p.add_argument("--demo", action="store_true",
                   help="open the demo phantom with its seed and box placed, ready to Apply")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only). Another address makes the "
                        "viewer, and the CTs it opens, reachable from the network; give it only when needed")
    p.add_argument("--model", help="model bundle folder (default: the bundled demo model, or $TMBRB_MODEL)")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda ...")
    p.add_argument("--shifts", type=int, default=None,
                   help=f"test-time box shifts (default from the bundle: {DEFAULT_N_SHIFTS}; 0 = the box only)")
    p.add_argument("--out", default="tmbrb-viewer-output",
                   help="folder where 'Save results' and 'Save scene' write (default ./tmbrb-viewer-output)")
    p.add_argument("--data-dir",
                   help="folder whose CTs the page may open by typing a path (inside it only; symlinks and '..' "
                        "that lead out are refused). Without it the page can only upload")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload accepted, all files together (default {DEFAULT_MAX_UPLOAD_MB} MB)")
    p.add_argument("--open-browser", action="store_true", help="open the page in the default web browser")
    p.add_argument("--debug", action="store_true", help="log tracebacks on the console")


def add_viewer_parser(subparsers) -> argparse.ArgumentParser:
    """Register `viewer` on the `tmbrb` command's subparsers (set_defaults(func=...) returns an exit code)."""
    p = subparsers.add_parser("viewer", help="serve the interactive browser viewer (trame-slicer)",
                              description="Interactive TMBRB in a web browser: open a CT, click the tumour, "
                                          "Apply. " + RESEARCH_USE_NOTICE)
    _add_arguments(p)
    p.set_defaults(func=cmd_viewer)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tmbrb_viewer",
                                description="Interactive TMBRB in a web browser. " + RESEARCH_USE_NOTICE)
    _add_arguments(p)
    return p


def _check_args(args) -> Optional[str]:
    if args.ct and args.demo:
        return "Give either --ct or --demo, not both."
    if not (0 <= args.port <= 65535):
        return f"--port {args.port} is not a TCP port (0-65535)."
    if args.shifts is not None and not (0 <= args.shifts <= MAX_SHIFTS):
        return f"--shifts {args.shifts} is out of range; give 0 to {MAX_SHIFTS}."
    if not (args.max_upload_mb > 0 and args.max_upload_mb < 2**30):  # also refuses nan
        return f"--max-upload-mb {args.max_upload_mb} must be a positive number of megabytes."
    data_dir_problem = check_data_dir(args.data_dir)
    if data_dir_problem:
        return data_dir_problem
    if args.seed_ras is not None:
        if not args.ct:
            return "--seed-ras places a seed on the CT given with --ct; give --ct too."
        from TMBRBLib.errors import TMBRBInputError
        from TMBRBLib.geometry import parse_triplet
        try:
            parse_triplet(args.seed_ras, "--seed-ras")
        except TMBRBInputError as e:
            return str(e)
    if args.ct and not Path(args.ct).exists():
        return f"The CT '{args.ct}' does not exist. Check the path (a CT file or a DICOM series folder)."
    return None


def cmd_viewer(args) -> int:
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    missing = missing_packages()
    if missing:
        print(f"error: the browser viewer needs Python packages that are not installed ({', '.join(missing)}). "
              f"{INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.host not in LOOPBACK_HOSTS:
        print(f"warning: serving on {args.host}: other computers can reach this viewer and the CTs it opens.",
              file=sys.stderr)
    from TMBRBLib.cli import check_device
    from TMBRBLib.errors import TMBRBError
    from .app import run_viewer

    try:
        check_device(args.device)
        return run_viewer(ct=args.ct, seed_ras=args.seed_ras, demo=args.demo, host=args.host, port=args.port, model=args.model,
                          device=args.device, shifts=args.shifts, out_dir=args.out, open_browser=args.open_browser,
                          debug=args.debug, data_dir=args.data_dir, max_upload_mb=args.max_upload_mb)
    except TMBRBError as e:  # bad CT, missing/corrupt model bundle: the message names the fix
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: Optional[List[str]] = None) -> int:
    from TMBRBLib.cli import _join_negative_coordinates  # `--seed-ras -21.9,...`: a value, not an option

    args = build_parser().parse_args(_join_negative_coordinates(list(sys.argv[1:] if argv is None else argv)))
    return cmd_viewer(args)
