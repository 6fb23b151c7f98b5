"""Exceptions dualrun raises at the moment bad input is given."""

from __future__ import annotations


class VersionLoadError(ImportError):
    """A version could not be loaded, or one of its modules could not be imported.

    The message names the version's label, its source, the module (when one module failed)
    and the cause; the original exception, if any, is chained as ``__cause__`` with its
    traceback.
    """

    def __init__(self, label: str, source: str, cause: str, module: str | None = None) -> None:
        super().__init__(f"cannot load the {label!r} version from {source!r}: {cause}")
        self.label = label
        self.source = source
        self.cause = cause
        self.module = module


class VersionModuleNotFoundError(VersionLoadError, ModuleNotFoundError):
    """A module the version imports does not exist: still a ``ModuleNotFoundError``.

    Code inside a version that guards an optional import with ``except ModuleNotFoundError``
    keeps working. ``name`` is the missing module as the version names it.
    """


class TargetNotFoundError(LookupError):
    """A ``"module:qualname"`` target does not exist in one of the versions."""


class DualrunWarning(UserWarning):
    """A limit of in-process versioning that dualrun detected and cannot remove."""


class ContextRequiredError(RuntimeError):
    """A routed call ran outside any ``dualrun.context`` on a dispatcher made with
    ``require_context=True``: such a call cannot be kept on one version per request."""
