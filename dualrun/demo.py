"""``dualrun demo``: the bundled pricing engine, old and new version, in one process.

The demo needs nothing but the installed package: both versions of ``pricing`` ship as package
data under ``dualrun/demo_versions/``. 1.5.0 fixes the rounding of 1.4.0 (half up to cents in
decimal instead of float ``round``) and lowers the bulk discount threshold from 10 to 8 items,
so the two disagree on some carts and agree on the rest.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, TextIO

import dualrun
from dualrun.loading import VersionPair

NAME = "pricing"
SKUS = ("bolt-m6", "washer-m6", "nut-m6", "bracket", "hinge", "drill-bit", "glue", "toolbox")
COUNTRIES = ("DE", "FR", "NL", "AT")
COUPONS = ("WELCOME10", "SPRING5")
NOISE_FIELDS = ("generated_at", "quote_id")  # differ on every call, even within one version

Cart = dict[str, Any]
Quoter = Callable[[Cart], dict[str, Any]]


@dataclass(frozen=True)
class Comparison:
    """How the two versions' quotes for the same carts compare, field noise left out."""

    carts: int
    totals_differ: int
    differ_with_bulk_change: int  # carts of 8 or 9 items: the bulk rule changed for them
    quotes_differ: int  # any field other than the noise fields

    @property
    def agree(self) -> int:
        return self.carts - self.quotes_differ


def demo_sources() -> tuple[Path, Path]:
    """The directories of the bundled old and new ``pricing``, wherever dualrun is installed."""
    base = files("dualrun") / "demo_versions"
    old, new = Path(str(base / "old")), Path(str(base / "new"))
    for path in (old, new):
        if not (path / NAME / "__init__.py").is_file():
            raise FileNotFoundError(
                f"the demo's package data is missing: {path / NAME} (reinstall dualrun)"
            )
    return old, new


def load_demo() -> VersionPair:
    """Load both bundled versions side by side; the caller unloads them."""
    old, new = demo_sources()
    return dualrun.load(NAME, old=str(old), new=str(new))


def sample_carts(n: int, seed: int = 7) -> list[Cart]:
    """Deterministic carts: 1-4 distinct SKUs of 1-5 pieces, a country, sometimes a coupon."""
    rng = random.Random(seed)
    carts: list[Cart] = []
    for _ in range(n):
        skus = rng.sample(SKUS, rng.randint(1, 4))
        carts.append(
            {
                "currency": "EUR",
                "country": rng.choice(COUNTRIES),
                "coupon": rng.choice(COUPONS) if rng.random() < 0.15 else None,
                "items": [{"sku": sku, "qty": rng.randint(1, 5)} for sku in skus],
            }
        )
    return carts


def item_count(cart: Cart) -> int:
    return sum(int(item["qty"]) for item in cart["items"])


def without_noise(result: dict[str, Any]) -> dict[str, Any]:
    """A quote without the fields that change on every call (timestamp, id)."""
    return {k: v for k, v in result.items() if k not in NOISE_FIELDS}


def quoters(versions: VersionPair) -> tuple[Quoter, Quoter]:
    """``pricing.engine.quote`` of the old and of the new version."""
    old: Quoter = versions.old.resolve("pricing.engine:quote")
    new: Quoter = versions.new.resolve("pricing.engine:quote")
    return old, new


def compare(versions: VersionPair, carts: Sequence[Cart]) -> Comparison:
    """Quote every cart with both versions and count where they disagree."""
    old, new = quoters(versions)
    totals = bulk = quotes = 0
    for cart in carts:
        a, b = old(cart), new(cart)
        if a["total"] != b["total"]:
            totals += 1
            bulk += item_count(cart) in (8, 9)
        quotes += without_noise(a) != without_noise(b)
    return Comparison(len(carts), totals, bulk, quotes)


def print_coexistence(versions: VersionPair, out: TextIO) -> None:
    """Show that both versions are loaded at once, each in a namespace of its own."""
    print("Two versions of 'pricing', loaded side by side in one process:", file=out)
    for version in versions:
        module = version.module
        print(
            f"  {version.label}  pricing {module.VERSION:<6}  as {module.__name__:<20}"
            f"  from {version.source}",
            file=out,
        )
    rules = [v.import_module("pricing.rules") for v in versions]
    quotes = [v.resolve("pricing:Quote") for v in versions]
    print(f"  'pricing' in sys.modules: {NAME in sys.modules}", file=out)
    print(
        f"  module state is per version: bulk discount from {rules[0].BULK_MIN_ITEMS} items (old)"
        f", {rules[1].BULK_MIN_ITEMS} items (new)",
        file=out,
    )
    print(f"  classes are distinct: old Quote is new Quote -> {quotes[0] is quotes[1]}", file=out)


def print_samples(versions: VersionPair, carts: Sequence[Cart], out: TextIO) -> None:
    """Old and new total for a few carts, side by side."""
    old, new = quoters(versions)
    print("\nTotals for a few sample carts (EUR):", file=out)
    print(f"  {'cart':<5}{'items':>5}  {'country':<7}  {'old':>8}  {'new':>8}", file=out)
    for i, cart in enumerate(carts):
        a, b = old(cart)["total"], new(cart)["total"]
        mark = "same" if a == b else "DIFFERS"
        print(
            f"  #{i:<4}{item_count(cart):>5}  {cart['country']:<7}  {a:>8.2f}  {b:>8.2f}  {mark}",
            file=out,
        )


def print_comparison(result: Comparison, seed: int, out: TextIO) -> None:
    """The summary over many carts: how many disagree, and why."""
    rounding = result.totals_differ - result.differ_with_bulk_change
    print(f"\nAll {result.carts} sample carts (seed {seed}):", file=out)
    print(
        f"  totals differ on {result.totals_differ} "
        f"({100 * result.totals_differ / max(result.carts, 1):.1f}%): "
        f"{result.differ_with_bulk_change} have 8 or 9 items (the bulk rule changed),\n"
        f"  {rounding} others (the rounding fix)",
        file=out,
    )
    print(
        f"  quotes differ in some field on {result.quotes_differ}, agree on {result.agree}\n"
        f"  (ignoring {' and '.join(NOISE_FIELDS)}: they differ on every call, even within one"
        " version)",
        file=out,
    )


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a count is 0 or more, got {value}")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The demo's options; ``dualrun.cli`` passes its ``demo`` subparser in."""
    parser = parser or argparse.ArgumentParser(prog="dualrun demo", description=__doc__)
    parser.add_argument("--carts", type=_count, default=1000, help="sample carts to compare")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sample carts")
    parser.add_argument("--show", type=_count, default=8, help="carts to print one by one")
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Load both versions, show they coexist, compare them on sample carts, unload them."""
    out = out or sys.stdout
    carts: int = args.carts
    seed: int = args.seed
    show: int = args.show
    versions = load_demo()
    try:
        print_coexistence(versions, out)
        sample = sample_carts(max(carts, show), seed)
        print_samples(versions, sample[:show], out)
        print_comparison(compare(versions, sample[:carts]), seed, out)
    finally:
        versions.unload()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dualrun demo``; returns the exit code."""
    return run(build_parser().parse_args(argv))
