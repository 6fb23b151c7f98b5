"""Record sampled production calls of routes, to replay them later through both versions.

``Dispatcher(..., record=dualrun.Recording("calls-{pid}.jsonl", sample=1))`` writes, for a
sample of the calls of each (chosen) route, the arguments and the serving version's result or
exception, as JSON lines with typed extensions (:mod:`dualrun.typedjson`: reading a recording
never runs code from it). In the calling thread a sampled call is encoded and redacted (a
snapshot: the caller may change its objects afterwards); rendering and writing happen on a
writer thread behind a bounded queue, as for the event log: a full queue drops the call and
counts it. Files rotate at ``max_bytes`` keeping ``backups`` older files (``backups=0``: stop
recording at the cap). Every line carries the process identity of the event log (``run``,
``pid``, ``host``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualrun import checks, forks
from dualrun.compare import describe, type_name
from dualrun.counters import new_counter, peek
from dualrun.eventlog import SCHEMA, EventLog, _LineFile, at_exit
from dualrun.typedjson import Redactor, decode, encode, error_from
from dualrun.workers import WorkerPool

REDACTED = "<redacted>"
# Field and key names whose values are never written: any path component containing one.
SECRET_FIELDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "cookie",
    "session",
    "card",
    "cvv",
    "iban",
    "ssn",
)
_COMPONENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Serve = Callable[[], Any]
_HOST = socket.gethostname()
_random = random.random


def _names(value: object, what: str) -> tuple[str, ...]:
    """A string or an iterable of strings, as a tuple; ValueError for anything else."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        names = tuple(value)
        if all(isinstance(name, str) for name in names):
            return names
    raise ValueError(f"{what} is a string or a list of strings, got {value!r}")


class Recording:
    """Where and how to record calls: see the module's description.

    ``path``: a file; ``{pid}`` in it is replaced by the process id (one file per process).
    ``sample``: percent of calls. ``routes``: globs of targets to record (default all).
    ``secret_fields``: names whose values are replaced by ``"<redacted>"`` wherever they appear
    as a dict key or field name (substring, any case). ``redact(path, value) -> value`` is then
    called for every leaf (``path`` such as ``$args[0].email``, ``$key``, ``$error``).
    ``max_bytes``: size at which a file rotates; ``backups``: older files kept (0: stop
    recording when full). ``queue_size``: records waiting for the writer thread (beyond it they
    are dropped and counted).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sample: float = 100.0,
        routes: Iterable[str] | None = None,
        redact: Redactor | None = None,
        secret_fields: Iterable[str] = SECRET_FIELDS,
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 2,
        queue_size: int = 1000,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"Recording path is a file path, got {path!r}")
        self.path = str(path)
        if Path(self.path.replace("{pid}", "0")).is_dir():
            raise ValueError(f"Recording path is a file path, but {self.path!r} is a directory")
        self.sample = checks.percent(sample, "Recording sample")
        self.routes = None if routes is None else _names(routes, "Recording routes")
        if redact is not None and not callable(redact):
            raise ValueError(f"redact is a callable (path, value) -> value, got {redact!r}")
        self.redact = redact
        fields = _names(secret_fields, "Recording secret_fields")
        self.secret_fields = tuple(name.lower() for name in fields)
        self.max_bytes = checks.whole_number(max_bytes, "Recording max_bytes", minimum=1024)
        self.backups = checks.whole_number(backups, "Recording backups", minimum=0)
        self.queue_size = checks.whole_number(queue_size, "Recording queue_size")

    def __repr__(self) -> str:
        return f"Recording({self.path!r}, sample={self.sample:g}, routes={self.routes})"

    def redactor(self) -> Redactor:
        """Secret fields first, then the user's ``redact``."""
        secrets, user = self.secret_fields, self.redact

        def redact(path: str, value: Any) -> Any:
            if secrets:
                for component in _COMPONENT.findall(path):
                    lowered = component.lower()
                    if any(secret in lowered for secret in secrets):
                        return REDACTED
            return value if user is None else user(path, value)

        return redact


