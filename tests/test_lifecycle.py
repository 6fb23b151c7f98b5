"""Promote, roll back, drain and retire, the kill switch, swapping candidates, migrations.

Versions come from :class:`lifecycle_helpers.Bench`: ``engine.quote(x)`` returns
``(tag, namespace, 2 * x)``, so every call shows which source and which loaded namespace
served it, and a version's ``quote`` can be made to block on an event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_helpers import Bench, namespaces, shadow

import dualrun
from dualrun import Canary, Fixed
from dualrun.counters import peek
from dualrun.lifecycle import RetirementRecord


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(tmp_path)
    yield bench
    bench.cleanup()


def served(quote: Any, x: int = 1, **context: Any) -> str:
    """The tag of the version that served ``quote(x)`` inside a request."""
    with dualrun.context(**context):
        tag: str = quote(x)[0]
    return tag


def comparisons(d: dualrun.Dispatcher, target: str) -> int:
    return d.report().route(target).comparisons


class Blocked:
    """A call of ``quote`` on a thread of its own, blocked inside a version until released."""

    def __init__(self, quote: Any, entered: threading.Event, release: threading.Event, **ctx: Any):
        self.release = release
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                with dualrun.context(**ctx):
                    self.result = quote(21)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert entered.wait(5), "the call never entered the version"

    def finish(self) -> Any:
        self.release.set()
        self.thread.join(5)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.result


# -- promote and rollback ----------------------------------------------------------------------


def test_promote_switches_routed_requests_and_retires_old_once_drained(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    old_prefix = versions.old.prefix
    d = bench.dispatcher(versions, policy=Canary(0), shadow=shadow())
    quote = d.route(bench.target)
    with dualrun.context(key="user-1"):
        assert quote(1)[0] == "A"
        d.promote(retire=True)
        assert quote(1)[0] == "B"  # a request already routed to old switches at once
    assert isinstance(d.policy, Fixed) and d.policy.label == "new"
    assert served(quote, pin="old") == "B"  # calls routed to old go to new meanwhile
    assert d.shadow is None  # nothing left to compare with
    assert d.wait_retired(5)
    [record] = d.retired
    assert isinstance(record, RetirementRecord)
    assert (record.label, record.source, record.namespace) == (
        "old",
        versions.old.source,
        old_prefix,
    )
    assert (record.forced, record.in_flight_at_unload) == (False, 0)
    assert record.finished is not None and record.finished >= record.started
    assert not versions.old.loaded and old_prefix not in namespaces()
    assert versions.new.loaded and versions.new.prefix in namespaces()
    # The report goes on counting the calls, all on new.
    before = d.report().route(bench.target).calls["new"]
    assert {served(quote, key=f"k{i}") for i in range(20)} == {"B"}
    assert d.report().route(bench.target).calls["new"] == before + 20
    with pytest.raises(RuntimeError, match="nothing to roll back to"):
        d.rollback()
    assert served(quote, key="after") == "B"


def test_promote_without_retire_keeps_old_loaded_and_rollback_possible(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(0), shadow=shadow("any"))
    quote = d.route(bench.target)
    d.promote(retire=False)
    assert d.policy.label == "new"  # type: ignore[attr-defined]
    assert {served(quote, key=f"k{i}") for i in range(20)} == {"B"}
    assert served(quote, pin="old") == "A"  # old is loaded and serves its pins
    assert versions.old.loaded and not d.retired and d.wait_retired(0)
    before = comparisons(d, bench.target)
    served(quote, key="shadowed")
    assert comparisons(d, bench.target) == before  # promoted: old is loaded, not shadowed
    assert d.shadow is None
    d.rollback()
    assert d.policy.label == "old"  # type: ignore[attr-defined]
    assert {served(quote, key=f"k{i}") for i in range(20)} == {"A"}
    served(quote, key="shadowed")
    assert comparisons(d, bench.target) == before + 21  # both loaded again: shadowed again


def test_rollback_keeps_new_loaded_and_shadowed(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(100), shadow=shadow())
    quote = d.route(bench.target)
    with dualrun.context(key="user-1"):
        assert quote(1)[0] == "B"
        d.rollback()
        assert quote(1)[0] == "A"  # a request already routed to new switches at once
    assert isinstance(d.policy, Fixed) and d.policy.label == "old"
    assert versions.new.loaded and not d.retired
    before = comparisons(d, bench.target)
    assert {served(quote, key=f"k{i}") for i in range(10)} == {"A"}
    assert comparisons(d, bench.target) == before + 10  # new keeps being compared
    assert served(quote, pin="new") == "A"  # a rollback overrides pins
    d.pins_honored = True  # the operator lets pins choose again
    assert served(quote, pin="new") == "B"
    d.promote(retire=False)  # still possible
    assert served(quote, key="k") == "B"


def test_rollback_with_retire_drains_and_unloads_new(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    new_prefix = versions.new.prefix
    d = bench.dispatcher(versions, policy=Canary(100), shadow=shadow())
    quote = d.route(bench.target)
    entered, release = bench.block(versions.new)
    blocked = Blocked(quote, entered, release, key="slow")
    d.rollback(retire=True, drain_timeout=10)
    assert served(quote, key="other") == "A" and served(quote, pin="new") == "A"
    assert d.shadow is None
    assert not d.wait_retired(0.1) and versions.new.loaded  # a call is still running in new
    assert blocked.finish() == ("B", new_prefix, 42)
    assert d.wait_retired(5)
    [record] = d.retired
    assert (record.label, record.forced, record.in_flight_at_unload) == ("new", False, 0)
    assert new_prefix not in namespaces()
    with pytest.raises(RuntimeError, match="swap_candidate"):
        d.promote()
    # A fresh candidate makes promotion possible again.
    d.swap_candidate(bench.source("C"))
    assert served(quote, pin="new") == "C" and served(quote, key="x") == "A"
    d.promote()
    assert served(quote, key="x") == "C"


# -- drain ------------------------------------------------------------------------------------


def test_old_is_unloaded_only_after_its_running_call_finishes(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)  # Fixed('old')
    quote = d.route(bench.target)
    entered, release = bench.block(versions.old)
    blocked = Blocked(quote, entered, release, key="slow")
    d.promote(retire=True, drain_timeout=10)
    assert served(quote, key="fast") == "B"  # new calls switch at once, the drain goes on
    assert d.in_flight("old") == 1
    assert d.report().route(bench.target).in_flight["old"] == 1
    assert not d.wait_retired(0.2)
    assert versions.old.loaded and versions.old.prefix in namespaces() and d.retired == []
    assert blocked.finish() == ("A", versions.old.prefix, 42)  # it finished in old
    assert d.wait_retired(5)
    [record] = d.retired
    assert (record.forced, record.in_flight_at_unload) == (False, 0)
    assert not versions.old.loaded and versions.old.prefix not in namespaces()


def test_a_drain_timeout_unloads_old_by_force_and_says_so(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)
    quote = d.route(bench.target)
    entered, release = bench.block(versions.old)
    blocked = Blocked(quote, entered, release)
    d.promote(retire=True, drain_timeout=0.1)
    assert d.wait_retired(5)
    [record] = d.retired
    assert (record.label, record.forced, record.in_flight_at_unload) == ("old", True, 1)
    assert blocked.thread.is_alive()  # unloaded under a running call
    assert not versions.old.loaded and versions.old.prefix not in namespaces()
    # The running call still completes with old's loaded code.
    assert blocked.finish() == ("A", versions.old.prefix, 42)


def test_wait_retired_can_force_a_drain_that_has_no_timeout(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)
    quote = d.route(bench.target)
    entered, release = bench.block(versions.old)
    blocked = Blocked(quote, entered, release)
    d.promote(retire=True, drain_timeout=None)
    assert not d.wait_retired(0.1)  # no timeout: it would wait for ever
    assert d.wait_retired(0.1, force=True)
    [record] = d.retired
    assert (record.forced, record.in_flight_at_unload) == (True, 1)
    blocked.finish()


def test_wait_retired_returns_once_the_retirement_is_on_record(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported = dualrun.Dispatcher._retired

    def slowly_reported(self: dualrun.Dispatcher, record: RetirementRecord) -> None:
        time.sleep(0.2)  # the retiring thread is slow to report (a busy event log, say)
        reported(self, record)

    monkeypatch.setattr(dualrun.Dispatcher, "_retired", slowly_reported)
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)
    d.route(bench.target)
    d.promote(retire=True)
    assert d.wait_retired(5)
    assert [r.label for r in d.retired] == ["old"]  # True means: unloaded and on record


# -- the kill switch --------------------------------------------------------------------------


def test_kill_sends_everything_to_old_until_revive(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    config = shadow("any")
    d = bench.dispatcher(versions, policy=Canary(100), shadow=config)
    quote = d.route(bench.target)
    with dualrun.context(key="user-1"):
        assert quote(1)[0] == "B"
        d.kill("bad deploy")
        assert quote(1)[0] == "A"  # already-routed requests switch too
    assert d.killed == "bad deploy"
    assert d.shadow is None
    assert isinstance(d.policy, Fixed) and d.policy.label == "old"
    assert served(quote, pin="new") == "A"  # pins to new are overridden
    d.policy = Canary(100)  # so is any policy set meanwhile
    before = comparisons(d, bench.target)
    assert {served(quote, key=f"k{i}") for i in range(30)} == {"A"}
    assert comparisons(d, bench.target) == before  # shadowing stopped
    # A route made while killed obeys the switch too.
    version = d.route(f"{bench.name}.engine:version")
    with dualrun.context(pin="new"):
        assert version() == "A"
    with pytest.raises(RuntimeError, match="kill switch"):
        d.promote()
    with pytest.raises(RuntimeError, match="kill switch"):
        d.swap_candidate(bench.source("C"))
    d.kill("again")  # already on: the first reason stays
    assert d.killed == "bad deploy"

    d.revive()
    assert d.killed is None
    assert d.shadow is config
    assert served(quote, pin="new") == "B"
    with dualrun.context(pin="new"):
        assert version() == "B"
    assert {served(quote, key=f"k{i}") for i in range(10)} == {"B"}  # Canary(100) set above
    again = comparisons(d, bench.target)
    served(quote, key="one more")
    assert comparisons(d, bench.target) == again + 1  # shadowing again
    d.revive()  # not killed: nothing happens
    assert d.killed is None


def test_the_environment_variable_turns_the_kill_switch_on(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = bench.pair("A", "B")
    monkeypatch.setenv("DUALRUN_KILL_SWITCH", "1")
    d = bench.dispatcher(versions, policy=Canary(100), shadow=shadow())
    assert d.killed is not None and "DUALRUN_KILL_SWITCH" in d.killed
    quote = d.route(bench.target)
    assert served(quote, key="k") == "A" and served(quote, pin="new") == "A"
    assert d.shadow is None
    d.revive()
    assert d.policy.label == "old"  # type: ignore[attr-defined]
    assert served(quote, pin="new") == "B" and served(quote, key="k") == "A"
    assert d.shadow is not None


@pytest.mark.parametrize("value", ["0", "", " "])
def test_the_kill_switch_variable_off_values(
    bench: Bench, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DUALRUN_KILL_SWITCH", value)
    d = bench.dispatcher(bench.pair("A", "B"), policy=Canary(100))
    assert d.killed is None
    assert served(d.route(bench.target), key="k") == "B"


def test_kill_after_a_retiring_promote_serves_the_only_live_version(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)
    quote = d.route(bench.target)
    d.promote(retire=True)
    assert d.wait_retired(5)
    d.kill("incident")
    # Old was retired: the promoted version is the one left to serve.
    assert served(quote, key="k") == "B" and served(quote, pin="new") == "B"
    d.revive()
    assert served(quote, key="k") == "B"


# -- swapping candidates ----------------------------------------------------------------------


def test_swap_candidate_replaces_new_and_keeps_each_candidates_report(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    b_prefix = versions.new.prefix
    d = bench.dispatcher(versions, policy=Canary(50), shadow=shadow())
    quote = d.route(bench.target)
    tags = [served(quote, key=f"k{i}") for i in range(100)]
    assert set(tags) == {"A", "B"}
    before = d.report().route(bench.target)
    assert before.calls["new"] == tags.count("B") and before.comparisons == tags.count("A")

    c_source = bench.source("C")
    d.swap_candidate(c_source)
    assert d.versions.old is versions.old  # old untouched
    assert (d.versions.new.source, d.versions.new.label) == (c_source, "new")
    assert [served(quote, key=f"k{i}") for i in range(100)] == [
        "C" if t == "B" else t for t in tags
    ]  # the same keys on new, now served by the candidate
    assert d.wait_retired(5)
    [record] = d.retired
    assert (record.label, record.namespace, record.forced) == ("new", b_prefix, False)
    assert b_prefix not in namespaces()
    assert namespaces() == {versions.old.prefix, d.versions.new.prefix}
    # Statistics restart for the candidate; the history keeps the earlier one's report.
    [earlier] = d.history
    assert earlier["candidate"] == versions.new.source
    [route] = earlier["report"]["routes"]
    assert route["calls"]["new"] == tags.count("B") and route["comparisons"] == tags.count("A")
    after = d.report().route(bench.target)
    assert after.calls["new"] == tags.count("B")  # only the calls made since the swap
    assert after.comparisons == tags.count("A")

    d.swap_candidate(bench.source("D"))
    assert [h["candidate"] for h in d.history] == [versions.new.source, c_source]
    assert served(quote, pin="new") == "D"
    assert d.wait_retired(5) and len(d.retired) == 2
    assert len(namespaces()) == 2


@pytest.mark.parametrize("retire", [True, False])
def test_after_promote_the_promoted_version_becomes_old(bench: Bench, retire: bool) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(50), shadow=shadow())
    quote = d.route(bench.target)
    d.promote(retire=retire)
    assert {served(quote, key=f"k{i}") for i in range(20)} == {"B"}
    d.swap_candidate(bench.source("C"))
    assert d.versions.old is versions.new and d.versions.old.label == "old"
    assert d.versions.new.source.endswith("C") and d.versions.new.label == "new"
    assert isinstance(d.policy, Fixed) and d.policy.label == "old"
    # A retiring promote parked the shadow; the new candidate is shadowed again, as configured.
    assert d.shadow is not None and d.shadow.primary == "old"
    # The promoted version serves everything; the candidate serves only what is sent to it.
    assert {served(quote, key=f"k{i}") for i in range(20)} == {"B"}
    assert served(quote, pin="old") == "B" and served(quote, pin="new") == "C"
    assert d.wait_retired(5)
    assert [r.namespace for r in d.retired] == [versions.old.prefix]  # A, the first old
    assert namespaces() == {versions.new.prefix, d.versions.new.prefix}
    # The promoted version is the baseline now: rolling back goes to it, not to A.
    d.policy = Canary(100)
    assert served(quote, key="k") == "C"
    d.rollback()
    assert served(quote, key="k") == "B"


def test_a_candidate_without_a_routed_target_is_refused(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(50), shadow=shadow())
    quote = d.route(bench.target)
    tags = [served(quote, key=f"k{i}") for i in range(50)]
    loaded = namespaces()
    bad = bench.source("C", engine="def version():\n    return 'C'\n")
    with pytest.raises(dualrun.TargetNotFoundError, match="quote"):
        d.swap_candidate(bad)
    assert namespaces() == loaded  # the candidate was unloaded
    assert d.versions.old is versions.old and d.versions.new is versions.new
    assert [served(quote, key=f"k{i}") for i in range(50)] == tags
    assert d.history == [] and d.report().route(bench.target).calls["new"] == tags.count("B") * 2


def test_a_swap_waits_for_a_pending_retirement_and_forces_it_after_the_timeout(
    bench: Bench,
) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)
    quote = d.route(bench.target)
    entered, release = bench.block(versions.old)
    blocked = Blocked(quote, entered, release)
    d.promote(retire=True, drain_timeout=None)
    assert len(namespaces()) == 2  # A drains, B serves
    d.swap_candidate(bench.source("C"), drain_timeout=0.1)
    # At most two versions are loaded: A was forced out before C came in.
    [record] = d.retired
    assert (record.namespace, record.forced, record.in_flight_at_unload) == (
        versions.old.prefix,
        True,
        1,
    )
    assert namespaces() == {versions.new.prefix, d.versions.new.prefix}
    assert served(quote, key="k") == "B" and served(quote, pin="new") == "C"
    assert blocked.finish()[0] == "A"


# -- migration --------------------------------------------------------------------------------

OLD_QUOTE = """
from . import VERSION


