"""Progressive delivery: step the canary up while the gate passes, roll back when it fails.

As in Flagger and Argo Rollouts: each step sets the canary percent (monotone, so keys already
on new stay there), gathers comparisons for at least ``interval`` seconds, and asks the gate
about the comparisons made during that step only. ``promote`` moves to the next step (after the
last, the dispatcher promotes), ``hold`` waits another interval, ``rollback`` rolls the
dispatcher back at once. The user may pause, resume, promote or abort at any time; the kill
switch aborts.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from dualrun import checks
from dualrun.compare import describe
from dualrun.dispatcher import Dispatcher
from dualrun.gate import Decision, Gate
from dualrun.policy import Canary
from dualrun.recorder import RouteAggregate
from dualrun.report import route_report

State = Literal["ready", "running", "paused", "promoted", "rolled back", "aborted"]
FINAL: tuple[State, ...] = ("promoted", "rolled back", "aborted")
HISTORY = 100


@dataclass(frozen=True)
class StepRecord:
    """One gate evaluation during the rollout."""

    step: int
    percent: float
    verdict: str
    comparisons: int
    reasons: tuple[str, ...]
    summary: str
    time: float


@dataclass(frozen=True)
class RolloutStatus:
    """Where the rollout stands: its ``state``, the ``step`` (an index into ``steps``) and its
    ``percent``, the ``decisions`` taken so far, and the ``reason`` it ended, once it has."""

    state: State
    step: int  # index into steps
    percent: float
    steps: tuple[float, ...]
    decisions: tuple[StepRecord, ...] = field(default=())
    reason: str | None = None  # why it ended, when it has

    @property
    def last(self) -> StepRecord | None:
        """The latest decision, if any."""
        return self.decisions[-1] if self.decisions else None

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON-ready data."""
        return asdict(self)

    def line(self) -> str:
        """One line of progress, for a terminal."""
        bar = " ".join(
            f"[{p:g}%]" if i == self.step else f"{p:g}%" for i, p in enumerate(self.steps)
        )
        last = self.last
        detail = "" if last is None else f"  {last.summary}"
        return f"rollout {self.state:<11} {bar}{detail}"