class Tap:
    """A dispatcher's recording: the sampling on the hot path and the writer behind it."""

    def __init__(self, config: Recording, log: EventLog | None, sources: dict[str, str]):
        self.config = config
        self._log = log
        self.sources = sources
        self._redact = config.redactor()
        self._wanted: dict[str, bool] = {}
        self._share = config.sample / 100  # random() < 1.0 always: 100% records every call
        self._pool = WorkerPool(1, config.queue_size, "dualrun-record")
        self._file: _LineFile | None = None
        self._renew()
        forks.register(self)
        at_exit(self._at_exit)  # queued calls are written when the process exits

    def _renew(self) -> None:
        """This process's identity (the event log's, when there is one), file and counts."""
        run = uuid.uuid4().hex[:16] if self._log is None else self._log.run
        self.identity = {"schema": SCHEMA, "run": run, "pid": os.getpid(), "host": _HOST}
        self._file = None
        self._path: Path | None = None
        self._size = 0
        self._seq = 0
        self._seq_lock = threading.Lock()
        self.recorded = new_counter()
        self.dropped = new_counter()  # queue full, file full, or not encodable
        self.last_error: str | None = None

    def after_fork_in_child(self) -> None:
        """A forked child records into its own file (``{pid}``) under its own identity; the
        parent's pending lines are the parent's to write."""
        if self._file is not None:
            self._file.forget_pending()
            with contextlib.suppress(OSError):
                self._file.close()
        self._renew()

    # -- the hot path ------------------------------------------------------------------------

    def wants(self, target: str) -> bool:
        """Whether to record this call (sampled per call): a dict lookup and a random draw."""
        wanted = self._wanted.get(target)
        if wanted is None:
            globs = self.config.routes
            wanted = globs is None or any(fnmatch.fnmatchcase(target, g) for g in globs)
            self._wanted[target] = wanted
        return wanted and _random() < self._share

    def call(
        self,
        target: str,
        label: str,
        key: object,
        serve: Serve,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Serve the call and record it (arguments snapshotted before it runs)."""
        arguments = self._arguments(args, kwargs)
        started = time.perf_counter_ns()
        try:
            value = serve()
        except BaseException as exc:
            self._submit(target, label, key, arguments, started, None, exc)
            raise
        self._submit(target, label, key, arguments, started, value, None)
        return value

    async def call_async(
        self,
        target: str,
        label: str,
        key: object,
        serve: Callable[[], Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        arguments = self._arguments(args, kwargs)
        started = time.perf_counter_ns()
        try:
            value = await serve()
        except BaseException as exc:
            self._submit(target, label, key, arguments, started, None, exc)
            raise
        self._submit(target, label, key, arguments, started, value, None)
        return value

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return {
                "args": [encode(a, self._redact, f"$args[{i}]") for i, a in enumerate(args)],
                "kwargs": {k: encode(v, self._redact, f"$kwargs.{k}") for k, v in kwargs.items()},
            }
        except Exception as exc:  # a redactor, a property that raises: not recorded
            self.last_error = f"encoding the arguments: {describe(exc)}"
            return None

    def _submit(
        self,
        target: str,
        label: str,
        key: object,
        arguments: dict[str, Any] | None,
        started: int,
        value: Any,
        error: BaseException | None,
    ) -> None:
        wall = time.perf_counter_ns() - started
        if arguments is None:
            next(self.dropped)
            return
        try:
            record: dict[str, Any] = {
                "event": "dualrun.call",
                "time": time.time(),
                "route": target,
                "version": label,
                "key": None if key is None else encode(key, self._redact, "$key"),
                **arguments,
                "wall_ns": wall,
            }
            if error is None:
                record["result"] = encode(value, self._redact, "$result")
            else:
                message = encode(_message(error), self._redact, "$error")
                record["error"] = {"type": type_name(error), "message": message}
        except Exception as exc:
            self.last_error = f"encoding the result: {describe(exc)}"
            next(self.dropped)
            return
        if not self._pool.submit(lambda: self._write(record)):
            next(self.dropped)

    # -- the writer thread -------------------------------------------------------------------

    def _write(self, record: dict[str, Any]) -> None:
        try:
            with self._seq_lock:
                self._seq += 1
                seq = self._seq
            line = json.dumps({**self.identity, "seq": seq, **record}, separators=(",", ":"))
        except Exception as exc:  # a redactor returned something JSON cannot hold
            self.last_error = f"writing a call: {describe(exc)}"
            next(self.dropped)
            return
        if not self._room(len(line) + 1):
            next(self.dropped)
            return
        assert self._file is not None
        self._file.msg(line)
        self._size += len(line) + 1
        next(self.recorded)
        if self._pool.pending() <= 1:
            self._lost(self._file.write_pending())

    def _room(self, size: int) -> bool:
        """Open, or rotate, the file so that ``size`` more bytes fit; False at the cap."""
        if self._file is None:
            self._open()
        elif self._size + size > self.config.max_bytes:
            if self.config.backups == 0:
                return False
            self._rotate()
        return True

    def _open(self) -> None:
        path = Path(self.config.path.replace("{pid}", str(os.getpid())))
        self._path = path
        self._file = _LineFile(path)
        self._size = path.stat().st_size
        header = json.dumps(
            {
                **self.identity,
                "event": "dualrun.recording",
                "time": time.time(),
                "sources": self.sources,
            },
            separators=(",", ":"),
        )
        self._file.msg(header)
        self._size += len(header) + 1

    def _rotate(self) -> None:
        assert self._file is not None and self._path is not None
        self._lost(self._file.close())
        path = self._path
        for n in range(self.config.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{n + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))
        self._open()

    def _lost(self, lines: int) -> None:
        for _ in range(lines):
            next(self.dropped)

    # -- flushing and closing ----------------------------------------------------------------

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until every queued call is written."""
        done = self._pool.join(timeout)
        if self._file is not None and self._pool.submit(self._flush_file):
            done = self._pool.join(timeout) and done
        return done

    def _flush_file(self) -> None:
        if self._file is not None:
            self._lost(self._file.write_pending())

    def _at_exit(self) -> None:
        self.flush(timeout=5.0)

    def close(self, timeout: float | None = 5.0) -> None:
        self.flush(timeout)
        self._pool.close(timeout)
        if self._file is not None:
            self._lost(self._file.close())
            self._file = None

    def stats(self) -> dict[str, Any]:
        return {
            "recorded": peek(self.recorded),
            "dropped": peek(self.dropped),
            "last_error": self.last_error,
        }


def make_tap(
    record: Recording | str | os.PathLike[str], log: EventLog | None, sources: dict[str, str]
) -> Tap:
    """The tap of a dispatcher, with the identity of its event log ``log``, if it has one."""
    if isinstance(record, str | os.PathLike):
        record = Recording(record)
    if not isinstance(record, Recording):
        raise TypeError(f"record is a dualrun.Recording(...) or a file path, got {record!r}")
    return Tap(record, log, sources)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<the message could not be made>"


# -- reading -----------------------------------------------------------------------------------


@dataclass
class RecordedCall:
    """One recorded call, decoded."""

    route: str
    version: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: Any
    value: Any = None
    error: BaseException | None = None
    origin: str = ""  # "file:line"
    wall_ns: int = 0  # how long the recorded call took
    identity: dict[str, Any] = field(default_factory=dict)


def _events(paths: Iterable[str], problem: Callable[[str], None]) -> Iterator[tuple[str, int, Any]]:
    """(file, line number, event) for every JSON line of every file; problems named."""
    for path in paths:
        if os.path.isdir(path):
            problem(f"{path}: is a directory, not a recording; skipped")
            continue
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below, whatever happens
        except OSError as exc:
            problem(f"{path}: cannot open ({exc.strerror or exc}); skipped")
            continue
        with handle:
            for number, raw in enumerate(handle, start=1):
                if raw.isspace():
                    continue
                try:
                    event = json.loads(raw)
                except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError
                    what = "truncated last line" if not raw.endswith(b"\n") else "corrupt line"
                    problem(f"{path}:{number}: {what} skipped ({exc})")
                    continue
                if not isinstance(event, dict) or event.get("schema") != SCHEMA:
                    problem(f"{path}:{number}: not a schema {SCHEMA} event; skipped")
                    continue
                yield path, number, event


def read_calls(
    paths: Iterable[str], problem: Callable[[str], None], routes: str | None = None
) -> Iterator[RecordedCall]:
    """Every readable recorded call of ``paths`` (bad lines are reported and skipped)."""
    for path, number, event in _events(paths, problem):
        if event.get("event") != "dualrun.call":
            continue
        route = event.get("route")
        if not isinstance(route, str) or (routes and not fnmatch.fnmatchcase(route, routes)):
            continue
        try:
            args = decode(event["args"])
            kwargs = decode(event["kwargs"])
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ValueError("args is not a list or kwargs not an object")
            error = None
            if "error" in event:
                error = error_from(str(event["error"]["type"]), str(event["error"]["message"]))
            yield RecordedCall(
                route=route,
                version=str(event.get("version")),
                args=tuple(args),
                kwargs={str(k): v for k, v in kwargs.items()},
                key=decode(event.get("key")),
                value=None if error is not None else decode(event.get("result")),
                error=error,
                origin=f"{path}:{number}",
                wall_ns=int(event.get("wall_ns", 0)),
                identity={k: event.get(k) for k in ("run", "pid", "host")},
            )
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            problem(f"{path}:{number}: not a readable recorded call ({exc}); skipped")
