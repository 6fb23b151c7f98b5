"""Every public constructor, ``load()`` and ``route()`` given anything: it works, or raises the
documented exception (``ValueError``, ``TypeError``, ``VersionLoadError``) with a message — never
an unrelated internal exception, and never a half-built object (no thread, no open log left).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import pricing_files, write_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dualrun
from dualrun.compare import IgnoreRules

DOCUMENTED = (ValueError, TypeError, dualrun.VersionLoadError)

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**30), 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["\ud800", "~nosuchuser/x", "git:", "git:~nosuchuser@HEAD", "old", "new"]),
    st.binary(max_size=8),
    st.lists(st.integers() | st.text(max_size=4), max_size=3),
    st.tuples(st.text(max_size=4)),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.sampled_from([object(), print, lambda *a: None, int, Ellipsis, NotImplemented]),
)


def threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def attempt(make: Callable[[], Any]) -> Any:
    """Call ``make``: a result, or a documented exception with a message."""
    before = threads()
    try:
        return make()
    except DOCUMENTED as exc:
        assert type(exc) in DOCUMENTED, f"{type(exc).__name__} (a subclass) raised: {exc}"
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        assert threads() <= before, "a failed constructor left a thread running"
        return None


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dualrun.VersionPair]:
    root = tmp_path_factory.mktemp("fuzz")
    pair = dualrun.load(
        "pricing",
        old=str(write_files(root / "v1", pricing_files("v1"))),
        new=str(write_files(root / "v2", pricing_files("v2"))),
    )
    yield pair
    pair.unload()


@pytest.fixture(autouse=True)
def no_dualrun_leftovers() -> Iterator[None]:
    """(The module-wide pair stays loaded across these tests.)"""
    yield


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SHADOW_PARAMETERS = [
    "primary",
    "sample",
    "compare",
    "ignore",
    "mode",
    "timeout",
    "calibrate",
    "clean",
    "copy",
    "tolerance",
    "exception_key",
    "workers",
    "queue_size",
    "calibrate_calls",
    "calibrate_sample",
    "redact",
]


@FUZZ
@given(name=st.sampled_from(SHADOW_PARAMETERS), value=ANYTHING)
def test_shadow(name: str, value: Any) -> None:
    attempt(lambda: dualrun.Shadow(**{name: value}))


@FUZZ
@given(percent=ANYTHING, key=ANYTHING, salt=ANYTHING)
def test_canary_and_fixed(percent: Any, key: Any, salt: Any) -> None:
    attempt(lambda: dualrun.Canary(percent))
    attempt(lambda: dualrun.Canary(5, key=key))
    attempt(lambda: dualrun.Canary(5, salt=salt))
    attempt(lambda: dualrun.Fixed(key))


@FUZZ
@given(
    name=st.sampled_from(
        [
            "min_comparisons",
            "max_mismatch_rate",
            "max_error_rate",
            "max_latency_ratio",
            "confidence",
            "latency_quantile",
        ]
    ),
    value=ANYTHING,
)
def test_gate(name: str, value: Any) -> None:
    attempt(lambda: dualrun.Gate(**{name: value}))


@FUZZ
@given(
    name=st.sampled_from(["redact", "summary_interval", "queue_size", "match_sample"]),
    value=ANYTHING,
    target=ANYTHING,
)
def test_event_log(name: str, value: Any, target: Any, tmp_path: Path) -> None:
    log = attempt(lambda: dualrun.EventLog(tmp_path / "log.jsonl", **{name: value}))
    if log is not None:
        log.close()
    if not isinstance(target, str | bytes):  # (a string is a file name: any is fine)
        other = attempt(lambda: dualrun.EventLog(target))
        if other is not None:
            other.close()


@FUZZ
@given(
    name=st.sampled_from(
        ["sample", "routes", "redact", "secret_fields", "max_bytes", "backups", "queue_size"]
    ),
    value=ANYTHING,
    path=ANYTHING,
)
def test_recording(name: str, value: Any, path: Any, tmp_path: Path) -> None:
    made = attempt(lambda: dualrun.Recording(tmp_path / "calls.jsonl", **{name: value}))
    if made is not None and hasattr(made, "close"):
        made.close()
    if not isinstance(path, str | bytes):  # (a string is a file name)
        other = attempt(lambda: dualrun.Recording(path))
        if other is not None and hasattr(other, "close"):
            other.close()


@FUZZ
@given(key=ANYTHING, pin=ANYTHING)
def test_context(key: Any, pin: Any) -> None:
    made = attempt(lambda: dualrun.context(key=key, pin=pin))
    if made is not None and not callable(key):  # (a callable key is for decorators only)
        with made:
            assert dualrun.current().key is key  # `is`: a NaN key is not == itself


@FUZZ
@given(key=ANYTHING, salt=ANYTHING)
def test_stable_bucket_of_any_key(key: Any, salt: Any) -> None:
    bucket = attempt(lambda: dualrun.stable_bucket(key, salt))
    if bucket is not None:
        assert 0 <= bucket < 100


def test_stable_bucket_of_a_key_with_lone_surrogates_is_a_bucket() -> None:
    bucket = dualrun.stable_bucket("user-\ud800")
    assert 0 <= bucket < 100 and bucket == dualrun.stable_bucket("user-\ud800")
    assert dualrun.Canary(50).choose(dualrun.context(key="\udfff")._state("\udfff")) in (
        "old",
        "new",
    )


@FUZZ
@given(
    name=st.sampled_from(
        ["policy", "shadow", "log", "migrate", "results_as", "require_context", "record"]
    ),
    value=ANYTHING,
)
def test_dispatcher(name: str, value: Any, versions: dualrun.VersionPair, tmp_path: Path) -> None:
    if name in ("log", "record") and isinstance(value, str):
        value = str(tmp_path / "fuzz.jsonl") if value else value
    made = attempt(lambda: dualrun.Dispatcher(versions, **{name: value}))
    if made is not None:
        made.close()
    attempt(lambda: dualrun.Dispatcher(value))


@FUZZ
@given(target=ANYTHING)
def test_route_and_intercept(target: Any, versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions)
    try:
        for make in (lambda: d.route(target), lambda: d.intercept(target)):
            try:
                made = make()
            except dualrun.TargetNotFoundError:
                continue
            except DOCUMENTED as exc:
                assert type(exc) in DOCUMENTED and str(exc), exc
                continue
            if hasattr(made, "undo"):
                made.undo()
    finally:
        d.close()


@FUZZ
@given(
    name=st.sampled_from(["steps", "gate", "interval", "on_change", "dispatcher"]),
    value=ANYTHING,
)
def test_rollout(name: str, value: Any, versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(primary="any"))
    try:
        if name == "dispatcher":
            attempt(lambda: dualrun.Rollout(value))
        else:
            attempt(lambda: dualrun.Rollout(d, **{name: value}))  # (not started: no thread)
    finally:
        d.close()


@FUZZ
@given(name=ANYTHING, old=ANYTHING, packages=ANYTHING)
def test_load(name: Any, old: Any, packages: Any, tmp_path: Path) -> None:
    good = str(write_files(tmp_path / "good", pricing_files("v1")))
    for args in (
        {"name": name, "old": good, "new": good},
        {"name": "pricing", "old": old, "new": good},
        {"name": "pricing", "old": good, "new": good, "packages": packages},
    ):
        pair = attempt(lambda args=args: dualrun.load(**args))
        if pair is not None:
            pair.unload()


@pytest.mark.parametrize(
    ("make", "expected", "words"),
    [
        (lambda: dualrun.Shadow(ignore=None), ValueError, "ignore"),
        (lambda: dualrun.Shadow(ignore=5), ValueError, "ignore"),
        (lambda: IgnoreRules([b"$.x"]), ValueError, "ignore rule"),
        (lambda: dualrun.load("pricing", old=".", new=".", packages=True), ValueError, "packages"),
        (
            lambda: dualrun.load("pricing", old="~nosuchuser/x", new="."),
            dualrun.VersionLoadError,
            "home directory",
        ),
        (
            lambda: dualrun.load("pricing", old="git:~nosuchuser@HEAD", new="."),
            dualrun.VersionLoadError,
            "home directory",
        ),
        (lambda: dualrun.Rollout("x"), ValueError, "dispatcher"),
        (lambda: dualrun.Rollout(None), ValueError, "dispatcher"),
    ],
    ids=[
        "Shadow(ignore=None)",
        "Shadow(ignore=5)",
        "ignore of bytes",
        "load(packages=True)",
        "load(~nosuchuser/x)",
        "load(git:~nosuchuser@HEAD)",
        "Rollout('x')",
        "Rollout(None)",
    ],
)
def test_the_reported_cases(make: Callable[[], Any], expected: type, words: str) -> None:
    with pytest.raises(expected) as caught:
        make()
    assert type(caught.value) is expected
    assert words in str(caught.value)


@pytest.mark.parametrize("value", [b"\x00", 5, [1], {"a": "b"}])
@pytest.mark.parametrize("name", ["secret_fields", "routes"])
def test_recording_names_of_the_wrong_type(name: str, value: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"Recording {name} is a string or a list of strings"):
        dualrun.Recording(tmp_path / "calls.jsonl", **{name: value})


def test_route_of_a_list(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions)
    try:
        with pytest.raises(ValueError, match="a target is a string"):
            d.route(["pricing.rules:Quote"])  # type: ignore[arg-type]
    finally:
        d.close()
