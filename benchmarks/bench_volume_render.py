"""The class activation map's 3D frame on this machine's OpenGL, at one ray per pixel and with thinner rays.

The viewer (tmbrb_viewer) renders its 3D view on the server; on software OpenGL (Mesa's llvmpipe) the map's volume
rendering casts its rays on the CPU, on the server's event loop, and is most of the server's work on a result. This
scores a small oblique phantom with a placeholder model (the picture's cost does not depend on the weights), shows the
map as the module does (mrml.show_cam_in_3d, through trame-slicer's volume rendering logic), centres the 3D view on the
result as the viewer does, and times full 3D frames at each image sample distance (rays one per N x N pixels): median
wall and CPU seconds (CPU includes llvmpipe's threads), and how many of the map's heat-coloured pixels stay so.

    python benchmarks/bench_volume_render.py [--size 424x503] [--distances 1,2,3] [--runs 5] [--pictures DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "slicer"), str(REPO / "tests"), str(REPO / "TMBRBModule"), str(REPO)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="424x503", help="3D view size in pixels, WxH (default: the viewer's 3D view on "
                                                      "a 1400x900 page)")
    ap.add_argument("--distances", default="1,2,3", help="image sample distances to time (default 1,2,3)")
    ap.add_argument("--runs", type=int, default=5, help="frames per distance (median; default 5)")
    ap.add_argument("--pictures", help="write each distance's last frame here as PNG")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    distances = [float(v) for v in args.distances.split(",")]

    import numpy as np
    from conftest import add_ct, add_seed
    from test_render_3d import grab, is_heat
    from test_slicer_logic import oblique_ct
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import ThreeDView

    from TMBRBLib.bundle import make_placeholder_bundle
    from TMBRBLib.geometry import lps_to_ras
    from TMBRBLib.slicer import mrml as ma
    from TMBRBLib.slicer.logic import SceneLogic

    work = Path(tempfile.mkdtemp(prefix="bench-vr-"))
    app = SlicerApp()
    view = ThreeDView(app.scene, app.app_logic, "ThreeD")
    view.renderer().SetUseDepthPeeling(False)  # as in the viewer
    view.renderer().SetUseDepthPeelingForVolumes(False)
    window = view.render_window()
    window.SetSize(width, height)
    logic = SceneLogic(app.scene)
    logic.bundle = make_placeholder_bundle(work / "bundle", seed=6).path
    ct = add_ct(app.scene, oblique_ct()[0])
    seed = add_seed(app.scene, lps_to_ras((14.0, -16.0, 33.0)))
    try:
        result = logic.process(ct, seed, numberOfShifts=0, device="cpu")
        ma.centre_views_on_result(app.scene, ma.seed_ras(seed), result.nodes["roi"])
        renderer = [line.strip() for line in window.ReportCapabilities().splitlines() if "renderer string" in line]
        print(f"3D view {width}x{height}; {renderer[0] if renderer else 'renderer unknown'}; "
              f"software GL: {ma.software_gl(window)}")
        grab(window)  # the first frame uploads the volume: not timed
        ref = None
        print("| rays one per N x N pixels | wall s/frame (median) | CPU s/frame (median) | heat pixels | "
              "of one-ray-per-pixel's heat kept |")
        print("|---|---|---|---|---|")
        for d in distances:
            ma.set_volume_image_sample_distance(view.renderer(), d)
            walls, cpus = [], []
            for _ in range(args.runs):
                view.renderer().GetActiveCamera().Azimuth(0.0)
                view.renderer().GetActiveCamera().Modified()
                t0, c0 = time.perf_counter(), time.process_time()
                img = grab(window)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            heat = is_heat(img)
            ref = heat if ref is None else ref
            kept = (heat & ref).sum() / max(ref.sum(), 1)
            print(f"| {d:g} | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} | {heat.sum()} | "
                  f"{100 * kept:.1f}% |", flush=True)
            if args.pictures:
                from PIL import Image

                Path(args.pictures).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img.astype(np.uint8)).save(Path(args.pictures) / f"map_3d_isd{d:g}.png")
    finally:
        logic.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
