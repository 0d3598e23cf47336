"""The Examples in the MRML side's docstrings run (on a real slicer-core scene), so they cannot drift from the code."""

from __future__ import annotations

import doctest

import pytest

from TMBRBLib.slicer import logic


@pytest.mark.slow
def test_scene_logic_examples_run():
    failed, attempted = doctest.testmod(logic, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert attempted >= 10 and failed == 0
