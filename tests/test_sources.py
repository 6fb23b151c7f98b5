"""Sources of a version: directory, wheel, zip, git revision; the extraction cache; bad input."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import sys
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Files, git, pricing_files, write_files

import dualrun
from dualrun import sources
from dualrun.loading import _VersionFinder

LoadPair = Callable[..., dualrun.VersionPair]


def build_wheel(path: Path, files: Files, name: str = "pricing", version: str = "1.0") -> Path:
    """A minimal but well-formed wheel holding ``files``."""
    dist_info = f"{name}-{version}.dist-info"
    members = dict(files)
    members[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    members[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: dualrun-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for member, text in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{member},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    members[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, text in members.items():
            archive.writestr(member, text)
    return path


def build_zip(path: Path, files: Files, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def tree_files(root: Path) -> list[Path]:
    """The files of an extracted tree, without the bytecode Python writes next to them."""
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def assert_read_only(root: Path) -> None:
    files = tree_files(root)
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, path


def assert_pricing_pair(pair: dualrun.VersionPair, old_tag: str, new_tag: str) -> None:
    for version, tag in ((pair.old, old_tag), (pair.new, new_tag)):
        assert version.module.version() == tag
        calltime = version.import_module("pricing.calltime")
        assert f"{tag}-absolute" == calltime.absolute().VALUE
        assert f"{tag}-from_importlib" == calltime.from_importlib().VALUE
        assert version.resolve("pricing.rules:Quote")(1).total() == (int(tag[1:]), f"{tag}-sub")
    assert not [n for n in sys.modules if n.partition(".")[0] == "pricing"]


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache directory of the test's own, so that it can count what is extracted."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DUALRUN_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def earlier(write_tree: Callable[[str, Files], Path], load_pair: LoadPair) -> dualrun.VersionPair:
    """A pair loaded before a bad source is given: it must keep working afterwards."""
    v1 = write_tree("earlier-v1", pricing_files("v1"))
    v2 = write_tree("earlier-v2", pricing_files("v2"))
    return load_pair("pricing", old=str(v1), new=str(v2))


def assert_only(earlier: dualrun.VersionPair) -> None:
    loaded = {n.partition(".")[0] for n in sys.modules if n.startswith("_dualrun_")}
    assert loaded == {earlier.old.prefix, earlier.new.prefix}
    finders = [f for f in sys.meta_path if isinstance(f, _VersionFinder)]
    assert finders == [earlier.new._finder, earlier.old._finder]
    assert earlier.old.import_module("pricing.calltime").relative().VALUE == "v1-relative"
    assert earlier.new.import_module("pricing.calltime").relative().VALUE == "v2-relative"


def assert_load_error(
    error: dualrun.VersionLoadError, label: str, source: str, *cause: str
) -> None:
    assert isinstance(error, ImportError)
    assert error.label == label and error.source == source
    text = str(error)
    assert f"cannot load the {label!r} version from {source!r}" in text
    for fragment in cause:
        assert fragment in text, (fragment, text)


# --- cache location ------------------------------------------------------------------------


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DUALRUN_CACHE_DIR", str(tmp_path / "mine"))
    assert sources.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("DUALRUN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_root() == tmp_path / "xdg" / "dualrun"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.cache_root() == tmp_path / "home" / ".cache" / "dualrun"


def test_session_cache_is_not_the_users(
    dualrun_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert sources.cache_root() == dualrun_cache_dir
    assert tmp_path_factory.getbasetemp() in dualrun_cache_dir.parents


# --- directories ---------------------------------------------------------------------------


def test_directory_sources_are_used_in_place(
    write_tree: Callable[[str, Files], Path], load_pair: LoadPair, fresh_cache: Path
) -> None:
    v1 = write_tree("v1", pricing_files("v1"))
    v2 = write_tree("v2", pricing_files("v2"))
    pair = load_pair("pricing", old=str(v1), new=str(v2))
    assert_pricing_pair(pair, "v1", "v2")
    assert (pair.old.root, pair.new.root) == (v1, v2)
    assert (pair.old.source, pair.new.source) == (str(v1), str(v2))
    assert pair.old.module.__file__ == str(v1 / "pricing" / "__init__.py")
    assert not fresh_cache.exists()  # nothing copied


def test_relative_directory_source(
    write_tree: Callable[[str, Files], Path],
    load_pair: LoadPair,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    write_tree("v1", pricing_files("v1"))
    write_tree("v2", pricing_files("v2"))
    monkeypatch.chdir(tmp_path / "v2")
    pair = load_pair("pricing", old="../v1", new=".")
    assert (pair.old.root, pair.new.root) == (tmp_path / "v1", tmp_path / "v2")
    assert_pricing_pair(pair, "v1", "v2")


def test_single_module_directory(
    write_tree: Callable[[str, Files], Path], load_pair: LoadPair
) -> None:
    v1 = write_tree("v1", {"pricing.py": 'def version():\n    return "v1"\n'})
    v2 = write_tree("v2", {"pricing.py": 'def version():\n    return "v2"\n'})
    pair = load_pair("pricing", old=str(v1), new=str(v2))
    assert pair.old.module.version() == "v1"
    assert pair.new.module.version() == "v2"
    assert pair.new.module.__file__ == str(v2 / "pricing.py")


# --- wheels and zips -----------------------------------------------------------------------


def test_wheels_built_by_the_test(tmp_path: Path, load_pair: LoadPair, fresh_cache: Path) -> None:
    old_wheel = build_wheel(tmp_path / "dist" / "pricing-1.0-py3-none-any.whl", pricing_files("v1"))
    new_wheel = build_wheel(
        tmp_path / "dist" / "pricing-2.0-py3-none-any.whl", pricing_files("v2"), version="2.0"
    )
    pair = load_pair("pricing", old=str(old_wheel), new=str(new_wheel))
    assert_pricing_pair(pair, "v1", "v2")
    for version in pair:
        assert version.root.parent == fresh_cache / "archives"
        assert (version.root / "pricing" / "__init__.py").is_file()
        assert version.module.__file__ == str(version.root / "pricing" / "__init__.py")
        assert_read_only(version.root)
    assert pair.old.root != pair.new.root
    assert (pair.new.root / "pricing-2.0.dist-info" / "METADATA").is_file()
    # Tracebacks show real source lines, from the extracted files.
    with pytest.raises(ValueError, match="boom v2 5") as caught:
        pair.new.resolve("pricing.boom:explode")(5)
    text = "".join(traceback.format_exception(caught.value))
    assert str(pair.new.root / "pricing" / "boom.py") in text
    assert 'raise ValueError(f"boom v2 {amount}")  # the boom line of v2' in text


def test_archive_is_extracted_once(
    tmp_path: Path,
    load_pair: LoadPair,
    fresh_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wheel = build_wheel(tmp_path / "pricing-1.0-py3-none-any.whl", pricing_files("v1"))
    copy = tmp_path / "elsewhere" / "pricing-1.0-py3-none-any.whl"
    copy.parent.mkdir()
    copy.write_bytes(wheel.read_bytes())
    extractions: list[Path] = []
    real_extract = sources._extract_zip

    def counting(label: str, source: str, archive: zipfile.ZipFile, into: Path) -> None:
        extractions.append(into)
        real_extract(label, source, archive, into)

    monkeypatch.setattr(sources, "_extract_zip", counting)
    first = load_pair("pricing", old=str(wheel), new=str(wheel))
    assert len(extractions) == 1
    root = first.old.root
    assert first.new.root == root
    mtime = root.stat().st_mtime_ns
    init_mtime = (root / "pricing" / "__init__.py").stat().st_mtime_ns
    second = load_pair("pricing", old=str(copy), new=str(wheel))  # same bytes, other path
    assert len(extractions) == 1
    assert second.old.root == second.new.root == root
    assert root.stat().st_mtime_ns == mtime
    assert (root / "pricing" / "__init__.py").stat().st_mtime_ns == init_mtime
    assert [p.name for p in (fresh_cache / "archives").iterdir()] == [root.name]
    # One extraction, four independent namespaces.
    registries = [v.module.registry for v in (*first, *second)]
    assert [r.register("x") for r in registries] == [1, 1, 1, 1]


def test_plain_zip(tmp_path: Path, load_pair: LoadPair, fresh_cache: Path) -> None:
    old_zip = build_zip(tmp_path / "v1.zip", pricing_files("v1"))
    new_zip = build_zip(
        tmp_path / "v2.zip", {f"src/{p}": t for p, t in pricing_files("v2").items()}
    )
    pair = load_pair("pricing", old=str(old_zip), new=str(new_zip))
    assert_pricing_pair(pair, "v1", "v2")
    assert pair.old.root.parent == fresh_cache / "archives"
    assert pair.new.root.name == "src"
    assert_read_only(pair.old.root)
    assert not list((fresh_cache / "archives").glob(".tmp-*"))


def test_zip_with_single_module(tmp_path: Path, load_pair: LoadPair) -> None:
    old_zip = build_zip(tmp_path / "v1.zip", {"pricing.py": 'VERSION = "v1"\n'})
    new_zip = build_zip(tmp_path / "v2.zip", {"pricing.py": 'VERSION = "v2"\n'})
    pair = load_pair("pricing", old=str(old_zip), new=str(new_zip))
    assert (pair.old.module.VERSION, pair.new.module.VERSION) == ("v1", "v2")


def test_archive_without_the_package(
    earlier: dualrun.VersionPair, tmp_path: Path, fresh_cache: Path
) -> None:
    wheel = str(build_wheel(tmp_path / "billing-1.0-py3-none-any.whl", {"billing/x.py": ""}))
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=wheel, new=str(earlier.new.root))
    assert_load_error(caught.value, "old", wheel, "does not contain", "'pricing'")
    assert_only(earlier)


def test_wheel_of_random_bytes(
    earlier: dualrun.VersionPair, tmp_path: Path, fresh_cache: Path
) -> None:
    wheel = tmp_path / "pricing-1.0-py3-none-any.whl"
    wheel.write_bytes(os.urandom(4096))
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(earlier.old.root), new=str(wheel))
    assert_load_error(caught.value, "new", str(wheel), "corrupt")
    assert isinstance(caught.value.__cause__, zipfile.BadZipFile)
    assert_only(earlier)
    assert not (fresh_cache / "archives").exists() or not list((fresh_cache / "archives").iterdir())


def test_truncated_wheel(earlier: dualrun.VersionPair, tmp_path: Path, fresh_cache: Path) -> None:
    whole = build_wheel(tmp_path / "whole.whl", pricing_files("v3")).read_bytes()
    wheel = tmp_path / "pricing-3.0-py3-none-any.whl"
    wheel.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(wheel), new=str(earlier.new.root))
    assert_load_error(caught.value, "old", str(wheel), "corrupt")
    assert_only(earlier)
    assert not list(fresh_cache.rglob("*.py"))


def test_zip_with_a_damaged_member(
    earlier: dualrun.VersionPair, tmp_path: Path, fresh_cache: Path
) -> None:
    payload = 'VALUE = "' + "x" * 200 + '"\n'
    path = build_zip(
        tmp_path / "damaged.zip",
        {"pricing/__init__.py": "", "pricing/data.py": payload},
        compression=zipfile.ZIP_STORED,
    )
    data = bytearray(path.read_bytes())
    at = bytes(data).index(b"x" * 200)
    data[at + 100] = ord("y")  # the CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(path), new=str(earlier.new.root))
    assert_load_error(caught.value, "old", str(path), "corrupt archive", "pricing/data.py")
    assert_only(earlier)
    assert not list(fresh_cache.rglob("*.py"))


def test_zip_member_escaping_the_archive(
    earlier: dualrun.VersionPair, tmp_path: Path, fresh_cache: Path
) -> None:
    path = build_zip(
        tmp_path / "evil.zip", {"pricing/__init__.py": "", "../../escaped.py": "X = 1\n"}
    )
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(path), new=str(earlier.new.root))
    assert_load_error(caught.value, "old", str(path), "escapes the archive")
    assert_only(earlier)
    assert not list(tmp_path.rglob("escaped.py"))
    assert not list((fresh_cache / "archives").iterdir())  # neither the target nor a temp dir


# --- git revisions -------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path, git_env: None) -> Path:
    """A repository: v1 committed and tagged 'v1', v2 committed on top (HEAD)."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    write_files(path, pricing_files("v1"))
    (path / "README").write_text("pricing\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "v1")
    git(path, "tag", "v1")
    write_files(path, pricing_files("v2"))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "v2")
    return path


