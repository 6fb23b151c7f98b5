"""Text (terminal) and Markdown (pull request) renderings of a :class:`~dualrun.Report`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dualrun.report import Divergence, Report, RouteReport

EXAMPLE_WIDTH = 60


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
    text = "-" if text is None else text
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
    if route.crossings:
        rows.append(
            ("crossings", f"{route.crossings:,} method calls ran in their object's version")
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
    if route.internal_errors:
        rows.append(
            ("dualrun errors", f"{route.internal_errors:,}; last: {route.last_internal_error}")
        )
    return rows


def _latency(route: RouteReport, name: str) -> str:
    old, new = route.latency_ns["old"][name], route.latency_ns["new"][name]
    return f"{name} old {duration(old)} new {duration(new)} ({ratio(route.latency_ratio[name])})"


def _divergence_rows(divergences: list[Divergence], top: int | None) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("count", "share", "kind", "path", "example: old -> new")]
    for d in divergences[:top]:
        example = d.examples[0] if d.examples else {"old": None, "new": None}
        rows.append(
            (
                f"{d.count:,}",
                percent(d.share),
                d.kind,
                d.path,
                f"{_clip(example['old'], 28)} -> {_clip(example['new'], 28)}",
            )
        )
    return rows


def render_text(report: Report, top: int | None = None) -> str:
    """Aligned plain text, most frequent divergence first."""
    lines = [f"dualrun report (policy {report.policy})"]
    if report.policy_errors:
        lines.append(
            f"policy errors: {report.policy_errors:,} (served by old); last: "
            f"{report.last_policy_error}"
        )
    if report.dropped_events:
        lines.append(f"event-log lines dropped (queue full): {report.dropped_events:,}")
    for route in report.routes:
        lines += ["", route.route]
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
    return "\n".join(lines) + "\n"


def render_markdown(report: Report, top: int | None = None) -> str:
    """Markdown that pastes into a pull request."""
    lines = [f"## dualrun report (policy `{report.policy}`)"]
    if report.policy_errors:
        lines += [
            "",
            f"**Policy errors:** {report.policy_errors:,} (served by old); last: "
            f"`{report.last_policy_error}`",
        ]
    if report.dropped_events:
        lines += ["", f"**Event-log lines dropped (queue full):** {report.dropped_events:,}"]
    for route in report.routes:
        lines += ["", f"### `{route.route}`", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in _summary(route)]
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
    return "\n".join(lines) + "\n"


def _md(cell: str) -> str:
    return (
        "`" + cell.replace("|", "\\|").replace("`", "'") + "`"
        if cell.startswith("$")
        else (cell.replace("|", "\\|"))
    )
