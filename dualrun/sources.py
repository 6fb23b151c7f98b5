"""Turn a version's source (directory, wheel or zip, git revision) into a directory on disk.

Archives and git revisions are extracted once into a private cache, keyed by content hash or
commit id, and made read-only: tracebacks then show real source lines from real files.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from dualrun.errors import VersionLoadError

GIT_PREFIX = "git:"
ARCHIVE_SUFFIXES = (".whl", ".zip")


def cache_root() -> Path:
    """Where extracted sources live: ``$DUALRUN_CACHE_DIR``, else the user cache directory."""
    configured = os.environ.get("DUALRUN_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dualrun"


def materialize(label: str, source: str) -> Path:
    """Return the directory that holds the version's top-level packages for ``source``."""
    if not isinstance(source, str | os.PathLike) or not str(source):
        raise VersionLoadError(
            label,
            repr(source),
            "a source is a directory, a .whl or .zip file, or 'git:REV' / 'git:REPO@REV'",
        )
    text = os.fspath(source)
    if text.startswith(GIT_PREFIX):
        return _from_git(label, text)
    path = Path(text).expanduser()
    if not path.exists():
        raise VersionLoadError(label, text, f"path {str(path)!r} does not exist")
    if path.is_dir():
        return path.resolve()
    if path.suffix.lower() in ARCHIVE_SUFFIXES:
        return _from_archive(label, text, path.resolve())
    raise VersionLoadError(
        label,
        text,
        "not a directory, a .whl or .zip file, nor 'git:REV' / 'git:REPO@REV'",
    )


def _from_archive(label: str, source: str, path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    target = cache_root() / "archives" / digest
    if target.is_dir():
        return target
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise VersionLoadError(label, source, f"corrupt archive: member {bad!r} is damaged")
            return _publish(target, lambda tmp: _extract_zip(label, source, archive, tmp))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise VersionLoadError(label, source, f"corrupt or unreadable archive: {exc}") from exc


def _extract_zip(label: str, source: str, archive: zipfile.ZipFile, into: Path) -> None:
    for member in archive.namelist():
        resolved = (into / member).resolve()
        if not resolved.is_relative_to(into.resolve()):
            raise VersionLoadError(label, source, f"archive member {member!r} escapes the archive")
    archive.extractall(into)


def _from_git(label: str, source: str) -> Path:
    repo, rev = _split_git(label, source, source[len(GIT_PREFIX) :])
    if not rev:
        raise VersionLoadError(label, source, "no revision given: use 'git:REV' or 'git:REPO@REV'")
    if not repo.is_dir():
        raise VersionLoadError(label, source, f"repository path {str(repo)!r} is not a directory")
    top = Path(
        _git(label, source, repo, "rev-parse", "--show-toplevel", what="not a git repository")
    )
    # The path is relative to where the user stands (or to REPO), so that old="git:v1",
    # new="." agree; the cache always holds the whole tree of the commit.
    subdir = os.path.relpath(repo.resolve(), top.resolve())
    subdir = "" if subdir == "." else subdir
    commit = _git(
        label,
        source,
        repo,
        "rev-parse",
        "--verify",
        "--end-of-options",
        f"{rev}^{{commit}}",
        what=f"unknown revision {rev!r}",
    )
    target = cache_root() / "git" / commit
    if not target.is_dir():
        # From the top: run in a subdirectory, 'git archive' would archive only that subdirectory.
        archive = _git_bytes(label, source, top, "archive", "--format=tar", commit)
        _publish(target, lambda tmp: _extract_tar(archive, tmp))
    return target / subdir if subdir else target


def _split_git(label: str, source: str, spec: str) -> tuple[Path, str]:
    """``REPO@REV`` or ``REV`` (which may itself hold an ``@``, as in ``HEAD@{1}``)."""
    for at, char in enumerate(spec):
        if char == "@" and at and Path(spec[:at]).expanduser().is_dir():
            return Path(spec[:at]).expanduser(), spec[at + 1 :]
    head = spec.partition("@")[0]
    if "@" in spec and (os.sep in head or head.startswith((".", "~"))):
        raise VersionLoadError(label, source, f"repository path {head!r} is not a directory")
    return Path.cwd(), spec


def _git(label: str, source: str, repo: Path, *args: str, what: str) -> str:
    return _git_bytes(label, source, repo, *args, what=what).decode().strip()


def _git_bytes(label: str, source: str, repo: Path, *args: str, what: str = "git failed") -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VersionLoadError(label, source, f"cannot run git: {exc}") from exc
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise VersionLoadError(label, source, f"{what} ({detail[-1] if detail else 'git failed'})")
    return done.stdout


def _extract_tar(data: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(into, filter="data")


def _publish(target: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary directory, make it read-only and rename it into place atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        fill(tmp)
        _make_read_only(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # pragma: no cover - only a lost race reaches here
                raise
    finally:
        if tmp.exists():
            _make_writable(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_read_only(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o444)


def _make_writable(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
