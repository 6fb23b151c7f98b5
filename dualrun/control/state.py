"""The routing state every process of a fleet applies, as plain data.

One record, versioned by the store that holds it: which policy serves (a fixed label, or a canary
percent with its salt), whether the new version is promoted or rolled back, the kill switch,
whether a rollout is paused, whether request pins are honoured, and which candidate source is
loaded as new (``generation`` counts swaps, so swapping the same source again reaches every
process too).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from dualrun.context import Label
from dualrun.policy import Canary, Fixed, Policy

Mode = Literal["fixed", "canary", "promoted", "rolled back"]
MODES: tuple[Mode, ...] = ("fixed", "canary", "promoted", "rolled back")


@dataclass(frozen=True)
class ControlState:
    """What a fleet's processes serve. ``version`` is set by the store, never by hand."""

    mode: Mode = "fixed"
    label: Label = "old"  # mode "fixed"
    percent: float = 0.0  # mode "canary"
    salt: str = ""
    killed: str | None = None  # the kill switch's reason, when on
    paused: bool = False
    pins: bool = True
    candidate: str | None = None  # None: the source each process loaded itself
    generation: int = 0  # swaps so far
    version: int = 0

    def policy(self) -> Policy:
        """The policy this state routes by (promoted and rolled back are fixed labels)."""
        if self.mode == "canary":
            return Canary(self.percent, salt=self.salt)
        if self.mode == "promoted":
            return Fixed("new")
        if self.mode == "rolled back":
            return Fixed("old")
        return Fixed(self.label)

    def describe(self) -> str:
        """``canary 5% (salt 'x'), pins honoured`` and so on, in one line."""
        if self.mode == "canary":
            route = f"canary {self.percent:g}%" + (f" (salt {self.salt!r})" if self.salt else "")
        elif self.mode == "fixed":
            route = f"fixed {self.label}"
        else:
            route = self.mode
        parts = [route, "pins honoured" if self.pins else "pins ignored"]
        if self.killed is not None:
            parts.insert(0, f"KILLED ({self.killed})")
        if self.paused:
            parts.append("paused")
        if self.candidate is not None:
            parts.append(f"candidate {self.candidate} (swap {self.generation})")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_changes(self, **changes: Any) -> ControlState:
        """A copy with ``changes``, checked as :meth:`from_dict` checks."""
        return from_dict({**self.to_dict(), **changes})


def _fail(field: str, accepted: str, got: object) -> ValueError:
    return ValueError(f"control state field {field!r} is {accepted}, got {got!r}")


def from_dict(data: object) -> ControlState:
    """A state from its JSON form (a store row, an OpenFeature object flag). Missing fields take
    their defaults; a wrong one raises ValueError naming it."""
    if not isinstance(data, dict):
        raise ValueError(f"a control state is a JSON object, got {data!r}")
    known = set(ControlState.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown control state fields {unknown}; known: {sorted(known)}")
    state = ControlState()
    mode = data.get("mode", state.mode)
    if mode not in MODES:
        raise _fail("mode", f"one of {list(MODES)}", mode)
    label = data.get("label", state.label)
    if label not in ("old", "new"):
        raise _fail("label", "'old' or 'new'", label)
    percent = data.get("percent", state.percent)
    if (
        isinstance(percent, bool)
        or not isinstance(percent, int | float)
        or math.isnan(percent)
        or not 0 <= percent <= 100
    ):
        raise _fail("percent", "a number from 0 to 100", percent)
    for name in ("salt",):
        if not isinstance(data.get(name, ""), str):
            raise _fail(name, "a string", data[name])
    for name in ("killed", "candidate"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise _fail(name, "a string or null", value)
    for name in ("paused", "pins"):
        if name in data and not isinstance(data[name], bool):
            raise _fail(name, "true or false", data[name])
    for name in ("generation", "version"):
        value = data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail(name, "a whole number >= 0", value)
    return replace(state, **{**data, "percent": float(percent)})
