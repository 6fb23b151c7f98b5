"""Record in production, replay anywhere: the typed JSON format, the recording (sampling,
redaction, identity, rotation), and replays whose reports equal the in-process shadow's."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import math
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dualrun
from dualrun.cli import main
from dualrun.compare import Differ, type_name
from dualrun.recording import REDACTED, Recording, read_calls
from dualrun.replay import replay, replay_against_recorded
from dualrun.typedjson import RecordedObject, Unrecorded, decode, encode

PRICES = '''
    from dataclasses import dataclass
    from decimal import ROUND_HALF_UP, Decimal


    @dataclass
    class Line:
        sku: str
        amount: Decimal
        tags: tuple


    def charge(amount, quantity=1, password=None):
        """Total in cents, half a cent rounded up."""
        if amount < 0:
            raise ValueError(f"negative amount {amount}")
        total = (amount * quantity).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        return {"line": Line("sku-1", amount, ("a", "b")), "total": total}


    def lines(items):
        return [Line(item.sku, item.amount, tuple(item.tags)) for item in items]


    async def charge_async(amount):
        return charge(amount)
'''
OLD = {"shop/__init__.py": "", "shop/prices.py": PRICES}
NEW = {"shop/__init__.py": "", "shop/prices.py": PRICES.replace("ROUND_HALF_UP", "ROUND_HALF_EVEN")}


@pytest.fixture
def shop_dirs(write_tree: Callable[[str, dict[str, str]], Path]) -> tuple[Path, Path]:
    return write_tree("old", OLD), write_tree("new", NEW)


@pytest.fixture
def shop(
    shop_dirs: tuple[Path, Path], load_pair: Callable[..., dualrun.VersionPair]
) -> dualrun.VersionPair:
    return load_pair("shop", old=str(shop_dirs[0]), new=str(shop_dirs[1]))


def amounts(n: int) -> list[Decimal]:
    """n amounts in tenths of a cent: one in twenty is a tie that the two roundings split."""
    return [Decimal(i) / 1000 for i in range(n)]


def call_lines(path: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if e["event"] == "dualrun.call"]


# -- the format -------------------------------------------------------------------------------

atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.decimals(allow_nan=False),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.uuids(),
    st.fractions(),
)
hashables = st.recursive(
    atoms, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=4
)
values = st.recursive(
    atoms,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.sets(hashables, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        | st.dictionaries(hashables, inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_typed_json_round_trips_every_supported_value(value: Any) -> None:
    text = json.dumps(encode(value), allow_nan=False)
    back = decode(json.loads(text))
    assert back == value
    assert type(back) is type(value)
    assert Differ().diff(value, back) == []


def test_records_come_back_as_objects_the_comparison_reads_alike() -> None:
    @dataclasses.dataclass
    class Quote:
        total: Decimal
        when: dt.datetime
        lines: list[Any]

    quote = Quote(Decimal("1.10"), dt.datetime(2026, 1, 2, tzinfo=dt.UTC), [(1, b"x")])
    back = decode(json.loads(json.dumps(encode(quote))))
    assert isinstance(back, RecordedObject)
    assert type_name(back) == type_name(quote)
    assert (back.total, back.when, back.lines) == (quote.total, quote.when, quote.lines)
    assert Differ().diff(quote, back) == []
    changed = decode(json.loads(json.dumps(encode(dataclasses.replace(quote, total=1)))))
    [difference] = Differ().diff(back, changed)
    assert (difference.path, difference.kind) == ("$.total", "type")


def test_what_has_no_faithful_form_is_marked_not_guessed() -> None:
    cycle: list[Any] = [1]
    cycle.append(cycle)
    encoded = encode({"f": len, "cycle": cycle, "nan": math.nan, "e": ValueError("x")})
    back = decode(json.loads(json.dumps(encoded)))
    assert isinstance(back["f"], Unrecorded) and back["f"].type.endswith("function_or_method")
    assert isinstance(back["cycle"][1], Unrecorded)
    assert math.isnan(back["nan"])
    assert type_name(back["e"]) == "builtins.ValueError" and str(back["e"]) == "x"


def test_reading_never_imports_or_runs_what_the_file_names(tmp_path: Path) -> None:
    name = f"not_imported_{uuid.uuid4().hex}"
    data = {"$object": {"type": f"{name}.Evil", "fields": {"__class__": 1, "x": [1]}}}
    back = decode(data)
    assert name not in sys.modules
    assert type(back).__module__ == name and isinstance(back, RecordedObject)
    assert back.x == [1]
    for bad in ({"$pickle": "gASV"}, {"$decimal": {"x": 1}}, {"$tuple": 3}, {"$bytes": "%%"}):
        with pytest.raises(ValueError):
            decode(bad)


# -- recording ---------------------------------------------------------------------------------


def test_a_recording_holds_arguments_and_results_redacted_with_the_logs_identity(
    shop: dualrun.VersionPair, tmp_path: Path
) -> None:
    record = Recording(
        tmp_path / "calls.jsonl",
        redact=lambda path, value: "<email>" if isinstance(value, str) and "@" in value else value,
    )
    d = dualrun.Dispatcher(shop, record=record, log=tmp_path / "log.jsonl")
    charge = d.route("shop.prices:charge")
    with dualrun.context(key="someone@example.com"):
        assert charge(Decimal("1.005"), quantity=2, password="hunter2")["total"] == Decimal("2.01")
    with pytest.raises(ValueError):
        charge(Decimal(-1))
    d.close()
    text = (tmp_path / "calls.jsonl").read_text()
    assert "hunter2" not in text and "someone@" not in text
    first, second = call_lines(tmp_path / "calls.jsonl")
    log_run = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["run"]
    assert first["run"] == second["run"] == log_run
    assert first["kwargs"] == {"quantity": 2, "password": REDACTED}
    assert first["key"] == "<email>"
    assert first["args"] == [{"$decimal": "1.005"}]
    assert first["result"]["total"] == {"$decimal": "2.01"}
    assert second["error"] == {"type": "builtins.ValueError", "message": "negative amount -1"}
    assert d.recording is not None and d.recording.stats()["recorded"] == 2


def test_sampling_and_route_globs_choose_what_is_recorded(
    shop: dualrun.VersionPair, tmp_path: Path
) -> None:
    d = dualrun.Dispatcher(
        shop, record=Recording(tmp_path / "r.jsonl", sample=30, routes="*:charge")
    )
    charge, lines = d.route("shop.prices:charge"), d.route("shop.prices:lines")
    for amount in amounts(2000):
        charge(amount)
    lines([])
    d.close()
    recorded = call_lines(tmp_path / "r.jsonl")
    assert {e["route"] for e in recorded} == {"shop.prices:charge"}
    assert 450 < len(recorded) < 750  # 30% of 2000, binomial sd ~20


def test_recording_rotates_within_its_bound(shop: dualrun.VersionPair, tmp_path: Path) -> None:
    d = dualrun.Dispatcher(shop, record=Recording(tmp_path / "r.jsonl", max_bytes=4096, backups=2))
    charge = d.route("shop.prices:charge")
    for amount in amounts(300):
        charge(amount)
    d.close()
    files = sorted(p.name for p in tmp_path.glob("r.jsonl*"))
    assert files == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    # Every file starts with the identity header and holds whole calls, the newest ones kept.
    seqs = []
    for name in files:
        lines = (tmp_path / name).read_text().splitlines()
        assert json.loads(lines[0])["event"] == "dualrun.recording"
        seqs += [e["seq"] for e in map(json.loads, lines[1:])]
    assert max(seqs) == 300 and len(seqs) == len(set(seqs))


def test_a_capped_recording_stops_and_counts(shop: dualrun.VersionPair, tmp_path: Path) -> None:
    d = dualrun.Dispatcher(shop, record=Recording(tmp_path / "r.jsonl", max_bytes=4096, backups=0))
    charge = d.route("shop.prices:charge")
    for amount in amounts(300):
        charge(amount)
    d.close()
    assert [p.name for p in tmp_path.glob("r.jsonl*")] == ["r.jsonl"]
    assert (tmp_path / "r.jsonl").stat().st_size <= 4096
    stats = d.recording.stats()  # type: ignore[union-attr]
    assert stats["recorded"] + stats["dropped"] == 300 and stats["dropped"] > 250


def test_a_full_queue_drops_calls_and_never_blocks_the_caller(
    shop: dualrun.VersionPair, tmp_path: Path
) -> None:
    d = dualrun.Dispatcher(shop, record=Recording(tmp_path / "r.jsonl", queue_size=1))
    tap = d.recording
    assert tap is not None
    entered, release = threading.Event(), threading.Event()
    write = tap._write

    def slow_write(record: dict[str, Any]) -> None:
        entered.set()
        release.wait(10)
        write(record)

    tap._write = slow_write  # type: ignore[method-assign]
    charge = d.route("shop.prices:charge")
    charge(Decimal(0))
    assert entered.wait(10)  # the writer holds the first call
    for amount in amounts(5):
        charge(amount)  # the queue takes one more: four are dropped
    assert tap.stats()["dropped"] == 4
    release.set()
    d.close()
    assert tap.stats() == {"recorded": 2, "dropped": 4, "last_error": None}
    assert len(call_lines(tmp_path / "r.jsonl")) == 2


def test_async_routes_are_recorded(shop: dualrun.VersionPair, tmp_path: Path) -> None:
    d = dualrun.Dispatcher(shop, record=tmp_path / "r.jsonl")
    charge = d.route("shop.prices:charge_async")
    assert asyncio.run(charge(Decimal("0.125")))["total"] == Decimal("0.13")
    d.close()
    (event,) = call_lines(tmp_path / "r.jsonl")
    assert event["route"] == "shop.prices:charge_async" and event["version"] == "old"


def test_bad_recording_options_fail_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Recording sample is a percent"):
        Recording(tmp_path / "r", sample=101)
    with pytest.raises(ValueError, match="directory"):
        Recording(tmp_path)
    with pytest.raises(ValueError, match="max_bytes"):
        Recording(tmp_path / "r", max_bytes=10)
    with pytest.raises(TypeError, match="Recording path"):
        Recording(3)  # type: ignore[arg-type]


# -- replay ------------------------------------------------------------------------------------


def record_and_shadow(versions: dualrun.VersionPair, path: Path, n: int) -> dualrun.Report:
    """n calls served by old, shadowed inline and recorded; the in-process report."""
    d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(), record=path)
    charge, lines = d.route("shop.prices:charge"), d.route("shop.prices:lines")
    for amount in amounts(n):
        charge(amount)
    with pytest.raises(ValueError):
        charge(Decimal("-0.5"))

    @dataclasses.dataclass
    class Item:
        sku: str
        amount: Decimal
        tags: list[str]

    lines([Item("a", Decimal("1.5"), ["x"]), Item("b", Decimal(2), [])])
    d.close()
    return d.report()


def counts(report: dualrun.Report) -> list[tuple[Any, ...]]:
    return [
        (
            r.route,
            r.comparisons,
            r.matches,
            r.mismatches,
            r.errors,
            [(g.path, g.kind, g.count) for g in r.divergences],
        )
        for r in report.routes
    ]


def test_a_replay_reports_what_the_shadow_reported_in_process(
    shop: dualrun.VersionPair, tmp_path: Path
) -> None:
    live = record_and_shadow(shop, tmp_path / "r.jsonl", 400)
    calls = list(read_calls([str(tmp_path / "r.jsonl")], pytest.fail))
    assert len(calls) == 402
    replayed = replay(calls, shop)
    assert replayed.calls == 402 and replayed.skipped == 0 and replayed.divergent
    assert counts(replayed.report) == counts(live)
    assert counts(live)[0][3] == 20  # the ties among 400 tenths of a cent


def test_against_recorded_compares_new_with_the_recorded_results(
    shop: dualrun.VersionPair, tmp_path: Path
) -> None:
    live = record_and_shadow(shop, tmp_path / "r.jsonl", 400)
    calls = list(read_calls([str(tmp_path / "r.jsonl")], pytest.fail))
    against_new = replay_against_recorded(calls, shop.new)
    assert counts(against_new.report) == counts(live)
    against_old = replay_against_recorded(calls, shop.old)
    assert not against_old.divergent
    assert against_old.report.route("shop.prices:lines").matches == 1


def test_calls_with_unrecorded_arguments_are_skipped_and_counted(
    shop: dualrun.VersionPair, tmp_path: Path
) -> None:
    d = dualrun.Dispatcher(shop, record=tmp_path / "r.jsonl")
    lines = d.route("shop.prices:lines")
    with pytest.raises(AttributeError):
        lines([len])
    d.close()
    replayed = replay(read_calls([str(tmp_path / "r.jsonl")], pytest.fail), shop)
    assert (replayed.calls, replayed.skipped) == (0, 1)
    route = replayed.report.route("shop.prices:lines")
    assert route.skipped == 1 and "not recorded faithfully" in str(route.last_internal_error)


def test_calls_of_routes_the_versions_lack_are_skipped_and_counted(
    shop: dualrun.VersionPair, tmp_path: Path
) -> None:
    record_and_shadow(shop, tmp_path / "r.jsonl", 20)
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    foreign = json.loads(lines[1])
    foreign["route"] = "shop.prices:gone"
    (tmp_path / "r.jsonl").write_text("\n".join([*lines, json.dumps(foreign)]) + "\n")
    calls = list(read_calls([str(tmp_path / "r.jsonl")], pytest.fail))
    for replayed in (replay(calls, shop), replay_against_recorded(calls, shop.new)):
        assert (replayed.calls, replayed.skipped) == (22, 1)
        gone = replayed.report.route("shop.prices:gone")
        assert gone.skipped == 1 and "gone" in str(gone.last_internal_error)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_command_formats_and_exit_codes(
    shop: dualrun.VersionPair,
    shop_dirs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = map(str, shop_dirs)
    rec = str(tmp_path / "r.jsonl")
    record_and_shadow(shop, tmp_path / "r.jsonl", 200)
    code, out, err = run_cli(capsys, "replay", rec, "--old", old, "--new", new)
    assert code == 1, err
    assert "$.total" in out and "10 mismatch" in out
    assert "202 calls replayed" in err and "calls/s" in err
    code, out, _ = run_cli(capsys, "replay", rec, "--old", old, "--new", old, "--format", "json")
    assert code == 0
    assert json.loads(out)["routes"][0]["mismatches"] == 0
    for fmt, marker in (("markdown", "| calls |"), ("html", "<html")):
        code, out, _ = run_cli(capsys, "replay", rec, "--old", old, "--new", new, "--format", fmt)
        assert code == 1 and marker in out
    code, out, _ = run_cli(capsys, "replay", rec, "--new", new, "--against-recorded")
    assert code == 1 and "$.total" in out
    code, _, _ = run_cli(capsys, "replay", rec, "--new", old, "--against-recorded")
    assert code == 0
    code, _, _ = run_cli(capsys, "replay", rec, "--old", old, "--new", new, "--ignore", "$.total")
    assert code == 0
    code, _, err = run_cli(capsys, "replay", str(tmp_path / "missing"), "--old", old, "--new", new)
    assert code == 2 and "cannot open" in err
    code, _, err = run_cli(capsys, "replay", rec, "--new", new)
    assert code == 2 and "--old is needed" in err
    code, _, err = run_cli(capsys, "replay", rec, "--old", str(tmp_path / "nope"), "--new", new)
    assert code == 2 and "old" in err


def test_diff_command_compares_inputs_from_a_file(
    shop_dirs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = map(str, shop_dirs)
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        '[{"$decimal": "0.125"}]\n'
        '{"args": [{"$decimal": "1"}], "kwargs": {"quantity": 3}}\n'
        '{"$decimal": "0.135"}\n'
    )
    argv = ["diff", "--old", old, "--new", new, "--target", "shop.prices:charge"]
    code, out, err = run_cli(capsys, *argv, "--inputs", str(inputs))
    assert code == 1, err
    assert "3: 2 match, 1 mismatch" in out
    inputs.write_text('[{"$decimal": "0.135"}]\nnot json\n')
    code, out, err = run_cli(capsys, *argv, "--inputs", str(inputs))
    assert code == 0 and "inputs.jsonl:2: not a JSON input" in err
    code, _, err = run_cli(capsys, *argv[:-1], "shop.prices:nothing", "--inputs", str(inputs))
    assert code == 2 and "nothing" in err


def test_the_console_script_runs_replay(
    shop: dualrun.VersionPair, shop_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    record_and_shadow(shop, tmp_path / "r.jsonl", 40)
    old, new = map(str, shop_dirs)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dualrun",
            "replay",
            str(tmp_path / "r.jsonl"),
            "--old",
            old,
            "--new",
            new,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "$.total" in done.stdout


def test_a_forked_child_records_into_its_own_file_under_its_own_identity(
    shop: dualrun.VersionPair, tmp_path: Path
) -> None:
    d = dualrun.Dispatcher(
        shop, record=Recording(tmp_path / "r-{pid}.jsonl"), log=tmp_path / "log-parent.jsonl"
    )
    charge = d.route("shop.prices:charge")
    charge(Decimal(1))
    pid = os.fork()
    if pid == 0:  # the child: record one call, write, leave at once
        code = 0
        try:
            charge(Decimal(2))
            charge(Decimal(3))
            d.flush(5)
            d.journal.log.flush(5)  # type: ignore[union-attr]
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    d.close()
    parent = call_lines(tmp_path / f"r-{os.getpid()}.jsonl")
    child = call_lines(tmp_path / f"r-{pid}.jsonl")
    assert [e["args"] for e in parent] == [[{"$decimal": "1"}]]
    assert [e["args"] for e in child] == [[{"$decimal": "2"}], [{"$decimal": "3"}]]
    assert {e["pid"] for e in child} == {pid} and [e["seq"] for e in child] == [1, 2]
    assert child[0]["run"] != parent[0]["run"]
