"""What a dispatcher saw, per route, in a form a reviewer reads before pressing promote."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dualrun.dispatcher import Dispatcher

SCHEMA_VERSION = 1


@dataclass
class RouteReport:
    """One route's numbers."""

    route: str
    calls: dict[str, int]
    in_flight: dict[str, int]
    crossings: int = 0  # method calls that ran in their object's version, not the chosen one


@dataclass
class Report:
    """Per-route counts; rendered as text, Markdown or JSON."""

    policy: str
    routes: list[RouteReport] = field(default_factory=list)
    policy_errors: int = 0
    last_policy_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def _rows(self) -> list[tuple[str, ...]]:
        return [
            (
                r.route,
                str(r.calls["old"]),
                str(r.calls["new"]),
                _share(r.calls["new"], r.calls["old"] + r.calls["new"]),
                str(r.crossings),
            )
            for r in self.routes
        ]

    _HEADER = ("route", "old calls", "new calls", "new share", "crossings")

    def to_text(self) -> str:
        rows = [self._HEADER, *self._rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self._HEADER))]
        lines = [f"dualrun report — policy {self.policy}"]
        for n, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += self._notes()
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [f"### dualrun report — policy `{self.policy}`", ""]
        lines.append("| " + " | ".join(self._HEADER) + " |")
        lines.append("|" + "---|" * len(self._HEADER))
        lines += ["| `" + row[0] + "` | " + " | ".join(row[1:]) + " |" for row in self._rows()]
        lines += ["", *self._notes()]
        return "\n".join(lines).rstrip() + "\n"

    def _notes(self) -> list[str]:
        notes = []
        if any(r.crossings for r in self.routes):
            notes.append(
                "crossings: method calls on an object of one version while the request was routed "
                "to the other; each ran in the object's own version"
            )
        if self.policy_errors:
            notes.append(
                f"policy errors: {self.policy_errors} (served by old); last: "
                f"{self.last_policy_error}"
            )
        return notes


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def build_report(dispatcher: Dispatcher) -> Report:
    """Read the dispatcher's counters into a :class:`Report`."""
    from dualrun.counters import peek

    routes = [
        RouteReport(
            route=name,
            calls={label: route.calls(label) for label in ("old", "new")},
            in_flight={label: route.in_flight(label) for label in ("old", "new")},
            crossings=peek(route.crossings),
        )
        for name, route in sorted(dispatcher.routes.items())
    ]
    return Report(
        policy=repr(dispatcher.policy),
        routes=routes,
        policy_errors=dispatcher.policy_error_count(),
        last_policy_error=dispatcher.last_policy_error,
    )
