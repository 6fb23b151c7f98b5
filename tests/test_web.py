"""The WSGI and ASGI middleware and signed pins, in process (the real servers are in
test_web_servers.py): keys, attributes, pins honoured only when signed or trusted, refused pins
counted and never raised, streaming bodies kept in their request, errors per version."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import dualrun
from dualrun.asgi import DualrunASGI
from dualrun.cli import main
from dualrun.pins import mint, verify
from dualrun.web import Pins
from dualrun.wsgi import DualrunWSGI

SHOP = Path(__file__).resolve().parent.parent / "examples" / "shop"
SECRET = "s3cret-for-tests-only-0123456789"
BOLT = {"items": [{"sku": "bolt", "qty": 1}]}  # 1.4 rounds 0.125 to 0.12, 1.5 to 0.13
BY_SUBTOTAL = {"0.12": "old", "0.13": "new"}


@pytest.fixture
def quote(load_pair: Callable[..., dualrun.VersionPair]) -> Iterator[Callable[..., Any]]:
    """The example shop's routed quote, on a 50% canary."""
    versions = load_pair("pricing", old=str(SHOP / "pricing_v1"), new=str(SHOP / "pricing_v2"))
    dispatcher = dualrun.Dispatcher(versions, policy=dualrun.Canary(percent=50))
    yield dispatcher.route("pricing.engine:quote")
    dispatcher.close()


def served(quote: Callable[..., Any]) -> str:
    """Which version computed this quote of BOLT."""
    return BY_SUBTOTAL[quote(BOLT)["subtotal"]]


# -- tokens -------------------------------------------------------------------------------


def test_a_minted_token_verifies_until_it_expires() -> None:
    secret = SECRET.encode()
    token = mint("new", SECRET, ttl=60, now=1000)
    assert verify(token, secret, now=1059) == "new"
    assert verify(token, secret, now=1060) == "expired"
    assert verify(mint("old", secret, ttl=1, now=0), secret, now=0.5) == "old"


def test_a_token_changed_anywhere_or_signed_with_another_secret_is_forged() -> None:
    secret = SECRET.encode()
    _, expiry, signature = mint("old", SECRET, ttl=60).split(".")
    assert verify(f"new.{expiry}.{signature}", secret) == "forged"
    assert verify(f"old.{int(expiry) + 1}.{signature}", secret) == "forged"
    assert verify(f"old.{expiry}.{signature[:-1]}A", secret) in ("forged", "old")
    assert verify(mint("old", "another-secret-0123456789", ttl=60), secret) == "forged"


@given(st.text(max_size=200))
def test_any_text_is_refused_without_raising(text: str) -> None:
    assert verify(text, SECRET.encode()) in ("malformed", "forged", "expired")


@pytest.mark.parametrize(
    "token", ["", "new", "new.123", "new.12a.sig", "both.1.sig", "new.²³.sig", "new.1.é", "x" * 500]
)
def test_malformed_tokens(token: str) -> None:
    assert verify(token, SECRET.encode()) == "malformed"


def test_bad_secrets_and_ttls_are_refused_when_given() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        mint("new", "short")
    with pytest.raises(ValueError, match="ttl"):
        mint("new", SECRET, ttl=0)
    with pytest.raises(ValueError, match="label"):
        mint("both", SECRET)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"secret .* or trusted"):
        Pins()
    with pytest.raises(ValueError, match="trusted"):
        Pins(trusted=["not an address"])
    with pytest.raises(ValueError, match="header, a cookie"):
        Pins(SECRET, header=None)
    with pytest.raises(ValueError, match="key is"):
        DualrunWSGI(lambda e, s: [], key="query:user")
    with pytest.raises(ValueError, match="served_by_header"):
        DualrunASGI(_echo_asgi, served_by_header=3)  # type: ignore[arg-type]


def test_cli_mints_a_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("DUALRUN_PIN_SECRET", SECRET)
    assert main(["pin-token", "new", "--ttl", "30"]) == 0
    token = capsys.readouterr().out.strip()
    assert verify(token, SECRET.encode()) == "new"
    assert int(token.split(".")[1]) - time.time() <= 30
    (tmp_path / "secret").write_text(SECRET + "\n")
    assert main(["pin-token", "old", "--secret-file", str(tmp_path / "secret")]) == 0
    assert verify(capsys.readouterr().out.strip(), SECRET.encode()) == "old"
    monkeypatch.delenv("DUALRUN_PIN_SECRET")
    assert main(["pin-token", "new"]) == 2
    assert "DUALRUN_PIN_SECRET" in capsys.readouterr().err


