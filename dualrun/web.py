"""What the WSGI and ASGI middleware share: where the key, attributes and pin of a request come
from, who may pin, and the counts an operator reads.

A pin chooses which code serves a request, so it is a privilege: off unless :class:`Pins` is
given, and then honoured only with a token signed by the operator's secret
(:mod:`dualrun.pins`) or from a client address the operator trusts. A refused pin is counted and
ignored (or answered 400 with ``reject=True``); it never raises into the application.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextvars import Token
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from dualrun.compare import describe
from dualrun.context import Label, RequestContext, current_request
from dualrun.counters import new_counter, peek
from dualrun.pins import check_secret, verify

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PinOutcome = Literal["honoured", "malformed", "expired", "forged", "untrusted"]
PIN_OUTCOMES: tuple[PinOutcome, ...] = ("honoured", "malformed", "expired", "forged", "untrusted")
SERVED_BY = "X-Dualrun-Served-By"
NO_ATTRS: Mapping[str, Any] = MappingProxyType({})
MAX_FORWARDED = 32  # X-Forwarded-For entries looked at, from the right


class WebRequest:
    """The request as a key or attribute function sees it, for WSGI and ASGI alike.

    ``headers`` has lower-case names; ``raw`` is the WSGI environ or the ASGI scope.
    """

    __slots__ = ("client", "headers", "method", "path", "raw")

    def __init__(
        self, method: str, path: str, headers: Mapping[str, str], client: str | None, raw: Any
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.client = client
        self.raw = raw

    @property
    def cookies(self) -> dict[str, str]:
        return parse_cookies(self.headers.get("cookie"))

    def __repr__(self) -> str:
        return f"WebRequest({self.method} {self.path}, client={self.client!r})"


Source = Callable[[WebRequest], Any]


def parse_cookies(header: str | None) -> dict[str, str]:
    """``a=1; b=2`` as a dict (no unquoting beyond stripping double quotes)."""
    cookies: dict[str, str] = {}
    if header:
        for part in header.split(";"):
            name, sep, value = part.partition("=")
            if sep:
                cookies.setdefault(name.strip(), value.strip().strip('"'))
    return cookies


def source(spec: str | Source, what: str) -> tuple[str, str] | Source:
    """``"header:NAME"``, ``"cookie:NAME"`` or a function of a :class:`WebRequest`."""
    if callable(spec):
        return spec
    if isinstance(spec, str):
        kind, _, name = spec.partition(":")
        if kind in ("header", "cookie") and name.strip():
            return kind, name.strip().lower() if kind == "header" else name.strip()
    raise ValueError(
        f"{what} is 'header:NAME', 'cookie:NAME' or a function of the request, got {spec!r}"
    )


def _networks(addresses: Iterable[str], what: str) -> tuple[Network, ...]:
    if isinstance(addresses, str):
        addresses = [addresses]
    try:
        return tuple(ipaddress.ip_network(a, strict=False) for a in addresses)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what} is a list of addresses or networks such as ['10.0.0.0/8', '::1']: {exc}"
        ) from None


def _within(address: str | None, networks: tuple[Network, ...]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in networks)


class Pins:
    """Who may pin a request to a version, and where the pin is read.

    ``secret``: requests carrying a token minted with it (``dualrun pin-token``,
    :func:`dualrun.pins.mint`) are pinned to the token's version until it expires.
    ``trusted``: clients at these addresses or networks may also send a bare ``old``/``new``.
    ``trusted_proxies``: the addresses of your reverse proxies; only a request arriving from
    one of them has its client address taken from ``X-Forwarded-For`` (else that header is
    ignored, as anyone can send it). ``reject``: answer a refused pin with 400 instead of
    serving the request as if it carried none.
    """

    def __init__(
        self,
        secret: str | bytes | None = None,
        *,
        header: str | None = "X-Dualrun-Version",
        cookie: str | None = None,
        trusted: Iterable[str] = (),
        trusted_proxies: Iterable[str] = (),
        reject: bool = False,
    ) -> None:
        self.secret = None if secret is None else check_secret(secret, "Pins(secret=...)")
        self.trusted = _networks(trusted, "Pins(trusted=...)")
        self.trusted_proxies = _networks(trusted_proxies, "Pins(trusted_proxies=...)")
        if self.secret is None and not self.trusted:
            raise ValueError(
                "Pins needs a secret (pins signed with it are honoured) or trusted addresses "
                "(pins from them are honoured); with neither no pin could ever be honoured"
            )
        if header is None and cookie is None:
            raise ValueError("Pins reads the pin from a header, a cookie or both: give one")
        for value, what in ((header, "header"), (cookie, "cookie")):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"Pins({what}=...) is a name or None, got {value!r}")
        self.header = None if header is None else header.strip().lower()
        self.cookie = None if cookie is None else cookie.strip()
        self.reject = bool(reject)

    def __repr__(self) -> str:
        return (
            f"Pins(header={self.header!r}, cookie={self.cookie!r}, signed="
            f"{self.secret is not None}, trusted={len(self.trusted)} networks, "
            f"trusted_proxies={len(self.trusted_proxies)}, reject={self.reject})"
        )

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: the peer, or behind a trusted proxy the right-most address
        of ``X-Forwarded-For`` that is not one of the trusted proxies."""
        if forwarded_for and _within(peer, self.trusted_proxies):
            hops = [hop.strip() for hop in forwarded_for.split(",")][-MAX_FORWARDED:]
            for hop in reversed(hops):
                if not _within(hop, self.trusted_proxies):
                    return hop
        return peer

    def judge(self, value: str, client: str | None) -> Label | PinOutcome:
        """The label to pin to, or why the pin is refused."""
        value = value.strip()
        if value == "old" or value == "new":
            label: Label = "new" if value == "new" else "old"
            return label if _within(client, self.trusted) else "untrusted"
        if self.secret is None:
            return "malformed"
        return verify(value, self.secret)


