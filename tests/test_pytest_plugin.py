"""The pytest plugin, run with pytester on the example shop: its pricing package's two releases
become two commits of a temporary git repository, and the shop's test suite runs with the
working tree (1.5) as new and ``git:main`` (1.4) as old."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

SHOP = Path(__file__).resolve().parent.parent / "examples" / "shop"

# The shop's own tests of its pricing package: they pass on both releases.
SHOP_TESTS = """
from decimal import Decimal

import pricing
from pricing.engine import quote
from pricing.money import cents


def test_a_bolt_costs_something():
    assert Decimal(quote({"items": [{"sku": "bolt", "qty": 1}]})["total"]) > 0


def test_apples_in_euros():
    assert pricing.quote({"items": [{"sku": "apple", "qty": 3}]})["currency"] == "EUR"


def test_bulk_carts_get_a_discount():
    assert Decimal(quote({"items": [{"sku": "washer", "qty": 11}]})["discount"]) > 0


def test_coffee_is_exact():
    assert quote({"items": [{"sku": "coffee", "qty": 2}]})["subtotal"] == "15.98"


def test_cents_round_to_two_places():
    assert cents(Decimal("1.005")).as_tuple().exponent == -2


def test_unknown_skus_are_refused():
    import pytest

    with pytest.raises(KeyError):
        quote({"items": [{"sku": "nothing", "qty": 1}]})
"""


def plugin_args() -> list[str]:
    """``-p`` unless the installed distribution already registers the plugin (pytest11)."""
    names = {ep.name for ep in entry_points(group="pytest11")}
    return [] if "dualrun.pytest_plugin" in names else ["-p", "dualrun.pytest_plugin"]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def shop_repo(pytester: pytest.Pytester, git_env: None) -> Path:
    """A git repository: main holds pricing 1.4 and the tests; the working tree has 1.5."""
    repo = pytester.path
    shutil.copytree(SHOP / "pricing_v1" / "pricing", repo / "pricing")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_shop.py").write_text(SHOP_TESTS)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pricing 1.4")
    shutil.rmtree(repo / "pricing")
    shutil.copytree(SHOP / "pricing_v2" / "pricing", repo / "pricing")
    return repo


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        *plugin_args(), "--dualrun-old=git:main", "--dualrun-package=pricing", *args
    )


def route_counts(report: dict[str, Any]) -> dict[str, tuple[int, int, list[Any]]]:
    return {
        r["route"]: (
            r["comparisons"],
            r["mismatches"],
            sorted((d["path"], d["kind"], d["count"]) for d in r["divergences"]),
        )
        for r in report["routes"]
        if r["comparisons"]
    }


def test_the_suite_finds_the_planted_change_then_passes_once_accepted(
    pytester: pytest.Pytester, shop_repo: Path
) -> None:
    result = run(pytester, "--dualrun-report=report.json")
    result.assert_outcomes(passed=6)
    assert result.ret == 1  # every test passed, the divergences fail the session
    result.stdout.fnmatch_lines(
        [
            "*dualrun: pricing from git:main (old) vs this tree (new)*",
            "pricing.engine:quote: 5 calls compared, 2 mismatches",
            "  NEW pricing.engine:quote $.discount_reason extra: 1 call, e.g. <missing> -> *",
            "      tests/test_shop.py::test_bulk_carts_get_a_discount",
            "  NEW pricing.engine:quote $.lines[*].total value: 1 call, e.g. '0.12' -> '0.13'",
            "      tests/test_shop.py::test_a_bolt_costs_something",
            "  NEW pricing.money:cents $ value: 1 call, e.g. Decimal('1.00') -> Decimal('1.01')",
            "      tests/test_shop.py::test_cents_round_to_two_places",
            "dualrun: 6 divergences not in the baseline fail the session*",
        ]
    )
    report = json.loads((shop_repo / "report.json").read_text())
    counts = route_counts(report)
    assert counts["pricing.engine:quote"][:2] == (5, 2)
    assert counts["pricing.money:cents"][:2] == (1, 1)

    accepted = run(pytester, "--dualrun-accept", "--dualrun-baseline=baseline.json")
    assert accepted.ret == 0
    baseline = json.loads((shop_repo / "baseline.json").read_text())
    assert len(baseline["accepted"]) == 6
    assert {"route": "pricing.money:cents", "path": "$", "kind": "value"} in baseline["accepted"]

    again = run(pytester, "--dualrun-baseline=baseline.json")
    assert again.ret == 0, again.stdout.str()
    again.stdout.fnmatch_lines(
        ["*accepted pricing.money:cents $ value*", "*no divergence outside*"]
    )

    # A further, undocumented change fails again, and only it is new.
    engine = shop_repo / "pricing" / "engine.py"
    engine.write_text(
        engine.read_text().replace('VAT_RATE = Decimal("0.19")', 'VAT_RATE = Decimal("0.2")')
    )
    changed = run(pytester, "--dualrun-baseline=baseline.json")
    changed.assert_outcomes(passed=6)
    assert changed.ret == 1
    changed.stdout.fnmatch_lines(["  NEW pricing.engine:quote $.tax value: *"])
    assert "NEW pricing.money" not in changed.stdout.str()


@pytest.mark.slow
def test_xdist_workers_logs_merge_into_the_same_report(
    pytester: pytest.Pytester, shop_repo: Path
) -> None:
    alone = run(pytester, "--dualrun-report=alone.json")
    assert alone.ret == 1
    spread = run(pytester, "-n", "2", "--dualrun-report=spread.json")
    spread.assert_outcomes(passed=6)
    assert spread.ret == 1
    spread.stdout.fnmatch_lines(["      tests/test_shop.py::test_cents_round_to_two_places"])
    merged = json.loads((shop_repo / "spread.json").read_text())
    assert route_counts(merged) == route_counts(json.loads((shop_repo / "alone.json").read_text()))


def test_the_fixture_gives_tests_the_pair_and_the_dispatcher(
    pytester: pytest.Pytester, shop_repo: Path
) -> None:
    (shop_repo / "tests" / "test_pair.py").write_text(
        """
