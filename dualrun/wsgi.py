"""WSGI middleware (PEP 3333): each request runs in a ``dualrun.context`` of its own.

::

    from dualrun.wsgi import DualrunWSGI
    app.wsgi_app = DualrunWSGI(app.wsgi_app, key="header:X-User-Id")   # Flask

The response body is produced inside the request's context too (a streamed body, generated
while the server iterates, is routed with the request), and the request is counted for the
version that served it when the server closes the body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
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

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
_SPECIAL = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


def _environ_key(header: str) -> str:
    return _SPECIAL.get(header) or "HTTP_" + header.upper().replace("-", "_")


def _request(environ: Environ, client: str | None) -> WebRequest:
    headers = {
        name[5:].replace("_", "-").lower(): value
        for name, value in environ.items()
        if name.startswith("HTTP_")
    }
    for header, name in _SPECIAL.items():
        if name in environ:
            headers[header] = environ[name]
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return WebRequest(environ.get("REQUEST_METHOD", "GET"), path, headers, client, environ)


def _is_file(body: Iterable[bytes], environ: Environ) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(body, wrapper)


class _Finish:
    """Counts a request once, when its body is closed (or its app raised)."""

    __slots__ = ("failed", "settings", "state")

    def __init__(self, settings: Settings, state: RequestContext) -> None:
        self.settings = settings
        self.state = state
        self.failed = False

    def __call__(self) -> None:
        label = served_version(self.state.pin, self.state.decisions) or "none"
        stats = self.settings.stats
        next(stats.served[label])
        if self.failed:
            next(stats.errors[label])


class _Body:
    """The app's response iterable, each step (and ``close``) run inside the request."""

    __slots__ = ("_done", "_finish", "_inner", "_iterator")

    def __init__(self, inner: Iterable[bytes], finish: _Finish) -> None:
        self._inner = inner
        self._iterator: Iterator[bytes] | None = None
        self._finish = finish
        self._done = False

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        token = current_request.set(self._finish.state)
        try:
            if self._iterator is None:
                self._iterator = iter(self._inner)
            return next(self._iterator)
        except StopIteration:
            raise
        except BaseException:
            self._finish.failed = True
            raise
        finally:
            current_request.reset(token)

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        token = current_request.set(self._finish.state)
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        except BaseException:
            self._finish.failed = True
            raise
        finally:
            current_request.reset(token)
            self._finish()


class DualrunWSGI:
    """Wrap a WSGI application so each request is a ``dualrun.context``.

    ``key``: where the bucketing key comes from, ``"header:X-User-Id"``, ``"cookie:uid"`` or a
    function of a :class:`~dualrun.web.WebRequest` (e.g. reading the authenticated user from
    the environ). ``attrs``: request attributes for policies, ``{name: source}`` alike.
    ``pins``: a :class:`~dualrun.web.Pins` to let signed or trusted requests choose their
    version (off by default). ``served_by_header``: add ``X-Dualrun-Served-By: old|new`` (or a
    header name of your choice) to responses. A request that raises or answers 5xx is counted
    as an error of the version that served it (``stats()``).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        key: str | Source | None = None,
        attrs: Mapping[str, str | Source] | None = None,
        pins: Pins | None = None,
        served_by_header: bool | str = False,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app is a WSGI application (a callable), got {app!r}")
        self.app = app
        self.settings = settings = Settings(key, attrs, pins, served_by_header)
        self._reads = {
            id(spec): (spec[0], _environ_key(spec[1]) if spec[0] == "header" else spec[1])
            for spec in (settings.key, *settings.attrs.values())
            if isinstance(spec, tuple)
        }
        if pins is not None:
            self._pin_header = None if pins.header is None else _environ_key(pins.header)

    def stats(self) -> dict[str, Any]:
        """Requests, the versions that served them, errors and pins, counted so far."""
        return self.settings.stats.snapshot()

    def _read(self, spec: Any, environ: Environ, request: WebRequest | None) -> Any:
        if request is not None and callable(spec):
            return self.settings.call(spec, request)
        kind, name = self._reads[id(spec)]
        if kind == "header":
            return environ.get(name)
        return parse_cookies(environ.get("HTTP_COOKIE")).get(name)

    def _pin(self, environ: Environ, pins: Pins) -> tuple[Label | None, bool]:
        """The pin to apply, and whether the request is to be refused."""
        value = None if self._pin_header is None else environ.get(self._pin_header)
        if value is None and pins.cookie is not None:
            value = parse_cookies(environ.get("HTTP_COOKIE")).get(pins.cookie)
        if not value or value.isspace():
            return None, False
        client = pins.client(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"))
        outcome = pins.judge(value, client)
        counters = self.settings.stats.pins
        if outcome == "old" or outcome == "new":
            next(counters["honoured"])
            return outcome, False
        next(counters[outcome])
        return None, pins.reject

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        settings = self.settings
        next(settings.stats.requests)
        pin: Label | None = None
        if settings.pins is not None:
            pin, refuse = self._pin(environ, settings.pins)
            if refuse:
                start_response("400 Bad Request", [("Content-Type", "text/plain")])
                return [b"invalid dualrun pin\n"]
        request = None
        if settings.needs_request:
            client = environ.get("REMOTE_ADDR")
            if settings.pins is not None:
                client = settings.pins.client(client, environ.get("HTTP_X_FORWARDED_FOR"))
            request = _request(environ, client)
        key = None if settings.key is None else self._read(settings.key, environ, request)
        attrs = (
            {name: self._read(spec, environ, request) for name, spec in settings.attrs.items()}
            if settings.attrs
            else NO_ATTRS
        )
        state = RequestContext(key, pin, attrs, {})
        finish = _Finish(settings, state)
        served_by = settings.served_by

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if status[:1] == "5":
                finish.failed = True
            if served_by is not None:
                label = served_version(state.pin, state.decisions)
                if label is not None:
                    headers = [*headers, (served_by, label)]
            return start_response(status, headers, exc_info)

        token = current_request.set(state)
        try:
            body = self.app(environ, start)
        except BaseException:
            finish.failed = True
            finish()
            raise
        finally:
            if web.annotate is not None:  # the serving version on the request's span
                web.annotate(served_version(pin, state.decisions) or "none", pin is not None)
            current_request.reset(token)
        if type(body) is list or _is_file(body, environ):
            # Nothing of the app runs while a list or a file is sent: the request is over (and
            # the server keeps its fast path for files).
            finish()
            return body
        return _Body(body, finish)
