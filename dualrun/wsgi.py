"""WSGI middleware (PEP 3333): each request runs in a ``dualrun.context`` of its own.

::

    from dualrun.wsgi import DualrunWSGI
    app.wsgi_app = DualrunWSGI(app.wsgi_app, key="header:X-User-Id")   # Flask

The response body is produced inside the request's context too (a streamed body, generated
while the server iterates, is routed with the request), and the request is counted for the
version that served it when the server closes the body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dualrun.context import RequestContext, current_request
from dualrun.web import Middleware, WebRequest, served_version

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

    __slots__ = ("failed", "middleware", "state")

    def __init__(self, middleware: DualrunWSGI, state: RequestContext) -> None:
        self.middleware = middleware
        self.state = state
        self.failed = False

    def __call__(self) -> None:
        self.middleware._finish(self.state, self.failed)


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


class DualrunWSGI(Middleware[WSGIApp]):
    """Wrap a WSGI application so each request is a ``dualrun.context``.

    ``key``: where the bucketing key comes from, ``"header:X-User-Id"``, ``"cookie:uid"`` or a
    function of a :class:`~dualrun.web.WebRequest` (e.g. reading the authenticated user from
    the environ). ``attrs``: request attributes for policies, ``{name: source}`` alike.
    ``pins``: a :class:`~dualrun.web.Pins` to let signed or trusted requests choose their
    version (off by default). ``served_by_header``: add ``X-Dualrun-Served-By: old|new`` (or a
    header name of your choice) to responses. A request that raises or answers 5xx is counted
    as an error of the version that served it (``stats()``).
    """

    kind = "WSGI"

    @staticmethod
    def _spelled(name: str) -> str:
        return _environ_key(name)

    def _header(self, raw: Environ, name: str) -> str | None:
        return raw.get(self._names[name])

    def _peer(self, raw: Environ) -> str | None:
        return raw.get("REMOTE_ADDR")

    def _request(self, raw: Environ, client: str | None) -> WebRequest:
        return _request(raw, client)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        state = self._open(environ)
        if state is None:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"invalid dualrun pin\n"]
        finish = _Finish(self, state)
        served_by = self.settings.served_by

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
            self._leave(state, token)
        if type(body) is list or _is_file(body, environ):
            # Nothing of the app runs while a list or a file is sent: the request is over (and
            # the server keeps its fast path for files).
            finish()
            return body
        return _Body(body, finish)
