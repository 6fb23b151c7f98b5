"""``dualrun control`` and ``dualrun rollout``: the fleet's state from a shell."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from typing import Any

from dualrun.control.sqlite import FleetStatus, SQLiteControl
from dualrun.render import printable

VERBS = (
    "status",
    "promote",
    "rollback",
    "kill",
    "revive",
    "percent",
    "pause",
    "resume",
    "swap",
    "pins",
    "fixed",
)


def add_control_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "control",
        help="read or change the routing state every process of the fleet applies",
        description=(
            "Change the shared state in the control store (the SQLite file the processes' "
            "Dispatcher(..., control=dualrun.SQLiteControl(PATH)) read) and print it with the "
            "processes that have applied it and those that have not yet. Exit code: 0 done "
            "(with --wait: every live process applied it without error), 1 --wait timed out or "
            "a process could not apply it, 2 usage error or unreadable store."
        ),
    )
    parser.add_argument("--db", required=True, metavar="PATH", help="the control store")
    parser.add_argument(
        "--wait", action="store_true", help="block until every live process has applied it"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="for --wait (seconds)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument("--salt", help="with percent: the canary's salt (default: unchanged)")
    parser.add_argument("verb", choices=VERBS, metavar="VERB", help=" | ".join(VERBS))
    parser.add_argument(
        "argument",
        nargs="?",
        help="percent N | swap SOURCE | kill [REASON] | pins on|off | fixed old|new",
    )
    parser.set_defaults(func=run_control)


def _change(control: SQLiteControl, verb: str, argument: str | None, salt: str | None) -> None:
    needs = {
        "percent": "a number from 0 to 100",
        "swap": "a version source",
        "pins": "on or off",
        "fixed": "old or new",
    }
    if verb in needs and argument is None:
        raise ValueError(f"{verb} needs {needs[verb]}")
    if verb not in needs and verb != "kill" and argument is not None:
        raise ValueError(f"{verb} takes no argument, got {argument!r}")
    if verb == "percent":
        try:
            percent = float(str(argument))
        except ValueError:
            raise ValueError(f"percent is a number from 0 to 100, got {argument!r}") from None
        control.set_percent(percent, salt)
    elif verb == "swap":
        control.swap(str(argument))
    elif verb == "pins":
        if argument not in ("on", "off"):
            raise ValueError(f"pins is 'on' or 'off', got {argument!r}")
        control.set_pins(argument == "on")
    elif verb == "fixed":
        if argument not in ("old", "new"):
            raise ValueError(f"fixed is 'old' or 'new', got {argument!r}")
        control.set_fixed(argument)
    elif verb == "kill":
        control.kill(argument or "dualrun control kill")
    else:
        getattr(control, verb)()


def _print(status: FleetStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.to_dict(), indent=2, sort_keys=True))
    else:
        print(status.to_text())


def run_control(args: argparse.Namespace) -> int:
    control = SQLiteControl(args.db)
    try:
        if args.verb == "status":
            if not control.path.exists():
                raise ValueError(f"no control store at {args.db}")
        else:
            _change(control, args.verb, args.argument, args.salt)
        status = control.wait(args.timeout) if args.wait else control.status()
    except (ValueError, sqlite3.Error) as exc:
        print(f"dualrun control: {printable(exc)}", file=sys.stderr)
        return 2
    _print(status, args.json)
    if args.wait and (not status.acknowledged or status.failed):
        return 1
    return 0


def add_rollout_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "rollout",
        help="drive the fleet's canary through steps under a gate (one controller at a time)",
        description=(
            "Step the canary percent in the control store through --steps, deciding each step "
            "from the evidence every process published there. Several may run: the one holding "
            "the lease drives, the others stand by and take over if it dies. Exit code: 0 "
            "promoted, 1 rolled back or aborted (or --timeout ran out), 2 usage error."
        ),
    )
    parser.add_argument("--db", required=True, metavar="PATH", help="the control store")
    parser.add_argument("--steps", default="1,5,25,50,100", help="percents, rising (1,5,25,50,100)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per evaluation")
    parser.add_argument("--min-comparisons", type=int, default=500)
    parser.add_argument("--max-mismatch-rate", type=float, default=0.001)
    parser.add_argument("--max-error-rate", type=float, default=0.001)
    parser.add_argument("--max-latency-ratio", type=float, default=1.25)
    parser.add_argument("--lease", type=float, default=10.0, help="lease seconds (10)")
    parser.add_argument("--name", default="rollout", help="the rollout's name in the store")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds")
    parser.set_defaults(func=run_rollout)


def run_rollout(args: argparse.Namespace) -> int:
    from dualrun.control.rollout import FleetRollout
    from dualrun.gate import Gate

    def show(entry: dict[str, Any]) -> None:
        print(
            f"step {entry['percent']:g}%: {entry['summary']} "
            f"({entry['processes']} processes reported, {entry['live_processes']} live)",
            flush=True,
        )

    try:
        steps = [float(part) for part in args.steps.split(",")]
        gate = Gate(
            min_comparisons=args.min_comparisons,
            max_mismatch_rate=args.max_mismatch_rate,
            max_error_rate=args.max_error_rate,
            max_latency_ratio=args.max_latency_ratio,
        )
        rollout = FleetRollout(
            SQLiteControl(args.db),
            steps,
            gate,
            args.interval,
            name=args.name,
            lease_seconds=args.lease,
            on_decision=show,
        )
    except ValueError as exc:
        print(f"dualrun rollout: {printable(exc)}", file=sys.stderr)
        return 2
    print(f"dualrun rollout {args.name}: {rollout.holder} taking part", flush=True)
    record = rollout.run(args.timeout)
    if record is None or record["state"] not in ("promoted", "rolled back", "aborted"):
        print("dualrun rollout: not finished", flush=True)
        return 1
    print(f"rollout {record['state']}: {record.get('reason')}", flush=True)
    return 0 if record["state"] == "promoted" else 1