class WebStats:
    """Lock-free counts of what the middleware saw, read by :meth:`snapshot` (and OTel)."""

    def __init__(self) -> None:
        self.requests = new_counter()
        self.pins = {outcome: new_counter() for outcome in PIN_OUTCOMES}
        # Requests that raised or answered 5xx, by the version that served them ("none":
        # no routed call was made).
        self.errors = {label: new_counter() for label in ("old", "new", "none")}
        self.served = {label: new_counter() for label in ("old", "new", "none")}
        # Key and attribute functions that raised (the value is None then).
        self.source_errors = new_counter()
        self.last_source_error: str | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": peek(self.requests),
            "served": {k: peek(c) for k, c in self.served.items()},
            "errors": {k: peek(c) for k, c in self.errors.items()},
            "pins": {k: peek(c) for k, c in self.pins.items()},
            "source_errors": peek(self.source_errors),
            "last_source_error": self.last_source_error,
        }


def served_version(pin: Label | None, decisions: Mapping[Any, Any]) -> Label | None:
    """The version a request was routed to: the first routing decision made in it, else its pin
    (a pin the dispatcher honours is not recorded as a decision; one it ignores, after a
    rollback, is not what served); None if it made no routed call."""
    for value in decisions.values():
        if value == "old" or value == "new":
            return value  # type: ignore[no-any-return]
    return pin


_all_stats: weakref.WeakSet[WebStats] = weakref.WeakSet()
annotate: Callable[[str, bool], None] | None = None
"""Set by ``dualrun.otel.instrument``: called with the serving version (and whether it was
pinned) at the end of each request, in the request's context."""


def all_stats() -> list[WebStats]:
    """The counts of every middleware alive in this process."""
    return list(_all_stats)


class Settings:
    """The middleware's options, checked once; shared by :mod:`dualrun.wsgi` and
    :mod:`dualrun.asgi`."""

    def __init__(
        self,
        key: str | Source | None,
        attrs: Mapping[str, str | Source] | None,
        pins: Pins | None,
        served_by_header: bool | str,
    ) -> None:
        self.key = None if key is None else source(key, "key")
        if attrs is not None and not isinstance(attrs, Mapping):
            raise ValueError(
                "attrs is a dict of name -> 'header:NAME', 'cookie:NAME' or a function of the "
                f"request, got {attrs!r}"
            )
        self.attrs = {
            str(name): source(spec, f"attrs[{name!r}]") for name, spec in (attrs or {}).items()
        }
        if pins is not None and not isinstance(pins, Pins):
            raise ValueError(f"pins is a dualrun.web.Pins(...) or None, got {pins!r}")
        self.pins = pins
        if served_by_header is True:
            served_by_header = SERVED_BY
        if served_by_header is not False and (
            not isinstance(served_by_header, str) or not served_by_header.strip()
        ):
            raise ValueError(
                f"served_by_header is True, False or a header name, got {served_by_header!r}"
            )
        self.served_by = served_by_header.strip() if served_by_header else None
        self.stats = WebStats()
        _all_stats.add(self.stats)
        self.needs_request = any(callable(s) for s in (self.key, *self.attrs.values()))

    def call(self, source: Source, request: WebRequest) -> Any:
        """A key or attribute function's value; None, counted, if it raises (a bug there must
        not turn every request into a 500)."""
        try:
            return source(request)
        except Exception as exc:
            next(self.stats.source_errors)
            self.stats.last_source_error = f"{source!r}: {describe(exc)}"
            return None


