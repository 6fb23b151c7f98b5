"""A bounded pool of daemon threads that never blocks the thread that submits work.

``submit`` is one ``SimpleQueue.put`` (a C call, no lock held by Python code) after a check of
the queue's length; when the queue holds ``bound`` jobs, the job is refused and the caller
counts it as dropped. Under concurrent submitters the bound may be passed by a few jobs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from dualrun import forks
from dualrun.counters import new_counter, peek

Job = Callable[[], None]
_STOP = object()


class WorkerPool:
    """``workers`` threads started on first use, at most about ``bound`` jobs waiting."""

    def __init__(self, workers: int, bound: int, name: str) -> None:
        self._workers = workers
        self._bound = bound
        self._name = name
        self._closed = False
        self.after_fork_in_child()
        forks.register(self)

    def after_fork_in_child(self) -> None:
        """Empty queue, no threads (started on first use), fresh lock: also what a forked
        child needs, as its parent's threads are not in it and its parent's jobs not its own."""
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._submitted = new_counter()
        self._finished = new_counter()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    def pending(self) -> int:
        """Jobs submitted and not finished yet."""
        return peek(self._submitted) - peek(self._finished)

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False (and nothing queued) if the pool is full or closed."""
        if self._closed or self._queue.qsize() >= self._bound:
            return False
        if not self._threads and not self._start():
            return False  # closed meanwhile: no thread may start after close()
        next(self._submitted)
        self._queue.put(job)
        return True

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
            return True

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            try:
                job()  # type: ignore[operator]
            except BaseException:  # SystemExit included: a job never stops its worker
                pass
            finally:
                next(self._finished)

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

    def close(self, timeout: float | None = 5.0, abandon: bool = False) -> list[Job]:
        """Refuse new jobs, let the queued ones finish (up to ``timeout``), stop the threads.

        With ``abandon``, the jobs not started when ``timeout`` ran out are taken off the queue
        and returned, never to run; otherwise they run before the threads stop."""
        with self._start_lock:  # a submit that passed its check starts no thread after this
            self._closed = True
        done = self.join(timeout)
        abandoned: list[Job] = []
        if not done and abandon:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not _STOP:
                    abandoned.append(job)  # type: ignore[arg-type]
                    next(self._finished)
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(0 if not done else timeout)
        return abandoned
