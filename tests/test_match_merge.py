"""Buffered matches are added to the aggregates a column at a time (``RouteAggregate.matched``,
``Histogram.add_all``); these check that this gives exactly what adding them one by one with
``RouteAggregate.compared`` gives: the same numbers, buckets, CPU totals and timeline, even in
the same order (the JSON of a summary is the same text), however the matches are merged.
"""

from __future__ import annotations

import json
import sys
import threading
import types
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dualrun.recorder as recorder_module
from dualrun.recorder import (
    _KEPT_BITS,
    MATCHES_PER_MERGE,
    Histogram,
    Recorder,
    RouteAggregate,
    bucket_of,
)

SETTINGS = settings(max_examples=120, deadline=None)

# Durations over the whole range: the exact buckets (below 32), their edges, every bit length
# up to 2**63 and beyond (where add_all goes one by one), and negatives (bucket 0).
EDGE_CASES = [0, 1, 15, 16, 31, 32, 33, 62, 63, 64, 65, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -1]
durations = st.one_of(
    st.sampled_from(EDGE_CASES),
    st.integers(-(2**64), -1),
    st.integers(0, 2**63),
    st.integers(0, 2**63).map(lambda n: n >> (n % 64)),  # every bit length, often
    st.integers(900, 5_000),  # a batch of similar latencies, few buckets
)
cpus = st.one_of(st.just(recorder_module.NOT_MEASURED), st.integers(-3, 2**40), durations)
BASE = 1_764_000_000.0  # seconds since the epoch, on a minute boundary
matches = st.tuples(
    st.sampled_from(["a", "b", "c", "d", "e", "f", "g"]),
    durations,
    cpus,
    durations,
    cpus,
    st.floats(0, 9 * 60).map(lambda s: BASE + s),  # across ten minutes, in any order
    st.sampled_from([None, "old", "new"]),
)


def one_by_one(into: dict[str, RouteAggregate], batch: list[tuple[Any, ...]]) -> None:
    """The reference: what the merge did before, one match at a time."""
    for route, old_wall, old_cpu, new_wall, new_cpu, when, only in batch:
        aggregate = into.get(route)
        if aggregate is None:
            aggregate = into[route] = RouteAggregate(route)
        aggregate.compared(old_wall, old_cpu, new_wall, new_cpu, when, only)
        aggregate.matches += 1


def as_text(aggregates: dict[str, RouteAggregate]) -> str:
    """Every field, in the order it was inserted (routes, buckets, minutes)."""
    return json.dumps([[route, a.to_dict()] for route, a in aggregates.items()])


@settings(max_examples=300, deadline=None)
@given(st.lists(durations, max_size=60))
def test_add_all_buckets_as_add_does_in_the_same_order(values: list[int]) -> None:
    one, batch = Histogram(), Histogram()
    batch.add(7)
    one.add(7)  # some buckets already there
    for ns in values:
        one.add(ns)
    batch.add_all(values)
    assert list(batch.buckets.items()) == list(one.buckets.items())
    assert batch.count == one.count == len(values) + 1


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.integers(-(2**63), 2**63), st.integers(0, 2**63).map(lambda n: n >> (n % 64))))
def test_a_durations_kept_bits_are_its_buckets_lower_edge(ns: int) -> None:
    """``ns & _KEPT_BITS[bit length]`` falls in ns's bucket: counting those edges is exact."""
    edge = ns & _KEPT_BITS[ns.bit_length()]
    assert bucket_of(edge) == bucket_of(ns)
    if ns > 0:  # and it is the lowest duration there
        assert edge <= ns
        assert bucket_of(edge - 1) != bucket_of(ns)


def test_every_bit_length_up_to_64_has_its_edges() -> None:
    for length in range(65):
        top = (1 << length) - 1  # the largest duration of this bit length
        assert bucket_of(top & _KEPT_BITS[length]) == bucket_of(top)
    histogram = Histogram()
    histogram.add_all([2**64 + 5, 2**80, -(2**70), 3])  # beyond the table: one by one
    assert histogram.buckets == dict(Counter(map(bucket_of, [2**64 + 5, 2**80, -(2**70), 3])))


