"""Guards for side-effecting functions: executed in the serving run, recorded in the shadow run.

Shadowing code that writes (sends an email, saves a row, calls a payment API) is the main danger
of running two versions at once. A guarded function checks which run it is in: in the primary
run it executes and is recorded; in a shadow run it is recorded and not executed, and returns
the value the user chose. Outside any shadowed call it just executes. The two recordings are
compared like results: "new would send 2 emails where old sent 1" is a divergence.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar, cast, overload

import wrapt

from dualrun.compare import Differ, Difference, key_path
from dualrun.intercept import Interception, install

F = TypeVar("F", bound=Callable[..., Any])


class Run:
    """The side effects one version performed (or would have) during one shadowed call."""

    __slots__ = ("calls", "shadow")

    def __init__(self, shadow: bool) -> None:
        self.shadow = shadow
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []


class _Unrecorded(list[tuple[str, tuple[Any, ...], dict[str, Any]]]):
    """The calls list of a run that has nothing to record: appending keeps nothing."""

    def append(self, call: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
        pass


def _unrecorded_run(shadow: bool) -> Run:
    run = Run(shadow)
    run.calls = _Unrecorded()
    return run


# While no guard exists, no run has side effects to record: shadowed calls share these two
# markers instead of making two runs each (a guard made during such a call records nothing).
PRIMARY_RUN = _unrecorded_run(shadow=False)
SHADOW_RUN = _unrecorded_run(shadow=True)
guarded = False  # a guard exists: every run records its own calls

current_run: ContextVar[Run | None] = ContextVar("dualrun_run", default=None)


def new_run(shadow: bool) -> Run:
    """A run to record one version's side effects in (a shared marker while no guard exists)."""
    if guarded:
        return Run(shadow)
    return SHADOW_RUN if shadow else PRIMARY_RUN


def in_shadow_run() -> bool:
    """Whether the code running now is a shadow (or calibration) run of a version."""
    run = current_run.get()
    return run is not None and run.shadow


def _guard_wrapper(name: str, returns: Any, fake: Callable[..., Any] | None) -> Any:
    global guarded
    guarded = True

    def guard(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        run = current_run.get()
        if run is None:
            return wrapped(*args, **kwargs)
        run.calls.append((name, args, kwargs))
        if run.shadow:
            return returns if fake is None else fake(*args, **kwargs)
        return wrapped(*args, **kwargs)

    return guard


def _check(returns: Any, fake: Any) -> None:
    if fake is not None and not callable(fake):
        raise ValueError(
            f"fake is a callable taking the guarded function's arguments, got {fake!r}"
        )
    if fake is not None and returns is not None:
        raise ValueError("give either returns= (a value) or fake= (a callable), not both")


class SideEffect:
    """``@dualrun.side_effect`` and ``dualrun.side_effect.patch("host.module:func")``."""

    @overload
    def __call__(self, func: F) -> F: ...

    @overload
    def __call__(
        self,
        func: None = None,
        *,
        name: str | None = None,
        returns: Any = None,
        fake: Callable[..., Any] | None = None,
    ) -> Callable[[F], F]: ...

    def __call__(
        self,
        func: F | None = None,
        *,
        name: str | None = None,
        returns: Any = None,
        fake: Callable[..., Any] | None = None,
    ) -> F | Callable[[F], F]:
        """Guard ``func``. In a shadow run it returns ``returns`` (or ``fake(*args, **kw)``)
        instead of running; ``name`` labels its calls in reports (default: its qualified
        name)."""
        _check(returns, fake)
        if func is None:
            return lambda f: self._guard(f, name, returns, fake)
        return self._guard(func, name, returns, fake)

    def _guard(self, func: F, name: str | None, returns: Any, fake: Any) -> F:
        if not callable(func):
            raise ValueError(f"side_effect guards a callable, got {func!r}")
        label = name or f"{func.__module__}:{func.__qualname__}"
        return cast(F, wrapt.FunctionWrapper(func, _guard_wrapper(label, returns, fake)))

    def patch(
        self, target: str, returns: Any = None, fake: Callable[..., Any] | None = None
    ) -> Interception:
        """Guard a function or method of the host (``"myapp.mail:send_email"``) in place."""
        _check(returns, fake)
        guard = _guard_wrapper(target, returns, fake)
        return install(target, lambda host_is_method: guard)


side_effect = SideEffect()


def diff_side_effects(differ: Differ, old: Run, new: Run) -> list[Difference]:
    """Differences between the side effects of the old and the new run of one call."""
    by_name_old = _by_name(old)
    by_name_new = _by_name(new)
    out: list[Difference] = []
    for name in sorted(by_name_old.keys() | by_name_new.keys()):
        old_calls, new_calls = by_name_old.get(name, []), by_name_new.get(name, [])
        path = key_path("$side_effects", name)
        if len(old_calls) != len(new_calls):
            out.append(Difference(path, "length", _calls(len(old_calls)), _calls(len(new_calls))))
            continue
        for i, (a, b) in enumerate(zip(old_calls, new_calls, strict=True)):
            out += differ.diff(a, b, f"{path}[{i}]")
    return out


def _by_name(run: Run) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for name, args, kwargs in run.calls:
        grouped.setdefault(name, []).append({"args": args, "kwargs": kwargs})
    return grouped


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"
