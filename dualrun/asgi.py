"""ASGI 3 middleware: each HTTP request and websocket connection runs in a ``dualrun.context``.

::

    from dualrun.asgi import DualrunASGI
    app.add_middleware(DualrunASGI, key="header:X-User-Id")   # FastAPI / Starlette

Lifespan (and any other scope type) passes through untouched. The application, its streamed
body chunks and the tasks it starts all run inside the request's context (asyncio copies the
context into tasks), so the request stays on one version until its last chunk is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from dualrun import web
from dualrun.context import Label, RequestContext, current_request
from dualrun.web import (
    NO_ATTRS,
    Pins,
    Settings,
    Source,
    WebRequest,
    parse_cookies,
    served_version,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for header, value in scope.get("headers") or ():
        if header == name:
            return bytes(value).decode("latin-1")
    return None


def _request(scope: Scope, client: str | None) -> WebRequest:
    headers: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        headers.setdefault(bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
    path = scope.get("root_path", "") + scope.get("path", "")
    return WebRequest(scope.get("method", "GET"), path, headers, client, scope)


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return None if not client else str(client[0])


class DualrunASGI:
    """Wrap an ASGI 3 application so each request is a ``dualrun.context``.

    The options are those of :class:`dualrun.wsgi.DualrunWSGI`. A refused pin with
    ``Pins(reject=True)`` is answered 400 (HTTP) or closed with code 1008 (websocket).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        key: str | Source | None = None,
        attrs: Mapping[str, str | Source] | None = None,
        pins: Pins | None = None,
        served_by_header: bool | str = False,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app is an ASGI application (a callable), got {app!r}")
        self.app = app
        self.settings = settings = Settings(key, attrs, pins, served_by_header)
        self._names = {  # header names as the scope holds them
            spec[1]: spec[1].encode("latin-1")
            for spec in (settings.key, *settings.attrs.values())
            if isinstance(spec, tuple) and spec[0] == "header"
        }
        self._served_by = (
            None if self.settings.served_by is None else self.settings.served_by.lower().encode()
        )

    def stats(self) -> dict[str, Any]:
        """Requests, the versions that served them, errors and pins, counted so far."""
        return self.settings.stats.snapshot()

    def _read(self, spec: Any, scope: Scope, request: WebRequest | None) -> Any:
        if request is not None and callable(spec):
            return self.settings.call(spec, request)
        kind, name = spec
        if kind == "header":
            return _header(scope, self._names[name])
        return parse_cookies(_header(scope, b"cookie")).get(name)

    def _pin(self, scope: Scope, pins: Pins) -> tuple[Label | None, bool]:
        value = None if pins.header is None else _header(scope, pins.header.encode("latin-1"))
        if value is None and pins.cookie is not None:
            value = parse_cookies(_header(scope, b"cookie")).get(pins.cookie)
        if not value or value.isspace():
            return None, False
        client = pins.client(_peer(scope), _header(scope, b"x-forwarded-for"))
        outcome = pins.judge(value, client)
        counters = self.settings.stats.pins
        if outcome == "old" or outcome == "new":
            next(counters["honoured"])
            return outcome, False
        next(counters[outcome])
        return None, pins.reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        settings = self.settings
        next(settings.stats.requests)
        pin: Label | None = None
        if settings.pins is not None:
            pin, refuse = self._pin(scope, settings.pins)
            if refuse:
                await _refuse(kind, send)
                return
        request = None
        if settings.needs_request:
            client = _peer(scope)
            if settings.pins is not None:
                client = settings.pins.client(client, _header(scope, b"x-forwarded-for"))
            request = _request(scope, client)
        key = None if settings.key is None else self._read(settings.key, scope, request)
        attrs = (
            {name: self._read(spec, scope, request) for name, spec in settings.attrs.items()}
            if settings.attrs
            else NO_ATTRS
        )
        state = RequestContext(key, pin, attrs, {})
        failed = False
        served_by = self._served_by

        async def send_in_request(message: Message) -> None:
            nonlocal failed
            what = message["type"]
            if what == "http.response.start" or what == "websocket.accept":
                if message.get("status", 200) >= 500:
                    failed = True
                if served_by is not None:
                    label = served_version(state.pin, state.decisions)
                    if label is not None:
                        message = {
                            **message,
                            "headers": [*message.get("headers", ()), (served_by, label.encode())],
                        }
            await send(message)

        token = current_request.set(state)
        try:
            await self.app(scope, receive, send_in_request)
        except asyncio.CancelledError:  # the client went away: not the app's error
            raise
        except BaseException:
            failed = True
            raise
        finally:
            label = served_version(state.pin, state.decisions) or "none"
            if web.annotate is not None:  # the serving version on the request's span
                web.annotate(label, pin is not None)
            current_request.reset(token)
            next(settings.stats.served[label])
            if failed:
                next(settings.stats.errors[label])


async def _refuse(kind: str, send: Send) -> None:
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"invalid dualrun pin\n"})