# -- WSGI ---------------------------------------------------------------------------------


def call_wsgi(
    app: Any, headers: dict[str, str] | None = None, remote: str = "203.0.113.9"
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"REMOTE_ADDR": remote}
    setup_testing_defaults(environ)
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    answer: dict[str, Any] = {}

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc: Any = None
    ) -> Any:
        answer["status"], answer["headers"] = status, dict(response_headers)
        return lambda data: None

    body = app(environ, start_response)
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return answer["status"], answer["headers"], data


def quoting_wsgi(quote: Callable[..., Any]) -> Callable[..., Any]:
    """A WSGI app answering which version served, what context it saw."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        request = dualrun.current()
        assert request is not None
        body = f"{served(quote)} {request.key} {dict(request.attrs)}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return app


def test_wsgi_key_attrs_and_served_by_header(quote: Callable[..., Any]) -> None:
    app = DualrunWSGI(
        quoting_wsgi(quote),
        key="header:X-User-Id",
        attrs={"plan": "cookie:plan", "ua": lambda r: r.headers.get("user-agent")},
        served_by_header=True,
    )
    seen = {}
    for user in range(40):
        status, headers, body = call_wsgi(
            app, {"X-User-Id": f"u{user}", "Cookie": "plan=pro; x=1", "User-Agent": "t"}
        )
        label, key, attrs = body.decode().split(" ", 2)
        assert status == "200 OK" and key == f"u{user}"
        assert attrs == "{'plan': 'pro', 'ua': 't'}"
        assert headers["X-Dualrun-Served-By"] == label
        seen[key] = label
    assert set(seen.values()) == {"old", "new"}  # the canary splits users
    for user, label in seen.items():  # and keeps each one on their version
        assert call_wsgi(app, {"X-User-Id": user})[2].decode().startswith(label)
    stats = app.stats()
    assert stats["requests"] == 80 and sum(stats["served"].values()) == 80
    assert "X-Dualrun-Served-By" not in call_wsgi(DualrunWSGI(quoting_wsgi(quote)))[1]


def pinned_label(app: Any, value: str, remote: str = "203.0.113.9", **headers: str) -> str:
    status, _, body = call_wsgi(app, {"X-Dualrun-Version": value, **headers}, remote)
    assert status == "200 OK"
    return body.decode().split()[0]


def test_wsgi_pins_only_with_a_valid_token_or_from_trusted_addresses(
    quote: Callable[..., Any],
) -> None:
    pins = Pins(SECRET, trusted=["10.0.0.0/8"])
    app = DualrunWSGI(quoting_wsgi(quote), key=lambda r: "always-old-user", pins=pins)
    # The key is bucketed to one version; a pin to the other one shows it was honoured.
    unpinned = call_wsgi(app)[2].decode().split()[0]
    other = "new" if unpinned == "old" else "old"
    assert pinned_label(app, mint(other, SECRET, ttl=60)) == other
    assert pinned_label(app, mint(other, SECRET, ttl=1, now=time.time() - 10)) == unpinned
    assert pinned_label(app, mint(other, "a-different-secret-0123", ttl=60)) == unpinned
    assert pinned_label(app, f"{other}.{int(time.time()) + 60}.Zm9yZ2Vk") == unpinned
    assert pinned_label(app, "please-new") == unpinned
    assert pinned_label(app, other) == unpinned  # a bare label from the internet
    assert pinned_label(app, other, remote="10.1.2.3") == other  # from a trusted address
    # A forged X-Forwarded-For does not make a client trusted without a trusted proxy.
    assert pinned_label(app, other, **{"X-Forwarded-For": "10.1.2.3"}) == unpinned
    assert app.stats()["pins"] == {
        "honoured": 2,
        "malformed": 1,
        "expired": 1,
        "forged": 2,
        "untrusted": 2,
    }


def test_wsgi_pins_behind_a_trusted_proxy_and_from_a_cookie(quote: Callable[..., Any]) -> None:
    pins = Pins(trusted=["192.0.2.7"], trusted_proxies=["10.0.0.1"], cookie="pin", header=None)
    app = DualrunWSGI(quoting_wsgi(quote), key=lambda r: "k", pins=pins)
    unpinned = call_wsgi(app)[2].decode().split()[0]
    other = "new" if unpinned == "old" else "old"

    def via_proxy(forwarded: str, peer: str = "10.0.0.1") -> str:
        headers = {"Cookie": f"pin={other}", "X-Forwarded-For": forwarded}
        return call_wsgi(app, headers, remote=peer)[2].decode().split()[0]

    assert via_proxy("192.0.2.7") == other
    assert via_proxy("192.0.2.7, 10.0.0.1") == other  # the proxy's own hop is skipped
    assert via_proxy("192.0.2.7, 198.51.100.3") == unpinned  # the right-most client counts
    assert via_proxy("192.0.2.7", peer="198.51.100.3") == unpinned  # not from the proxy
    assert via_proxy("garbage, ::") == unpinned


@pytest.mark.parametrize("override", ["kill", "rollback", "retire", "retire under canary"])
def test_served_by_names_the_version_that_serves_when_pins_or_the_policy_are_overridden(
    load_pair: Callable[..., dualrun.VersionPair], override: str
) -> None:
    versions = load_pair("pricing", old=str(SHOP / "pricing_v1"), new=str(SHOP / "pricing_v2"))
    dispatcher = dualrun.Dispatcher(versions, policy=dualrun.Canary(percent=50))
    try:
        quote = dispatcher.route("pricing.engine:quote")
        wsgi = DualrunWSGI(
            quoting_wsgi(quote), key="header:X-User-Id", pins=Pins(SECRET), served_by_header=True
        )

        async def answer_first(scope: dict[str, Any], receive: Any, send: Any) -> None:
            body = served(quote).encode()  # the routed call before the response starts
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        asgi = DualrunASGI(
            answer_first, key="header:X-User-Id", pins=Pins(SECRET), served_by_header=True
        )
        pin = {"X-Dualrun-Version": mint("new", SECRET)}
        assert call_wsgi(wsgi, pin)[1]["X-Dualrun-Served-By"] == "new"
        if override == "kill":
            dispatcher.kill()
        elif override == "rollback":
            dispatcher.rollback()  # overrides pins
        elif override == "retire":
            dispatcher.rollback(retire=True, honor_pins=True)
        else:
            dispatcher.retire("new")  # the canary still chooses new for half of the users
        for user in range(8):
            headers = {"X-User-Id": f"u{user}", **(pin if user % 2 else {})}
            _, answer, body = call_wsgi(wsgi, headers)
            assert body.decode().split()[0] == answer["X-Dualrun-Served-By"] == "old"
            sent = call_asgi(asgi, http_scope(headers))
            assert body_of(sent).startswith("old")
            assert (b"x-dualrun-served-by", b"old") in sent[0]["headers"]
        assert wsgi.stats()["served"] == {"old": 8, "new": 1, "none": 0}
        assert asgi.stats()["served"] == {"old": 8, "new": 0, "none": 0}
    finally:
        dispatcher.close()


def test_wsgi_refused_pins_answer_400_when_asked(quote: Callable[..., Any]) -> None:
    app = DualrunWSGI(quoting_wsgi(quote), pins=Pins(SECRET, reject=True))
    status, _, body = call_wsgi(app, {"X-Dualrun-Version": "new.1.forged"})
    assert status.startswith("400") and b"pin" in body
    assert call_wsgi(app, {"X-Dualrun-Version": mint("new", SECRET)})[0] == "200 OK"
    assert call_wsgi(app)[0] == "200 OK"  # no pin at all is not refused


def test_wsgi_streaming_body_stays_in_its_request(quote: Callable[..., Any]) -> None:
    closed = []

    def streaming(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            for _ in range(5):
                request = dualrun.current()
                yield f"{served(quote)}:{request and request.key};".encode()
        finally:
            closed.append(dualrun.current())

    app = DualrunWSGI(streaming, key="header:X-User-Id")
    bodies = [call_wsgi(app, {"X-User-Id": f"user-{n}"})[2].decode() for n in range(20)]
    for n, body in enumerate(bodies):
        chunks = body.rstrip(";").split(";")
        assert len(set(chunks)) == 1 and chunks[0].endswith(f":user-{n}")
    assert len({body[:3] for body in bodies}) == 2
    assert [c.key for c in closed if c is not None] == [f"user-{n}" for n in range(20)]
    assert dualrun.current() is None
    stats = app.stats()
    assert stats["served"]["old"] + stats["served"]["new"] == 20


def test_wsgi_errors_are_counted_for_the_serving_version(quote: Callable[..., Any]) -> None:
    def failing(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        label = served(quote)
        if environ.get("HTTP_X_FAIL") == "raise":
            raise RuntimeError(label)
        start_response("503 Service Unavailable" if environ.get("HTTP_X_FAIL") else "200 OK", [])
        return [label.encode()]

    app = DualrunWSGI(failing, pins=Pins(SECRET))
    new = {"X-Dualrun-Version": mint("new", SECRET)}
    old = {"X-Dualrun-Version": mint("old", SECRET)}
    with pytest.raises(RuntimeError, match="new"):
        call_wsgi(app, {**new, "X-Fail": "raise"})
    assert call_wsgi(app, {**old, "X-Fail": "503"})[0].startswith("503")
    call_wsgi(app, new)
    stats = app.stats()
    assert stats["errors"] == {"old": 1, "new": 1, "none": 0}
    assert stats["served"] == {"old": 1, "new": 2, "none": 0}


def test_flask_in_front_of_the_example_shop(quote: Callable[..., Any]) -> None:
    """The README's Flask lines."""
    flask = pytest.importorskip("flask")
    app = flask.Flask("t")

    @app.get("/quote")
    def view() -> Any:
        return quote(BOLT)

    app.wsgi_app = DualrunWSGI(  # type: ignore[method-assign]
        app.wsgi_app, key="header:X-User-Id", served_by_header=True
    )
    client = app.test_client()
    for user in range(10):
        answer = client.get("/quote", headers={"X-User-Id": f"u{user}"})
        assert BY_SUBTOTAL[answer.json["subtotal"]] == answer.headers["X-Dualrun-Served-By"]


