"""Rollout: the canary steps up while the gate passes and rolls back when it fails.

The end-to-end tests run the rollout on its own thread while a traffic thread calls the routed
function (intervals of 20 ms, a gate of 50 comparisons); the others start the rollout with a long
interval, so its thread stays asleep, and drive it with ``tick()``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lifecycle_helpers import Bench, shadow

import dualrun
from dualrun import Canary, Fixed, Gate, Rollout, RolloutStatus

STEPS = [1, 5, 25, 50, 100]


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(tmp_path)
    yield bench
    bench.cleanup()


def small_gate() -> Gate:
    # Latency of microsecond functions is noise: this file is about mismatches.
    return Gate(min_comparisons=50, max_mismatch_rate=0.05, max_error_rate=0.05, latency=None)


class Traffic:
    """A thread calling ``quote`` in requests with ever new keys, recording what it got."""

    def __init__(self, quote: Callable[[int], Any]) -> None:
        self.quote = quote
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.calls = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                with dualrun.context(key=f"user-{i}"):
                    tag, _, value = self.quote(i)
                assert value == 2 * i or value == 2 * i + 1
                assert tag in ("A", "B")
            except BaseException as exc:  # recorded, the test fails on it
                self.errors.append(exc)
                return
            self.calls += 1
            i += 1
            if i % 50 == 0:
                time.sleep(0.0005)  # let the rollout thread in


@contextmanager
def traffic(quote: Callable[[int], Any]) -> Iterator[Traffic]:
    flow = Traffic(quote)
    flow.thread.start()
    try:
        yield flow
    finally:
        flow.stop.set()
        flow.thread.join(10)
    assert not flow.errors, flow.errors
    assert flow.calls > 0


def calls(quote: Callable[[int], Any], n: int, start: int = 0) -> list[str]:
    """``n`` requests with distinct keys; the tags that served them."""
    tags = []
    for i in range(start, start + n):
        with dualrun.context(key=f"user-{i}"):
            tags.append(quote(i)[0])
    return tags


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- end to end ------------------------------------------------------------------------------


def test_a_candidate_diverging_at_step_3_is_rolled_back_and_old_serves_everything(
    bench: Bench, tmp_path: Path
) -> None:
    versions = bench.pair("A", "B")
    new_engine = bench.engine(versions.new)
    log = tmp_path / "rollout.jsonl"
    d = bench.dispatcher(
        versions, policy=Canary(0, salt="ramp"), shadow=shadow("any"), log=str(log)
    )
    quote = d.route(bench.target)
    statuses: list[RolloutStatus] = []
    policies: list[Any] = []

    def on_change(status: RolloutStatus) -> None:
        statuses.append(status)
        policies.append(d.policy)
        if status.step == 2:  # the third step: the candidate starts to diverge
            new_engine.DIVERGE = True

    rollout = Rollout(d, steps=STEPS, gate=small_gate(), interval=0.02, on_change=on_change)
    with traffic(quote):
        status = rollout.run(timeout=20)

    assert status.state == "rolled back"
    assert (status.step, status.percent) == (2, 25.0)
    assert status.steps == tuple(float(s) for s in STEPS)
    assert status.reason is not None
    assert status.reason.startswith("step 25%: rollback: mismatch rate")
    last = status.last
    assert last is not None and last.verdict == "rollback" and last.step == 2
    assert any(r.startswith("mismatch rate") and "is above 5.0000%" in r for r in last.reasons)
    # The first two steps passed; the ramp only ever went up, keeping the canary's salt.
    assert {r.step for r in status.decisions if r.verdict == "promote"} == {0, 1}
    assert all(r.step <= 2 for r in status.decisions)
    percents = [s.percent for s in statuses]
    assert percents == sorted(percents) and set(percents) == {1.0, 5.0, 25.0}
    ramp = [p for p in policies if isinstance(p, Canary)]
    assert [p.percent for p in ramp] == sorted(p.percent for p in ramp)
    assert {p.salt for p in ramp} == {"ramp"}
    assert "rolled back" in status.line() and "[25%]" in status.line()
    assert rollout.wait(0) and rollout.status() is status

    # All traffic on old afterwards, whatever the key; new stays loaded and shadowed.
    assert isinstance(d.policy, Fixed) and d.policy.label == "old"
    assert set(calls(quote, 300)) == {"A"}
    assert versions.new.loaded

    # The report shows why: the divergence on the quoted value, with examples.
    report = d.report().route(bench.target)
    assert report.mismatches > 0
    [divergence] = report.divergences
    assert (divergence.path, divergence.kind) == ("$[*]", "value")
    example = divergence.examples[0]
    assert example["path"] == "$[2]" and example["key"].startswith("user-")
    assert int(example["new"]) == int(example["old"]) + 1
    # The failing decision counted only the comparisons of its own step.
    assert 0 < last.comparisons < report.comparisons

    d.close()
    gates = [e for e in read_events(log) if e.get("event") == "dualrun.gate"]
    assert [g["verdict"] for g in gates][-1] == "rollback"
    assert gates[-1]["step"] == 2 and gates[-1]["percent"] == 25.0
    assert any(c["name"] == "mismatch rate" for c in gates[-1]["checks"])
    assert any(e.get("event") == "dualrun.rollback" for e in read_events(log))


def test_a_good_candidate_passes_every_step_and_is_promoted(bench: Bench) -> None:
    versions = bench.pair("A", "B")

    def key(request: dualrun.RequestContext) -> Any:
        return request.key

    d = bench.dispatcher(versions, policy=Canary(0, key=key, salt="s"), shadow=shadow("any"))
    quote = d.route(bench.target)
    policies: list[Any] = []
    rollout = Rollout(
        d,
        steps=[10, 50, 100],
        gate=small_gate(),
        interval=0.02,
        on_change=lambda status: policies.append(d.policy),
    )
    with traffic(quote):
        status = rollout.run(timeout=20)
    assert status.state == "promoted", status
    assert (status.step, status.percent) == (2, 100.0)
    assert status.reason is not None and status.reason.startswith("all steps passed: promote")
    assert [r.step for r in status.decisions if r.verdict == "promote"] == [0, 1, 2]
    assert all(r.verdict in ("promote", "hold") for r in status.decisions)
    assert all(r.comparisons >= 50 for r in status.decisions if r.verdict == "promote")
    ramp = [p for p in policies if isinstance(p, Canary)]
    assert [p.percent for p in ramp][-1] == 100.0
    assert all(p.key is key and p.salt == "s" for p in ramp)
    # promote(): every call goes to new; old stays loaded for a rollback until retire().
    assert isinstance(d.policy, Fixed) and d.policy.label == "new"
    assert set(calls(quote, 100)) == {"B"}
    assert versions.old.loaded and not d.retired
    d.retire()
    assert d.wait_retired(5)
    assert [r.label for r in d.retired] == ["old"] and not versions.old.loaded
    assert "promoted" in status.line()


def test_pause_stops_advancing_until_resume(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(0), shadow=shadow("any"))
    quote = d.route(bench.target)
    rollout = Rollout(d, steps=[5, 100], gate=small_gate(), interval=0.02)
    with traffic(quote):
        rollout.start()
        rollout.pause()
        paused = rollout.status()
        assert paused.state == "paused"
        before = d.report().route(bench.target).comparisons
        time.sleep(0.3)  # fifteen intervals
        still = rollout.status()
        assert still.state == "paused"
        assert (still.step, still.percent) == (paused.step, paused.percent)
        assert still.decisions == paused.decisions  # no evaluation while paused
        assert d.report().route(bench.target).comparisons >= before + 50  # evidence was there
        assert isinstance(d.policy, Canary) and d.policy.percent == paused.percent
        rollout.resume()
        assert rollout.status().state in ("running", "promoted")
        assert rollout.wait(10)
    status = rollout.status()
    assert status.state == "promoted" and status.step == 1
    rollout.pause()  # too late: a finished rollout stays finished
    rollout.resume()
    assert rollout.status().state == "promoted"
    assert d.wait_retired(5)


def test_user_promote_skips_the_remaining_steps(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, shadow=shadow("any"))
    quote = d.route(bench.target)
    rollout = Rollout(d, steps=STEPS, gate=small_gate(), interval=60).start()
    assert rollout.status().state == "running" and rollout.status().percent == 1.0
    rollout.promote()
    status = rollout.status()
    assert (status.state, status.reason, status.step) == ("promoted", "promoted by the user", 0)
    assert rollout.wait(1)
    assert isinstance(d.policy, Fixed) and d.policy.label == "new"
    assert set(calls(quote, 50)) == {"B"}
    assert d.shadow is None  # promoted: old is kept for a rollback, not shadowed
    rollout.abort()  # finished: nothing happens
    assert rollout.status().state == "promoted" and d.policy.label == "new"
    assert rollout.tick() is None
    assert versions.old.loaded  # until retire() or the next candidate


def test_abort_rolls_back_and_stops(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, shadow=shadow("any"))
    quote = d.route(bench.target)
    rollout = Rollout(d, steps=[50, 100], gate=small_gate(), interval=60).start()
    assert set(calls(quote, 200)) == {"A", "B"}  # half the keys are on new at 50%
    rollout.abort()
    status = rollout.status()
    assert (status.state, status.reason) == ("aborted", "aborted by the user")
    assert rollout.wait(1)
    assert isinstance(d.policy, Fixed) and d.policy.label == "old"
    assert set(calls(quote, 200)) == {"A"}
    assert versions.new.loaded and d.shadow is not None  # rollback() keeps new shadowed
    rollout.promote()  # finished: nothing happens
    assert d.policy.label == "old"
    assert "aborted" in rollout.status().line()


def test_each_step_is_judged_on_its_own_comparisons_and_hold_waits(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, shadow=shadow("any"))  # policy Fixed('old'): made a canary
    quote = d.route(bench.target)
    seen: list[RolloutStatus] = []
    rollout = Rollout(d, steps=STEPS, gate=small_gate(), interval=60, on_change=seen.append)
    rollout.start()
    assert isinstance(d.policy, Canary) and d.policy.percent == 1.0
    try:
        calls(quote, 100)
        first = rollout.tick()
        assert first is not None and first.verdict == "promote" and first.comparisons == 100
        assert rollout.status().step == 1 and d.policy.percent == 5.0

        calls(quote, 80, start=100)
        second = rollout.tick()
        assert second is not None and second.comparisons == 80  # not 180
        assert rollout.status().step == 2 and d.policy.percent == 25.0

        calls(quote, 10, start=200)
        held = rollout.tick()
        assert held is not None and held.verdict == "hold" and held.comparisons == 10
        assert any(r.startswith("mismatch rate") for r in held.reasons)
        assert rollout.status().step == 2 and rollout.status().state == "running"
        calls(quote, 90, start=300)
        after_hold = rollout.tick()  # the step's evidence kept growing while it held
        assert after_hold is not None and after_hold.comparisons == 100
        assert after_hold.verdict == "promote" and rollout.status().step == 3
        records = rollout.status().decisions
        assert [(r.step, r.verdict, r.comparisons) for r in records] == [
            (0, "promote", 100),
            (1, "promote", 80),
            (2, "hold", 10),
            (2, "promote", 100),
        ]
        assert [s.percent for s in seen] == sorted(s.percent for s in seen)
    finally:
        rollout.abort()
    assert rollout.tick() is None  # a finished rollout does nothing


def test_the_kill_switch_aborts_the_rollout(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, shadow=shadow("any"))
    quote = d.route(bench.target)
    rollout = Rollout(d, steps=[50, 100], gate=small_gate(), interval=60).start()
    d.kill("incident 42")
    assert rollout.tick() is None
    status = rollout.status()
    assert (status.state, status.reason) == ("aborted", "kill switch: incident 42")
    assert set(calls(quote, 100)) == {"A"}
    with pytest.raises(RuntimeError, match="kill switch"):
        d.promote()
    d.revive()


def test_a_swapped_candidate_ends_the_rollout(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, shadow=shadow("any"))
    d.route(bench.target)
    rollout = Rollout(d, steps=[50, 100], gate=small_gate(), interval=60).start()
    d.swap_candidate(bench.source("C"))
    assert rollout.tick() is None
    status = rollout.status()
    assert status.state == "aborted"
    assert status.reason == "the candidate was swapped: its evidence starts anew"


@pytest.mark.parametrize("decision", ["rollback", "promote", "policy"])
def test_a_decision_taken_on_the_dispatcher_ends_the_rollout(bench: Bench, decision: str) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, shadow=shadow("any"))
    quote = d.route(bench.target)
    rollout = Rollout(d, steps=[5, 50, 100], gate=small_gate(), interval=60).start()
    calls(quote, 100)
    if decision == "rollback":
        d.rollback()
    elif decision == "promote":
        d.promote(retire=False)
    else:
        d.policy = Fixed("old")
    chosen = d.policy
    calls(quote, 100, start=100)  # evidence that would pass the gate
    assert rollout.tick() is None
    status = rollout.status()
    assert status.state == "aborted" and status.step == 0
    assert status.reason is not None and "policy was changed" in status.reason
    assert d.policy is chosen  # the rollout did not raise the canary over the decision
    assert rollout.wait(0)


def test_a_rollout_that_fails_at_the_first_step_never_raises_the_canary(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    bench.engine(versions.new).DIVERGE = True
    d = bench.dispatcher(versions, shadow=shadow("any"))
    quote = d.route(bench.target)
    rollout = Rollout(d, steps=STEPS, gate=small_gate(), interval=60).start()
    calls(quote, 20)  # 20 of 20 differ: a clear failure before min_comparisons
    decision = rollout.tick()
    assert decision is not None and decision.verdict == "rollback" and decision.comparisons == 20
    status = rollout.status()
    assert (status.state, status.step, status.percent) == ("rolled back", 0, 1.0)
    assert d.policy.label == "old"  # type: ignore[attr-defined]


# -- arguments ---------------------------------------------------------------------------------


def test_a_rollout_needs_a_shadowing_dispatcher(bench: Bench) -> None:
    d = bench.dispatcher(bench.pair())
    with pytest.raises(ValueError, match="shadow"):
        Rollout(d)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": []}, "non-empty"),
        ({"steps": 5}, "steps is a list"),
        ({"steps": [5, 5, 10]}, "rise strictly"),
        ({"steps": [50, 10]}, "rise strictly"),
        ({"steps": [0, 10]}, "excluded"),
        ({"steps": [10, 101]}, "to 100"),
        ({"steps": [-1]}, "excluded"),
        ({"steps": [float("nan")]}, "percent"),
        ({"steps": [True]}, "percent"),
        ({"steps": ["5"]}, "percent"),
        ({"gate": {"min_comparisons": 5}}, "gate"),
        ({"interval": 0}, "interval"),
        ({"interval": -1}, "interval"),
        ({"interval": True}, "interval"),
        ({"interval": "60"}, "interval"),
        ({"on_change": "print"}, "on_change"),
    ],
)
def test_bad_rollout_arguments_are_refused(
    bench: Bench, kwargs: dict[str, Any], match: str
) -> None:
    d = bench.dispatcher(bench.pair(), shadow=shadow())
    with pytest.raises(ValueError, match=match):
        Rollout(d, **kwargs)
    assert isinstance(d.policy, Fixed) and d.policy.label == "old"  # nothing was touched


def test_a_rollout_starts_once(bench: Bench) -> None:
    d = bench.dispatcher(bench.pair(), shadow=shadow())
    rollout = Rollout(d, steps=[100], interval=60)
    assert rollout.status().state == "ready" and rollout.status().line().startswith("rollout ready")
    assert rollout.status().to_dict()["steps"] == (100.0,)
    rollout.start()
    with pytest.raises(RuntimeError, match="already started"):
        rollout.start()
    rollout.abort()
    with pytest.raises(RuntimeError, match="already started"):
        rollout.run(timeout=1)
    assert rollout.gate.min_comparisons == Gate().min_comparisons  # the default gate
