"""Shadow execution: serve the primary's result, run the other version too, and compare.

The caller always gets the primary's value or exception, unchanged. Whatever the shadow does
(raise, hang, run slowly, return garbage) and whatever the comparison does (a comparator that
raises) is caught here, recorded, and never reaches the caller.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
import re
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import Context, ContextVar, copy_context
from time import perf_counter_ns, thread_time_ns
from typing import Any, Protocol

from dualrun import checks
from dualrun import sideeffects as _sideeffects
from dualrun.compare import (
    Differ,
    Difference,
    IgnoreRules,
    describe,
    exception_key,
    generalize,
    short_repr,
)
from dualrun.context import EMPTY, Label, RequestContext, check_label, current_request, other
from dualrun.counters import Counter, new_counter
from dualrun.plain import copy_by_pickle
from dualrun.policy import stable_bucket
from dualrun.recorder import (
    EXAMPLES_PER_GROUP,
    MAX_GROUPS,
    NOT_MEASURED,
    Observation,
    Outcome,
    Recorder,
)
from dualrun.redaction import redact_path
from dualrun.sideeffects import (
    PRIMARY_RUN,
    SHADOW_RUN,
    Run,
    current_run,
    diff_side_effects,
    new_run,
)
from dualrun.workers import WorkerPool

# The context variables' methods, bound once. CPython 3.11 compiles a method call on an
# imported name (``current_run.set(...)``) as an attribute load that makes a bound method on
# every call; calling a bound method kept in a module global does not.
_get_run, _set_run, _reset_run = current_run.get, current_run.set, current_run.reset
_get_request, _set_request, _reset_request = (
    current_request.get,
    current_request.set,
    current_request.reset,
)


class ShadowedRoute(Protocol):
    """What a shadow run needs of its route (a :class:`dualrun.routing.Route`): the target's
    name, the callable and counters each label runs (serving and as a shadow), and the
    migration of arguments into a version."""

    @property
    def target(self) -> str: ...

    @property
    def slots(self) -> Mapping[Label, tuple[Any, Counter, Counter]]: ...

    @property
    def shadow_slots(self) -> Mapping[Label, tuple[Any, Counter, Counter]]: ...

    @property
    def migrating(self) -> bool: ...

    def migrate_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], label: Label
    ) -> tuple[tuple[Any, ...], dict[str, Any]]: ...


Args = tuple[tuple[Any, ...], dict[str, Any]]
Clock = Callable[[], int] | None  # None: CPU time not measured
_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None), complex, range})
_SAMPLE_SALT = "dualrun-shadow"
_random = random.random  # one lookup less on the hot paths
MAX_NOISE_PATHS = 1000
# Unpaired runs (background, or a timeout) read thread CPU time, a system call per read, on every
# call for a runner's first CPU_FIRST_CALLS calls and on CPU_SAMPLE percent of later ones.
CPU_FIRST_CALLS = 1000
CPU_SAMPLE = 1.0
MAX_WORKERS = 256  # threads a shadow may start (twice: the pool and the timeout helpers)


def _immutable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every argument is an immutable atom (nothing to copy)."""
    return _IMMUTABLE.issuperset(map(type, args)) and (
        not kwargs or _IMMUTABLE.issuperset(map(type, kwargs.values()))
    )


def copy_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    """Deep copy of the arguments, skipped when every argument is an immutable atom."""
    if _immutable(args, kwargs):
        return args, kwargs
    # A pickle round trip where it copies as deepcopy would: several times faster.
    copied: Args | None = copy_by_pickle((args, kwargs))
    if copied is None:
        copied = copy.deepcopy((args, kwargs))
    return copied