def test_git_repo_at_revision(repo: Path, load_pair: LoadPair, fresh_cache: Path) -> None:
    pair = load_pair("pricing", old=f"git:{repo}@v1", new=f"git:{repo}@HEAD")
    assert_pricing_pair(pair, "v1", "v2")
    assert pair.old.root == fresh_cache / "git" / git(repo, "rev-parse", "v1")
    assert pair.new.root == fresh_cache / "git" / git(repo, "rev-parse", "HEAD")
    for version in pair:
        assert_read_only(version.root)
        # The tree of the commit, nothing else (no .git directory).
        assert (version.root / "README").is_file()
        assert not (version.root / ".git").exists()
    assert not list((fresh_cache / "git").glob(".tmp-*"))
    # Tracebacks show the committed source lines from the extracted files.
    with pytest.raises(ValueError, match="boom v1 9") as caught:
        pair.old.resolve("pricing.boom:explode")(9)
    text = "".join(traceback.format_exception(caught.value))
    assert str(pair.old.root / "pricing" / "boom.py") in text
    assert "# the boom line of v1" in text


def test_git_revision_of_the_repository_around_the_cwd(
    repo: Path, load_pair: LoadPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_files(repo, {"pricing/__init__.py": pricing_files("v3")["pricing/__init__.py"]})
    monkeypatch.chdir(repo)
    pair = load_pair("pricing", old="git:v1", new="git:HEAD")
    assert_pricing_pair(pair, "v1", "v2")
    # The working tree (uncommitted v3 edit) against the last commit.
    pair = load_pair("pricing", old="git:HEAD", new=".")
    assert pair.old.module.version() == "v2"
    assert pair.new.module.version() == "v3"
    assert pair.new.root == repo


def test_git_revision_from_a_subdirectory(
    tmp_path: Path, git_env: None, load_pair: LoadPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "mono"
    write_files(repo / "python", pricing_files("v1"))
    write_files(repo, {"README": "monorepo\n"})
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    git(repo, "tag", "v1")
    write_files(repo / "python", pricing_files("v2"))
    git(repo, "commit", "-q", "-am", "v2")
    commit = git(repo, "rev-parse", "v1")
    monkeypatch.chdir(repo / "python")
    pair = load_pair("pricing", old="git:v1", new=".")
    assert_pricing_pair(pair, "v1", "v2")
    cached = sources.cache_root() / "git" / commit
    assert pair.old.root == cached / "python"
    assert (cached / "README").is_file()  # the cache holds the whole tree of the commit
    # The same commit named through the repository path: the same cached tree.
    pair = load_pair("pricing", old=f"git:{repo}/python@v1", new=f"git:{repo / 'python'}@HEAD")
    assert_pricing_pair(pair, "v1", "v2")
    assert pair.old.root == cached / "python"


def test_git_commit_is_extracted_once(
    repo: Path, load_pair: LoadPair, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extractions: list[Path] = []
    real_extract = sources._extract_tar

    def counting(data: bytes, into: Path) -> None:
        extractions.append(into)
        real_extract(data, into)

    monkeypatch.setattr(sources, "_extract_tar", counting)
    sha = git(repo, "rev-parse", "v1")
    first = load_pair("pricing", old=f"git:{repo}@v1", new=f"git:{repo}@{sha}")
    assert len(extractions) == 1
    assert first.old.root == first.new.root == fresh_cache / "git" / sha
    assert first.old.module is not first.new.module
    mtime = first.old.root.stat().st_mtime_ns
    file_mtime = (first.old.root / "pricing" / "sub.py").stat().st_mtime_ns
    second = load_pair("pricing", old=f"git:{repo}@{sha[:10]}", new=f"git:{repo}@HEAD~1")
    assert len(extractions) == 1
    assert second.old.root == second.new.root == first.old.root
    assert first.old.root.stat().st_mtime_ns == mtime
    assert (first.old.root / "pricing" / "sub.py").stat().st_mtime_ns == file_mtime
    load_pair("pricing", old=f"git:{repo}@v1", new=f"git:{repo}@HEAD")
    assert len(extractions) == 2  # HEAD is another commit
    assert sorted(p.name for p in (fresh_cache / "git").iterdir()) == sorted(
        [sha, git(repo, "rev-parse", "HEAD")]
    )


def test_unknown_git_revision(earlier: dualrun.VersionPair, repo: Path) -> None:
    source = f"git:{repo}@no-such-tag"
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=f"git:{repo}@v1", new=source)
    assert_load_error(caught.value, "new", source, "unknown revision 'no-such-tag'")
    assert_only(earlier)


def test_unknown_git_revision_around_the_cwd(
    earlier: dualrun.VersionPair, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old="git:v9.9", new="git:HEAD")
    assert_load_error(caught.value, "old", "git:v9.9", "unknown revision 'v9.9'")
    assert_only(earlier)


@pytest.mark.parametrize("rev", ["--output=/tmp/x", "$(touch PWNED)", "HEAD; touch PWNED"])
def test_git_revision_is_never_an_option_nor_shell(
    earlier: dualrun.VersionPair, repo: Path, rev: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    source = f"git:{repo}@{rev}"
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=source, new=source)
    assert_load_error(caught.value, "old", source, "unknown revision")
    assert not (repo / "PWNED").exists()
    assert_only(earlier)


def test_directory_that_is_not_a_git_repository(
    earlier: dualrun.VersionPair, tmp_path: Path, git_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain"
    write_files(plain, pricing_files("v1"))
    source = f"git:{plain}@HEAD"
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=source, new=str(plain))
    assert_load_error(caught.value, "old", source, "not a git repository")
    monkeypatch.chdir(plain)
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(plain), new="git:HEAD")
    assert_load_error(caught.value, "new", "git:HEAD", "not a git repository")
    assert_only(earlier)


def test_git_repository_path_that_does_not_exist(
    earlier: dualrun.VersionPair, tmp_path: Path
) -> None:
    source = f"git:{tmp_path / 'missing'}@v1"
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=source, new=source)
    assert_load_error(caught.value, "old", source, "is not a directory")
    assert_only(earlier)


