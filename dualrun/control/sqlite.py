"""The embedded control store for one host: a SQLite database in WAL mode (standard library).

Readers never wait for writers in WAL mode, so the background readers of many processes poll it
cheaply. Every write is one ``BEGIN IMMEDIATE`` transaction: a state change reads the current
state and writes the next one with ``version + 1`` under the write lock, so concurrent writers
never lose an update; a writer that finds the database busy waits (``busy_timeout``) and tries
again, so ``database is locked`` never reaches the caller while the store is usable. Each
operation opens its own connection: nothing is shared between threads, and nothing is carried
across ``fork()`` (SQLite forbids using a connection in a forked child).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dualrun import checks, forks
from dualrun.control.state import ControlState, from_dict

if TYPE_CHECKING:
    from dualrun.control.agent import Agent
    from dualrun.dispatcher import Dispatcher

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, data TEXT NOT NULL,
    changed REAL NOT NULL, what TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER PRIMARY KEY, data TEXT NOT NULL, changed REAL NOT NULL, what TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS processes (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL,
    heartbeat REAL NOT NULL, applied INTEGER, applied_at REAL, serving TEXT,
    error TEXT, error_since REAL);
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY AUTOINCREMENT, process TEXT NOT NULL, generation INTEGER NOT NULL,
    state_version INTEGER NOT NULL, time REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS evidence_by_generation ON evidence (generation, state_version);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL, fence INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rollouts (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT NOT NULL, time REAL NOT NULL,
    data TEXT NOT NULL);
"""


