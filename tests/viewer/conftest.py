"""Fixtures for the browser viewer tests: a real viewer server process and a real headless Chromium (Playwright).

Skips with a reason when Chromium, Playwright or trame-slicer is missing. The server binds a loopback port
of the system's choosing (--port 0), prints it, and is stopped by its PID.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _prereq import require

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "viewer"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# An untrained placeholder whose Grad-CAM is not zero on the demo phantom (seed 0's is zero there), used when the
# bundled demo model is not installed, so that the CAM overlay has something to show.
PLACEHOLDER_SEED = 6
ANNOUNCE = re.compile(r"TMBRB viewer: http://127\.0\.0\.1:(\d+)/\?secret=(\S+)")


def chromium_path():
    for candidate in (os.environ.get("TMBRB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def require_browser_stack():
    if importlib.util.find_spec("trame_slicer") is None:
        require("chromium", 'trame-slicer is not installed (pip install "trame-slicer[standalone]")')
    if importlib.util.find_spec("playwright") is None:
        require("chromium", "the Playwright Python package is not installed (pip install playwright)")
    path = chromium_path()
    if path is None:
        require("chromium", "Chromium is not installed (apt-get install -y chromium)")
    return path


def engine_env(bundle: Path) -> dict:
    env = dict(os.environ)
    env["TMBRB_MODEL"] = str(bundle)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "TMBRBModule"), str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


class ViewerServer:
    """`python -m tmbrb_viewer` in a child process; stop() ends it by its PID."""

    def __init__(self, args, env, cwd: Path, log_path: Path, timeout_s: float = 120.0):
        # --port 0: the server binds a port the system picks and prints the address it got once it listens; no
        # port is picked here and released for the server to take (another process could take it in between).
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tmbrb_viewer", "--port", "0", *args],
                                     env=env, cwd=str(cwd), stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout_s
        found = None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the viewer exited with code {self.proc.returncode}:\n{self.log_tail()}")
            # the page's address with its port and the per-launch websocket secret, as the CLI prints it
            found = found or ANNOUNCE.search(self.log_tail(100_000))
            if found:
                self.port, self.secret = int(found.group(1)), found.group(2)
                self.url = f"http://127.0.0.1:{self.port}/?secret={self.secret}"
                if self.alive():
                    break
            if time.monotonic() > deadline:
                self.stop()
                what = "answer" if found else "print its address"
                raise RuntimeError(f"the viewer did not {what} within {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, n: int = 4000) -> str:
        if not self._log.closed:  # closed by stop(): what was written is in the file already
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._log.close()


@pytest.fixture(scope="session")
def viewer_bundle(tmp_path_factory):
    """The bundled demo model when installed, else a placeholder with a non-zero CAM on the phantom."""
    from TMBRBLib.bundle import default_bundle_path, make_placeholder_bundle

    bundled = default_bundle_path()
    if (bundled / "configs" / "metadata.json").is_file():
        return bundled
    return make_placeholder_bundle(tmp_path_factory.mktemp("viewer-bundle") / "placeholder",
                                   seed=PLACEHOLDER_SEED).path


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory):
    """The demo phantom written as NRRD files: (ct path, tumour truth path, case)."""
    import SimpleITK as sitk

    from TMBRBLib.phantom import make_demo_case

    d = tmp_path_factory.mktemp("phantom")
    case = make_demo_case()
    ct, tumour = d / "phantom_ct.nrrd", d / "phantom_tumour.nrrd"
    sitk.WriteImage(case.ct, str(ct), useCompression=True)
    sitk.WriteImage(case.tumour, str(tumour), useCompression=True)
    return ct, tumour, case


@pytest.fixture(scope="session")
def browser():
    path = require_browser_stack()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def viewer_server(browser, viewer_bundle, phantom_files, tmp_path_factory):
    ct, _tumour, _case = phantom_files
    work = tmp_path_factory.mktemp("viewer-server")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    server = ViewerServer(["--ct", str(ct), "--shifts", "2", "--device", "cpu", "--out", str(work / "out")],
                          engine_env(viewer_bundle), work, ARTIFACTS / "server.log")
    server.out = work / "out"
    yield server
    server.stop()
    assert server.proc.returncode is not None


@pytest.fixture()
def page(browser, viewer_server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.goto(viewer_server.url)
    pg.wait_for_function(FIRST_SLICE_JS, timeout=60_000)
    yield pg
    context.close()


FIRST_SLICE_JS = ("() => { const m = document.querySelector('#tmbrb-view-Red'); const i = m && "
                  "m.parentElement.querySelector('img'); return !!(i && i.complete && i.naturalWidth > 0); }")


@pytest.fixture()
def watched_page(browser, viewer_server):
    """A page with its browser console errors and HTTP 4xx/5xx answers recorded from before it loads:
    page.console_errors and page.bad_responses (lists of strings)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.console_errors, pg.bad_responses = [], []
    pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    pg.on("response", lambda r: pg.bad_responses.append(f"{r.status} {r.request.method} {r.url}")
          if r.status >= 400 else None)
    pg.goto(viewer_server.url)
    pg.wait_for_function(FIRST_SLICE_JS, timeout=60_000)
    yield pg
    context.close()
