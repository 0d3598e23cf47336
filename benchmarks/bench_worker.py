"""Apply -> result with and without the warm engine worker (not a test; prints medians).

For each case (lung1 from ../shared/data/real_ct with the seed of Testing/real_ct_cases.json, and the demo phantom)
the Logic scores the case on a slicer-core MRML scene as the Slicer panel and the viewer do. Placing the seed
proposes the box (``proposeBoxWithWarnings``, in the front end's process: timed as ``seed -> box``); Apply then scores
with that box: ``startBackground`` and a ``JobWatcher`` stepped every ``--poll`` s until the result's nodes are in the
scene (``--seed-only``: Apply with the seed alone, the engine proposing the box). Measured:

- cold: a new engine process per Apply (``useWorker=False``: python start, torch/MONAI import, model load, CT read);
- warm: the next Apply on the worker (model loaded, the CT file written and read once for the volume);
- in process: ``score_case`` alone with a loaded model (the work itself, no files, no scene), on the same inputs;
  with a given box also with ``pipeline.OVERLAP_SEGMENTATION`` the other way (the seed segmentation beside the model
  in a thread, or after it).

Each warm Apply is broken down (medians): ``hand-over`` (startBackground: the inputs checked, the CT converted and
written once per volume state, the request sent), the worker's ``read CT`` / engine stages (seed segmentation and box,
crop, one forward with the map and the deep features, the shifted boxes' forward, regions and map on the CT's grid,
the rest of score_case) / ``write`` (outputs), ``wait`` (what is left between the request and the answer seen by the
poll: protocol, polling interval, process switches) and ``import`` (result read back and placed in the scene).

    python benchmarks/bench_worker.py [--runs 5] [--shifts 8] [--device cpu] [--model BUNDLE] [--poll 0.05]
        [--cases lung1,512x512x300] [--warm-only] [--seed-only]

The model is $TMBRB_MODEL or the bundled one (timings do not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "TMBRBModule"), str(REPO)]

REAL_CT = REPO / ".." / "shared" / "data" / "real_ct"


def cases():
    """(name, SimpleITK CT, seed LPS) for lung1 (when the shared data is there), the demo phantom and a 512x512x300
    phantom."""
    import SimpleITK as sitk

    from TMBRBLib.geometry import ras_to_lps
    from TMBRBLib.phantom import make_demo_case, make_phantom

    out = []
    lung1 = json.loads((REPO / "Testing" / "real_ct_cases.json").read_text())["lung1"]
    if (REAL_CT / lung1["ct"]).is_file():
        out.append(("lung1", sitk.ReadImage(str(REAL_CT / lung1["ct"])), ras_to_lps(lung1["seed_ras_mm"])))
    else:
        print(f"lung1 skipped: {REAL_CT / lung1['ct']} not found")
    demo = make_demo_case()
    out.append(("demo phantom", demo.ct, tuple(demo.seed_lps)))
    big = make_phantom(seed=3, shape_xyz=(512, 512, 300))  # the engine benchmark's chest-sized phantom
    out.append(("512x512x300", big.ct, tuple(big.seed_lps)))
    return out


STEPS = ("hand-over", "read CT", "box+seed seg", "crop", "seg, given box", "forward+CAM+feat", "8-shift forward", "regions+CAM",
         "other engine", "write", "wait", "import")
EXTRA = ("seg beside model",)  # printed, not summed: it runs while the model does
ENGINE_STAGES = {"box+seed seg": "box", "crop": "crop", "forward+CAM+feat": "forward_cam",
                 "8-shift forward": "tta_forward", "regions+CAM": "regions_cam_to_ct"}


def apply_once(logic, volume, seed, roi, args, useWorker: bool) -> dict:
    """One Apply driven to the result as the panel does; returns its wall time, the engine's own total and the
    breakdown of :data:`STEPS` (worker steps only on the worker)."""
    from TMBRBLib.slicer.logic import JobWatcher

    got, steps = {}, {}
    importer = logic.importBackgroundResult

    def timedImport(*a, **k):
        t0 = time.perf_counter()
        try:
            return importer(*a, **k)
        finally:
            steps["import"] = time.perf_counter() - t0

    logic.importBackgroundResult = timedImport
    try:
        t = time.perf_counter()
        job = logic.startBackground(volume, seed, roi, None, "1", numberOfShifts=args.shifts, device=args.device,
                                    useWorker=useWorker)
        steps["hand-over"] = time.perf_counter() - t
        # with the parameter node, as the panel and the viewer do: a new result reuses the last one's nodes
        watcher = JobWatcher(logic, job, showResult=False, onResult=lambda r: got.update(result=r),
                             onError=lambda e: got.update(error=e), parameterNode=logic.getParameterNode())
        while watcher.step():
            time.sleep(args.poll)
        wall = time.perf_counter() - t
    finally:
        del logic.importBackgroundResult
    if "error" in got:
        raise RuntimeError(f"the Apply failed: {got['error']}")
    engine = got["result"].result["timings_s"]
    worker = (getattr(job.process, "answer", None) or {}).get("timings_s") or {}
    if worker:
        steps["read CT"], steps["write"] = worker["read_ct"], worker["write"]
        steps.update({name: engine[key] for name, key in ENGINE_STAGES.items()})
        steps["other engine"] = worker["score"] - sum(engine[key] for key in ENGINE_STAGES.values())
        from TMBRBLib import pipeline

        seg = engine.get("seed_segmentation", 0.0)  # a given box: the tumour segmented from the seed
        if not pipeline.OVERLAP_SEGMENTATION:
            steps["seg, given box"] = seg  # before the model
            steps["other engine"] -= seg
        steps["wait"] = wall - sum(steps.values())
        if pipeline.OVERLAP_SEGMENTATION:
            steps["seg beside model"] = seg  # not in the sum: it ran while the model did
    return {"wall": wall, "engine_total": engine["total"], "score": got["result"].score, "steps": steps}


def cold_cli_times(ct, seed_lps, args, bundle) -> list:
    """Wall times of the cold command line, `tmbrb score --no-pictures` in a new Python process (imports only what
    the command needs), on the CT written once as a file."""
    import subprocess
    import tempfile

    import SimpleITK as sitk

    times = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as work:
        path = Path(work) / "ct.nrrd"
        sitk.WriteImage(ct, str(path))
        for i in range(args.runs):
            cmd = [sys.executable, "-m", "TMBRBLib.cli", "score", "--ct", str(path), "--seed-lps",
                   ",".join(f"{v:.3f}" for v in seed_lps), "--ecog", "1", "--shifts", str(args.shifts), "--device",
                   args.device, "--model", str(bundle.path), "--out", str(Path(work) / f"out{i}"), "--no-pictures"]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
    return times


def median(values):
    return round(statistics.median(values), 3) if values else float("nan")


def bench_case(name, ct, seed_lps, args, bundle) -> dict:
    from TMBRBLib import pipeline
    from TMBRBLib.geometry import lps_to_ras
    from TMBRBLib.pipeline import Scorer, score_case
    from TMBRBLib.slicer import mrml
    from TMBRBLib.slicer.logic import SceneLogic

    scene = mrml.create_scene()
    logic = SceneLogic(scene)
    logic.bundle = bundle
    volume = mrml.add_volume_node_from_sitk(scene, ct, name)
    seed = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seed")
    seed.AddControlPoint(lps_to_ras(seed_lps))
    roi, box, propose = None, None, []
    if not args.seed_only:  # the seed is placed: the front end proposes the box, as the panel and the viewer do
        for _ in range(args.runs):
            t = time.perf_counter()
            roi, _ = logic.proposeBoxWithWarnings(volume, seed, roi)
            propose.append(time.perf_counter() - t)
        box = logic.validateInputs(volume, seed, roi)["box"]
    try:
        cold = [] if args.warm_only else [apply_once(logic, volume, seed, roi, args, useWorker=False)
                                          for _ in range(args.runs)]
        first = apply_once(logic, volume, seed, roi, args, useWorker=True)  # starts the worker, loads the model
        warm = [apply_once(logic, volume, seed, roi, args, useWorker=True) for _ in range(args.runs)]
        pid = logic.engineWorker().pid
    finally:
        logic.shutdown()
        mrml.release_scene(scene)
    cli = [] if args.warm_only else cold_cli_times(ct, seed_lps, args, bundle)
    scorer = Scorer(bundle, args.device)
    score_case(ct, seed_lps, box, None, 1, n_shifts=args.shifts, scorer=scorer)  # model built, caches warm
    inproc, other = [], []  # the engine's setting (pipeline.OVERLAP_SEGMENTATION), and the other one
    default = pipeline.OVERLAP_SEGMENTATION
    for _ in range(args.runs):
        for overlap, times in ((default, inproc), (not default, other)) if box is not None else ((default, inproc),):
            pipeline.OVERLAP_SEGMENTATION = overlap
            t = time.perf_counter()
            score_case(ct, seed_lps, box, None, 1, n_shifts=args.shifts, scorer=scorer)
            times.append(time.perf_counter() - t)
    pipeline.OVERLAP_SEGMENTATION = default
    assert len({r["score"] for r in cold + warm + [first]}) == 1, "cold and warm runs must give the same score"
    return {"case": name, "ct_size": list(ct.GetSize()), "box": "seed only" if box is None else "proposed at the seed",
            "seed_to_box_s": median(propose), "cold_s": median([r["wall"] for r in cold]),
            "first_worker_apply_s": round(first["wall"], 3), "warm_s": median([r["wall"] for r in warm]),
            "warm_engine_total_s": median([r["engine_total"] for r in warm]),
            "in_process_s": median(inproc), "segmentation_beside_model": default,
            "in_process_other_setting_s": median(other),
            "cold_cli_s": median(cli), "warm_runs_s": [round(r["wall"], 3) for r in warm],
            "cold_runs_s": [round(r["wall"], 3) for r in cold], "worker_pid": pid, "score": first["score"],
            "warm_steps_s": {k: median([r["steps"].get(k, 0.0) for r in warm]) for k in STEPS + EXTRA
                             if k in warm[0]["steps"]}}


def print_breakdown(rows) -> None:
    """The warm Apply's steps (median s) per case, and their sum against the median wall time."""
    rows = [r for r in rows if r.get("warm_steps_s")]
    if not rows:
        return
    print("warm Apply, step by step (median s):")
    print(f"{'step':<18}" + "".join(f"{r['case']:>14}" for r in rows))
    for step in STEPS + EXTRA:
        print(f"{step:<18}" + "".join(f"{r['warm_steps_s'].get(step, float('nan')):>14.3f}" for r in rows))
    print(f"{'warm Apply':<18}" + "".join(f"{r['warm_s']:>14.3f}" for r in rows))
    print(f"{'in process':<18}" + "".join(f"{r['in_process_s']:>14.3f}" for r in rows))
    print(f"{'  seg beside: ' + ('off' if rows[0]['segmentation_beside_model'] else 'on'):<18}"
          + "".join(f"{r['in_process_other_setting_s']:>14.3f}" for r in rows))
    print(f"{'seed -> box':<18}" + "".join(f"{r['seed_to_box_s']:>14.3f}" for r in rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per measure (median; default 3)")
    ap.add_argument("--shifts", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="bundle (default $TMBRB_MODEL or the bundled one)")
    ap.add_argument("--poll", type=float, default=0.05, help="JobWatcher step interval in s (the panel and the viewer: 0.05)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default all)")
    ap.add_argument("--warm-only", action="store_true", help="skip the cold Apply and the cold command line")
    ap.add_argument("--seed-only", action="store_true",
                    help="Apply with the seed alone (the engine proposes the box) instead of the box proposed at the seed")
    args = ap.parse_args()
    from TMBRBLib.bundle import load_bundle

    bundle = load_bundle(args.model)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"device {args.device}; {args.shifts} shifts; median of {args.runs}; poll {args.poll} s; "
          f"model {bundle.name}")
    wanted = None if not args.cases else set(args.cases.split(","))
    rows = [bench_case(name, ct, seed, args, bundle) for name, ct, seed in cases() if not wanted or name in wanted]
    print(f"{'case':<14}{'cold Apply':>12}{'1st worker':>12}{'warm Apply':>12}{'warm engine':>13}"
          f"{'in process':>12}{'cold CLI':>10}")
    for r in rows:
        print(f"{r['case']:<14}{r['cold_s']:>11.2f}s{r['first_worker_apply_s']:>11.2f}s{r['warm_s']:>11.2f}s"
              f"{r['warm_engine_total_s']:>12.2f}s{r['in_process_s']:>11.2f}s{r['cold_cli_s']:>9.2f}s")
    print_breakdown(rows)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(json.dumps(rows, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
