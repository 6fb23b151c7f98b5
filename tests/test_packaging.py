"""The README's two commands work on a fresh machine: every package the tests import is
installed by the ``[test]`` extra (so no test skips for a missing package), and CI runs the
browser test rather than skipping it."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _requirement_names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }


def _imported_top_levels(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names


def test_every_package_the_tests_import_is_in_the_test_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    declared |= _requirement_names(project["optional-dependencies"]["test"])
    local = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"dualrun", "tests"}
    distributions = packages_distributions()
    missing = {}
    for name in sorted(_imported_top_levels(ROOT / "tests") - local):
        if name in sys.stdlib_module_names or name.isupper():  # HOST: a name tests generate
            continue
        dists = {d.lower().replace("_", "-") for d in distributions.get(name, [name])}
        if not dists & declared:
            missing[name] = sorted(dists)
    assert not missing, f"tests import packages the [test] extra does not install: {missing}"


def test_ci_installs_chromium_and_requires_the_browser_test() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    install = script.index("install -y -qq chromium")
    required = script.index("export DUALRUN_REQUIRE_BROWSER=1")
    assert install < required < script.index("\npytest")
