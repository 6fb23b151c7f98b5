"""``importlib.metadata`` inside a version answers for the version's own distribution.

A package that reads its own version, metadata, files or entry points sees the distribution it
ships (a wheel's ``*.dist-info``, a source tree's ``*.egg-info`` or ``pyproject.toml``) ahead of
the host's installed one, and the entry points of that distribution load the version's modules,
never the host's. Other distributions still answer from the host.
"""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from routing_helpers import unique

import dualrun

LoadPair = Callable[..., dualrun.VersionPair]

CORE = """\
import importlib.metadata
from importlib import metadata as md
from importlib.metadata import entry_points, version

DIST = "DISTNAME"


def own_version():
    return version(DIST)


def summary():
    return md.metadata(DIST)["Summary"]


def shipped_files():
    return sorted(str(f) for f in (importlib.metadata.files(DIST) or []))


def requirements():
    return importlib.metadata.requires(DIST)


def plugin_names():
    return sorted(ep.name for ep in entry_points(group="GROUP"))


def run_plugin(name):
    [ep] = [ep for ep in entry_points(group="GROUP") if ep.name == name]
    return ep.load()()


def host_version(name):
    return version(name)


def every_group():
    return sorted(importlib.metadata.entry_points().select(group="GROUP").names)


def distribution_name():
    return importlib.metadata.distribution(DIST).metadata["Name"]
"""

PLUGIN = """\
from PKG import core


def shout():
    return f"{core.own_version()} shouts"
"""


def package_files(pkg: str, dist: str, group: str, tag: str) -> dict[str, str]:
    return {
        f"{pkg}/__init__.py": f"TAG = {tag!r}\n",
        f"{pkg}/core.py": CORE.replace("DISTNAME", dist).replace("GROUP", group),
        f"{pkg}/plugins.py": PLUGIN.replace("PKG", pkg),
    }


def dist_info(
    pkg: str, dist: str, group: str, version: str, files: dict[str, str]
) -> dict[str, str]:
    info = f"{dist.replace('-', '_')}-{version}.dist-info"
    metadata = (
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        f"Summary: the {version} release\nRequires-Dist: wrapt (>=1.{version[0]})\n"
    )
    entry_points = f"[{group}]\nshout = {pkg}.plugins:shout\n"
    record = "".join(f"{path},,\n" for path in files) + f"{info}/METADATA,,\n{info}/RECORD,,\n"
    return {
        f"{info}/METADATA": metadata,
        f"{info}/entry_points.txt": entry_points,
        f"{info}/RECORD": record,
        f"{info}/top_level.txt": f"{pkg}\n",
    }


def make_wheel(path: Path, files: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


@pytest.fixture
def host_dist(tmp_path: Path) -> Iterator[Callable[[str, str, str, str], None]]:
    """Install (onto sys.path) a host distribution: metadata and a plugin entry point."""
    site = tmp_path / "site"
    site.mkdir()

    def install(pkg: str, dist: str, group: str, version: str) -> None:
        files = {f"{pkg}_host_plugin.py": "def shout():\n    return 'the host shouts'\n"}
        info = dist_info(pkg, dist, group, version, files)
        info = {
            k: v.replace(f"{pkg}.plugins:shout", f"{pkg}_host_plugin:shout")
            for k, v in info.items()
        }
        for name, text in {**files, **info}.items():
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_text(text)

    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield install
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m.endswith("_host_plugin")]:
            del sys.modules[name]
        importlib.invalidate_caches()


def wheels(tmp_path: Path, pkg: str, dist: str, group: str) -> tuple[Path, Path]:
    made = []
    for version in ("1.0", "2.0"):
        files = package_files(pkg, dist, group, version)
        wheel = tmp_path / f"w{version}" / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
        made.append(make_wheel(wheel, {**files, **dist_info(pkg, dist, group, version, files)}))
    return made[0], made[1]


def names_in_sys_modules(pkg: str) -> list[str]:
    return [name for name in sys.modules if name.partition(".")[0] == pkg]


