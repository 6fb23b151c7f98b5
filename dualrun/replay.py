"""Replay recorded calls (or inputs from a file) through both versions, offline.

Each call goes through a dispatcher with an inline shadow, exactly as a shadowed production call
would, so the report is the one the shadow would have written for the same calls. With
``against_recorded`` only the new version runs, and its outcome is compared with the outcome the
recording holds (both through the same typed encoding, so both sides have the same form).
``dualrun replay`` and ``dualrun diff`` are the command-line faces of this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dualrun.compare import describe, type_name
from dualrun.context import context
from dualrun.errors import TargetNotFoundError
from dualrun.loading import Version, VersionPair, load, load_version
from dualrun.recorder import Recorder
from dualrun.recording import RecordedCall, read_calls
from dualrun.render import printable
from dualrun.report import Report, route_report
from dualrun.shadow import Shadow, ShadowRunner
from dualrun.testing import Agreement, inline_shadow
from dualrun.typedjson import contains_unrecorded, decode, encode, error_from

FORMATS = ("text", "markdown", "json", "html")


@dataclass
class Replayed:
    """A replay's report and how it went."""

    report: Report
    calls: int  # replayed
    skipped: int  # not replayable (an argument that was not recorded faithfully, ...)
    seconds: float

    @property
    def divergent(self) -> bool:
        return any(r.mismatches or r.timeouts or r.internal_errors for r in self.report.routes)

    @property
    def rate(self) -> float:
        """Calls replayed per second."""
        return self.calls / self.seconds if self.seconds > 0 else float("inf")


def _call(fn: Callable[..., Any], call: RecordedCall, loop: asyncio.AbstractEventLoop) -> Any:
    result = fn(*call.args, **call.kwargs)
    if inspect.isawaitable(result):
        result = loop.run_until_complete(result)
    return result


def _unreplayable(call: RecordedCall) -> str | None:
    missing = contains_unrecorded((call.args, call.kwargs))
    if missing is None:
        return None
    return f"an argument of type {missing.type} was not recorded faithfully ({missing.repr})"


