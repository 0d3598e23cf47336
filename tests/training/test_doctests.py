"""The Examples in the training package's docstrings run and print what they show."""

from __future__ import annotations

import doctest

import pytest

import training.trainer


@pytest.mark.parametrize("module", [training.trainer], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    r = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert r.attempted > 0 and r.failed == 0
