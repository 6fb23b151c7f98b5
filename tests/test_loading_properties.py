"""Property: for generated package layouts, each version resolves only its own modules.

A layout is a top-level package and modules nested 1-3 deep. Every module exposes
``whoami()`` -> (version tag, module path, ``__name__``) and ``call_target()``, which imports
another module of the layout with one of the import forms (absolute ``import``, ``from x import
y``, relative, ``importlib.import_module``, ``__import__``), at module level or at call time, and
returns that module's ``whoami()``. Both versions share the layout and differ in the tag.
"""

from __future__ import annotations

import importlib.util
import keyword
import shutil
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from conftest import dualrun_leftovers
from hypothesis import given, settings
from hypothesis import strategies as st

import dualrun

FORMS = ("absolute", "from", "relative", "importlib", "dunder")

# Names the generated modules bind themselves; a submodule of that name would shadow them (as
# it would without dualrun).
RESERVED = frozenset({"whoami", "call_target", "importlib"})

identifiers = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(
    lambda s: not keyword.iskeyword(s) and s not in RESERVED
)


def free_top_level_name(name: str) -> bool:
    """A top-level name nothing in the host provides (the host copy is another test)."""
    return (
        name not in sys.stdlib_module_names
        and name not in sys.modules
        and name not in ("dualrun", "conftest")
        and importlib.util.find_spec(name) is None
    )


@dataclass(frozen=True)
class Edge:
    target: tuple[str, ...]  # path below the top-level package; () is the package itself
    form: str
    at_call_time: bool


@dataclass(frozen=True)
class Layout:
    top: str
    nodes: tuple[tuple[str, ...], ...]  # every module, () being the top-level package
    edges: dict[tuple[str, ...], Edge]
    order: tuple[tuple[str, ...], ...]  # the order in which the test imports the modules

    def dotted(self, node: tuple[str, ...]) -> str:
        return ".".join((self.top, *node))

    def is_package(self, node: tuple[str, ...]) -> bool:
        return any(other[: len(node)] == node and len(other) > len(node) for other in self.nodes)

    def file(self, node: tuple[str, ...]) -> str:
        if self.is_package(node):
            return "/".join((self.top, *node, "__init__.py"))
        return "/".join((self.top, *node)) + ".py"


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    top = draw(identifiers.filter(free_top_level_name))
    # A submodule named like the top level would be shadowed by 'import top...' bindings.
    components = identifiers.filter(lambda s: s != top)
    paths = draw(
        st.lists(st.lists(components, min_size=1, max_size=3).map(tuple), min_size=1, max_size=6)
    )
    nodes = {()} | {path[:i] for path in paths for i in range(1, len(path) + 1)}
    ordered = tuple(sorted(nodes, key=lambda n: (len(n), n)))
    edges = {
        node: Edge(
            target=draw(st.sampled_from(ordered)),
            form=draw(st.sampled_from(FORMS)),
            at_call_time=draw(st.booleans()),
        )
        for node in ordered
    }
    order = tuple(draw(st.permutations(ordered)))
    return Layout(top, ordered, edges, order)


def import_code(layout: Layout, node: tuple[str, ...], edge: Edge) -> tuple[str, str]:
    """Statements that import the target, and the expression that calls its ``whoami``."""
    statements = import_statements(layout, node, edge)
    if edge.form == "absolute":
        # The attribute path is followed at call time: at module level, inside an import cycle,
        # it may not exist yet (as without dualrun).
        return statements, f"{layout.dotted(edge.target)}.whoami()"
    if "_whoami" in statements:
        return statements, "_whoami()"
    return statements, "_target.whoami()"


def import_statements(layout: Layout, node: tuple[str, ...], edge: Edge) -> str:
    """Statements that import the target: a module, or the top-level package's whoami."""
    target = layout.dotted(edge.target)
    if edge.form == "absolute":
        return f"import {target}\n"
    if edge.form == "importlib":
        return f"import importlib\n_target = importlib.import_module({target!r})\n"
    if edge.form == "dunder":
        return f"_target = __import__({target!r}, fromlist=['whoami'])\n"
    if edge.form == "from":
        if not edge.target:
            return f"from {layout.top} import whoami as _whoami\n"
        parent, leaf = ".".join((layout.top, *edge.target[:-1])), edge.target[-1]
        return f"from {parent} import {leaf} as _target\n"
    # relative: from the package the module belongs to, to the target's parent
    package = node if layout.is_package(node) else node[:-1]
    if not edge.target:
        return f"from {'.' * (len(package) + 1)} import whoami as _whoami\n"
    parent, leaf = edge.target[:-1], edge.target[-1]
    common = 0
    while common < min(len(package), len(parent)) and package[common] == parent[common]:
        common += 1
    dots = "." * (len(package) - common + 1)
    return f"from {dots}{'.'.join(parent[common:])} import {leaf} as _target\n"


def module_source(layout: Layout, node: tuple[str, ...], tag: str) -> str:
    edge = layout.edges[node]
    statements, result = import_code(layout, node, edge)
    # whoami comes first, so that a module-level import that cycles back finds it.
    head = textwrap.dedent(f"""
        TAG = {tag!r}
        PATH = {layout.dotted(node)!r}


        def whoami():
            return (TAG, PATH, __name__)

    """)
    if edge.at_call_time:
        body = textwrap.indent(statements, "    ")
        return head + f"\ndef call_target():\n{body}    return {result}\n"
    return head + statements + f"\n\ndef call_target():\n    return {result}\n"


def write_version(root: Path, layout: Layout, tag: str) -> None:
    for node in layout.nodes:
        path = root / layout.file(node)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(module_source(layout, node, tag))


@settings(max_examples=25, deadline=None)
@given(layout=layouts())
def test_each_version_resolves_only_its_own_modules(layout: Layout) -> None:
    base = Path(tempfile.mkdtemp(prefix="dualrun-prop-"))
    pair = None
    try:
        write_version(base / "v1", layout, "v1")
        write_version(base / "v2", layout, "v2")
        pair = dualrun.load(layout.top, old=str(base / "v1"), new=str(base / "v2"))
        for node in layout.order:
            for version, tag in ((pair.new, "v2"), (pair.old, "v1")):
                name = layout.dotted(node)
                module = version.import_module(name)
                assert module.whoami() == (tag, name, version.alias(name))
                target = layout.dotted(layout.edges[node].target)
                assert module.call_target() == (tag, target, version.alias(target)), layout.edges[
                    node
                ]
        for version in pair:
            own = version.modules()
            assert own and all(
                n == version.prefix or n.startswith(version.prefix + ".") for n in own
            )
            for node in layout.nodes:
                module = sys.modules[version.alias(layout.dotted(node))]
                assert module.__file__.startswith(str(version.root) + "/")
        assert not [n for n in sys.modules if n.partition(".")[0] == layout.top]
    finally:
        if pair is not None:
            pair.unload()
        shutil.rmtree(base, ignore_errors=True)
    assert dualrun_leftovers() == ([], [])
