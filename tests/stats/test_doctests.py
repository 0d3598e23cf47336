"""The Examples in the statistics docstrings run and print what they say (doctest)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import TMBRBLib.stats

# Every module of the package is run through doctest; those listed here must also have examples
# (their public entry points carry them), so examples cannot silently disappear.
ALL_MODULES = sorted(m.name for m in pkgutil.iter_modules(TMBRBLib.stats.__path__))
MODULES_WITH_EXAMPLES = ["roc", "classification", "survival", "cutpoint", "cox", "table1"]

# Functions exported by TMBRBLib.stats that must each have at least one example.
FUNCTIONS_WITH_EXAMPLES = ["roc_analysis", "delong_test", "decision_curve", "spearman", "auc_by_cutoff",
                           "logistic_combination", "maxstat_cutpoint", "kaplan_meier", "logrank_test", "cox_ph",
                           "cox_scan", "table1"]

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module(name: str):
    # import_module, not attribute access: TMBRBLib.stats.table1 is also the name of a function in the package
    return importlib.import_module(f"TMBRBLib.stats.{name}")


def test_module_list_is_current():
    assert set(MODULES_WITH_EXAMPLES) <= set(ALL_MODULES)


@pytest.mark.parametrize("name", ALL_MODULES)
def test_module_examples_pass(name):
    result = doctest.testmod(_module(name), optionflags=OPTIONS, verbose=False, report=True)
    if name in MODULES_WITH_EXAMPLES:
        assert result.attempted > 0, f"TMBRBLib.stats.{name} has no doctest examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in TMBRBLib.stats.{name} failed"


@pytest.mark.parametrize("func", FUNCTIONS_WITH_EXAMPLES)
def test_public_function_has_numpydoc_sections_and_examples(func):
    import TMBRBLib.stats as stats

    f = getattr(stats, func)
    doc = f.__doc__ or ""
    for section in ("Parameters\n", "Returns\n", "Raises\n", "See Also\n", "References\n", "Examples\n"):
        assert section in doc, f"{func} docstring lacks a {section.strip()} section"
    tests = doctest.DocTestFinder(recurse=False).find(f, func, globs={})
    assert tests and tests[0].examples, f"{func} has no doctest examples"


def test_a_broken_example_is_reported_as_failed():
    """The check above can fail: a wrong expected value counts as a failure."""
    def bad():
        """
        >>> from TMBRBLib.stats import spearman
        >>> print(f"{spearman([1, 2, 3], [1, 2, 3]).rho:.1f}")
        0.5
        """

    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for t in doctest.DocTestFinder().find(bad, "bad", globs={}):
        runner.run(t, out=lambda s: None)
    assert runner.summarize(verbose=False).failed == 1
