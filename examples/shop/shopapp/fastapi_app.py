"""The shop as a FastAPI (ASGI) application: ``uvicorn --workers 2 shopapp.fastapi_app:app``."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import StreamingResponse

from dualrun.asgi import DualrunASGI
from shopapp.core import Shop, cart_from_query


def create_app(shop: Shop) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # uvicorn's worker processes end without running atexit hooks: write the last
        # summary of the event log here.
        shop.dispatcher.close()

    app = FastAPI(title="shop", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid()}

    def quote_or_400(cart: dict[str, Any]) -> dict[str, Any]:
        try:
            return shop.quote(cart)
        except (KeyError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/quote")
    async def quote(items: str = "apple:1") -> dict[str, Any]:
        return quote_or_400(cart_from_query(items))

    @app.post("/quote")
    async def quote_cart(cart: dict[str, Any]) -> dict[str, Any]:
        return quote_or_400(cart)

    @app.get("/quotes/stream")
    async def stream(n: int) -> StreamingResponse:
        # Each quote is computed while the server sends the body, inside the request.
        async def lines() -> AsyncIterator[str]:
            for qty in range(1, n + 1):
                yield json.dumps(shop.quote(cart_from_query(f"bolt:{qty}"))) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.websocket("/ws/quote")
    async def quote_socket(socket: WebSocket) -> None:
        await socket.accept()
        async for items in socket.iter_text():
            await socket.send_json(quote_or_400(cart_from_query(items)))

    @app.middleware("http")
    async def worker(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["X-Shop-Worker"] = str(os.getpid())  # which process answered
        return response

    app.add_middleware(DualrunASGI, **shop.middleware_options)
    app.state.shop = shop
    return app
