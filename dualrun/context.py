"""Request-scoped routing data: the bucketing key, an optional pin, and free attributes.

Held in a ``ContextVar``, so it follows the request into asyncio tasks and into threads started
with ``contextvars.copy_context().run``. The context also remembers, per dispatcher, the version
the request was first routed to: a request runs all-old or all-new.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast

Label = Literal["old", "new"]
F = TypeVar("F", bound=Callable[..., Any])


class RequestContext:
    """What routing knows about the current request. Read-only for policies.

    ``key``: the request key (sticky bucketing). ``pin``: ``"old"``/``"new"`` or None.
    ``attrs``: the free attributes given to ``dualrun.context``. ``decisions``: what was decided
    for this request, once per dispatcher (internal).
    """

    __slots__ = ("attrs", "decisions", "key", "pin")

    def __init__(
        self, key: Any, pin: Label | None, attrs: Mapping[str, Any], decisions: dict[Any, Any]
    ) -> None:
        self.key = key
        self.pin = pin
        self.attrs: Mapping[str, Any] = attrs
        # What was decided for this request, once: the version each dispatcher chose (keyed by
        # the dispatcher's epoch) and whether each shadow samples it (keyed by the shadow);
        # shared by nested contexts of the request, its asyncio tasks and threads copying it.
        self.decisions = decisions

    def __repr__(self) -> str:
        return f"RequestContext(key={self.key!r}, pin={self.pin!r}, attrs={dict(self.attrs)!r})"


EMPTY = RequestContext(None, None, MappingProxyType({}), {})
"""What policies see for a call made outside any ``dualrun.context``."""

current_request: ContextVar[RequestContext | None] = ContextVar("dualrun_request", default=None)


def current() -> RequestContext | None:
    """The active request context, or None outside any ``dualrun.context``."""
    return current_request.get()


def check_label(value: object, what: str) -> Label:
    """Return ``value`` if it names a version, else raise ValueError naming ``what``."""
    if value == "old" or value == "new":
        return value
    raise ValueError(f"{what} is 'old' or 'new', got {value!r}")


def _in_request(
    state: RequestContext, iterator: Generator[Any, Any, Any]
) -> Generator[Any, Any, Any]:
    """Drive ``iterator`` with ``state`` as the current request during each step, passing on
    what is sent or thrown in, and closing it (inside the request) when closed."""
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        token = current_request.set(state)
        try:
            item = iterator.send(sent) if thrown is None else iterator.throw(thrown)
        except StopIteration as stop:
            return stop.value
        finally:
            current_request.reset(token)
        sent, thrown = None, None
        try:
            sent = yield item
        except GeneratorExit:
            token = current_request.set(state)
            try:
                iterator.close()
            finally:
                current_request.reset(token)
            raise
        except BaseException as exc:
            thrown = exc


async def _in_request_async(
    state: RequestContext, iterator: AsyncGenerator[Any, Any]
) -> AsyncGenerator[Any, Any]:
    """The async counterpart of :func:`_in_request` (values sent in are passed on too)."""
    sent: Any = None
    try:
        while True:
            token = current_request.set(state)
            try:
                item = await iterator.asend(sent)
            except StopAsyncIteration:
                return
            finally:
                current_request.reset(token)
            sent = yield item
    finally:
        token = current_request.set(state)
        try:
            await iterator.aclose()
        finally:
            current_request.reset(token)


def other(label: Label) -> Label:
    """The other version's label."""
    return "new" if label == "old" else "old"


class context:
    """Set the request key, pin and attributes for the code inside, as ``with`` or decorator.

    As a decorator, ``key`` may be a callable that receives the decorated function's arguments
    and returns the key, e.g. ``@dualrun.context(key=lambda request: request.user_id)``.
    Nested contexts inherit the outer values and may override them; a nested context with a
    different key is a different request, with its own routing decisions.
    """

    def __init__(self, key: Any = None, pin: Label | None = None, **attrs: Any) -> None:
        self._pin: Label | None = None if pin is None else check_label(pin, "pin")
        self._key = key
        self._attrs = attrs
        self._tokens: dict[int, Any] = {}

    def _state(self, key: Any) -> RequestContext:
        parent = current_request.get()
        if parent is None:
            return RequestContext(key, self._pin, MappingProxyType(dict(self._attrs)), {})
        same_request = key is None or key == parent.key
        return RequestContext(
            parent.key if key is None else key,
            parent.pin if self._pin is None else self._pin,
            MappingProxyType({**parent.attrs, **self._attrs}),
            parent.decisions if same_request else {},
        )

    def __enter__(self) -> RequestContext:
        if callable(self._key):
            raise ValueError(
                "a callable key computes the key from a decorated function's arguments: use "
                "@dualrun.context(key=...) on a function, or pass the key itself to `with`"
            )
        state = self._state(self._key)
        self._tokens[id(state)] = current_request.set(state)
        return state

    def __exit__(self, *exc_info: object) -> None:
        state = current_request.get()
        current_request.reset(self._tokens.pop(id(state)))

    def __call__(self, func: F) -> F:
        key_of: Callable[..., Any] = (
            self._key if callable(self._key) else (lambda *a, **k: self._key)
        )
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                token = current_request.set(self._state(key_of(*args, **kwargs)))
                try:
                    return await func(*args, **kwargs)
                finally:
                    current_request.reset(token)

            return cast(F, run_async)

        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            def run_async_generator(*args: Any, **kwargs: Any) -> Any:
                state = self._state(key_of(*args, **kwargs))
                return _in_request_async(state, func(*args, **kwargs))

            return cast(F, run_async_generator)

        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def run_generator(*args: Any, **kwargs: Any) -> Any:
                state = self._state(key_of(*args, **kwargs))
                token = current_request.set(state)
                try:
                    iterator = func(*args, **kwargs)
                finally:
                    current_request.reset(token)
                # Each resumption runs inside the request: the body sees it across yields.
                return (yield from _in_request(state, iterator))

            return cast(F, run_generator)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            token = current_request.set(self._state(key_of(*args, **kwargs)))
            try:
                return func(*args, **kwargs)
            finally:
                current_request.reset(token)

        return cast(F, run)
