"""Policies decide which version serves a call.

A policy is any object with ``choose(request) -> "old" | "new"``; ``request`` is the active
:class:`~dualrun.context.RequestContext` (``EMPTY`` outside any context). The dispatcher calls it
once per request (the answer sticks for the rest of the request) or once per call outside any
context, so it should be cheap and must not block.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from dualrun import checks
from dualrun.context import Label, RequestContext, check_label

_SCALE = 100.0 / 2**64


@runtime_checkable
class Policy(Protocol):
    """The one method a routing policy has."""

    def choose(self, request: RequestContext) -> Label:
        """Return the label of the version that serves this request."""
        ...


def stable_bucket(key: object, salt: str = "") -> float:
    """A number in [0, 100) for ``key``, the same in every process, machine and Python version.

    SHA-1 of ``"salt:key"`` (``key`` as ``str``); Python's ``hash()`` is salted per process and
    would bucket one user differently in two workers.
    """
    # "surrogatepass": a key with lone surrogates (from a decoded URL or file name) is a key too.
    text = f"{salt}:{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha1(text, usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") * _SCALE


class Fixed:
    """Every call goes to one version: ``label`` is ``"old"`` or ``"new"``."""

    __slots__ = ("label",)

    def __init__(self, label: Label) -> None:
        self.label: Label = check_label(label, "Fixed(label): the label")

    def choose(self, request: RequestContext) -> Label:
        """Always this policy's label, whatever the ``request``."""
        return self.label

    def __repr__(self) -> str:
        return f"Fixed({self.label!r})"


class Canary:
    """A share of traffic, ``percent`` in [0, 100], goes to the new version.

    Requests are bucketed by a stable hash of ``salt:key``, so a key stays on the same version
    in every process, and raising ``percent`` only moves keys from old to new. The key is the
    request context's key, or what ``key(request)`` returns; without one, a call is bucketed at
    random.
    """

    __slots__ = ("key", "percent", "salt")

    def __init__(
        self,
        percent: float,
        key: Callable[[RequestContext], Any] | None = None,
        salt: str | None = None,
    ) -> None:
        self.percent = checks.percent(percent, "Canary percent")
        if key is not None and not callable(key):
            raise ValueError(
                f"Canary key is a callable taking the request context (or None), got {key!r}"
            )
        if salt is not None and not isinstance(salt, str):
            raise ValueError(f"Canary salt is a string (or None), got {salt!r}")
        self.key = key
        self.salt = salt or ""

    def choose(self, request: RequestContext) -> Label:
        """The version for ``request``: ``"new"`` when its key's stable bucket is below the
        percent (random per call without a key)."""
        key = request.key if self.key is None else self.key(request)
        if key is None:
            return "new" if random.random() * 100.0 < self.percent else "old"
        return "new" if stable_bucket(key, self.salt) < self.percent else "old"

    def with_percent(self, percent: float) -> Canary:
        """The same canary (key, salt) at another percent: a ramp keeps every key's bucket."""
        return Canary(percent, key=self.key, salt=self.salt)

    def __repr__(self) -> str:
        return f"Canary(percent={self.percent:g}, salt={self.salt!r})"


def check_policy(policy: object) -> Policy:
    """Return ``policy`` if it has a callable ``choose``, else raise ValueError."""
    if issubclass(type(policy), type) or not callable(getattr(policy, "choose", None)):
        raise ValueError(
            "a policy is an object with a method choose(request) -> 'old' | 'new', such as "
            f"dualrun.Fixed('old') or dualrun.Canary(5); got {policy!r}"
        )
    return policy  # type: ignore[return-value]