class Quote:
    def __init__(self, amount, currency="EUR"):
        self.amount = amount
        self.currency = currency

    def total(self):
        return (VERSION, self.amount, self.currency)


def make(amount, currency="EUR"):
    return Quote(amount, currency)


def add(quote, extra):
    return Quote(quote.amount + extra, quote.currency)


def passthrough(value):
    return (VERSION, value)


def quote(x):
    return (VERSION, "", 2 * x)
"""

# The new version keeps cents, not amounts: its code cannot use an old Quote as it is.
NEW_QUOTE = """
from . import VERSION


class Quote:
    def __init__(self, cents, currency="EUR"):
        self.cents = cents
        self.currency = currency

    def total(self):
        return (VERSION, self.cents / 100, self.currency)


def make(amount, currency="EUR"):
    return Quote(round(amount * 100), currency)


def add(quote, extra):
    return Quote(quote.cents + round(extra * 100), quote.currency)


def passthrough(value):
    return (VERSION, value)


def quote(x):
    return (VERSION, "", 2 * x)
"""


def quote_pair(bench: Bench) -> tuple[dualrun.VersionPair, Any, Any, dict[Any, Any]]:
    versions = bench.pair("old", "new", OLD_QUOTE, NEW_QUOTE)
    old, new = bench.engine(versions.old), bench.engine(versions.new)
    migrate = {
        ("old", "new"): lambda q: new.Quote(round(q.amount * 100), q.currency),
        ("new", "old"): lambda q: old.Quote(q.cents / 100, q.currency),
    }
    return versions, old, new, migrate


def test_a_value_migrates_old_to_new_and_back(bench: Bench) -> None:
    versions, old, new, migrate = quote_pair(bench)
    d = bench.dispatcher(versions, migrate=migrate)
    add = d.route(f"{bench.name}.engine:add")
    total = d.route(f"{bench.name}.engine:Quote.total")
    start = old.make(12.5, "CHF")
    with dualrun.context(pin="new"):
        there = add(start, 1)  # old Quote converted for new's add
    assert type(there) is new.Quote and (there.cents, there.currency) == (1350, "CHF")
    with dualrun.context(pin="old"):
        back = add(there, 0.5)  # and new's Quote converted for old's add
    assert type(back) is old.Quote and (back.amount, back.currency) == (14.0, "CHF")
    assert peek(d.routes[f"{bench.name}.engine:add"].migrations) == 2
    # A method call on an old object routed to new: the instance is converted.
    with dualrun.context(pin="new"):
        assert total(back) == ("new", 14.0, "CHF")
    with dualrun.context(pin="old"):
        assert total(back) == ("old", 14.0, "CHF")  # its own version: nothing to convert
        assert total(there) == ("old", 13.5, "CHF")
    total_route = d.routes[f"{bench.name}.engine:Quote.total"]
    assert peek(total_route.migrations) == 2 and peek(total_route.crossings) == 0
    assert d.report().route(f"{bench.name}.engine:Quote.total").crossings == 0
    assert (start.amount, start.currency) == (12.5, "CHF")  # the original is left alone


def test_state_carried_across_a_promotion_is_migrated(bench: Bench) -> None:
    versions, old, new, migrate = quote_pair(bench)
    d = bench.dispatcher(versions, migrate=migrate)
    total = d.route(f"{bench.name}.engine:Quote.total")
    add = d.route(f"{bench.name}.engine:add")
    kept = old.make(3.0)  # made before the promotion, used after it
    d.promote(retire=True)
    assert d.wait_retired(5) and not versions.old.loaded
    assert total(kept) == ("new", 3.0, "EUR")
    # A request pinned to the retired version is served by new, with new's values.
    fresh = new.make(2.0)
    with dualrun.context(pin="old"):
        assert total(fresh) == ("new", 2.0, "EUR")
        result = add(fresh, 1)
    assert type(result) is new.Quote and result.cents == 300


def test_the_kill_switch_with_migrations_gives_old_its_own_values(bench: Bench) -> None:
    versions, old, new, migrate = quote_pair(bench)
    d = bench.dispatcher(versions, policy=Canary(100), migrate=migrate)
    add = d.route(f"{bench.name}.engine:add")
    d.kill("incident")
    with dualrun.context(pin="new"):  # overridden: old serves, with an old Quote
        result = add(old.make(1.0), 1)
        converted = add(new.make(1.0), 2)
    assert type(result) is old.Quote and result.amount == 2.0
    assert type(converted) is old.Quote and converted.amount == 3.0


def test_without_a_migration_a_method_runs_in_its_objects_version(bench: Bench) -> None:
    versions = bench.pair("old", "new", OLD_QUOTE, NEW_QUOTE)
    old, new = bench.engine(versions.old), bench.engine(versions.new)
    d = bench.dispatcher(versions, shadow=shadow("any"))
    target = f"{bench.name}.engine:Quote.total"
    total = d.route(target)
    with dualrun.context(pin="new"):
        assert total(old.make(5.0)) == ("old", 5.0, "EUR")  # crossed back to its version
        assert total(new.make(5.0)) == ("new", 5.0, "EUR")
    with dualrun.context(pin="old"):
        assert total(new.make(7.0)) == ("new", 7.0, "EUR")
    report = d.report().route(target)
    assert report.crossings == 2 and peek(d.routes[target].crossings) == 2
    assert peek(d.routes[target].migrations) == 0
    # Method calls on a version's objects are not shadowed: the other side has no such object.
    assert report.comparisons == 0
    # A plain function gets the value as it is (no conversion, no crossing).
    passthrough = d.route(f"{bench.name}.engine:passthrough")
    value = old.make(1.0)
    with dualrun.context(pin="new"):
        tag, got = passthrough(value)
    assert tag == "new" and got is value
    assert d.report().route(f"{bench.name}.engine:passthrough").crossings == 0


@pytest.mark.parametrize(
    "migrate",
    [
        [(("old", "new"), str)],
        {("old", "old"): str},
        {("new", "new"): str},
        {"old": str},
        {("old", "new", "x"): str},
        {("old", "new"): "str"},
        {("new", "old"): None},
    ],
)
def test_bad_migrate_arguments_are_refused(bench: Bench, migrate: Any) -> None:
    versions = bench.pair("A", "B")
    with pytest.raises(ValueError, match="migrate"):
        dualrun.Dispatcher(versions, migrate=migrate)
