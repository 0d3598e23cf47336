"""Seed -> proposed box + tumour mask on the shared real CTs (benchmark, not a test): Dice, label inside the box, time.

    PYTHONPATH=TMBRBModule .venv/bin/python benchmarks/bench_seed_segmentation.py [--runs 5] [--data DIR] [--demo]
        [--reference OTHER/TMBRBModule]

The seed is the label's centre of mass (``cases.json`` of ../shared/data/real_ct); no box is given, as with
``tmbrb score --seed`` alone. Per case it prints the Dice of the seed-grown tumour mask against the expert label, the
share of the label's voxels inside the proposed box, the voxels grown vs in the label, whether the result was flagged
uncertain, and the median process CPU time and wall time of seed -> box + mask over ``--runs`` runs. Target: Dice >= 0.80 and label inside
the box >= 98 % on each case; <= 0.5 s median on lung2 (on a 2-core CPU shared with other work the figure is an upper
bound: CPU time is the steadier figure). ``--reference`` times another checkout's engine (its ``TMBRBModule``
folder, e.g. main's) in the same process, each run alternating with this one's, and prints its line under each case
with the masks' voxel difference. ``--demo`` adds the bundled demo phantom as ``tmbrb demo`` scores it (seed and the annotator's box), and from
its seed alone (its peritumoral haze reads as ground glass: expected flagged uncertain), against its true tumour mask.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "TMBRBModule")]

from TMBRBLib.bundle import default_tmbrb_metadata  # noqa: E402
from TMBRBLib.io import paste_region, read_ct, read_mask  # noqa: E402

CASES = ["pyradiomics/lung1_image.nrrd", "pyradiomics/lung2_image.nrrd",
         "lidc_voi/LIDC-IDRI-0072_R_1_image.nii.gz", "lidc_voi/LIDC-IDRI-0874_R_1_image.nii.gz"]


def load_reference(folder: str):
    """Another checkout's ``TMBRBLib`` (in ``folder``), imported as the package ``reference_TMBRBLib``."""
    import importlib.util
    init = Path(folder).resolve() / "TMBRBLib" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--reference {folder!r}: no TMBRBLib/__init__.py there (give a TMBRBModule folder)")
    spec = importlib.util.spec_from_file_location("reference_TMBRBLib", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_TMBRBLib"] = module
    spec.loader.exec_module(module)
    return "reference_TMBRBLib"


def seed_to_box_and_mask(ct, seed, settings, given_box=None, lib="TMBRBLib"):
    """(box, full-grid uint8 mask array, uncertain) with the engine's own entry point (old or new API) of the package
    ``lib``; the old API is run with the seed alone."""
    import importlib
    proposal = importlib.import_module(f"{lib}.proposal")
    segment_from_seed = getattr(proposal, "segment_from_seed", None)
    if segment_from_seed is None:  # the code before issue 13: propose a box, then grow the tumour inside it
        propose_box = proposal.propose_box
        segment_tumour = importlib.import_module(f"{lib}.regions").segment_tumour
        box, _ = propose_box(ct, seed, settings["proposal"])
        mask, lo, _ = segment_tumour(ct, seed, box, settings["regions"])
        uncertain = None
    else:
        seg = segment_from_seed(ct, seed, given_box, settings["proposal"], settings["regions"])
        box, mask, lo, uncertain = seg.box, seg.mask, seg.lo, bool(seg.uncertain)
    full = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    paste_region(full, sitk.GetArrayViewFromImage(mask), np.asarray(lo))
    return box, full, uncertain


def label_in_box(label: sitk.Image, box) -> float:
    arr = sitk.GetArrayViewFromImage(label)
    zz, yy, xx = np.nonzero(arr)
    d = np.array(label.GetDirection()).reshape(3, 3) @ np.diag(label.GetSpacing())
    pts = np.stack([xx, yy, zz], 1) @ d.T + np.array(label.GetOrigin())
    return float(np.mean(np.all((pts >= np.asarray(box.min)) & (pts <= np.asarray(box.max)), axis=1)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data", default=str(REPO / ".." / "shared" / "data" / "real_ct"))
    ap.add_argument("--demo", action="store_true", help="add the demo phantom (seed and its annotator's box)")
    ap.add_argument("--reference", help="another checkout's TMBRBModule folder, timed back to back with this one")
    ap.add_argument("--cases", default="", help="only the cases whose file name holds this text")
    args = ap.parse_args(argv)
    ref = load_reference(args.reference) if args.reference else None
    d = Path(args.data).resolve()
    if not (d / "cases.json").is_file():
        print(f"no real CTs in {d} (cases.json missing); nothing to measure")
        return 1
    meta_all = json.loads((d / "cases.json").read_text())
    meta_bundle = default_tmbrb_metadata()  # the bundle's proposal and region settings, as `tmbrb score` uses them
    settings = {"proposal": meta_bundle.get("proposal"), "regions": meta_bundle.get("regions")}
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"SimpleITK {sitk.Version.VersionString()}, runs={args.runs}")
    print(f"{'case':<28} {'Dice':>6} {'in box':>7} {'grown':>8} {'label':>8} {'uncertain':>9} {'CPU s':>6} "
          f"{'wall s':>6}   (medians)")
    for name in (c for c in CASES if args.cases in c):
        ct, _ = read_ct(d / name)
        meta = meta_all[name]
        label = read_mask(d / meta["label"], ct)
        row(Path(name).name.split('_image')[0], ct, label, tuple(meta["seed_com_lps_mm"]), None, settings, args.runs, ref)
    if args.demo:
        from TMBRBLib.geometry import Box
        from TMBRBLib.phantom import make_demo_case
        case = make_demo_case()
        row("demo phantom (its box)", case.ct, case.tumour, case.seed_lps, Box.from_corners(*case.box_lps), settings,
            args.runs, ref)
        row("demo phantom (seed alone)", case.ct, case.tumour, case.seed_lps, None, settings, args.runs, ref)
    return 0


def row(name, ct, label, seed, given_box, settings, runs, ref=None) -> None:
    """Time seed -> box + mask ``runs`` times (alternating with the reference engine when given) and print the
    case's line of the table (and the reference's under it)."""
    lab = sitk.GetArrayFromImage(label) > 0
    libs = ["TMBRBLib"] + ([ref] if ref else [])
    times = {lib: ([], []) for lib in libs}
    out = {}
    for _ in range(runs):
        for lib in libs:
            c0, w0 = time.process_time(), time.perf_counter()
            out[lib] = seed_to_box_and_mask(ct, seed, settings, given_box, lib)
            times[lib][0].append(time.process_time() - c0)
            times[lib][1].append(time.perf_counter() - w0)
    for lib in libs:
        box, full, uncertain = out[lib]
        m = full > 0
        dice = 2 * (m & lab).sum() / max(1, m.sum() + lab.sum())
        label_text = name if lib == "TMBRBLib" else "  reference"
        if lib != "TMBRBLib":
            label_text += f" ({int((m != (out['TMBRBLib'][1] > 0)).sum())} vx differ)"
        print(f"{label_text:<28} {dice:6.3f} {100 * label_in_box(label, box):6.1f}% "
              f"{int(m.sum()):8d} {int(lab.sum()):8d} {str(uncertain):>9} {statistics.median(times[lib][0]):6.3f} "
              f"{statistics.median(times[lib][1]):6.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