class Shadow:
    """How to shadow: which calls, how to run the other version, and how to compare.

    ``primary``: shadow the calls the policy sends to ``"old"`` (the default: new runs beside
    old), to ``"new"`` (old runs beside the canary), or ``"any"``. ``sample``: percent of those
    calls, stable per request key. ``mode``: ``"inline"`` runs both in the caller's thread in
    random order; ``"background"`` returns the primary's result at once and runs the shadow on
    a bounded worker pool. ``timeout``: seconds the shadow may take. ``compare``: a function
    ``(old, new) -> bool | list[Difference]``; ``ignore``: paths such as ``$.items[*].id``;
    ``clean``: maps each value before comparison; ``calibrate``: learn noisy paths by running
    the primary twice (see the README). ``copy``: ``(args, kwargs) -> (args, kwargs)`` for the
    shadow's arguments, or ``None`` to share them. ``redact``: ``(what, text) -> text`` for
    every request key (``what="key"``), value and error text that is recorded, so reports and
    event logs only ever hold what it returns. ``cpu_time``: measure each run's thread CPU
    time (a system call per read); by default only where runs are not paired in the caller's
    thread (background, or a ``timeout``), as there the gate compares CPU time, and there on
    the first ``CPU_FIRST_CALLS`` calls and ``CPU_SAMPLE`` percent of later ones (both versions
    of the same calls); inline, wall times are comparable and CPU time is recorded as not
    measured (-1). ``True``: every call; ``False``: none.
    ``tolerance``: relative difference under which two floats are equal. ``exception_key``:
    maps an exception to what makes two of them equal (default: qualified type and message).
    ``workers``, ``queue_size``: the background pool's threads and queue (a full queue drops
    the shadow run and counts it). ``calibrate_calls``: the first shadowed calls of each route
    that calibrate; ``calibrate_sample``: the percent of later ones that do.
    """

    def __init__(
        self,
        primary: str = "old",
        sample: float = 100,
        compare: Callable[[Any, Any], bool | list[Difference]] | None = None,
        ignore: Iterable[str] = (),
        mode: str = "inline",
        timeout: float | None = None,
        calibrate: bool = False,
        *,
        clean: Callable[[Any], Any] | None = None,
        copy: Callable[[tuple[Any, ...], dict[str, Any]], Args] | None = copy_arguments,
        tolerance: float = 0.0,
        exception_key: Callable[[BaseException], object] = exception_key,
        workers: int = 2,
        queue_size: int = 1000,
        calibrate_calls: int = 20,
        calibrate_sample: float = 5.0,
        redact: Callable[[str, str], str] | None = None,
        cpu_time: bool | None = None,
    ) -> None:
        if primary != "any":
            check_label(primary, "Shadow primary (or 'any')")
        self.primary = primary
        self.sample = checks.percent(sample, "Shadow sample")
        if compare is not None and not callable(compare):
            raise ValueError(f"compare is a callable (old, new) -> bool | list, got {compare!r}")
        self.compare = compare
        self.ignore = IgnoreRules(ignore)
        if mode not in ("inline", "background"):
            raise ValueError(f"Shadow mode is 'inline' or 'background', got {mode!r}")
        self.mode = mode
        self.timeout = None if timeout is None else checks.seconds(timeout, "Shadow timeout")
        self.calibrate = bool(calibrate)
        for hook, what in ((clean, "clean"), (copy, "copy")):
            if hook is not None and not callable(hook):
                raise ValueError(f"{what} is a callable (or None), got {hook!r}")
        self.clean = clean
        self.copy = copy
        if redact is not None and not callable(redact):
            raise ValueError(f"redact is a callable (what, text) -> text, got {redact!r}")
        self.redact = redact
        if cpu_time is not None and not isinstance(cpu_time, bool):
            raise ValueError(f"cpu_time is True, False or None (the default), got {cpu_time!r}")
        self.cpu_time = cpu_time
        self.differ = Differ(tolerance=tolerance, exception_key=exception_key)
        self.workers = checks.whole_number(workers, "Shadow workers", maximum=MAX_WORKERS)
        self.queue_size = checks.whole_number(queue_size, "Shadow queue_size")
        self.calibrate_calls = checks.whole_number(calibrate_calls, "calibrate_calls", minimum=0)
        self.calibrate_sample = checks.percent(calibrate_sample, "calibrate_sample")

    def __repr__(self) -> str:
        return (
            f"Shadow(primary={self.primary!r}, sample={self.sample:g}, mode={self.mode!r}, "
            f"timeout={self.timeout}, calibrate={self.calibrate})"
        )


class _Result:
    """One version's run of one call."""

    __slots__ = ("cpu_ns", "error", "run", "timed_out", "value", "wall_ns")

    def __init__(
        self,
        value: Any,
        error: BaseException | None,
        wall_ns: int,
        cpu_ns: int,
        run: Run,
        timed_out: bool = False,
    ) -> None:
        self.value = value
        self.error = error
        self.wall_ns = wall_ns
        self.cpu_ns = cpu_ns
        self.run = run
        self.timed_out = timed_out


# Outside any request the shadow's context is always the same: a pin to the shadow's version,
# so that routed calls made inside the shadow run stay in that version.
_PINNED_EMPTY = {label: RequestContext(None, label, EMPTY.attrs, {}) for label in ("old", "new")}


def _shadow_request(request: RequestContext, label: Label) -> RequestContext:
    """The request as the shadow run sees it: the same key and attributes, pinned to ``label``."""
    if request is EMPTY:
        return _PINNED_EMPTY[label]
    return RequestContext(request.key, label, request.attrs, {})