def test_wheels_answer_for_themselves_and_load_their_own_plugins(
    tmp_path: Path, load_pair: LoadPair, host_dist: Callable[[str, str, str, str], None]
) -> None:
    pkg = unique("plugpkg")
    dist, group = pkg.replace("_", "-"), f"{pkg}.plugins"
    host_dist(pkg, dist, group, "9.9")  # the host has its own release installed
    assert importlib.metadata.version(dist) == "9.9"
    old_wheel, new_wheel = wheels(tmp_path, pkg, dist, group)
    pair = load_pair(pkg, old=str(old_wheel), new=str(new_wheel))
    for version, tag in ((pair.old, "1.0"), (pair.new, "2.0")):
        core = version.import_module(f"{pkg}.core")
        assert core.own_version() == tag
        assert core.summary() == f"the {tag} release"
        assert core.distribution_name() == dist
        assert f"{pkg}/core.py" in core.shipped_files()
        assert core.requirements() == [f"wrapt (>=1.{tag[0]})"]
        # Entry points of the version's own distribution, not of the host's same distribution.
        assert core.plugin_names() == ["shout"]
        assert core.every_group() == ["shout"]
        assert core.run_plugin("shout") == f"{tag} shouts"
        plugins = sys.modules[f"{version.prefix}.{pkg}.plugins"]
        assert plugins.core is core
        # Other distributions answer from the host.
        assert core.host_version("wrapt") == importlib.metadata.version("wrapt")
        assert [d.version for d in version.distributions] == [tag]
    assert names_in_sys_modules(pkg) == []
    assert importlib.metadata.version(dist) == "9.9"  # the host's view is unchanged


def test_entry_points_of_other_distributions_still_reach_the_host(
    tmp_path: Path, load_pair: LoadPair, host_dist: Callable[[str, str, str, str], None]
) -> None:
    pkg = unique("plugpkg")
    dist, group = pkg.replace("_", "-"), f"{pkg}.plugins"
    other = unique("otherdist")
    host_dist(other, other.replace("_", "-"), group, "3.0")  # another distribution, same group
    old_wheel, new_wheel = wheels(tmp_path, pkg, dist, group)
    pair = load_pair(pkg, old=str(old_wheel), new=str(new_wheel))
    core = pair.new.import_module(f"{pkg}.core")
    assert core.plugin_names() == ["shout", "shout"]
    loaded = sorted(ep.load()() for ep in core.entry_points(group=group))
    assert loaded == ["2.0 shouts", "the host shouts"]


def test_source_trees_answer_from_egg_info_or_pyproject(
    tmp_path: Path, load_pair: LoadPair
) -> None:
    pkg = unique("treepkg")
    dist, group = pkg.replace("_", "-"), f"{pkg}.plugins"
    # old: a src/ layout with the egg-info setuptools writes there.
    old = tmp_path / "old"
    files = package_files(pkg, dist, group, "1.0")
    egg = f"src/{pkg}.egg-info"
    extra = {
        f"{egg}/PKG-INFO": (
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\nSummary: the 1.0 release\n"
        ),
        f"{egg}/entry_points.txt": f"[{group}]\nshout = {pkg}.plugins:shout\n",
        f"{egg}/top_level.txt": f"{pkg}\n",
        f"{egg}/requires.txt": "wrapt>=1.1\n",
    }
    # new: a source tree with only its pyproject.toml; the version comes from an attribute.
    new = tmp_path / "new"
    pyproject = f"""
        [project]
        name = "{dist}"
        description = "the 2.0 release"
        dynamic = ["version"]
        dependencies = ["wrapt (>=1.2)"]

        [project.entry-points."{group}"]
        shout = "{pkg}.plugins:shout"

        [tool.setuptools.dynamic]
        version = {{attr = "{pkg}.__version__"}}
    """
    layouts = {
        old: {**{f"src/{p}": t for p, t in files.items()}, **extra},
        new: {
            **package_files(pkg, dist, group, "2.0"),
            f"{pkg}/__init__.py": "__version__ = '2.0'\n",
            "pyproject.toml": textwrap.dedent(pyproject),
        },
    }
    for root, tree in layouts.items():
        for name, text in tree.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    pair = load_pair(pkg, old=str(old), new=str(new))
    for version, tag in ((pair.old, "1.0"), (pair.new, "2.0")):
        core = version.import_module(f"{pkg}.core")
        assert core.own_version() == tag
        assert core.summary() == f"the {tag} release"
        assert core.requirements() == [f"wrapt{'>=1.1' if tag == '1.0' else ' (>=1.2)'}"]
        assert core.run_plugin("shout") == f"{tag} shouts"
    assert names_in_sys_modules(pkg) == []


def test_a_version_without_metadata_sees_the_host(tmp_path: Path, load_pair: LoadPair) -> None:
    pkg = unique("bare")
    for label in ("old", "new"):
        (tmp_path / label / pkg).mkdir(parents=True)
        (tmp_path / label / pkg / "__init__.py").write_text(
            "import importlib.metadata\n\ndef wrapt_version():\n"
            "    return importlib.metadata.version('wrapt')\n\n"
            "def mine():\n    return importlib.metadata.version('" + pkg + "')\n"
        )
    pair = load_pair(pkg, old=str(tmp_path / "old"), new=str(tmp_path / "new"))
    assert pair.old.distributions == ()
    assert pair.new.module.wrapt_version() == importlib.metadata.version("wrapt")
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        pair.new.module.mine()
