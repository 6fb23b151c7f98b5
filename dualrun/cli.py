"""The ``dualrun`` command line: one subcommand per task, each a thin shell over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from dualrun import demo, replay
from dualrun.control import cli as control_cli
from dualrun.render import printable

Handler = Callable[[argparse.Namespace], int]


def _version() -> str:
    try:
        return version("dualrun")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The parser; each subcommand stores its handler as ``func``."""
    parser = argparse.ArgumentParser(
        prog="dualrun",
        description="Run two versions of the same Python code in one process.",
    )
    parser.add_argument("--version", action="version", version=f"dualrun {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo",
        help="run the bundled example: two versions of a pricing engine side by side",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.build_parser(demo_parser)
    demo_parser.set_defaults(func=_run_demo)
    report_parser = commands.add_parser(
        "report",
        help="the divergence report from one or many event logs (JSON lines)",
        description=(
            "Add up the event logs of any number of processes and print the report. Exit code: "
            "0 when every line was read, 1 when some files or lines were skipped (each named "
            "on stderr), 2 when nothing could be read or the arguments are wrong."
        ),
    )
    report_parser.add_argument("files", nargs="+", metavar="FILE", help="event log files")
    report_parser.add_argument(
        "--format", choices=("text", "markdown", "json", "html"), default="text"
    )
    report_parser.add_argument("--route", help="only this route (a glob such as 'pricing.*')")
    report_parser.add_argument("--since", help="from this time: ISO 8601 with zone, or epoch")
    report_parser.add_argument("--until", help="up to this time: ISO 8601 with zone, or epoch")
    report_parser.add_argument("--top", type=int, help="at most N divergences per route")
    report_parser.add_argument(
        "--max-routes",
        type=int,
        default=1000,
        help="hold at most N routes (the first seen); the others are counted (default 1000)",
    )
    report_parser.set_defaults(func=_run_report)
    pin_parser = commands.add_parser(
        "pin-token",
        help="mint a signed token that pins requests to a version (web middleware)",
        description=(
            "Print a token for the X-Dualrun-Version header (or pin cookie) that the web "
            "middleware honours when configured with Pins(secret=...). The secret is read from "
            "the environment variable DUALRUN_PIN_SECRET (or --secret-env NAME) or from "
            "--secret-file, never from the command line, where other users could see it."
        ),
    )
    pin_parser.add_argument("label", choices=("old", "new"), help="the version to pin to")
    pin_parser.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until the token expires (3600)"
    )
    pin_parser.add_argument("--secret-env", default="DUALRUN_PIN_SECRET", metavar="NAME")
    pin_parser.add_argument("--secret-file", metavar="PATH", help="read the secret from a file")
    pin_parser.set_defaults(func=_run_pin_token)
    replay.add_commands(commands)  # replay, diff
    control_cli.add_control_parser(commands)
    control_cli.add_rollout_parser(commands)
    return parser


def _run_pin_token(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from dualrun.pins import mint

    try:
        if args.secret_file is not None:
            secret = Path(args.secret_file).read_text().strip()
        else:
            secret = os.environ.get(args.secret_env, "")
            if not secret:
                raise ValueError(f"set the secret in ${args.secret_env} or give --secret-file")
        print(mint(args.label, secret, args.ttl))
    except (OSError, ValueError) as exc:
        print(f"dualrun pin-token: {printable(exc)}", file=sys.stderr)
        return 2
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from dualrun.logread import parse_time, report_from_logs

    try:
        since = None if args.since is None else parse_time(args.since)
        until = None if args.until is None else parse_time(args.until)
        if args.top is not None and args.top < 1:
            raise ValueError(f"--top is a whole number >= 1, got {args.top}")
        if args.max_routes < 1:
            raise ValueError(f"--max-routes is a whole number >= 1, got {args.max_routes}")
    except ValueError as exc:
        print(f"dualrun report: {printable(exc)}", file=sys.stderr)
        return 2

    def problem(message: str) -> None:  # file names and line contents are shown, not obeyed
        print(f"dualrun report: {printable(message)}", file=sys.stderr)

    report, totals = report_from_logs(
        args.files, problem, args.route, since, until, max_routes=args.max_routes
    )
    if totals.events == 0:
        print("dualrun report: no events could be read", file=sys.stderr)
        return 2
    render = {
        "text": report.to_text,
        "markdown": report.to_markdown,
        "html": report.to_html,
        "json": report.to_json,
    }[args.format]
    text = render(args.top)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 1 if totals.problems else 0


def _run_demo(args: argparse.Namespace) -> int:
    return demo.run(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dualrun`` console script; returns the exit code (2: usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return func(args)