def _migrating(route: ShadowedRoute, fn: Callable[..., Any], label: Label) -> Callable[..., Any]:
    """``fn`` on arguments converted for ``label``'s version by the migration hooks, inside
    the run: a hook that fails is that run's outcome."""

    def run(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = route.migrate_arguments(args, kwargs, label)
        return fn(*args, **kwargs)

    return run


def _shared(first: Args, second: Args) -> bool:
    """Whether the shadow got the very same argument objects (nothing was copied)."""
    return first[0] is second[0] and first[1] is second[1]


def _run_version(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    run: Run,
    request: RequestContext | None,
    clock: Clock,
) -> tuple[Any, BaseException | None, int, int]:
    """Run one version: its value, its exception, wall and CPU ns. Whatever it raises
    (``SystemExit`` and ``KeyboardInterrupt`` included) is its outcome, never the caller's.
    ``request``: the request as the run sees it (None: the caller's, unchanged)."""
    run_token = _set_run(run)
    request_token = None if request is None else _set_request(request)
    cpu = 0 if clock is None else clock()
    wall = perf_counter_ns()
    try:
        value, error = fn(*args, **kwargs), None
    except BaseException as exc:
        value, error = None, exc
    wall = perf_counter_ns() - wall
    cpu = NOT_MEASURED if clock is None else clock() - cpu
    if request_token is not None:
        _reset_request(request_token)
    _reset_run(run_token)
    return value, error, wall, cpu


def _execute(
    fn: Callable[..., Any],
    args: Args,
    run: Run,
    request: RequestContext,
    clock: Clock = thread_time_ns,
) -> _Result:
    """:func:`_run_version` on ``args``, as a result."""
    return _Result(*_run_version(fn, args[0], args[1], run, request, clock), run)


def _cancelling() -> bool:
    """Whether the running task is being cancelled (by its caller, not by a version)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _capture(awaitable: Awaitable[Any]) -> tuple[Any, BaseException | None]:
    """Await a version's coroutine, returning its exception rather than raising it: a
    ``SystemExit`` or ``KeyboardInterrupt`` raised inside a task would stop the event loop.
    Cancellation goes on (``wait_for``'s timeout cancels this)."""
    try:
        return await awaitable, None
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return None, exc


async def _execute_async(
    fn: Callable[..., Any],
    args: Args,
    run: Run,
    request: RequestContext,
    timeout: float | None,
    clock: Clock = thread_time_ns,
) -> _Result:
    """Await one version, bounded by ``timeout`` (an await can be cancelled, unlike a call)."""
    run_token = _set_run(run)
    request_token = _set_request(request)
    cpu = 0 if clock is None else clock()
    wall = perf_counter_ns()
    timed_out = False
    try:
        value, error = await asyncio.wait_for(_capture(fn(*args[0], **args[1])), timeout)
    except TimeoutError:  # only wait_for's own: the version's exceptions are captured inside
        value, error, timed_out = None, None, True
    except asyncio.CancelledError as exc:
        if _cancelling():  # the caller's task is being cancelled: not the version's doing
            _reset_request(request_token)
            _reset_run(run_token)
            raise
        value, error = None, exc
    except BaseException as exc:
        value, error = None, exc
    wall = perf_counter_ns() - wall
    cpu = NOT_MEASURED if clock is None else clock() - cpu
    _reset_request(request_token)
    _reset_run(run_token)
    return _Result(value, error, wall, cpu, run, timed_out)


class ShadowRunner:
    """The shadowing of one dispatcher: sampling, running, comparing, recording."""

    def __init__(self, config: Shadow, recorder: Recorder) -> None:
        self.config = config
        self.recorder = recorder
        # Both runs in the caller's thread, in random order: their wall times are comparable.
        # Otherwise (background, or an inline shadow bounded on a helper thread) only the
        # primary's wall time is measured as a caller sees it.
        self._paired = config.mode == "inline" and config.timeout is None
        recorder.redact = config.redact  # hook errors' texts, too, before they are recorded
        # Thread CPU time costs a system call per read (0.3 to 1.5 µs): measured where the
        # gate judges it (runs that are not paired), or when asked for.
        self._cpu = config.cpu_time if config.cpu_time is not None else not self._paired
        # By default, unpaired runs measure CPU time on a sample of calls (see _call_clock);
        # _clock is then the clock of the calls left out.
        self._sampled = config.cpu_time is None and not self._paired
        self._clock: Clock = thread_time_ns if self._cpu and not self._sampled else None
        self._hand_off_only = config.mode == "background" and not config.calibrate
        # wants() without sampling: every call served by the primary's label (or any label)
        self._every_call = config.sample >= 100
        primary = config.primary
        self._unshadowed = None if primary == "any" else other(check_label(primary, "primary"))
        # plain differ rules: a match needs no hook, so it can be told without an observation
        self._plain_compare = config.compare is None and config.clean is None
        # the flattened inline path (_call_paired) measures no CPU time
        self._paired_only = self._paired and not config.calibrate and self._clock is None
        self._cpu_calls = new_counter()
        # route -> generalised paths seen to be noisy, and the same as rules that match a path
        # and everything below it (compiled again only when a path is learnt)
        self._noise: dict[str, set[str]] = {}
        self._noise_rules: dict[str, IgnoreRules] = {}
        self._calibrations: dict[str, int] = {}
        self._tracebacks: dict[str, int] = {}  # route, label, exception type -> formatted
        self._lock = threading.Lock()
        self._pool = WorkerPool(
            config.workers, config.queue_size, "dualrun-shadow", self._background
        )
        self._helpers = WorkerPool(config.workers, config.workers, "dualrun-timeout")
        self._timeout_slots = threading.BoundedSemaphore(config.workers)
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[_Queued] = set()  # background runs a worker has started

    def after_fork_in_child(self) -> None:
        """Locks another thread of the parent held stay held in a forked child: renew them."""
        self._lock = threading.Lock()
        self._timeout_slots = threading.BoundedSemaphore(self.config.workers)
        self._tasks = set()
        self._running = set()

    def _call_clock(self) -> Clock:
        """The CPU clock of this call's runs (primary, shadow and calibration alike, so the
        two versions' CPU times come from the same calls), or None. Sampled by default where
        runs are not paired: every call while the runner is young, then a random share."""
        if self._sampled and (
            next(self._cpu_calls) < CPU_FIRST_CALLS or random.random() * 100 < CPU_SAMPLE
        ):
            return thread_time_ns
        return self._clock

    # -- which calls ------------------------------------------------------------------------

    def wants(self, label: Label, request: RequestContext | None) -> bool:
        """Whether this call, served by ``label``, is to be shadowed."""
        if _get_run() is not None:
            return False  # already inside a shadowed call: the outer comparison covers this one
        primary = self.config.primary
        if primary != "any" and primary != label:
            return False
        sample = self.config.sample
        if sample >= 100:
            return True
        if request is None or request.key is None:
            return random.random() * 100 < sample
        # Once per request, like the canary's bucket; a key that cannot be hashed is not sampled.
        sampled = request.decisions.get(self)
        if sampled is None:
            try:
                sampled = stable_bucket(request.key, _SAMPLE_SALT) < sample
            except Exception:
                sampled = False
            request.decisions[self] = sampled
        return sampled

    # -- sync calls ---------------------------------------------------------------------------

    def serve(
        self,
        route: ShadowedRoute,
        label: Label,
        request: RequestContext | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Serve a call routed to ``label``: shadowed with the other version if this runner
        wants it (see :meth:`wants`), else plainly."""
        if self._every_call:  # wants(), inlined for the common configuration
            wanted = label != self._unshadowed and _get_run() is None
        else:
            wanted = self.wants(label, request)
        fn, entered, left = route.slots[label]
        # In flight from the moment the version is chosen: a promote or swap while the shadow
        # runs first must not unload the version this call is about to run.
        next(entered)
        try:
            if not wanted:
                return fn(*args, **kwargs)
            if self._paired_only:
                return self._call_paired(fn, route, label, request or EMPTY, args, kwargs)
            if self._hand_off_only:
                return self._call_background(fn, route, label, request or EMPTY, args, kwargs)
            return self._call_counted(fn, route, label, args, kwargs)
        finally:
            next(left)

    def _shadow_arguments(
        self, route: ShadowedRoute, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Args | None:
        """The shadow's own arguments (see ``Shadow(copy=...)``), or None if they could not be
        made: the call is then served unshadowed and counted as skipped."""
        copier = self.config.copy
        if copier is None or (copier is copy_arguments and _immutable(args, kwargs)):
            return args, kwargs
        try:
            return copier(args, kwargs)
        except BaseException as exc:  # the copy hook: its failure is this call's outcome
            self.recorder.count(route.target, "skipped", f"copying the arguments: {describe(exc)}")
            return None

    def _call_paired(
        self,
        fn: Callable[..., Any],
        route: ShadowedRoute,
        label: Label,
        request: RequestContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """:meth:`_call_counted` for an inline shadow without a timeout, calibration or CPU
        timing, flattened: both versions run here, in random order; a match of plain results
        is recorded without building any observation."""
        copied = self._shadow_arguments(route, args, kwargs)
        if copied is None:
            return fn(*args, **kwargs)
        shadow_args, shadow_kwargs = copied
        runs: Label = "new" if label == "old" else "old"
        try:
            shadow_fn, entered, left = route.shadow_slots[runs]
            if route.migrating:
                shadow_fn = _migrating(route, shadow_fn, runs)
        except Exception as exc:  # dualrun's own failure (a closed runner): serve unshadowed
            self.recorder.count(route.target, "internal_errors", describe(exc))
            return fn(*args, **kwargs)
        if request is EMPTY:
            pinned = _PINNED_EMPTY[runs]
        else:
            pinned = RequestContext(request.key, runs, request.attrs, {})
        if _sideeffects.guarded:
            primary_run, shadow_run = Run(shadow=False), Run(shadow=True)
        else:
            primary_run, shadow_run = PRIMARY_RUN, SHADOW_RUN
        primary_first = _random() < 0.5  # either order: both wall times are comparable
        if primary_first:
            value, error, wall, _ = _run_version(fn, args, kwargs, primary_run, None, None)
        # The shadow's run: _run_version's without a CPU clock, inlined (the hot path).
        next(entered)
        try:
            run_token = _set_run(shadow_run)
            pin_token = _set_request(pinned)
            other_wall = perf_counter_ns()
            try:
                other_value, other_error = shadow_fn(*shadow_args, **shadow_kwargs), None
            except BaseException as exc:  # the shadow's outcome, never the caller's
                other_value, other_error = None, exc
            other_wall = perf_counter_ns() - other_wall
            _reset_request(pin_token)
            _reset_run(run_token)
        finally:
            next(left)
        if not primary_first:
            value, error, wall, _ = _run_version(fn, args, kwargs, primary_run, None, None)
        try:
            shared = shadow_args is args and shadow_kwargs is kwargs
            differ = self.config.differ
            value_differences = None  # the values' differences, when told here
            matched = False
            if (
                error is None
                and other_error is None
                and self._plain_compare
                and not (primary_run.calls or shadow_run.calls)
            ):
                kind = type(value)
                if kind is type(other_value) and (
                    value is other_value or (kind in _IMMUTABLE and value == other_value)
                ):
                    value_differences = []
                elif label == "old":
                    value_differences = differ.diff(value, other_value)
                else:
                    value_differences = differ.diff(other_value, value)
                # A plain match, told without an observation: equal values (by the differ's
                # rules) and arguments left alike.
                matched = not value_differences and (
                    shared or not differ.diff((args, kwargs), (shadow_args, shadow_kwargs))
                )
            if matched:
                old_wall, new_wall = (wall, other_wall) if label == "old" else (other_wall, wall)
                self.recorder.record_match(
                    route.target, old_wall, NOT_MEASURED, new_wall, NOT_MEASURED
                )
            else:
                self._record(
                    route.target,
                    label,
                    _Result(value, error, wall, NOT_MEASURED, primary_run),
                    _Result(other_value, other_error, other_wall, NOT_MEASURED, shadow_run),
                    None if shared else ((args, kwargs), (shadow_args, shadow_kwargs)),
                    request,
                    value_differences,
                )
        except BaseException as exc:  # a hook, a comparator, a repr: never the caller's
            self._failed(route, exc)
        if error is not None:
            raise error
        return value

    def _call_background(
        self,
        fn: Callable[..., Any],
        route: ShadowedRoute,
        label: Label,
        request: RequestContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """:meth:`_call_counted` for a background shadow that does not calibrate, flattened:
        the caller runs its version and queues a tuple (with a copy of the arguments, when the
        shadow gets one); the worker makes the rest of it."""
        copier = self.config.copy
        if copier is None or (  # _shadow_arguments' own check, inlined (two calls less)
            copier is copy_arguments and not kwargs and _IMMUTABLE.issuperset(map(type, args))
        ):
            shadow_args = primary_args = (args, kwargs)
        else:
            copied = self._shadow_arguments(route, args, kwargs)
            if copied is None:
                return fn(*args, **kwargs)
            shadow_args, primary_args = copied, None
        clock = self._clock  # _call_clock(), inlined
        if self._sampled and (
            next(self._cpu_calls) < CPU_FIRST_CALLS or random.random() * 100 < CPU_SAMPLE
        ):
            clock = thread_time_ns
        run = Run(shadow=False) if _sideeffects.guarded else PRIMARY_RUN
        value, error, wall, cpu = _run_version(fn, args, kwargs, run, None, clock)
        if primary_args is None:  # the caller may change them once back: the shadow's copy
            primary_args = self._primary_arguments(args, kwargs, shadow_args)
        job = (
            route,
            label,
            (value, error, wall, cpu, run),
            primary_args,
            shadow_args,
            None,
            request,
            copy_context(),
        )
        if not self._pool.submit(job):
            self.recorder.count(route.target, "dropped")
        if error is not None:
            raise error
        return value

    def _call_counted(
        self,
        fn: Callable[..., Any],
        route: ShadowedRoute,
        label: Label,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        request = _get_request() or EMPTY
        prepared = self._prepare(route, args, kwargs)
        if prepared is None:
            return fn(*args, **kwargs)
        shadow_args, again_args = prepared
        clock = self._call_clock()
        early = None
        if self.config.mode == "inline" and random.random() < 0.5:
            try:
                early = self._shadow_sync(route, label, shadow_args, request, None, clock)
            except Exception as exc:  # dualrun's own failure (a closed runner): serve unshadowed
                self.recorder.count(route.target, "internal_errors", describe(exc))
                return fn(*args, **kwargs)
        primary_run = new_run(False)
        token = _set_run(primary_run)
        cpu = 0 if clock is None else clock()
        wall = perf_counter_ns()
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            wall = perf_counter_ns() - wall
            cpu = NOT_MEASURED if clock is None else clock() - cpu
            _reset_run(token)
            result = _Result(None, exc, wall, cpu, primary_run)
            self._after(
                route, label, result, (args, kwargs), shadow_args, again_args, early, request
            )
            raise
        wall = perf_counter_ns() - wall
        cpu = NOT_MEASURED if clock is None else clock() - cpu
        _reset_run(token)
        result = _Result(value, None, wall, cpu, primary_run)
        self._after(route, label, result, (args, kwargs), shadow_args, again_args, early, request)
        return value

    def _prepare(
        self, route: ShadowedRoute, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Args, Args | None] | None:
        """The shadow's own arguments (and the calibration run's), or None to skip shadowing."""
        copier = self.config.copy
        try:
            shadow_args = (args, kwargs) if copier is None else copier(args, kwargs)
            again = None
            if self.config.calibrate and self._calibration_due(route.target):
                again = (args, kwargs) if copier is None else copier(args, kwargs)
        except BaseException as exc:  # the copy hook: its failure is this call's outcome
            self.recorder.count(route.target, "skipped", f"copying the arguments: {describe(exc)}")
            return None
        return shadow_args, again

    def _calibration_due(self, target: str) -> bool:
        with self._lock:
            done = self._calibrations.get(target, 0)
            due = done < self.config.calibrate_calls or (
                random.random() * 100 < self.config.calibrate_sample
            )
            if due:
                self._calibrations[target] = done + 1
        return due

    def _after(
        self,
        route: ShadowedRoute,
        label: Label,
        primary: _Result,
        primary_args: Args,
        shadow_args: Args,
        again_args: Args | None,
        early: _Result | None,
        request: RequestContext,
    ) -> None:
        if self.config.mode == "inline":
            self._finish(
                route, label, primary, primary_args, shadow_args, again_args, early, request
            )
            return
        outcome = (primary.value, primary.error, primary.wall_ns, primary.cpu_ns, primary.run)
        args, kwargs = primary_args
        self._hand_off(route, label, outcome, args, kwargs, shadow_args, request, again_args)

    def _hand_off(
        self,
        route: ShadowedRoute,
        label: Label,
        primary: _PrimaryRun,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        shadow_args: Args,
        request: RequestContext,
        again_args: Args | None = None,
    ) -> None:
        """Queue the rest of a background shadowed call for a worker: a plain tuple, with the
        caller's context (its log context, for example); the worker makes the rest of it."""
        job = (
            route,
            label,
            primary,
            self._primary_arguments(args, kwargs, shadow_args),
            shadow_args,
            again_args,
            request,
            copy_context(),
        )
        if not self._pool.submit(job):
            self.recorder.count(route.target, "dropped")

    def _background(self, job: _Job) -> None:
        """Run a queued background shadow (on a worker thread), in the caller's context."""
        queued = _Queued(job[0].target)
        running = self._running
        running.add(queued)
        try:
            job[7].run(self._background_run, queued, job)
        finally:
            running.discard(queued)

    def _background_run(self, queued: _Queued, job: _Job) -> None:
        _current_job.set(queued)  # in the job's own copy of the caller's context
        route, label, outcome, snapshot, shadow_args, again_args, request, _ = job
        primary = _Result(*outcome)
        self._finish(route, label, primary, snapshot, shadow_args, again_args, None, request)

    def _primary_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], shadow_args: Args
    ) -> Args:
        """The primary's arguments as a queued comparison sees them: a snapshot when the
        shadow got its own copy, as the caller may change them once back."""
        if shadow_args[0] is args and shadow_args[1] is kwargs:
            return args, kwargs
        return self._snapshot((args, kwargs))

    def _snapshot(self, args: Args) -> Args:
        copier = self.config.copy
        try:
            return args if copier is None else copier(*args)
        except BaseException:  # the copy hook: the comparison uses the arguments as they are
            return args

    def _shadow_sync(
        self,
        route: ShadowedRoute,
        label: Label,
        args: Args,
        request: RequestContext,
        runs_as: Label | None = None,
        clock: Clock = None,
    ) -> _Result:
        """Run the other version (or ``runs_as``) on ``args``; bounded by the timeout inline.
        ``clock``: the call's CPU clock (see :meth:`_call_clock`)."""
        runs = runs_as or other(label)
        fn, entered, left = route.shadow_slots[runs]
        if route.migrating:
            fn = _migrating(route, fn, runs)
        shadow_request = _shadow_request(request, runs)
        timeout = self.config.timeout
        if timeout is None or self.config.mode == "background":
            next(entered)
            try:
                result = _execute(fn, args, new_run(True), shadow_request, clock)
            finally:
                next(left)
            if timeout is not None and result.wall_ns > timeout * 1e9:
                result.timed_out = True
            return result

        def run() -> _Result:
            next(entered)
            try:
                return _execute(fn, args, new_run(True), shadow_request, clock)
            finally:
                next(left)

        return self._run_bounded(run, timeout)

    def _run_bounded(self, run: Callable[[], _Result], timeout: float) -> _Result:
        """Run on a helper (daemon) thread and wait at most ``timeout``: the caller's wait is
        bounded; the shadow itself cannot be interrupted and finishes (or hangs) on its own,
        holding its helper meanwhile, and never keeps the process from exiting."""
        started = perf_counter_ns()
        late = _Result(None, None, 0, NOT_MEASURED, new_run(True), timed_out=True)
        if not self._timeout_slots.acquire(blocking=False):
            return late  # every helper is busy with a slow shadow
        context = copy_context()
        result: list[_Result] = []
        done = threading.Event()

        def bounded() -> None:
            try:
                result.append(context.run(run))
            finally:
                self._timeout_slots.release()
                done.set()

        if not self._helpers.submit(bounded):
            self._timeout_slots.release()
            return late
        if done.wait(timeout) and result:
            return result[0]
        late.wall_ns = perf_counter_ns() - started
        return late

    def _finish(
        self,
        route: ShadowedRoute,
        label: Label,
        primary: _Result,
        primary_args: Args,
        shadow_args: Args,
        again_args: Args | None,
        shadow: _Result | None,
        request: RequestContext,
    ) -> None:
        """Run what is left (shadow, calibration), compare, record. Never raises."""
        try:
            # CPU time of the other runs exactly where the primary's was measured
            clock = None if primary.cpu_ns == NOT_MEASURED else thread_time_ns
            if shadow is None:
                shadow = self._shadow_sync(route, label, shadow_args, request, None, clock)
            again = None
            if again_args is not None:
                again = self._shadow_sync(route, label, again_args, request, label, clock)
            self._conclude(route, label, primary, shadow, again, primary_args, shadow_args, request)
        except BaseException as exc:  # a hook, a comparator, a repr: never the caller's
            self._failed(route, exc)

    # -- comparison ---------------------------------------------------------------------------

    def _conclude(
        self,
        route: ShadowedRoute,
        label: Label,
        primary: _Result,
        shadow: _Result,
        again: _Result | None,
        primary_args: Args,
        shadow_args: Args,
        request: RequestContext,
    ) -> None:
        """Learn noise from the calibration run, if any; compare and record the call."""
        if again is not None:
            self._learn_noise(route.target, primary, again)
        compared_args = None if _shared(shadow_args, primary_args) else (primary_args, shadow_args)
        self._record(route.target, label, primary, shadow, compared_args, request)

    def _clean(self, result: _Result) -> Any:
        clean = self.config.clean
        return result.value if clean is None or result.error is not None else clean(result.value)

    def _differences(self, old: _Result, new: _Result) -> list[Difference]:
        config = self.config
        old_value, new_value = self._clean(old), self._clean(new)
        if config.compare is not None and old.error is None and new.error is None:
            verdict = config.compare(old_value, new_value)
            if isinstance(verdict, bool):
                if verdict:
                    return []
                return [Difference("$", "value", short_repr(old_value), short_repr(new_value))]
            return list(verdict)
        return config.differ.diff_outcomes(old_value, old.error, new_value, new.error)

    def _learn_noise(self, target: str, first: _Result, again: _Result) -> None:
        if again.timed_out:
            return
        differences = self._differences(first, again)
        if first.run.calls or again.run.calls:
            differences += diff_side_effects(self.config.differ, first.run, again.run)
        # The root is never noise: a comparison that can only say "the whole value differs"
        # cannot tell noise from a real change, and would hide every mismatch.
        noisy = {generalize(d.path) for d in differences} - {"$"}
        if noisy:
            with self._lock:
                known = self._noise.setdefault(target, set())
                if len(known) < MAX_NOISE_PATHS and not noisy <= known:
                    known |= noisy
                    self._noise_rules[target] = IgnoreRules(sorted(known))

    def _record(
        self,
        target: str,
        label: Label,
        primary: _Result,
        shadow: _Result,
        compared_args: tuple[Args, Args] | None,
        request: RequestContext,
        value_differences: list[Difference] | None = None,
    ) -> None:
        """Compare and record one call. ``value_differences``: old's and new's values already
        compared by the differ (no hook), so not compared again."""
        old, new = (primary, shadow) if label == "old" else (shadow, primary)
        differences: list[Difference] = []
        noise: list[Difference] = []
        if shadow.timed_out:
            status = "timeout"
        else:
            config = self.config
            differ = config.differ
            if value_differences is not None:
                differences = value_differences
            elif config.compare is None and config.clean is None:
                differences = differ.diff_outcomes(old.value, old.error, new.value, new.error)
            else:
                differences = self._differences(old, new)
            if old.run.calls or new.run.calls:
                differences += diff_side_effects(differ, old.run, new.run)
            if compared_args is not None:
                old_args, new_args = compared_args if label == "old" else compared_args[::-1]
                differences += differ.diff(
                    {"args": old_args[0], "kwargs": old_args[1]},
                    {"args": new_args[0], "kwargs": new_args[1]},
                    "$arguments",
                )
            if differences:
                differences = config.ignore.filter(differences)
            rules = self._noise_rules.get(target) if config.calibrate else None
            if rules is not None:
                noise = [d for d in differences if rules.matches(d.path)]
                differences = [d for d in differences if not rules.matches(d.path)]
            status = "mismatch" if differences else "noise" if noise else "match"
            if status == "match" and old.error is None and new.error is None:
                if not _claimed():
                    return
                self.recorder.record_match(
                    target,
                    old.wall_ns,
                    old.cpu_ns,
                    new.wall_ns,
                    new.cpu_ns,
                    None if self._paired else label,
                )
                return
        key = (
            None
            if request.key is None
            else short_repr(request.key)
            if not isinstance(request.key, str)
            else request.key[:200]
        )
        observation = Observation(
            route=target,
            key=key,
            primary=label,
            old=_outcome("old", old, self._traceback(target, "old", old)),
            new=_outcome("new", new, self._traceback(target, "new", new)),
            differences=tuple(differences),
            noise=tuple(noise),
            status=status,
            time=time.time(),
            measured="paired" if self._paired else "primary",
        )
        redact = self.config.redact
        observation = observation if redact is None else redacted(observation, redact)
        if _claimed():
            self.recorder.record(observation)

    def record_outcomes(
        self,
        target: str,
        old: tuple[Any, BaseException | None, int],
        new: tuple[Any, BaseException | None, int],
        key: Any = None,
    ) -> None:
        """Compare and record two outcomes (value, exception, wall ns) obtained elsewhere, such
        as a recorded call's and a replay's, exactly as a shadowed call's would be."""
        request = EMPTY if key is None else RequestContext(key, None, EMPTY.attrs, {})
        cpu = 0 if self._cpu else NOT_MEASURED
        self._record(
            target,
            "old",
            _Result(old[0], old[1], old[2], cpu, new_run(False)),
            _Result(new[0], new[1], new[2], cpu, new_run(True)),
            None,
            request,
        )

    def _traceback(self, target: str, label: str, result: _Result) -> str | None:
        """A bounded traceback for the first examples of each route, version and exception
        type (formatting one costs tens of microseconds: not for every failing call)."""
        if result.error is None:
            return None
        key = f"{target} {label} {type(result.error).__qualname__}"
        with self._lock:
            seen = self._tracebacks.get(key, 0)
            if seen >= EXAMPLES_PER_GROUP or (not seen and len(self._tracebacks) >= MAX_GROUPS):
                return None
            self._tracebacks[key] = seen + 1
        try:
            return bounded_traceback(result.error)
        except Exception:  # a traceback that cannot be formatted is left out, never raised
            return None

    # -- async calls -------------------------------------------------------------------------

    async def call_async(
        self, route: ShadowedRoute, label: Label, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The async counterpart of :meth:`serve` for a call it wants shadowed: the shadow is a
        task on the same loop."""
        fn, entered, left = route.slots[label]
        next(entered)  # in flight from the moment the version is chosen, as in call()
        try:
            return await self._call_async_counted(fn, route, label, args, kwargs)
        finally:
            next(left)

    async def _call_async_counted(
        self,
        fn: Callable[..., Any],
        route: ShadowedRoute,
        label: Label,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        request = _get_request() or EMPTY
        prepared = self._prepare(route, args, kwargs)
        if prepared is None:
            return await fn(*args, **kwargs)
        shadow_args, again_args = prepared
        inline = self.config.mode == "inline"
        clock = self._call_clock()
        early = None
        if inline and random.random() < 0.5:
            early = await self._shadow_async(route, label, shadow_args, request, None, clock)
        primary_run = new_run(False)
        token = _set_run(primary_run)
        cpu = 0 if clock is None else clock()
        wall = perf_counter_ns()
        error: BaseException | None = None
        value: Any = None
        try:
            value = await fn(*args, **kwargs)
        except BaseException as exc:
            error = exc
        wall = perf_counter_ns() - wall
        cpu = NOT_MEASURED if clock is None else clock() - cpu
        result = _Result(value, error, wall, cpu, primary_run)
        _reset_run(token)
        if isinstance(error, asyncio.CancelledError):
            raise error  # the caller is being cancelled: no shadow run to wait for
        primary_args = (args, kwargs)
        if not inline and not _shared(shadow_args, primary_args):
            primary_args = self._snapshot(primary_args)  # the caller may change them once back
        finish = self._finish_async(
            route, label, result, primary_args, shadow_args, again_args, early, request
        )
        if inline:
            await finish
        elif len(self._tasks) >= self.config.queue_size:
            finish.close()
            self.recorder.count(route.target, "dropped")
        else:
            task = asyncio.get_running_loop().create_task(finish)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if error is not None:
            raise error
        return value

    async def _shadow_async(
        self,
        route: ShadowedRoute,
        label: Label,
        args: Args,
        request: RequestContext,
        runs_as: Label | None = None,
        clock: Clock = None,
    ) -> _Result:
        runs = runs_as or other(label)
        fn, entered, left = route.shadow_slots[runs]
        if route.migrating:
            fn = _migrating(route, fn, runs)
        next(entered)
        try:
            return await _execute_async(
                fn,
                args,
                new_run(True),
                _shadow_request(request, runs),
                self.config.timeout,
                clock,
            )
        finally:
            next(left)

    async def _finish_async(
        self,
        route: ShadowedRoute,
        label: Label,
        primary: _Result,
        primary_args: Args,
        shadow_args: Args,
        again_args: Args | None,
        shadow: _Result | None,
        request: RequestContext,
    ) -> None:
        try:
            clock = None if primary.cpu_ns == NOT_MEASURED else thread_time_ns
            if shadow is None:
                shadow = await self._shadow_async(route, label, shadow_args, request, None, clock)
            again = None
            if again_args is not None:
                again = await self._shadow_async(route, label, again_args, request, label, clock)
            self._conclude(route, label, primary, shadow, again, primary_args, shadow_args, request)
        except asyncio.CancelledError:
            if not _cancelling():
                self.recorder.count(route.target, "internal_errors", "CancelledError")
            elif self.config.mode == "background":
                self.recorder.count(route.target, "dropped")  # its loop is shutting down
            raise
        except BaseException as exc:  # a hook, a comparator, a repr: never the caller's
            self._failed(route, exc)

    def _failed(self, route: ShadowedRoute, exc: BaseException) -> None:
        """Record a failure of the comparison or its hooks as this run's outcome."""
        if not _claimed():
            return
        try:
            self.recorder.count(route.target, "internal_errors", describe(exc))
        except BaseException:  # even describing it failed: count it without a text
            self.recorder.count(route.target, "internal_errors", type(exc).__name__)

    # -- lifecycle ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until queued background shadow runs are done; False if ``timeout`` ran out."""
        return self._pool.join(timeout)

    def close(self, timeout: float | None = 5.0, abandon: bool = False) -> None:
        """Finish queued shadow runs (up to ``timeout``) and stop the worker threads. With
        ``abandon``, runs not started by then never will be: each is counted as dropped
        (otherwise they still run, on the threads' way out). A run queued by a call racing
        this close, after the threads stopped, is counted as dropped too."""
        for job in self._pool.close(timeout, abandon=abandon):  # never to run
            self.recorder.count(job[0].target, "dropped")
        if abandon:  # running still (a thread that exit will stop)
            for queued in list(self._running):
                if queued.claim():
                    self.recorder.count(queued.target, "dropped")
        self._helpers.close(timeout=0)


# The primary's run of a call: value, exception, wall ns, CPU ns, side effects.
_PrimaryRun = tuple[Any, "BaseException | None", int, int, Run]
# A queued background shadow run: see ShadowRunner._hand_off.
_Job = tuple[ShadowedRoute, Label, _PrimaryRun, Args, Args, "Args | None", RequestContext, Context]


class _Queued:
    """A background shadow run a worker has started: it records its outcome, or
    :meth:`ShadowRunner.close` counts it as dropped, whichever claims it first (never both)."""

    __slots__ = ("_claims", "target")

    def __init__(self, target: str) -> None:
        self.target = target
        self._claims = new_counter()

    def claim(self) -> bool:
        """True for the first caller only (atomic under the GIL)."""
        return next(self._claims) == 0


_current_job: ContextVar[_Queued | None] = ContextVar("dualrun_shadow_job", default=None)


def _claimed() -> bool:
    """Whether this run may record its outcome: inline runs always, a background run unless
    ``close()`` already counted it as dropped."""
    job = _current_job.get()
    return job is None or job.claim()


def redacted(obs: Observation, redact: Callable[[str, str], str]) -> Observation:
    """``obs`` with its key, every value and error text, and the dict keys and set members in
    its paths passed through ``redact(what, text)`` (see :mod:`dualrun.redaction`)."""

    def text(what: str, value: str | None) -> str | None:
        return None if value is None else redact(what, value)

    def difference(d: Difference) -> Difference:
        old, new = redact("value", d.old), redact("value", d.new)
        return Difference(redact_path(d.path, redact), d.kind, old, new)

    def outcome(o: Outcome) -> Outcome:
        return dataclasses.replace(
            o,
            value=text("value", o.value),
            error=text("error", o.error),
            traceback=text("error", o.traceback),
        )

    return dataclasses.replace(
        obs,
        key=text("key", obs.key),
        old=outcome(obs.old),
        new=outcome(obs.new),
        differences=tuple(difference(d) for d in obs.differences),
        noise=tuple(difference(d) for d in obs.noise),
    )


def _outcome(label: str, result: _Result, traceback_text: str | None = None) -> Outcome:
    error = None
    if result.error is not None:
        error = f"{type(result.error).__qualname__}: {short_repr(str(result.error))}"
    value = None if result.error is not None or result.timed_out else short_repr(result.value)
    return Outcome(
        label, value, error, result.wall_ns, result.cpu_ns, result.timed_out, traceback_text
    )


_PRIVATE_PREFIX = re.compile(r"_dualrun_\d+\.")
TRACEBACK_FRAMES = 8
TRACEBACK_CHARS = 2000


def bounded_traceback(error: BaseException) -> str:
    """The last ``TRACEBACK_FRAMES`` frames of ``error``'s traceback, at most
    ``TRACEBACK_CHARS`` characters, with the versions' private prefixes (``_dualrun_3.``)
    removed so that names read as in the source."""
    lines = traceback.format_exception(
        type(error), error, error.__traceback__, limit=-TRACEBACK_FRAMES
    )
    text = _PRIVATE_PREFIX.sub("", "".join(lines)).rstrip()
    return text if len(text) <= TRACEBACK_CHARS else "…" + text[-(TRACEBACK_CHARS - 1) :]
