"""Skips for a missing prerequisite, and the strict mode in which CI turns them into failures.

A test that needs something the machine may lack (Chromium and the browser stack, the shared real CTs, the
slicer-core wheel, a trained demo bundle instead of the placeholder) calls :func:`require`. Locally that skips with the
reason. With ``TMBRB_STRICT=1`` (``.ci/run`` sets it) the hooks below turn such a skip into a failure, so CI cannot go
green by skipping what it is meant to test. Other skips (a platform without named pipes, ...) stay skips.

tests/conftest.py imports the hooks; ``python -m pytest -p _prereq`` loads them into any other run (the strict mode's
own test does).
"""

from __future__ import annotations

import os

import pytest

STRICT_ENV = "TMBRB_STRICT"
TAG = "missing prerequisite"
KINDS = {
    "chromium": "the browser viewer's stack (Chromium, Playwright, trame-slicer)",
    "shared-data": "the shared real CTs (../shared/data)",
    "slicer-core": "the slicer-core wheel (MRML classes)",
    "placeholder-bundle": "a trained demo model bundle (not the placeholder)",
    "dev-package": "a package of the 'dev' extra (highdicom, pydicom, dcmqi, pyradiomics-bhklab)",
}


def strict() -> bool:
    """Whether missing prerequisites fail the run (``TMBRB_STRICT`` set to anything but '' or '0')."""
    return os.environ.get(STRICT_ENV, "").strip() not in ("", "0")


def require(kind: str, reason: str):
    """Skip the calling test (or module, at import time) because prerequisite `kind` is missing.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    reason : str
        What is missing and how to install or provide it.

    Raises
    ------
    pytest.skip.Exception
        Always; under ``TMBRB_STRICT=1`` the hooks of this module report it as a failure.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown prerequisite kind {kind!r}; one of {sorted(KINDS)}")
    raise pytest.skip.Exception(f"{TAG} [{kind}]: {reason}", allow_module_level=True)


def _strict_message(longrepr) -> str:
    """The skip's message when it is a tagged missing prerequisite and the run is strict, else ''."""
    if not strict():
        return ""
    message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if TAG not in message:
        return ""
    return (f"{message}\n{STRICT_ENV}=1 (CI): this prerequisite must be present, so this skip is an error. "
            f"Install or provide it, or run without {STRICT_ENV} to skip locally.")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Report a tagged skip (in setup, call or teardown) as a failure in strict mode."""
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        message = _strict_message(report.longrepr)
        if message:
            report.outcome, report.longrepr = "failed", message
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Report a tagged module-level skip (a test module or a conftest skipping at import) as an error in strict mode."""
    report = yield
    if report.skipped:
        message = _strict_message(report.longrepr)
        if message:
            report.outcome, report.longrepr = "failed", message
    return report