class _ForkGate:
    """No ``fork()`` while one of our threads is inside SQLite: SQLite's own mutexes, held by a
    thread that does not exist in the child, would hang the child's first SQLite call. The
    before-fork hook waits for running operations (each bounded by the busy timeout) and holds
    new ones back until the fork is done."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._forking = False

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()
        self._forking = True
        while self._active:
            self._cond.wait()

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        self.__init__()  # type: ignore[misc]


_gate = _ForkGate()
os.register_at_fork(before=_gate.before_fork, after_in_parent=_gate.after_fork_in_parent)
forks.register(_gate, first=True)  # renewed before an agent restarts its thread in the child
HISTORY = 1000  # state changes kept
EVIDENCE_SECONDS = 24 * 3600.0  # evidence rows kept
RETRY_SECONDS = 30.0  # a writer gives up on a busy database after this long


@dataclass(frozen=True)
class ProcessStatus:
    """One process of the fleet as it last reported itself."""

    id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    applied: int | None  # the state version it applied last
    applied_at: float | None
    serving: str | None  # what it routes by, in words
    error: str | None  # why it could not apply the state (a candidate that failed to load...)
    error_since: float | None
    live: bool
    behind_since: float | None = None  # when the first change it has not applied was made

    def line(self, now: float, version: int, changed: float) -> str:
        where = f"pid {self.pid} on {self.host}"
        if not self.live:
            return f"{where}: silent for {now - self.heartbeat:.0f} s (counted as gone)"
        if self.applied is not None and self.applied >= version:
            text = f"{where}: applied v{self.applied} ({self.serving})"
        else:
            shown = "nothing yet" if self.applied is None else f"v{self.applied}"
            since = changed if self.behind_since is None else self.behind_since
            text = f"{where}: NOT applied, at {shown}, behind for {now - since:.1f} s"
        if self.error is not None:
            text += f"; error since {now - (self.error_since or now):.0f} s: {self.error}"
        return text


@dataclass(frozen=True)
class FleetStatus:
    """The state, and which live processes have applied it."""

    state: ControlState
    changed: float  # when the state got its version
    what: str  # what changed it
    processes: tuple[ProcessStatus, ...] = field(default=())
    rollout: dict[str, Any] | None = None

    @property
    def live(self) -> list[ProcessStatus]:
        return [p for p in self.processes if p.live]

    @property
    def pending(self) -> list[ProcessStatus]:
        """Live processes that have not applied the current version yet."""
        return [p for p in self.live if p.applied is None or p.applied < self.state.version]

    @property
    def failed(self) -> list[ProcessStatus]:
        """Live processes that applied it with an error (kept serving as they were)."""
        return [p for p in self.live if p.error is not None and p not in self.pending]

    @property
    def acknowledged(self) -> bool:
        """Every live process has applied the current version."""
        return not self.pending

    def to_text(self) -> str:
        now = time.time()
        state = self.state
        lines = [
            f"state v{state.version}: {state.describe()}",
            f"changed {now - self.changed:.1f} s ago by: {self.what}",
        ]
        live = self.live
        if self.acknowledged:
            lines.append(f"acknowledged by all {len(live)} live processes")
        else:
            lines.append(
                f"acknowledged by {len(live) - len(self.pending)} of {len(live)} live processes"
            )
        lines += [
            "  " + p.line(now, state.version, self.changed)
            for p in sorted(self.processes, key=lambda p: (p.host, p.pid))
        ]
        if self.rollout is not None:
            r = self.rollout
            lines.append(
                f"rollout {r.get('name')}: {r.get('state')} at step {r.get('percent', 0):g}% "
                f"of {r.get('steps')}" + (f" ({r['reason']})" if r.get("reason") else "")
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.to_dict(),
            "changed": self.changed,
            "what": self.what,
            "acknowledged": self.acknowledged,
            "processes": [p.__dict__ for p in self.processes],
            "rollout": self.rollout,
        }


class SQLiteControl:
    """A fleet's routing state in a SQLite database at ``path`` (created if missing).

    ``poll_interval``: seconds between a process's reads of the state (the bound on how stale
    it can be). ``heartbeat_interval``: seconds between a process's reports (heartbeat and its
    evidence). ``live_after``: a process silent for longer is counted as gone. ``busy_timeout``:
    how long a writer waits for the write lock before trying again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 0.5,
        heartbeat_interval: float = 2.0,
        live_after: float = 10.0,
        busy_timeout: float = 5.0,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ValueError(f"path is the control database's file path, got {path!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"path is a file path, but {str(self.path)!r} is a directory")
        self.poll_interval = checks.seconds(poll_interval, "poll_interval")
        self.heartbeat_interval = checks.seconds(heartbeat_interval, "heartbeat_interval")
        self.live_after = checks.seconds(live_after, "live_after")
        if self.live_after <= self.heartbeat_interval:
            raise ValueError(
                f"live_after ({live_after}) must be longer than heartbeat_interval "
                f"({heartbeat_interval}): a live process would count as gone between reports"
            )
        self.busy_timeout = checks.seconds(busy_timeout, "busy_timeout")
        self._ready = False
        self.writes = 0  # transactions committed through this object (the store's write load)

    def __repr__(self) -> str:
        return f"SQLiteControl({str(self.path)!r})"

    # -- connections and transactions -------------------------------------------------------

    def _connect(self, create: bool = False) -> sqlite3.Connection:
        mode = "rwc" if create else "rw"  # a store that vanished is an error, not a new store
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode={mode}"
        return sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None)

    def ensure(self) -> None:
        """Create the database and its tables if they are missing (idempotent)."""
        if self._ready:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def wal() -> None:
            with _gate.use():
                db = self._connect(create=True)
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                finally:
                    db.close()

        def create(db: sqlite3.Connection) -> None:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO state VALUES (1, 0, ?, ?, 'created')",
                (ControlState().to_json(), time.time()),
            )

        self._retrying(wal)
        self._write(create, create_file=True)
        self._ready = True

    def _retrying(self, work: Callable[[], T]) -> T:
        """``work()``, tried again while the database is busy (up to ``RETRY_SECONDS``)."""
        deadline = time.monotonic() + max(RETRY_SECONDS, 4 * self.busy_timeout)
        while True:
            try:
                return work()
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(random.uniform(0.005, 0.05))

    def _write(self, work: Callable[[sqlite3.Connection], T], create_file: bool = False) -> T:
        """Run ``work`` in one write transaction, tried again while the database is busy."""

        def attempt() -> T:
            with _gate.use():
                db = self._connect(create=create_file)
                try:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        result = work(db)
                        db.execute("COMMIT")
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                finally:
                    db.close()
            self.writes += 1
            return result

        return self._retrying(attempt)

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with _gate.use():
            db = self._connect()
            try:
                return work(db)
            finally:
                db.close()

    # -- the state --------------------------------------------------------------------------

    def read_state(self) -> ControlState:
        """The current state (raises ``sqlite3.Error`` or ``ValueError`` if it cannot be read)."""
        row = self._read(
            lambda db: db.execute("SELECT version, data FROM state WHERE id = 1").fetchone()
        )
        if row is None:
            raise ValueError(f"{self.path} has no control state row")
        return from_dict({**json.loads(row[1]), "version": int(row[0])})

    def change(
        self, what: str, update: Callable[[ControlState], ControlState] | None = None, **fields: Any
    ) -> ControlState:
        """Write the next state: ``fields`` (or ``update(current)``) applied to the current one,
        with ``version + 1``, in one transaction. ``what`` says who changed what, for status."""
        self.ensure()

        def work(db: sqlite3.Connection) -> ControlState:
            return self._change_in(db, what, update, fields)

        return self._write(work)

    def _change_in(
        self,
        db: sqlite3.Connection,
        what: str,
        update: Callable[[ControlState], ControlState] | None,
        fields: dict[str, Any],
    ) -> ControlState:
        """The body of :meth:`change`, for a caller that holds a transaction (the rollout)."""
        version, data = db.execute("SELECT version, data FROM state WHERE id = 1").fetchone()
        current = from_dict({**json.loads(data), "version": int(version)})
        following = current.with_changes(**fields) if update is None else update(current)
        following = following.with_changes(version=current.version + 1)
        now = time.time()
        db.execute(
            "UPDATE state SET version = ?, data = ?, changed = ?, what = ? WHERE id = 1",
            (following.version, following.to_json(), now, what),
        )
        db.execute(
            "INSERT INTO changes VALUES (?, ?, ?, ?)",
            (following.version, following.to_json(), now, what),
        )
        db.execute("DELETE FROM changes WHERE version <= ?", (following.version - HISTORY,))
        return following

    # The operator's verbs (the CLI's subcommands).

    def promote(self) -> ControlState:
        """Every process serves new."""
        return self.change("promote", mode="promoted")

    def rollback(self) -> ControlState:
        """Every process serves old, pinned requests included (pins are ignored from now on)."""
        return self.change("rollback", mode="rolled back", pins=False)

    def kill(self, reason: str = "kill switch set through the control store") -> ControlState:
        """The kill switch in every process: old serves, whatever else says; ``reason`` is
        shown and logged."""
        return self.change(f"kill: {reason}", killed=reason)

    def revive(self) -> ControlState:
        """Turn the fleet's kill switch off."""
        return self.change("revive", killed=None)

    def set_percent(self, percent: float, salt: str | None = None) -> ControlState:
        """A canary at ``percent`` (the salt stays unless given: keys keep their bucket)."""
        checks.percent(percent, "percent")
        fields: dict[str, Any] = {"mode": "canary", "percent": float(percent)}
        if salt is not None:
            fields["salt"] = salt
        return self.change(f"percent {percent:g}", **fields)

    def set_fixed(self, label: str) -> ControlState:
        """Every process serves the version ``label`` (``"old"`` or ``"new"``)."""
        return self.change(f"fixed {label}", mode="fixed", label=label)

    def pause(self) -> ControlState:
        """Pause the fleet's rollout where it stands."""
        return self.change("pause", paused=True)

    def resume(self) -> ControlState:
        """Resume a paused rollout."""
        return self.change("resume", paused=False)

    def set_pins(self, honoured: bool) -> ControlState:
        """Whether pinned requests choose their version (``honoured``) in every process."""
        return self.change("pins " + ("on" if honoured else "off"), pins=bool(honoured))

    def swap(self, source: str) -> ControlState:
        """Every process loads ``source`` as its new candidate; routing restarts at old."""
        if not isinstance(source, str) or not source:
            raise ValueError(f"source is a version source (a path, wheel, git:REV), got {source!r}")
        return self.change(
            f"swap {source}",
            lambda s: s.with_changes(
                candidate=source, generation=s.generation + 1, mode="fixed", label="old"
            ),
        )

    # -- processes ---------------------------------------------------------------------------

    def report(
        self,
        process: dict[str, Any],
        evidence: Iterable[tuple[int, int, dict[str, Any]]] = (),
        prune: bool = False,
    ) -> None:
        """A ``process``'s heartbeat (what it applied) and its ``evidence`` since its last
        report, as ``(generation, state_version, routes)`` rows, in one transaction; ``prune``
        also removes reports of processes gone for long."""
        now = time.time()

        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO processes VALUES "
                "(:id, :host, :pid, :started, :now, :applied, :applied_at, :serving, :error, "
                ":error_since) ON CONFLICT(id) DO UPDATE SET heartbeat = :now, "
                "applied = :applied, applied_at = :applied_at, serving = :serving, "
                "error = :error, error_since = :error_since",
                {**process, "now": now},
            )
            for generation, state_version, routes in evidence:
                db.execute(
                    "INSERT INTO evidence (process, generation, state_version, time, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (process["id"], generation, state_version, now, json.dumps(routes)),
                )
            if prune:
                db.execute("DELETE FROM evidence WHERE time < ?", (now - EVIDENCE_SECONDS,))
                db.execute("DELETE FROM processes WHERE heartbeat < ?", (now - 3600.0,))

        self._write(work)

    def forget(self, process_id: str) -> None:
        """The process ``process_id``, which stopped cleanly, leaves the fleet (it is not waited
        for)."""
        self._write(lambda db: db.execute("DELETE FROM processes WHERE id = ?", (process_id,)))

    def status(self) -> FleetStatus:
        """The state, every process's report, and the rollout's progress if one runs."""

        def work(
            db: sqlite3.Connection,
        ) -> tuple[Any, list[Any], Any, dict[int, float]]:
            return (
                db.execute(
                    "SELECT version, data, changed, what FROM state WHERE id = 1"
                ).fetchone(),
                db.execute("SELECT * FROM processes").fetchall(),
                db.execute("SELECT data FROM rollouts ORDER BY rowid DESC LIMIT 1").fetchone(),
                dict(db.execute("SELECT version, changed FROM changes").fetchall()),
            )

        state_row, rows, rollout, changes = self._read(work)
        if state_row is None:
            raise ValueError(f"{self.path} has no control state row")
        state = from_dict({**json.loads(state_row[1]), "version": int(state_row[0])})
        now = time.time()
        processes = tuple(
            ProcessStatus(
                *(
                    *row,
                    now - row[4] <= self.live_after,
                    changes.get(0 if row[5] is None else row[5] + 1),
                )
            )
            for row in rows
        )
        return FleetStatus(
            state,
            float(state_row[2]),
            str(state_row[3]),
            processes,
            None if rollout is None else json.loads(rollout[0]),
        )

    def wait(self, timeout: float = 30.0, version: int | None = None) -> FleetStatus:
        """Wait up to ``timeout`` seconds until every live process has applied ``version``
        (default: the current one); returns the last status (check ``.acknowledged``)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            target = status.state.version if version is None else version
            done = all(p.applied is not None and p.applied >= target for p in status.live)
            if done or time.monotonic() >= deadline:
                return status
            time.sleep(0.05)

    # -- evidence ----------------------------------------------------------------------------

    def evidence_rows(
        self, generation: int, since_version: int = 0
    ) -> list[tuple[str, dict[str, Any]]]:
        """``(process, routes)`` of every report of ``generation`` made at ``since_version`` or
        later (observations made before a process applied that version are not in them)."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT process, data FROM evidence WHERE generation = ? AND state_version >= ? "
                "ORDER BY id",
                (generation, since_version),
            ).fetchall()
        )
        return [(str(process), json.loads(data)) for process, data in rows]

    def evidence(self, generation: int | None = None, since_version: int = 0) -> list[Any]:
        """The fleet's merged evidence, as route reports for :meth:`dualrun.Gate.evaluate`:
        every process's reports for the candidate ``generation`` (default: the current one)
        made at state ``since_version`` or later."""
        from dualrun.control.evidence import merge

        if generation is None:
            generation = self.read_state().generation
        return merge(routes for _, routes in self.evidence_rows(generation, since_version))

    # -- the processes' side -----------------------------------------------------------------

    def attach(self, dispatcher: Dispatcher) -> Agent:
        """Called by ``Dispatcher(..., control=this)``: start the background agent of this
        process's ``dispatcher``."""
        from dualrun.control.agent import Agent

        return Agent(dispatcher, self, store=self)
