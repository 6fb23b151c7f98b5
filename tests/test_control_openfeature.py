"""The state from an OpenFeature flag: real flagd evaluation (the flagd provider in its in-process
file mode, no network), the flag file rewritten while traffic flows. Changes apply within the
poll interval; provider errors and invalid states keep the last good state, are counted, and
never reach a call; the percent buckets with dualrun's stable hash.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_helpers import Lab, eventually, served
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType

import dualrun

_domains = itertools.count()


def write_flags(path: Path, state: object, key: str = "dualrun") -> None:
    flags = {key: {"state": "ENABLED", "variants": {"v": state}, "defaultVariant": "v"}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"flags": flags}))
    tmp.replace(path)  # whole files only: flagd never reads half of one


@pytest.fixture
def flagd(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    path = tmp_path / "flags.json"
    write_flags(path, {"mode": "fixed", "label": "old"})
    provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))
    domain = f"dualrun-test-{next(_domains)}"
    api.set_provider_and_wait(provider, domain)
    try:
        yield path, api.get_client(domain)
    finally:
        provider.shutdown()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


def test_the_flag_steers_the_dispatcher_while_traffic_flows(
    lab: Lab, flagd: tuple[Path, Any]
) -> None:
    path, client = flagd
    control = dualrun.OpenFeatureControl(client, "dualrun", poll_interval=0.1)
    versions = lab.pair()
    d = lab.dispatcher(versions, control=control)
    quote = d.route(f"{versions.old.name}.engine:quote")
    failures: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            try:
                served(quote, n % 300)
            except BaseException as exc:  # nothing may reach the caller
                failures.append(exc)
            n += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        write_flags(path, {"mode": "canary", "percent": 30, "salt": "of"})
        took = eventually(lambda: getattr(d.policy, "percent", None) == 30)
        users = range(300)
        expected = {u: "new" if dualrun.stable_bucket(u, "of") < 30 else "old" for u in users}
        assert {u: served(quote, u) for u in users} == expected  # dualrun's hash, not flagd's

        write_flags(path, {"mode": "promoted"})
        eventually(lambda: all(served(quote, u) == "new" for u in users))

        errors = control.errors
        write_flags(path, {"mode": "canary", "percent": 150})  # not a valid state
        eventually(lambda: control.errors > errors)
        write_flags(path, {"mode": "fixed"}, key="something-else")  # the flag is gone
        eventually(
            lambda: control.errors > errors + 3 and "FLAG_NOT_FOUND" in str(control.last_error)
        )
        assert all(served(quote, u) == "new" for u in users)  # the last good state holds
        assert d.control is not None and d.control.error is not None  # type: ignore[attr-defined]

        write_flags(path, {"mode": "rolled back", "pins": False})
        eventually(lambda: all(served(quote, u, pin="new") == "old" for u in users))
        assert d.control.error is None  # type: ignore[attr-defined]
    finally:
        stop.set()
        thread.join(10)
    assert failures == []
    assert took < 2.0


def test_a_configuration_changed_event_wakes_the_agent_before_its_poll(
    lab: Lab, flagd: tuple[Path, Any]
) -> None:
    path, client = flagd
    control = dualrun.OpenFeatureControl(client, "dualrun", poll_interval=60)
    versions = lab.pair()
    d = lab.dispatcher(versions, control=control)
    write_flags(path, {"mode": "promoted"})
    start = time.monotonic()
    eventually(lambda: repr(d.policy) == "Fixed('new')", timeout=10)
    assert time.monotonic() - start < 10  # long before the 60 s poll


def test_bad_arguments(lab: Lab) -> None:
    with pytest.raises(ValueError, match="OpenFeature client"):
        dualrun.OpenFeatureControl(object(), "dualrun")
    with pytest.raises(ValueError, match="flag_key"):
        dualrun.OpenFeatureControl(api.get_client(), "")


def test_with_a_store_processes_acknowledge_the_flags_version(
    lab: Lab, flagd: tuple[Path, Any], tmp_path: Path
) -> None:
    path, client = flagd
    store = dualrun.SQLiteControl(tmp_path / "acks.db", heartbeat_interval=0.2, live_after=5)
    control = dualrun.OpenFeatureControl(client, "dualrun", poll_interval=0.1, store=store)
    versions = lab.pair()
    d = lab.dispatcher(versions, control=control)
    write_flags(path, {"mode": "canary", "percent": 10, "version": 41})
    eventually(lambda: [p.applied for p in store.status().live] == [41])
    assert getattr(d.policy, "percent", None) == 10