def record(rec: Recorder, chunk: list[tuple[Any, ...]]) -> None:
    """record_match each match of ``chunk``, at the time the match says."""
    times = iter([m[5] for m in chunk])
    clock = types.SimpleNamespace(time=times.__next__)
    real = recorder_module.time
    recorder_module.time = clock  # type: ignore[assignment]
    try:
        for route, old_wall, old_cpu, new_wall, new_cpu, _, only in chunk:
            rec.record_match(route, old_wall, old_cpu, new_wall, new_cpu, only)
    finally:
        recorder_module.time = real


@SETTINGS
@given(
    chunks=st.lists(
        st.tuples(
            st.lists(matches, max_size=MATCHES_PER_MERGE + 40),  # some merge as the buffer fills
            st.integers(1, 12),  # the timeline's length meanwhile: minutes get dropped
            st.booleans(),  # recorded on a thread of its own
        ),
        min_size=1,
        max_size=4,
    ),
    routes=st.integers(1, 7),
)
def test_merged_matches_equal_the_one_by_one_aggregates(
    chunks: list[tuple[list[tuple[Any, ...]], int, bool]], routes: int
) -> None:
    rec = Recorder()
    expected: dict[str, RouteAggregate] = {}
    limit = recorder_module.TIMELINE_MINUTES
    try:
        for chunk, minutes, threaded in chunks:
            chunk = [(chr(ord("a") + ord(m[0]) % routes), *m[1:]) for m in chunk]
            recorder_module.TIMELINE_MINUTES = minutes
            if threaded:  # its buffer outlives it, and is merged by the next reader
                thread = threading.Thread(target=record, args=(rec, chunk))
                thread.start()
                thread.join()
            else:
                record(rec, chunk)
            one_by_one(expected, chunk)
            got = rec.snapshot()
            assert as_text(got) == as_text(expected)
    finally:
        recorder_module.TIMELINE_MINUTES = limit
    assert list(got) == list(expected)
    for aggregate in got.values():
        for label in ("old", "new"):
            assert aggregate.latency[label].count == sum(aggregate.latency[label].buckets.values())
            assert aggregate.cpu[label].count == sum(aggregate.cpu[label].buckets.values())


@SETTINGS
@given(st.lists(matches, min_size=1, max_size=80), st.lists(matches, max_size=80))
def test_matched_adds_to_an_aggregate_that_already_has_observations(
    before: list[tuple[Any, ...]], batch: list[tuple[Any, ...]]
) -> None:
    """Onto existing buckets, totals and minutes (a full timeline included)."""
    limit = recorder_module.TIMELINE_MINUTES
    recorder_module.TIMELINE_MINUTES = 4
    try:
        mine, reference = RouteAggregate("r"), RouteAggregate("r")
        for aggregate in (mine, reference):
            for _, old_wall, old_cpu, new_wall, new_cpu, when, only in before:
                aggregate.compared(old_wall, old_cpu, new_wall, new_cpu, when, only)
        if batch:
            mine.matched(list(zip(*batch, strict=True)))
        for _, old_wall, old_cpu, new_wall, new_cpu, when, only in batch:
            reference.compared(old_wall, old_cpu, new_wall, new_cpu, when, only)
            reference.matches += 1
    finally:
        recorder_module.TIMELINE_MINUTES = limit
    assert json.dumps(mine.to_dict()) == json.dumps(reference.to_dict())


def test_a_summary_read_back_with_more_minutes_than_kept_drops_them_as_one_by_one() -> None:
    """A timeline already longer than TIMELINE_MINUTES (a merged log): each new minute drops
    only the oldest one, as compared() does, not all the extra ones at once."""
    mine = RouteAggregate("r")
    mine.timeline = {m: [1, 0] for m in range(recorder_module.TIMELINE_MINUTES + 3)}
    reference = RouteAggregate.from_dict(mine.to_dict())
    late = 60.0 * (recorder_module.TIMELINE_MINUTES + 10)
    whens = [late, late + 60, late]
    mine.matched([("r",) * 3, (5,) * 3, (-1,) * 3, (6,) * 3, (-1,) * 3, tuple(whens), (None,) * 3])
    for when in whens:
        reference.compared(5, -1, 6, -1, when)
        reference.matches += 1
    assert mine.timeline == reference.timeline
    assert len(mine.timeline) == recorder_module.TIMELINE_MINUTES + 3


