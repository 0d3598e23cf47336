"""Browser viewer timings on the 512x512 real CT (../shared/data/real_ct/pyradiomics/lung1_image.nrrd).

Measures, in a real headless Chromium: page open -> first rendered axial slice; Apply -> result shown (the first
Apply, then ``--warm-runs`` more on the warm engine worker: median), and for the warm ones also Apply -> the map drawn
in every view (three slices and 3D: the server's own figure, from the click's arrival to the last view's first finished
frame after the result was placed, read from its log; the page's images then follow over the websocket); Save results (the full outputs written then);
and the server's resident memory (VmRSS, and its peak VmHWM) after opening the CT and after the result.

    python benchmarks/bench_viewer.py [--ct CT --seed-ras R,A,S] [--shifts 8] [--json out.json]

Needs trame-slicer, playwright and /usr/bin/chromium; the model is $TMBRB_MODEL or the bundled one (a placeholder
bundle is made when neither exists: timings do not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "viewer"), str(REPO / "tests"), str(REPO / "TMBRBModule"), str(REPO)]

from conftest import CHROMIUM_ARGS, FIRST_SLICE_JS, ViewerServer, chromium_path, engine_env  # noqa: E402

LUNG1 = REPO / ".." / "shared" / "data" / "real_ct" / "pyradiomics" / "lung1_image.nrrd"
LUNG1_SEED_RAS = "21.86,120.54,-611.5"  # label centre of mass (Testing/real_ct_cases.json)


# the viewer's log line after each result (tmbrb_viewer.app, _frame_done). The page's images cannot tell it: a view's
# image is replaced at every frame, also before the map arrives, and a re-applied case may draw the same picture.
MAP_DRAWN = re.compile(r"Apply -> the map drawn in every view: ([0-9.]+) s")


# In the page: the time (performance.now(), ms) of the last press on Apply and of each moment the score became visible
# in the document, seen by a MutationObserver. Playwright's own wait for the score adds its polling to the figure (a
# trace showed the score in the document 0.03-0.05 s after the server had it, and Playwright reporting it up to 0.5 s
# later), so the warm figures are taken from these.
PAGE_TIMES_JS = """
(() => {
  window.__tmbrbTimes = {applied: null, shown: []};
  document.addEventListener('pointerdown', (ev) => {
    if (ev.target && ev.target.closest && ev.target.closest('#tmbrb-apply')) window.__tmbrbTimes.applied = performance.now();
  }, true);
  let was = false;
  const look = () => {
    const el = document.querySelector('#tmbrb-score');
    const now = !!(el && el.offsetParent !== null && el.textContent.trim());
    if (now && !was) window.__tmbrbTimes.shown.push(performance.now());
    was = now;
  };
  const start = () => new MutationObserver(look).observe(document.body, {subtree: true, childList: true,
                                                                         attributes: true, characterData: true});
  if (document.body) start(); else document.addEventListener('DOMContentLoaded', start);
})();
"""
PAGE_APPLY_TO_SCORE_JS = ("() => { const t = window.__tmbrbTimes; const s = t.shown.filter(v => v >= t.applied); "
                          "return s.length ? (s[0] - t.applied) / 1000 : null; }")


def map_drawn_figures(server) -> list:
    return [float(v) for v in MAP_DRAWN.findall(server.log_tail(10_000_000))]


def rss_mb(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return out


def cpu_seconds(pid: int) -> dict:
    """User + system CPU seconds of the server process, of the engine worker(s) it started and of Chromium's processes
    (the page's own work competes for the same cores)."""
    import psutil

    server = psutil.Process(pid)
    t = server.cpu_times()
    out = {"server": t.user + t.system, "engine worker": 0.0, "browser": 0.0}
    for child in server.children(recursive=True):
        try:
            c = child.cpu_times()
            out["engine worker"] += c.user + c.system
        except psutil.Error:  # ended meanwhile
            pass
    for proc in psutil.process_iter(["name"]):  # Chromium's processes (browser, renderer, GPU/compositor)
        try:
            if "chrom" in (proc.info["name"] or "").lower() or "headless_shell" in (proc.info["name"] or ""):
                c = proc.cpu_times()
                out["browser"] += c.user + c.system
        except psutil.Error:
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", default=str(LUNG1.resolve()))
    ap.add_argument("--seed-ras", default=LUNG1_SEED_RAS)
    ap.add_argument("--shifts", type=int, default=8)
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--warm-runs", type=int, default=3, help="Apply again this many times (median; default 3)")
    args = ap.parse_args()
    if not Path(args.ct).exists():
        print(f"CT {args.ct} not found (../shared/data beside the repository)", file=sys.stderr)
        return 2
    chromium = chromium_path()
    if chromium is None:
        print("Chromium not found (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from TMBRBLib.bundle import default_bundle_path, make_placeholder_bundle

    work = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    bundle = default_bundle_path()
    if not (bundle / "configs" / "metadata.json").is_file():
        bundle = make_placeholder_bundle(work / "bundle", seed=6).path
    t_start = time.perf_counter()
    server = ViewerServer(["--ct", args.ct, "--shifts", str(args.shifts), "--device", "cpu", "--out",
                           str(work / "out")], engine_env(bundle), work, work / "server.log", timeout_s=300)
    figures = {"ct": args.ct, "shifts": args.shifts, "server_ready_s": round(time.perf_counter() - t_start, 2),
               "cpu_count": os.cpu_count()}
    try:
        figures["rss_after_open_mb"] = rss_mb(server.pid)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.add_init_script(PAGE_TIMES_JS)
            t0 = time.perf_counter()
            page.goto(server.url)
            page.wait_for_function(FIRST_SLICE_JS, timeout=120_000)
            figures["page_open_to_first_slice_s"] = round(time.perf_counter() - t0, 2)
            page.fill("#tmbrb-goto", args.seed_ras)
            page.click("#tmbrb-goto-btn")
            page.click("#tmbrb-place-seed")
            box = page.locator("#tmbrb-view-Red").locator("xpath=..").bounding_box()
            t0 = time.perf_counter()
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.locator("#tmbrb-message").filter(has_text="Box proposed").wait_for(timeout=60_000)
            figures["click_to_box_proposed_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            page.click("#tmbrb-apply")
            page.wait_for_selector("#tmbrb-score", state="visible", timeout=600_000)
            figures["apply_to_result_s"] = round(time.perf_counter() - t0, 2)
            figures["score_shown"] = page.inner_text("#tmbrb-score")
            # the warm runs start once this result's map is drawn: a click while it is being placed and drawn waits
            # for that (stop 14's "first warm Apply is the slow one" was this wait, not the engine)
            deadline = time.perf_counter() + 600
            while not map_drawn_figures(server) and time.perf_counter() < deadline:
                time.sleep(0.05)
            figures["apply_to_map_drawn_in_every_view_s"] = (map_drawn_figures(server) or [None])[0]
            time.sleep(1.0)
            warm, in_page, views, cpu = [], [], [], []
            for _ in range(args.warm_runs):  # Apply again: the engine worker is warm, the CT already handed over
                before = cpu_seconds(server.pid)
                drawn = len(map_drawn_figures(server))
                t0 = time.perf_counter()
                page.click("#tmbrb-apply")
                page.wait_for_selector("#tmbrb-score", state="hidden", timeout=60_000)
                page.wait_for_selector("#tmbrb-score", state="visible", timeout=600_000)
                warm.append(time.perf_counter() - t0)
                in_page.append(page.evaluate(PAGE_APPLY_TO_SCORE_JS))
                deadline = time.perf_counter() + 600
                while len(map_drawn_figures(server)) <= drawn and time.perf_counter() < deadline:
                    time.sleep(0.05)
                if len(map_drawn_figures(server)) <= drawn:
                    raise SystemExit("the viewer did not log the map drawn in every view within 600 s")
                views.append(map_drawn_figures(server)[drawn])
                time.sleep(1.0)  # the views' second (still quality) frames: counted in the CPU, not in the times
                after = cpu_seconds(server.pid)
                cpu.append({k: after[k] - before.get(k, 0.0) for k in after})
            figures["warm_apply_to_result_s"] = [round(v, 2) for v in warm]
            # the same, timed in the page: the press on Apply -> the score in the document (without Playwright's
            # polling; the paint follows within a frame)
            figures["warm_apply_to_score_in_page_s"] = [None if v is None else round(v, 2) for v in in_page]
            figures["warm_apply_to_map_drawn_in_every_view_s"] = [round(v, 2) for v in views]
            if warm:
                figures["warm_apply_to_result_median_s"] = round(statistics.median(warm), 2)
                if None not in in_page:
                    figures["warm_apply_to_score_in_page_median_s"] = round(statistics.median(in_page), 2)
                figures["warm_apply_to_map_drawn_in_every_view_median_s"] = round(statistics.median(views), 2)
                # CPU seconds each process spent during a warm Apply (median): on two cores the server's own work
                # (rendering, websocket images) competes with the engine worker's
                figures["warm_apply_cpu_s"] = {k: round(statistics.median(c.get(k, 0.0) for c in cpu), 2)
                                               for k in cpu[0]}
            figures["rss_after_result_mb"] = rss_mb(server.pid)
            # Save results: the warm worker writes tmbrb score's full-grid files from the result it holds (Apply
            # hands the volumes over as regions only), plus the page's snapshot
            t0 = time.perf_counter()
            page.click("#tmbrb-save-results")
            page.locator("#tmbrb-saved").filter(has_text="Saved result.json").wait_for(timeout=600_000)
            figures["save_results_s"] = round(time.perf_counter() - t0, 2)
            browser.close()
    finally:
        server.stop()
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
