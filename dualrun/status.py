"""Where a dispatcher stands now: who serves, what is loaded, what is still on its way.

``dispatcher.status()`` gives a :class:`Status`: plain data read from the dispatcher at one
moment, for a health endpoint, a log line (:meth:`Status.line`) or an operator's prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LoadedVersion:
    """One version the dispatcher holds: its ``label``, ``source``, private ``namespace``,
    whether it is ``loaded``, and whether it is ``retiring`` (draining, to be unloaded)."""

    label: str  # "old" or "new"
    source: str  # where it was loaded from
    namespace: str  # its private prefix, e.g. ``_dualrun_3``
    loaded: bool  # False once unloaded
    retiring: bool  # being drained, to be unloaded


@dataclass(frozen=True)
class Status:
    """A snapshot of a dispatcher's state.

    ``serving``: the labels that may serve a call now (``("new",)`` after a promotion, both
    under a canary). ``versions``: the versions held, old first. ``policy``: its repr.
    ``pins_honored``: whether ``dualrun.context(pin=...)`` chooses the version (a rollback
    overrides pins). ``shadow``: the shadow's repr, or None when nothing is shadowed.
    ``killed``: why the kill switch is on, or None. ``promoted``: the new version was promoted
    and the old one is still there for a rollback. ``in_flight``: calls running in each version
    now. ``pending_retirements``: sources of versions waiting for their calls to finish before
    they are unloaded. ``pending_interceptions``: ``intercept()`` targets whose host module is
    not imported yet (their callers are not routed). ``failed_interceptions``: targets the
    post-import hook could not patch, with why.
    """

    serving: tuple[str, ...]
    versions: tuple[LoadedVersion, ...]
    policy: str
    pins_honored: bool
    shadow: str | None
    killed: str | None
    promoted: bool
    in_flight: dict[str, int] = field(default_factory=dict)
    pending_retirements: tuple[str, ...] = ()
    pending_interceptions: tuple[str, ...] = ()
    failed_interceptions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON-ready data."""
        return asdict(self)

    def line(self) -> str:
        """One line for a log or a prompt, e.g. ``serving new (src) · loaded old=git:v1 ...``."""
        sources = {v.label: v.source for v in self.versions if v.loaded}
        serving = " and ".join(f"{label} ({sources.get(label, '?')})" for label in self.serving)
        loaded = " ".join(
            f"{v.label}={v.source}{' (retiring)' if v.retiring else ''}"
            for v in self.versions
            if v.loaded
        )
        parts = [
            f"serving {serving}",
            f"loaded {loaded or 'nothing'}",
            f"policy {self.policy}",
            "pins honored" if self.pins_honored else "pins overridden",
            f"shadow {'off' if self.shadow is None else 'on'}",
            f"in flight old {self.in_flight.get('old', 0)} new {self.in_flight.get('new', 0)}",
        ]
        if self.killed is not None:
            parts.insert(0, f"KILLED ({self.killed})")
        if self.pending_retirements:
            parts.append(f"retiring {', '.join(self.pending_retirements)}")
        if self.pending_interceptions:
            parts.append(f"pending interceptions {', '.join(self.pending_interceptions)}")
        if self.failed_interceptions:
            parts.append(f"failed interceptions {len(self.failed_interceptions)}")
        return " · ".join(parts)
