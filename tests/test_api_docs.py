"""Every public class, function, method and parameter is documented, and the API reference
builds from those docstrings without a warning."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dualrun

ROOT = Path(__file__).resolve().parent.parent


def _documented(text: str | None, name: str) -> bool:
    return bool(text) and re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text or "") is not None


def _parameters(function: Any) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in signature.parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _public_members(cls: type) -> list[tuple[str, Any]]:
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_") or name in ("model_config",):
            continue
        if inspect.isfunction(value) or isinstance(value, (property, classmethod, staticmethod)):
            members.append((name, value))
    return members


def undocumented() -> list[str]:
    missing = []
    for name in dualrun.__all__:
        obj = getattr(dualrun, name)
        if inspect.isclass(obj):
            if not inspect.getdoc(obj):
                missing.append(f"{name}: no docstring")
            init = vars(obj).get("__init__")
            if init is not None:
                text = (obj.__doc__ or "") + (init.__doc__ or "")
                for parameter in _parameters(init):
                    if not _documented(text, parameter):
                        missing.append(f"{name}({parameter}=...): not in the docstring")
            for member, value in _public_members(obj):
                function = value.fget if isinstance(value, property) else value
                function = getattr(function, "__func__", function)
                if not (function.__doc__ or "").strip():
                    missing.append(f"{name}.{member}: no docstring")
                    continue
                for parameter in _parameters(function):
                    if not _documented(function.__doc__, parameter):
                        missing.append(f"{name}.{member}({parameter}=...): not in the docstring")
        elif callable(obj):
            if not inspect.getdoc(obj):
                missing.append(f"{name}: no docstring")
            target = obj if inspect.isfunction(obj) else type(obj).__call__
            text = (obj.__doc__ or "") + (getattr(target, "__doc__", None) or "")
            for parameter in _parameters(obj):
                if not _documented(text, parameter):
                    missing.append(f"{name}({parameter}=...): not in the docstring")
    return missing


def test_every_public_class_function_and_parameter_has_a_docstring() -> None:
    missing = undocumented()
    assert not missing, "\n".join(missing)


def test_the_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pdoc", "-o", str(tmp_path / "site"), "dualrun"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    page = (tmp_path / "site" / "dualrun.html").read_text()  # the public API: dualrun.__all__
    for name in dualrun.__all__:
        assert f'id="{name}"' in page, name
    # the options users could only find in the source before
    for option in ("require_context", "latency_quantile", "on_change", "drain_timeout"):
        assert option in page, option
    shutil.rmtree(tmp_path / "site")