def _check_steps(steps: Sequence[float]) -> tuple[float, ...]:
    try:
        values = tuple(steps)
    except TypeError:
        raise ValueError(
            f"steps is a list of percents such as [1, 5, 25, 100], got {steps!r}"
        ) from None
    if not values:
        raise ValueError("steps is a non-empty list of percents such as [1, 5, 25, 100]")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"each step is a percent from 0 (excluded) to 100, got {value!r}")
        if not 0 < value <= 100:
            raise ValueError(f"each step is a percent from 0 (excluded) to 100, got {value!r}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"steps must rise strictly (a ramp only moves keys to new), got {values}")
    return tuple(float(v) for v in values)


class Rollout:
    """Steps a dispatcher's canary through ``steps`` under a :class:`~dualrun.Gate`.

    ``interval``: seconds between gate evaluations (at least one per step). ``on_change``:
    called with the new :class:`RolloutStatus` after every evaluation and state change.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        steps: Sequence[float] = (1, 5, 25, 50, 100),
        gate: Gate | None = None,
        interval: float = 60.0,
        on_change: Callable[[RolloutStatus], None] | None = None,
    ) -> None:
        if not isinstance(dispatcher, Dispatcher):
            raise ValueError(f"dispatcher is a dualrun.Dispatcher, got {dispatcher!r}")
        if dispatcher.shadow is None:
            raise ValueError(
                "a rollout decides from comparisons: give the dispatcher a shadow, e.g. "
                "Dispatcher(..., shadow=dualrun.Shadow(primary='any'))"
            )
        self.steps = _check_steps(steps)
        if gate is not None and not isinstance(gate, Gate):
            raise ValueError(f"gate is a dualrun.Gate(...) or None, got {gate!r}")
        self.gate = gate or Gate()
        self.interval = checks.seconds(interval, "interval")
        if on_change is not None and not callable(on_change):
            raise ValueError(f"on_change is a callable taking the status, got {on_change!r}")
        self._on_change = on_change
        self.callback_error: str | None = None  # the last failure of on_change, if any
        self._dispatcher = dispatcher
        policy = dispatcher.policy
        self._canary = policy if isinstance(policy, Canary) else Canary(0)
        self._policy: Canary | None = None  # the policy this rollout set last
        self._candidate = dispatcher.versions.new  # a swap ends the rollout
        self._lock = threading.RLock()
        self._status = RolloutStatus("ready", 0, self.steps[0], self.steps)
        self._baseline: dict[str, RouteAggregate] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    # -- control -----------------------------------------------------------------------------

    def start(self) -> Rollout:
        """Begin at the first step and advance on a thread of its own; returns ``self``."""
        with self._lock:
            self._begin()
            self._thread = threading.Thread(target=self._loop, name="dualrun-rollout", daemon=True)
            self._thread.start()
            self._dispatcher._stop_on_close(self.stop)
        return self

    def run(self, timeout: float | None = None) -> RolloutStatus:
        """Like :meth:`start`, but wait until the rollout ends (or ``timeout`` runs out)."""
        checks.wait_seconds(timeout, "run's timeout")
        self.start()
        self.wait(timeout)
        return self.status()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the rollout has ended; False if ``timeout`` ran out first."""
        return self._done.wait(checks.wait_seconds(timeout, "wait's timeout"))

    def stop(self, timeout: float | None = 5.0) -> None:
        """End the rollout where it stands, leaving the policy as it is (the dispatcher is
        closing): its thread evaluates no gate after this returns (or after ``timeout``)."""
        with self._lock:
            if self._status.state not in FINAL:
                self._finish("aborted", "stopped: the dispatcher was closed")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def pause(self) -> None:
        """Stop advancing (traffic stays at the current step) until :meth:`resume`."""
        with self._lock:
            if self._status.state == "running":
                self._set(state="paused")

    def resume(self) -> None:
        """Resume a paused rollout: evaluations start again at the next interval."""
        with self._lock:
            if self._status.state == "paused":
                self._set(state="running")
                self._wake.set()

    def promote(self) -> None:
        """Skip the remaining steps: promote the new version now."""
        with self._lock:
            if self._status.state not in FINAL:
                self._dispatcher.promote()
                self._finish("promoted", "promoted by the user")

    def abort(self) -> None:
        """Stop the rollout and roll the dispatcher back."""
        with self._lock:
            if self._status.state not in FINAL:
                self._dispatcher.rollback()
                self._finish("aborted", "aborted by the user")

    def status(self) -> RolloutStatus:
        """Where the rollout stands now; ``status().line()`` is the one-line form."""
        return self._status

    # -- the steps ---------------------------------------------------------------------------

    def _begin(self) -> None:
        if self._status.state != "ready":
            raise RuntimeError(f"this rollout has already started (it is {self._status.state})")
        self._set(state="running")
        self._enter(0)

    def _enter(self, step: int) -> None:
        percent = self.steps[step]
        self._policy = self._canary.with_percent(percent)
        self._dispatcher.policy = self._policy
        self._baseline = self._dispatcher.recorder.snapshot()
        self._set(step=step, percent=percent)

    def _loop(self) -> None:
        while not self._done.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.tick()
            except BaseException as exc:  # a fault in the gate or the rollout: back to safety
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        """Roll back and end; the thread ends too, even if the rollback itself fails."""
        with self._lock:
            reason = f"dualrun error: {describe(exc)}"
            try:
                self._dispatcher.rollback()
            except BaseException as again:
                reason += f"; rolling back failed too: {describe(again)}"
            finally:
                self._finish("aborted", reason)

    def tick(self) -> Decision | None:
        """Evaluate the gate once and act on it (the thread calls this every interval)."""
        with self._lock:
            if self._status.state != "running":
                return None
            d = self._dispatcher
            if d.killed is not None:
                self._finish("aborted", f"kill switch: {d.killed}")
                return None
            if d.versions.new is not self._candidate:
                self._finish("aborted", "the candidate was swapped: its evidence starts anew")
                return None
            if d.policy is not self._policy:
                # Someone else decided (d.rollback(), d.promote(), a new policy): do not undo it.
                self._finish(
                    "aborted", f"the dispatcher's policy was changed to {d.policy!r} meanwhile"
                )
                return None
            decision = self.gate.evaluate(self._evidence())
            record = StepRecord(
                self._status.step,
                self._status.percent,
                decision.verdict,
                decision.comparisons,
                tuple(decision.reasons),
                decision.summary(),
                time.time(),
            )
            self._set(decisions=(*self._status.decisions, record)[-HISTORY:])
            d._event("dualrun.gate", step=record.step, percent=record.percent, **decision.to_dict())
            if decision.verdict == "rollback":
                d.rollback()
                self._finish("rolled back", f"step {record.percent:g}%: {decision}")
            elif decision.verdict == "promote":
                if self._status.step + 1 < len(self.steps):
                    self._enter(self._status.step + 1)
                else:
                    d.promote()
                    self._finish("promoted", f"all steps passed: {decision}")
            return decision

    def _evidence(self) -> list[Any]:
        current = self._dispatcher.recorder.snapshot()
        return [
            route_report(name, {"old": 0, "new": 0}, 0, aggregate.since(self._baseline.get(name)))
            for name, aggregate in sorted(current.items())
        ]

    def _set(self, **changes: Any) -> None:
        self._status = replace(self._status, **changes)
        if self._on_change is not None:
            try:
                self._on_change(self._status)
            except Exception as exc:  # a broken progress callback must not stop the rollout
                self.callback_error = describe(exc)

    def _finish(self, state: State, reason: str) -> None:
        try:
            self._set(state=state, reason=reason)
        finally:
            self._done.set()
            self._wake.set()
