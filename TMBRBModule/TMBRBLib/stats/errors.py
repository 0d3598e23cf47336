"""Exception raised by the statistics toolkit on bad input."""
from __future__ import annotations


class TMBRBStatsInputError(ValueError):
    """Bad input to a TMBRB statistics function.

    The message always says what is wrong and what to do about it (for example a missing
    column and the columns that do exist). It subclasses ValueError so callers that catch
    ValueError keep working.
    """


class TMBRBStatsWarning(UserWarning):
    """A result was computed but should be read with care (for example few events for Cox)."""
