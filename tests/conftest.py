"""Shared fixtures: a placeholder model bundle (built once per session) and synthetic CTs with a known tumour.

Also the strict mode (tests/_prereq.py): with TMBRB_STRICT=1, as .ci/run sets, a skip for a missing prerequisite
(Chromium, the shared data, slicer-core, a placeholder instead of the demo bundle) fails the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
for p in (REPO / "TMBRBModule", REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import _prereq  # noqa: E402
from _prereq import require  # noqa: E402  (what a skip for a missing prerequisite calls)

# the strict mode's hooks, registered as hooks of this conftest
pytest_runtest_makereport = _prereq.pytest_runtest_makereport
pytest_make_collect_report = _prereq.pytest_make_collect_report


@pytest.fixture(scope="session")
def placeholder_bundle(tmp_path_factory):
    from TMBRBLib.bundle import make_placeholder_bundle
    return make_placeholder_bundle(tmp_path_factory.mktemp("bundle") / "placeholder", seed=0)


@pytest.fixture(scope="session")
def scorer(placeholder_bundle):
    from TMBRBLib.pipeline import Scorer
    return Scorer(placeholder_bundle, "cpu")


def real_ct_dir() -> Path:
    return SHARED_DATA / "real_ct"


def require_real_ct():
    d = real_ct_dir()
    if not (d / "pyradiomics" / "lung1_image.nrrd").is_file():
        require("shared-data", f"real CTs not found in {d} (../shared/data beside the repository); "
                               "these tests need the shared data folder")
    return d


@pytest.fixture(scope="session")
def real_ct_data():
    """The folder ../shared/data/real_ct; skips the test with a reason when it is absent."""
    return require_real_ct()


def pytest_configure(config):
    config.addinivalue_line("markers", "bit_exact: compares two runs bit for bit; runs with one torch CPU thread")


@pytest.fixture(autouse=True)
def _one_thread_for_bit_exact(request):
    """Tests marked `bit_exact` compare two runs bit for bit. They assume the CPU device, the same torch build and a
    fixed intra-op thread count: a float reduction split over N threads adds in an order that depends on N, so the
    count is fixed to one for the test (whatever OMP_NUM_THREADS the run has) and restored after."""
    if request.node.get_closest_marker("bit_exact") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
