"""pytest plugin: run a project's own test suite with every call into a package shadowed by an
earlier revision of it.

``pytest --dualrun-old=git:main --dualrun-package=pricing`` loads the package twice — the working
tree as "new", the old revision as "old" — and intercepts every public module-level function of
the host's ``pricing`` (the one-argument ``Dispatcher.intercept``). Each call the tests make is
served by new and shadowed inline by old, compared as the shadow compares. The terminal summary
lists the divergences by route and path with the tests that produced them; divergences not in
the accepted baseline (``--dualrun-baseline=FILE``, written by ``--dualrun-accept``) fail the
session. With pytest-xdist each worker writes its event log and the controller merges them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import pkgutil
import shutil
import sys
import tempfile
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from dualrun.compare import generalize
from dualrun.dispatcher import Dispatcher
from dualrun.errors import TargetNotFoundError, VersionLoadError
from dualrun.loading import VersionPair, load
from dualrun.policy import Fixed
from dualrun.recorder import Observation
from dualrun.report import Report
from dualrun.shadow import Shadow

BASELINE_SCHEMA = 1
TESTS_PER_DIVERGENCE = 10
Signature = tuple[str, str, str]  # route, generalised path, kind


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dualrun", "differential testing against an earlier version")
    group.addoption(
        "--dualrun-old",
        metavar="SRC",
        help="the old version of --dualrun-package: git:REV, a directory, a wheel",
    )
    group.addoption(
        "--dualrun-package",
        metavar="NAME",
        help="the package whose calls are shadowed by the old version (importable by the tests)",
    )
    group.addoption(
        "--dualrun-new",
        metavar="SRC",
        help="the new version (default: the directory the tests import the package from)",
    )
    group.addoption(
        "--dualrun-report",
        metavar="FILE",
        help="write the report; the format follows the extension (.json, .md, .html, else text)",
    )
    group.addoption(
        "--dualrun-baseline",
        metavar="FILE",
        help="accepted divergences: only others fail the session",
    )
    group.addoption(
        "--dualrun-accept",
        action="store_true",
        help="write every divergence of this run to --dualrun-baseline (or "
        ".dualrun-baseline.json) and pass",
    )


def pytest_configure(config: pytest.Config) -> None:
    old = config.getoption("dualrun_old")
    package = config.getoption("dualrun_package")
    if old is None and package is None:
        return
    if old is None or package is None:
        raise pytest.UsageError("--dualrun-old and --dualrun-package go together")
    plugin = DualrunPlugin(config, old, package)
    config.pluginmanager.register(plugin, "dualrun-session")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(plugin), "dualrun-xdist")


class DualrunPlugin:
    """One session's differential run (in the controller, in each xdist worker, or alone)."""

    def __init__(self, config: pytest.Config, old: str, package: str) -> None:
        self.config = config
        self.old = old
        self.package = package
        self.workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        dist = config.getoption("dist", "no") if hasattr(config.option, "dist") else "no"
        # An xdist controller runs no tests: its workers load, intercept and log.
        self.controller = self.workerinput is None and dist not in (None, "no")
        self.versions: VersionPair | None = None
        self.dispatcher: Dispatcher | None = None
        self.skipped_functions: list[str] = []
        self.current_test: str | None = None
        self.tests: dict[Signature, list[str]] = {}
        self.log_dir: str | None = None
        self.worker_logs: list[str] = []
        self.report: Report | None = None
        self.new_divergences: list[Signature] = []
        self.load_error: str | None = None

    # -- set-up --------------------------------------------------------------------------------

    def new_source(self) -> str:
        chosen = self.config.getoption("dualrun_new")
        if chosen:
            return str(chosen)
        spec = importlib.util.find_spec(self.package)
        if spec is None:
            raise pytest.UsageError(
                f"--dualrun-package {self.package!r} cannot be imported from here; give "
                "--dualrun-new=SRC or run pytest where the tests import it"
            )
        if spec.submodule_search_locations:
            return str(Path(next(iter(spec.submodule_search_locations))).parent)
        assert spec.origin is not None
        return str(Path(spec.origin).parent)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.controller:
            return
        rootdir = str(self.config.rootpath)
        if importlib.util.find_spec(self.package) is None and rootdir not in sys.path:
            sys.path.insert(0, rootdir)  # a package at the root of the project, not installed
        try:
            versions = load(self.package, old=self.old, new=self.new_source())
        except VersionLoadError as exc:
            raise pytest.UsageError(f"dualrun: {exc}") from exc
        log = None
        if self.workerinput is not None and "dualrun_log_dir" in self.workerinput:
            worker = self.workerinput.get("workerid", "worker")
            log = str(Path(self.workerinput["dualrun_log_dir"]) / f"{worker}.jsonl")
        dispatcher = Dispatcher(
            versions,
            policy=Fixed("new"),
            shadow=Shadow(primary="new", sample=100, mode="inline"),
            log=log,
        )
        dispatcher.recorder.sinks.append(self._observed)
        self.versions, self.dispatcher = versions, dispatcher
        for target in public_functions(self.package):
            try:
                dispatcher.intercept(target)
            except TargetNotFoundError:
                self.skipped_functions.append(target)  # new only, or not a function in old

    def _observed(self, obs: Observation) -> None:
        if obs.status != "mismatch" or self.current_test is None:
            return
        for difference in obs.differences:
            tests = self.tests.setdefault(
                (obs.route, generalize(difference.path), difference.kind), []
            )
            if self.current_test not in tests and len(tests) < TESTS_PER_DIVERGENCE:
                tests.append(self.current_test)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        # Set-up and teardown count too: fixtures call the package as well.
        self.current_test = item.nodeid
        try:
            return (yield)
        finally:
            self.current_test = None

    # -- the end -------------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.report = self.dispatcher.report()
            if self.workerinput is not None:
                output = self.config.workeroutput  # type: ignore[attr-defined]
                output["dualrun_tests"] = [[*sig, tests] for sig, tests in self.tests.items()]
                output["dualrun_skipped"] = self.skipped_functions
        if self.versions is not None:
            self.versions.unload()
            self.versions = None
        if self.controller and self.worker_logs:
            from dualrun.logread import report_from_logs

            def problem(message: str) -> None:
                warnings.warn(f"dualrun: {message}", stacklevel=1)

            self.report = report_from_logs(self.worker_logs, problem)[0]
            if self.log_dir is not None:
                shutil.rmtree(self.log_dir, ignore_errors=True)
        if self.report is None or self.workerinput is not None:
            return
        self._write_report()
        self._judge(session)

    def _write_report(self) -> None:
        path = self.config.getoption("dualrun_report")
        if not path or self.report is None:
            return
        render = {
            ".json": self.report.to_json,
            ".md": self.report.to_markdown,
            ".html": self.report.to_html,
        }.get(Path(path).suffix.lower(), self.report.to_text)
        Path(path).write_text(render(None), encoding="utf-8")

    def divergences(self) -> list[tuple[Signature, int, dict[str, Any]]]:
        """Every divergence of the report: signature, count, first example."""
        found = []
        for route in self.report.routes if self.report else ():
            for group in route.divergences:
                example = group.examples[0] if group.examples else {}
                found.append(((route.route, group.path, group.kind), group.count, example))
        return found

    def _baseline_path(self) -> Path:
        path = self.config.getoption("dualrun_baseline") or ".dualrun-baseline.json"
        return Path(path) if Path(path).is_absolute() else self.config.rootpath / path

    def _judge(self, session: pytest.Session) -> None:
        signatures = [sig for sig, _, _ in self.divergences()]
        path = self._baseline_path()
        if self.config.getoption("dualrun_accept"):
            data = {
                "schema": BASELINE_SCHEMA,
                "old": self.old,
                "accepted": [
                    dict(zip(("route", "path", "kind"), s, strict=True)) for s in signatures
                ],
            }
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            return
        accepted: set[Signature] = set()
        if self.config.getoption("dualrun_baseline"):
            accepted = read_baseline(path)
        self.new_divergences = [s for s in signatures if s not in accepted]
        if self.new_divergences and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report is None or self.workerinput is not None:
            return
        write = terminalreporter.write_line
        terminalreporter.section(
            f"dualrun: {self.package} from {self.old} (old) vs this tree (new)"
        )
        for route in self.report.routes:
            if route.comparisons or route.divergences:
                write(
                    f"{route.route}: {_n(route.comparisons, 'call')} compared, "
                    f"{_n(route.mismatches, 'mismatch')}"
                )
        new = set(self.new_divergences)
        for signature, count, example in self.divergences():
            name, path, kind = signature
            mark = "NEW " if signature in new else "accepted " if not self.accepting() else ""
            write(
                f"  {mark}{name} {path} {kind}: {_n(count, 'call')}, e.g. "
                f"{example.get('old')} -> {example.get('new')}"
            )
            for test in self.tests.get(signature, []):
                write(f"      {test}")
        for target in self.skipped_functions:
            write(f"  not compared (not in the old version): {target}")
        if self.accepting():
            write(
                f"dualrun: {len(self.divergences())} divergences accepted into "
                f"{self._baseline_path()}"
            )
        elif new:
            write(
                f"dualrun: {len(new)} divergences not in the baseline fail the session; review "
                "them, then accept them with --dualrun-accept"
            )
        else:
            write("dualrun: no divergence outside the baseline")

    def accepting(self) -> bool:
        return bool(self.config.getoption("dualrun_accept"))


