"""The class activation map in the viewer's 3D view (issue 11), in a real headless Chromium: after Apply on the demo
phantom, with the slice planes hidden in 3D, the 3D view holds heat-coloured pixels inside the tumour's projection,
with the translucent tumour and ring drawn and without them; at CAM opacity 0 or with 'CAM in 3D' off they are gone;
the same view before Apply has none; a left-drag in 3D starting on the box rotates the view and does not move the box.
Screenshots of the 3D view before and after go to test-artifacts/viewer/.

Heat over the ring *outside* the tumour's projection is checked on the same display code in
tests/slicer/test_render_3d.py, on a case whose map is known to reach there. On the demo phantom the map's strong
values (>= 0.3) lie 83% in the ring, but in its inner millimetres: seen from the front or the side they project inside
the tumour's silhouette, so no view of this case separates them in pixels."""

from __future__ import annotations

import re
import time

import numpy as np
import SimpleITK as sitk

from conftest import ARTIFACTS
from test_viewer_browser import (APPLY_TIMEOUT_MS, click_view_centre, expect_message, frame_src, index_to_ras, ras_text,
                                 set_cam_opacity, settled_pixels, wait_new_frame)

THREED = "ThreeD"


def is_heat(img: np.ndarray) -> np.ndarray:
    """Pixels in the map's heat colours (red over green over blue); the background is blue-grey, the tumour
    yellow-grey, the ring blue, the box's 3D outline grey and the seed green."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return (r > 120) & (r - b > 70) & (r - g > 25) & (g >= b - 10)


def goto(page, ras) -> None:
    """'Go to point', the typed value given time to reach the server before the click (else Go may read it empty)."""
    page.fill("#tmbrb-goto", ras_text(ras))
    page.wait_for_timeout(700)
    old = frame_src(page, "Red")
    page.click("#tmbrb-goto-btn")
    wait_new_frame(page, old, "Red")


def threed(page) -> np.ndarray:
    # a 3D frame with volume rendering takes long on software GL under load: a frame rendered before a change can
    # arrive after it and look settled for 0.3 s (seen in a loaded run with the map still drawn after 'CAM in 3D'
    # was switched off), so the 3D view must keep still for longer
    return settled_pixels(page, THREED, timeout_s=20.0, quiet_ms=1500)


def toggle(page, element_id: str) -> np.ndarray:
    """Click a checkbox of the panel; the 3D view's pixels once its new frame has settled."""
    old = frame_src(page, THREED)
    page.click(f"#{element_id}")
    wait_new_frame(page, old, THREED)
    return threed(page)


def changed(a: np.ndarray, b: np.ndarray, at_least: float = 12.0) -> np.ndarray:
    return np.abs(a - b).sum(axis=2) > at_least


def save(img: np.ndarray, name: str) -> None:
    from PIL import Image

    Image.fromarray(img.astype(np.uint8)).save(ARTIFACTS / name)


def map_drawn_log(server) -> list:
    return [float(v) for v in re.findall(r"Apply -> the map drawn in every view: ([0-9.]+) s", server.log_tail(10**7))]


