"""The user's redactor applied everywhere a recorded text may carry user data.

``Shadow(redact=(what, text) -> text)`` sees every request key (``what="key"``), value
(``"value"``) and error text (``"error"``) before it is recorded. Values also hide inside a
difference's path — a dict key (``$.balances['alice@example.com']``) or a set member
(``$.tags{'secret'}``) — and inside the message of an exception a hook raised; those go through
the redactor too. A redactor that fails is never quoted: its exception's message may hold the
very text it was given: the shadowed call it was redacting counts as an internal error, whose
text is itself passed through :func:`safely`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Redact = Callable[[str, str], str]

_ROOT = re.compile(r"[^.\[{]*")
_FIELD = re.compile(r"\.[A-Za-z_][A-Za-z0-9_]*")
_INDEX = re.compile(r"\[\d+\]")
_OPENERS, _CLOSERS = "([{", ")]}"


def safely(redact: Redact, what: str, text: str) -> str:
    """``redact(what, text)``; if it fails or returns no string, a placeholder that says so
    (never the text, never the exception's message)."""
    try:
        result = redact(what, text)
    except BaseException as exc:  # as from any hook: recorded, never reaching the caller
        return f"<not shown: the redactor raised {type(exc).__name__}>"
    if not isinstance(result, str):
        return f"<not shown: the redactor returned a {type(result).__name__}>"
    return result


def redact_path(path: str, redact: Redact) -> str:
    """``path`` with each dict key and set member in it passed through ``redact("value", ...)``.

    Field names (``.total``) and list indices (``[3]``) are structure and stay; a dict key that
    is a Python identifier or a whole number >= 0 is shown as a field name or an index, so it
    stays too. Anything the path does not parse into is redacted whole, to the end. What
    ``redact`` raises propagates.
    """
    root = _ROOT.match(path)
    at = root.end() if root else 0
    parts = [path[:at]]
    while at < len(path):
        char = path[at]
        piece = _FIELD.match(path, at) if char == "." else _INDEX.match(path, at)
        if piece is not None:
            parts.append(piece.group())
            at = piece.end()
            continue
        if char == "[":
            end = _closing(path, at + 1)
            if end is not None:
                parts.append("[" + redact("value", path[at + 1 : end]) + "]")
                at = end + 1
                continue
        elif char == "{":  # a set member ends the path
            inner = path[at + 1 : -1] if path.endswith("}") else path[at + 1 :]
            parts.append("{" + redact("value", inner) + "}")
            at = len(path)
            continue
        parts.append("[" + redact("value", path[at:]) + "]")
        break
    return "".join(parts)


def _closing(text: str, start: int) -> int | None:
    """Where the ``]`` that closes a key's repr starting at ``start`` is: quotes and nested
    brackets skipped. None if it is not closed (a truncated repr)."""
    depth, quote, at = 0, "", start
    while at < len(text):
        char = text[at]
        if quote:
            if char == "\\":
                at += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            if depth == 0:
                return at if char == "]" else None
            depth -= 1
        at += 1
    return None
