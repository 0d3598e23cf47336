"""The browser viewer driven in a real headless Chromium: seed by a click, Apply, the score equals `tmbrb score`, the
CAM overlay shows; bad input gives a message in the page and the server keeps serving.

Uses the demo phantom (written to NRRD) with its known tumour; the viewer runs in its own process (conftest)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from conftest import ARTIFACTS, engine_env

APPLY_TIMEOUT_MS = 240_000


def lps_to_ras(p):
    return (-float(p[0]), -float(p[1]), float(p[2]))


def ras_text(ras) -> str:
    return ",".join(f"{v:.2f}" for v in ras)


def expect_message(page, text: str, timeout_ms: int = 30_000) -> str:
    from playwright.sync_api import expect

    loc = page.locator("#tmbrb-message")
    expect(loc).to_contain_text(text, timeout=timeout_ms)
    return loc.inner_text()


def view(page, tag: str = "Red"):
    return page.locator(f"#tmbrb-view-{tag}").locator("xpath=..")


def frame_src(page, tag: str = "Red") -> str:
    return page.evaluate(f"() => document.querySelector('#tmbrb-view-{tag}').parentElement.querySelector('img').src")


def pixels_before_after_opacity(page, ras, key: str):
    """Centre the views on `ras`, then the axial view's pixels before and after the CAM opacity slider goes to `key`."""
    goto(page, ras)
    before = settled_pixels(page)
    old = frame_src(page)
    set_cam_opacity(page, key)
    wait_new_frame(page, old)
    return before, settled_pixels(page)


def settled_pixels(page, tag: str = "Red", timeout_s: float = 10.0, quiet_ms: int = 300) -> np.ndarray:
    """The view's pixels once the streamed picture stops changing (two screenshots ``quiet_ms`` apart agree): a view
    may send a quick frame first and a finished one after it, and comparing a quick frame with a finished one
    measures the stream, not the overlay."""
    deadline = time.time() + timeout_s
    last = view_pixels(page, tag)
    while time.time() < deadline:
        page.wait_for_timeout(quiet_ms)
        now = view_pixels(page, tag)
        if np.array_equal(now, last):
            return now
        last = now
    return last


def wait_new_frame(page, old_src: str, tag: str = "Red", timeout_ms: int = 30_000) -> None:
    page.wait_for_function(
        "([tag, old]) => { const i = document.querySelector('#tmbrb-view-' + tag).parentElement.querySelector('img');"
        " return i && i.src !== old && i.complete && i.naturalWidth > 0; }", arg=[tag, old_src], timeout=timeout_ms)


def goto(page, ras, tag: str = "Red") -> None:
    """Centre the slice views on a RAS point with the page's 'Go to point' field; waits for the new frame."""
    old = frame_src(page, tag)
    page.fill("#tmbrb-goto", ras_text(ras))
    page.click("#tmbrb-goto-btn")
    wait_new_frame(page, old, tag)


def click_view_centre(page, tag: str = "Red") -> None:
    box = view(page, tag).bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def view_pixels(page, tag: str = "Red") -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(view(page, tag).screenshot())).convert("RGB")).astype(float)


def centre_patch(img: np.ndarray, half: int = 4) -> np.ndarray:
    cy, cx = img.shape[0] // 2, img.shape[1] // 2
    return img[cy - half:cy + half + 1, cx - half:cx + half + 1]


def index_to_ras(image: sitk.Image, kji) -> tuple:
    return lps_to_ras(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]]))


def set_cam_opacity(page, key: str) -> None:
    """Move the opacity slider with the keyboard (Home = 0, End = 1), as a person can."""
    thumb = page.locator("#tmbrb-results .v-slider-thumb").first
    thumb.focus()
    page.keyboard.press(key)


# ----------------------------------------------------------------------------------------------------------------------


