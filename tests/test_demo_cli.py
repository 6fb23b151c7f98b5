"""The bundled demo, the ``dualrun`` command line, and the demo's package data."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest

from dualrun import cli, demo
from dualrun.loading import VersionPair

REPO = Path(__file__).resolve().parent.parent
MODULES = {
    "old": ("__init__", "catalog", "engine", "rules", "tax"),
    "new": ("__init__", "catalog", "engine", "money", "rules", "tax"),
}


def dualrun_modules() -> set[str]:
    return {name for name in sys.modules if name.startswith("_dualrun_")}


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Whatever a test loads, it unloads: no new ``_dualrun_`` module survives it."""
    before, host_pricing = dualrun_modules(), sys.modules.get("pricing")
    yield
    assert dualrun_modules() <= before
    assert sys.modules.get("pricing") is host_pricing


@pytest.fixture
def versions(no_leftovers: None) -> Iterator[VersionPair]:
    pair = demo.load_demo()
    try:
        yield pair
    finally:
        pair.unload()


def test_cli_demo_prints_both_versions_side_by_side(
    no_leftovers: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "demo.jsonl"
    assert cli.main(["demo", "--carts", "200", "--show", "4", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    assert "old  pricing 1.4.0" in out
    assert "new  pricing 1.5.0" in out
    assert out.count("as _dualrun_") == 2
    assert "'pricing' in sys.modules: False" in out
    assert "bulk discount from 10 items (old), 8 items (new)" in out
    assert "old Quote is new Quote -> False" in out
    assert "All 200 sample carts (seed 7)" in out
    assert "DIFFERS" in out and "same" in out
    # It routes: a canary share of the requests, sticky per customer.
    served = re.search(r"old served (\d+), new served (\d+)", out)
    assert served is not None
    old_calls, new_calls = int(served[1]), int(served[2])
    assert old_calls + new_calls == 200 and 0 < new_calls < old_calls
    # It shadows and reports the mismatches with their paths; calibration finds the noise.
    assert "$.total" in out and "$.lines[*].total" in out
    assert "calibration: $.generated_at, $.quote_id differ" in out
    # It writes a log whose report is the same, and shows how to get the HTML page.
    assert f"dualrun report {log} --format html" in out
    assert cli.main(["report", str(log), "--top", "5"]) == 0
    from_log = capsys.readouterr().out
    assert from_log.strip() in out
    # It rolls out twice: rolled back on the strict gate, promoted once the changes are accepted.
    assert "rollout rolled back [1%] 5% 25% 50% 100%  rollback after" in out
    assert "rollout promoted    1% 5% 25% 50% [100%]" in out
    assert out.rstrip().endswith("result: promoted")


def test_demo_main_takes_its_own_arguments(
    no_leftovers: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "demo.jsonl"
    assert (
        demo.main(
            ["--carts", "30", "--seed", "1", "--show", "0", "--no-rollout", "--log", str(log)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "All 30 sample carts (seed 1)" in out
    assert "30 requests from" in out
    assert "Rollout" not in out
    assert log.is_file()


def test_python_m_dualrun_demo_runs_in_a_fresh_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dualrun", "demo", "--carts", "100"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "'pricing' in sys.modules: False" in done.stdout
    assert "totals differ on" in done.stdout


def test_dualrun_without_a_command_prints_help_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().err
    done = subprocess.run(
        [sys.executable, "-m", "dualrun"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "usage: dualrun" in done.stderr


def test_unknown_command_and_bad_counts_are_usage_errors() -> None:
    with pytest.raises(SystemExit) as unknown:
        cli.main(["frobnicate"])
    with pytest.raises(SystemExit) as negative:
        cli.main(["demo", "--carts", "-3"])
    assert unknown.value.code == negative.value.code == 2


def test_the_versions_differ_on_some_carts_and_agree_on_others(versions: VersionPair) -> None:
    carts = demo.sample_carts(400, seed=11)
    result = demo.compare(versions, carts)
    assert 0 < result.totals_differ < result.carts
    assert 0 < result.quotes_differ < result.carts
    # both changes show: the bulk rule (8 or 9 items) and the rounding fix (any other size)
    assert 0 < result.differ_with_bulk_change < result.totals_differ


def test_the_rounding_fix_and_the_rule_change(versions: VersionPair) -> None:
    old, new = demo.quoters(versions)
    one_bolt = {"country": "DE", "items": [{"sku": "bolt-m6", "qty": 1}]}  # 0.125 EUR
    assert old(one_bolt)["lines"][0]["total"] == 0.12  # float round: half to even
    assert new(one_bolt)["lines"][0]["total"] == 0.13  # decimal: half up
    nine_hinges = {"country": "DE", "items": [{"sku": "hinge", "qty": 9}]}
    assert old(nine_hinges)["discount"] == 0.0
    assert new(nine_hinges)["discount"] == 1.96  # 5% of 39.15, from 8 items on
    ten_hinges = {"country": "FR", "items": [{"sku": "hinge", "qty": 10}]}
    assert demo.without_noise(old(ten_hinges)) == demo.without_noise(new(ten_hinges))


def test_noise_fields_differ_on_every_call(versions: VersionPair) -> None:
    old, _ = demo.quoters(versions)
    cart = demo.sample_carts(1)[0]
    first, second = old(cart), old(cart)
    assert first["quote_id"] != second["quote_id"]
    assert demo.without_noise(first) == demo.without_noise(second)


def test_quote_class_and_async_entry_point(versions: VersionPair) -> None:
    import asyncio

    cart = demo.sample_carts(1)[0]
    for version in versions:
        expected = version.module.quote(cart)["total"]
        assert version.module.Quote(cart).total() == expected
        assert asyncio.run(version.module.quote_async(cart))["total"] == expected


def test_sample_carts_are_deterministic() -> None:
    assert demo.sample_carts(20, seed=5) == demo.sample_carts(20, seed=5)
    assert demo.sample_carts(20, seed=5) != demo.sample_carts(20, seed=6)


def test_package_data_is_present() -> None:
    base = files("dualrun") / "demo_versions"
    assert (base / "new" / "pricing" / "engine.py").is_file()
    for label, modules in MODULES.items():
        for module in modules:
            assert (base / label / "pricing" / f"{module}.py").is_file(), (label, module)
    assert [Path(str(p)) for p in demo.demo_sources()] == [
        Path(str(base / "old")),
        Path(str(base / "new")),
    ]


def test_a_built_wheel_ships_every_demo_file(tmp_path: Path) -> None:
    """``pip install .`` must carry the demo: build the wheel from a clean copy and look inside."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "dualrun", src / "dualrun", ignore=ignore)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("dualrun-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        p.relative_to(src).as_posix() for p in (src / "dualrun" / "demo_versions").rglob("*.py")
    }
    assert expected and expected <= names
    assert {"dualrun/demo.py", "dualrun/cli.py", "dualrun/__main__.py"} <= names
