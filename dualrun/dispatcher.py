"""The dispatcher: which version serves each routed call, and what happened."""

from __future__ import annotations

import os
from typing import Any

import wrapt

from dualrun.context import EMPTY, Label, RequestContext
from dualrun.counters import new_counter, peek
from dualrun.eventlog import EventLog
from dualrun.intercept import Interception, install
from dualrun.journal import Journal
from dualrun.loading import VersionPair
from dualrun.policy import Fixed, Policy, check_policy
from dualrun.recorder import Recorder
from dualrun.report import Report, build_report
from dualrun.routing import Route
from dualrun.shadow import Shadow, ShadowRunner
from dualrun.targets import parse_target


class Dispatcher:
    """Routes calls between the two versions of a :class:`~dualrun.VersionPair`.

    The policy decides per request (sticky inside a ``dualrun.context``) or per call outside
    any context; a pin in the context wins over the policy. ``dispatcher.policy = ...`` swaps
    the policy atomically while calls are in flight; requests already routed keep their version.
    """

    def __init__(
        self,
        versions: VersionPair,
        policy: Policy | None = None,
        shadow: Shadow | None = None,
        log: str | os.PathLike[str] | EventLog | Any = None,
    ) -> None:
        if not isinstance(versions, VersionPair):
            raise ValueError(
                f"versions is the VersionPair that dualrun.load() returns, got {versions!r}"
            )
        self.versions = versions
        self._routes: dict[str, Route] = {}
        self._interceptions: list[Interception] = []
        self.policy_errors = new_counter()
        self.last_policy_error: str | None = None
        self._epoch = object()  # decisions cached in a request are valid for one epoch
        self._fixed: Label | None = None
        self._policy: Policy = Fixed("old")
        self.policy = Fixed("old") if policy is None else policy
        self.recorder = Recorder()
        self._shadow: ShadowRunner | None = None
        self.shadow = shadow
        self.journal: Journal | None = None
        if log is not None:
            self.journal = Journal(self, log if isinstance(log, EventLog) else EventLog(log))

    # -- policy ----------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        policy = check_policy(policy)
        # Both fields are read without a lock on the hot path: set the fast path off first.
        self._fixed = None
        self._policy = policy
        self._fixed = policy.label if type(policy) is Fixed else None
        if getattr(self, "journal", None) is not None:
            self._event("dualrun.policy")

    def _event(self, name: str, **fields: Any) -> None:
        if self.journal is not None:
            self.journal.event(name, **fields)

    @property
    def shadow(self) -> Shadow | None:
        return None if self._shadow is None else self._shadow.config

    @shadow.setter
    def shadow(self, shadow: Shadow | None) -> None:
        if shadow is not None and not isinstance(shadow, Shadow):
            raise ValueError(f"shadow is a dualrun.Shadow(...) or None, got {shadow!r}")
        previous = self._shadow
        self._shadow = None if shadow is None else ShadowRunner(shadow, self.recorder)
        if previous is not None:
            previous.close(timeout=0)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for queued background shadow runs; False if ``timeout`` ran out first."""
        return True if self._shadow is None else self._shadow.flush(timeout)

    def promote(self) -> None:
        """Send every call to the new version, including requests already routed to old."""
        self._switch(Fixed("new"))
        self._event("dualrun.promote")

    def rollback(self) -> None:
        """Send every call to the old version, including requests already routed to new."""
        self._switch(Fixed("old"))
        self._event("dualrun.rollback")

    def _switch(self, policy: Policy) -> None:
        self.policy = policy
        self._epoch = object()

    # -- the decision (hot path) -----------------------------------------------------------

    def _decide(self, request: RequestContext | None) -> Label:
        if request is None:
            return self._fixed or self._choose(EMPTY)
        if request.pin is not None:
            return request.pin
        label = request.decisions.get(self._epoch)
        if label is None:
            label = request.decisions.setdefault(self._epoch, self._choose(request))
        return label

    def _choose(self, request: RequestContext) -> Label:
        try:
            label = self._policy.choose(request)
        except Exception as exc:  # a broken policy must not break the caller
            return self._policy_failed(f"{type(exc).__name__}: {exc}")
        if label == "old" or label == "new":
            return label
        return self._policy_failed(f"choose() returned {label!r}, not 'old' or 'new'")

    def _policy_failed(self, why: str) -> Label:
        next(self.policy_errors)
        self.last_policy_error = f"{self._policy!r}: {why}"
        return "old"

    # -- routes ----------------------------------------------------------------------------

    def _route_for(self, target: str) -> Route:
        route = self._routes.get(target)
        if route is None:
            route = self._routes.setdefault(target, Route(self, target))
        return route

    def route(self, target: str) -> wrapt.FunctionWrapper[Any, Any]:
        """A callable that routes each call of ``target`` (``"pkg.mod:Qual.name"``).

        It is a wrapt ``FunctionWrapper`` around the old version's target, so its signature,
        name and docstring look like the target's. The target must exist in both versions.
        """
        route = self._route_for(target)
        return wrapt.FunctionWrapper(route.found["old"].value, route.wrapper())

    def intercept(self, host_target: str, version_target: str) -> Interception:
        """Patch the host's ``"module:qualname"`` so its calls route to ``version_target``.

        If the host module is not imported yet, the patch is applied when it is. Code that
        bound the host function earlier (``from host import func``) keeps the unpatched one.
        """
        parse_target(host_target)  # bad input fails here, before a route is made
        route = self._route_for(version_target)
        handle = install(host_target, lambda host_is_method: route.wrapper(host_is_method))
        self._interceptions.append(handle)
        return handle

    @property
    def routes(self) -> dict[str, Route]:
        return dict(self._routes)

    def in_flight(self, label: Label) -> int:
        """Calls now running in version ``label``, over all routes."""
        return sum(route.in_flight(label) for route in self._routes.values())

    def close(self, timeout: float | None = 5.0) -> None:
        """Undo every interception, finish queued shadow runs (up to ``timeout``), stop."""
        for handle in reversed(self._interceptions):
            handle.undo()
        self._interceptions.clear()
        if self._shadow is not None:
            self._shadow.close(timeout)
        if self.journal is not None:
            self.journal.close(timeout)

    def report(self) -> Report:
        """What the dispatcher saw so far, per route: see :class:`dualrun.Report`."""
        return build_report(self)

    def policy_error_count(self) -> int:
        return peek(self.policy_errors)
