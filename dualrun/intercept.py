"""Patch an entry point of the host application so that its calls are routed.

The patch is a wrapt ``FunctionWrapper`` set on the host module's (or class's) attribute. If
the host module is not imported yet, a wrapt post-import hook applies it when it is; whether the
module can be imported at all is checked at once, without importing it.

With ``aliases=True`` (``dispatcher.intercept("pricing.engine:quote")``) the names other modules
bound to the same function object (``from pricing.engine import quote``) are found by scanning
the globals of every module in ``sys.modules`` and patched too. What that scan cannot find:
references held in closures, default arguments, containers (lists, dicts, registries), class
attributes, ``functools.partial`` objects and bound methods. Names bound after the patch get the
patched function anyway.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import sys
import threading
import warnings
from collections.abc import Callable
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
_PRIVATE_PREFIX = "_dualrun_"  # the loaded versions' own modules are never host aliases

MakeWrapper = Callable[[bool], Callable[..., Any]]


class _Routed(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """A host entry point whose calls run a version's target: ``inspect.signature`` shows the
    signature of what really runs (for functions, static- and classmethods; a method looked up
    on an instance shows the host's, as Python reads a bound method's own function).

    ``unbound``: the wrapper sits in a module's globals and is never bound as a method, so it
    skips wrapt's per-call ``__self__`` lookup (see :class:`UnboundFunctionWrapper`).
    """

    _self_signature: inspect.Signature | None = None

    def __init__(self, wrapped: Any, wrapper: Any, unbound: bool) -> None:
        if unbound and inspect.isfunction(wrapped):
            base: Any = super(wrapt.FunctionWrapper, self)
            base.__init__(wrapped, None, wrapper, None, "staticmethod")
        else:
            super().__init__(wrapped, wrapper)

    @property
    def __signature__(self) -> inspect.Signature | None:
        return self._self_signature


class _Binding:
    """One patched attribute: where it is, what stood there, and the proxy now in its place."""

    __slots__ = ("attribute", "own", "parent", "proxy")

    def __init__(self, parent: Any, attribute: str, proxy: Any) -> None:
        self.parent = parent
        self.attribute = attribute
        # the attribute as it stood in a class's own __dict__ (absent: inherited from a base)
        self.own: Any = vars(parent).get(attribute, _ABSENT) if inspect.isclass(parent) else _ABSENT
        self.proxy = proxy

    def apply(self) -> None:
        setattr(self.parent, self.attribute, self.proxy)
        _applied[id(self.proxy)] = self

    def undo(self) -> None:
        """Put the original back; if someone wrapped over the patch, splice it out of their
        chain of wrapt wrappers. The caller holds ``_lock``."""
        parent, attribute, proxy = self.parent, self.attribute, self.proxy
        _applied.pop(id(proxy), None)
        current = vars(parent).get(attribute, _ABSENT)
        if current is proxy:
            if self.own is _ABSENT and inspect.isclass(parent):
                delattr(parent, attribute)
            else:
                setattr(parent, attribute, proxy.__wrapped__)
            return
        while isinstance(current, _PROXY):
            inner = current.__wrapped__
            if inner is proxy:
                current.__wrapped__ = proxy.__wrapped__
                outer = _applied.get(id(current))
                if outer is not None and outer.own is proxy:
                    # The outer patch saw ours as the class's own attribute; it now stands
                    # where ours stood (possibly nowhere: an attribute inherited from a base).
                    outer.own = self.own
                return
            current = inner


_applied: dict[int, _Binding] = {}  # id(proxy) -> its binding, while the patch is in place


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
    """A patched host entry point; ``undo()`` puts the original back exactly.

    Made by :meth:`dualrun.Dispatcher.intercept` (``host_target``: the patched
    ``"module:qualname"``; ``make_wrapper``: makes the wrapt wrapper; ``target``: the callable
    that serves, for the signature check; ``aliases``: patch other bindings of the function too).
    ``applied``: the host attribute is patched now. ``pending``: waiting for the host module's
    import. ``error``: why the post-import hook could not patch. ``aliases``: the other
    ``"module:name"`` bindings of the same function that were patched too.
    """

    def __init__(
        self,
        host_target: str,
        make_wrapper: MakeWrapper,
        target: Any = None,
        aliases: bool = False,
    ) -> None:
        self.host_target = host_target
        self._module_name, self._qualname = parse_target(host_target)
        self._make_wrapper = make_wrapper
        self._target = target  # the callable that really runs, for the signature check
        self._find_aliases = aliases
        self._bindings: list[_Binding] = []
        self._undone = False
        self.error: str | None = None  # why the post-import hook could not patch the host

    @property
    def applied(self) -> bool:
        """Whether the host attribute is patched now (False while waiting for the import)."""
        return bool(self._bindings) and not self._undone

    @property
    def pending(self) -> bool:
        """Waiting for the host module to be imported: its calls are not routed yet."""
        return not self._bindings and not self._undone and self.error is None

    @property
    def failed(self) -> bool:
        """The post-import hook could not patch the host (``error`` says why)."""
        return self.error is not None and not self._undone

    @property
    def aliases(self) -> list[str]:
        """The other module globals bound to the same function that were patched too."""
        return [f"{b.parent.__name__}:{b.attribute}" for b in self._bindings[1:]]

    def __repr__(self) -> str:
        state = "undone" if self._undone else "applied" if self.applied else "pending import"
        if self.error is not None and not self._undone:
            state = f"failed: {self.error}"
        return f"<Interception {self.host_target} ({state})>"

    def _apply(self, module: ModuleType) -> None:
        with _lock:
            if self._undone or self._bindings:
                return
            try:
                parent, attribute, original = wrapt.resolve_path(module, self._qualname)
            except AttributeError:
                raise AttributeError(self._missing(module)) from None
            host_is_method = inspect.isclass(parent) and inspect.isfunction(original)
            signature = self._check_signature(original, host_is_method)
            # A module attribute is never bound: no need for wrapt's per-call binding check.
            unbound = not inspect.isclass(parent)
            proxy = _Routed(original, self._make_wrapper(host_is_method), unbound)
            proxy._self_signature = signature
            primary = _Binding(parent, attribute, proxy)
            primary.apply()
            self._bindings.append(primary)
            if self._find_aliases and isinstance(parent, ModuleType):
                for holder, name in _aliases_of(original, parent, attribute):
                    binding = _Binding(holder, name, proxy)
                    binding.apply()
                    self._bindings.append(binding)

    def _check_signature(self, original: Any, host_is_method: bool) -> inspect.Signature | None:
        """The target's signature as callers see it; TypeError if a call the host accepts
        would fail on the target (a host parameter the target does not take, say)."""
        if self._target is None:
            return None
        try:
            host = inspect.signature(original)
            target = inspect.signature(self._target)
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check
            return None
        called_host, called_target = host, target
        if host_is_method:  # the instance is passed to both as their first argument
            called_host, called_target = _drop_first(host), _drop_first(target)
        problem = incompatibility(called_host, called_target)
        if problem is not None:
            raise TypeError(
                f"cannot intercept {self.host_target!r}: its callers use the signature "
                f"{called_host} but the target that would serve them has {called_target}: "
                f"{problem}. Intercept a host function whose signature the target accepts, or "
                "intercept the version's own function with the one-argument form"
            )
        return target

    def _missing(self, module: ModuleType) -> str:
        owner: Any = module
        where = self._module_name
        for part in self._qualname.split("."):
            if not hasattr(owner, part):
                break
            owner, where = getattr(owner, part), f"{where}.{part}"
        return f"cannot intercept {self.host_target!r}: {where!r} has no attribute {part!r}"

    def _apply_on_import(self, module: ModuleType) -> None:
        """The post-import hook. A missing host attribute or a signature the target cannot
        serve must not fail the host's import: the module imports unpatched, with a warning,
        and ``error`` says why."""
        try:
            self._apply(module)
        except (AttributeError, TypeError) as exc:
            self.error = str(exc)
            warnings.warn(
                f"{exc}; {self._module_name} was imported unpatched", DualrunWarning, stacklevel=2
            )

    def undo(self) -> None:
        """Restore the original attribute (and every alias). Safe to call twice and in any
        order."""
        with _lock:
            if self._undone:
                return
            self._undone = True
            for binding in reversed(self._bindings):
                binding.undo()


def _drop_first(signature: inspect.Signature) -> inspect.Signature:
    parameters = list(signature.parameters.values())
    first_is_positional = parameters and parameters[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    return signature.replace(parameters=parameters[1:]) if first_is_positional else signature


def incompatibility(host: inspect.Signature, target: inspect.Signature) -> str | None:
    """Why some call that ``host`` accepts would fail on ``target``, or None if none would."""
    P = inspect.Parameter
    positional = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    keyword = (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
    h = list(host.parameters.values())
    t = list(target.parameters.values())
    t_positional = [p for p in t if p.kind in positional]
    t_keywords = {p.name: p for p in t if p.kind in keyword}
    t_var_args = any(p.kind is P.VAR_POSITIONAL for p in t)
    t_var_kwargs = any(p.kind is P.VAR_KEYWORD for p in t)
    h_positional = [p for p in h if p.kind in positional]
    h_keywords = {p.name: p for p in h if p.kind in keyword}
    for i, p in enumerate(h_positional):
        if i >= len(t_positional) and not t_var_args:
            return f"it takes no positional argument {i + 1} ({p.name!r})"
    for name in h_keywords:
        if name not in t_keywords and not t_var_kwargs:
            return f"it has no parameter {name!r}"
    if any(p.kind is P.VAR_POSITIONAL for p in h) and not t_var_args:
        return "it takes no *args"
    if any(p.kind is P.VAR_KEYWORD for p in h) and not t_var_kwargs:
        return "it takes no **kwargs"
    for i, p in enumerate(t_positional):
        if p.default is not P.empty:
            continue
        match = h_positional[i] if i < len(h_positional) else h_keywords.get(p.name)
        if match is None or match.default is not P.empty:
            return f"its required parameter {p.name!r} is not always given by the host's callers"
    for p in t:
        if p.kind is P.KEYWORD_ONLY and p.default is P.empty:
            match = h_keywords.get(p.name)
            if match is None or match.default is not P.empty:
                return f"its required keyword {p.name!r} is not always given by the host's callers"
    return None


def _aliases_of(function: Any, home: ModuleType, attribute: str) -> list[tuple[ModuleType, str]]:
    """Module globals bound to the very ``function`` object, other than ``home.attribute``."""
    found = []
    for name, module in list(sys.modules.items()):
        if name.startswith(_PRIVATE_PREFIX) or not isinstance(module, ModuleType):
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for key, value in list(namespace.items()):
            if value is function and not (module is home and key == attribute):
                found.append((module, key))
    return found


def missing_module(module_name: str) -> str | None:
    """The first part of ``module_name`` that is neither imported nor findable (None if it
    can be imported), looked up without importing anything."""
    if module_name in sys.modules:
        return None
    parts = module_name.split(".")
    path: Any = None
    for depth in range(len(parts)):
        name = ".".join(parts[: depth + 1])
        loaded = sys.modules.get(name)
        if loaded is not None:
            spec = getattr(loaded, "__spec__", None)
        elif depth == 0:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                return name
        else:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None and not _found_by_meta_path(name, path):
                return name
        if spec is None:
            return None if loaded is not None else name
        path = spec.submodule_search_locations
        if depth < len(parts) - 1 and path is None:
            return ".".join(parts[: depth + 2])  # a plain module has no submodules
    return None


def _found_by_meta_path(name: str, path: Any) -> bool:
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None or finder is importlib.machinery.PathFinder:
            continue
        try:
            if find(name, path) is not None:
                return True
        except Exception:
            continue
    return False


def install(
    host_target: str, make_wrapper: MakeWrapper, target: Any = None, aliases: bool = False
) -> Interception:
    """Patch ``host_target`` now if its module is imported, else when it is.

    ``target``: the callable that will serve the host's callers (its signature is checked
    against the host's). ``aliases``: also patch the other module globals bound to the host
    function. Raises ``ModuleNotFoundError`` if the host module cannot be imported at all, and
    ``AttributeError``/``TypeError`` if it is imported and the attribute is missing or the
    target cannot serve its callers.
    """
    handle = Interception(host_target, make_wrapper, target, aliases)
    module_name = handle._module_name
    missing = missing_module(module_name)
    if missing is not None:
        raise ModuleNotFoundError(
            f"cannot intercept {host_target!r}: no module named {missing!r} can be imported "
            "(looked up without importing anything). Check the spelling; if the module only "
            "becomes importable later, intercept it once it is",
            name=missing,
        )
    module = sys.modules.get(module_name)
    if module is not None:
        handle._apply(module)
    else:
        wrapt.register_post_import_hook(handle._apply_on_import, module_name)
    return handle
