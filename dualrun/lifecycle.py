"""Retiring a version: wait until its in-flight calls reach zero, then unload it.

As in Erlang's soft purge and livepatch's transition: new calls are switched away from the
version at once (by the caller, before retiring it); the calls already running in it finish
there; the version is unloaded when none is left, or when the timeout runs out (a forced
retirement, which is reported: a call still running may then fail on a lazy import).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dualrun.counters import Counter, peek
from dualrun.loading import Version

POLL_SECONDS = 0.005
GRACE_SECONDS = 0.01  # a call that read its slot just before the switch counts itself in by now


@dataclass
class RetirementRecord:
    """What happened when a version was retired."""

    label: str
    source: str
    namespace: str
    started: float
    finished: float | None = None
    forced: bool = False
    in_flight_at_unload: int = 0


class Retirement:
    """A version on its way out; the unloading happens on a thread of its own."""

    def __init__(
        self,
        version: Version,
        counters: Sequence[tuple[Counter, Counter]],
        timeout: float | None,
        done: Callable[[RetirementRecord], None],
    ) -> None:
        self.version = version
        self.record = RetirementRecord(
            version.label, version.source, version.prefix, started=time.time()
        )
        self._counters = list(counters)
        self._timeout = timeout
        self._done = done
        self._finished = threading.Event()  # set once unloaded and reported to ``done``
        self._unloaded = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="dualrun-retire", daemon=True)
        self._thread.start()

    def in_flight(self) -> int:
        return sum(peek(entered) - peek(left) for entered, left in self._counters)

    def _run(self) -> None:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        time.sleep(GRACE_SECONDS)
        quiet = 0
        while quiet < 2 and not self._unloaded:  # zero twice in a row: nobody was between
            # reading a slot and counting itself in; a force() meanwhile ends the wait
            quiet = quiet + 1 if self.in_flight() <= 0 else 0
            if quiet < 2 and not self._unloaded:
                if deadline is not None and time.monotonic() >= deadline:
                    self.record.forced = True
                    break
                time.sleep(POLL_SECONDS)
        self.finish()

    def finish(self) -> None:
        """Unload now (called by the thread, or by :meth:`force`)."""
        with self._lock:
            if self._unloaded:
                return
            self._unloaded = True
            self.record.in_flight_at_unload = max(0, self.in_flight())
            self.version.unload()
            self.record.finished = time.time()
        try:
            self._done(self.record)  # before waiters wake: they find the record reported
        finally:
            self._finished.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the unload; False if ``timeout`` ran out first."""
        return self._finished.wait(timeout)

    def force(self) -> None:
        """Unload now, whatever is still running (reported as forced)."""
        with self._lock:
            if self._unloaded:
                return
            self.record.forced = True
        self.finish()
