"""Exceptions with messages meant for people: what is wrong, and what to do about it."""

from __future__ import annotations


class TMBRBError(Exception):
    """Base class of every error TMBRB raises on purpose."""


class TMBRBInputError(TMBRBError, ValueError):
    """The input (CT, seed, box, mask, option) cannot be used. The message names the problem and the fix."""

    def __init__(self, message: str, hint: str | None = None):
        self.problem = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} {hint}")


class TMBRBBundleError(TMBRBError):
    """The model bundle is missing, corrupt, or does not match this software."""


class TMBRBCancelled(TMBRBError):
    """The user cancelled a running computation."""


def numbers_text(values, digits: int = 4) -> str:
    """Numbers for a message: plain "(0.7, 0.7, 2.5)", never "np.float64(0.7)" (numpy 2 reprs).

    >>> import numpy as np
    >>> numbers_text(np.array([0.70001, 1e-9, 2.5]))
    '(0.7, 1e-09, 2.5)'
    """
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A value safe to put in a CSV cell a spreadsheet opens: text starting with = + - @ (a formula) gets a leading '.

    Numbers (also as text, e.g. "-0.5") are left as they are.

    >>> csv_cell("=HYPERLINK(\"http://x\")"), csv_cell("-0.5"), csv_cell(-0.5), csv_cell("LUNG1-001")
    ('\'=HYPERLINK("http://x")', '-0.5', -0.5, 'LUNG1-001')
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value
