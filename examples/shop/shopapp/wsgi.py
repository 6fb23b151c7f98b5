"""The WSGI entry point: ``gunicorn -w 2 shopapp.wsgi:app`` (settings: see shopapp.core)."""

from shopapp.core import build
from shopapp.flask_app import create_app

app = create_app(build())
