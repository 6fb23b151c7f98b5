"""Loading from hostile sources: a poisoned extraction cache, symbolic links in git trees, zip
bombs. Each is refused with a :class:`dualrun.VersionLoadError` that says why and what to do (or,
for a tree that merely changed, extracted again), and no temporary directory stays behind.
"""

from __future__ import annotations

import os
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Files, git, pricing_files, write_files

import dualrun
from dualrun import sources

LoadPair = Callable[..., dualrun.VersionPair]


def build_zip(path: Path, files: dict[str, str | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def temporaries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob(".tmp-*")] if cache.exists() else []


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("DUALRUN_CACHE_DIR", str(path))
    return path


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return build_zip(tmp_path / "pricing-1.0-py3-none-any.whl", dict(pricing_files("v1")))


@pytest.fixture
def plain(write_tree: Callable[[str, Files], Path]) -> str:
    return str(write_tree("plain-v2", pricing_files("v2")))


# --- 6: the extraction cache ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["root", "archives", "extraction"])
def test_a_cache_directory_others_can_write_is_refused(
    which: str, cache: Path, wheel: Path, plain: str, load_pair: LoadPair
) -> None:
    first = load_pair("pricing", old=str(wheel), new=plain)
    directory = {"root": cache, "archives": cache / "archives", "extraction": first.old.root}
    os.chmod(directory[which], 0o777)
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(wheel), new=plain)
    text = str(caught.value)
    assert f"the extraction cache {str(directory[which])!r} is writable by others" in text
    assert "Delete it, or set DUALRUN_CACHE_DIR" in text
    assert caught.value.label == "old" and caught.value.source == str(wheel)


def test_a_cache_directory_of_another_user_is_refused(
    cache: Path, wheel: Path, plain: str, load_pair: LoadPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_pair("pricing", old=str(wheel), new=plain)
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)  # as seen by another user
    with pytest.raises(dualrun.VersionLoadError, match="belongs to another user"):
        dualrun.load("pricing", old=str(wheel), new=plain)


def test_a_cache_entry_that_is_a_symbolic_link_is_refused(
    cache: Path, wheel: Path, plain: str, load_pair: LoadPair, tmp_path: Path
) -> None:
    first = load_pair("pricing", old=str(wheel), new=plain)
    root = first.old.root
    planted = tmp_path / "planted"
    os.rename(root, planted)  # (the loaded pair keeps its modules)
    os.symlink(planted, root)
    with pytest.raises(dualrun.VersionLoadError, match="is a symbolic link"):
        dualrun.load("pricing", old=str(wheel), new=plain)


def test_a_new_cache_is_private(cache: Path, wheel: Path, plain: str, load_pair: LoadPair) -> None:
    pair = load_pair("pricing", old=str(wheel), new=plain)
    for directory in (cache, cache / "archives", pair.old.root):
        assert os.stat(directory).st_mode & 0o077 == 0, directory
    assert (pair.old.root / sources.MANIFEST).is_file()


@pytest.mark.parametrize("tamper", ["changed", "added", "removed", "added_pth"])
def test_a_cached_tree_that_changed_is_extracted_again(
    tamper: str, cache: Path, wheel: Path, plain: str, load_pair: LoadPair
) -> None:
    first = load_pair("pricing", old=str(wheel), new=plain)
    root = first.old.root
    target = root / "pricing" / "rules.py"
    if tamper == "changed":
        os.chmod(target, 0o644)
        target.write_text(target.read_text().replace("v1", "EVIL"))
    elif tamper == "added":
        (root / "pricing" / "planted.py").write_text("raise SystemExit('planted')\n")
    elif tamper == "added_pth":
        (root / "evil.pth").write_text("import os\n")
    else:
        os.chmod(target, 0o644)
        target.unlink()
    first.unload()
    with pytest.warns(dualrun.DualrunWarning, match="differs from what was extracted"):
        second = load_pair("pricing", old=str(wheel), new=plain)
    assert second.old.root == root
    assert second.old.resolve("pricing.rules:Quote")(1).total() == (1, "v1-sub")
    assert not (root / "pricing" / "planted.py").exists() and not (root / "evil.pth").exists()
    assert temporaries(cache) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fresh extraction is reused as it is
        load_pair("pricing", old=str(wheel), new=plain)