def test_counts_are_exact_with_many_threads_recording_while_others_read() -> None:
    """Threads record matches (several routes, some CPU times not measured) without a lock,
    switching as often as the interpreter can, while readers snapshot: nothing lost or twice."""
    threads, calls = 8, 1500
    routes = ("a", "b", "c")
    seen: list[int] = []
    rec = Recorder()

    def work(seed: int) -> None:
        for n in range(calls):
            cpu = -1 if n % 3 else n + seed
            rec.record_match(routes[n % 3], n + seed, cpu, 2 * n, n, "old" if n % 5 else None)

    def read() -> None:
        for _ in range(40):
            seen.append(sum(a.comparisons for a in rec.snapshot().values()))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        pool = [threading.Thread(target=work, args=(1000 * i,)) for i in range(threads)]
        readers = [threading.Thread(target=read) for _ in range(2)]
        for thread in [*pool, *readers]:
            thread.start()
        for thread in [*pool, *readers]:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    expected: dict[str, RouteAggregate] = {}
    for seed in range(0, 1000 * threads, 1000):
        for n in range(calls):
            cpu = -1 if n % 3 else n + seed
            only = "old" if n % 5 else None
            one_by_one(expected, [(routes[n % 3], n + seed, cpu, 2 * n, n, BASE, only)])
    got = rec.snapshot()
    for route in routes:
        mine, reference = got[route].to_dict(), expected[route].to_dict()
        assert sum(count for count, _ in mine.pop("timeline").values()) == threads * calls // 3
        reference.pop("timeline")
        assert mine == reference
    assert seen == sorted(seen)  # no reader ever saw a count go back
    assert len(rec._buffers) <= 1  # the ended threads' buffers are forgotten


@pytest.mark.parametrize("routes", [1, 3, 6])
def test_a_full_buffer_merges_into_the_aggregates_on_its_own(routes: int) -> None:
    rec = Recorder()
    for n in range(MATCHES_PER_MERGE):
        rec.record_match(f"r{n % routes}", n, -1, n + 1, -1, None)
    assert rec._local.pending == []  # merged by the last record_match, before any read
    assert sum(a.comparisons for a in rec._routes.values()) == MATCHES_PER_MERGE
    assert list(rec._routes) == [f"r{i}" for i in range(routes)]


def test_the_buffers_of_several_threads_merge_in_one_batch() -> None:
    """Threads that each buffer fewer than MATCHES_PER_MERGE matches are merged together by
    the next reader: one batch of all of them, over several routes."""
    threads, calls = 5, MATCHES_PER_MERGE - 6
    rec = Recorder()
    registered = threading.Barrier(threads)
    sent: list[list[tuple[Any, ...]]] = [[] for _ in range(threads)]

    def work(i: int) -> None:
        for n in range(calls):
            match = (f"r{(n * i) % 7}", n * i, n - 2, 3 * n, -1, BASE, [None, "old", "new"][n % 3])
            rec.record_match(*match[:5], match[6])
            sent[i].append(match)
            if n == 0:
                registered.wait()  # every buffer is registered: none is merged until read

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert sum(len(pending) for _, pending in rec._buffers) >= threads * (calls - 1)
    got = rec.snapshot()
    expected: dict[str, RouteAggregate] = {}
    for matches_of_thread in sent:
        one_by_one(expected, matches_of_thread)
    assert sorted(got) == sorted(expected)
    for route, aggregate in got.items():
        mine, reference = aggregate.to_dict(), expected[route].to_dict()
        assert sum(count for count, _ in mine.pop("timeline").values()) == mine["comparisons"]
        reference.pop("timeline")
        assert mine == reference
