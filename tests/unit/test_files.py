"""Atomic writes (opensir.files): the target holds the old content or the whole new one, a failed write
leaves no temporary behind, and the new file gets the permissions asked for."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from opensir import files
from opensir.files import TEMPORARY_SUFFIX, atomic_directory, atomic_writer, copy_atomic, write_atomic


class Boom(RuntimeError):
    """The failure a test injects in the middle of a write."""


def test_write_atomic_replaces_the_whole_file_and_leaves_nothing_else(tmp_path: Path):
    target = tmp_path / "state.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_temporary_sits_next_to_the_target_under_a_marked_name(tmp_path: Path):
    target = tmp_path / "w.bin"
    with atomic_writer(target) as handle:
        handle.write(b"half")
        (temporary,) = tmp_path.iterdir()
        assert temporary.name.startswith(".w.bin.") and temporary.name.endswith(TEMPORARY_SUFFIX)
        assert not target.exists(), "nothing is visible under the target before the rename"
    assert target.read_bytes() == b"half"


def test_a_failed_write_keeps_the_old_content_and_removes_the_temporary(tmp_path: Path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    with pytest.raises(Boom), atomic_writer(target) as handle:
        handle.write(b"torn")
        raise Boom
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_rename_removes_the_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def replace(source: object, target: object) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="disk went away"):
        write_atomic(tmp_path / "x", b"data")
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_that_cannot_be_removed_is_logged_and_the_first_error_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(Path, "unlink", unlink)
    with (
        caplog.at_level(logging.WARNING, logger="opensir.files"),
        pytest.raises(Boom),
        atomic_writer(tmp_path / "x"),
    ):
        raise Boom
    assert "could not remove the temporary" in caplog.text and "read-only" in caplog.text


def test_copy_atomic_copies_and_a_missing_source_leaves_nothing(tmp_path: Path):
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 << 20))
    copy_atomic(source, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    with pytest.raises(FileNotFoundError):
        copy_atomic(tmp_path / "absent", tmp_path / "other.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin", "source.bin"]


def test_new_files_get_the_permissions_asked_for(tmp_path: Path):
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "shared", b"x")
        write_atomic(tmp_path / "private", b"x", mode=0o600)
        with open(tmp_path / "plain", "wb") as handle:
            handle.write(b"x")
    finally:
        os.umask(umask)
    mode = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert mode == {"shared": 0o644, "private": 0o600, "plain": 0o644}, "the default is as open() makes it"


def test_atomic_directory_replaces_the_directory_when_complete(tmp_path: Path):
    target = tmp_path / "adapters" / "v000002"
    with atomic_directory(target) as staging:
        assert staging.is_dir() and not any(staging.iterdir())
        (staging / "adapter.safetensors").write_bytes(b"one")
        assert not target.exists()
    with atomic_directory(target) as staging:
        (staging / "config.json").write_bytes(b"{}")
    assert [p.name for p in target.iterdir()] == ["config.json"], "the old directory is replaced, not merged"
    assert [p.name for p in target.parent.iterdir()] == ["v000002"]


def test_a_failed_directory_write_keeps_the_old_one_and_clears_leftovers(tmp_path: Path):
    target = tmp_path / "v1"
    with atomic_directory(target) as staging:
        (staging / "w").write_bytes(b"old")
    with pytest.raises(Boom), atomic_directory(target) as staging:
        (staging / "w").write_bytes(b"half")
        raise Boom
    assert (target / "w").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]

    leftover = tmp_path / ".v2.partial"  # a writer killed mid-write
    leftover.mkdir()
    (leftover / "stale").write_bytes(b"x")
    with atomic_directory(tmp_path / "v2") as staging:
        assert not any(staging.iterdir()), "a leftover staging directory is cleared first"
        (staging / "w").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1", "v2"]
