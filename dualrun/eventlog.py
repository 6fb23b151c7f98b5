"""The event log: JSON lines through structlog, written by a thread of its own.

Events are queued without blocking the routed call and rendered and written on the writer
thread. Each write is whole lines in one ``os.write`` on a file opened for appending, so a
process killed mid-run leaves at most one partial line at the end, which ``dualrun report``
reports and skips. If the queue is full an event is dropped and counted; the count goes out in
the next summary. Rotation is left to the log pipeline (``logrotate`` with ``copytruncate``
works, as the file is opened with ``O_APPEND``): several processes append to one file, and a
rotation done by each of them would race.

Event kinds (each with ``"schema": 1``, ``"run"`` — one per dispatcher —, ``pid`` and ``host``):
``dualrun.load``, ``dualrun.policy``, ``dualrun.promote``, ``dualrun.rollback``,
``dualrun.divergence`` (one per observation that is not a plain match), ``dualrun.match``
(a sample of matches, off by default), ``dualrun.error`` (errors inside dualrun),
``dualrun.summary`` (what was added since the previous summary: counts, histograms,
divergence groups; see :mod:`dualrun.logread`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from dualrun import checks, forks
from dualrun.compare import describe
from dualrun.counters import new_counter, peek

SCHEMA = 1
Redactor = Callable[[dict[str, Any]], dict[str, Any]]
_FLUSH = object()
_STOP = object()
_BATCH_LINES = 512  # under sustained load, write at least every this many lines


class _LineFile:
    """The last step of the structlog chain: collects rendered lines, writes them whole."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._pending: list[str] = []
        self._partial = False  # the last write stopped inside a line

    def msg(self, line: str) -> None:
        self._pending.append(line)

    info = warning = error = msg

    def pending(self) -> int:
        return len(self._pending)

    def forget_pending(self) -> None:
        """Drop the collected lines (a forked child: its parent writes them)."""
        self._pending.clear()

    def write_pending(self) -> int:
        """Write the collected lines; return how many could not be written whole (disk full...).

        A write that stops inside a line (a short write, then an error) leaves that line
        partial: the next write starts on a new line, so the partial line stays one bad line
        that ``dualrun report`` skips and names, and lines written later are whole."""
        if not self._pending:
            return 0
        lines = len(self._pending)
        data = ("\n".join(self._pending) + "\n").encode()
        self._pending.clear()
        start = 0
        if self._partial:
            data, start = b"\n" + data, 1
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError:
            pass
        if done:
            self._partial = data[done - 1] != ord("\n")
        return lines - data.count(b"\n", start, done)

    def close(self) -> int:
        lost = self.write_pending()
        os.close(self._fd)
        return lost


