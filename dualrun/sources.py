"""Turn a version's source (directory, wheel or zip, git revision) into a directory on disk.

Archives and git revisions are extracted once into a private cache, keyed by content hash or
commit id, and made read-only: tracebacks then show real source lines from real files. What runs
from the cache is code, so the cache must be the user's own and not writable by others, and an
extraction is used again only if it still matches the manifest written with it. Extractions are
capped in size (``$DUALRUN_MAX_EXTRACT_BYTES``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

from dualrun.errors import DualrunWarning, VersionLoadError

GIT_PREFIX = "git:"
ARCHIVE_SUFFIXES = (".whl", ".zip")
MAX_EXTRACT_VARIABLE = "DUALRUN_MAX_EXTRACT_BYTES"
DEFAULT_MAX_EXTRACT_BYTES = 1 << 30
MANIFEST = ".dualrun-manifest.json"
TMP_PREFIX = ".tmp-"


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
    text = str(os.fspath(source))
    try:
        return _materialize(label, text)
    except (OSError, RuntimeError, ValueError) as exc:  # a path the system cannot use
        # ~nosuchuser (RuntimeError), a name too long (OSError), a NUL byte (ValueError)
        raise VersionLoadError(label, text, f"cannot use this path: {exc}") from exc


def _materialize(label: str, text: str) -> Path:
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
    _check_limit(label, source)
    digest = _file_digest(label, source, path)
    target = cache_root() / "archives" / digest
    if _reusable(label, source, target, digest):
        return target
    try:
        with zipfile.ZipFile(path) as archive:
            _check_declared_size(label, source, sum(i.file_size for i in archive.infolist()))
            bad = archive.testzip()
            if bad is not None:
                raise VersionLoadError(label, source, f"corrupt archive: member {bad!r} is damaged")
            return _publish(
                label, source, target, digest, lambda tmp: _extract_zip(label, source, archive, tmp)
            )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise VersionLoadError(label, source, f"corrupt or unreadable archive: {exc}") from exc


def _file_digest(label: str, source: str, path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise VersionLoadError(label, source, f"cannot read the archive: {exc}") from exc
    return digest.hexdigest()[:32]


def _extract_zip(label: str, source: str, archive: zipfile.ZipFile, into: Path) -> None:
    """Extract member by member, counting the bytes actually written (a header may lie)."""
    root = into.resolve()
    budget = max_extract_bytes()
    written = 0
    for info in archive.infolist():
        resolved = (into / info.filename).resolve()
        if not resolved.is_relative_to(root):
            raise VersionLoadError(
                label, source, f"archive member {info.filename!r} escapes the archive"
            )
    for info in archive.infolist():
        destination = into / info.filename
        if info.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as member, open(destination, "wb") as out:
            for block in iter(lambda: member.read(1 << 16), b""):
                written += len(block)
                if written > budget:
                    raise VersionLoadError(label, source, _too_big(budget, "extracting it wrote"))
                out.write(block)


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
    _check_limit(label, source)
    target = cache_root() / "git" / commit
    if not _reusable(label, source, target, commit):
        # From the top: run in a subdirectory, 'git archive' would archive only that subdirectory.
        archive = _git_bytes(label, source, top, "archive", "--format=tar", commit)
        _publish(label, source, target, commit, lambda tmp: _extract_tar(archive, tmp))
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
    """Extract a ``git archive``: symbolic links that stay inside the tree are kept, one that
    points outside (or is absolute) is refused by the ``data`` filter."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = archive.getmembers()
        budget = max_extract_bytes()
        _check_declared_size("", "", sum(m.size for m in members if m.isfile()), budget)
        archive.extractall(into, members=members, filter="data")


# -- limits -----------------------------------------------------------------------------------


def max_extract_bytes() -> int:
    """The most an archive or git revision may extract to: ``$DUALRUN_MAX_EXTRACT_BYTES``,
    else 1 GiB. A zip bomb is refused before it fills the disk."""
    configured = os.environ.get(MAX_EXTRACT_VARIABLE, "").strip()
    if not configured:
        return DEFAULT_MAX_EXTRACT_BYTES
    try:
        value = int(configured.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"{MAX_EXTRACT_VARIABLE} is a whole number of bytes >= 1, got {configured!r}"
        )
    return value


def _check_limit(label: str, source: str) -> None:
    try:
        max_extract_bytes()
    except ValueError as exc:
        raise VersionLoadError(label, source, str(exc)) from None


class _TooBig(Exception):
    """An extraction would exceed the limit (raised where the label is not known)."""


def _too_big(budget: int, what: str) -> str:
    return (
        f"{what} more than {budget:,} bytes, the limit for an extraction (a zip bomb?); "
        f"set {MAX_EXTRACT_VARIABLE} to allow more"
    )


def _check_declared_size(label: str, source: str, total: int, budget: int | None = None) -> None:
    budget = max_extract_bytes() if budget is None else budget
    if total > budget:
        message = _too_big(budget, f"its members declare {total:,} bytes:")
        if not label:
            raise _TooBig(message)
        raise VersionLoadError(label, source, message)


