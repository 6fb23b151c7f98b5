"""The HTML report opened in headless Chromium: its inline script draws the charts.

The page is ``d.report().to_html()`` for two routes with comparisons and divergences across a
few minutes. Chromium (Debian's ``chromium`` package) renders it and dumps the DOM; the test
checks that the script ran, that each route has its mismatch-rate line and the latency bars of
both versions, that the divergence rows are there, and that the page needs no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from log_helpers import ROUTE_A, ROUTE_B, T0, LogLab, observation, target

from dualrun.report import Report, RouteReport

# The SVG namespace name the page's script passes to createElementNS: an identifier that is
# never fetched, not a reference to anything on the network.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag: str, cls: str | None = None) -> list[Node]:
        return [n for n in self.walk() if n.tag == tag and (cls is None or cls in n.classes)]

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)


class TreeBuilder(HTMLParser):
    """Enough of a DOM for assertions: elements, attributes, text."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "wbr", "source"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(Node("#text", {}, text=data))


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        why = (
            "chromium is not installed: the HTML report is checked by rendering it in headless "
            "Chromium. Enable this test with `apt-get install -y chromium`; `bash .ci/run` "
            "installs it and sets DUALRUN_REQUIRE_BROWSER=1, which makes its absence a failure"
        )
        if os.environ.get("DUALRUN_REQUIRE_BROWSER", "").strip() not in ("", "0"):
            pytest.fail(why)
        pytest.skip(why)
    return found


HEADLESS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def dump_dom(page: Path, profile: Path) -> str:
    done = subprocess.run(
        [chromium(), *HEADLESS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<body" in done.stdout, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("required", ["", "0", "1"])
def test_without_chromium_the_browser_test_skips_saying_how_unless_required(
    monkeypatch: pytest.MonkeyPatch, required: str
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("DUALRUN_REQUIRE_BROWSER", required)
    outcome = pytest.fail.Exception if required == "1" else pytest.skip.Exception
    with pytest.raises(outcome) as caught:
        chromium()
    assert "apt-get install -y chromium" in str(caught.value)
    assert "DUALRUN_REQUIRE_BROWSER=1" in str(caught.value)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LogLab]:
    lab = LogLab(tmp_path)
    yield lab
    lab.cleanup()


def test_the_html_report_renders_its_charts_in_headless_chromium(
    lab: LogLab, tmp_path: Path
) -> None:
    chromium()  # skip (or fail, if required) first, and clearly, if it is missing
    versions = lab.pair()
    d = lab.dispatcher(versions)
    for minute in range(4):  # comparisons across four minutes, mismatch rate rising
        for i in range(10):
            when = T0 + 60 * minute + i
            status = "mismatch" if i < 2 + 2 * minute else "match"
            d.recorder.record(
                observation(
                    ROUTE_A,
                    status,
                    when,
                    paths=("$.price", f"$.items[{i}].qty") if i % 2 else ("$.price",),
                    new_ns=3000,
                )
            )
            d.recorder.record(
                observation(
                    ROUTE_B,
                    "mismatch" if i == minute else "match",
                    when,
                    paths=("$.total",),
                    old_ns=50_000 + 1000 * i,
                    new_ns=20_000,
                )
            )
    # A key that would switch the HTML parser's script state and swallow the page's own script.
    breaker = "<!--<script></SCRIPT >"
    d.recorder.record(
        observation(ROUTE_B, "mismatch", T0 + 30, paths=("$['<b>tag</b>']",), key=breaker)
    )
    calls_only = target(versions, "quote")  # routed, not shadowed: a section without charts
    d.route(calls_only)(1)
    report = d.report()
    source = report.to_html()
    page = tmp_path / "report.html"
    page.write_text(source)

    # Self-contained: nothing to fetch, no address to reach.
    assert not re.search(r"https?://", source.replace(SVG_NAMESPACE, ""))
    assert not re.search(r"""\b(src|href)\s*=|<link\b|<img\b|@import|url\(""", source)
    assert source.count(SVG_NAMESPACE) == 1

    before = parse(source)
    assert before.find("polyline") == [] and before.find("rect") == []  # drawn by the script
    dom = parse(dump_dom(page, tmp_path / "chromium-profile"))
    [body] = dom.find("body")
    assert body.attrs.get("data-rendered") == "yes", "the inline script did not run to the end"

    sections = dom.find("section", "route")
    assert [s.attrs["data-route"] for s in sections] == sorted([calls_only, ROUTE_A, ROUTE_B])
    [plain] = [s for s in sections if s.attrs["data-route"] == calls_only]
    assert plain.find("svg") == [] and "old 1" in plain.all_text()
    sections = [s for s in sections if s is not plain]
    for section in sections:
        name = section.attrs["data-route"]
        route = report.route(name)
        [mismatch_chart] = section.find("svg", "mismatch-chart")
        [line] = mismatch_chart.find("polyline")
        points = line.attrs["points"].split()
        assert len(points) == len(route.timeline) == 4, name
        ys = [float(p.split(",")[1]) for p in points]
        xs = [float(p.split(",")[0]) for p in points]
        assert xs == sorted(xs) and len(set(xs)) == 4
        [latency_chart] = section.find("svg", "latency-chart")
        for label in ("old", "new"):
            bars = latency_chart.find("rect", label)
            assert len(bars) == len(route.latency_histogram[label]) > 0, (name, label)
            assert sum(int(float(b.attrs["data-count"])) for b in bars) == route.comparisons
            assert all(float(b.attrs["height"]) > 0 for b in bars)
        rows = section.find("tr", "divergence")
        assert [r.find("code")[0].all_text() for r in rows] == [d.path for d in route.divergences]
        if name == ROUTE_A:
            # the rate rises every minute: each point is higher on the page (smaller y)
            assert ys == sorted(ys, reverse=True) and len(set(ys)) == 4
    paths_a = [r.find("code")[0].all_text() for r in sections[0].find("tr", "divergence")]
    assert paths_a[0] == "$.price" and "$.items[*].qty" in paths_a
    paths_b = [r.find("code")[0].all_text() for r in sections[1].find("tr", "divergence")]
    assert paths_b == ["$.total", "$['<b>tag</b>']"]  # escaped, shown as text
    assert dom.find("b") == []
    assert breaker in sections[1].all_text()  # shown as text, and the script above still ran


def screenshot(page: Path, profile: Path, shot: Path) -> Any:
    """The page as Chromium paints it, as a Pillow RGB image."""
    from PIL import Image

    done = subprocess.run(
        [
            chromium(),
            *HEADLESS,
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            "--window-size=1000,1400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    return Image.open(shot).convert("RGB")


def near(pixel: tuple[int, int, int], colour: str, tolerance: int = 40) -> bool:
    rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, rgb, strict=True))


def test_the_latency_legend_shows_each_series_colour(tmp_path: Path) -> None:
    """The legend squares of the latency chart were both grey: a CSS ``fill`` does not colour
    text. Here the chart has no bars (no latencies), so the only pixels in the two series'
    colours are the legend's."""
    chromium()
    route = RouteReport(route="svc.a:quote", comparisons=10, matches=10, timeline=[[1, 10, 0]])
    page = tmp_path / "legend.html"
    page.write_text(Report(policy="Fixed('old')", routes=[route]).to_html())
    image = screenshot(page, tmp_path / "profile", tmp_path / "legend.png")
    counts = {"#4a7bd0": 0, "#e07b39": 0}
    for count, pixel in image.getcolors(1 << 24):
        for colour in counts:
            if near(pixel, colour):
                counts[colour] += count
    assert counts["#4a7bd0"] >= 10 and counts["#e07b39"] >= 10, counts