class _Skips:
    """Calls that cannot be replayed: each counted for its route in the report, and in all."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.count = 0

    def unreplayable(self, call: RecordedCall) -> bool:
        """Skip (and count) a call with an argument that was not recorded faithfully."""
        why = _unreplayable(call)
        if why is not None:
            self(call.route, why)
        return why is not None

    def __call__(self, route: str, why: str) -> None:
        self.count += 1
        self.recorder.count(route, "skipped", why)


def _key(call: RecordedCall) -> Any:
    return call.key if isinstance(call.key, str | int) else None


def replay(
    calls: Iterable[RecordedCall], versions: VersionPair, shadow: Shadow | None = None
) -> Replayed:
    """Run every call through old and new and compare, as an inline shadow does."""
    loop = asyncio.new_event_loop()
    replayed = 0
    started = time.perf_counter()
    with Agreement(versions, shadow) as agreement:
        skip = _Skips(agreement.dispatcher.recorder)
        for call in calls:
            if skip.unreplayable(call):
                continue
            try:
                routed = agreement.route(call.route)
            except (TargetNotFoundError, ImportError) as exc:  # a route of another package
                skip(call.route, f"not in these versions: {describe(exc)}")
                continue
            # Old's exception is compared with new's by the shadow, not raised here.
            with context(key=_key(call), pin="old"), contextlib.suppress(Exception):
                _call(routed, call, loop)
            replayed += 1
        seconds = time.perf_counter() - started
        report = agreement.dispatcher.report()
    loop.close()
    return Replayed(report, replayed, skip.count, seconds)


def _as_recorded(value: Any, error: BaseException | None) -> tuple[Any, BaseException | None]:
    """An outcome in the form a recording gives it back."""
    if error is not None:
        return None, error_from(type_name(error), str(error))
    return decode(json.loads(json.dumps(encode(value)))), None


def replay_against_recorded(
    calls: Iterable[RecordedCall], new: Version, shadow: Shadow | None = None
) -> Replayed:
    """Run every call in ``new`` only and compare with the recorded outcome."""
    loop = asyncio.new_event_loop()
    recorder = Recorder()
    runner = ShadowRunner(inline_shadow(shadow), recorder)
    functions: dict[str, Callable[..., Any]] = {}
    counts: dict[str, int] = {}
    replayed = 0
    skip = _Skips(recorder)
    started = time.perf_counter()
    for call in calls:
        if skip.unreplayable(call):
            continue
        fn = functions.get(call.route)
        if fn is None:
            try:
                fn = functions[call.route] = new.resolve(call.route)
            except (TargetNotFoundError, ImportError, AttributeError) as exc:
                skip(call.route, f"not in this version: {describe(exc)}")
                continue
        began = time.perf_counter_ns()
        value: Any = None
        error: BaseException | None = None
        with context(key=_key(call), pin="new"):
            try:
                value = _call(fn, call, loop)
            except Exception as exc:
                error = exc
        wall = time.perf_counter_ns() - began
        value, error = _as_recorded(value, error)
        runner.record_outcomes(
            call.route, (call.value, call.error, call.wall_ns), (value, error, wall), _key(call)
        )
        counts[call.route] = counts.get(call.route, 0) + 1
        replayed += 1
    seconds = time.perf_counter() - started
    runner.close(0)
    loop.close()
    aggregates = recorder.snapshot()
    routes = [
        route_report(name, {"old": 0, "new": counts.get(name, 0)}, 0, agg)
        for name, agg in sorted(aggregates.items())
    ]
    return Replayed(
        Report("replay against the recorded results", routes), replayed, skip.count, seconds
    )


# -- inputs for `dualrun diff` -----------------------------------------------------------------


def read_inputs(path: str, target: str, problem: Callable[[str], None]) -> Iterator[RecordedCall]:
    """One call of ``target`` per line: a JSON array of positional arguments, an object
    ``{"args": [...], "kwargs": {...}}``, or any other value as the single argument (typed
    extensions such as ``{"$decimal": "0.10"}`` allowed)."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = decode(json.loads(line))
            except (ValueError, RecursionError) as exc:
                problem(f"{path}:{number}: not a JSON input ({exc}); skipped")
                continue
            if isinstance(value, list):
                args, kwargs = tuple(value), {}
            elif isinstance(value, dict) and set(value) <= {"args", "kwargs"} and value:
                args = tuple(value.get("args", ()))
                kwargs = {str(k): v for k, v in dict(value.get("kwargs", {})).items()}
            else:
                args, kwargs = (value,), {}
            yield RecordedCall(target, "old", args, kwargs, None, origin=f"{path}:{number}")


# -- the command line --------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """Add ``replay`` and ``diff`` to the ``dualrun`` command's subparsers."""
    exits = "Exit code: 0 no divergence, 1 divergences, 2 an error (nothing replayable, a load)."
    parser = commands.add_parser(
        "replay",
        help="replay recorded calls through both versions and print the divergence report",
        description="Replay calls recorded with Dispatcher(record=...) through the old and the "
        "new version in one process, compared as the shadow compares. " + exits,
    )
    parser.add_argument("recordings", nargs="+", metavar="RECORDING")
    _common(parser, old_required=False)
    parser.add_argument(
        "--against-recorded",
        action="store_true",
        help="run only the new version and compare with the recorded results",
    )
    parser.add_argument("--route", help="only the routes matching this glob")
    parser.set_defaults(func=run_replay)
    parser = commands.add_parser(
        "diff",
        help="call one target of both versions on inputs from a JSON-lines file and compare",
        description="Each line of --inputs is one call: a JSON array of positional arguments, "
        '{"args": [...], "kwargs": {...}}, or a single argument; typed values as in '
        'recordings ({"$decimal": "0.10"}). ' + exits,
    )
    _common(parser, old_required=True)
    parser.add_argument("--target", required=True, help="pkg.module:function")
    parser.add_argument("--inputs", required=True, metavar="FILE.jsonl")
    parser.set_defaults(func=run_diff)


