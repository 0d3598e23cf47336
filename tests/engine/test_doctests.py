"""The Examples in the engine's docstrings run, and pass: a broken example fails the suite."""

import doctest
import importlib

import pytest

MODULES = ["TMBRBLib.cam", "TMBRBLib.model", "TMBRBLib.bundle", "TMBRBLib.pipeline", "TMBRBLib.geometry",
           "TMBRBLib.proposal"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.delenv("TMBRB_MODEL", raising=False)  # the examples use the bundle shipped with TMBRB
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                        verbose=False)
    assert attempted > 0, f"{name} has no examples"
    assert failed == 0, f"{failed} of {attempted} examples in {name} failed (see the output above)"
