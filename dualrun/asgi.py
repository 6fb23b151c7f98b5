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
import functools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from dualrun.context import current_request
from dualrun.web import Middleware, WebRequest, served_version

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


class DualrunASGI(Middleware[ASGIApp]):
    """Wrap an ASGI 3 application so each request is a ``dualrun.context``.

    The options are those of :class:`dualrun.wsgi.DualrunWSGI`. A refused pin with
    ``Pins(reject=True)`` is answered 400 (HTTP) or closed with code 1008 (websocket).
    """

    kind = "ASGI"

    @functools.cached_property
    def _served_by(self) -> bytes | None:
        """The served-by header's name as a response's headers hold it."""
        served_by = self.settings.served_by
        return None if served_by is None else served_by.lower().encode()

    @staticmethod
    def _spelled(name: str) -> bytes:
        return name.encode("latin-1")

    def _header(self, raw: Scope, name: str) -> str | None:
        return _header(raw, self._names[name])

    def _peer(self, raw: Scope) -> str | None:
        client = raw.get("client")
        return None if not client else str(client[0])

    def _request(self, raw: Scope, client: str | None) -> WebRequest:
        return _request(raw, client)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        state = self._open(scope)
        if state is None:
            await _refuse(kind, send)
            return
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
            self._leave(state, token)
            self._finish(state, failed)


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
