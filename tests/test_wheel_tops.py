"""A wheel's own top-level names belong to the version; compiled code that escapes is named.

* every top-level module a wheel installs (``top_level.txt`` / ``RECORD``) is part of the
  version, not only the one named (attrs ships ``attr`` and ``attrs``);
* a mypyc-compiled wheel is refused at ``load()`` saying why and what to load instead;
* a C extension that imports its own package by absolute name from C (markupsafe's
  ``_speedups``) is detected when it loads: a DualrunWarning names the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import dualrun_leftovers
from routing_helpers import unique

import dualrun

LoadPair = Callable[..., dualrun.VersionPair]


def wheel(path: Path, files: dict[str, str | bytes], dist: str, version: str) -> Path:
    info = f"{dist}-{version}.dist-info"
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{info}/RECORD": record,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**files, **meta}.items():
            archive.writestr(name, data)
    return path


def test_every_top_level_name_the_wheel_installs_is_the_versions(
    tmp_path: Path, load_pair: LoadPair
) -> None:
    pkg = unique("twotops")
    helper = f"{pkg}_compat"
    made = []
    for version in ("1.0", "2.0"):
        files: dict[str, str | bytes] = {
            f"{pkg}/__init__.py": f"import {helper}\n\ndef where():\n    return {helper}.TAG\n",
            f"{helper}.py": f"TAG = {version!r}\n",
        }
        made.append(
            wheel(tmp_path / version / f"{pkg}-{version}-py3-none-any.whl", files, pkg, version)
        )
    pair = load_pair(pkg, old=str(made[0]), new=str(made[1]))
    assert pair.old.tops == (pkg, helper)
    assert pair.old.module.where() == "1.0" and pair.new.module.where() == "2.0"
    assert pair.new.import_module(helper).__name__ == f"{pair.new.prefix}.{helper}"
    assert helper not in sys.modules and pkg not in sys.modules


def test_a_mypyc_wheel_is_refused_with_what_to_do(tmp_path: Path) -> None:
    pkg = unique("compiled")
    library = f"5bae8a57b5ef85818b48__mypyc{sysconfig.get_config_var('EXT_SUFFIX')}"
    files: dict[str, str | bytes] = {f"{pkg}/__init__.py": "X = 1\n", library: b"\x7fELF"}
    compiled = wheel(tmp_path / "c" / f"{pkg}-2.0-cp311-cp311-linux_x86_64.whl", files, pkg, "2.0")
    plain = wheel(
        tmp_path / "p" / f"{pkg}-1.0-py3-none-any.whl",
        {f"{pkg}/__init__.py": "X = 0\n"},
        pkg,
        "1.0",
    )
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load(pkg, old=str(plain), new=str(compiled))
    error = caught.value
    assert error.label == "new" and error.source == str(compiled)
    assert "mypyc" in str(error) and "5bae8a57b5ef85818b48__mypyc" in str(error)
    assert "pure-Python wheel" in str(error)
    assert dualrun_leftovers() == ([], [])


EXTENSION = """
#include <Python.h>

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "_speedups", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *package = PyImport_ImportModule("PKG");  /* as markupsafe's _speedups does */
    if (package == NULL) return NULL;
    Py_DECREF(package);
    return PyModule_Create(&definition);
}
"""


def compile_extension(source: Path, target: Path) -> None:
    """Build ``target`` from ``source`` with the C compiler; skip without one (unless CI)."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    include = Path(sysconfig.get_paths()["include"])
    if compiler is None or not (include / "Python.h").is_file():
        if os.environ.get("DUALRUN_REQUIRE_CC") == "1":
            pytest.fail("DUALRUN_REQUIRE_CC=1 but no C compiler or Python.h was found")
        pytest.skip(
            "needs a C compiler and the Python headers (apt-get install gcc python3-dev); "
            "set DUALRUN_REQUIRE_CC=1 to make their absence a failure"
        )
    command = [compiler, "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(target)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def test_a_c_extension_importing_its_package_from_c_is_named(
    tmp_path: Path, load_pair: LoadPair
) -> None:
    pkg = unique("speedy")
    sources = []
    for label in ("old", "new"):
        package = tmp_path / label / pkg
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(
            "try:\n    from . import _speedups\nexcept ImportError:\n    _speedups = None\n"
        )
        c_file = tmp_path / f"{label}.c"
        c_file.write_text(EXTENSION.replace("PKG", pkg))
        compile_extension(c_file, package / f"_speedups{sysconfig.get_config_var('EXT_SUFFIX')}")
        sources.append(str(package.parent))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pair = load_pair(pkg, old=sources[0], new=sources[1])
    named = [
        str(w.message)
        for w in caught
        if issubclass(w.category, dualrun.DualrunWarning)
        and "by absolute name from C" in str(w.message)
    ]
    assert len(named) == 2, [str(w.message) for w in caught]
    assert f"C extension module {pkg}._speedups imports {pkg!r}" in named[0]
    assert "'old' version" in named[0] and "'new' version" in named[1]
    # The C import reached no copy of the version (the host has none): the package fell back.
    assert pair.old.module._speedups is None
    assert pkg not in sys.modules
