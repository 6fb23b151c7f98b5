"""Patch an entry point of the host application so that its calls are routed.

The patch is a wrapt ``FunctionWrapper`` set on the host module's (or class's) attribute. If
the host module is not imported yet, a wrapt post-import hook applies it when it is.
"""

from __future__ import annotations

import inspect
import sys
import threading
import warnings
from types import ModuleType
from typing import Any

import wrapt

from dualrun.errors import DualrunWarning
from dualrun.targets import parse_target

_lock = threading.Lock()
_ABSENT = object()
# wrapt 2 moved its C proxy base to ``BaseObjectProxy``: ``FunctionWrapper`` is not an instance of
# the (now pure-Python) ``ObjectProxy`` there. wrapt 1.x has only ``ObjectProxy``.
_PROXY: type[Any] = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)
_applied: dict[int, Interception] = {}  # id(proxy) -> its handle, while the patch is in place


class UnboundFunctionWrapper(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """A ``FunctionWrapper`` of a plain function that is called, never bound as a method.

    wrapt gives such a wrapper the binding ``"function"``, and then on every call looks up
    ``__self__`` on the function to find an instance and clears the AttributeError: about 450
    ns, most of a wrapped call. Given the binding ``"staticmethod"`` it calls the wrapper at
    once with ``instance=None``, which is what that lookup finds on a plain function anyway.
    The name, signature, ``__wrapped__`` and ``isinstance(..., wrapt.FunctionWrapper)`` stay.
    """

    def __init__(self, wrapped: Any, wrapper: Any) -> None:
        # FunctionWrapper's own __init__ computes the binding; its base takes one as given.
        base: Any = super(wrapt.FunctionWrapper, self)
        base.__init__(wrapped, None, wrapper, None, "staticmethod")


def function_wrapper(wrapped: Any, wrapper: Any) -> wrapt.FunctionWrapper[Any, Any]:
    """``wrapt.FunctionWrapper(wrapped, wrapper)`` for a callable that is called directly (a
    route, a module attribute): without the per-call ``__self__`` lookup for plain functions."""
    if inspect.isfunction(wrapped):
        return UnboundFunctionWrapper(wrapped, wrapper)
    return wrapt.FunctionWrapper(wrapped, wrapper)


class Interception:
    """A patched host entry point; ``undo()`` puts the original back exactly."""

    def __init__(self, host_target: str, make_wrapper: Any) -> None:
        self.host_target = host_target
        self._module_name, self._qualname = parse_target(host_target)
        self._make_wrapper = make_wrapper
        self._parent: Any = None
        self._attribute = ""
        self._own: Any = _ABSENT  # the attribute as it stood in the parent's own __dict__
        self._proxy: wrapt.FunctionWrapper[Any, Any] | None = None
        self._undone = False
        self.error: str | None = None  # why the post-import hook could not patch the host

    @property
    def applied(self) -> bool:
        """Whether the host attribute is patched now (False while waiting for the import)."""
        return self._proxy is not None and not self._undone

    def __repr__(self) -> str:
        state = "undone" if self._undone else "applied" if self.applied else "pending import"
        if self.error is not None and not self._undone:
            state = f"failed: {self.error}"
        return f"<Interception {self.host_target} ({state})>"

    def _apply(self, module: ModuleType) -> None:
        with _lock:
            if self._undone or self._proxy is not None:
                return
            try:
                parent, attribute, original = wrapt.resolve_path(module, self._qualname)
            except AttributeError:
                raise AttributeError(self._missing(module)) from None
            host_is_method = inspect.isclass(parent) and inspect.isfunction(original)
            self._parent, self._attribute = parent, attribute
            self._own = vars(parent).get(attribute, _ABSENT) if inspect.isclass(parent) else _ABSENT
            wrapper = self._make_wrapper(host_is_method)
            # A module attribute is never bound: no need for wrapt's per-call binding check.
            self._proxy = (
                wrapt.FunctionWrapper(original, wrapper)
                if inspect.isclass(parent)
                else function_wrapper(original, wrapper)
            )
            setattr(parent, attribute, self._proxy)
            _applied[id(self._proxy)] = self

    def _missing(self, module: ModuleType) -> str:
        owner: Any = module
        where = self._module_name
        for part in self._qualname.split("."):
            if not hasattr(owner, part):
                break
            owner, where = getattr(owner, part), f"{where}.{part}"
        return f"cannot intercept {self.host_target!r}: {where!r} has no attribute {part!r}"

    def _apply_on_import(self, module: ModuleType) -> None:
        """The post-import hook. A missing host attribute must not fail the host's import: the
        module imports unpatched, with a warning, and ``error`` says why."""
        try:
            self._apply(module)
        except AttributeError as exc:
            self.error = str(exc)
            warnings.warn(
                f"{exc}; {self._module_name} was imported unpatched", DualrunWarning, stacklevel=2
            )

    def undo(self) -> None:
        """Restore the original attribute. Safe to call twice and in any order."""
        with _lock:
            if self._undone:
                return
            self._undone = True
            if self._proxy is None:
                return  # the host module was never imported: the hook will do nothing
            parent, attribute, proxy = self._parent, self._attribute, self._proxy
            _applied.pop(id(proxy), None)
            current = vars(parent).get(attribute, _ABSENT)
            if current is proxy:
                if self._own is _ABSENT and inspect.isclass(parent):
                    delattr(parent, attribute)
                else:
                    setattr(parent, attribute, proxy.__wrapped__)
                return
            # Someone wrapped over this patch: splice it out of their chain of wrapt wrappers.
            while isinstance(current, _PROXY):
                inner = current.__wrapped__
                if inner is proxy:
                    current.__wrapped__ = proxy.__wrapped__
                    outer = _applied.get(id(current))
                    if outer is not None and outer._own is proxy:
                        # The outer patch saw ours as the class's own attribute; it now stands
                        # where ours stood (possibly nowhere: an attribute inherited from a base).
                        outer._own = self._own
                    return
                current = inner


def install(host_target: str, make_wrapper: Any) -> Interception:
    """Patch ``host_target`` now if its module is imported, else when it is."""
    handle = Interception(host_target, make_wrapper)
    module = sys.modules.get(handle._module_name)
    if module is not None:
        handle._apply(module)
    else:
        wrapt.register_post_import_hook(handle._apply_on_import, handle._module_name)
    return handle
