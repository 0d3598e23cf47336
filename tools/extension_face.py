"""Make the extension's catalogue face in Resources/ from the viewer tests' screenshots (issue 15).

The browser viewer's tests (tests/viewer/test_viewer_browser.py and test_viewer_3d.py) save what the viewer shows after
Apply on the demo phantom in test-artifacts/viewer/. This script turns three of them into the screenshots the
Extensions Index shows, and crops the extension icon (128x128) out of the 3D view, centred on the class activation map's
heat colours (the axial view's colour bar has them too). Nothing is drawn by hand and nothing is downloaded.

    pytest tests/viewer/test_viewer_3d.py "tests/viewer/test_viewer_browser.py::test_click_seed_apply_matches_tmbrb_score_and_shows_the_cam"
    python tools/extension_face.py [--artifacts test-artifacts/viewer] [--out Resources]

Writes Resources/Icons/TMBRB.png and Resources/Screenshots/{cam_2d,cam_3d,viewer}.png (palette PNGs, each well under
300 kB), which CMakeLists.txt (EXTENSION_ICONURL, EXTENSION_SCREENSHOTURLS) and TMBRB.s4ext point at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ICON_SIZE = 128
# screenshot name in Resources/Screenshots <- the viewer test's artifact, and the widest it is kept
SCREENSHOTS = {"cam_2d.png": ("axial_with_cam.png", 640), "cam_3d.png": ("3d_after_apply.png", 640),
               "viewer.png": ("apply_result.png", 1000)}
MAX_BYTES = 300_000


def is_heat(img: np.ndarray) -> np.ndarray:
    """Pixels in the CAM's heat colours (the same test as tests/viewer/test_viewer_3d.py)."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return (r > 120) & (r - b > 70) & (r - g > 25) & (g >= b - 10)


def icon_from(view: Image.Image, size: int = ICON_SIZE) -> Image.Image:
    """A square crop of a view around its heat colours (their extent and a quarter more on each side), resized to
    `size` x `size`."""
    rgb = np.asarray(view.convert("RGB"))
    heat = np.argwhere(is_heat(rgb))
    if not len(heat):
        raise SystemExit("The 3D screenshot shows no CAM heat colours: run the viewer tests first (see --help).")
    (r0, c0), (r1, c1) = heat.min(axis=0), heat.max(axis=0)
    half = max(int(0.75 * max(r1 - r0, c1 - c0)), ICON_SIZE // 4)
    half = min(half, min(rgb.shape[:2]) // 2)
    rc, cc = (r0 + r1) // 2, (c0 + c1) // 2
    top = int(np.clip(rc - half, 0, rgb.shape[0] - 2 * half))
    left = int(np.clip(cc - half, 0, rgb.shape[1] - 2 * half))
    crop = Image.fromarray(rgb[top:top + 2 * half, left:left + 2 * half])
    return crop.resize((size, size), Image.LANCZOS)


def small_png(img: Image.Image, width: int, path: Path) -> Path:
    """Save `img` no wider than `width`, as a 256-colour palette PNG (screenshots of rendered views lose nothing
    visible), and check it stays under MAX_BYTES."""
    img = img.convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=256, method=Image.MEDIANCUT).save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{path} is {path.stat().st_size} bytes, over {MAX_BYTES}.")
    return path


def main(argv=None) -> int:
    """Write the icon and the screenshots; print each file and its size."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, default=REPO / "test-artifacts" / "viewer")
    ap.add_argument("--out", type=Path, default=REPO / "Resources")
    args = ap.parse_args(argv)
    missing = [src for src, _ in SCREENSHOTS.values() if not (args.artifacts / src).is_file()]
    if missing:
        print(f"Missing in {args.artifacts}: {', '.join(missing)}. Run the viewer tests first (see --help).",
              file=sys.stderr)
        return 2
    (args.out / "Icons").mkdir(parents=True, exist_ok=True)
    (args.out / "Screenshots").mkdir(parents=True, exist_ok=True)
    written = []
    for name, (src, width) in SCREENSHOTS.items():
        written.append(small_png(Image.open(args.artifacts / src), width, args.out / "Screenshots" / name))
    icon = args.out / "Icons" / "TMBRB.png"
    icon_from(Image.open(args.artifacts / "3d_after_apply.png")).save(icon, optimize=True)
    written.append(icon)
    for path in written:
        print(f"{path.relative_to(args.out.parent) if args.out.parent in path.parents else path}: "
              f"{Image.open(path).size[0]}x{Image.open(path).size[1]}, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
