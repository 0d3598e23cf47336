"""The Examples in the phantom generator's docstrings run and print what they show."""

from __future__ import annotations

import doctest

import pytest

import TMBRBLib.phantom.generate as generate


@pytest.mark.parametrize("module", [generate], ids=lambda m: m.__name__)
def test_phantom_docstring_examples_run(module):
    r = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert r.attempted > 0 and r.failed == 0
