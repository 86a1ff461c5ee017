"""The local store and checkpoint commits: atomic objects, manifest last, corrupt checkpoints skipped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from opensir.checkpoint import (
    commit_checkpoint,
    fetch_checkpoint,
    fetch_latest_valid,
    list_checkpoints,
)
from opensir.spec import StorageSpec
from opensir.storage import ArtifactNotFoundError, LocalStore, open_store


def stage(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    root = tmp_path / name
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def test_store_layout_follows_namespace_and_run(tmp_path: Path):
    store = open_store(StorageSpec(uri=f"file://{tmp_path}"), "team-a", "run-1")
    store.put_bytes("progress.json", b"{}")
    assert (tmp_path / "team-a" / "run-1" / "progress.json").read_bytes() == b"{}"
    assert store.uri == f"file://{tmp_path / 'team-a' / 'run-1'}"


def test_objects_round_trip_and_leftover_temporaries_are_invisible(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_bytes("a/b.bin", b"x" * 10)
    (tmp_path / "a" / ".c.bin.123.tmp").write_bytes(b"half")  # what a killed writer leaves
    assert store.list("a") == ["a/b.bin"]
    assert store.get_bytes("a/b.bin") == b"x" * 10
    with pytest.raises(ArtifactNotFoundError, match="does not exist"):
        store.get_bytes("a/missing")
    with pytest.raises(ValueError, match="leaves the run directory"):
        store.put_bytes("../escape", b"")


def test_commit_writes_the_manifest_last_and_lists_only_committed(tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    staged = stage(tmp_path, "s1", {"model/w.bin": b"one", "runner.json": b"{}"})
    first = commit_checkpoint(store, 1, staged, {})
    # A save that died before its manifest: files without manifest.json.
    store.put_bytes("checkpoints/step-000002/model/w.bin", b"two")
    assert [c.step for c in list_checkpoints(store)] == [1]
    manifest = json.loads(store.get_bytes("checkpoints/step-000001/manifest.json"))
    assert {f["path"] for f in manifest["files"]} == {"model/w.bin", "runner.json"}
    fetched = fetch_checkpoint(store, first, tmp_path / "out")
    assert (fetched / "model" / "w.bin").read_bytes() == b"one"


def test_a_corrupt_checkpoint_is_skipped_for_the_previous_one(tmp_path: Path, caplog):
    store = LocalStore(tmp_path / "store")
    commit_checkpoint(store, 1, stage(tmp_path, "s1", {"w.bin": b"good"}), {"pool_size": 1})
    commit_checkpoint(store, 2, stage(tmp_path, "s2", {"w.bin": b"newer"}), {"pool_size": 2})
    (tmp_path / "store" / "checkpoints" / "step-000002" / "w.bin").write_bytes(b"bitrot")
    with caplog.at_level(logging.WARNING):
        chosen = fetch_latest_valid(store, tmp_path / "restore")
    assert chosen is not None and chosen.step == 1 and chosen.extra == {"pool_size": 1}
    assert "skipping checkpoint at step 2" in caplog.text and "does not match the manifest" in caplog.text


def test_an_unreadable_manifest_is_not_a_checkpoint(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_bytes("checkpoints/step-000003/manifest.json", b"{not json")
    assert list_checkpoints(store) == []
    assert fetch_latest_valid(store, tmp_path / "restore") is None