def _common(parser: argparse.ArgumentParser, old_required: bool) -> None:
    parser.add_argument(
        "--old", required=old_required, metavar="SRC", help="directory, wheel, git:REV"
    )
    parser.add_argument("--new", required=True, metavar="SRC")
    parser.add_argument("--name", help="the package to load (default: from the routes)")
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--ignore", action="append", default=[], metavar="PATH")
    parser.add_argument("--tolerance", type=float, default=0.0)
    parser.add_argument(
        "--shadow",
        metavar="MODULE:NAME",
        help="a dualrun.Shadow in your code whose compare=, ignore=, ... apply",
    )


def _shadow(args: argparse.Namespace) -> Shadow:
    if args.shadow:
        module, _, name = args.shadow.partition(":")
        shadow = getattr(importlib.import_module(module), name, None) if name else None
        if not isinstance(shadow, Shadow):
            raise ValueError(f"--shadow names a dualrun.Shadow as MODULE:NAME, got {args.shadow!r}")
        if args.ignore or args.tolerance:
            raise ValueError("--ignore and --tolerance go into the Shadow named by --shadow")
        return shadow
    return Shadow(ignore=args.ignore, tolerance=args.tolerance)


def _problem(command: str) -> Callable[[str], None]:
    def problem(message: str) -> None:  # file names and recorded values: shown, not obeyed
        print(f"dualrun {command}: {printable(message)}", file=sys.stderr)

    return problem


def _finish(command: str, args: argparse.Namespace, result: Replayed) -> int:
    text = {
        "text": result.report.to_text,
        "markdown": result.report.to_markdown,
        "json": result.report.to_json,
        "html": result.report.to_html,
    }[args.format]()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    print(
        f"dualrun {command}: {result.calls} calls replayed in {result.seconds:.3f} s "
        f"({result.rate:,.0f} calls/s), {result.skipped} skipped",
        file=sys.stderr,
    )
    if result.calls == 0:
        print(f"dualrun {command}: no call could be replayed", file=sys.stderr)
        return 2
    return 1 if result.divergent else 0


def run_replay(args: argparse.Namespace) -> int:
    problem = _problem("replay")
    try:
        shadow = _shadow(args)
        if args.old is None and not args.against_recorded:
            raise ValueError("--old is needed, unless --against-recorded")
        calls = read_calls(args.recordings, problem, args.route)
        first = next(calls, None)
        if first is None:
            problem("no recorded call could be read")
            return 2
        calls = itertools.chain([first], calls)
        name = args.name or first.route.partition(":")[0].partition(".")[0]
        if args.against_recorded:
            new = load_version("new", name, args.new)
            try:
                result = replay_against_recorded(calls, new, shadow)
            finally:
                new.unload()
        else:
            versions = load(name, old=args.old, new=args.new)
            try:
                result = replay(calls, versions, shadow)
            finally:
                versions.unload()
    except Exception as exc:
        problem(describe(exc))
        return 2
    return _finish("replay", args, result)


def run_diff(args: argparse.Namespace) -> int:
    problem = _problem("diff")
    try:
        shadow = _shadow(args)
        name = args.name or args.target.partition(":")[0].partition(".")[0]
        versions = load(name, old=args.old, new=args.new)
        try:
            for version in versions:  # a target missing in either is an error, named at once
                version.resolve(args.target)
            result = replay(read_inputs(args.inputs, args.target, problem), versions, shadow)
        finally:
            versions.unload()
    except Exception as exc:
        problem(describe(exc))
        return 2
    return _finish("diff", args, result)
