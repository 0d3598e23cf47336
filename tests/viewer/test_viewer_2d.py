"""The viewer's 2D reading view in a real headless Chromium: window/level presets and drag, orientation letters, slice
position and the CT value under the pointer, the box drawn without fill, the refused Apply with the seed outside the
box, saving into one case folder with a labelled snapshot laid out as the page, a clean page load and Save (no console
error, no 4xx), and a new CT that clears the previous case.

The tests share one viewer server (the demo phantom opened at start, no seed) and run in file order."""

from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk
from playwright.sync_api import expect

from conftest import ARTIFACTS
from test_viewer_browser import (APPLY_TIMEOUT_MS, expect_message, expect_message_saved, goto, index_to_ras,
                                 settled_pixels, view)


def tumour_centre_ras(case):
    tumour = sitk.GetArrayViewFromImage(case.tumour)
    return index_to_ras(case.tumour, np.argwhere(tumour > 0).mean(axis=0))


def view_centre(page, tag: str = "Red"):
    box = view(page, tag).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def hu_under_pointer(page, x: float, y: float, tag: str = "Red") -> float:
    """Move the pointer to (x, y) and read the CT value the view shows there."""
    page.mouse.move(x - 3, y - 3)
    page.mouse.move(x, y)
    loc = page.locator(f"#tmbrb-hu-{tag}")
    expect(loc).to_contain_text("HU", timeout=15_000)
    page.wait_for_timeout(800)  # the last move's value
    return float(re.search(r"(-?\d+) HU", loc.inner_text()).group(1))


def test_page_load_is_clean_and_slice_views_are_labelled(watched_page):
    page = watched_page
    page.wait_for_timeout(2000)  # late requests of the page load
    assert not page.bad_responses, page.bad_responses  # the trame client's POST paraview/ answered 405 on every load
    assert not page.console_errors, page.console_errors
    letters = {tag: "".join(page.inner_text(f"#tmbrb-orient-{tag}-{e}").strip() for e in "lrtb")
               for tag in ("Red", "Green", "Yellow")}
    # 3D Slicer's default orientations: axial and coronal in radiological convention, sagittal facing left
    assert letters == {"Red": "RLAP", "Green": "RLSI", "Yellow": "APSI"}, letters
    assert re.fullmatch(r"S: -?\d+\.\d mm", page.inner_text("#tmbrb-pos-Red").strip())
    assert re.fullmatch(r"A: -?\d+\.\d mm", page.inner_text("#tmbrb-pos-Green").strip())
    assert re.fullmatch(r"R: -?\d+\.\d mm", page.inner_text("#tmbrb-pos-Yellow").strip())
    # view labels readable on a bright image: a dark background behind the text
    bg = page.evaluate("() => getComputedStyle(document.querySelector('#tmbrb-view-Red')).backgroundColor")
    assert bg not in ("rgba(0, 0, 0, 0)", "transparent"), bg


def test_window_level_presets_and_drag_change_the_slice_view(page, phantom_files):
    _ct, _tumour, case = phantom_files
    goto(page, tumour_centre_ras(case))
    page.click("#tmbrb-wl-lung")
    expect(page.locator("#tmbrb-wl-text")).to_contain_text("W 1500 / L -600", timeout=15_000)
    lung = settled_pixels(page)
    page.click("#tmbrb-wl-soft-tissue")
    expect(page.locator("#tmbrb-wl-text")).to_contain_text("W 400 / L 40", timeout=15_000)
    soft = settled_pixels(page)
    assert np.abs(lung - soft).mean() > 5, "the soft-tissue window does not change the axial view"

    # drag-to-adjust: a left drag to the right widens the window
    page.click("#tmbrb-wl-drag")
    expect(page.locator("#tmbrb-wl-text")).to_contain_text("drag in a slice view", timeout=15_000)
    x, y = view_centre(page)
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x + 8 * i, y)
        page.wait_for_timeout(30)
    page.mouse.up()
    expect(page.locator("#tmbrb-wl-text")).not_to_contain_text("W 400 /", timeout=30_000)
    window = float(re.search(r"W (\d+)", page.inner_text("#tmbrb-wl-text")).group(1))
    assert window > 400
    dragged = settled_pixels(page)
    assert np.abs(dragged - soft).mean() > 2
    page.click("#tmbrb-wl-drag")
    expect(page.locator("#tmbrb-wl-text")).not_to_contain_text("drag in a slice view", timeout=15_000)
    page.click("#tmbrb-wl-lung")


def test_ct_value_under_the_pointer(page, phantom_files):
    _ct, _tumour, case = phantom_files
    ct = case.ct
    k = ct.GetSize()[2] // 2
    assert sitk.GetArrayViewFromImage(ct)[k, 6, 6] < -900
    goto(page, index_to_ras(ct, (k, 6, 6)))  # air, at the view's centre
    assert hu_under_pointer(page, *view_centre(page)) < -900
    goto(page, tumour_centre_ras(case))
    value = hu_under_pointer(page, *view_centre(page))
    assert -150 < value < 150, value  # the phantom's tumour is soft tissue (median 6 HU)
    # off the CT: said so
    box = view(page).bounding_box()
    page.mouse.move(box["x"] + 45, box["y"] + 8)
    expect(page.locator("#tmbrb-hu-Red")).to_contain_text("outside the CT", timeout=15_000)