@pytest.fixture
def dualrun_pair(request: pytest.FixtureRequest) -> DualrunPlugin:
    """The session's loaded pair (``.versions``: old and new of ``--dualrun-package``) and its
    dispatcher (``.dispatcher``: new serves, old shadows), for tests that call both."""
    plugin = request.config.pluginmanager.get_plugin("dualrun-session")
    if not isinstance(plugin, DualrunPlugin) or plugin.dispatcher is None:
        pytest.fail(
            "dualrun_pair needs the dualrun session: run pytest with --dualrun-old=SRC "
            "--dualrun-package=NAME"
        )
    return plugin


class XdistHooks:
    """The controller's side of pytest-xdist: a log directory for the workers, their test
    lists back."""

    def __init__(self, plugin: DualrunPlugin) -> None:
        self.plugin = plugin

    def pytest_configure_node(self, node: Any) -> None:
        plugin = self.plugin
        if plugin.log_dir is None:
            plugin.log_dir = tempfile.mkdtemp(prefix="dualrun-xdist-")
        node.workerinput["dualrun_log_dir"] = plugin.log_dir
        plugin.worker_logs.append(str(Path(plugin.log_dir) / f"{node.gateway.id}.jsonl"))

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {})
        for route, path, kind, tests in output.get("dualrun_tests", []):
            merged = self.plugin.tests.setdefault((route, path, kind), [])
            for test in tests:
                if test not in merged and len(merged) < TESTS_PER_DIVERGENCE:
                    merged.append(test)
        for target in output.get("dualrun_skipped", []):
            if target not in self.plugin.skipped_functions:
                self.plugin.skipped_functions.append(target)


def _n(count: int, what: str) -> str:
    return (
        f"{count} {what}" if count == 1 else f"{count} {what}{'es' if what.endswith('h') else 's'}"
    )


def read_baseline(path: Path) -> set[Signature]:
    """The accepted signatures of a baseline file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {(str(a["route"]), str(a["path"]), str(a["kind"])) for a in data["accepted"]}
    except FileNotFoundError:
        raise pytest.UsageError(
            f"--dualrun-baseline {path} does not exist: write it with --dualrun-accept"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise pytest.UsageError(
            f"--dualrun-baseline {path} is not a dualrun baseline: {exc}"
        ) from None


def public_functions(package: str) -> list[str]:
    """``"mod:func"`` for every public function defined at module level in ``package`` and
    its submodules (as the host imports them)."""
    root = importlib.import_module(package)
    modules = [root]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=f"{package}."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        with contextlib.suppress(Exception):  # a module that cannot be imported is not called
            modules.append(importlib.import_module(info.name))
    targets = []
    for module in modules:
        for name, value in sorted(vars(module).items()):
            if (
                not name.startswith("_")
                and inspect.isfunction(value)
                and value.__module__ == module.__name__
            ):
                targets.append(f"{module.__name__}:{name}")
    return targets
