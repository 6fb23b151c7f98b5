"""The report as one self-contained HTML page: tables, and two charts per route drawn in SVG by a
few lines of inline JavaScript from the report's own JSON. No network, no CDN, no files."""

from __future__ import annotations

import html
import json

from dualrun.render import _latency, _summary, bound_notes, pending_interceptions, percent
from dualrun.report import RENDERERS, Divergence, Report, RouteReport

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222;padding:0 1em}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em;font-family:monospace}
table{border-collapse:collapse;margin:.6em 0} td,th{padding:.2em .7em;text-align:left;
vertical-align:top;border-bottom:1px solid #ddd} th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums} code{font-size:.95em}
.charts{display:flex;gap:2em;flex-wrap:wrap} figure{margin:0} figcaption{color:#555}
svg{background:#fafafa;border:1px solid #ddd} .old{fill:#4a7bd0;stroke:#4a7bd0}
.new{fill:#e07b39;stroke:#e07b39} span.old{color:#4a7bd0} span.new{color:#e07b39}
.rate{fill:none;stroke:#c0392b;stroke-width:2}
.axis{stroke:#999;fill:none} .label{fill:#555;font-size:11px;stroke:none}
.ex{font-family:monospace;font-size:.9em;color:#444}
"""

_SCRIPT = """
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const data = JSON.parse(document.getElementById("dualrun-data").textContent);
  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, s) {
    const t = el("text", {x: x, y: y, class: "label"}, parent); t.textContent = s; return t;
  }
  function mismatchChart(svg, timeline) {
    const W = 420, H = 160, P = 30;
    el("path", {d: `M${P} ${P/2} V${H-P} H${W-P/2}`, class: "axis"}, svg);
    if (!timeline.length) { text(svg, P + 10, H / 2, "no comparisons yet"); return; }
    const t0 = timeline[0][0], t1 = Math.max(timeline[timeline.length - 1][0], t0 + 1);
    const rates = timeline.map(([m, c, x]) => [m, c ? x / c : 0]);
    const top = Math.max(0.01, ...rates.map(r => r[1]));
    const pts = rates.map(([m, r]) =>
      `${P + (W - 1.5 * P) * (m - t0) / (t1 - t0)},${H - P - (H - 1.5 * P) * r / top}`);
    if (pts.length === 1) pts.push(pts[0].replace(/^[^,]+/, String(W - P / 2)));
    el("polyline", {points: pts.join(" "), class: "rate"}, svg);
    text(svg, 2, P / 2 + 4, (100 * top).toFixed(1) + "%");
    text(svg, P, H - 8, new Date(t0 * 60000).toISOString().slice(0, 16).replace("T", " "));
  }
  function latencyChart(svg, histogram) {
    const W = 420, H = 160, P = 30;
    el("path", {d: `M${P} ${P/2} V${H-P} H${W-P/2}`, class: "axis"}, svg);
    const all = [...(histogram.old || []), ...(histogram.new || [])];
    if (!all.length) { text(svg, P + 10, H / 2, "no latencies yet"); return; }
    const lo = Math.log(Math.min(...all.map(b => b[0])));
    const hi = Math.log(Math.max(...all.map(b => b[0])));
    const span = Math.max(hi - lo, 1e-9);
    for (const label of ["old", "new"]) {
      const buckets = histogram[label] || [];
      const total = buckets.reduce((s, b) => s + b[1], 0) || 1;
      const peak = Math.max(...buckets.map(b => b[1] / total), 1e-9);
      for (const [ns, n] of buckets) {
        const x = P + (W - 1.5 * P - 6) * (Math.log(ns) - lo) / span + (label === "new" ? 3 : 0);
        const h = (H - 1.5 * P) * (n / total) / peak;
        el("rect", {x: x, y: H - P - h, width: 3, height: h, class: label,
                    "data-ns": ns, "data-count": n}, svg);
      }
    }
    const fmt = ns => ns >= 1e6 ? (ns / 1e6).toFixed(1) + " ms" : (ns / 1e3).toFixed(1) + " µs";
    text(svg, P, H - 8, fmt(Math.exp(lo)));
    text(svg, W - 4 * P, H - 8, fmt(Math.exp(hi)));
  }
  for (const section of document.querySelectorAll("section.route")) {
    const route = data.routes[Number(section.dataset.index)];
    mismatchChart(section.querySelector("svg.mismatch-chart"), route.timeline);
    latencyChart(section.querySelector("svg.latency-chart"), route.latency_histogram);
  }
  document.body.dataset.rendered = "yes";
})();
"""


def script_json(data: object) -> str:
    """JSON to inline in a ``<script>``: no ``<``, ``>`` or ``&`` in it at all, so no string
    (``</script>``, ``<!--<script>``) can end the element or switch the parser's state."""
    text = json.dumps(data, sort_keys=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _divergence_table(title: str, divergences: list[Divergence], top: int | None) -> str:
    if not divergences:
        return ""
    rows = []
    for d in divergences[:top]:
        examples = "".join(
            f"<div class='ex'>{_e(x.get('path'))}: {_e(x.get('old'))} → {_e(x.get('new'))}"
            f"{' (key ' + _e(x['key']) + ')' if x.get('key') is not None else ''}</div>"
            + "".join(
                f"<details class='traceback'><summary>traceback of {_e(label)}</summary>"
                f"<pre>{_e(text)}</pre></details>"
                for label, text in (x.get("traceback") or {}).items()
            )
            for x in d.examples
        )
        rows.append(
            f"<tr class='divergence'><td class='num'>{d.count:,}</td>"
            f"<td class='num'>{percent(d.share)}</td><td>{_e(d.kind)}</td>"
            f"<td><code>{_e(d.path)}</code></td><td>{examples}</td></tr>"
        )
    return (
        f"<h3>{_e(title)}</h3><table class='{_e(title.lower())}'><tr><th>calls</th>"
        f"<th>of calls</th><th>kind</th><th>path</th><th>examples: old → new</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _route(index: int, route: RouteReport, top: int | None) -> str:
    summary = "".join(
        f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in _summary(route)
    )
    latency = (  # a route without comparisons (calls only) has no latencies
        " · ".join(_latency(route, name) for name in ("p50", "p95", "p99"))
        if route.latency_ns
        else ""
    )
    charts = (
        "<div class='charts'><figure><svg class='mismatch-chart' width='420' height='160' "
        "role='img' aria-label='mismatch rate over time'></svg><figcaption>mismatch rate per "
        "minute</figcaption></figure><figure><svg class='latency-chart' width='420' height='160' "
        "role='img' aria-label='latency distributions'></svg><figcaption>latency: "
        f"<span class='old'>■</span> old <span class='new'>■</span> new ({_e(latency)})"
        "</figcaption></figure></div>"
        if route.comparisons or route.timeline
        else ""
    )
    return (
        f"<section class='route' data-index='{index}' data-route='{_e(route.route)}'>"
        f"<h2>{_e(route.route)}</h2><table class='summary'>{summary}</table>{charts}"
        f"{_divergence_table('Divergences', route.divergences, top)}"
        f"{_divergence_table('Noise', route.noise_divergences, top)}</section>"
    )


def render_html(report: Report, top: int | None = None) -> str:
    """The whole page as a string."""
    data = script_json(report.to_dict())
    notes = ""
    if report.policy_errors:
        notes += (
            f"<p>Policy errors: {report.policy_errors:,}; last: {_e(report.last_policy_error)}</p>"
        )
    if report.dropped_events:
        notes += f"<p>Event-log lines dropped (queue full): {report.dropped_events:,}</p>"
    if report.pending_interceptions:
        notes += f"<p class='pending'>{_e(pending_interceptions(report.pending_interceptions))}</p>"
    routes = "".join(_route(i, r, top) for i, r in enumerate(report.routes))
    routes += "".join(f"<p class='bounds'>{_e(note)}</p>" for note in bound_notes(report))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>dualrun report</title><style>{_STYLE}</style></head><body>"
        f"<h1>dualrun report</h1><p>Policy: <code>{_e(report.policy)}</code></p>{notes}"
        f"{routes or '<p>No routes yet.</p>'}"
        f"<script type='application/json' id='dualrun-data'>{data}</script>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


RENDERERS["html"] = render_html
