"""The dispatcher: which version serves each routed call, and what happened."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol

import wrapt

from dualrun import checks, forks
from dualrun.compare import describe
from dualrun.context import EMPTY, Label, RequestContext, check_label, other
from dualrun.counters import new_counter, peek
from dualrun.errors import (
    ContextRequiredError,
    DualrunWarning,
    TargetNotFoundError,
    VersionLoadError,
)
from dualrun.eventlog import EventLog, at_exit
from dualrun.intercept import Interception, function_wrapper, install
from dualrun.journal import Journal
from dualrun.lifecycle import Retirement, RetirementRecord
from dualrun.loading import VersionPair, load_version
from dualrun.policy import Canary, Fixed, Policy, check_policy
from dualrun.recorder import Recorder
from dualrun.recording import Recording, Tap, make_tap
from dualrun.redaction import safely
from dualrun.report import Report, route_report
from dualrun.routing import Route
from dualrun.shadow import Shadow, ShadowRunner
from dualrun.sideeffects import in_shadow_run
from dualrun.status import LoadedVersion, Status
from dualrun.targets import parse_target

KILL_SWITCH_VARIABLE = "DUALRUN_KILL_SWITCH"
EXIT_FLUSH_SECONDS = 2.0  # at interpreter exit, how long queued background shadows may still run


class Attached(Protocol):
    """A control's agent in this process (see :mod:`dualrun.control`)."""

    def after_fork_in_child(self) -> None: ...

    def close(self, timeout: float | None = ...) -> None: ...


class Control(Protocol):
    """Shared routing state for many processes: ``dualrun.SQLiteControl``,
    ``dualrun.OpenFeatureControl``."""

    def attach(self, dispatcher: Dispatcher) -> Attached: ...


def check_migrations(
    migrate: Mapping[tuple[str, str], Callable[[Any], Any]] | None,
) -> dict[tuple[Label, Label], Callable[[Any], Any]]:
    """Validate ``migrate={("old", "new"): fn, ("new", "old"): fn}``."""
    if migrate is None:
        return {}
    if not isinstance(migrate, Mapping):
        raise ValueError(
            "migrate is a dict such as {('old', 'new'): to_new, ('new', 'old'): to_old}, "
            f"got {migrate!r}"
        )
    checked: dict[tuple[Label, Label], Callable[[Any], Any]] = {}
    for key, convert in migrate.items():
        if key == ("old", "new"):
            checked[("old", "new")] = convert
        elif key == ("new", "old"):
            checked[("new", "old")] = convert
        else:
            raise ValueError(f"a migrate key is ('old', 'new') or ('new', 'old'), got {key!r}")
        if not callable(convert):
            raise ValueError(f"migrate[{key!r}] is a callable taking one value, got {convert!r}")
    return checked


def check_results_as(
    results_as: object, migrations: Mapping[tuple[Label, Label], Callable[[Any], Any]]
) -> Label | None:
    """Validate ``results_as``: the version whose objects callers expect, with its hook."""
    if results_as is None:
        return None
    if results_as not in ("old", "new"):
        raise ValueError(
            f"results_as is 'old' or 'new' (the version whose objects callers expect), "
            f"got {results_as!r}"
        )
    source = "new" if results_as == "old" else "old"
    if (source, results_as) not in migrations:
        raise ValueError(
            f"results_as={results_as!r} converts the {source!r} version's results with "
            f"migrate[({source!r}, {results_as!r})]: register that migration"
        )
    return "old" if results_as == "old" else "new"


if TYPE_CHECKING:
    Routed = wrapt.FunctionWrapper[Any, Any]
else:  # not subscriptable at run time, where the API reference reads the annotation
    Routed = wrapt.FunctionWrapper


