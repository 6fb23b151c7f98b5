"""Calls recorded while the example shop serves real HTTP requests (gunicorn, two workers)
replay into a report whose counts equal the report the workers' shadows wrote in process."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from servers import SHOP, Servers, new_connections

pytestmark = pytest.mark.slow

CARTS = ["bolt:1", "bolt:3", "apple:3", "washer:11", "coffee:2,bolt:5", "melon:1", "nothing:1"]


def dualrun_json(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "dualrun", *args, "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def counts(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            r["route"],
            r["comparisons"],
            r["matches"],
            r["mismatches"],
            r["errors"],
            sorted((d["path"], d["kind"], d["count"]) for d in r["divergences"]),
        )
        for r in report["routes"]
    ]


def test_calls_recorded_under_gunicorn_replay_into_the_same_report(
    servers: Servers, tmp_path: Path
) -> None:
    env = {
        "SHOP_CANARY": "0",  # every call served by 1.4 ...
        "SHOP_SHADOW": "100",  # ... and compared with 1.5 in process
        "SHOP_EVENT_LOG": str(tmp_path / "events-{pid}.jsonl"),
        "SHOP_RECORD": str(tmp_path / "calls-{pid}.jsonl"),
    }
    server = servers.start("gunicorn", workers=2, env=env)
    client = new_connections()

    def ask(n: int) -> int:
        items = CARTS[n % len(CARTS)]
        answer = client.get(
            f"{server.url}/quote", params={"items": items}, headers={"X-User-Id": f"u{n}"}
        )
        return answer.status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(ask, range(140)))
    assert statuses.count(400) == 20 and statuses.count(200) == 120
    server.stop()

    recordings = sorted(map(str, tmp_path.glob("calls-*.jsonl")))
    logs = sorted(map(str, tmp_path.glob("events-*.jsonl")))
    assert len(recordings) == 2 and len(logs) == 2, server.output()
    _, in_process = dualrun_json("report", *logs)
    old, new = str(SHOP / "pricing_v1"), str(SHOP / "pricing_v2")
    code, replayed = dualrun_json("replay", *recordings, "--old", old, "--new", new)
    assert code == 1  # 1.5 rounds half up: divergences
    assert counts(replayed) == counts(in_process)
    (route,) = replayed["routes"]
    assert route["comparisons"] == 140 and route["errors"] == {"old": 20, "new": 20}
    assert route["mismatches"] > 0
    code, against = dualrun_json("replay", *recordings, "--new", old, "--against-recorded")
    assert code == 0 and against["routes"][0]["matches"] == 140
