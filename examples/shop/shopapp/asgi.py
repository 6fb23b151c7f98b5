"""The ASGI entry point: ``uvicorn --workers 2 shopapp.asgi:app`` (settings: see shopapp.core)."""

from shopapp.core import build
from shopapp.fastapi_app import create_app

app = create_app(build())
