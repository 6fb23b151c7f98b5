"""The example shop under real servers (gunicorn and uvicorn, 2 workers each, no --preload),
driven by real HTTP requests from httpx: the canary holds per user across requests and workers,
signed pins are honoured and nothing else is, and every worker's event log adds up to one
report with the right totals."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest
from servers import Server, Servers, new_connections

import dualrun
from dualrun.context import RequestContext
from dualrun.pins import mint

pytestmark = pytest.mark.slow

SECRET = "a-secret-for-the-server-tests-0123"
CANARY = 30
BOLT = "bolt:1"  # 1.4 rounds 0.125 to 0.12, 1.5 to 0.13
BY_SUBTOTAL = {"0.12": "old", "0.13": "new"}
CLIENT = new_connections()


def expected(user: str) -> str:
    """The version the canary gives ``user``: the same stable hash in every process."""
    request = RequestContext(user, None, MappingProxyType({}), {})
    return dualrun.Canary(percent=CANARY).choose(request)


def get(server: Server, user: str, **headers: str) -> httpx.Response:
    """One request on a new connection (so the workers share the load)."""
    answer = CLIENT.get(
        f"{server.url}/quote", params={"items": BOLT}, headers={"X-User-Id": user, **headers}
    )
    assert answer.status_code == 200, answer.text
    return answer


def label_of(answer: httpx.Response) -> str:
    by_body = BY_SUBTOTAL[answer.json()["subtotal"]]
    assert answer.headers["X-Dualrun-Served-By"] == by_body
    return by_body


def report_of(logs: list[Path]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "dualrun", "report", "--format", "json", *map(str, logs)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_canary_pins_and_merged_logs_across_workers(
    kind: Any, servers: Servers, tmp_path: Path
) -> None:
    env = {
        "SHOP_CANARY": str(CANARY),
        "SHOP_SHADOW": "100",  # every request served by old is compared with new
        "SHOP_PIN_SECRET": SECRET,
        "SHOP_EVENT_LOG": str(tmp_path / "events-{pid}.jsonl"),
    }
    server = servers.start(kind, workers=2, env=env)
    users = [f"user-{n}" for n in range(60)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda u: (u, get(server, u)), users * 3))
    workers_of: dict[str, set[str]] = {}
    for user, answer in answers:
        assert label_of(answer) == expected(user)
        workers_of.setdefault(user, set()).add(answer.headers["X-Shop-Worker"])
    assert len({w for ws in workers_of.values() for w in ws}) == 2, "both workers served"
    assert any(len(ws) == 2 for ws in workers_of.values()), "some user met both workers"
    shares = Counter(expected(u) for u in users)
    assert 0 < shares["new"] < len(users)

    # Pins: a valid token wins over the canary; anything else is ignored, the app answers.
    old_user = next(u for u in users if expected(u) == "old")
    new_user = next(u for u in users if expected(u) == "new")
    pin = "X-Dualrun-Version"
    pinned = {
        (old_user, mint("new", SECRET, ttl=60)): "new",
        (new_user, mint("old", SECRET, ttl=60)): "old",
        (old_user, mint("new", SECRET, ttl=1, now=time.time() - 60)): "old",  # expired
        (old_user, mint("new", "some-other-secret-0123456", ttl=60)): "old",  # forged
        (new_user, "old"): "new",  # a bare label from an untrusted address
        (new_user, "old.not-a-time.sig"): "new",  # malformed
    }
    for (user, token), label in pinned.items():
        for _ in range(2):
            assert label_of(get(server, user, **{pin: token})) == label

    # A streamed body is computed while the server sends it: still in its request's context.
    streamed = Counter()
    for user in users[:10]:
        answer = CLIENT.get(f"{server.url}/quotes/stream?n=5", headers={"X-User-Id": user})
        quotes = [json.loads(line) for line in answer.text.splitlines()]
        by_first = {"0.12": "old", "0.13": "new"}[quotes[0]["subtotal"]]  # 1 bolt
        by_last = {"0.62": "old", "0.63": "new"}[quotes[4]["subtotal"]]  # 5 bolts
        assert by_first == by_last == expected(user)
        streamed[expected(user)] += 5

    server.stop()
    logs = sorted(tmp_path.glob("events-*.jsonl"))
    assert len(logs) == 2, f"one log per worker: {logs}\n{server.output()}"
    report = report_of(logs)
    (route,) = report["routes"]
    served = Counter(label for _, answer in answers for label in [label_of(answer)])
    served.update(label for label in pinned.values() for _ in range(2))
    served.update(streamed)
    assert route["calls"] == {"old": served["old"], "new": served["new"]}
    assert route["comparisons"] == served["old"]  # Shadow(primary="old", sample=100)
    # Every quote differs (0.125 is rounded differently) but the streamed ones of 2, 3 and
    # 4 bolts (0.25, 0.375 and 0.5 round alike).
    assert route["matches"] == 3 * streamed["old"] // 5
    assert route["mismatches"] == route["comparisons"] - route["matches"]