def test_git_without_a_revision(earlier: dualrun.VersionPair, repo: Path) -> None:
    for source in (f"git:{repo}@", "git:"):
        with pytest.raises(dualrun.VersionLoadError) as caught:
            dualrun.load("pricing", old=source, new=source)
        assert_load_error(caught.value, "old", source, "no revision given")
    assert_only(earlier)


def test_git_revision_without_the_package(
    earlier: dualrun.VersionPair, tmp_path: Path, git_env: None
) -> None:
    repo = tmp_path / "other"
    write_files(repo, {"billing/__init__.py": ""})
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "billing")
    source = f"git:{repo}@HEAD"
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(earlier.old.root), new=source)
    assert_load_error(caught.value, "new", source, "does not contain", "'pricing'")
    assert_only(earlier)


def test_empty_source(earlier: dualrun.VersionPair) -> None:
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old="", new=str(earlier.new.root))
    assert caught.value.label == "old"
    assert "a source is a directory" in str(caught.value)
    assert_only(earlier)


def test_git_revision_with_an_at_sign_in_it(
    tmp_path: Path, git_env: None, load_pair: LoadPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "reflog"
    write_files(repo, pricing_files("v1"))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    write_files(repo, pricing_files("v2"))
    git(repo, "commit", "-q", "-am", "v2")
    monkeypatch.chdir(repo)
    pair = load_pair("pricing", old="git:HEAD@{1}", new=f"git:{repo}@HEAD")
    assert_pricing_pair(pair, "v1", "v2")


def test_a_real_package_in_src_wins_over_a_plain_directory_of_the_same_name(
    tmp_path: Path, load_one: Callable[..., dualrun.Version]
) -> None:
    write_files(tmp_path / "project", {"pricing/NOTES.txt": "docs, not code\n"})
    write_files(tmp_path / "project" / "src", pricing_files("v1"))
    version = load_one("old", "pricing", str(tmp_path / "project"))
    assert version.root == tmp_path / "project" / "src"
    assert version.module.VERSION == "v1"