def _add_schema(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.setdefault("schema", SCHEMA)
    return event


def file_logger(path: Path) -> tuple[Any, _LineFile]:
    """A structlog logger that renders JSON lines with ISO UTC timestamps into ``path``."""
    sink = _LineFile(path)
    logger = structlog.wrap_logger(
        sink,
        processors=[
            _add_schema,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(default=repr, sort_keys=False),
        ],
    )
    return logger, sink


class EventLog:
    """Where a dispatcher's events go: a JSON-lines file, or a structlog logger of the app.

    ``redact`` maps each event's fields before they are written (values are already short,
    truncated reprs; the request key is written as given unless ``redact`` hashes or drops it).
    ``summary_interval``: seconds between summaries. ``match_sample``: percent of matching
    comparisons also written as ``dualrun.match`` events (0 by default). ``target``: a path of
    a JSON-lines file, or a structlog logger. ``queue_size``: events waiting for the writer
    thread; beyond it events are dropped and counted, never waited for.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Any,
        *,
        redact: Redactor | None = None,
        summary_interval: float = 10.0,
        queue_size: int = 10_000,
        match_sample: float = 0.0,
    ) -> None:
        if redact is not None and not callable(redact):
            raise ValueError(f"redact is a callable mapping an event dict, got {redact!r}")
        self.summary_interval = checks.seconds(summary_interval, "summary_interval")
        self._bound = checks.whole_number(queue_size, "queue_size")
        self.match_sample = checks.percent(match_sample, "match_sample")  # read by the journal
        self._file: _LineFile | None = None
        if isinstance(target, str | os.PathLike):
            self.path: Path | None = Path(target)
            if self.path.is_dir():
                raise ValueError(f"log is a file path, but {str(self.path)!r} is a directory")
            self._logger, self._file = file_logger(self.path)
        elif callable(getattr(target, "info", None)):
            self.path, self._logger = None, target
        else:
            raise ValueError(
                "log is a file path, a structlog logger (anything with .info(event, **fields)), "
                f"or None; got {target!r}"
            )
        self.redact = redact
        self.summarize: Callable[[], None] | None = None  # set by the dispatcher
        self._closed = False
        self._renew()
        forks.register(self)

    def _renew(self) -> None:
        """This process's identity, queue and writer (none yet: started on first use)."""
        self.run = uuid.uuid4().hex[:16]
        # The schema goes into every event, also those written through the app's own logger.
        self._base = {
            "schema": SCHEMA,
            "run": self.run,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.dropped = new_counter()
        self._written = new_counter()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False  # the writer took the stop marker
        self._last_summary = time.monotonic()

    def after_fork_in_child(self) -> None:
        """A forked child writes its own events, under its own run id and pid, through a
        writer of its own; the parent's queued lines stay the parent's to write."""
        if self._file is not None:
            self._file.forget_pending()
        self._renew()

    # -- producing (any thread, never blocks) -----------------------------------------------

    def emit(self, event: str, **fields: Any) -> bool:
        """Queue one event; False (and counted in ``dropped``) if the queue is full or closed."""
        if self._closed or self._queue.qsize() >= self._bound:
            next(self.dropped)
            return False
        if self._thread is None:
            self._start()
        context = structlog.contextvars.get_contextvars()
        if context:
            fields = {**context, **fields}
        self._queue.put((event, fields))
        return True

    def dropped_count(self) -> int:
        """Events dropped so far because the queue was full."""
        return peek(self.dropped)

    # -- the writer thread --------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="dualrun-eventlog", daemon=True
                )
                self._thread.start()
                _open_logs.add(self)

    def _work(self) -> None:
        stopping = False
        while not stopping:
            try:
                stopping = self._step()
            except BaseException:  # the writer outlives anything a step raises
                stopping = self._stopping

    def _step(self) -> bool:
        """Take one item off the queue and act on it; True once the log is closed."""
        try:
            item = self._queue.get(timeout=min(1.0, self.summary_interval))
        except queue.Empty:
            item = None
        if item is _STOP:
            self._stopping = True
            # An event accepted just before close() may sit behind the stop marker.
            while not self._queue.empty():
                late = self._queue.get_nowait()
                if isinstance(late, tuple):
                    self._write(*late)
                elif isinstance(late, threading.Event):
                    late.set()
            if self._file is not None:
                self._lost_lines(self._file.close())
            return True
        if isinstance(item, tuple):
            self._write(*item)
        elif isinstance(item, threading.Event):
            try:
                self._write_pending()
            finally:
                item.set()
            self._maybe_summarize()  # a caller flushing in a loop must not starve summaries
            return False
        # Write when the queue runs dry, and also every _BATCH_LINES lines: a producer that
        # never lets the queue empty must not keep lines (and summaries) back indefinitely.
        if self._queue.empty() or (self._file is not None and self._file.pending() >= _BATCH_LINES):
            self._write_pending()
            self._maybe_summarize()
        return False

    def _write(self, event: str, fields: dict[str, Any]) -> None:
        try:
            data = {**self._base, **fields}
            if self.redact is not None:
                data = self.redact(data)
            self._logger.info(event, **data)
        except BaseException as exc:  # a redactor or the app's logger failed: count, note, go on
            next(self.dropped)
            with contextlib.suppress(BaseException):  # the logger itself may be what fails
                self._logger.info(  # not the message: it may quote what was to be redacted
                    "dualrun.error",
                    **self._base,
                    where="event log",
                    lost=event,
                    error=_failure(exc, redacting=self.redact is not None),
                )
        next(self._written)

    def _write_pending(self) -> None:
        if self._file is not None:
            self._lost_lines(self._file.write_pending())

    def _lost_lines(self, lines: int) -> None:
        """Lines the file refused (disk full, ...): counted with the dropped events."""
        for _ in range(lines):
            next(self.dropped)

    def _maybe_summarize(self) -> None:
        if self.summarize is None:
            return
        if time.monotonic() - self._last_summary >= self.summary_interval:
            self._last_summary = time.monotonic()
            try:
                self.summarize()
            except BaseException as exc:  # the writer thread must outlive a failed summary
                self._write("dualrun.error", {"where": "summary", "error": describe(exc)})

    # -- flushing and closing -----------------------------------------------------------------

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Write everything queued so far; False if ``timeout`` ran out first."""
        if self._thread is None or self._closed:
            return True  # nothing started, or close() has written everything
        done = threading.Event()
        self._queue.put(done)
        return self._wait_for_writer(done, timeout)

    def _wait_for_writer(self, done: threading.Event, timeout: float | None) -> bool:
        """Wait for ``done``, but not for a writer thread that no longer runs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        thread = self._thread
        while not done.wait(0.05 if deadline is None else min(0.05, timeout or 0)):
            if thread is None or not thread.is_alive():
                return done.is_set()
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def close(self, timeout: float | None = 5.0) -> None:
        """Flush, stop the writer thread and close the file. Idempotent.

        The writer closes the file itself once it has written everything; if it is still busy
        after ``timeout`` it finishes on its own (the file stays open until then)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
        elif self._file is not None:
            self._file.close()
        _open_logs.discard(self)


def _failure(exc: BaseException, redacting: bool) -> str:
    """What went wrong writing an event: with a redactor, only the exception's type."""
    if redacting:
        return f"{type(exc).__name__} (its message is not written: redaction failed)"
    return describe(exc)


_open_logs: weakref.WeakSet[EventLog] = weakref.WeakSet()
_exit_hooks: list[weakref.WeakMethod[Callable[[], None]]] = []


def at_exit(hook: Callable[[], None]) -> None:
    """Call the bound method ``hook`` (a dispatcher's last shadow runs and summary) at
    interpreter exit, before the open logs are flushed, if its object is still alive then."""
    _exit_hooks[:] = [ref for ref in _exit_hooks if ref() is not None]  # dead dispatchers
    _exit_hooks.append(weakref.WeakMethod(hook))


@atexit.register
def _flush_all() -> None:
    for reference in list(_exit_hooks):
        hook = reference()
        if hook is not None:
            with contextlib.suppress(BaseException):
                hook()
    for log in list(_open_logs):
        log.close(timeout=5.0)