# -- ASGI ---------------------------------------------------------------------------------


async def _echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call_asgi(
    app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    queue = list(incoming or [{"type": "http.request", "body": b""}])

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def http_scope(
    headers: dict[str, str] | None = None, client: str = "203.0.113.9"
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (client, 1234),
    }


def quoting_asgi(quote: Callable[..., Any], chunks: int = 1) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for n in range(chunks):
            await asyncio.sleep(0)  # other requests run in between
            request = dualrun.current()
            body = f"{served(quote)}:{request and request.key};".encode()
            await send({"type": "http.response.body", "body": body, "more_body": n < chunks - 1})

    return app


def body_of(sent: list[dict[str, Any]]) -> str:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()


def test_asgi_streams_concurrent_requests_each_in_its_own_context(
    quote: Callable[..., Any],
) -> None:
    app = DualrunASGI(quoting_asgi(quote, chunks=4), key="header:X-User-Id", served_by_header=True)
    results: dict[str, list[dict[str, Any]]] = {}

    async def one(user: str) -> None:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(http_scope({"X-User-Id": user}), receive, send)
        results[user] = sent

    async def many() -> None:
        await asyncio.gather(*(one(f"user-{n}") for n in range(20)))

    asyncio.run(many())
    labels = set()
    for user, sent in results.items():
        chunks = body_of(sent).rstrip(";").split(";")
        assert chunks == [chunks[0]] * 4 and chunks[0].endswith(f":{user}")
        labels.add(chunks[0][:3])
    assert labels == {"old", "new"}
    assert app.stats()["requests"] == 20


def test_asgi_served_by_header_pins_and_400(quote: Callable[..., Any]) -> None:
    app = DualrunASGI(quoting_asgi(quote), pins=Pins(SECRET, reject=True), served_by_header=True)
    sent = call_asgi(app, http_scope({"X-Dualrun-Version": mint("new", SECRET)}))
    assert body_of(sent).startswith("new")
    assert (b"x-dualrun-served-by", b"new") in sent[0]["headers"]
    refused = call_asgi(app, http_scope({"X-Dualrun-Version": "new"}))
    assert refused[0]["status"] == 400
    socket = call_asgi(
        app, {**http_scope({"X-Dualrun-Version": "x"}), "type": "websocket"}, [{"type": "x"}]
    )
    assert socket == [{"type": "websocket.close", "code": 1008}]
    assert app.stats()["pins"]["honoured"] == 1 and app.stats()["pins"]["untrusted"] == 1


def test_asgi_lifespan_passes_through_and_websockets_get_a_context(
    quote: Callable[..., Any],
) -> None:
    seen: list[Any] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope["type"], dualrun.current()))
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": served(quote)})

    app = DualrunASGI(inner, key="header:X-User-Id", served_by_header=True)
    call_asgi(app, {"type": "lifespan"}, [{"type": "lifespan.startup"}])
    sent = call_asgi(
        app,
        {**http_scope({"X-User-Id": "w"}), "type": "websocket"},
        [{"type": "websocket.connect"}],
    )
    assert seen[0] == ("lifespan", None)
    assert seen[1][0] == "websocket" and seen[1][1].key == "w"
    # The accept is sent before the routed call: no header can say the version yet.
    assert sent[0] == {"type": "websocket.accept"}
    assert sent[1]["text"] in ("old", "new")
    assert app.stats()["requests"] == 1


