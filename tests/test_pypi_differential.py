"""Released packages, two versions side by side, checked against each version run alone.

For each package, a corpus of inputs is run three ways:

* ground truth: each version installed alone in its own virtual environment (a venv without
  the system's site-packages, the wheel unpacked into it), run in a fresh interpreter;
* in this process, both versions loaded with ``dualrun.load`` from the same wheels and called
  through one routed target, each input once pinned to old (shadowed by new) and once pinned to
  new.

Every output of each version must equal its ground truth, and the report's mismatch count must
equal the number of inputs whose ground-truth outputs differ: no false mismatch, none missed.

Wheels are downloaded once with ``pip download`` into ``tests/.cache/wheels`` and reused; the
venvs and their outputs are cached in ``tests/.cache`` too (keyed by the corpus and the code
that runs it). Without network the tests skip, saying so, only when the package index cannot be
reached; any other download failure fails them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import textwrap
import venv
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

# dateutil imports six, shared from the host like any third-party dependency; six adds an
# importer to sys.meta_path when first imported, which must not happen inside a test.
import six  # noqa: F401

import dualrun

pytestmark = pytest.mark.slow

CACHE = Path(__file__).parent / ".cache"
WHEELS = CACHE / "wheels"
VENVS = CACHE / "venvs"
TRUTH = CACHE / "groundtruth"
UNREACHABLE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "Connection refused",
    "SSLError",
)

# Both sides turn outputs into the same JSON shape (the versions' private prefixes removed).
CANON = """
import datetime
import decimal
import re

_PREFIX = re.compile(r"_dualrun_\\d+\\.")


def strip(text):
    return _PREFIX.sub("", text)


def describe(exc):
    kind = type(exc)
    return strip(f"{kind.__module__}.{kind.__qualname__}: {exc}")


