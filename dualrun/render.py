"""Text (terminal) and Markdown (pull request) renderings of a :class:`~dualrun.Report`.

Every string in a report may come from the code under test or from a log someone else wrote:
control characters in it (terminal escapes, newlines, bidirectional overrides) are shown
escaped, never sent to the terminal as they are.
"""

from __future__ import annotations

import re

from dualrun.report import RENDERERS, Divergence, Report, RouteReport

EXAMPLE_WIDTH = 60
# C0 and C1 controls, DEL, line and paragraph separators, bidirectional embeddings, overrides
# and isolates: what a terminal, a pager or a text editor acts on or reorders.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def printable(text: object) -> str:
    """``text`` as one line that only shows itself: control characters as ``\\x1b``, ``\\n``."""
    return _CONTROLS.sub(_escape, str(text))


def duration(ns: float | None) -> str:
    """``1234`` -> ``1.2 µs``."""
    if ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.1f} {unit}"
    return f"{ns:.0f} ns"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _clip(text: str | None, width: int = EXAMPLE_WIDTH) -> str:
    text = "-" if text is None else printable(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[tuple[str, ...]], indent: str = "    ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return [line.rstrip() for line in lines]


def _summary(route: RouteReport) -> list[tuple[str, str]]:
    total = route.calls["old"] + route.calls["new"]
    new_share = f" ({percent(route.calls['new'] / total)} new)" if total else ""
    rows = [("calls", f"old {route.calls['old']:,}  new {route.calls['new']:,}{new_share}")]
    if route.sources:
        versions = "  ".join(
            f"{label} {printable(route.sources[label])}"
            for label in ("old", "new")
            if label in route.sources
        )
        rows.insert(0, ("versions", versions))
    if route.crossings:
        rows.append(
            ("crossings", f"{route.crossings:,} method calls ran in their object's version")
        )
    if route.outside_context:
        rows.append(("outside context", outside_context(route.outside_context)))
    if route.results_converted:
        rows.append(
            (
                "converted results",
                f"{route.results_converted:,} results converted by a migration for the caller",
            )
        )
    if route.comparisons or route.timeouts or route.dropped or route.skipped:
        rows.append(
            (
                "comparisons",
                f"{route.comparisons:,}: {route.matches:,} match, {route.mismatches:,} mismatch, "
                f"{route.noise:,} noise only",
            )
        )
        if route.mismatch_rate is not None and route.mismatch_rate_ci is not None:
            low, high = route.mismatch_rate_ci
            rows.append(
                (
                    "mismatch rate",
                    f"{percent(route.mismatch_rate)} (95% CI {percent(low)} to {percent(high)})",
                )
            )
        rows.append(
            (
                "errors",
                f"old {route.errors['old']:,}  new {route.errors['new']:,}   timeouts "
                f"{route.timeouts:,}  dropped {route.dropped:,}  skipped {route.skipped:,}",
            )
        )
        if route.latency_ns:
            rows.append(
                ("latency", "  ".join(_latency(route, name) for name in ("p50", "p95", "p99")))
            )
            if any(not route.latency_histogram.get(label) for label in ("old", "new")):
                rows.append(("", WALL_NOT_COMPARABLE))
        if any(route.cpu_histogram.get(label) for label in ("old", "new")):
            rows.append(
                ("cpu time", "  ".join(_cpu(route, name) for name in ("p50", "p95", "p99")))
            )
    if route.internal_errors:
        rows.append(
            (
                "dualrun errors",
                f"{route.internal_errors:,}; last: {printable(route.last_internal_error)}",
            )
        )
    return rows


OUTSIDE_CONTEXT = (
    "calls made outside any dualrun.context, each decided on its own: one user's calls may "
    "reach both versions (wrap requests in dualrun.context(key=...), or "
    "Dispatcher(require_context=True) to make this an error)"
)
PENDING_INTERCEPTIONS = "not routed yet: their host module is not imported"


def outside_context(count: int) -> str:
    """The report's line for calls made outside any context, with what it means."""
    return f"{count:,} {OUTSIDE_CONTEXT}"


def pending_interceptions(targets: list[str]) -> str:
    return f"pending interceptions ({PENDING_INTERCEPTIONS}): {', '.join(targets)}"


WALL_NOT_COMPARABLE = (
    "(wall time of runs measured the same way only: a shadow on another thread is timed by "
    "that thread's load, so compare cpu time)"
)


def _latency(route: RouteReport, name: str) -> str:
    old, new = route.latency_ns["old"][name], route.latency_ns["new"][name]
    return f"{name} old {duration(old)} new {duration(new)} ({ratio(route.latency_ratio[name])})"


def _cpu(route: RouteReport, name: str) -> str:
    old, new = route.cpu_ns["old"][name], route.cpu_ns["new"][name]
    return f"{name} old {duration(old)} new {duration(new)} ({ratio(route.cpu_ratio[name])})"


def _divergence_rows(divergences: list[Divergence], top: int | None) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("calls", "of calls", "kind", "path", "example: old -> new")]
    for d in divergences[:top]:
        example = d.examples[0] if d.examples else {"old": None, "new": None}
        rows.append(
            (
                f"{d.count:,}",
                percent(d.share),
                printable(d.kind),
                printable(d.path),
                f"{_clip(example.get('old'), 28)} -> {_clip(example.get('new'), 28)}",
            )
        )
    return rows


