"""``dualrun report`` keeps its memory bounded whatever the logs hold: at most ``--max-routes``
routes (the others are counted and shown as "and N more routes"), and at most a bounded amount of
divergence lines waiting for a summary of their run (the others are counted as "not counted").
"""

from __future__ import annotations

import copy
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from test_report_fuzz import DIVERGENCE, SUMMARY, report_cli

from dualrun.logread import LogReader, report_from_logs

ROUTES = 100_000


def write_routes(path: Path, routes: int, per_line: int = 500) -> Path:
    """Summaries with calls on ``routes`` distinct routes, ``per_line`` routes a line."""
    with path.open("w") as out:
        for start in range(0, routes, per_line):
            event = {
                **SUMMARY,
                "seq": 0,
                "routes": {
                    f"svc.r{n}:f": {"calls": {"old": 2, "new": 1}}
                    for n in range(start, min(start + per_line, routes))
                },
            }
            out.write(json.dumps(event) + "\n")
    return path


def peak_bytes(**read: Any) -> tuple[int, Any]:
    tracemalloc.start()
    try:
        report, totals = report_from_logs(problem=lambda _: None, **read)
        text = report.to_text()
        return tracemalloc.get_traced_memory()[1], (report, totals, text)
    finally:
        tracemalloc.stop()


def test_distinct_routes_beyond_the_bound_are_counted_not_kept(tmp_path: Path) -> None:
    log = write_routes(tmp_path / "routes.jsonl", 10_000)
    bounded, (report, _totals, text) = peak_bytes(paths=[str(log)])
    assert len(report.routes) == 1000
    assert (report.omitted_routes, report.omitted_calls) == (9_000, 27_000)
    assert "... and 9,000 more routes (27,000 calls, 0 comparisons)" in text
    small, _ = peak_bytes(paths=[str(write_routes(tmp_path / "small.jsonl", 1000))])
    assert bounded < small + 3e6  # the 9,000 more cost their names only


@pytest.mark.slow
def test_a_hundred_thousand_routes_stay_within_bounded_memory(tmp_path: Path) -> None:
    log = write_routes(tmp_path / "routes.jsonl", ROUTES)
    bounded, (report, _totals, text) = peak_bytes(paths=[str(log)])
    assert len(report.routes) == 1000
    assert report.omitted_routes == ROUTES - 1000
    assert report.omitted_calls == 3 * (ROUTES - 1000)
    assert "... and 99,000 more routes (297,000 calls, 0 comparisons)" in text
    assert bounded < 40e6
    # The unbounded reader, for scale: every route kept.
    unbounded, (everything, _, _) = peak_bytes(paths=[str(log)], max_routes=10**9)
    print(
        f"peak memory, {ROUTES:,} routes: {bounded / 1e6:.1f} MB; unbounded {unbounded / 1e6:.1f}"
    )
    assert len(everything.routes) == ROUTES and unbounded > 3 * bounded


def test_the_route_bound_is_an_option_of_the_command(tmp_path: Path) -> None:
    log = write_routes(tmp_path / "routes.jsonl", 30, per_line=7)
    for fmt in ("text", "markdown", "html"):
        code, out, err = report_cli(str(log), "--max-routes", "10", "--format", fmt)
        assert (code, err) == (0, "")
        assert "and 20 more routes (60 calls, 0 comparisons)" in out
    code, out, _ = report_cli(str(log), "--max-routes", "10", "--format", "json")
    data = json.loads(out)
    assert len(data["routes"]) == 10 and data["omitted_routes"] == 20
    code, _, err = report_cli(str(log), "--max-routes", "0")
    assert code == 2 and "--max-routes is a whole number >= 1" in err


def divergences(count: int, run: str = "r1") -> list[dict[str, Any]]:
    events = []
    for seq in range(1, count + 1):
        event = copy.deepcopy(DIVERGENCE)
        event.update(seq=seq, run=run, key=f"user-{seq}")
        events.append(event)
    return events