def test_a_cache_of_an_earlier_dualrun_without_a_manifest_is_extracted_again(
    cache: Path, wheel: Path, plain: str, load_pair: LoadPair
) -> None:
    first = load_pair("pricing", old=str(wheel), new=plain)
    manifest = first.old.root / sources.MANIFEST
    os.chmod(manifest, 0o644)
    manifest.unlink()
    with pytest.warns(dualrun.DualrunWarning):
        load_pair("pricing", old=str(wheel), new=plain)
    assert manifest.is_file()


def test_python_bytecode_in_the_cache_does_not_count_as_a_change(
    cache: Path, wheel: Path, plain: str, load_pair: LoadPair
) -> None:
    first = load_pair("pricing", old=str(wheel), new=plain)
    bytecode = first.old.root / "pricing" / "__pycache__"  # what Python writes on import
    bytecode.mkdir(exist_ok=True)
    (bytecode / "rules.cpython-311.pyc").write_bytes(b"...")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pair("pricing", old=str(wheel), new=plain)


def test_stale_temporary_directories_of_killed_extractions_are_swept(
    cache: Path, wheel: Path, plain: str, load_pair: LoadPair
) -> None:
    load_pair("pricing", old=str(wheel), new=plain)
    stale = cache / "archives" / ".tmp-killed"
    (stale / "pricing").mkdir(parents=True)
    os.chmod(stale, 0o555)
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    load_pair("pricing", old=str(wheel), new=plain)
    assert temporaries(cache) == []


# --- 14: symbolic links in git trees ---------------------------------------------------------


@pytest.fixture
def linked_repo(tmp_path: Path, git_env: None) -> Path:
    path = tmp_path / "linked"
    path.mkdir()
    git(path, "init", "-q")
    write_files(path, pricing_files("v1"))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "v1")
    return path


def commit_link(repo: Path, link: str, points_to: str) -> None:
    os.symlink(points_to, repo / link)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"link {link}")


def test_a_symbolic_link_inside_the_tree_is_followed(
    linked_repo: Path, cache: Path, plain: str, load_pair: LoadPair
) -> None:
    commit_link(linked_repo, "pricing/alias.py", "rules.py")
    pair = load_pair("pricing", old=f"git:{linked_repo}@HEAD", new=plain)
    alias = pair.old.import_module("pricing.alias")
    assert alias.Quote(2).total() == (2, "v1-sub")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the manifest knows the link: reused as it is
        load_pair("pricing", old=f"git:{linked_repo}@HEAD", new=plain)
    assert temporaries(cache) == []


@pytest.mark.parametrize(
    "points_to", ["../../outside.py", "/etc/hostname", "../../../../../../etc/passwd"]
)
def test_a_symbolic_link_out_of_the_tree_is_refused(
    points_to: str, linked_repo: Path, cache: Path, plain: str
) -> None:
    commit_link(linked_repo, "pricing/escape.py", points_to)
    source = f"git:{linked_repo}@HEAD"
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=source, new=plain)
    assert caught.value.source == source
    assert "a symbolic link points outside the tree" in str(caught.value)
    assert temporaries(cache) == []
    assert not (cache / "git" / git(linked_repo, "rev-parse", "HEAD")).exists()


def test_a_dangling_link_inside_the_tree_leaves_no_temporary_directory(
    linked_repo: Path, cache: Path, plain: str, load_pair: LoadPair
) -> None:
    commit_link(linked_repo, "pricing/missing.py", "not_there.py")
    pair = load_pair("pricing", old=f"git:{linked_repo}@HEAD", new=plain)
    assert pair.old.module.version() == "v1"
    with pytest.raises(ModuleNotFoundError):
        pair.old.import_module("pricing.missing")
    assert temporaries(cache) == []


# --- 21: zip bombs ---------------------------------------------------------------------------

BOMB_BYTES = 20_000_000


@pytest.fixture
def bomb(tmp_path: Path) -> Path:
    """20 MB of zeros in a few kilobytes."""
    files: dict[str, str | bytes] = dict(pricing_files("v1"))
    files["pricing/zeros.bin"] = bytes(BOMB_BYTES)
    path = build_zip(tmp_path / "bomb.zip", files)
    assert path.stat().st_size < BOMB_BYTES // 500
    return path


