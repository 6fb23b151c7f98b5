"""Version pairs, observations, clocks and subprocesses for the event-log and report tests.

``LogLab(tmp_path)`` writes and loads a small version pair (``engine.quote`` differs between the
versions on some inputs, raises on others; ``engine.stamp`` returns a fresh timestamp, so it is
noisy), makes dispatchers, and at :meth:`LogLab.cleanup` closes them and unloads the versions.
``observation(...)`` builds :class:`dualrun.recorder.Observation` objects to feed a recorder
directly; ``FakeClock`` stands in for the journal's clock so summaries have chosen times;
``CHILD`` is a script that runs a dispatcher in a subprocess.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import dualrun
from dualrun.compare import Difference
from dualrun.recorder import Observation, Outcome

_ids = itertools.count()

OLD_ENGINE = """
import time


def quote(n):
    if n % 11 == 0:
        raise ValueError(f"no price for {n}")
    return {"n": n, "price": n * 2, "items": [n, 1]}


def stamp(n):
    return {"n": n, "at": time.perf_counter_ns()}
"""

NEW_ENGINE = """
import time


def quote(n):
    if n % 13 == 0:
        raise ValueError(f"no price for {n}")
    return {"n": n, "price": n * 2 + (n % 3 == 0), "items": [n, 2 if n % 5 == 0 else 1]}


def stamp(n):
    return {"n": n, "at": time.perf_counter_ns()}
"""

# 2026-03-01T00:00:00Z: observations of the tests happen in the minutes after it.
T0 = 1_772_323_200.0
ROUTE_A = "svc.a:quote"
ROUTE_B = "svc.b:total"


def write_pair(root: Path, name: str) -> tuple[Path, Path]:
    """Write the old and the new version of package ``name``; return the two directories."""
    dirs = []
    for label, engine in (("old", OLD_ENGINE), ("new", NEW_ENGINE)):
        package = root / name / label / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"VERSION = {label!r}\n")
        (package / "engine.py").write_text(textwrap.dedent(engine))
        dirs.append(package.parent)
    return dirs[0], dirs[1]


class LogLab:
    """Version pairs and dispatchers made by one test; everything is undone by cleanup()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pairs: list[dualrun.VersionPair] = []
        self.dispatchers: list[dualrun.Dispatcher] = []

    def dirs(self) -> tuple[str, Path, Path]:
        """A fresh package name and its two version directories (not loaded)."""
        name = f"logpkg_{next(_ids)}"
        old, new = write_pair(self.root / "versions", name)
        return name, old, new

    def pair(self) -> dualrun.VersionPair:
        name, old, new = self.dirs()
        versions = dualrun.load(name, old=str(old), new=str(new))
        self.pairs.append(versions)
        return versions

    def dispatcher(self, versions: dualrun.VersionPair, **kwargs: Any) -> dualrun.Dispatcher:
        d = dualrun.Dispatcher(versions, **kwargs)
        self.dispatchers.append(d)
        return d

    def path(self, stem: str = "log") -> Path:
        """A log path nobody used yet."""
        return self.root / f"{stem}-{next(_ids)}.jsonl"

    def cleanup(self) -> None:
        for d in self.dispatchers:
            d.close(timeout=5)
        for pair in self.pairs:
            pair.unload()


def target(versions: dualrun.VersionPair, qualname: str) -> str:
    return f"{versions.old.name}.engine:{qualname}"


def call_quietly(fn: Any, n: int) -> None:
    """Call ``fn(n)``; the primary raising ValueError on some inputs is expected."""
    with contextlib.suppress(ValueError):
        fn(n)


def outcome(
    label: str, value: str | None = "1", error: str | None = None, wall_ns: int = 1000
) -> Outcome:
    return Outcome(label, value, error, wall_ns, wall_ns // 2)


def observation(
    route: str = ROUTE_A,
    status: str = "mismatch",
    when: float = T0,
    paths: tuple[str, ...] = ("$.price",),
    key: str | None = "k",
    old_ns: int = 1000,
    new_ns: int = 2000,
    error: str | None = None,
) -> Observation:
    """An observation with a difference on each of ``paths`` (none unless a mismatch)."""
    differences = (
        tuple(Difference(p, "value", "1", "2") for p in paths) if status == "mismatch" else ()
    )
    noise = (Difference("$.at", "value", "5", "6"),) if status == "noise" else ()
    return Observation(
        route=route,
        key=key,
        primary="old",
        old=outcome("old", "1", error, old_ns),
        new=outcome("new", "2", None, new_ns),
        differences=differences,
        noise=noise,
        status=status,
        time=when,
    )


class FakeClock:
    """Replaces the ``time`` module the journal uses: ``time()`` returns ``now``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def events(path: Path) -> list[dict[str, Any]]:
    """Every event of a complete log."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kinds(path: Path) -> list[str]:
    return [e["event"] for e in events(path)]


# A dispatcher in a process of its own. argv: name old new log mode count start
# mode "forever": call quote(n) for n = 0, 1, ... until killed; print READY after `count` calls.
# mode "once": `count` calls from n = `start` under a 50% canary (random per call, both versions
# primary and shadow), and as many of the noisy `stamp`; close; print the in-process report.
CHILD = """
import sys

import dualrun

name, old, new, log, mode, count, start = sys.argv[1:8]
count, start = int(count), int(start)
versions = dualrun.load(name, old=old, new=new)
if mode == "forever":
    d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(mode="inline"), log=log)
    quote = d.route(f"{name}.engine:quote")
    n = 0
    while True:
        try:
            quote(n)
        except ValueError:
            pass
        n += 1
        if n == count:
            print("READY", flush=True)
d = dualrun.Dispatcher(
    versions,
    policy=dualrun.Canary(50),
    shadow=dualrun.Shadow(primary="any", mode="inline", calibrate=True, calibrate_calls=3),
    log=log,
)
quote = d.route(f"{name}.engine:quote")
stamp = d.route(f"{name}.engine:stamp")
for n in range(start, start + count):
    try:
        quote(n)
    except ValueError:
        pass
    stamp(n)
d.close()
print(d.report().to_json())
versions.unload()
"""


def write_child(root: Path) -> Path:
    script = root / "child_dispatcher.py"
    if not script.exists():
        script.write_text(CHILD)
    return script


def child_command(
    script: Path, name: str, old: Path, new: Path, log: Path, mode: str, count: int, start: int
) -> list[str]:
    return [
        sys.executable,
        str(script),
        name,
        str(old),
        str(new),
        str(log),
        mode,
        str(count),
        str(start),
    ]


def wait_for_line(process: subprocess.Popen[str], expected: str, timeout: float) -> str:
    """The first line of the process's stdout; fail (and kill it) if it takes too long."""
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.append(process.stdout.readline() if process.stdout else ""),
        daemon=True,
    )
    reader.start()
    reader.join(timeout)
    if not lines:
        process.kill()
        process.wait()
        raise AssertionError(f"no {expected!r} line from the child within {timeout} s")
    return lines[0].strip()
