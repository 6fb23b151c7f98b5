"""A real released package from PyPI, two versions side by side: packaging 21.3 and 24.2.

The wheels are downloaded at test time with ``pip download --no-deps`` into ``tests/.cache/``
(ignored by git) and reused on later runs. Without network the test fails: CI must reach PyPI.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

import dualrun

WHEELS = Path(__file__).parent / ".cache" / "wheels"
OLD, NEW = "21.3", "24.2"


def wheel(version: str) -> Path:
    """The wheel of packaging ``version``, downloaded from PyPI unless already cached."""
    path = WHEELS / f"packaging-{version}-py3-none-any.whl"
    if path.is_file():
        return path
    WHEELS.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "--dest",
        str(WHEELS),
        f"packaging=={version}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not path.is_file():
        pytest.fail(
            f"could not download packaging=={version} from PyPI (this test needs the network):\n"
            f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"
        )
    return path


def test_packaging_21_3_and_24_2_side_by_side() -> None:
    old_wheel, new_wheel = wheel(OLD), wheel(NEW)  # a failed download fails the test
    try:  # the host's own packaging, if it has one, imported before loading
        host: ModuleType | None = importlib.import_module("packaging.version")
    except ImportError:  # pragma: no cover - depends on the environment
        host = None
    host_modules = {n: m for n, m in sys.modules.items() if n.partition(".")[0] == "packaging"}

    pair = dualrun.load("packaging", old=str(old_wheel), new=str(new_wheel))
    try:
        old_version = pair.old.import_module("packaging.version")
        new_version = pair.new.import_module("packaging.version")
        assert pair.old.module.__version__ == OLD
        assert pair.new.module.__version__ == NEW

        # 21.3 still has LegacyVersion: parse() accepts anything ...
        with pytest.warns(DeprecationWarning):
            legacy = old_version.parse("not a version")
        assert type(legacy) is old_version.LegacyVersion
        assert str(legacy) == "not a version"
        # ... 24.2 removed it: parse() raises InvalidVersion.
        assert not hasattr(new_version, "LegacyVersion")
        with pytest.raises(new_version.InvalidVersion):
            new_version.parse("not a version")
        # Both agree on valid versions, each with its own class.
        assert old_version.parse("1.0.post1") > old_version.parse("1.0")
        assert new_version.parse("1.0.post1") > new_version.parse("1.0")
        assert type(old_version.parse("1.0")) is old_version.Version
        assert old_version.Version is not new_version.Version

        # The versions' own imports reach their own modules, never the host's.
        for version, module in ((pair.old, old_version), (pair.new, new_version)):
            specifiers = version.import_module("packaging.specifiers")
            assert specifiers.Version is module.Version
            assert specifiers.SpecifierSet(">=1.0").contains("1.5")
            utils = version.import_module("packaging.utils")
            assert utils.canonicalize_name("Foo_Bar") == "foo-bar"
            assert all(n.startswith(version.prefix + ".") for n in version.modules()[1:])
            # packaging imports itself relatively; code running inside the version that
            # names it absolutely (as a plugin would) also gets the version's copy, although
            # the host has its own 'packaging' imported.
            namespace = {"__builtins__": module.__dict__["__builtins__"]}
            exec("import packaging.version\nfrom packaging.version import parse", namespace)
            assert namespace["parse"] is module.parse
            assert namespace["packaging"] is version.module
            assert namespace["packaging"].version is module
        if host is not None:
            assert old_version.Version is not host.Version
            assert new_version.Version is not host.Version

        # The host's packaging, if any, is untouched while both versions are loaded.
        now = {n: m for n, m in sys.modules.items() if n.partition(".")[0] == "packaging"}
        assert now == host_modules
    finally:
        pair.unload()

    after = {n: m for n, m in sys.modules.items() if n.partition(".")[0] == "packaging"}
    assert after == host_modules
    if host is not None:
        assert sys.modules["packaging.version"] is host
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                parsed = host.parse("not a version")
            except host.InvalidVersion:
                parsed = None
        # The host gets the behaviour of its own release, whichever that is.
        expected_legacy = hasattr(host, "LegacyVersion")
        assert (parsed is not None) == expected_legacy
