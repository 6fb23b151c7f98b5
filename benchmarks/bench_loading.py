"""How long loading a version takes, and what a call into a loaded version costs.

(a) Load time of the bundled demo package (``pricing`` 1.4.0) from each source kind: a
directory, a wheel and a zip built here on the fly, and a git revision of a repository created
here. Archives and git revisions are extracted into a cache on first load; the first (extracting)
and a later (cached) load are timed separately, each with a fresh ``DUALRUN_CACHE_DIR``.

(b) The cost of a call into the loaded version against the same code imported plainly under its
real name in this same process, with ``timeit``, in ns per call, and their ratio.

Run: ``python benchmarks/bench_loading.py [--reps N]``. Absolute times depend on the machine;
compare the ratios, which are measured within one run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import dualrun
from dualrun.demo import demo_sources, sample_carts

NAME = "pricing"
VERSION = "1.4.0"


def package_files(root: Path) -> list[Path]:
    """The demo package's source files, without any ``__pycache__``."""
    return sorted((root / NAME).glob("*.py"))


def build_zip(root: Path, out: Path) -> Path:
    """A plain zip with ``pricing/*.py`` at its top level."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in package_files(root):
            archive.write(path, f"{NAME}/{path.name}")
    return out


def build_wheel(root: Path, out_dir: Path) -> Path:
    """A minimal pure-Python wheel (PEP 427) of the demo package: sources plus dist-info."""
    dist_info = f"{NAME}-{VERSION}.dist-info"
    members = {f"{NAME}/{p.name}": p.read_bytes() for p in package_files(root)}
    members[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode()
    )
    members[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: bench_loading\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in members.items()]
    members[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    wheel = out_dir / f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return wheel


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_git_repo(root: Path, repo: Path) -> str:
    """A git repository with the demo package committed once; returns the ``git:`` source."""
    (repo / NAME).mkdir(parents=True)
    for path in package_files(root):
        shutil.copy(path, repo / NAME / path.name)
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "-c", "commit.gpgsign=false", "commit", "-qm", VERSION], check=True)
    return f"git:{repo}@HEAD"


@contextlib.contextmanager
def cache_dir(base: Path) -> Iterator[Path]:
    """Point ``DUALRUN_CACHE_DIR`` at a new, empty directory for the duration."""
    previous = os.environ.get("DUALRUN_CACHE_DIR")
    path = Path(tempfile.mkdtemp(prefix="cache-", dir=base))
    os.environ["DUALRUN_CACHE_DIR"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("DUALRUN_CACHE_DIR", None)
        else:
            os.environ["DUALRUN_CACHE_DIR"] = previous


def time_load(source: str) -> float:
    """Milliseconds for one ``load_version`` of ``source`` (unloaded again afterwards)."""
    start = time.perf_counter()
    version = dualrun.load_version("old", NAME, source)
    elapsed = time.perf_counter() - start
    version.unload()
    return elapsed * 1000


def first_and_cached(source: str, base: Path, reps: int) -> tuple[float, float]:
    """Median ms of a first load (empty cache: extraction) and of a second load (cached)."""
    first, cached = [], []
    for _ in range(reps):
        with cache_dir(base):
            first.append(time_load(source))
            cached.append(time_load(source))
    return statistics.median(first), statistics.median(cached)


def bench_loads(reps: int) -> list[tuple[str, float | None, float]]:
    """(source kind, first load ms or None when nothing is extracted, later load ms)."""
    old_dir = demo_sources()[0]
    rows: list[tuple[str, float | None, float]] = []
    with tempfile.TemporaryDirectory(prefix="dualrun-bench-") as tmp:
        base = Path(tmp)
        time_load(str(old_dir))  # warm up: the import system, the directory's __pycache__
        rows.append(
            ("directory", None, statistics.median(time_load(str(old_dir)) for _ in range(reps)))
        )
        wheel = build_wheel(old_dir, base)
        rows.append(("wheel (.whl)", *first_and_cached(str(wheel), base, reps)))
        archive = build_zip(old_dir, base / "pricing.zip")
        rows.append(("zip", *first_and_cached(str(archive), base, reps)))
        if shutil.which("git"):
            source = build_git_repo(old_dir, base / "repo")
            rows.append(("git revision", *first_and_cached(source, base, reps)))
    return rows


@contextlib.contextmanager
def plain_import(directory: Path) -> Iterator[ModuleType]:
    """The package imported the ordinary way, under its real name, removed again afterwards."""
    sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    try:
        yield importlib.import_module(NAME)
    finally:
        sys.path.remove(str(directory))
        for name in [n for n in sys.modules if n == NAME or n.startswith(NAME + ".")]:
            del sys.modules[name]


def ns_per_call(func: Callable[..., Any], arg: Any, number: int, repeat: int) -> float:
    """Best of ``repeat`` timeit runs of ``func(arg)``, in ns per call."""
    timer = timeit.Timer("f(a)", globals={"f": func, "a": arg})
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def compare_calls(
    plain: Callable[..., Any], loaded: Callable[..., Any], arg: Any, repeat: int
) -> tuple[float, float]:
    """ns per call of the plain and of the loaded function, runs interleaved against drift."""
    number, _ = timeit.Timer("f(a)", globals={"f": plain, "a": arg}).autorange()
    plain_ns, loaded_ns = [], []
    for _ in range(repeat):
        plain_ns.append(ns_per_call(plain, arg, number, 1))
        loaded_ns.append(ns_per_call(loaded, arg, number, 1))
    return min(plain_ns), min(loaded_ns)


def _noop(_: Any) -> None:
    return None


def bench_calls(repeat: int) -> list[tuple[str, float, float | None]]:
    """(what, plain ns, loaded ns) for a few functions of the demo package."""
    old_dir = demo_sources()[0]
    cart = sample_carts(1, seed=3)[0]
    version = dualrun.load_version("old", NAME, str(old_dir))
    rows: list[tuple[str, float, float | None]] = []
    try:
        with plain_import(old_dir) as plain:
            assert plain.__name__ == NAME and version.module.__name__ != NAME
            targets = [
                ("catalog.unit_price", "pricing.catalog:unit_price", "bolt-m6"),
                ("rules.best_rate", "pricing.rules:best_rate", cart),
                ("engine.quote (an import runs per call)", "pricing.engine:quote", cart),
            ]
            noop_ns = ns_per_call(_noop, None, 1_000_000, repeat)
            rows.append(("empty function (anchor, not loaded)", noop_ns, None))
            for label, target, arg in targets:
                module_name, _, attr = target.partition(":")
                plain_func = getattr(importlib.import_module(module_name), attr)
                rows.append(
                    (label, *compare_calls(plain_func, version.resolve(target), arg, repeat))
                )
    finally:
        version.unload()
    return rows


def report(
    loads: list[tuple[str, float | None, float]],
    calls: list[tuple[str, float, float | None]],
    reps: int,
) -> None:
    """Print both tables."""
    print(
        f"dualrun loading benchmark: {platform.python_implementation()} {platform.python_version()}"
    )
    print(f"\n(a) load time of the demo package 'pricing' {VERSION}, median of {reps}, ms")
    print(f"  {'source':<14}{'first load (extracts)':>22}{'later load (cached)':>22}")
    for kind, first, later in loads:
        first_text = "-" if first is None else f"{first:.2f}"
        print(f"  {kind:<14}{first_text:>22}{later:>22.2f}")
    print("\n(b) ns per call, best of the runs: plain import vs the loaded version (same process)")
    print(f"  {'function':<42}{'plain':>9}{'loaded':>9}{'ratio':>8}")
    for label, plain_ns, loaded_ns in calls:
        if loaded_ns is None:
            print(f"  {label:<42}{plain_ns:>9.0f}{'-':>9}{'-':>8}")
        else:
            print(f"  {label:<42}{plain_ns:>9.0f}{loaded_ns:>9.0f}{loaded_ns / plain_ns:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per measurement")
    args = parser.parse_args(argv)
    report(bench_loads(args.reps), bench_calls(max(args.reps, 3)), args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
