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
