"""One rollout controller for the whole fleet, chosen by a lease in the control store.

Any number of processes may run a :class:`FleetRollout` (``dualrun rollout`` as a process of its
own, or one inside each app process): the one holding the lease drives, the others stand by.
The driver renews the lease on every tick; if it dies, the lease expires and a standby takes
over within ``lease_seconds`` plus one tick, continuing from the step recorded in the store.
Every write of the driver (the next step's percent together with the rollout's own record) is
one transaction that first checks the lease is still its own, so two drivers never both write,
and a step is never half taken. Each step's decision is stored with its evidence (how many
processes reported, how many comparisons) as Flagger and Argo Rollouts record their analysis.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from dualrun import checks
from dualrun.control.evidence import merge
from dualrun.control.sqlite import SQLiteControl
from dualrun.gate import Gate
from dualrun.rollout import _check_steps

FINAL = ("promoted", "rolled back", "aborted")
logger = logging.getLogger("dualrun.control")


class LeaseLost(RuntimeError):
    """Another controller holds the lease now: this one must not write."""


class FleetRollout:
    """Steps the fleet's canary through ``steps`` under ``gate``, from the merged evidence of
    every process. ``control``: the fleet's :class:`~dualrun.SQLiteControl`. ``interval``:
    seconds of evidence per evaluation. ``name``: the rollout's name in the store.
    ``lease_seconds``: how long a driver's lease lasts; one driver steps the fleet at a time and
    a standby takes over when the lease runs out. ``on_decision``: called with each decision
    record (a dict), e.g. to print it."""

    def __init__(
        self,
        control: SQLiteControl,
        steps: Sequence[float] = (1, 5, 25, 50, 100),
        gate: Gate | None = None,
        interval: float = 60.0,
        *,
        name: str = "rollout",
        lease_seconds: float = 10.0,
        on_decision: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not isinstance(control, SQLiteControl):
            raise ValueError(f"control is a dualrun.SQLiteControl(path), got {control!r}")
        self.control = control
        self.steps = _check_steps(steps)
        if gate is not None and not isinstance(gate, Gate):
            raise ValueError(f"gate is a dualrun.Gate(...) or None, got {gate!r}")
        self.gate = gate or Gate()
        self.interval = checks.seconds(interval, "interval")
        self.lease_seconds = checks.seconds(lease_seconds, "lease_seconds")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name is a non-empty string, got {name!r}")
        self.name = name
        if on_decision is not None and not callable(on_decision):
            raise ValueError(f"on_decision is a callable taking a dict, got {on_decision!r}")
        self.on_decision = on_decision
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tick_seconds = min(self.interval, self.lease_seconds / 3)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------------

    def run(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Drive (or stand by) until the rollout ends or ``timeout``; its last record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            try:
                if self.tick():
                    break
            except (sqlite3.Error, ValueError) as exc:  # the store is down: hold, try again
                logger.warning("dualrun rollout: %s", exc)
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._stop.wait(self.tick_seconds)
        return self.record()

    def start(self) -> FleetRollout:
        """:meth:`run` on a daemon thread (one per app process is fine: one drives)."""
        self._thread = threading.Thread(target=self.run, name="dualrun-fleet-rollout", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop taking part, waiting up to ``timeout`` seconds for the thread (a driver's lease
        then expires and a standby takes over)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def record(self) -> dict[str, Any] | None:
        """The rollout's progress as stored (``None`` before it began)."""
        row = self.control._read(
            lambda db: db.execute(
                "SELECT data FROM rollouts WHERE name = ?", (self.name,)
            ).fetchone()
        )
        return None if row is None else dict(json.loads(row[0]))

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision taken so far, oldest first, with its evidence."""
        rows = self.control._read(
            lambda db: db.execute(
                "SELECT data FROM decisions WHERE rollout = ? ORDER BY id", (self.name,)
            ).fetchall()
        )
        return [dict(json.loads(data)) for (data,) in rows]

    # -- one tick ----------------------------------------------------------------------------

    def tick(self) -> bool:
        """Take or renew the lease and, if held, act; True once the rollout has ended."""
        if not self._acquire():
            record = self.record()
            return record is not None and record["state"] in FINAL
        try:
            return self._drive()
        except LeaseLost:
            return False

    def _acquire(self) -> bool:
        self.control.ensure()
        now = time.time()

        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT holder, expires, fence FROM leases WHERE name = ?", (self.name,)
            ).fetchone()
            if row is not None and row[0] != self.holder and row[1] > now:
                return False
            fence = 0 if row is None else int(row[2]) + (row[0] != self.holder)
            db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
                (self.name, self.holder, now + self.lease_seconds, fence),
            )
            return True

        return self.control._write(work)

    def _fenced(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """``work`` in a transaction that first checks the lease is still ours."""

        def fenced(db: sqlite3.Connection) -> Any:
            row = db.execute(
                "SELECT holder, expires FROM leases WHERE name = ?", (self.name,)
            ).fetchone()
            if row is None or row[0] != self.holder or row[1] <= time.time():
                raise LeaseLost(f"the lease of rollout {self.name!r} is held by another")
            return work(db)

        return self.control._write(fenced)

    def _save(self, db: sqlite3.Connection, record: dict[str, Any]) -> None:
        record = {**record, "holder": self.holder, "updated": time.time()}
        db.execute("INSERT OR REPLACE INTO rollouts VALUES (?, ?)", (self.name, json.dumps(record)))

    def _drive(self) -> bool:
        stored = self.record()
        if stored is None:
            self._begin()
            return False
        record: dict[str, Any] = stored
        if record["state"] in FINAL:
            return True
        state = self.control.read_state()
        why = None
        if state.killed is not None:
            why = f"kill switch: {state.killed}"
        elif state.generation != record["generation"]:
            why = "the candidate was swapped: its evidence starts anew"
        elif state.mode != "canary" or state.percent != record["percent"]:
            why = f"the routing was changed by hand meanwhile ({state.describe()})"
        if why is not None:  # someone else decided: do not undo it
            self._fenced(lambda db: self._save(db, {**record, "state": "aborted", "reason": why}))
            return True
        if state.paused:
            if record["state"] != "paused":
                self._fenced(lambda db: self._save(db, {**record, "state": "paused"}))
            return False
        if record["state"] == "paused":
            record = {**record, "state": "running", "evaluated": time.time()}
            self._fenced(lambda db: self._save(db, record))
        if time.time() - record["evaluated"] < self.interval:
            return False
        return self._evaluate(record)

    def _begin(self) -> None:
        percent = self.steps[0]

        def work(db: sqlite3.Connection) -> None:
            following = self.control._change_in(
                db,
                f"rollout {self.name}: step {percent:g}%",
                None,
                {"mode": "canary", "percent": percent, "paused": False},
            )
            now = time.time()
            self._save(
                db,
                {
                    "name": self.name,
                    "state": "running",
                    "steps": list(self.steps),
                    "step": 0,
                    "percent": percent,
                    "step_version": following.version,
                    "started": now,
                    "step_started": now,
                    "evaluated": now,
                    "generation": following.generation,
                    "reason": None,
                },
            )

        self._fenced(work)

    def _evaluate(self, record: dict[str, Any]) -> bool:
        rows = self.control.evidence_rows(record["generation"], record["step_version"])
        decision = self.gate.evaluate(merge(routes for _, routes in rows))
        live = len(self.control.status().live)
        entry = {
            "rollout": self.name,
            "step": record["step"],
            "percent": record["percent"],
            "verdict": decision.verdict,
            "comparisons": decision.comparisons,
            "processes": len({process for process, _ in rows}),
            "live_processes": live,
            "reports": len(rows),
            "summary": decision.summary(),
            "reasons": decision.reasons,
            "time": time.time(),
            "holder": self.holder,
        }
        step = record["step"]
        change: dict[str, Any] | None = None
        ended: str | None = None
        if decision.verdict == "rollback":
            change, ended = {"mode": "rolled back", "pins": False}, "rolled back"
        elif decision.verdict == "promote" and step + 1 == len(self.steps):
            change, ended = {"mode": "promoted"}, "promoted"
        elif decision.verdict == "promote":
            change = {"mode": "canary", "percent": self.steps[step + 1]}

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO decisions (rollout, time, data) VALUES (?, ?, ?)",
                (self.name, entry["time"], json.dumps(entry)),
            )
            updated = {**record, "evaluated": entry["time"], "last": entry["summary"]}
            if change is not None:
                what = f"rollout {self.name}: {decision.verdict} at step {record['percent']:g}%"
                following = self.control._change_in(db, what, None, change)
                if ended is None:
                    updated.update(
                        step=step + 1,
                        percent=self.steps[step + 1],
                        step_version=following.version,
                        step_started=entry["time"],
                    )
            if ended is not None:
                updated.update(state=ended, reason=f"step {record['percent']:g}%: {decision}")
            self._save(db, updated)

        self._fenced(work)
        logger.info(
            "dualrun rollout %s: step %g%%: %s", self.name, record["percent"], entry["summary"]
        )
        if self.on_decision is not None:
            self.on_decision(entry)
        return ended is not None
