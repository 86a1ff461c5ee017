"""The local store and checkpoint commits: atomic objects, manifest last, shared objects, corrupt
checkpoints skipped, retention."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from opensir.checkpoint import (
    CorruptCheckpointError,
    FileEntry,
    commit_checkpoint,
    fetch_checkpoint,
    fetch_latest_valid,
    list_checkpoints,
    prune_checkpoints,
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


def test_shared_objects_are_fetched_under_their_run_keys_and_verified(tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    shard = tmp_path / "shard"
    shard.write_bytes(b"rows")
    store.put_file("pool/shard-1", shard)
    shared = [FileEntry.of("pool/shard-1", shard)]
    checkpoint = commit_checkpoint(store, 1, stage(tmp_path, "s1", {"pool/state-1.json": b"{}"}), {}, shared)
    fetched = fetch_checkpoint(store, list_checkpoints(store)[0], tmp_path / "out")
    assert sorted(p.name for p in (fetched / "pool").iterdir()) == ["shard-1", "state-1.json"]
    assert list_checkpoints(store)[0].shared == checkpoint.shared == tuple(shared)
    (tmp_path / "store" / "pool" / "shard-1").write_bytes(b"rowz")
    with pytest.raises(CorruptCheckpointError, match="pool/shard-1: content does not match"):
        fetch_checkpoint(store, checkpoint, tmp_path / "again")
    with pytest.raises(ValueError, match="shadow shared objects"):
        commit_checkpoint(store, 2, stage(tmp_path, "s2", {"pool/shard-1": b"x"}), {}, shared)


def test_recommitting_a_step_uncommits_the_old_manifest_first(tmp_path: Path):
    """A timeline that resumed before a (corrupt) step N writes N again: while its files are replaced,
    no reader may pair the old manifest with them."""
    store = LocalStore(tmp_path / "store")
    commit_checkpoint(store, 1, stage(tmp_path, "s1", {"w.bin": b"one"}), {})
    commit_checkpoint(store, 2, stage(tmp_path, "s2", {"w.bin": b"old two"}), {})

    class DiesOnUpload(LocalStore):
        def put_file(self, key: str, path: Path) -> None:
            raise OSError("killed")

    with pytest.raises(OSError, match="killed"):
        commit_checkpoint(DiesOnUpload(tmp_path / "store"), 2, stage(tmp_path, "s2b", {"w.bin": b"two"}), {})
    assert [c.step for c in list_checkpoints(store)] == [1]


def test_format_1_manifests_still_read(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_bytes(
        "checkpoints/step-000004/manifest.json",
        json.dumps({"format": 1, "step": 4, "created": 1.0, "files": [], "extra": {}}).encode(),
    )
    assert [(c.step, c.shared) for c in list_checkpoints(store)] == [(4, ())]


def test_prune_removes_manifest_files_and_unneeded_shards(tmp_path: Path):
    store = LocalStore(tmp_path / "store")
    shards = {}
    for step in (1, 2, 3):
        path = tmp_path / f"shard-{step}"
        path.write_bytes(b"rows %d" % step)
        store.put_file(f"pool/shard-{step}", path)
        shards[step] = FileEntry.of(f"pool/shard-{step}", path)
        commit_checkpoint(
            store, step, stage(tmp_path, f"s{step}", {"w.bin": b"%d" % step}), {}, [shards[step]]
        )
    assert prune_checkpoints(store, keep_last=1, keep_every=None) == [1, 2]
    assert store.list("") == [
        "checkpoints/step-000003/manifest.json",
        "checkpoints/step-000003/w.bin",
        "pool/shard-3",
    ]
    assert prune_checkpoints(store, keep_last=None, keep_every=None) == []