class Dispatcher:
    """Routes calls between the two versions of a :class:`~dualrun.VersionPair`.

    The policy decides per request (sticky inside a ``dualrun.context``) or per call outside
    any context; a pin in the context wins over the policy. ``dispatcher.policy = ...`` swaps
    the policy atomically while calls are in flight; requests already routed keep their version.

    ``versions``: the :class:`~dualrun.VersionPair` that :func:`dualrun.load` returns.
    ``policy``: which version serves (:class:`~dualrun.Fixed`, :class:`~dualrun.Canary`, or any
    object with ``choose(request)``); ``Fixed("old")`` by default. ``shadow``: a
    :class:`~dualrun.Shadow` to run the other version beside the primary and compare, or None.
    ``log``: where events go: a path (JSON lines), an :class:`~dualrun.EventLog`, a structlog
    logger, or None. ``migrate``: ``{("old", "new"): to_new, ("new", "old"): to_old}`` hooks that
    convert a value made by one version before the other uses it. ``results_as``: ``"old"`` to
    pass every result new serves through ``migrate[("new", "old")]``, so callers get the type
    they expect. ``require_context``: make a routed call outside any ``dualrun.context`` a
    :class:`~dualrun.ContextRequiredError` (they are counted in the report otherwise).
    ``record``: a :class:`~dualrun.Recording` (or a path) that records calls for replay.
    ``control``: the fleet's shared routing state (:class:`~dualrun.SQLiteControl`,
    :class:`~dualrun.OpenFeatureControl`), or None.
    """

    def __init__(
        self,
        versions: VersionPair,
        policy: Policy | None = None,
        shadow: Shadow | None = None,
        log: str | os.PathLike[str] | EventLog | Any = None,
        migrate: Mapping[tuple[str, str], Callable[[Any], Any]] | None = None,
        results_as: Label | None = None,
        require_context: bool = False,
        record: Recording | str | os.PathLike[str] | None = None,
        control: Control | None = None,
    ) -> None:
        if not isinstance(versions, VersionPair):
            raise ValueError(
                f"versions is the VersionPair that dualrun.load() returns, got {versions!r}"
            )
        if control is not None and not callable(getattr(control, "attach", None)):
            raise ValueError(
                "control is a dualrun.SQLiteControl(path) or dualrun.OpenFeatureControl(client, "
                f"flag_key), or None; got {control!r}"
            )
        self.versions = versions
        self.migrations = check_migrations(migrate)
        self.results_as = check_results_as(results_as, self.migrations)
        if not isinstance(require_context, bool):
            raise ValueError(f"require_context is True or False, got {require_context!r}")
        self._require_context = require_context
        self._lifecycle = threading.RLock()  # promote, rollback, swap, kill: one at a time
        self._retired_label: Label | None = None  # the label whose version was retired
        self._promoted = False  # promote() committed to new (until rollback or the kill switch)
        self._pins_wanted = True  # False after a rollback that overrides pins
        # Read by the routed call: pins wanted, and no version stands in for the other.
        self._pins_honored = True
        # The label whose calls the other version serves (kill switch, retirement) -> that one.
        self._stand_in: dict[Label, Label] = {}
        self._retiring: list[Retirement] = []
        self.retired: list[RetirementRecord] = []
        self.history: list[dict[str, Any]] = []  # earlier candidates: source and report
        self._killed: str | None = None
        self._saved_shadow: Shadow | None = None  # while the kill switch is on
        self._parked_shadow: Shadow | None = None  # while one version is retired
        self._routes: dict[str, Route] = {}
        self._interceptions: list[Interception] = []
        self._stoppers: list[Callable[[float | None], None]] = []  # running rollouts
        self._first_call = True  # the first routed call checks for interceptions still pending
        self.policy_errors = new_counter()
        self.last_policy_error: str | None = None
        self._epoch = object()  # decisions cached in a request are valid for one epoch
        self._fixed: Label | None = None
        self.journal: Journal | None = None  # before the policy: setting one logs an event
        self._policy: Policy = Fixed("old")
        self.policy = Fixed("old") if policy is None else policy
        self.recorder = Recorder()
        self._shadow: ShadowRunner | None = None
        self.shadow = shadow
        if log is not None:
            self.journal = Journal(self, log if isinstance(log, EventLog) else EventLog(log))
        at_exit(self._at_exit)
        # Sampled calls recorded for replay (see dualrun.recording), with the log's identity.
        self._tap: Tap | None = None
        if record is not None:
            self._tap = make_tap(
                record,
                None if self.journal is None else self.journal.log,
                {v.label: v.source for v in versions},
            )
        if os.environ.get(KILL_SWITCH_VARIABLE, "").strip() not in ("", "0"):
            self.kill(f"{KILL_SWITCH_VARIABLE} is set")
        # The control's agent reads the fleet's state on a thread of its own and applies it.
        self.control: Attached | None = None if control is None else control.attach(self)
        forks.register(self)

    def after_fork_in_child(self) -> None:
        """The child of a ``fork()`` (gunicorn ``--preload``, multiprocessing) counts and
        reports its own calls only; its lock may have been held by a thread of the parent."""
        self._lifecycle = threading.RLock()
        for route in self._routes.values():
            route.renew_counters()
        self.policy_errors = new_counter()
        if self._shadow is not None:
            self._shadow.after_fork_in_child()
        if self.journal is not None:
            self.journal.after_fork_in_child()
        if self.control is not None:
            self.control.after_fork_in_child()

    # -- policy ----------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        """The policy that decides which version serves; assign to swap it atomically."""
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        policy = check_policy(policy)
        # Both fields are read without a lock on the hot path: set the fast path off first.
        self._fixed = None
        self._policy = policy
        # With require_context, no fast path: calls without a context reach _decide, which refuses.
        fast = type(policy) is Fixed and not self._require_context
        self._fixed = policy.label if fast and isinstance(policy, Fixed) else None
        self._event("dualrun.policy")

    def _event(self, name: str, **fields: Any) -> None:
        if self.journal is not None:
            self.journal.event(name, **fields)

    @property
    def shadow(self) -> Shadow | None:
        """The shadow configuration in force (None when nothing is shadowed); assign to change."""
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
        """Wait for queued background shadow runs (and recorded calls to be written); False if
        ``timeout`` ran out first."""
        timeout = checks.wait_seconds(timeout, "flush's timeout")
        done = True if self._shadow is None else self._shadow.flush(timeout)
        return (True if self._tap is None else self._tap.flush(timeout)) and done

    @property
    def recording(self) -> Tap | None:
        """The recording of sampled calls (``record=``), with its ``stats()``; or None."""
        return self._tap

    # -- lifecycle -------------------------------------------------------------------------

    def promote(self, retire: bool = False, drain_timeout: float | None = 30.0) -> None:
        """Commit to the new version: every call goes to it at once, requests already routed
        to old included. Shadowing stops (parked until the next candidate or a rollback).

        The old version stays loaded, so :meth:`rollback` can bring it back at once, until the
        next :meth:`swap_candidate` or an explicit :meth:`retire` unloads it (as Erlang keeps
        exactly one old version). ``retire=True`` unloads it now, once its in-flight calls have
        finished (or after ``drain_timeout`` seconds, reported as forced)."""
        drain_timeout = checks.wait_seconds(drain_timeout, "drain_timeout")
        with self._lifecycle:
            self._refuse_when_killed("promote")
            if self._retired_label == "new":
                source = self.versions.new.source
                raise RuntimeError(
                    f"the new version ({source}) was retired by rollback(retire=True): there is "
                    "nothing to promote. Load a candidate with swap_candidate(SOURCE), then "
                    "promote()"
                )
            self._set_pins(True)
            self._switch(Fixed("new"))
            self._promoted = True
            if self._retired_label is None:
                self._stop_shadowing()
                if retire:
                    self._retire("old", drain_timeout)
            self._event("dualrun.promote", retire=retire)

    def rollback(
        self, retire: bool = False, drain_timeout: float | None = 30.0, honor_pins: bool = False
    ) -> None:
        """Every call goes to the old version at once: requests already routed, and requests
        pinned to new too (a rolled-back version is not safe to serve) unless ``honor_pins``.
        Pins count again after :meth:`promote`, :meth:`swap_candidate` or
        ``dispatcher.pins_honored = True``. With ``retire=True`` new is unloaded once its
        in-flight calls finish, or after ``drain_timeout`` seconds.

        The new version stays loaded and is shadowed (as configured), so its divergences stay
        visible and :meth:`promote` stays possible; with ``retire=True`` it is unloaded once its
        in-flight calls have finished, and shadowing stops.
        """
        drain_timeout = checks.wait_seconds(drain_timeout, "drain_timeout")
        with self._lifecycle:
            if self._retired_label == "old":
                source = self.versions.old.source
                raise RuntimeError(
                    f"the old version ({source}) was retired: there is nothing to roll back to. "
                    f"To serve it again, load it as the candidate with "
                    f"swap_candidate({source!r}) and promote() it"
                )
            self._set_pins(bool(honor_pins))
            self._switch(Fixed("old"))
            self._promoted = False
            if self._retired_label is None and self._killed is None:
                self._resume_shadowing()
            if retire and self._retired_label is None:
                self._stop_shadowing()
                self._retire("new", drain_timeout)
            self._event("dualrun.rollback", retire=retire, honor_pins=self._pins_wanted)

    def retire(self, label: str | None = None, drain_timeout: float | None = 30.0) -> None:
        """Unload the version that no longer serves: old after :meth:`promote`, new after
        :meth:`rollback` (or name it with ``label``: ``"old"``/``"new"``). It goes once its
        in-flight calls have finished, or after ``drain_timeout`` seconds (forced); calls
        routed to it meanwhile go to the other version. Afterwards only :meth:`swap_candidate` loads
        another version to compare with."""
        drain_timeout = checks.wait_seconds(drain_timeout, "drain_timeout")
        with self._lifecycle:
            if label is None:
                if type(self._policy) is not Fixed:
                    raise ValueError(
                        f"both versions may serve under {self._policy!r}: promote() or "
                        "rollback() first, or name the version: retire('old') or retire('new')"
                    )
                label = other(self._policy.label)
            checked = check_label(label, "retire's label")
            if self._retired_label is not None:
                raise RuntimeError(
                    f"the {self._retired_label!r} version is already retired; at most one is"
                )
            serving = self._policy.label if type(self._policy) is Fixed else None
            if serving == checked or (self._killed is not None and checked == "old"):
                raise RuntimeError(
                    f"the {checked!r} version serves every call now: promote() or rollback() "
                    "to the other one first"
                )
            self._stop_shadowing()
            self._retire(checked, drain_timeout)

    @property
    def pins_honored(self) -> bool:
        """Whether a ``dualrun.context(pin=...)`` chooses the version (False after a
        :meth:`rollback` that overrode pins)."""
        return self._pins_wanted

    @pins_honored.setter
    def pins_honored(self, value: bool) -> None:
        self._set_pins(bool(value))
        self._epoch = object()

    def swap_candidate(self, source: str, drain_timeout: float | None = 30.0) -> None:
        """Load ``source`` as the new candidate while traffic flows; the version it replaces
        drains for at most ``drain_timeout`` seconds.

        If the load fails, or a routed target is missing in the candidate, the current versions
        keep serving untouched and the error is raised (and logged). Otherwise calls routed to
        new go to the candidate at once, and the previous candidate is unloaded once its
        in-flight calls have finished. After :meth:`promote` (with or without ``retire``), the
        promoted version becomes the old one, the policy ``Fixed("old")``, and a previous old
        version that is still loaded drains and is unloaded. Statistics restart;
        :attr:`history` keeps each earlier candidate's report.
        """
        drain_timeout = checks.wait_seconds(drain_timeout, "drain_timeout")
        with self._lifecycle:
            self._refuse_when_killed("swap_candidate")
            self.wait_retired(drain_timeout, force=True)  # at most two versions are loaded
            # After promote() (retiring old or not) the promoted version is the baseline.
            promoted = self._retired_label == "old" or (
                self._retired_label is None and self._promoted
            )
            keep = self.versions.new if promoted else self.versions.old
            current = self.versions.new
            try:
                candidate = load_version("new", current.name, source, current.tops[1:])
            except Exception as exc:
                self._event(
                    "dualrun.error",
                    where="swap_candidate",
                    source=str(source),
                    error=describe(exc),
                )
                raise
            try:
                found = {
                    name: route.check(candidate, "the version it replaces")
                    for name, route in self._routes.items()
                }
            except Exception as exc:
                candidate.unload()
                self._event(
                    "dualrun.error",
                    where="swap_candidate",
                    source=str(source),
                    error=describe(exc),
                )
                if isinstance(exc, TargetNotFoundError | VersionLoadError):
                    raise  # a VersionLoadError names the candidate's module that failed
                # Importing a routed module of the candidate failed: a load failure too.
                raise VersionLoadError(
                    "new",
                    candidate.source,
                    f"executing the version's code raised {type(exc).__name__}: {exc}",
                ) from exc
            previous: dict[str, str] = {v.label: v.source for v in self.versions}
            self.history.append({"candidate": current.source, "report": self.report().to_dict()})
            if promoted:
                if self._retired_label is None:  # promote(retire=False): old is still loaded
                    self._retire("old", drain_timeout, switch=False)
                keep.label = "old"  # the promoted version is the baseline now
                for route in self._routes.values():
                    route.bind("old", route.found["new"], keep.owned_prefixes)
                self._switch(Fixed("old"))
            elif self._retired_label is None:
                self._retire("new", drain_timeout, switch=False)
            for name, route in self._routes.items():
                route.bind("new", found[name], candidate.owned_prefixes)
            self.versions = VersionPair(keep, candidate)
            self._retired_label = None
            self._promoted = False
            self._set_pins(True)
            self._epoch = object()
            self._restart_statistics(previous)
            self._event("dualrun.swap", previous=current.source, candidate=candidate.source)

    def kill(self, reason: str = "kill() called") -> None:
        """The kill switch: every call runs the old version from now on, whatever the policy or
        pins say, and shadowing stops, until :meth:`revive`; ``reason`` is logged and shown.
        Also set by the environment variable ``DUALRUN_KILL_SWITCH=1`` when the dispatcher is
        made."""
        with self._lifecycle:
            if self._killed is not None:
                return
            self._killed = reason
            self._switch(Fixed("old"))
            self._promoted = False
            self._saved_shadow = self.shadow
            self.shadow = None
            if self._retired_label is None:
                for route in self._routes.values():
                    route.alias("new", "old")
            self._set_pins(self._pins_wanted)
            self._event("dualrun.kill", reason=reason)

    def revive(self) -> None:
        """Turn the kill switch off: the new version can serve again (the policy stays
        ``Fixed("old")`` until you set another) and shadowing resumes."""
        with self._lifecycle:
            if self._killed is None:
                return
            self._killed = None
            if self._retired_label is None:
                for route in self._routes.values():
                    route.unalias("new")
            self._set_pins(self._pins_wanted)
            self.shadow = self._saved_shadow
            self._event("dualrun.revive")

    @property
    def killed(self) -> str | None:
        """Why the kill switch is on, or None."""
        return self._killed

    def wait_retired(self, timeout: float | None = None, force: bool = False) -> bool:
        """Wait until retired versions are unloaded; with ``force``, unload them after
        ``timeout`` whatever still runs. False if one is still loaded."""
        timeout = checks.wait_seconds(timeout, "wait_retired's timeout")
        pending = list(self._retiring)
        for retirement in pending:
            if not retirement.wait(timeout) and force:
                retirement.force()
        return all(r.wait(0) for r in pending)

    @property
    def live_versions(self) -> VersionPair:
        """The versions that serve: after a retirement, the remaining one under both labels."""
        if self._retired_label is None:
            return self.versions
        live = self.versions[other(self._retired_label)]
        return VersionPair(live, live)

    def _refuse_when_killed(self, what: str) -> None:
        if self._killed is not None:
            raise RuntimeError(f"{what}: the kill switch is on ({self._killed}); revive() first")

    def _set_pins(self, wanted: bool) -> None:
        """Whether pins choose the version, and which version stands in for which: while one
        serves the other's calls (the kill switch, a retirement), a pin or a policy's choice of
        the other is decided as the one that serves, so a request's recorded decision (the web
        middleware's ``X-Dualrun-Served-By``) names the version that really runs."""
        self._pins_wanted = wanted
        if self._retired_label is not None:
            self._stand_in = {self._retired_label: other(self._retired_label)}
        else:
            self._stand_in = {} if self._killed is None else {"new": "old"}
        self._pins_honored = wanted and not self._stand_in

    def _switch(self, policy: Policy) -> None:
        self.policy = policy
        self._epoch = object()

    def _stop_shadowing(self) -> None:
        """Nothing left to compare with: park the shadow until the next candidate."""
        self._parked_shadow = self.shadow or self._saved_shadow or self._parked_shadow
        self.shadow = None
        self._saved_shadow = None

    def _resume_shadowing(self) -> None:
        """Both versions are loaded again (a rollback after a promotion): shadow as before."""
        if self._shadow is None and self._parked_shadow is not None:
            self.shadow, self._parked_shadow = self._parked_shadow, None

    def _retire(self, label: Label, timeout: float | None, switch: bool = True) -> None:
        """Unload ``label``'s version once its calls have finished; with ``switch``, calls
        routed to ``label`` meanwhile go to the other version."""
        version = self.versions[label]
        counters = [c for route in self._routes.values() for c in route.counters(label)]
        if switch:
            for route in self._routes.values():
                route.alias(label, other(label))
            self._retired_label = label
            self._set_pins(self._pins_wanted)
        self._retiring.append(Retirement(version, counters, timeout, self._retired))

    def _retired(self, record: RetirementRecord) -> None:
        self.retired.append(record)
        # In place (atomic under the GIL): the lifecycle may be appending a new retirement.
        for retirement in [r for r in self._retiring if r.record is record]:
            with contextlib.suppress(ValueError):
                self._retiring.remove(retirement)
        self._event("dualrun.retire", **asdict(record))

    def _restart_statistics(self, previous: dict[str, str] | None = None) -> None:
        """A new candidate: fresh statistics, and shadowing as configured (learnt anew);
        ``previous``: the sources of the versions whose statistics end here."""
        config = self.shadow or self._parked_shadow
        self._parked_shadow = None
        if config is not None:
            self.shadow = config  # a fresh runner: noise is learnt anew
        for route in self._routes.values():
            route.restart_counts()
        if self.journal is not None:
            self.journal.restart(previous)
        else:
            self.recorder.reset()

    # -- the decision (hot path) -----------------------------------------------------------

    def _decide(self, request: RequestContext | None) -> Label:
        if request is None:
            if self._require_context:
                raise ContextRequiredError(
                    "a routed call ran outside any dualrun.context, and this dispatcher was made "
                    "with require_context=True: run each request inside "
                    "`with dualrun.context(key=...)` (the web middleware does it), or leave "
                    "require_context off to let such calls be decided one by one"
                )
            return self._fixed or self._choose(EMPTY)
        if request.pin is not None and (self._pins_honored or in_shadow_run()):
            return request.pin  # a shadow run's own pin keeps it in its version, always
        label: Label | None = request.decisions.get(self._epoch)
        if label is None:
            label = self._choose(request)
            label = request.decisions.setdefault(self._epoch, self._stand_in.get(label, label))
        return label

    def _choose(self, request: RequestContext) -> Label:
        try:
            label = self._policy.choose(request)
        except Exception as exc:  # a broken policy must not break the caller
            return self._policy_failed(describe(exc))
        if label == "old" or label == "new":
            return label
        return self._policy_failed(f"choose() returned {label!r}, not 'old' or 'new'")

    def _policy_failed(self, why: str) -> Label:
        next(self.policy_errors)
        error = f"{self._policy!r}: {why}"  # the policy's message may quote the request key
        shadow = self.shadow
        if shadow is not None and shadow.redact is not None:
            error = safely(shadow.redact, "error", error)
        self.last_policy_error = error
        return "old"

    def _first_routed_call(self) -> None:
        """Once, off the hot path: warn of interceptions whose host module is still not
        imported, so their callers are not routed (a typo, or a module imported too late)."""
        self._first_call = False
        pending = [h.host_target for h in self._interceptions if h.pending]
        if pending:
            warnings.warn(
                f"the first routed call ran while these interceptions are still pending (their "
                f"host module is not imported, so their callers are not routed): "
                f"{', '.join(pending)}",
                DualrunWarning,
                stacklevel=4,
            )

    # -- routes ----------------------------------------------------------------------------

    def _route_for(self, target: str) -> Route:
        if not isinstance(target, str):
            parse_target(target)  # raises the ValueError that says what a target is
        route = self._routes.get(target)
        if route is None:
            with self._lifecycle:
                route = self._routes.get(target)
                if route is None:
                    route = Route(self, target)
                    if self._retired_label is not None:
                        route.alias(self._retired_label, other(self._retired_label))
                    elif self._killed is not None:
                        route.alias("new", "old")
                    self._routes[target] = route
        return route

    def route(self, target: str) -> Routed:
        """A callable that routes each call of ``target`` (``"pkg.mod:Qual.name"``).

        It is a wrapt ``FunctionWrapper`` around the old version's target, so its signature,
        name and docstring look like the target's. The target must exist in both versions.
        It is meant to be called, not set as a class attribute: a plain function is wrapped
        without wrapt's per-call binding check (see ``UnboundFunctionWrapper``).
        """
        route = self._route_for(target)
        return function_wrapper(route.found["old"].value, route.wrapper())

    def intercept(self, target: str, version_target: str | None = None) -> Interception:
        """Route the calls the host makes into ``target`` (``"pkg.mod:Qual.name"``); with a
        ``version_target``, ``target`` is a host function replaced by a route to it.

        One argument, ``intercept("pricing.engine:quote")``: the host's installed
        ``pricing.engine.quote`` is patched, and so are the names other modules bound to the
        same function (``from pricing.engine import quote``), found by scanning the globals of
        every imported module; every such caller routes to the versions' ``pricing.engine:quote``.
        References the scan cannot see (closures, default arguments, containers, class
        attributes) keep the host's function.

        Two arguments, ``intercept("myapp.checkout:quote", "pricing.engine:quote")``: the host
        function ``myapp.checkout.quote`` is replaced (its body no longer runs) by a route to the
        version target; refused with ``TypeError`` if the target cannot accept a call the host
        function accepts. The patched function reports the target's signature.

        If the host module is not imported yet, the patch is applied when it is (the handle is
        *pending* meanwhile: see :meth:`status`); a module that cannot be imported at all raises
        ``ModuleNotFoundError`` here. ``handle.undo()`` restores everything it patched.
        """
        one_argument = version_target is None
        host_target = target
        version_target = target if version_target is None else version_target
        parse_target(host_target)  # bad input fails here, before a route is made
        route = self._route_for(version_target)
        handle = install(
            host_target,
            lambda host_is_method: route.wrapper(host_is_method),
            target=route.found["old"].value,
            aliases=one_argument,
        )
        self._interceptions.append(handle)
        return handle

    def _stop_on_close(self, stop: Callable[[float | None], None]) -> None:
        """Have :meth:`close` call ``stop(timeout)`` (a rollout's thread ends with it)."""
        self._stoppers.append(stop)

    @property
    def routes(self) -> dict[str, Route]:
        """The routes made so far (by :meth:`route` and :meth:`intercept`), by target."""
        return dict(self._routes)

    def in_flight(self, label: Label) -> int:
        """Calls now running in version ``label``, over all routes."""
        return sum(route.in_flight(label) for route in self._routes.values())

    def close(self, timeout: float | None = 5.0) -> None:
        """Undo every interception, finish queued shadow runs (up to ``timeout``), stop."""
        timeout = checks.wait_seconds(timeout, "close's timeout")
        if self.control is not None:  # first: its last report finds the dispatcher whole
            self.control.close(timeout)
        stoppers, self._stoppers = self._stoppers, []
        for stop in stoppers:  # no rollout evaluates a gate on a closed dispatcher
            stop(timeout)
        for handle in reversed(self._interceptions):
            handle.undo()
        self._interceptions.clear()
        runner, self._shadow = self._shadow, None  # calls after close are served, not shadowed
        if runner is not None:
            runner.close(timeout, abandon=True)
        if self._tap is not None:
            self._tap.close(timeout)
        if self.journal is not None:
            self.journal.close(timeout)

    def _at_exit(self) -> None:
        """At interpreter exit (before the logs close): queued background shadows run for up
        to :data:`EXIT_FLUSH_SECONDS`, those left are counted as dropped, a last summary."""
        runner, self._shadow = self._shadow, None
        if runner is not None:
            runner.close(EXIT_FLUSH_SECONDS, abandon=True)
        if self.journal is not None:
            self.journal.summarize()
        if self.control is not None:  # the last evidence, and the fleet stops waiting for us
            self.control.close(EXIT_FLUSH_SECONDS)

    def status(self) -> Status:
        """Where the dispatcher stands now: which version serves, which are loaded, the policy,
        whether pins count, in-flight calls, pending retirements and interceptions. See
        :class:`dualrun.Status`; ``status().line()`` is the one-line form."""
        with self._lifecycle:
            policy = self._policy
            if self._killed is not None:
                serving: list[Label] = ["old"]
            elif type(policy) is Fixed:
                serving = [policy.label]
            elif type(policy) is Canary and policy.percent in (0, 100):
                serving = ["new" if policy.percent == 100 else "old"]
            else:
                serving = ["old", "new"]
            if self._retired_label is not None:
                serving = [other(self._retired_label)]
            retiring = {id(r.version) for r in self._retiring}
            versions = tuple(
                LoadedVersion(v.label, v.source, v.prefix, v.loaded, id(v) in retiring)
                for v in self.versions
            )
            return Status(
                serving=tuple(serving),
                versions=versions,
                policy=repr(policy),
                pins_honored=self._pins_wanted,
                shadow=None if self._shadow is None else repr(self._shadow.config),
                killed=self._killed,
                promoted=self._promoted,
                in_flight={label: self.in_flight(label) for label in ("old", "new")},
                pending_retirements=tuple(r.version.source for r in self._retiring),
                pending_interceptions=tuple(
                    h.host_target for h in self._interceptions if h.pending
                ),
                failed_interceptions=tuple(
                    f"{h.host_target}: {h.error}" for h in self._interceptions if h.failed
                ),
            )

    def report(self) -> Report:
        """What the dispatcher saw so far, per route: see :class:`dualrun.Report`."""
        aggregates = self.recorder.snapshot()
        routes = self.routes
        reports = []
        for name in sorted(set(routes) | set(aggregates)):
            route = routes.get(name)
            report = route_report(
                name,
                {label: 0 if route is None else route.calls(label) for label in ("old", "new")},
                0 if route is None else peek(route.crossings),
                aggregates.get(name),
                outside_context=0 if route is None else route.outside_calls(),
                results_converted=0 if route is None else peek(route.results_converted),
            )
            if route is not None:
                report.in_flight = {label: route.in_flight(label) for label in ("old", "new")}
            report.sources = {v.label: v.source for v in self.versions}
            reports.append(report)
        return Report(
            policy=repr(self.policy),
            routes=reports,
            policy_errors=self.policy_error_count(),
            last_policy_error=self.last_policy_error,
            dropped_events=0 if self.journal is None else self.journal.log.dropped_count(),
            pending_interceptions=[h.host_target for h in self._interceptions if h.pending],
        )

    def policy_error_count(self) -> int:
        """Calls served by old because the policy raised or answered something else."""
        return peek(self.policy_errors)
