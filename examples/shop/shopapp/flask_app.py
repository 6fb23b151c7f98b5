"""The shop as a Flask (WSGI) application: ``gunicorn -w 2 shopapp.flask_app:app``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

from dualrun.wsgi import DualrunWSGI
from shopapp.core import Shop, cart_from_query


def create_app(shop: Shop) -> Flask:
    app = Flask("shop")

    @app.get("/health")
    def health() -> Response:
        return jsonify(ok=True, pid=os.getpid())

    @app.route("/quote", methods=["GET", "POST"])
    def quote() -> Response | tuple[Response, int]:
        try:
            cart = request.get_json() if request.method == "POST" else None
            cart = cart or cart_from_query(request.args.get("items", "apple:1"))
            return jsonify(shop.quote(cart))
        except (KeyError, ValueError) as exc:
            return jsonify(error=str(exc)), 400

    @app.get("/quotes/stream")
    def stream() -> Response:
        # Each quote is computed while the server sends the body, inside the request.
        carts = [cart_from_query(f"bolt:{n}") for n in range(1, int(request.args["n"]) + 1)]

        def lines() -> Iterator[str]:
            for cart in carts:
                yield json.dumps(shop.quote(cart)) + "\n"

        return Response(lines(), mimetype="application/x-ndjson")

    @app.after_request
    def worker(response: Response) -> Response:
        response.headers["X-Shop-Worker"] = str(os.getpid())  # which process answered
        return response

    app.wsgi_app = DualrunWSGI(app.wsgi_app, **shop.middleware_options)  # type: ignore[method-assign]
    app.extensions["shop"] = shop
    return app
