"""Differential testing before deploying: old and new called side by side on chosen inputs.

The calls go through a real :class:`~dualrun.Dispatcher` with an inline shadow, so a test compares
exactly as production shadowing would: the same copies of the arguments, the same side-effect
guards, ``clean=``, ``compare=``, ``ignore=``, ``tolerance=`` and ``exception_key=``. A call on
which the versions disagree raises :class:`Divergence`, an ``AssertionError`` that lists every
difference (path, kind, both values), so pytest and hypothesis report it like any failed assert,
and hypothesis shrinks the input to a minimal one.

``agree(versions, "pkg.mod:func", st.decimals(...))`` is the hypothesis property;
:class:`Agreement` checks single calls (for plain pytest examples).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dualrun.compare import Difference, short_repr
from dualrun.context import context
from dualrun.dispatcher import Dispatcher
from dualrun.loading import VersionPair
from dualrun.policy import Fixed
from dualrun.recorder import Observation
from dualrun.shadow import Shadow

if TYPE_CHECKING:
    from hypothesis import settings as Settings
    from hypothesis.strategies import SearchStrategy


class Divergence(AssertionError):
    """Old and new disagreed on one call; ``differences`` are what the shadow would record."""

    def __init__(
        self,
        call: str,
        observation: Observation,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.call = call
        self.call_args = args  # the call's arguments, as old received them
        self.call_kwargs = {} if kwargs is None else kwargs
        self.observation = observation
        self.differences: tuple[Difference, ...] = observation.differences
        super().__init__(describe_divergence(call, observation))


class Problem(AssertionError):
    """The comparison itself could not be made (a comparator raised, arguments not copyable)."""


def describe_divergence(call: str, obs: Observation) -> str:
    """The failure message: the call, both outcomes, then one line per difference."""
    lines = [f"old and new disagree ({obs.status}) on {call}"]
    for outcome in (obs.old, obs.new):
        if outcome.timed_out:
            what = "did not finish within the shadow's timeout"
        elif outcome.error is not None:
            what = f"raised {outcome.error}"
        else:
            what = f"returned {outcome.value}"
        lines.append(f"  {outcome.label} {what}")
    width = max((len(d.path) for d in obs.differences), default=0)
    kinds = max((len(d.kind) for d in obs.differences), default=0)
    for d in obs.differences:
        lines.append(f"  {d.path:<{width}}  {d.kind:<{kinds}}  old: {d.old}  new: {d.new}")
    return "\n".join(lines)


def call_text(target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``quote(Decimal('0.125'), currency='EUR')``: how a failing call is shown."""
    name = target.rpartition(":")[2]
    parts = [short_repr(a, 200) for a in args]
    parts += [f"{k}={short_repr(v, 200)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def inline_shadow(shadow: Shadow | None) -> Shadow:
    """The user's comparison settings, run inline on every call with old as the primary."""
    if shadow is None:
        return Shadow(primary="old", sample=100, mode="inline")
    if not isinstance(shadow, Shadow):
        raise TypeError(f"shadow is a dualrun.Shadow(...) or None, got {shadow!r}")
    config = copy.copy(shadow)  # same differ, ignore rules, compare, clean, copy, side effects
    config.primary, config.sample, config.mode = "old", 100.0, "inline"
    return config


class _Capture:
    """The recorder's listener: keeps the last call's observation and internal problems."""

    def __init__(self) -> None:
        self.observation: Observation | None = None
        self.problem: str | None = None

    def observed(self, seq: int, obs: Observation) -> None:
        self.observation = obs

    def counted(self, route: str, what: str, detail: str | None) -> None:
        self.problem = f"{what}: {detail}" if detail else what


class Agreement:
    """Calls both versions of ``versions`` on the same arguments and compares like a shadow.

    ``shadow``: a :class:`~dualrun.Shadow` whose comparison settings apply (``compare=``,
    ``ignore=``, ``tolerance=``, ``clean=``, ``calibrate=`` ...); its sampling and mode are
    replaced by "every call, inline, old first in the caller's view". Use as a context manager,
    or call :meth:`close`.
    """

    def __init__(self, versions: VersionPair, shadow: Shadow | None = None) -> None:
        if not isinstance(versions, VersionPair):
            raise TypeError(
                f"versions is the VersionPair that dualrun.load() returns, got {versions!r}"
            )
        self.versions = versions
        self.dispatcher = Dispatcher(versions, policy=Fixed("old"), shadow=inline_shadow(shadow))
        self._capture = _Capture()
        self.dispatcher.recorder.listener = self._capture
        self._routes: dict[str, Callable[..., Any]] = {}

    def route(self, target: str) -> Callable[..., Any]:
        """The routed callable of ``target`` (made once per target)."""
        routed = self._routes.get(target)
        if routed is None:
            routed = self._routes[target] = self.dispatcher.route(target)
        return routed

    def check(self, target: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``target`` in both versions; old's result (or exception) if they agree.

        Raises :class:`Divergence` when they do not, :class:`Problem` when the comparison could
        not be made.
        """
        routed = self.route(target)
        capture = self._capture
        capture.observation = capture.problem = None
        error: BaseException | None = None
        value: Any = None
        with context(pin="old"):
            try:
                value = routed(*args, **kwargs)
                if inspect.iscoroutine(value):  # an async target: both run on a fresh loop
                    value = asyncio.run(value)
            except Exception as exc:  # old's exception: raised again if new agrees
                error = exc
        if capture.problem is not None:
            raise Problem(
                f"{call_text(target, args, kwargs)} could not be compared: {capture.problem}"
            )
        obs = capture.observation
        if obs is not None and obs.status in ("mismatch", "timeout"):
            raise Divergence(call_text(target, args, kwargs), obs, args, kwargs)
        if error is not None:
            raise error
        return value

    def close(self) -> None:
        self.dispatcher.close()

    def __enter__(self) -> Agreement:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def agree(
    versions: VersionPair,
    target: str,
    *strategies: SearchStrategy[Any],
    shadow: Shadow | None = None,
    settings: Settings | None = None,
    **keyword_strategies: SearchStrategy[Any],
) -> Callable[[], None]:
    """A hypothesis property: old and new agree on ``target`` for inputs drawn from the
    strategies (positional and keyword, as the target takes them).

    Calling the returned function runs the search (assign it to a ``test_...`` name for pytest
    to collect it); ``settings`` are hypothesis settings for it. A failure is a
    :class:`Divergence` for the shrunk, minimal call, which hypothesis also prints. Exceptions
    both versions raise alike are agreement, not failures.
    """
    from hypothesis import given
    from hypothesis import strategies as st

    if not isinstance(target, str):
        raise TypeError(f"target is a string such as 'pricing.engine:quote', got {target!r}")
    with Agreement(versions, shadow) as probe:
        probe.route(target)  # a missing target fails here, not inside the search
    running: list[Agreement] = []

    @given(call=st.tuples(st.tuples(*strategies), st.fixed_dictionaries(keyword_strategies)))
    def property_(call: tuple[tuple[Any, ...], dict[str, Any]]) -> None:
        args, kwargs = call
        try:
            running[0].check(target, *args, **kwargs)
        except (Divergence, Problem):
            raise
        except Exception:
            pass  # old raised, and new raised alike: agreement

    if settings is not None:
        property_ = settings(property_)

    def run() -> None:
        running.append(Agreement(versions, shadow))
        try:
            property_()
        finally:
            running.pop().close()

    run.__name__ = run.__qualname__ = f"agree[{target}]"
    return run