# -- the cache: owned by the user, not writable by others, content as extracted -----------------


def _check_owned(label: str, source: str, path: Path) -> os.stat_result:
    """Refuse a cache directory another user could have written to."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise VersionLoadError(label, source, f"cannot use the cache {str(path)!r}: {exc}") from exc
    problem = None
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif info.st_uid != os.getuid():
        problem = f"belongs to another user (uid {info.st_uid})"
    elif info.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    if problem is not None:
        raise VersionLoadError(
            label,
            source,
            f"the extraction cache {str(path)!r} {problem}: another user could plant code "
            "there that would run in this process. Delete it, or set DUALRUN_CACHE_DIR to a "
            "directory of your own that only you can write (chmod 700)",
        )
    return info


def _cache_dir(label: str, source: str, path: Path) -> Path:
    """``path`` (the cache root or one of its folders), created private if missing, checked."""
    root = cache_root()
    for directory in (root, path) if path != root else (root,):
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise VersionLoadError(
                label, source, f"cannot create the cache {str(directory)!r}: {exc}"
            ) from exc
        # The root may be reached through a symbolic link the user chose; what it points to
        # is checked.
        _check_owned(label, source, directory.resolve() if directory == root else directory)
    return path


def _reusable(label: str, source: str, target: Path, key: str) -> bool:
    """Whether ``target`` holds exactly what was extracted for ``key``. A tree that differs
    from its manifest is moved away (and extracted again); one another user could write is
    refused."""
    _cache_dir(label, source, target.parent)
    _sweep(target.parent)
    if not os.path.lexists(target):
        return False
    _check_owned(label, source, target)
    if _manifest(target) == _read_manifest(target, key):
        return True
    warnings.warn(
        f"the cached extraction {str(target)!r} differs from what was extracted there (files "
        "changed, added or removed since): it is extracted again",
        DualrunWarning,
        stacklevel=4,
    )
    _discard(target)
    return False


def _read_manifest(target: Path, key: str) -> dict[str, str] | None:
    try:
        data = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("source") != key:
        return None
    files = data.get("files")
    return files if isinstance(files, dict) else None


def _manifest(root: Path) -> dict[str, str]:
    """Every file (its SHA-256), symbolic link (its target) and directory of a tree, by
    relative path; Python's own ``__pycache__`` folders left out. A directory or file another
    user could write shows as such, so that it never matches."""
    entries: dict[str, str] = {}
    uid = os.getuid()
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            relative = os.path.relpath(path, root)
            if relative == MANIFEST:
                continue
            info = os.lstat(path)
            if info.st_uid != uid or info.st_mode & 0o022:
                entries[relative] = "writable by others"
            elif stat.S_ISLNK(info.st_mode):
                entries[relative] = "link " + os.readlink(path)
            elif stat.S_ISDIR(info.st_mode):
                entries[relative] = "dir"
            else:
                entries[relative] = "sha256 " + _sha256(path)
    return entries


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _publish(label: str, source: str, target: Path, key: str, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary directory, make it read-only, write its manifest and rename it into
    place atomically. The temporary directory never stays behind, whatever fails."""
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=target.parent))
    try:
        try:
            fill(tmp)
        except _TooBig as exc:
            raise VersionLoadError(label, source, str(exc)) from None
        except (tarfile.TarError, OSError) as exc:
            raise VersionLoadError(label, source, f"cannot extract it: {_tar_reason(exc)}") from exc
        _make_read_only(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"source": key, "files": _manifest(tmp)}))
        os.chmod(tmp / MANIFEST, 0o444)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # pragma: no cover - only a lost race reaches here
                raise
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)
    return target


def _tar_reason(exc: BaseException) -> str:
    if isinstance(exc, tarfile.AbsoluteLinkError | tarfile.LinkOutsideDestinationError):
        return f"a symbolic link points outside the tree ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _discard(target: Path) -> None:
    """Move a bad extraction out of the way (atomically), then delete it."""
    aside = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=target.parent))
    try:
        target.rename(aside / "bad")
    finally:
        _remove(aside)


def _sweep(folder: Path) -> None:
    """Temporary directories of extractions that died (a killed process) over an hour ago."""
    horizon = time.time() - 3600
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.name.startswith(TMP_PREFIX) and entry.lstat().st_mtime < horizon:
                _remove(entry)


def _remove(root: Path) -> None:
    _make_writable(root)
    shutil.rmtree(root, ignore_errors=True)


def _make_read_only(root: Path) -> None:
    """Files read-only; directories writable by the owner alone (Python adds __pycache__)."""
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) & ~0o022 | 0o700)
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):  # a link's mode is its target's
                os.chmod(path, 0o444)


def _make_writable(root: Path) -> None:
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if not os.path.islink(path):
                    os.chmod(path, 0o755 if name in dirs else 0o644)