def test_asgi_errors_are_counted_for_the_serving_version(quote: Callable[..., Any]) -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError(served(quote))

    app = DualrunASGI(failing, pins=Pins(SECRET))
    with pytest.raises(RuntimeError, match="old"):
        call_asgi(app, http_scope({"X-Dualrun-Version": mint("old", SECRET)}))
    assert app.stats()["errors"] == {"old": 1, "new": 0, "none": 0}


def test_asgi_a_cancelled_request_is_not_an_error(quote: Callable[..., Any]) -> None:
    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        served(quote)
        await asyncio.sleep(10)

    app = DualrunASGI(slow)

    async def cancel() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass

        task = asyncio.ensure_future(app(http_scope(), receive, send))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel())
    stats = app.stats()
    assert sum(stats["served"].values()) == 1 and sum(stats["errors"].values()) == 0


def test_fastapi_in_front_of_the_example_shop(quote: Callable[..., Any]) -> None:
    """The README's FastAPI lines."""
    fastapi = pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    app = fastapi.FastAPI()

    @app.get("/quote")
    def view() -> Any:
        return quote(BOLT)

    app.add_middleware(DualrunASGI, key="header:X-User-Id", served_by_header=True)
    with TestClient(app) as client:
        for user in range(10):
            answer = client.get("/quote", headers={"X-User-Id": f"u{user}"})
            assert BY_SUBTOTAL[answer.json()["subtotal"]] == answer.headers["X-Dualrun-Served-By"]


