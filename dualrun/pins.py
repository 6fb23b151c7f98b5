"""Signed pins: a request may choose its version only with a token the operator minted.

A token is ``LABEL.EXPIRY.SIGNATURE``: the version (``old``/``new``), the expiry in whole epoch
seconds, and the URL-safe base64 of an HMAC-SHA256 over both with a secret only the operator
knows. Anyone can read a token, nobody without the secret can make or alter one, and it stops
working at its expiry. Verification never raises: it returns the label or why it was refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Literal

from dualrun.context import Label, check_label

Refusal = Literal["malformed", "expired", "forged"]
_DOMAIN = b"dualrun-pin-v1:"  # a token of this scheme is never valid for another use of a key
MIN_SECRET_BYTES = 16
MAX_TOKEN_CHARS = 128  # anything longer is malformed before any work is done on it


def check_secret(secret: str | bytes, what: str = "secret") -> bytes:
    """The secret as bytes, if long enough to resist guessing."""
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes):
        raise TypeError(f"{what} is str or bytes, got {type(secret).__name__}")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{what} has {len(secret)} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return secret


def _signature(secret: bytes, label: str, expiry: int) -> str:
    mac = hmac.new(secret, _DOMAIN + f"{label}.{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def mint(label: Label, secret: str | bytes, ttl: float = 3600.0, now: float | None = None) -> str:
    """A token pinning requests to ``label`` for ``ttl`` seconds from ``now`` (default: now)."""
    label = check_label(label, "label")
    key = check_secret(secret)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 10**9:
        raise ValueError(f"ttl is a number of seconds > 0, got {ttl!r}")
    expiry = int((time.time() if now is None else now) + ttl)
    return f"{label}.{expiry}.{_signature(key, label, expiry)}"


def verify(token: str, secret: bytes, now: float | None = None) -> Label | Refusal:
    """The label a token pins to, or why it is refused; the signature compared in constant
    time. ``secret`` must have passed :func:`check_secret`."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        return "malformed"
    parts = token.split(".")
    if (
        len(parts) != 3
        or parts[0] not in ("old", "new")
        or not parts[1].isascii()
        or not parts[1].isdigit()
        or not parts[2].isascii()
    ):
        return "malformed"
    label, expiry_text, signature = parts
    expiry = int(expiry_text)
    if not hmac.compare_digest(_signature(secret, label, expiry), signature):
        return "forged"
    if expiry <= (time.time() if now is None else now):
        return "expired"
    return "new" if label == "new" else "old"