def test_box_is_an_outline_without_fill(page, phantom_files):
    """Pixels inside the box but away from the seed and the outline are the same before and after the box appears."""
    _ct, _tumour, case = phantom_files
    goto(page, tumour_centre_ras(case))
    page.mouse.move(5, 5)  # the pointer off the views
    before = settled_pixels(page)
    page.click("#tmbrb-place-seed")
    x, y = view_centre(page)
    page.mouse.click(x, y)
    expect_message(page, "Box proposed")
    page.mouse.move(5, 5)
    after = settled_pixels(page)
    from PIL import Image

    Image.fromarray(after.astype(np.uint8)).save(ARTIFACTS / "axial_box_outline.png")
    cy, cx = before.shape[0] // 2, before.shape[1] // 2
    for dy, dx in ((-14, -14), (-14, 14), (14, -14), (14, 14)):  # inside the ~50 px box, off the seed's glyph
        a = before[cy + dy - 2:cy + dy + 3, cx + dx - 2:cx + dx + 3]
        b = after[cy + dy - 2:cy + dy + 3, cx + dx - 2:cx + dx + 3]
        assert np.abs(a - b).mean() < 6, (dy, dx, np.abs(a - b).mean())
    # and the box is drawn: the pixels changed somewhere (outline, handles, seed)
    assert np.abs(before - after).max() > 60


def test_apply_with_the_seed_dragged_out_of_the_box_is_refused(page, phantom_files):
    _ct, _tumour, case = phantom_files
    seed_ras = [float(v) for v in re.findall(r"-?\d+\.\d", page.inner_text("#tmbrb-seed-text"))[:3]]
    assert len(seed_ras) == 3, page.inner_text("#tmbrb-seed-text")
    goto(page, seed_ras)  # the seed at the view's centre
    x, y = view_centre(page)
    page.mouse.move(x + 2, y + 2)
    page.mouse.move(x, y)
    page.wait_for_timeout(1000)
    page.mouse.down()
    for i in range(1, 16):
        page.mouse.move(x + 10 * i, y + 6 * i)
        page.wait_for_timeout(40)
    page.mouse.up()
    page.wait_for_timeout(1500)
    page.click("#tmbrb-apply")
    text = expect_message(page, "outside the box")
    assert "seed" in text and ("Put the seed" in text or "move the box" in text), text
    expect(page.locator("#tmbrb-results")).to_have_count(0)
    # the seed again, inside the tumour: the box follows
    goto(page, tumour_centre_ras(case))
    page.click("#tmbrb-place-seed")
    page.mouse.click(*view_centre(page))
    expect_message(page, "Box proposed")


def test_saving_twice_uses_one_case_folder_with_a_labelled_snapshot(watched_page, viewer_server):
    page = watched_page
    expect(page.locator("#tmbrb-seed-text")).to_contain_text("seed RAS", timeout=15_000)
    page.click("#tmbrb-apply")
    page.wait_for_selector("#tmbrb-score", state="visible", timeout=APPLY_TIMEOUT_MS)
    page.click("#tmbrb-save-results")
    expect_message_saved(page, "Saved result.json")
    page.click("#tmbrb-save-results")  # again: the same folder (the server handles the clicks in order)
    page.click("#tmbrb-save-scene")
    expect_message_saved(page, "Saved the MRML scene")
    page.wait_for_timeout(1000)
    folders = [f for f in viewer_server.out.iterdir() if f.is_dir()]
    assert len(folders) == 1, folders
    names = {f.name for f in folders[0].iterdir()}
    assert {"result.json", "cam.nrrd", "scene.mrb", "snapshot.png"} <= names, names
    assert not page.console_errors, page.console_errors  # the save handlers' return value could not be serialized
    assert not page.bad_responses, page.bad_responses

    # the snapshot follows the page's layout: each quadrant is closest to the page's view at that place
    from PIL import Image

    snap = np.asarray(Image.open(folders[0] / "snapshot.png").convert("RGB")).astype(float)
    h, w = snap.shape[0] // 2, snap.shape[1] // 2
    quadrants = {"Red": snap[:h, :w], "Green": snap[h:, :w], "ThreeD": snap[:h, w:], "Yellow": snap[h:, w:]}
    shots = {}
    for tag in quadrants:
        img = Image.fromarray(settled_pixels(page, tag).astype(np.uint8)).resize((w, h))
        shots[tag] = np.asarray(img).astype(float)
    for tag, quadrant in quadrants.items():
        closest = min(shots, key=lambda t: np.abs(shots[t] - quadrant).mean())
        assert closest == tag, (tag, closest)
        corner = quadrant[:40, :120].max(axis=2)  # the label: white text on a black box
        assert (corner > 230).sum() > 15 and (corner < 15).sum() > 100, tag


def test_a_new_ct_clears_the_previous_case(page, viewer_server, phantom_files):
    ct_path, _tumour, _case = phantom_files
    page.click("#tmbrb-ecog-1")
    # uploaded: this server has no --data-dir, so a typed path is refused (tests/viewer/test_viewer_security.py)
    page.locator("input[type=file]").first.set_input_files(str(ct_path))
    expect_message(page, "CT opened", timeout_ms=60_000)
    expect(page.locator("#tmbrb-results")).to_have_count(0)
    assert page.inner_text("#tmbrb-box-text").strip() == ""
    expect(page.locator("#tmbrb-ecog-not-given")).to_have_class(re.compile("v-btn--active"))
