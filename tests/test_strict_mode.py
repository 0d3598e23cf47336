"""The strict mode (tests/_prereq.py): with TMBRB_STRICT=1 a skip for a missing prerequisite fails the run; without
it the test skips with its reason. Runs pytest in a subprocess on tiny test files, with the hooks loaded as a plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

TINY = '''
import pytest
from _prereq import require

def test_needs_chromium():
    require("chromium", "Chromium is not installed (apt-get install -y chromium)")

@pytest.fixture()
def data():
    require("shared-data", "real CTs not found")

def test_needs_data_in_a_fixture(data):
    pass

def test_platform_skip():
    pytest.skip("needs named pipes")

def test_passes():
    assert True
'''

MODULE_LEVEL = '''
from _prereq import require
require("slicer-core", "the slicer-core wheel is not installed")

def test_never_runs():
    pass
'''


def run_pytest(folder: Path, strict):
    env = {k: v for k, v in os.environ.items() if k != "TMBRB_STRICT"}
    if strict is not None:
        env["TMBRB_STRICT"] = strict
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "_prereq",
                           str(folder)], cwd=str(folder), env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def tiny(tmp_path):
    (tmp_path / "test_tiny.py").write_text(TINY)
    return tmp_path


@pytest.mark.parametrize("value", [None, "", "0"])
def test_a_local_run_skips_with_the_reason(tiny, value):
    r = run_pytest(tiny, value)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 3 skipped" in r.stdout
    assert "missing prerequisite [chromium]: Chromium is not installed (apt-get install -y chromium)" in r.stdout
    assert "missing prerequisite [shared-data]: real CTs not found" in r.stdout


def test_strict_mode_fails_the_missing_prerequisites_and_keeps_other_skips(tiny):
    r = run_pytest(tiny, "1")
    assert r.returncode == 1, r.stdout + r.stderr
    # in the test: a failure; in a fixture's setup: an error (as any failing fixture)
    assert "1 failed, 1 passed, 1 skipped, 1 error" in r.stdout
    assert "FAILED test_tiny.py::test_needs_chromium" in r.stdout
    assert "ERROR test_tiny.py::test_needs_data_in_a_fixture" in r.stdout
    assert "SKIPPED [1] test_tiny.py" in r.stdout and "needs named pipes" in r.stdout
    assert "TMBRB_STRICT=1 (CI): this prerequisite must be present" in r.stdout


def test_strict_mode_fails_a_module_level_skip_at_collection(tmp_path):
    (tmp_path / "test_module_level.py").write_text(MODULE_LEVEL)
    (tmp_path / "test_other.py").write_text("def test_other():\n    pass\n")
    local = run_pytest(tmp_path, None)
    assert local.returncode == 0 and "1 passed, 1 skipped" in local.stdout, local.stdout + local.stderr
    r = run_pytest(tmp_path, "1")
    assert r.returncode != 0, r.stdout + r.stderr
    assert "ERROR" in r.stdout and "missing prerequisite [slicer-core]" in r.stdout
    assert "test_never_runs" not in r.stdout.replace("def test_never_runs", "")


def test_require_refuses_an_unknown_kind():
    from _prereq import require

    with pytest.raises(ValueError, match="unknown prerequisite kind 'gpu'"):
        require("gpu", "no GPU")


def test_ci_runs_in_strict_mode():
    text = (TESTS.parent / ".ci" / "run").read_text()
    assert "export TMBRB_STRICT=1" in text
    assert text.index("export TMBRB_STRICT=1") < text.index("make test")
