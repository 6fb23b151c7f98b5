"""A route: one target (``"pkg.mod:Qual.name"``) as it stands in both versions, and the hot path
that sends each call to one of them.

The hot path reads the request context, asks the dispatcher for the version, counts the call in
and out (lock-free), and calls the version's function. No logging, no lock, no allocation that
grows with history.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from dualrun.context import Label, RequestContext, current_request, other
from dualrun.counters import Counter, new_counter, peek
from dualrun.errors import TargetNotFoundError
from dualrun.targets import Found, Kind, find

if TYPE_CHECKING:
    from dualrun.loading import Version, VersionPair
    from dualrun.recording import Tap
    from dualrun.shadow import ShadowRunner

Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]


def _flavour(fn: Any) -> str:
    if inspect.iscoroutinefunction(fn):
        return "async"
    if inspect.isasyncgenfunction(fn):
        return "async generator"
    if inspect.isgeneratorfunction(fn):
        return "generator"
    return "sync"


Slot = tuple[Any, Counter, Counter]  # (callable, entered, left)


class RouteHost(Protocol):
    """What a route reads of its dispatcher (a :class:`dualrun.Dispatcher`): the versions
    live now, the migration hooks, and what the routed call decides with (the decision
    function and the state it inlines) and hands calls to (the shadow runner, the tap)."""

    @property
    def live_versions(self) -> VersionPair: ...

    @property
    def migrations(self) -> Mapping[tuple[Label, Label], Callable[[Any], Any]]: ...

    @property
    def results_as(self) -> Label | None: ...

    @property
    def _first_call(self) -> bool: ...

    @property
    def _fixed(self) -> Label | None: ...

    @property
    def _pins_honored(self) -> bool: ...

    @property
    def _epoch(self) -> object: ...

    @property
    def _shadow(self) -> ShadowRunner | None: ...

    @property
    def _tap(self) -> Tap | None: ...

    def _decide(self, request: RequestContext | None) -> Label: ...

    def _first_routed_call(self) -> None: ...


class Route:
    """One routed target: per-version callables and per-version counts.

    ``slots[label]`` is what a call routed to ``label`` runs, with the counters of its version;
    the lifecycle rebinds a label to another version (a swapped candidate) or aliases it to the
    other label (the kill switch, a retired version) by replacing a slot, which the hot path
    reads once per call.
    """

    def __init__(self, dispatcher: RouteHost, target: str) -> None:
        self.target = target
        self._dispatcher = dispatcher
        versions = dispatcher.live_versions
        old = find(versions.old, target)
        self.kind: Kind = old.kind
        self.flavour = _flavour(old.value)
        new = self.check(versions.new, "the 'old' version")
        self.crossings = new_counter()  # method calls that followed their object's version
        self.outside = new_counter()  # calls made outside any dualrun.context
        self._outside_base = 0
        self.migrations = new_counter()  # values converted by a migration hook
        self.results_converted = new_counter()  # results converted for the caller
        # Whether migration hooks are registered (values then cross versions converted): they
        # are given to the dispatcher once, before any route.
        self.migrating = bool(dispatcher.migrations)
        self.found: dict[Label, Found] = {}
        self.entered: dict[Label, Counter] = {}
        # Every counter of calls a label was bound to, for the summaries (one per swap).
        self._counted: dict[Label, list[Counter]] = {"old": [], "new": []}
        self.left: dict[Label, Counter] = {}
        self.slots: dict[Label, Slot] = {}
        self._call_base: dict[Label, int] = {}  # calls before the statistics last restarted
        # Shadow runs count apart: they are in flight in their version but serve no caller.
        self.shadow_slots: dict[Label, Slot] = {}
        self._shadow_counters: dict[Label, tuple[Counter, Counter]] = {}
        self._prefixes: dict[Label, tuple[str, ...]] = {}
        # The label whose version serves calls routed to each label (see alias): migrations
        # convert values for that version, not for the one the label names.
        self.serving: dict[Label, Label] = {"old": "old", "new": "new"}
        self.bind("old", old, versions.old.owned_prefixes)
        self.bind("new", new, versions.new.owned_prefixes)

    def check(self, version: Version, reference: str) -> Found:
        """The target in ``version``, if it is the same kind and flavour as in ``reference``."""
        found = find(version, self.target)
        where = f"in the {version.label!r} version ({version.source})"
        if found.kind is not self.kind:
            raise TargetNotFoundError(
                f"target {self.target!r} is a {found.kind.value} {where} but a "
                f"{self.kind.value} in {reference}; a route needs the same kind in both versions"
            )
        if _flavour(found.value) != self.flavour:
            raise TargetNotFoundError(
                f"target {self.target!r} is {_flavour(found.value)} {where} but a "
                f"{self.flavour} callable in {reference}; a route needs the same in both versions"
            )
        return found

    def bind(self, label: Label, found: Found, prefixes: tuple[str, ...]) -> None:
        """Serve ``label`` with ``found`` (of the version whose modules' names start with one
        of ``prefixes``), counting afresh."""
        entered, left = new_counter(), new_counter()
        self._counted[label].append(entered)
        shadow = (new_counter(), new_counter())
        self.found[label] = found
        self.entered[label], self.left[label] = entered, left
        self._call_base[label] = 0
        self._shadow_counters[label] = shadow
        self._prefixes[label] = prefixes
        self.shadow_slots[label] = (found.value, *shadow)
        self.slots[label] = (found.value, entered, left)
        self.serving[label] = label

    def alias(self, label: Label, to: Label) -> None:
        """Serve calls routed to ``label`` with ``to``'s version (counted as ``to``'s)."""
        self.shadow_slots[label] = self.shadow_slots[to]
        self.slots[label] = self.slots[to]
        self.serving[label] = to

    def unalias(self, label: Label) -> None:
        """Undo :meth:`alias`: ``label`` serves its own version again."""
        value = self.found[label].value
        self.shadow_slots[label] = (value, *self._shadow_counters[label])
        self.slots[label] = (value, self.entered[label], self.left[label])
        self.serving[label] = label

    def renew_counters(self) -> None:
        """Count from zero (a forked child counts its own calls), keeping every alias."""
        serving = dict(self.serving)
        self._counted = {"old": [], "new": []}  # the parent's calls are the parent's
        for label in ("old", "new"):
            self.bind(label, self.found[label], self._prefixes[label])
        for label, to in serving.items():
            if to != label:
                self.alias(label, to)

    def counters(self, label: Label) -> list[tuple[Counter, Counter]]:
        """The in/out counters of the version bound to ``label``: serving and shadow runs."""
        return [(self.entered[label], self.left[label]), self._shadow_counters[label]]

    # -- what the report reads -------------------------------------------------------------

    def calls(self, label: Label) -> int:
        """Calls served by the version bound to ``label`` since the statistics restarted."""
        return peek(self.entered[label]) - self._call_base[label]

    def restart_counts(self) -> None:
        """Count calls from zero for the report (a swap restarts the statistics); the
        counters themselves go on, as calls in flight still count themselves out."""
        for label in ("old", "new"):
            self._call_base[label] = peek(self.entered[label])
        self._outside_base = peek(self.outside)

    def outside_calls(self) -> int:
        """Calls made outside any dualrun.context since the statistics restarted."""
        return peek(self.outside) - self._outside_base

    def tally(self) -> list[tuple[Counter, list[Counter]]]:
        """For calls served by old, by new, crossings, calls outside any context and converted
        results: the counter now in use and every counter used so far. A summary takes the
        calls since the previous one from each, so calls counted by a binding that a swap
        replaced (even before any summary, even by a call that read its slot just before the
        swap) are neither lost nor counted twice."""
        return [
            (self.entered["old"], list(self._counted["old"])),
            (self.entered["new"], list(self._counted["new"])),
            (self.crossings, [self.crossings]),
            (self.outside, [self.outside]),
            (self.results_converted, [self.results_converted]),
        ]

    def in_flight(self, label: Label) -> int:
        """Calls running in the version bound to ``label`` now, serving callers or as shadows."""
        return sum(peek(entered) - peek(left) for entered, left in self.counters(label))

    # -- migrations ------------------------------------------------------------------------

    def owner_of(self, value: Any, label: Label) -> Label | None:
        """The label of the other version if ``value`` was made by it, else None."""
        module = f"{type(value).__module__}."  # "pricing." is the host's "pricing" too
        prefixes = self._prefixes
        if module.startswith(prefixes[label]):
            return None
        for owner, prefix in prefixes.items():
            if owner != label and module.startswith(prefix):
                return owner
        return None

    def migrate(self, value: Any, label: Label) -> Any:
        """``value`` for a run in ``label``'s version: converted by the migration hook if the
        other version made it."""
        owner = self.owner_of(value, label)
        convert = None if owner is None else self._dispatcher.migrations.get((owner, label))
        if convert is None:
            return value
        next(self.migrations)
        return convert(value)

    def results_converted_from(self) -> frozenset[Label]:
        """The labels whose results callers get converted (``Dispatcher(results_as=...)``)."""
        to = self._dispatcher.results_as
        if to is None:
            return frozenset()
        return frozenset({other(to)})

    def convert_result(self, label: Label, value: Any) -> Any:
        """A result of ``label``'s version as callers of the other expect it: its hook's."""
        to = other(label)
        convert = self._dispatcher.migrations[(label, to)]
        next(self.results_converted)
        return convert(value)

    def migrate_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], label: Label
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments for a run in ``label``'s version (a shadow run gets its own version's
        values, as the serving run does)."""
        migrate = self.migrate
        return tuple(migrate(a, label) for a in args), {
            k: migrate(v, label) for k, v in kwargs.items()
        }

    # -- the hot path ----------------------------------------------------------------------

    def wrapper(self, prepend_instance: bool = False) -> Wrapper:
        """The wrapt wrapper function for this route.

        ``prepend_instance``: the host attribute is an instance method but the version's target
        is a plain function, so the instance is passed as the first argument.
        """
        dispatcher = self._dispatcher
        decide = dispatcher._decide
        get_request = current_request.get
        method = self.kind is Kind.METHOD
        crossings = self.crossings
        outside = self.outside
        migrations = dispatcher.migrations
        slots = self.slots
        serving = self.serving
        owner_of = self.owner_of
        migrate = self.migrate
        converting = self.results_converted_from()
        convert_result = self.convert_result

        def choose(
            instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[Label, tuple[Any, ...], dict[str, Any], bool]:
            """The version, the full arguments, and whether the call may be shadowed."""
            if dispatcher._first_call:
                dispatcher._first_routed_call()
            request = get_request()
            if request is None:
                next(outside)
            # The label of the version that will really run (an aliased label runs the other).
            label = serving[decide(request)]
            if migrations:
                # A value made by the other version is converted when a hook is registered.
                args = tuple(migrate(a, label) for a in args)
                kwargs = {k: migrate(v, label) for k, v in kwargs.items()}
            if method:
                if instance is None:
                    if not args:
                        raise TypeError(
                            f"{self.target} is a method: call it with the instance first"
                        )
                    instance, args = args[0], args[1:]
                elif migrations:
                    instance = migrate(instance, label)
                owner = owner_of(instance, label)
                if owner is not None:
                    # The livepatch rule: without a migration, a method runs in the version
                    # that created its object; such a call is not shadowed (the other version
                    # has no such object).
                    next(crossings)
                    return owner, (instance, *args), kwargs, False
                return label, (instance, *args), kwargs, owner_of(instance, other(label)) is None
            if prepend_instance and instance is not None:
                return label, (instance, *args), kwargs, True
            return label, args, kwargs, True

        target = self.target

        def serve(
            label: Label,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            request: RequestContext | None,
            shadowable: bool = True,
        ) -> Any:
            """The call after its decision: shadowed if sampled (a recorded call's path)."""
            shadow = dispatcher._shadow
            if shadowable and shadow is not None:
                return shadow.serve(self, label, request, args, kwargs)
            fn, entered, left = slots[label]
            next(entered)
            try:
                return fn(*args, **kwargs)
            finally:
                next(left)

        async def serve_async(
            label: Label,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            request: RequestContext | None,
            shadowable: bool,
        ) -> Any:
            shadow = dispatcher._shadow
            if shadowable and shadow is not None and shadow.wants(label, request):
                return await shadow.call_async(self, label, args, kwargs)
            fn, entered, left = slots[label]
            next(entered)
            try:
                return await fn(*args, **kwargs)
            finally:
                next(left)

        if self.flavour == "sync" and not method and not prepend_instance and not migrations:

            def route_function(
                wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Any:
                if dispatcher._first_call:
                    dispatcher._first_routed_call()
                # The decision, inlined: this is the hot path (see Dispatcher._decide).
                request = get_request()
                if request is None:
                    next(outside)
                    label = dispatcher._fixed or decide(None)
                else:
                    label = (
                        (request.pin if dispatcher._pins_honored else None)
                        or request.decisions.get(dispatcher._epoch)
                        or decide(request)
                    )
                tap = dispatcher._tap
                if tap is not None and tap.wants(target):
                    return tap.call(
                        target,
                        serving[label],
                        request and request.key,
                        lambda: serve(label, args, kwargs, request),
                        args,
                        kwargs,
                    )
                shadow = dispatcher._shadow
                if shadow is not None:
                    return shadow.serve(self, label, request, args, kwargs)
                fn, entered, left = slots[label]
                next(entered)
                try:
                    return fn(*args, **kwargs)
                finally:
                    next(left)

            return route_function

        if self.flavour == "sync":

            def route_call(
                wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Any:
                label, full, kwargs, shadowable = choose(instance, args, kwargs)
                tap = dispatcher._tap
                if tap is not None and not method and tap.wants(target):
                    request = get_request()
                    result = tap.call(
                        target,
                        serving[label],
                        request and request.key,
                        lambda: serve(label, full, kwargs, request, shadowable),
                        full,
                        kwargs,
                    )
                else:
                    shadow = dispatcher._shadow
                    if shadowable and shadow is not None:
                        result = shadow.serve(self, label, get_request(), full, kwargs)
                    else:
                        fn, entered, left = slots[label]
                        next(entered)
                        try:
                            result = fn(*full, **kwargs)
                        finally:
                            next(left)
                return result if label not in converting else convert_result(label, result)

            return route_call

        if self.flavour == "async":

            def route_async(
                wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Coroutine[Any, Any, Any]:
                label, full, kwargs, shadowable = choose(instance, args, kwargs)
                if label in converting:
                    return converted(label, routed_async(label, full, kwargs, shadowable))
                return routed_async(label, full, kwargs, shadowable)

            def routed_async(
                label: Label, full: tuple[Any, ...], kwargs: dict[str, Any], shadowable: bool
            ) -> Coroutine[Any, Any, Any]:
                tap = dispatcher._tap
                if tap is not None and not method and tap.wants(target):
                    request = get_request()
                    return tap.call_async(
                        target,
                        serving[label],
                        request and request.key,
                        lambda: serve_async(label, full, kwargs, request, shadowable),
                        full,
                        kwargs,
                    )
                shadow = dispatcher._shadow
                if shadowable and shadow is not None and shadow.wants(label, get_request()):
                    return shadow.call_async(self, label, full, kwargs)

                async def run() -> Any:
                    # The slot is read when the call starts running, and counted at once: a
                    # version retired in between is never run unaccounted for.
                    fn, entered, left = slots[label]
                    next(entered)
                    try:
                        return await fn(*full, **kwargs)
                    finally:
                        next(left)

                return run()

            async def converted(label: Label, call: Coroutine[Any, Any, Any]) -> Any:
                return convert_result(label, await call)

            return route_async

        if self.flavour == "generator":

            def route_generator(
                wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Generator[Any, Any, Any]:
                label, full, kwargs, _ = choose(instance, args, kwargs)

                def run() -> Generator[Any, Any, Any]:
                    fn, entered, left = slots[label]  # read on the first step, as for async
                    next(entered)
                    try:
                        return (yield from fn(*full, **kwargs))
                    finally:
                        next(left)

                return run()

            return route_generator

        def route_async_generator(
            wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> AsyncIterator[Any]:
            label, full, kwargs, _ = choose(instance, args, kwargs)

            async def run() -> AsyncIterator[Any]:
                fn, entered, left = slots[label]  # read on the first step, as for async
                next(entered)
                try:
                    async for item in fn(*full, **kwargs):
                        yield item
                finally:
                    next(left)

            return run()

        return route_async_generator