def test_cam_is_visible_in_3d_over_tumour_and_ring(page, viewer_server, phantom_files):
    _ct, _tumour, case = phantom_files
    old = frame_src(page, THREED)
    page.click("#tmbrb-slices-3d")  # the slice planes hidden in 3D
    assert not page.is_checked("#tmbrb-slices-3d")
    wait_new_frame(page, old, THREED)
    tumour = sitk.GetArrayViewFromImage(case.tumour)
    goto(page, index_to_ras(case.tumour, np.argwhere(tumour > 0).mean(axis=0)))
    page.click("#tmbrb-place-seed")
    click_view_centre(page)
    expect_message(page, "Box proposed")
    page.wait_for_timeout(1000)
    control = threed(page)
    save(control, "3d_before_apply.png")
    assert not is_heat(control).any(), "heat colours in the 3D view before Apply"

    old = frame_src(page, THREED)
    logged = len(map_drawn_log(viewer_server))
    t_click = time.perf_counter()
    page.click("#tmbrb-apply")
    page.wait_for_selector("#tmbrb-score", state="visible", timeout=APPLY_TIMEOUT_MS)
    expect_message(page, "Done.")
    wait_new_frame(page, old, THREED)
    # the server's figure for bench_viewer: one line per result, from the click's arrival to the views' frames
    deadline = time.time() + 60
    while len(map_drawn_log(viewer_server)) == logged and time.time() < deadline:
        page.wait_for_timeout(200)
    figures = map_drawn_log(viewer_server)[logged:]
    assert len(figures) == 1, f"expected one 'map drawn' line for this Apply, got {figures}"
    assert 0 < figures[0] < time.perf_counter() - t_click
    after = threed(page)
    save(after, "3d_after_apply.png")

    in_tumour, in_ring, no_cam, cam_only = regions_and_map(page)
    save(no_cam, "3d_cam_off.png")
    save(cam_only, "3d_cam_without_surfaces.png")
    assert in_tumour.sum() > 100 and in_ring.sum() > 100, "tumour or ring not drawn in 3D"
    assert not is_heat(no_cam).any(), "heat colours with 'CAM in 3D' off"
    heat = is_heat(after)
    assert heat[in_tumour].sum() > 50, f"no heat colours inside the tumour's projection ({heat[in_tumour].sum()})"
    assert is_heat(cam_only)[in_tumour].sum() > 50

    old = frame_src(page, THREED)
    set_cam_opacity(page, "Home")  # opacity 0
    wait_new_frame(page, old, THREED)
    zero = threed(page)
    deadline = time.time() + 15  # a frame rendered before the change can arrive first: wait for the settled one
    while is_heat(zero).any() and time.time() < deadline:
        page.wait_for_timeout(300)
        zero = threed(page)
    save(zero, "3d_cam_opacity_0.png")
    assert not is_heat(zero).any(), "heat colours at CAM opacity 0"

    # a plain left-drag in 3D, starting inside the box, rotates the view and leaves the box (and so the result) alone
    from playwright.sync_api import expect

    rotated = left_drag(page)
    save(rotated, "3d_after_left_drag.png")
    assert changed(rotated, zero).sum() > 500, "a left-drag in 3D did not rotate the view"
    page.wait_for_timeout(1000)
    expect(page.locator("#tmbrb-stale")).to_have_count(0)  # the box did not move


def regions_and_map(page):
    """In the 3D view as it is: the tumour's projection and the ring's outside it (from their own 3D toggles, the map
    hidden), the view with the map hidden, and the map alone (both surfaces hidden, so that the ring's blue does not
    mix into the map's colours). Leaves every toggle as it found it (all on)."""
    no_cam = toggle(page, "tmbrb-cam-3d")
    no_tumour = toggle(page, "tmbrb-tumour-3d")
    toggle(page, "tmbrb-tumour-3d")
    no_ring = toggle(page, "tmbrb-ring-3d")
    toggle(page, "tmbrb-cam-3d")
    cam_only = toggle(page, "tmbrb-tumour-3d")
    toggle(page, "tmbrb-tumour-3d")
    toggle(page, "tmbrb-ring-3d")
    in_tumour = changed(no_cam, no_tumour)
    return in_tumour, changed(no_cam, no_ring) & ~in_tumour, no_cam, cam_only


def left_drag(page) -> np.ndarray:
    """A plain left-drag in the 3D view, starting inside the box's outline, off the seed (the seed's own marker can be
    dragged, as in 3D Slicer); the view's pixels once settled."""
    box = page.locator(f"#tmbrb-view-{THREED}").locator("xpath=..").bounding_box()
    cx, cy = box["x"] + 0.4 * box["width"], box["y"] + 0.35 * box["height"]
    old = frame_src(page, THREED)
    page.mouse.move(cx, cy)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(cx + 12 * step, cy + 4 * step)
    page.mouse.up()
    wait_new_frame(page, old, THREED)
    return threed(page)