def test_a_zip_bomb_is_refused_by_its_declared_size(
    bomb: Path, cache: Path, plain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALRUN_MAX_EXTRACT_BYTES", "1_000_000")
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(bomb), new=plain)
    text = str(caught.value)
    assert "more than 1,000,000 bytes" in text and "DUALRUN_MAX_EXTRACT_BYTES" in text
    assert temporaries(cache) == [] and not list(cache.rglob("zeros.bin"))


def test_the_bytes_actually_written_are_counted_too(
    bomb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALRUN_MAX_EXTRACT_BYTES", "1_000_000")
    into = tmp_path / "into"
    into.mkdir()
    with zipfile.ZipFile(bomb) as archive, pytest.raises(dualrun.VersionLoadError) as caught:
        sources._extract_zip("old", str(bomb), archive, into)  # past the declared-size check
    assert "extracting it wrote more than 1,000,000 bytes" in str(caught.value)
    assert sum(p.stat().st_size for p in into.rglob("*") if p.is_file()) <= 1_000_000


def test_a_zip_whose_headers_understate_its_sizes_is_refused(
    bomb: Path, tmp_path: Path, cache: Path, plain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(bomb.read_bytes())
    declared = BOMB_BYTES.to_bytes(4, "little")
    assert data.count(declared) == 2  # the local header and the central directory
    data[:] = data.replace(declared, (100).to_bytes(4, "little"))
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    monkeypatch.setenv("DUALRUN_MAX_EXTRACT_BYTES", "1_000_000")
    with pytest.raises(dualrun.VersionLoadError):
        dualrun.load("pricing", old=str(liar), new=plain)
    assert temporaries(cache) == [] and not list(cache.rglob("zeros.bin"))


def test_under_the_limit_a_big_archive_loads(
    bomb: Path, cache: Path, plain: str, load_pair: LoadPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALRUN_MAX_EXTRACT_BYTES", str(BOMB_BYTES + 100_000))
    pair = load_pair("pricing", old=str(bomb), new=plain)
    assert (pair.old.root / "pricing" / "zeros.bin").stat().st_size == BOMB_BYTES


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1e9"])
def test_a_bad_limit_is_a_load_error_naming_the_variable(
    value: str, wheel: Path, cache: Path, plain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUALRUN_MAX_EXTRACT_BYTES", value)
    with pytest.raises(dualrun.VersionLoadError, match="DUALRUN_MAX_EXTRACT_BYTES is a whole"):
        dualrun.load("pricing", old=str(wheel), new=plain)


def test_a_git_tree_over_the_limit_is_refused(
    linked_repo: Path, cache: Path, plain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (linked_repo / "big.bin").write_bytes(os.urandom(300_000))
    git(linked_repo, "add", "-A")
    git(linked_repo, "commit", "-q", "-m", "big")
    monkeypatch.setenv("DUALRUN_MAX_EXTRACT_BYTES", "200000")
    with pytest.raises(dualrun.VersionLoadError, match="DUALRUN_MAX_EXTRACT_BYTES"):
        dualrun.load("pricing", old=f"git:{linked_repo}@HEAD", new=plain)
    assert temporaries(cache) == []


def test_an_extraction_planted_under_another_archives_name_is_extracted_again(
    cache: Path, wheel: Path, plain: str, tmp_path: Path, load_pair: LoadPair
) -> None:
    other = build_zip(tmp_path / "other.whl", dict(pricing_files("v9")))
    first = load_pair("pricing", old=str(wheel), new=plain)
    planted = load_pair("pricing", old=str(other), new=plain)
    target, source = first.old.root, planted.old.root
    first.unload()
    planted.unload()
    sources._remove(target)
    os.rename(source, target)  # the v9 tree, manifest and all, under the v1 wheel's hash
    with pytest.warns(dualrun.DualrunWarning, match="differs from what was extracted"):
        again = load_pair("pricing", old=str(wheel), new=plain)
    assert again.old.root == target and again.old.module.version() == "v1"
