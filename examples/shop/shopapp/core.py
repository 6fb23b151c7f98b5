"""The framework-free core of the shop: both pricing versions, the dispatcher, the settings.

Everything is configured through environment variables, so a real server (gunicorn, uvicorn)
with many workers can be started with nothing but a command line:

==========================  ================================================================
``SHOP_CANARY``             percent of users served by pricing 1.5 (default 50)
``SHOP_SHADOW``             percent of requests also run on the other version and compared
                            (default 0: off)
``SHOP_SHADOW_MODE``        ``inline`` (default) or ``background``
``SHOP_EVENT_LOG``          the event log path; ``{pid}`` in it becomes the worker's pid
``SHOP_RECORD``             record every quote call here, for ``dualrun replay`` (``{pid}``
                            as above)
``SHOP_PIN_SECRET``         allow requests signed with this secret to pin a version
                            (``X-Dualrun-Version: <token from dualrun pin-token>``)
``SHOP_SERVED_BY``          ``1`` (default) adds ``X-Dualrun-Served-By`` to responses
``SHOP_METRICS_PORTS``      comma-separated ports; each worker serves its OpenTelemetry
                            metrics in Prometheus' format on the first one that is free
``SHOP_CONTROL``            a control store (SQLite file) every worker obeys: ``dualrun
                            control --db PATH promote`` and so on (default: none)
``SHOP_CONTROL_POLL``       seconds between the workers' reads of it (default 0.5)
==========================  ================================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dualrun
from dualrun.web import Pins

HERE = Path(__file__).resolve().parent.parent
OLD = HERE / "pricing_v1"  # pricing 1.4
NEW = HERE / "pricing_v2"  # pricing 1.5: half-up rounding, a discount_reason field
KEY_HEADER = "X-User-Id"
PIN_HEADER = "X-Dualrun-Version"


@dataclass
class Shop:
    """One process's pricing: the routed ``quote`` and the dispatcher behind it."""

    dispatcher: dualrun.Dispatcher
    quote: Callable[[dict[str, Any]], dict[str, Any]]
    middleware_options: dict[str, Any] = field(default_factory=dict)
    metrics_port: int | None = None

    def close(self) -> None:
        self.dispatcher.close()
        self.dispatcher.versions.unload()


def build(env: Mapping[str, str] = os.environ) -> Shop:
    """Load both pricing versions and route ``pricing.engine:quote`` as ``env`` says."""
    versions = dualrun.load("pricing", old=str(OLD), new=str(NEW))
    shadow_percent = float(env.get("SHOP_SHADOW", "0"))
    shadow = (
        dualrun.Shadow(sample=shadow_percent, mode=env.get("SHOP_SHADOW_MODE", "inline"))
        if shadow_percent > 0
        else None
    )
    log = env.get("SHOP_EVENT_LOG") or None
    if log is not None:
        log = log.replace("{pid}", str(os.getpid()))
    control = env.get("SHOP_CONTROL") or None
    dispatcher = dualrun.Dispatcher(
        versions,
        policy=dualrun.Canary(percent=float(env.get("SHOP_CANARY", "50"))),
        shadow=shadow,
        log=log,
        record=env.get("SHOP_RECORD") or None,
        control=None
        if control is None
        else dualrun.SQLiteControl(
            control, poll_interval=float(env.get("SHOP_CONTROL_POLL", "0.5"))
        ),
    )
    secret = env.get("SHOP_PIN_SECRET")
    options: dict[str, Any] = {
        "key": f"header:{KEY_HEADER}",
        "served_by_header": env.get("SHOP_SERVED_BY", "1") == "1",
        "pins": None if not secret else Pins(secret, header=PIN_HEADER),
    }
    shop = Shop(dispatcher, dispatcher.route("pricing.engine:quote"), options)
    ports = env.get("SHOP_METRICS_PORTS")
    if ports:
        from shopapp.metrics import serve_metrics

        shop.metrics_port, _ = serve_metrics(dispatcher, [int(p) for p in ports.split(",")])
    return shop


def cart_from_query(items: str) -> dict[str, Any]:
    """``apple:3,bolt:5`` -> ``{"items": [{"sku": "apple", "qty": 3}, ...]}``."""
    cart = []
    for part in items.split(","):
        sku, _, qty = part.partition(":")
        cart.append({"sku": sku.strip(), "qty": int(qty or 1)})
    return {"items": cart}
