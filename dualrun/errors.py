"""Exceptions dualrun raises at the moment bad input is given."""

from __future__ import annotations


class VersionLoadError(ImportError):
    """A version could not be loaded.

    The message names the version's label, its source and the cause; the original exception,
    if any, is chained as ``__cause__`` with its traceback.
    """

    def __init__(self, label: str, source: str, cause: str) -> None:
        super().__init__(f"cannot load the {label!r} version from {source!r}: {cause}")
        self.label = label
        self.source = source
        self.cause = cause


class TargetNotFoundError(LookupError):
    """A ``"module:qualname"`` target does not exist in one of the versions."""


class DualrunWarning(UserWarning):
    """A limit of in-process versioning that dualrun detected and cannot remove."""