def test_bad_input_shows_a_message_and_the_server_keeps_serving(page, viewer_server, phantom_files, tmp_path):
    _ct, _tumour, case = phantom_files
    # Apply with no seed
    page.click("#tmbrb-place-seed")
    page.click("#tmbrb-apply")
    assert "Place the seed first" in expect_message(page, "Place the seed first")

    # a click outside the body (air inside the CT's field of view): the box proposal warns
    ct = case.ct
    air = index_to_ras(ct, (ct.GetSize()[2] // 2, 6, 6))
    assert sitk.GetArrayViewFromImage(ct)[ct.GetSize()[2] // 2, 6, 6] < -900  # it is air
    goto(page, air)
    page.click("#tmbrb-place-seed")
    click_view_centre(page)
    assert "No soft-tissue lesion" in expect_message(page, "No soft-tissue lesion")

    # a click outside the CT: refused, the seed is not kept
    outside = index_to_ras(ct, (ct.GetSize()[2] // 2, -40, -40))
    goto(page, outside)
    page.click("#tmbrb-place-seed")
    click_view_centre(page)
    assert "outside the CT" in expect_message(page, "outside the CT")
    page.click("#tmbrb-apply")
    expect_message(page, "Place the seed first")

    # a non-image file, uploaded
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a CT\n")
    page.locator("input[type=file]").first.set_input_files(str(bad))
    text = expect_message(page, "Could not read the CT")
    assert "notes.txt" in text

    # a typed path: this server was started without --data-dir, so the page cannot open server files
    page.fill("#tmbrb-ct-path", str(_ct))
    page.click("#tmbrb-open")
    expect_message(page, "without --data-dir")

    # still serving: HTTP answers, the page still acts, and the CT opened at start is still there
    assert viewer_server.proc.poll() is None and viewer_server.alive()
    assert "phantom_ct" in page.inner_text("#tmbrb-ct-name")
    goto(page, lps_to_ras(case.seed_lps))


def test_click_seed_apply_matches_tmbrb_score_and_shows_the_cam(page, viewer_server, viewer_bundle, phantom_files,
                                                                tmp_path):
    ct_path, _tumour_path, case = phantom_files
    tumour = sitk.GetArrayViewFromImage(case.tumour)
    centroid_kji = np.argwhere(tumour > 0).mean(axis=0)
    goto(page, index_to_ras(case.tumour, centroid_kji))

    # the seed, by a click on the tumour in the axial view; the box is proposed
    page.click("#tmbrb-place-seed")
    click_view_centre(page)
    expect_message(page, "Box proposed")
    assert "seed RAS" in page.inner_text("#tmbrb-seed-text")
    page.click("#tmbrb-ecog-1")

    page.click("#tmbrb-apply")
    page.wait_for_selector("#tmbrb-progress", state="visible", timeout=30_000)  # the progress indicator runs
    page.wait_for_selector("#tmbrb-score", state="visible", timeout=APPLY_TIMEOUT_MS)
    expect_message(page, "Done.")
    shown = page.inner_text("#tmbrb-score").strip()
    assert re.fullmatch(r"\d\.\d{3}", shown), shown
    for sel in ("#tmbrb-spread", "#tmbrb-os", "#tmbrb-pfs", "#tmbrb-ecog-combined", "#tmbrb-attention",
                "#tmbrb-model"):
        assert page.inner_text(sel).strip()
    assert "ECOG 1" in page.inner_text("#tmbrb-ecog-combined")
    for tag in ("Red", "Green", "Yellow", "ThreeD"):  # the views show the result before the page's picture is taken
        settled_pixels(page, tag)
    page.screenshot(path=str(ARTIFACTS / "apply_result.png"), full_page=True)

    # save the results: result.json, NRRD volumes and a PNG snapshot
    page.click("#tmbrb-save-results")
    saved = expect_message_saved(page, "Saved result.json")
    folder = Path(saved.rsplit(" in ", 1)[1].strip())
    for name in ("result.json", "cam.nrrd", "tumour.nrrd", "ring.nrrd", "snapshot.png"):
        assert (folder / name).is_file(), name
    result = json.loads((folder / "result.json").read_text())
    assert f"{result['score']:.3f}" == shown

    # the clicked seed lies in the phantom's tumour
    seed_lps = result["seed"]["lps"] if isinstance(result["seed"], dict) else result["seed"]
    idx = case.tumour.TransformPhysicalPointToIndex([float(v) for v in seed_lps])
    assert tumour[idx[2], idx[1], idx[0]] == 1, (seed_lps, idx)

    # the same CT, seed and box through `tmbrb score` give the number shown in the page
    box = result["box"]
    cli_out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "TMBRBLib.cli", "score", "--ct", str(ct_path),
           "--seed-lps", ",".join(repr(float(v)) for v in seed_lps),
           "--box-lps", ",".join(repr(float(v)) for v in list(box["lps_min"]) + list(box["lps_max"])),
           "--ecog", "1", "--shifts", "2", "--device", "cpu", "--out", str(cli_out), "--progress", "none",
           "--no-pictures"]
    done = subprocess.run(cmd, env=engine_env(viewer_bundle), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    cli = json.loads((cli_out / "result.json").read_text())
    assert f"{cli['score']:.3f}" == shown
    assert cli["risk"]["os"]["group"] in page.inner_text("#tmbrb-os")

    # the CAM overlay is visible in the axial view: where the CAM is high, pixels change with its opacity
    cam_img = sitk.ReadImage(str(folder / "cam.nrrd"))
    cam = sitk.GetArrayFromImage(cam_img)
    assert cam.max() > 0.5, "the model's CAM is empty on this case; nothing to overlay"
    # a high-CAM voxel over lung (dark), where the heat colours stand out; the CAM maximum if there is none
    ct_arr = sitk.GetArrayViewFromImage(case.ct)
    candidates = np.argwhere((cam >= 0.5) & (ct_arr < -500))
    if len(candidates):
        hot = tuple(candidates[np.argmax(cam[tuple(candidates.T)])])
    else:
        hot = np.unravel_index(np.argmax(cam), cam.shape)
    with_cam, without_cam = pixels_before_after_opacity(page, index_to_ras(cam_img, hot), "Home")
    diff_hot = np.abs(centre_patch(with_cam) - centre_patch(without_cam)).mean()
    from PIL import Image

    Image.fromarray(without_cam.astype(np.uint8)).save(ARTIFACTS / "axial_without_cam.png")
    Image.fromarray(with_cam.astype(np.uint8)).save(ARTIFACTS / "axial_with_cam.png")
    # (the hot spot may lie under the box's own fill, which mutes the change; the cold control below is the yardstick)
    assert diff_hot > 10, f"the CAM overlay does not change the axial view where the CAM is high ({diff_hot:.1f})"

    # control: where the CAM is zero, the same opacity change leaves the pixels alone
    cold = np.argwhere((cam == 0) & (ct_arr > -900))
    far = cold[np.argmax(np.linalg.norm(cold - np.array(hot), axis=1))]
    off, on = pixels_before_after_opacity(page, index_to_ras(cam_img, far), "End")
    diff_cold = np.abs(centre_patch(on) - centre_patch(off)).mean()
    assert diff_cold < 8 and diff_cold < diff_hot / 3, (diff_cold, diff_hot)

    # save the MRML scene: a .mrb that holds the CT, the CAM and the module's parameter node
    page.click("#tmbrb-save-scene")
    saved = expect_message_saved(page, "Saved the MRML scene")
    mrb = Path(re.search(r"scene (\S+\.mrb)", saved).group(1))
    with zipfile.ZipFile(mrb) as z:
        mrml = [n for n in z.namelist() if n.endswith(".mrml")]
        assert mrml, z.namelist()
        text = z.read(mrml[0]).decode("utf-8", "replace")
    assert "TMBRB CAM" in text and "TMBRB seed" in text and "TMBRB box" in text

    # no stale result: another ECOG marks the shown result outdated; going back to the scored inputs clears it
    from playwright.sync_api import expect

    expect(page.locator("#tmbrb-stale")).to_have_count(0)
    page.click("#tmbrb-ecog-2")
    expect(page.locator("#tmbrb-stale")).to_be_visible(timeout=15_000)
    assert "Outdated" in page.inner_text("#tmbrb-stale")
    page.click("#tmbrb-ecog-1")
    expect(page.locator("#tmbrb-stale")).to_have_count(0, timeout=15_000)
    assert viewer_server.alive()


def expect_message_saved(page, text: str) -> str:
    from playwright.sync_api import expect

    loc = page.locator("#tmbrb-saved")
    expect(loc).to_contain_text(text, timeout=60_000)
    return loc.inner_text()
