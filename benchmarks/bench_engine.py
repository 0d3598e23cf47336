"""Engine benchmark (not a test): prints medians for each step and peak RSS, on a 512x512x300 phantom and the real CTs.

    .venv/bin/python benchmarks/bench_engine.py [--runs 5] [--model BUNDLE] [--no-large]

Ratios are measured in the same run: crop-first vs resampling the whole CT, and the model's forward time vs this
CPU's measured conv3d throughput for the same FLOPs. Targets (2-core CPU): score + CAM <= 0.5 s, whole case with
8-shift TTA <= 3 s, peak RSS <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "TMBRBModule")]

from TMBRBLib.bundle import load_bundle, make_placeholder_bundle  # noqa: E402
from TMBRBLib.cam import ScoringGradCAM, cam_image, cam_to_reference, normalise_cam  # noqa: E402
from TMBRBLib.crop import crop_for_model, normalise, shift_offsets  # noqa: E402
from TMBRBLib.geometry import Box  # noqa: E402
from TMBRBLib.io import paste_region, read_ct  # noqa: E402
from TMBRBLib.pipeline import Scorer, score_case  # noqa: E402
from TMBRBLib.regions import region_of_interest  # noqa: E402


def median_time(fn, runs):
    times = []
    out = None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def conv3d_flops(model, x):
    flops = []

    def hook(m, inp, out):
        k = np.prod(m.kernel_size)
        flops.append(2 * out.numel() * (m.in_channels // m.groups) * k)

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return float(sum(flops))


def cpu_conv3d_gflops(runs):
    conv = torch.nn.Conv3d(64, 64, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 64, 24, 24, 24)
    flops = 2 * 64 * 64 * 27 * 24 ** 3
    with torch.no_grad():
        conv(x)
        t, _ = median_time(lambda: conv(x), runs)
    return flops / t / 1e9


def bench_case(label, ct_path, seed, box, scorer, runs, tmp):
    res = {"case": label}
    t, ct = median_time(lambda: read_ct(ct_path)[0], max(1, runs // 2))
    res["load_ct_s"] = t
    res["ct_size"] = list(ct.GetSize())
    pre = scorer.bundle.tmbrb["preprocessing"]
    res["crop_s"], (arr, crop_img, grid) = median_time(lambda: crop_for_model(ct, box, pre), runs)
    # crop-first vs resampling the whole CT onto the crop's spacing, then cutting the crop out of it
    def whole():
        sp = grid.spacing
        b = ct
        size = [int(round(s * o / n)) for s, o, n in zip(b.GetSize(), b.GetSpacing(), sp)]
        full = sitk.Resample(b, size, sitk.Transform(), sitk.sitkLinear, b.GetOrigin(), sp, b.GetDirection(), -1000.0,
                             sitk.sitkFloat32)
        idx = np.round(full.TransformPhysicalPointToContinuousIndex(grid.origin)).astype(int)
        a = sitk.GetArrayViewFromImage(full)
        return normalise(a[idx[2]:idx[2] + 64, idx[1]:idx[1] + 64, idx[0]:idx[0] + 64], pre)
    res["whole_ct_resample_then_crop_s"], _ = median_time(whole, 1 if np.prod(ct.GetSize()) > 5e7 else runs)
    res["ratio_whole_vs_crop_first"] = res["whole_ct_resample_then_crop_s"] / res["crop_s"]
    model = scorer.bundle.model("cpu")
    x = torch.from_numpy(arr)[None, None]
    with torch.no_grad():
        model(x)
        res["forward_s"], _ = median_time(lambda: model(x), runs)
    cam = scorer._cam(torch.device("cpu"))
    res["forward_cam_s"], (logits, cmap) = median_time(lambda: cam.logits_and_map(x, 1, grid.spacing[::-1]), runs)
    res["cam_method"] = f"{cam.method} at {scorer.bundle.tmbrb['cam']['target_layer']}"
    # the same forward with plain Grad-CAM at 8^3 (the first map), measured in the same run for the ratio
    plain = ScoringGradCAM(model, "features.transition2.relu")
    res["forward_plain_gradcam_s"], _ = median_time(lambda: plain.logits_and_map(x, 1), runs)
    res["ratio_cam_method_vs_plain_gradcam"] = res["forward_cam_s"] / res["forward_plain_gradcam_s"]
    shifted = [crop_for_model(ct, box.shifted(o), pre)[0] for o in shift_offsets(box, scorer.bundle.tmbrb["tta"], 8)]
    xs = torch.from_numpy(np.stack(shifted))[:, None]
    with torch.no_grad():
        res["tta8_forward_s"], _ = median_time(lambda: model(xs), runs)
    res["tta8_crops_s"], _ = median_time(
        lambda: [crop_for_model(ct, box.shifted(o), pre)[0] for o in shift_offsets(box, scorer.bundle.tmbrb["tta"], 8)],
        runs)

    def back():
        lo, hi, ref = region_of_interest(ct, grid.box)
        sub = cam_to_reference(cam_image(normalise_cam(cmap[0, 0].numpy()), grid), ref)
        full = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.float32)
        paste_region(full, sub, lo)
        return full
    res["cam_to_ct_grid_s"], _ = median_time(back, runs)
    res["whole_case_8tta_s"], r = median_time(lambda: score_case(ct, seed, box, scorer=scorer, n_shifts=8), runs)
    res["whole_case_proposed_box_s"], _ = median_time(lambda: score_case(ct, seed, None, scorer=scorer, n_shifts=8),
                                                      runs)
    # peak RSS of one whole case in a fresh process, as a user runs it (CLI, including writing the outputs)
    out = Path(tmp) / f"out_{label}"
    # the child reports its own peak RSS from /proc (VmHWM starts afresh at exec; ru_maxrss would carry over the
    # parent's peak at fork time, and RUSAGE_CHILDREN gives the largest of all children so far)
    probe = ("import sys; from TMBRBLib.cli import main; rc = main(sys.argv[1:]); "
             "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
             "print('PEAK_RSS_KB', hwm[0], file=sys.stderr); sys.exit(rc)")
    cmd = [sys.executable, "-c", probe, "score", "--ct", str(ct_path), "--seed-lps",
           ",".join(map(str, seed)), "--box-lps", ",".join(map(str, box.min + box.max)), "--model",
           str(scorer.bundle.path), "--out", str(out), "--progress", "none", "--device", "cpu"]
    t = time.perf_counter()
    p = subprocess.run(cmd, check=True, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "TMBRBModule")})
    res["cli_case_wall_s"] = time.perf_counter() - t
    kb = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    res["cli_peak_rss_mb"] = kb[-1] / 1024 if kb else float("nan")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-large", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    tmp = tempfile.mkdtemp(prefix="tmbrb-bench-")
    try:
        bundle = load_bundle(args.model) if args.model else load_bundle()
    except Exception:
        bundle = make_placeholder_bundle(Path(tmp) / "bundle")
    scorer = Scorer(bundle, "cpu")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}; model {bundle.name} ({bundle.sha256[:10]})")
    gf = cpu_conv3d_gflops(args.runs)
    model = bundle.model("cpu")
    shape = tuple(int(v) for v in bundle.tmbrb["preprocessing"]["shape"])
    flops = conv3d_flops(model, torch.zeros(1, 1, *shape))
    results = {"cpu_conv3d_gflops": gf, "model_conv_gflop_per_forward": flops / 1e9}
    cases = []
    if not args.no_large:
        from TMBRBLib.phantom import make_phantom
        t = time.perf_counter()
        ph = make_phantom(seed=3, shape_xyz=(512, 512, 300))
        gen = time.perf_counter() - t
        p = Path(tmp) / "phantom512.nrrd"
        sitk.WriteImage(ph.ct, str(p), True)
        cases.append(("phantom_512x512x300", p, ph.seed_lps, Box.from_corners(*ph.box_lps)))
        results["phantom_512_generation_s"] = gen
        del ph
    data = REPO / ".." / "shared" / "data" / "real_ct"
    if (data / "cases.json").is_file():
        meta = json.loads((data / "cases.json").read_text())
        for name in ("pyradiomics/lung1_image.nrrd", "pyradiomics/lung2_image.nrrd"):
            m = meta[name]
            half = np.array(m["spacing_mm"]) / 2
            box = Box(tuple(np.array(m["bbox_lps_mm_min"]) - half), tuple(np.array(m["bbox_lps_mm_max"]) + half))
            cases.append((Path(name).stem, data / name, tuple(m["seed_com_lps_mm"]), box))
    rows = []
    for label, path, seed, box in cases:
        r = bench_case(label, path, seed, box, scorer, args.runs, tmp)
        r["model_vs_conv3d_throughput"] = r["forward_s"] / (flops / (gf * 1e9))
        rows.append(r)
    results["cases"] = rows
    print(f"CPU conv3d throughput: {gf:.1f} GFLOP/s; model: {flops / 1e9:.2f} GFLOP (conv) per {shape} forward "
          f"-> {flops / gf / 1e9:.3f} s at that throughput")
    keys = ["ct_size", "load_ct_s", "crop_s", "whole_ct_resample_then_crop_s", "ratio_whole_vs_crop_first",
            "forward_s", "model_vs_conv3d_throughput", "forward_cam_s", "forward_plain_gradcam_s",
            "ratio_cam_method_vs_plain_gradcam", "tta8_crops_s", "tta8_forward_s",
            "cam_to_ct_grid_s", "whole_case_8tta_s", "whole_case_proposed_box_s", "cli_case_wall_s",
            "cli_peak_rss_mb"]
    print(f"class activation map: {rows[0].get('cam_method')} (forward_cam_s); forward_plain_gradcam_s is plain "
          "Grad-CAM at features.transition2.relu, measured in the same run")
    print(f"medians over {args.runs} runs (seconds unless named)")
    print(f"{'':34}" + "".join(f"{r['case'][:22]:>24}" for r in rows))
    for k in keys:
        vals = []
        for r in rows:
            v = r.get(k)
            vals.append(f"{v:>24.3f}" if isinstance(v, float) else f"{str(v):>24}")
        print(f"{k:34}" + "".join(vals))
    print("targets: forward_cam_s <= 0.5, whole_case_8tta_s <= 3, cli_peak_rss_mb <= 1536")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
