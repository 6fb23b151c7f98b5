"""A bounded pool of daemon threads that never blocks the thread that submits work.

``submit`` appends to a deque (atomic under the GIL, no lock) after a check of its length; when
it holds ``bound`` jobs, the job is refused and the caller counts it as dropped. Under
concurrent submitters the bound may be passed by a few jobs. Busy workers take the next job
without being woken; a worker that found the queue empty looks again every millisecond for a
while, then parks, and a submit wakes one parked worker (a parked worker also looks again every
``PARK_SECONDS``, so a wake-up lost to a race only delays a job).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dualrun import forks
from dualrun.counters import new_counter, peek

Job = Callable[[], None]
_STOP = object()
PARK_SECONDS = 0.5
POLL_SECONDS = 0.001  # how often a worker that ran out of jobs looks for more, at first
IDLE_SECONDS = 0.05  # how long it does so before it parks
POLLS = round(IDLE_SECONDS / POLL_SECONDS)


def _call(job: Any) -> None:
    job()


class WorkerPool:
    """``workers`` threads started on first use, at most about ``bound`` jobs waiting.

    ``handler(job)`` runs each job (by default a job is a callable, called): a submitter can
    then queue plain data, and the worker builds whatever the job needs."""

    def __init__(
        self,
        workers: int,
        bound: int,
        name: str,
        handler: Callable[[Any], None] = _call,
    ) -> None:
        self._workers = workers
        self._bound = bound
        self._name = name
        self._handler = handler
        self._closed = False
        self.after_fork_in_child()
        forks.register(self)

    def after_fork_in_child(self) -> None:
        """Empty queue, no threads (started on first use), fresh lock: also what a forked
        child needs, as its parent's threads are not in it and its parent's jobs not its own."""
        self._queue: deque[Any] = deque()
        self._parked: list[threading.Event] = []  # one event per worker waiting for a job
        self._submitted = new_counter()
        self._finished = new_counter()
        self._threads: list[threading.Thread] = []
        self._open = False  # threads started, not closed: submit's one check
        self._start_lock = threading.Lock()

    def pending(self) -> int:
        """Jobs submitted and not finished yet."""
        return peek(self._submitted) - peek(self._finished)

    def submit(self, job: Any) -> bool:
        """Queue ``job``; False (and nothing queued) if the pool is full or closed."""
        queue = self._queue
        if not self._open or len(queue) >= self._bound:
            if self._closed or len(queue) >= self._bound:
                return False
            if not self._start():
                return False  # closed meanwhile: no thread may start after close()
        next(self._submitted)
        queue.append(job)
        if self._parked:
            self._wake_one()
        return True

    def _wake_one(self) -> None:
        with contextlib.suppress(IndexError):  # another submitter woke the last one
            self._parked.pop().set()

    def _start(self) -> bool:
        """Start the threads (once); False if the pool is closed."""
        with self._start_lock:
            if self._closed:
                return False
            if not self._threads:
                for i in range(self._workers):
                    thread = threading.Thread(
                        target=self._work, name=f"{self._name}-{i}", daemon=True
                    )
                    thread.start()
                    self._threads.append(thread)
                self._open = True
            return True

    def _work(self) -> None:
        queue, handler, wake = self._queue, self._handler, threading.Event()
        while True:
            try:
                job = queue.popleft()
            except IndexError:
                self._park(wake)
                continue
            if job is _STOP:
                return
            try:
                handler(job)
            except BaseException:  # SystemExit included: a job never stops its worker
                pass
            finally:
                next(self._finished)

    def _park(self, wake: threading.Event) -> None:
        """Wait for a job: first by looking every POLL_SECONDS for IDLE_SECONDS (a submit
        costs the caller nothing then), then parked, told by a submit that sees this worker
        parked (it looks again after parking, so a job queued meanwhile is not missed), or
        after PARK_SECONDS."""
        queue = self._queue
        for _ in range(POLLS):
            time.sleep(POLL_SECONDS)
            if queue:
                return
        wake.clear()
        parked = self._parked
        parked.append(wake)
        if not self._queue:
            wake.wait(PARK_SECONDS)
        with contextlib.suppress(ValueError):  # a submit took it off to wake it
            parked.remove(wake)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job has finished; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending() > 0:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if not any(thread.is_alive() for thread in self._threads):
                return False  # no worker left to run them: never wait forever
            time.sleep(0.001)
        return True

    def close(self, timeout: float | None = 5.0, abandon: bool = False) -> list[Any]:
        """Refuse new jobs, let the queued ones finish (up to ``timeout``), stop the threads.

        With ``abandon``, the jobs not started when ``timeout`` ran out are taken off the queue
        and returned, never to run; otherwise they run before the threads stop. Once every
        thread has stopped, a job a racing ``submit`` queued behind the stop markers is
        returned too: no thread is left to run it."""
        with self._start_lock:  # a submit that passed its check starts no thread after this
            self._closed = True
            self._open = False
        done = self.join(timeout)
        abandoned = self._take_all() if not done and abandon else []
        for _ in self._threads:
            self._queue.append(_STOP)
        for _ in self._threads:
            self._wake_one()
        for thread in self._threads:
            thread.join(0 if not done else timeout)
        if not any(thread.is_alive() for thread in self._threads):
            abandoned += self._take_all()
        return abandoned

    def _take_all(self) -> list[Any]:
        """Take every job off the queue (stop markers dropped), each counted as finished."""
        taken: list[Any] = []
        while True:
            try:
                job = self._queue.popleft()
            except IndexError:
                return taken
            if job is not _STOP:
                taken.append(job)
                next(self._finished)