def canon(value):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, decimal.Decimal):
        return {"Decimal": str(value)}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        tz = strip(repr(getattr(value, "tzinfo", None)))
        return {type(value).__name__: value.isoformat(), "tz": tz}
    if isinstance(value, dict):
        return {"dict": [[canon(k), canon(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [canon(v) for v in value]}
    return {"repr": strip(repr(value))}
"""

RUNNER = """
import importlib
import json
import sys
import warnings

warnings.simplefilter("ignore")
{canon}
{build}
data = json.load(sys.stdin)
module_name, qualname = data["target"].split(":")
function = importlib.import_module(module_name)
for part in qualname.split("."):
    function = getattr(function, part)
out = []
for item in data["corpus"]:
    args, kwargs = build(item)
    try:
        out.append(["ok", canon(function(*args, **kwargs))])
    except Exception as exc:
        out.append(["error", describe(exc)])
json.dump(out, sys.stdout)
"""


@dataclasses.dataclass(frozen=True)
class Case:
    """One package: two releases, a routed target, how an input becomes a call, the inputs."""

    dist: str
    module: str
    old: str
    new: str
    target: str
    build: str  # source of ``build(item) -> (args, kwargs)``
    corpus: tuple[Any, ...]
    needs: tuple[str, ...] = ()  # other wheels each version's venv needs


def pip_download(requirement: str, *, pure: bool = True) -> Path:
    """The wheel for ``requirement`` ("name==version"), downloaded into WHEELS unless there:
    the pure-Python one, or with ``pure=False`` the one compiled for this platform."""
    name, version = requirement.split("==")
    stem = name.replace("-", "_").lower()

    def cached() -> Path | None:
        for wheel in sorted(WHEELS.glob("*.whl")):
            dist, wheel_version = wheel.name.split("-")[:2]
            same = dist.lower().replace("-", "_") == stem and wheel_version == version
            if same and wheel.name.endswith("-none-any.whl") == pure:
                return wheel
        return None

    found = cached()
    if found is not None:
        return found
    WHEELS.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--platform", "any"] if pure else []
    command += ["--disable-pip-version-check", "--no-input", "--dest", str(WHEELS), requirement]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    found = cached()
    if found is None:
        output = done.stdout + done.stderr
        if any(marker in output for marker in UNREACHABLE):
            pytest.skip(
                f"the package index is unreachable (pip download {requirement}): {output[-300:]}"
            )
        pytest.fail(f"pip download {requirement} failed:\n{' '.join(command)}\n{output}")
    return found


def venv_python(case: Case, version: str) -> Path:
    """A venv holding only ``case.dist==version`` (and what it needs), made once."""
    home = VENVS / f"{case.dist}-{version}"
    python = home / "bin" / "python"
    if python.exists():
        return python
    wheels = [pip_download(f"{case.dist}=={version}")] + [pip_download(n) for n in case.needs]
    building = home.with_name(home.name + ".tmp")
    if building.exists():
        import shutil

        shutil.rmtree(building)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(building)
    [site] = list(building.glob("lib/python*/site-packages"))
    for wheel in wheels:  # a pure wheel installs by unpacking it into site-packages
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    building.rename(home)
    return python


def ground_truth(case: Case, version: str) -> list[Any]:
    """The outputs of ``case.dist==version`` run alone in its own venv (cached)."""
    payload = json.dumps({"target": case.target, "corpus": case.corpus}, sort_keys=True)
    key = hashlib.sha256((payload + case.build + CANON + RUNNER).encode()).hexdigest()[:16]
    cached = TRUTH / f"{case.dist}-{version}-{key}.json"
    if cached.is_file():
        outputs: list[Any] = json.loads(cached.read_text())
        return outputs
    script = RUNNER.format(canon=CANON, build=textwrap.dedent(case.build))
    done = subprocess.run(
        [str(venv_python(case, version)), "-I", "-c", script],
        input=payload,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)
    TRUTH.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(outputs))
    return outputs


def functions(case: Case) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(CANON + "\n" + textwrap.dedent(case.build), namespace)
    return namespace


def run_in_process(case: Case) -> tuple[dict[str, list[Any]], Any]:
    """Both versions loaded side by side: each input pinned to old (shadowed by new), then to
    new. Returns each version's outputs and the route's report."""
    old_wheel = pip_download(f"{case.dist}=={case.old}")
    new_wheel = pip_download(f"{case.dist}=={case.new}")
    helpers = functions(case)
    build, canon, describe = helpers["build"], helpers["canon"], helpers["describe"]
    pair = dualrun.load(case.module, old=str(old_wheel), new=str(new_wheel))
    outputs: dict[str, list[Any]] = {"old": [], "new": []}
    dispatcher = dualrun.Dispatcher(pair, policy=dualrun.Fixed("old"), shadow=dualrun.Shadow())
    try:
        routed = dispatcher.route(case.target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for item in case.corpus:
                for label in ("old", "new"):
                    args, kwargs = build(item)
                    with dualrun.context(pin=label):
                        try:
                            outputs[label].append(["ok", canon(routed(*args, **kwargs))])
                        except Exception as exc:
                            outputs[label].append(["error", describe(exc)])
        report = dispatcher.report().route(case.target)
    finally:
        dispatcher.close()
        pair.unload()
    return outputs, report


def check(case: Case) -> dict[str, int]:
    truth = {"old": ground_truth(case, case.old), "new": ground_truth(case, case.new)}
    outputs, report = run_in_process(case)
    for label in ("old", "new"):
        for item, got, expected in zip(case.corpus, outputs[label], truth[label], strict=True):
            assert got == expected, (label, item)
    differing = sum(a != b for a, b in zip(truth["old"], truth["new"], strict=True))
    assert report.comparisons == len(case.corpus)
    assert report.mismatches == differing, [
        (d.path, d.kind, d.examples[:1]) for d in report.divergences
    ]
    assert report.matches == len(case.corpus) - differing - report.noise
    return {"corpus": len(case.corpus), "differ": differing, "mismatches": report.mismatches}


# -- the packages --------------------------------------------------------------------------------

MARKDOWN_TEXTS = (
    "# Title",
    "## Sub *title* with `code`",
    "Plain paragraph with **bold**, *emphasis* and `code`.",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "| left | center | right |\n|:-----|:------:|------:|\n| l | c | r |",
    "| a |\n|---|\n| `x|y` |",
    "```python\nx = 1\n```",
    "```\nno language\n```",
    "~~~ {.ruby}\nputs 1\n~~~",
    '```python hl_lines="1"\nx = 1\n```',
    "[TOC]\n\n# One\n\n## Two\n\n# Three",
    "[TOC]\n\n# Same\n\n# Same",
    "# Title with <em>html</em>",
    "# Ünïcödé title",
    "# Title {#custom}",
    "- one\n- two\n    - nested",
    "1. first\n2. second",
    "> quote\n> more",
    "<div>raw *html*</div>",
    "Line one  \nLine two",
    '[link](http://example.com "title")',
    "![image](img.png)",
    "<http://autolink.com>",
    "Escapes: \\*not em\\* and \\# not header",
    "Setext\n======",
    "***",
    "    indented code",
    "Text with & ampersand and < less-than",
    "[ref][1]\n\n[1]: http://example.com",
    "# Heading\n\n| h |\n|---|\n| c |\n\n```js\nvar a;\n```\n\n[TOC]",
    "`` code with ` backtick ``",
    "_underscore_ and __double__",
    "",
    "# ",
    "#Not a header",
    "| no | table\n|---",
    "```\nunterminated fence",
    "Footnote[^1]\n\n[^1]: note",
    "&copy; &#169; &#xA9;",
    "<!-- comment -->\ntext",
)

DATES = (
    "2003-09-25T10:49:41",
    "2003-09-25T10:49:41.5-03:00",
    "Thu Sep 25 10:36:28 BRST 2003",
    "Thu Sep 25 2003",
    "Sep 25 2003",
    "September 25, 2003 10:49 PM",
    "25 Sep 2003",
    "2003-09-25",
    "20030925T104941",
    "20030925",
    "10-09-2003",
    "10.09.2003",
    "10/09/03",
    "Sat, 01 Jan 2000 00:00:00 +0000",
    "Sat, 01 Jan 2000 00:00:00 +2500",  # an offset Python refuses: == raises on the result
    "Sat, 01 Jan 2000 00:00:00 -2500",
    "Sat, 01 Jan 2000 00:00:00 GMT",
    "2000-01-01 00:00:00 UTC",
    "2000-01-01T00:00:00Z",
    "2000-01-01T00:00:00+05:30",
    "1999-12-31 23:59:59.999999",
    "2024-02-29",
    "2023-02-29",
    "0001-01-01",
    "9999-12-31",
    "12:00 2000-01-01",
    "2000 Jan 1st",
    "1st of January 2000",
    "Jan 1 2000 12pm",
    "Jan 1 2000 12am",
    "Jan 1 2000 25:00",
    "2000-13-01",
    "not a date",
    "",
    "   ",
    "2000-01-01T00:00:00+2400",
    "2000-01-01T00:00:00.123456789",
    "1/2/3",
    "99-01-01",
    "01-99-01",
    "2000-W01-1",
    "2000-001",
    "Monday",
    "3rd Friday",
    "2000-01-01 00:00:00 EST",
    "2000-01-01 00:00:00 XYZ",
    "2000-01-01 00:00:00 +01",
    "2000-01-01T00:00:00-00:00",
    "0",
    "1000000",
)

TOML_TEXTS = (
    "a = 1",
    "a = 1.5",
    "a = 1e3",
    "a = nan",
    "a = -nan",
    "a = inf\nb = -inf",
    "a = 0.1\nb = [1.0, 2.50]",
    "a = 1_000.000_1",
    'a = "text"',
    "a = 'literal'",
    'a = """multi\nline"""',
    "a = true\nb = false",
    "a = 1979-05-27T07:32:00Z",
    "a = 1979-05-27T07:32:00-08:00",
    "a = 1979-05-27T07:32:00",
    "a = 1979-05-27",
    "a = 07:32:00",
    "a = 1979-05-27 07:32:00Z",
    "[table]\nkey = 1",
    "[a.b.c]\nd = 2",
    "[[items]]\nx = 1\n[[items]]\nx = 2.0",
    "a = { x = 1, y = 2.5 }",
    "a = [ [1, 2], [3.0] ]",
    "a = 0x1F\nb = 0o17\nc = 0b11",
    "a = +1.0\nb = -0.0",
    '"quoted key" = 1',
    "a.b = 1\na.c = 2.0",
    "a = 1\na = 2",
    "a =",
    "= 1",
    "a = [1, 2",
    'a = "unterminated',
    "a = 1979-13-27",
    "a = 01",
    "a = 1.",
    "a = .1",
    "a = 1e",
    "[a]\n[a]",
    "a = { x = 1, }",
    "a = [1,]",
    "a = 1 # comment",
    "# only a comment",
    "",
    'a = "\\u00e9"',
    'a = "\\x41"',
    "a = 9223372036854775808",
    "a = 1979-05-27T07:32:00.999999999Z",
    "[[a]]\n[a]",
    'a = """\\\n  trimmed"""',
    "a = 'x'\n\n[b]\nc = 3.14159",
)

ATTRS_NAMES = (
    "__version__",
    "__version_info__",
    "__title__",
    "__description__",
    "__url__",
    "__uri__",
    "__author__",
    "__email__",
    "__license__",
    "__copyright__",
    "__nothing__",
    "Factory",
)

CASES = {
    "markdown": Case(
        dist="markdown",
        module="markdown",
        old="3.3.7",
        new="3.7",
        target="markdown.core:markdown",
        build="""
def build(item):
    return (item,), {"extensions": ["tables", "fenced_code", "toc"]}
""",
        corpus=MARKDOWN_TEXTS,
    ),
    "python-dateutil": Case(
        dist="python-dateutil",
        module="dateutil",
        old="2.8.2",
        new="2.9.0.post0",
        target="dateutil.parser:parse",
        build="""
import datetime

def build(item):
    return (item,), {"default": datetime.datetime(2000, 1, 1)}
""",
        corpus=DATES,
        needs=("six==1.16.0",),
    ),
    "tomli": Case(
        dist="tomli",
        module="tomli",
        old="2.0.1",
        new="2.2.1",
        target="tomli:loads",
        build="""
import decimal

def build(item):
    return (item,), {"parse_float": decimal.Decimal}
""",
        corpus=TOML_TEXTS,
    ),
    "attrs": Case(
        dist="attrs",
        module="attr",
        old="23.1.0",
        new="24.2.0",
        target="attr:__getattr__",  # __version__ and friends, read from importlib.metadata
        build="""
def build(item):
    return (item,), {}
""",
        corpus=ATTRS_NAMES,
    ),
}

RESULTS: dict[str, dict[str, int]] = {}


@pytest.mark.parametrize("name", list(CASES))
def test_each_version_gives_its_own_output_and_every_difference_is_reported(name: str) -> None:
    before = set(sys.modules)
    RESULTS[name] = check(CASES[name])
    top = CASES[name].module
    assert not [m for m in set(sys.modules) - before if m.partition(".")[0] == top]
    print(f"{name}: {RESULTS[name]}")


def test_markdown_entry_point_extensions_load_each_versions_own_code() -> None:
    case = CASES["markdown"]
    pair = dualrun.load(
        "markdown",
        old=str(pip_download(f"markdown=={case.old}")),
        new=str(pip_download(f"markdown=={case.new}")),
    )
    try:
        for version in pair:
            html = version.module.markdown("|a|\n|-|\n|1|", extensions=["tables", "toc"])
            assert "<table>" in html
            tables = sys.modules[f"{version.prefix}.markdown.extensions.tables"]
            assert tables.__name__.startswith(version.prefix)
        assert pair.old.module.__version__ == "3.3.7" and pair.new.module.__version__ == "3.7"
        assert "markdown" not in sys.modules
    finally:
        pair.unload()


def test_attrs_version_answers_from_its_own_metadata() -> None:
    case = CASES["attrs"]
    pair = dualrun.load(
        "attrs",
        old=str(pip_download(f"attrs=={case.old}")),
        new=str(pip_download(f"attrs=={case.new}")),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert pair.old.module.__version__ == "23.1.0"
            assert pair.new.module.__version__ == "24.2.0"
            assert pair.new.import_module("attr").__version__ == "24.2.0"
        assert pair.new.tops == ("attrs", "attr")
    finally:
        pair.unload()


def test_a_mypyc_wheel_is_refused_clearly() -> None:
    compiled = pip_download("tomli==2.2.1", pure=False)
    with pytest.raises(dualrun.VersionLoadError, match="mypyc"):
        dualrun.load("tomli", old=str(pip_download("tomli==2.0.1")), new=str(compiled))


def test_markupsafe_speedups_importing_markupsafe_from_c_is_named() -> None:
    wheel = pip_download("markupsafe==2.1.5", pure=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pair = dualrun.load("markupsafe", old=str(wheel), new=str(wheel))
    try:
        named = [str(w.message) for w in caught if "by absolute name from C" in str(w.message)]
        assert named and "markupsafe._speedups imports 'markupsafe'" in named[0]
    finally:
        pair.unload()