from decimal import Decimal


def test_both_versions(dualrun_pair):
    old = dualrun_pair.versions.old.resolve("pricing.money:cents")
    new = dualrun_pair.versions.new.resolve("pricing.money:cents")
    assert (old(Decimal("0.125")), new(Decimal("0.125"))) == (Decimal("0.12"), Decimal("0.13"))
    assert dualrun_pair.dispatcher.versions is dualrun_pair.versions
"""
    )
    result = run(pytester, "tests/test_pair.py")
    result.assert_outcomes(passed=1)
    assert result.ret == 0  # nothing was routed: direct calls are not compared


def test_calls_made_by_fixtures_are_attributed_to_their_test(
    pytester: pytest.Pytester, shop_repo: Path
) -> None:
    (shop_repo / "tests" / "test_fixture.py").write_text(
        """
import pytest
from pricing.engine import quote


@pytest.fixture
def bolt_quote():
    return quote({"items": [{"sku": "bolt", "qty": 1}]})


def test_uses_a_fixture(bolt_quote):
    assert bolt_quote["currency"] == "EUR"
"""
    )
    result = run(pytester, "tests/test_fixture.py")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["  NEW pricing.engine:quote $.total value: 1 call*", "      *::test_uses_a_fixture"]
    )


def test_an_old_version_that_cannot_load_is_a_usage_error(
    pytester: pytest.Pytester, shop_repo: Path
) -> None:
    result = pytester.runpytest_subprocess(
        *plugin_args(), "--dualrun-old=git:no-such-branch", "--dualrun-package=pricing"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*dualrun:*old*no-such-branch*"])


def test_without_the_options_the_fixture_says_what_it_needs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_pair(dualrun_pair):\n    pass\n")
    result = pytester.runpytest_subprocess(*plugin_args())
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*dualrun_pair needs the dualrun session*--dualrun-old*"])


def test_half_the_options_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(*plugin_args(), "--dualrun-old=git:main")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dualrun-old and --dualrun-package go together*"])


def test_a_missing_baseline_is_a_usage_error(pytester: pytest.Pytester, shop_repo: Path) -> None:
    result = run(pytester, "--dualrun-baseline=nowhere.json")
    assert result.ret != 0
    assert "write it with --dualrun-accept" in result.stdout.str() + result.stderr.str()