App = TypeVar("App", bound=Callable[..., Any])


class Middleware(Generic[App]):
    """What :class:`dualrun.wsgi.DualrunWSGI` and :class:`dualrun.asgi.DualrunASGI` share: the
    options, the counts, and a request's context made from what the server hands over (the
    WSGI environ or the ASGI scope: ``raw``), read through the subclass's :meth:`_header`."""

    kind = "web"  # in the message for an app that is not callable

    def __init__(
        self,
        app: App,
        *,
        key: str | Source | None = None,
        attrs: Mapping[str, str | Source] | None = None,
        pins: Pins | None = None,
        served_by_header: bool | str = False,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app is a {self.kind} application (a callable), got {app!r}")
        self.app = app
        self.settings = settings = Settings(key, attrs, pins, served_by_header)
        names = {"cookie", "x-forwarded-for"}
        for spec in (settings.key, *settings.attrs.values()):
            if isinstance(spec, tuple) and spec[0] == "header":
                names.add(spec[1])
        if pins is not None and pins.header is not None:
            names.add(pins.header)
        # Each header name read, as the server spells it (an environ key, a byte string).
        self._names = {name: self._spelled(name) for name in names}

    def stats(self) -> dict[str, Any]:
        """Requests, the versions that served them, errors and pins, counted so far."""
        return self.settings.stats.snapshot()

    @staticmethod
    def _spelled(name: str) -> Any:
        """A lower-case header name as :meth:`_header` looks it up."""
        raise NotImplementedError

    def _header(self, raw: Any, name: str) -> str | None:
        """The value of the header ``name`` (lower case, one of ``self._names``), or None."""
        raise NotImplementedError

    def _peer(self, raw: Any) -> str | None:
        """The address the request came from (a proxy's, behind one)."""
        raise NotImplementedError

    def _request(self, raw: Any, client: str | None) -> WebRequest:
        """The request as key and attribute functions see it."""
        raise NotImplementedError

    def _read(self, spec: Any, raw: Any, request: WebRequest | None) -> Any:
        if request is not None and callable(spec):
            return self.settings.call(spec, request)
        kind, name = spec
        if kind == "header":
            return self._header(raw, name)
        return parse_cookies(self._header(raw, "cookie")).get(name)

    def _pin(self, raw: Any, pins: Pins) -> tuple[Label | None, bool]:
        """The pin to apply, and whether the request is to be refused."""
        value = None if pins.header is None else self._header(raw, pins.header)
        if value is None and pins.cookie is not None:
            value = parse_cookies(self._header(raw, "cookie")).get(pins.cookie)
        if not value or value.isspace():
            return None, False
        client = pins.client(self._peer(raw), self._header(raw, "x-forwarded-for"))
        outcome = pins.judge(value, client)
        counters = self.settings.stats.pins
        if outcome == "old" or outcome == "new":
            next(counters["honoured"])
            return outcome, False
        next(counters[outcome])
        return None, pins.reject

    def _open(self, raw: Any) -> RequestContext | None:
        """The request's context, counted; None if its pin is refused (answer 400)."""
        settings = self.settings
        next(settings.stats.requests)
        pin: Label | None = None
        if settings.pins is not None:
            pin, refuse = self._pin(raw, settings.pins)
            if refuse:
                return None
        request = None
        if settings.needs_request:
            client = self._peer(raw)
            if settings.pins is not None:
                client = settings.pins.client(client, self._header(raw, "x-forwarded-for"))
            request = self._request(raw, client)
        key = None if settings.key is None else self._read(settings.key, raw, request)
        attrs = (
            {name: self._read(spec, raw, request) for name, spec in settings.attrs.items()}
            if settings.attrs
            else NO_ATTRS
        )
        return RequestContext(key, pin, attrs, {})

    @staticmethod
    def _leave(state: RequestContext, token: Token[RequestContext | None]) -> None:
        """The app returned (or raised): the serving version goes on the request's span (once
        ``dualrun.otel`` set :data:`annotate`), and the request's context is left."""
        if annotate is not None:
            annotate(served_version(state.pin, state.decisions) or "none", state.pin is not None)
        current_request.reset(token)

    def _finish(self, state: RequestContext, failed: bool) -> None:
        """Count a request once it is over, for the version that served it."""
        label = served_version(state.pin, state.decisions) or "none"
        stats = self.settings.stats
        next(stats.served[label])
        if failed:
            next(stats.errors[label])
