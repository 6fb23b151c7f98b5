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
import tempfile
import threading
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
FINAL_STATES = ("promoted", "rolled back", "aborted")
NOISE_PATHS = tuple(f"$.{name}" for name in NOISE_FIELDS)

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
    """The summary over many carts, compared directly: how many disagree, and why."""
    rounding = result.totals_differ - result.differ_with_bulk_change
    print(f"\nAll {result.carts} sample carts (seed {seed}):", file=out)
    print(
        f"  totals differ on {result.totals_differ} "
        f"({100 * result.totals_differ / max(result.carts, 1):.1f}%): "
        f"{result.differ_with_bulk_change} have 8 or 9 items (the bulk rule changed),\n"
        f"  {rounding} others (the rounding fix)",
        file=out,
    )


def heading(title: str, out: TextIO) -> None:
    print(f"\n== {title} ==", file=out)


def customer(i: int) -> str:
    """Requests come from a few hundred customers, so each comes back several times."""
    return f"customer-{(i * 7919) % 400}"


def serve(quote: Quoter, carts: Sequence[Cart]) -> list[str]:
    """One request per cart, each in a request context keyed by its customer."""
    served = []
    for i, cart in enumerate(carts):
        with dualrun.context(key=customer(i)):
            quote(cart)
        served.append(customer(i))
    return served


def canary_and_shadow(versions: VersionPair, carts: Sequence[Cart], log: Path, out: TextIO) -> None:
    """A 20% canary, sticky per customer, with the other version shadowing every request."""
    heading("Canary and shadow: 20% of customers get 1.5.0, the other version runs beside", out)
    d = dualrun.Dispatcher(
        versions,
        policy=dualrun.Canary(20, salt="demo"),
        shadow=dualrun.Shadow(primary="any", calibrate=True),
        log=log,
    )
    serve(d.route("pricing.engine:quote"), carts)
    d.close()
    report = d.report()
    route = report.route("pricing.engine:quote")
    calls = route.calls
    total = calls["old"] + calls["new"]
    print(
        f"  {total} requests from {len({customer(i) for i in range(len(carts))})} customers: "
        f"old served {calls['old']}, new served {calls['new']} "
        f"({100 * calls['new'] / max(total, 1):.1f}%); a customer always gets the same version",
        file=out,
    )
    print(report.to_text(top=5), file=out, end="")
    noise = ", ".join(d.path for d in route.noise_divergences)
    print(
        f"  calibration: {noise or 'nothing'} differ between two runs of one version: noise",
        file=out,
    )
    print(
        f"\n  event log: {log}\n  the same report from the log, as a page: "
        f"dualrun report {log} --format html > report.html",
        file=out,
    )


def contract(quote: dict[str, Any]) -> tuple[Any, ...]:
    """What must not change between versions: currency, and the SKUs and quantities quoted."""
    return quote["currency"], [(line["sku"], line["qty"]) for line in quote["lines"]]


def rollout(versions: VersionPair, carts: Sequence[Cart], out: TextIO, **shadow: Any) -> str:
    """An automatic rollout under a small gate while requests flow; returns its final state."""
    d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(primary="any", **shadow))
    quote = d.route("pricing.engine:quote")
    gate = dualrun.Gate(
        min_comparisons=150, max_mismatch_rate=0.02, max_error_rate=0.02, max_latency_ratio=3.0
    )
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            with dualrun.context(key=customer(i)):
                quote(carts[i % len(carts)])
            i += 1

    seen = [0]

    def progress(status: dualrun.RolloutStatus) -> None:
        """A line per gate decision, and one when the rollout ends."""
        if len(status.decisions) > seen[0] or status.state in FINAL_STATES:
            seen[0] = len(status.decisions) + (status.state in FINAL_STATES)
            print("  " + status.line(), file=out)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        status = dualrun.Rollout(
            d, steps=[1, 5, 25, 50, 100], gate=gate, interval=0.05, on_change=progress
        ).run(timeout=20)
    finally:
        stop.set()
        worker.join()
        d.close()
    return status.state


def rollouts(versions: VersionPair, carts: Sequence[Cart], out: TextIO) -> None:
    """The strict gate rolls 1.5.0 back; once its changes are accepted, it is promoted."""
    heading("Rollout: 1% -> 5% -> 25% -> 50% -> 100% while the gate passes", out)
    print(
        "  comparing whole quotes (the rounding fix and the bulk rule count as mismatches):",
        file=out,
    )
    rollout(versions, carts, out, ignore=NOISE_PATHS)
    print("\n  after review both changes are intended: compare what must not change", file=out)
    print("  (currency, SKUs and quantities) and roll out again:", file=out)
    state = rollout(versions, carts, out, compare=lambda old, new: contract(old) == contract(new))
    print(f"  result: {state}", file=out)


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
    parser.add_argument(
        "--log",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dualrun-demo.jsonl",
        help="event log to write (JSON lines; replaced on each run)",
    )
    parser.add_argument("--no-rollout", action="store_true", help="skip the rollouts")
    return parser


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Load both versions, show they coexist, compare them on sample carts, unload them."""
    out = out or sys.stdout
    carts: int = args.carts
    seed: int = args.seed
    show: int = args.show
    log: Path = args.log
    log.unlink(missing_ok=True)
    versions = load_demo()
    try:
        heading("Two versions of one package, side by side", out)
        print_coexistence(versions, out)
        sample = sample_carts(max(carts, show), seed)
        print_samples(versions, sample[:show], out)
        print_comparison(compare(versions, sample[:carts]), seed, out)
        if carts:
            canary_and_shadow(versions, sample[:carts], log, out)
            if not args.no_rollout:
                rollouts(versions, sample[:carts], out)
    finally:
        versions.unload()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dualrun demo``; returns the exit code."""
    return run(build_parser().parse_args(argv))