def fitting(lines: list[str], limit: int) -> int:
    """How many of ``lines`` (in order) fit in ``limit`` bytes."""
    total = 0
    for n, line in enumerate(lines):
        total += len(line.encode())
        if total > limit:
            return n
    return len(lines)


def test_divergences_waiting_for_a_summary_are_bounded(tmp_path: Path) -> None:
    lines = [json.dumps(e) + "\n" for e in divergences(10_000)]  # a killed run: all wait
    log = tmp_path / "killed.jsonl"
    log.write_text("".join(lines))
    held = fitting(lines, 500_000)
    report, _ = report_from_logs([str(log)], lambda _: None, max_pending_bytes=500_000)
    route = report.route("svc.a:quote")
    assert route.comparisons == held
    assert report.uncounted_divergences == 10_000 - held
    assert f"up to {10_000 - held:,} divergence events were not counted" in report.to_text()
    # Unbounded, all are counted.
    report, _ = report_from_logs([str(log)], lambda _: None)
    assert report.route("svc.a:quote").comparisons == 10_000 and report.uncounted_divergences == 0


def test_a_summary_that_covers_them_all_leaves_nothing_uncounted(tmp_path: Path) -> None:
    events = divergences(5_000)
    summary = copy.deepcopy(SUMMARY)
    summary.update(run="r1", seq=5_000)
    summary["routes"]["svc.a:quote"]["aggregate"]["comparisons"] = 5_000
    log = tmp_path / "covered.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in [*events, summary]))
    report, _ = report_from_logs([str(log)], lambda _: None, max_pending_bytes=100_000)
    assert report.uncounted_divergences == 0
    assert report.route("svc.a:quote").comparisons == 5_000  # the summary's count, once
    assert "not counted" not in report.to_text()


@pytest.mark.parametrize("fast", [False, True])
def test_both_decoders_hold_the_same_bound(tmp_path: Path, fast: bool) -> None:
    log = tmp_path / "killed.jsonl"
    lines = [json.dumps(e) + "\n" for e in divergences(3_000)]
    log.write_text("".join(lines))
    report, _ = report_from_logs([str(log)], lambda _: None, fast=fast, max_pending_bytes=200_000)
    assert report.uncounted_divergences == 3_000 - fitting(lines, 200_000)


def test_a_line_longer_than_the_bound_is_skipped_unread(tmp_path: Path) -> None:
    huge = {**SUMMARY, "policy": "x" * (33 << 20)}  # over the 32 MiB a line may have
    log = tmp_path / "huge.jsonl"
    with log.open("w") as out:
        out.write(json.dumps(DIVERGENCE) + "\n" + json.dumps(huge) + "\n")
        out.write(json.dumps(SUMMARY) + "\n")
    code, out, err = report_cli(str(log), "--format", "json")
    assert code == 1
    assert err == f"dualrun report: {log}:2: line longer than 33,554,432 bytes; skipped unread\n"
    assert json.loads(out)["routes"][0]["comparisons"] == 2  # both other lines count


@pytest.mark.parametrize("fast", [False, True])
def test_the_line_bound_holds_for_both_decoders_and_counts_lines(
    tmp_path: Path, fast: bool
) -> None:
    log = tmp_path / "long.jsonl"
    long_line = json.dumps({**DIVERGENCE, "key": "k" * 5000})
    log.write_text(f"{long_line}\n{json.dumps(DIVERGENCE)}\n{long_line}")  # (no final newline)
    problems: list[str] = []
    reader = LogReader(problems.append, fast=fast, max_line_bytes=4000)
    totals = reader.read([str(log)])
    assert problems == [
        f"{log}:1: line longer than 4,000 bytes; skipped unread",
        f"{log}:3: line longer than 4,000 bytes; skipped unread",
    ]
    assert totals.report().route("svc.a:quote").comparisons == 1