def bound_notes(report: Report) -> list[str]:
    """What a report read from logs left out to keep its memory bounded, in sentences."""
    notes = []
    if report.omitted_routes:
        count = f"{report.omitted_routes:,}{' or more' if report.omitted_routes_at_least else ''}"
        notes.append(
            f"... and {count} more routes ({report.omitted_calls:,} calls, "
            f"{report.omitted_comparisons:,} comparisons), beyond the {report.max_routes:,} "
            "routes a report holds (dualrun report --max-routes N)"
        )
    if report.uncounted_divergences:
        notes.append(
            f"up to {report.uncounted_divergences:,} divergence events were not counted: more "
            "were waiting for a summary of their run than a report holds"
        )
    return notes


def render_text(report: Report, top: int | None = None) -> str:
    """Aligned plain text, most frequent divergence first."""
    lines = [f"dualrun report (policy {printable(report.policy)})"]
    if report.policy_errors:
        lines.append(
            f"policy errors: {report.policy_errors:,} (served by old); last: "
            f"{printable(report.last_policy_error)}"
        )
    if report.dropped_events:
        lines.append(f"event-log lines dropped (queue full): {report.dropped_events:,}")
    if report.pending_interceptions:
        lines.append(pending_interceptions(report.pending_interceptions))
    for route in report.routes:
        lines += ["", printable(route.route)]
        summary = _summary(route)
        width = max(len(name) for name, _ in summary)
        lines += [f"  {name.ljust(width)}  {value}" for name, value in summary]
        if route.divergences:
            lines.append("  divergences (most frequent first):")
            lines += _table(_divergence_rows(route.divergences, top))
            hidden = len(route.divergences) - (top or len(route.divergences))
            if hidden > 0:
                lines.append(f"    ... and {hidden} more signatures")
        if route.noise_divergences:
            lines.append("  noise (paths that differ between two runs of the same version):")
            lines += _table(_divergence_rows(route.noise_divergences, top))
        for title, text in tracebacks(route.divergences, top):
            lines.append(f"  {title}:")
            lines += [f"    {printable(line)}" for line in text.splitlines()]
    notes = bound_notes(report)
    return "\n".join(lines + ([""] if notes else []) + notes) + "\n"


def render_markdown(report: Report, top: int | None = None) -> str:
    """Markdown that pastes into a pull request."""
    lines = [f"## dualrun report (policy {_code(report.policy)})"]
    if report.policy_errors:
        lines += [
            "",
            f"**Policy errors:** {report.policy_errors:,} (served by old); last: "
            f"{_code(report.last_policy_error)}",
        ]
    if report.dropped_events:
        lines += ["", f"**Event-log lines dropped (queue full):** {report.dropped_events:,}"]
    if report.pending_interceptions:
        lines += ["", f"**{pending_interceptions(report.pending_interceptions)}**"]
    for route in report.routes:
        lines += ["", f"### {_code(route.route)}", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {_md(value)} |" for name, value in _summary(route)]
        for title, divergences in (
            ("Divergences", route.divergences),
            ("Noise", route.noise_divergences),
        ):
            if not divergences:
                continue
            rows = _divergence_rows(divergences, top)
            lines += [
                "",
                f"**{title}**",
                "",
                "| " + " | ".join(rows[0]) + " |",
                "|" + "---|" * len(rows[0]),
            ]
            lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows[1:]]
        for title, text in tracebacks(route.divergences, top):
            fence = "~~~~" if "```" in text else "```"
            body = [printable(line) for line in text.splitlines()]
            lines += ["", f"**{_md(title)}**", "", fence, *body, fence]
    for note in bound_notes(report):
        lines += ["", f"**{note}**"]
    return "\n".join(lines) + "\n"


def tracebacks(divergences: list[Divergence], top: int | None) -> list[tuple[str, str]]:
    """(title, traceback) of the first example of each shown divergence that has one: where a
    version raised, what the reader needs first."""
    found = []
    for d in divergences[:top]:
        for example in d.examples:
            for label, text in (example.get("traceback") or {}).items():
                found.append((f"traceback of {label} ({d.path} {d.kind}, first example)", text))
            if example.get("traceback"):
                break
    return found


def _code(text: object) -> str:
    """``text`` as a Markdown code span that nothing inside can end."""
    return "`" + printable(text).replace("`", "'").replace("|", "\\|") + "`"


def _md(cell: str) -> str:
    """A table cell: paths as code, other text with Markdown's and HTML's specials escaped."""
    if cell.startswith("$"):
        return _code(cell)
    text = printable(cell).replace("|", "\\|")
    return text.replace("&", "&amp;").replace("<", "&lt;")


RENDERERS.update(text=render_text, markdown=render_markdown)
