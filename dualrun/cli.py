"""The ``dualrun`` command line: one subcommand per task, each a thin shell over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from dualrun import demo

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
    return parser


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
