"""Policies: stable bucketing with published test vectors, Canary, Fixed, custom policies,
broken policies, and bad input."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from routing_helpers import make_pair, target

import dualrun
from dualrun.context import EMPTY

# Published test vectors: stable_bucket(key, salt) = the first 8 bytes of SHA-1 of
# f"{salt}:{key}" (key through str) as a big-endian integer, scaled to [0, 100).
# Any implementation, in any language or process, must reproduce these exactly.
TEST_VECTORS: list[tuple[Any, str, float]] = [
    ("user-1", "", 8.31054515206927),
    ("user-2", "", 4.617956047107239),
    ("user-1", "checkout", 83.68578525069125),
    ("42", "", 16.5671669585202),
    (42, "", 16.5671669585202),  # the key goes through str(): 42 and "42" share a bucket
    ("alice", "pricing-v2", 8.994042451474106),
    ("", "", 2.2088946497431317),
    ("Zoë", "", 50.923902019944),  # UTF-8
    ("bob", "salt", 3.4238886943265565),
    (3.5, "x", 99.65612388161287),
]


@pytest.mark.parametrize(("key", "salt", "bucket"), TEST_VECTORS)
def test_published_vectors(key: Any, salt: str, bucket: float) -> None:
    assert dualrun.stable_bucket(key, salt) == bucket
    assert dualrun.Canary(50, salt=salt or None).salt == salt


def test_the_formula_recomputed_with_hashlib() -> None:
    digest = hashlib.sha1(b"checkout:user-1").digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64 * 100
    assert bucket == pytest.approx(83.68578525069125, rel=1e-15)
    assert dualrun.stable_bucket("user-1", "checkout") == pytest.approx(bucket, rel=1e-15)
    assert digest.hex().startswith("d63c")  # the bucket's top bits: 0xd6 / 256 ~ 83.6%


def test_buckets_lie_in_0_to_100_and_default_salt_is_empty() -> None:
    buckets = [dualrun.stable_bucket(f"k{i}") for i in range(2_000)]
    assert all(0 <= b < 100 for b in buckets)
    assert min(buckets) < 1 and max(buckets) > 99
    assert dualrun.stable_bucket("user-1") == dualrun.stable_bucket("user-1", "")


def test_the_salt_reshuffles_buckets() -> None:
    keys = [f"user-{i}" for i in range(200)]
    a = [dualrun.stable_bucket(k, "a") for k in keys]
    b = [dualrun.stable_bucket(k, "b") for k in keys]
    assert sum(x != y for x, y in zip(a, b, strict=True)) == 200
    canary_a, canary_b = dualrun.Canary(50, salt="a"), dualrun.Canary(50, salt="b")
    differ = 0
    for key in keys:
        with dualrun.context(key=key) as request:
            differ += canary_a.choose(request) != canary_b.choose(request)
    assert 50 < differ < 150  # independent halves disagree about half the time


# -- Canary ----------------------------------------------------------------------------------


def choose_for(policy: Any, key: Any = None, **attrs: Any) -> str:
    with dualrun.context(key=key, **attrs) as request:
        label: str = policy.choose(request)
    return label


def test_canary_compares_the_bucket_with_the_percent() -> None:
    for key, salt, bucket in TEST_VECTORS:
        assert choose_for(dualrun.Canary(bucket, salt=salt), key) == "old"  # strictly below
        above = math.nextafter(bucket, 101)
        assert choose_for(dualrun.Canary(above, salt=salt), key) == "new"


def test_canary_zero_never_new_and_hundred_always_new() -> None:
    zero, hundred = dualrun.Canary(0), dualrun.Canary(100)
    keys = [f"user-{i}" for i in range(2_000)] + ["", 0, 12.5]
    assert {choose_for(zero, k) for k in keys} == {"old"}
    assert {choose_for(hundred, k) for k in keys} == {"new"}
    # without a key, at random: still never / always
    assert {zero.choose(EMPTY) for _ in range(500)} == {"old"}
    assert {hundred.choose(EMPTY) for _ in range(500)} == {"new"}


def test_canary_without_a_key_is_random_per_call() -> None:
    canary = dualrun.Canary(50)
    labels = [canary.choose(EMPTY) for _ in range(400)]
    assert 100 < labels.count("new") < 300


def test_canary_key_callable_reads_the_request() -> None:
    canary = dualrun.Canary(50, key=lambda request: request.attrs["user"], salt="s")
    for user in ("ann", "bob", "cyd", "dee", "eve", "fay"):
        expected = "new" if dualrun.stable_bucket(user, "s") < 50 else "old"
        assert choose_for(canary, key="ignored", user=user) == expected


def test_canary_with_percent_keeps_key_and_salt() -> None:
    def key(request: dualrun.RequestContext) -> Any:
        return request.key

    canary = dualrun.Canary(5, key=key, salt="ramp")
    ramped = canary.with_percent(50)
    assert (ramped.percent, ramped.key, ramped.salt) == (50.0, key, "ramp")
    assert canary.percent == 5.0
    assert repr(ramped) == "Canary(percent=50, salt='ramp')"


@pytest.mark.parametrize("percent", [0, 0.0, 5, 12.5, 99.999, 100, 100.0])
def test_canary_accepts_numbers_from_0_to_100(percent: float) -> None:
    canary = dualrun.Canary(percent)
    assert canary.percent == float(percent)
    assert isinstance(canary.percent, float)


@pytest.mark.parametrize(
    "bad", [-1, -0.001, 100.1, 101, "5", None, True, False, math.nan, math.inf, -math.inf, [5]]
)
def test_canary_refuses_a_bad_percent(bad: Any) -> None:
    with pytest.raises(ValueError, match="0 to 100") as info:
        dualrun.Canary(bad)
    assert repr(bad) in str(info.value)


def test_canary_refuses_a_bad_key_or_salt() -> None:
    with pytest.raises(ValueError, match="callable"):
        dualrun.Canary(5, key="user_id")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="salt is a string"):
        dualrun.Canary(5, salt=7)  # type: ignore[arg-type]


# -- Fixed -----------------------------------------------------------------------------------


def test_fixed() -> None:
    assert dualrun.Fixed("old").choose(EMPTY) == "old"
    assert choose_for(dualrun.Fixed("new"), "k") == "new"
    assert repr(dualrun.Fixed("new")) == "Fixed('new')"


@pytest.mark.parametrize("bad", ["x", "OLD", "New", "", None, 1, True])
def test_fixed_refuses_anything_but_old_or_new(bad: Any) -> None:
    with pytest.raises(ValueError, match="'old' or 'new'") as info:
        dualrun.Fixed(bad)
    assert repr(bad) in str(info.value)


# -- custom policies, routed -----------------------------------------------------------------


@pytest.fixture
def versions(tmp_path: Path) -> Iterator[dualrun.VersionPair]:
    pair = make_pair(tmp_path)
    yield pair
    pair.unload()


class Allowlist:
    """The documented interface is one method: choose(request) -> "old" | "new"."""

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys

    def choose(self, request: dualrun.RequestContext) -> str:
        return "new" if request.key in self.keys else "old"


class BetaTesters:
    def choose(self, request: dualrun.RequestContext) -> str:
        return "new" if request.attrs.get("beta") else "old"


def test_a_custom_allowlist_policy(versions: dualrun.VersionPair) -> None:
    policy = Allowlist({"ann", "bob"})
    assert isinstance(policy, dualrun.Policy)  # structurally: no base class needed
    d = dualrun.Dispatcher(versions, policy=policy)  # type: ignore[arg-type]
    version = d.route(target(versions, "version"))
    served = {}
    for user in ("ann", "bob", "cyd", "dee"):
        with dualrun.context(key=user):
            served[user] = version()
    assert served == {"ann": "new", "bob": "new", "cyd": "old", "dee": "old"}
    assert version() == "old"  # outside any context: key None
    assert d.policy_error_count() == 0


def test_a_custom_policy_on_request_attrs(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=BetaTesters())  # type: ignore[arg-type]
    version = d.route(target(versions, "version"))
    with dualrun.context(key="u1", beta=True, region="eu"):
        assert version() == "new"
        assert dualrun.current().attrs == {"beta": True, "region": "eu"}  # type: ignore[union-attr]
    with dualrun.context(key="u2", beta=False):
        assert version() == "old"
    with dualrun.context(key="u3"):
        assert version() == "old"


def test_the_policy_interface_is_only_choose(versions: dualrun.VersionPair) -> None:
    assert [name for name in vars(dualrun.Policy) if not name.startswith("_")] == ["choose"]
    touched: list[str] = []
    seen: list[Any] = []

    class Minimal:
        __slots__ = ()

        def __getattribute__(self, name: str) -> Any:
            touched.append(name)
            return object.__getattribute__(self, name)

        def choose(self, request: dualrun.RequestContext) -> str:
            seen.append(request)
            return "new"

    d = dualrun.Dispatcher(versions, policy=Minimal())  # type: ignore[arg-type]
    version = d.route(target(versions, "version"))
    assert version() == "new"
    with dualrun.context(key="k", team="a"):
        assert version() == "new"
    assert set(touched) == {"choose"}
    assert seen[0].key is None and seen[0].pin is None and dict(seen[0].attrs) == {}
    assert (seen[1].key, dict(seen[1].attrs)) == ("k", {"team": "a"})
    assert d.report().policy.startswith("<")  # the policy's own repr


class Raises:
    def choose(self, request: dualrun.RequestContext) -> str:
        raise RuntimeError("no flag service")


class Bogus:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def choose(self, request: dualrun.RequestContext) -> Any:
        return self.answer


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        (Raises(), "RuntimeError: no flag service"),
        (Bogus("bogus"), "returned 'bogus'"),
        (Bogus(None), "returned None"),
        (Bogus("NEW"), "returned 'NEW'"),
        (dualrun.Canary(50, key=lambda request: request.attrs["missing"]), "KeyError"),
    ],
)
def test_a_broken_policy_serves_old_and_is_counted(
    versions: dualrun.VersionPair, policy: Any, why: str
) -> None:
    d = dualrun.Dispatcher(versions, policy=policy)
    version = d.route(target(versions, "version"))
    assert [version() for _ in range(3)] == ["old"] * 3  # outside a context: asked per call
    assert d.policy_error_count() == 3
    with dualrun.context(key="k"):
        assert [version() for _ in range(3)] == ["old"] * 3  # in a request: asked once
    assert d.policy_error_count() == 4
    assert d.last_policy_error is not None and why in d.last_policy_error
    with dualrun.context(key="k2", pin="new"):
        assert version() == "new"  # the pin does not ask the policy
    assert d.policy_error_count() == 4
    report = d.report()
    assert report.policy_errors == 4
    assert why in report.to_text()
    assert "policy errors: 4 (served by old)" in report.to_text()
    assert report.routes[0].calls == {"old": 6, "new": 1}