def test_a_key_function_that_raises_is_counted_and_the_request_served(
    quote: Callable[..., Any],
) -> None:
    def broken(request: Any) -> str:
        raise LookupError("no user on this request")

    wsgi = DualrunWSGI(quoting_wsgi(quote), key=broken, attrs={"plan": broken})
    status, _, body = call_wsgi(wsgi)
    assert status == "200 OK" and body.decode().split(" ", 2)[1:] == ["None", "{'plan': None}"]
    assert wsgi.stats()["source_errors"] == 2
    assert "LookupError: no user on this request" in wsgi.stats()["last_source_error"]
    asgi = DualrunASGI(quoting_asgi(quote), key=broken)
    assert body_of(call_asgi(asgi, http_scope())).endswith(":None;")
    assert asgi.stats()["source_errors"] == 1


ADDRESSES = st.one_of(
    st.ip_addresses().map(str), st.text(max_size=40), st.just("10.0.0.1"), st.just("::1")
)


@given(value=st.text(max_size=150), peer=ADDRESSES, forwarded=st.text(max_size=80))
@example(value=" ", peer="10.0.0.1", forwarded="")  # blank: no pin, nothing counted
@example(value="new", peer="::1", forwarded="10.9.9.9")  # trusted via the trusted proxy
def test_any_pin_header_and_address_never_raises_and_pins_only_when_allowed(
    value: str, peer: str, forwarded: str
) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        request = dualrun.current()
        start_response("200 OK", [])
        return [str(request and request.pin).encode()]

    pins = Pins(SECRET, trusted=["10.0.0.0/8"], trusted_proxies=["::1"])
    middleware = DualrunWSGI(app, pins=pins)
    headers = {"X-Dualrun-Version": value, "X-Forwarded-For": forwarded}
    status, _, body = call_wsgi(middleware, headers, peer)
    assert status == "200 OK"
    pin = body.decode()
    if pin != "None":
        client = pins.client(peer, forwarded)
        try:
            from_trusted = ipaddress.ip_address(str(client).strip()) in pins.trusted[0]
        except ValueError:
            from_trusted = False
        signed = verify(value.strip(), SECRET.encode()) == pin
        assert signed or (value.strip() == pin and from_trusted)
    assert sum(middleware.stats()["pins"].values()) == (1 if value.strip() else 0)


def test_wsgi_file_responses_reach_the_server_unwrapped(tmp_path: Path) -> None:
    class FileWrapper:
        def __init__(self, file: Any, size: int = 8192) -> None:
            self.file = file

        def __iter__(self) -> Iterator[bytes]:
            return iter(lambda: self.file.read(4), b"")

    (tmp_path / "f").write_bytes(b"file body")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"]((tmp_path / "f").open("rb"))

    middleware = DualrunWSGI(app)
    environ: dict[str, Any] = {"wsgi.file_wrapper": FileWrapper}
    setup_testing_defaults(environ)
    body = middleware(environ, lambda *a: None)
    assert type(body) is FileWrapper  # the server can still send it with sendfile
    assert b"".join(body) == b"file body"
    body.file.close()
    assert middleware.stats()["served"]["none"] == 1
