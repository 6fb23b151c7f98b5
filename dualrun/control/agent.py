"""The background agent: one thread per controlled dispatcher that reads the fleet's state,
applies it, and reports back.

The routed call never waits for it: the agent changes the dispatcher through its lifecycle
methods (``policy = ...``, ``promote``, ``rollback``, ``kill``, ``swap_candidate``), which swap
attributes the hot path reads. A state that cannot be read (a missing or corrupt store, a flag
provider in error) leaves the last good one in force; the first error of a streak is reported
once (the event log and the ``dualrun.control`` logger), and so is the recovery.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from dualrun.compare import describe
from dualrun.control.evidence import DeltaTaker
from dualrun.control.state import ControlState
from dualrun.policy import Canary, Fixed, Policy

if TYPE_CHECKING:
    from dualrun.dispatcher import Dispatcher

KILL_SWITCH_VARIABLE = "DUALRUN_KILL_SWITCH"
PRUNE_EVERY = 30  # reports between two prunings of old evidence
logger = logging.getLogger("dualrun.control")


class StateSource(Protocol):
    """Where the state comes from (a SQLite store, an OpenFeature flag)."""

    poll_interval: float

    def read_state(self) -> ControlState: ...


class FleetStore(Protocol):
    """Where processes report what they applied and publish their evidence."""

    heartbeat_interval: float

    def ensure(self) -> None: ...

    def report(self, process: dict[str, Any], evidence: Any = (), prune: bool = False) -> None: ...

    def forget(self, process_id: str) -> None: ...


def _same_policy(a: Policy, b: Policy) -> bool:
    if type(a) is Fixed and type(b) is Fixed:
        return a.label == b.label
    if type(a) is Canary and type(b) is Canary:
        return a.percent == b.percent and a.salt == b.salt and a.key is b.key
    return False


class Agent:
    """Keeps one dispatcher in line with the fleet's state; see the module docstring."""

    def __init__(
        self, dispatcher: Dispatcher, source: StateSource, store: FleetStore | None = None
    ) -> None:
        self._dispatcher = dispatcher
        self.source = source
        self.store = store
        self.errors = 0  # reads that failed (the last good state stayed in force)
        self.error: str | None = None  # the current streak's first error, if any
        self.apply_error: str | None = None  # why the last state could not be applied fully
        self._apply_error_since: float | None = None
        self._stop = threading.Event()
        self.on_close: list[Callable[[], None]] = []  # e.g. remove a provider's event handler
        self._renew()
        if store is not None:
            self._quietly(store.ensure)
        self.poll()  # the state is in force before the dispatcher serves its first call
        self.publish()  # and the process is known to the fleet
        self._thread.start()

    def _renew(self) -> None:
        """A process identity, a thread and a delta baseline of our own (also after fork)."""
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started = time.time()
        self.applied: ControlState | None = None
        self.applied_at: float | None = None
        self._applied_key: tuple[str, bool] | None = None
        self._generation_seen: int | None = None
        self._deltas = DeltaTaker(self._dispatcher)
        self._pending: list[tuple[int, int, dict[str, Any]]] = []
        self._reports = 0
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one apply at a time (the thread, or a direct poll())
        self._thread = threading.Thread(target=self._run, name="dualrun-control", daemon=True)

    def after_fork_in_child(self) -> None:
        """A forked child is a process of the fleet of its own: it reports under its own id,
        from its own thread, with its own evidence (the state its parent applied stays in force
        until the thread has read it again)."""
        applied, key, generation = self.applied, self._applied_key, self._generation_seen
        self._stop = threading.Event()
        self._renew()
        self.applied, self._applied_key, self._generation_seen = applied, key, generation
        self.applied_at = time.time()
        self._thread.start()  # it reports this process at once: no I/O in the fork hook

    def wake(self) -> None:
        """Read the state now (a provider said it changed)."""
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        last_report = 0.0 if self._reports == 0 else time.monotonic()
        while not self._stop.is_set():
            try:
                changed = self.poll()
                store = self.store
                if store is not None and (
                    changed or time.monotonic() - last_report >= store.heartbeat_interval
                ):
                    last_report = time.monotonic()
                    self.publish()
            except Exception as exc:  # never let the thread die: the fleet would lose us
                self._read_failed(describe(exc))
            self._wake.wait(self.source.poll_interval)
            self._wake.clear()

    def poll(self) -> bool:
        """Read the state and apply it if it changed; True if it did."""
        with self._lock:
            try:
                state = self.source.read_state()
            except Exception as exc:
                self._read_failed(describe(exc))
                return False
            if self.error is not None:
                self._event("recovered", after=self.error, errors=self.errors)
                logger.info("dualrun control: the state can be read again (%s)", self.source)
                self.error = None
            killed = os.environ.get(KILL_SWITCH_VARIABLE, "").strip() not in ("", "0")
            key = (state.to_json(), killed)
            if key == self._applied_key:
                return False
            self._take_evidence()  # what was observed under the previous state is tagged so
            try:
                self._apply(state, killed)
            except Exception as exc:  # the agent outlives anything a dispatcher raises
                self.apply_error = f"applying v{state.version}: {describe(exc)}"
                self._apply_error_since = self._apply_error_since or time.time()
            self._applied_key = key
            self.applied, self.applied_at = state, time.time()
            return True

    def _read_failed(self, why: str) -> None:
        self.errors += 1
        if self.error is None:
            self.error = why
            self._event(
                "error", error=why, keeping=None if self.applied is None else self.applied.version
            )
            logger.warning(
                "dualrun control: cannot read the state from %s (%s); the last good state "
                "stays in force until it can",
                self.source,
                why,
            )

    def _event(self, what: str, **fields: Any) -> None:
        with contextlib.suppress(Exception):
            self._dispatcher._event("dualrun.control", what=what, process=self.id, **fields)

    def _quietly(self, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except Exception as exc:
            self._read_failed(describe(exc))

    # -- applying ----------------------------------------------------------------------------

    def _apply(self, state: ControlState, env_killed: bool) -> None:
        d = self._dispatcher
        problems: list[str] = []
        reason = state.killed or (f"{KILL_SWITCH_VARIABLE} is set" if env_killed else None)
        if reason is not None and d.killed is None:
            d.kill(f"control: {reason}")
        elif (
            reason is None
            and d.killed is not None
            and (d.killed.startswith("control: ") or d.killed.startswith(KILL_SWITCH_VARIABLE))
        ):
            d.revive()
        if d.killed is None:
            if state.candidate is not None and state.generation != self._generation_seen:
                first = self._generation_seen is None
                self._generation_seen = state.generation
                if not (first and d.versions.new.source == state.candidate):
                    try:
                        d.swap_candidate(state.candidate, drain_timeout=5.0)
                    except Exception as exc:  # keep serving what we have, and say why
                        problems.append(f"swap to {state.candidate}: {describe(exc)}")
            policy = state.policy()
            if state.mode == "promoted":
                if not d._promoted:
                    try:
                        d.promote(retire=False)
                    except Exception as exc:
                        problems.append(f"promote: {describe(exc)}")
            elif state.mode == "rolled back":
                if d._promoted or not _same_policy(d.policy, policy):
                    try:
                        d.rollback()
                    except Exception as exc:  # nothing to roll back to (retired): say so
                        problems.append(f"rollback: {describe(exc)}")
            elif not _same_policy(d.policy, policy) or d._promoted:
                d.policy = policy
                d._promoted = False
        d.pins_honored = state.pins  # after promote/rollback, which set it their own way
        self.apply_error = "; ".join(problems) or None
        if self.apply_error is None:
            self._apply_error_since = None
        elif self._apply_error_since is None:
            self._apply_error_since = time.time()
            self._event("apply failed", version=state.version, error=self.apply_error)
            logger.warning("dualrun control: state v%s: %s", state.version, self.apply_error)
        self._event("applied", version=state.version, state=state.describe())

    # -- reporting ---------------------------------------------------------------------------

    def _take_evidence(self) -> None:
        if self.store is None:
            return
        try:
            routes = self._deltas.take()
        except Exception as exc:  # the evidence must not stop the state from being applied
            self._event("error", error=f"evidence: {describe(exc)}")
            return
        if routes:
            applied = self.applied
            version = 0 if applied is None else applied.version
            generation = 0 if applied is None else applied.generation
            self._pending.append((generation, version, routes))
            del self._pending[:-100]  # a store down for long: keep the newest only

    def describe_process(self) -> dict[str, Any]:
        d = self._dispatcher
        serving = repr(d.policy) if d.killed is None else f"killed: {d.killed}"
        if d.killed is None and not d.pins_honored:
            serving += ", pins ignored"
        return {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "applied": None if self.applied is None else self.applied.version,
            "applied_at": self.applied_at,
            "serving": serving,
            "error": self.apply_error,
            "error_since": self._apply_error_since,
        }

    def publish(self) -> None:
        """Heartbeat and evidence to the store (dropped quietly while the store is down)."""
        store = self.store
        if store is None:
            return
        with self._lock:
            self._take_evidence()
            pending, self._pending = self._pending, []
            self._reports += 1
            prune = self._reports % PRUNE_EVERY == 0
            info = self.describe_process()
        try:
            store.report(info, pending, prune)
        except Exception as exc:
            with self._lock:
                self._pending[:0] = pending
                del self._pending[:-100]
            self._read_failed(describe(exc))

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the thread, publish the last evidence, and leave the fleet (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        for undo in self.on_close:
            with contextlib.suppress(Exception):
                undo()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.store is not None:
            self.publish()
            with contextlib.suppress(Exception):
                self.store.forget(self.id)
