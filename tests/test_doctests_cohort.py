"""The Examples in the immunotherapy cohort simulator's docstrings run and print what they show."""

from __future__ import annotations

import doctest

import TMBRBLib.phantom.cohort as cohort


def test_cohort_docstring_examples_run():
    r = doctest.testmod(cohort, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert r.attempted > 0 and r.failed == 0
