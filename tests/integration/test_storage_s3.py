"""The S3 store against a real S3 protocol server (moto on 127.0.0.1) through the minio client: layout,
multipart uploads, checkpoint save/list/retain/restore, corruption, retries and unreachable endpoints."""

from __future__ import annotations

import io
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from s3_testing import CREDENTIALS, REGION, client, make_bucket, moto_s3, store

from opensir.checkpoint import (
    FileEntry,
    commit_checkpoint,
    fetch_latest_valid,
    list_checkpoints,
    prune_checkpoints,
)
from opensir.spec import StorageSpec
from opensir.storage import ArtifactNotFoundError, RetryPolicy, S3Store, StorageError, open_store

pytestmark = pytest.mark.integration
BUCKET = "opensir-test"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3() as address:
        make_bucket(address, BUCKET)
        yield address


@pytest.fixture
def prefix(request) -> str:
    return f"runs/{request.node.name}"


def stage(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def closed_port() -> int:
    """A port nothing listens on: bound by us, then released (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """RetryPolicy.sleep that records the waits instead of taking them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class FlakyHTTP(urllib3.PoolManager):
    """urllib3 that answers normally except for the requests numbered in ``failing`` (from 0), which
    fail as a dropped connection would."""

    def __init__(self, failing: set[int] | range) -> None:
        super().__init__(retries=False)
        self.failing = failing
        self.requests = 0

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        number, self.requests = self.requests, self.requests + 1
        if number in self.failing:
            raise urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        return super().urlopen(method, url, redirect=redirect, **kw)


def test_open_store_puts_a_run_under_bucket_prefix_namespace_run(endpoint, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    spec = StorageSpec(
        uri=f"s3://{BUCKET}/team/runs", endpoint=f"http://{endpoint}", region=REGION, partSizeMib=5
    )
    s3 = open_store(spec, "research", "run-7")
    assert isinstance(s3, S3Store) and s3.uri == f"s3://{BUCKET}/team/runs/research/run-7"
    s3.put_bytes("progress.json", b"{}")
    raw = client(endpoint).get_object(BUCKET, "team/runs/research/run-7/progress.json")
    assert raw.read() == b"{}"
    assert s3.list("") == ["progress.json"]


def test_objects_round_trip_and_large_files_stream_in_parts(endpoint, prefix, tmp_path):
    s3 = store(endpoint, BUCKET, prefix)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom((11 << 20) + 5))  # three 5 MiB parts
    s3.put_file("a/big.bin", big)
    s3.put_bytes("a/small.json", b"{}")
    s3.put_bytes("ab/other", b"not under a/")
    assert client(endpoint).stat_object(BUCKET, f"{prefix}/a/big.bin").etag.endswith("-3"), "not multipart"
    assert s3.list("a") == ["a/big.bin", "a/small.json"]
    s3.get_file("a/big.bin", tmp_path / "back" / "big.bin")
    assert (tmp_path / "back" / "big.bin").read_bytes() == big.read_bytes()
    assert s3.exists("a/small.json") and not s3.exists("a/missing")
    with pytest.raises(ArtifactNotFoundError, match=f"s3://{BUCKET}/{prefix}/a/missing does not exist"):
        s3.get_bytes("a/missing")
    s3.delete("a")
    assert s3.list("") == ["ab/other"]


def test_checkpoints_save_list_retain_and_restore(endpoint, prefix, tmp_path):
    s3 = store(endpoint, BUCKET, prefix)
    shards: dict[int, FileEntry] = {}
    for step in range(1, 6):
        shard = tmp_path / f"shard-{step}"
        shard.write_bytes(os.urandom(1000 + step))
        shards[step] = FileEntry.of(f"pool/shard-{step}", shard)
        s3.put_file(shards[step].path, shard)
        if step == 4:  # what a save killed before its manifest leaves behind
            s3.put_bytes("checkpoints/step-000003/trainer/partial.bin", b"half")
        files = {"trainer/model.safetensors": os.urandom(6 << 20), "runner.json": b'{"step": %d}' % step}
        staged = stage(tmp_path / f"step-{step}", files)
        # The pool evicts: a checkpoint needs only its three newest shards.
        needed = [shards[s] for s in range(max(1, step - 2), step + 1)]
        commit_checkpoint(s3, step, staged, {"pool_size": step}, needed)
        prune_checkpoints(s3, keep_last=1, keep_every=4)

    assert [c.step for c in list_checkpoints(s3)] == [4, 5]
    assert not s3.list("checkpoints/step-000003"), "the uncommitted directory is garbage-collected"
    assert s3.list("pool") == [f"pool/shard-{s}" for s in (2, 3, 4, 5)], "shard 1 is needed by no checkpoint"
    restored = fetch_latest_valid(s3, tmp_path / "restore")
    assert restored is not None and restored.step == 5 and restored.extra == {"pool_size": 5}
    local = tmp_path / "restore" / "step-000005"
    assert (local / "trainer" / "model.safetensors").read_bytes() == (
        tmp_path / "step-5" / "trainer" / "model.safetensors"
    ).read_bytes()
    assert (local / "pool" / "shard-3").read_bytes() == (tmp_path / "shard-3").read_bytes()


def test_a_corrupted_object_is_detected_and_the_checkpoint_skipped(endpoint, prefix, tmp_path, caplog):
    s3 = store(endpoint, BUCKET, prefix)
    raw = client(endpoint)
    shard = tmp_path / "shard"
    shard.write_bytes(b"pool rows")
    s3.put_file("pool/shard-1", shard)
    shared = [FileEntry.of("pool/shard-1", shard)]
    for step in (1, 2, 3):
        commit_checkpoint(s3, step, stage(tmp_path / f"s{step}", {"w.bin": b"weights %d" % step}), {}, shared)
    data = b"weights 3 but rotten"
    raw.put_object(BUCKET, f"{prefix}/checkpoints/step-000003/w.bin", io.BytesIO(data), len(data))
    with caplog.at_level(logging.WARNING):
        chosen = fetch_latest_valid(s3, tmp_path / "restore")
    assert chosen is not None and chosen.step == 2
    assert "skipping checkpoint at step 3" in caplog.text
    assert f"s3://{BUCKET}/{prefix}/checkpoints/step-000003/w.bin" in caplog.text
    assert not (tmp_path / "restore" / "step-000003").exists(), "the rejected download is removed"

    # A shared object that rots invalidates every checkpoint that needs it.
    raw.put_object(BUCKET, f"{prefix}/pool/shard-1", io.BytesIO(b"pool rowz"), 9)
    assert fetch_latest_valid(s3, tmp_path / "again") is None


def test_an_unreachable_endpoint_is_retried_with_backoff_then_fails_naming_bucket_and_key(tmp_path):
    waits = Recorder()
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=0.25, sleep=waits, random=lambda: 1.0)
    s3 = store(f"127.0.0.1:{closed_port()}", BUCKET, "team/run", retry=policy)
    with pytest.raises(StorageError) as failure:
        s3.put_bytes("progress.json", b"{}")
    message = str(failure.value)
    assert f"upload s3://{BUCKET}/team/run/progress.json failed after 4 attempts" in message
    assert "Connection refused" in message
    assert waits.waits == [0.1, 0.2, 0.25], "exponential, capped"
    with pytest.raises(StorageError, match="failed after 4 attempts"):
        commit_checkpoint(s3, 1, stage(tmp_path / "s", {"w.bin": b"w"}), {})


def test_losing_the_endpoint_mid_commit_leaves_no_partial_commit(endpoint, prefix, tmp_path):
    good = store(endpoint, BUCKET, prefix)
    commit_checkpoint(good, 1, stage(tmp_path / "s1", {"w.bin": b"one", "big.bin": os.urandom(6 << 20)}), {})
    for lost_after in (2, 4, 6):  # requests of the second commit that still get through
        waits = Recorder()
        # The first commit's requests were on another client; count from this one's first request.
        flaky = FlakyHTTP(failing=range(lost_after, 10_000))
        s3 = store(endpoint, BUCKET, prefix, retry=RetryPolicy(attempts=3, sleep=waits), http=flaky)
        files = {"w.bin": b"two", "big.bin": os.urandom(6 << 20), "x.json": b"{}"}
        with pytest.raises(
            StorageError, match=f"s3://{BUCKET}/{prefix}/checkpoints/step-000002/.* failed after 3"
        ):
            commit_checkpoint(s3, 2, stage(tmp_path / f"s2-{lost_after}", files), {})
        assert len(waits.waits) == 2
        assert [c.step for c in list_checkpoints(good)] == [1]
        restored = fetch_latest_valid(good, tmp_path / f"restore-{lost_after}")
        assert restored is not None and restored.step == 1


def test_transient_failures_are_retried_and_permanent_ones_are_not(endpoint, prefix):
    waits = Recorder()
    s3 = store(endpoint, BUCKET, prefix, retry=RetryPolicy(attempts=3, sleep=waits), http=FlakyHTTP({0, 1}))
    s3.put_bytes("k", b"v")  # two dropped connections, then through
    assert len(waits.waits) == 2 and s3.get_bytes("k") == b"v"

    waits = Recorder()
    missing = store(endpoint, "no-such-bucket", "p", retry=RetryPolicy(attempts=5, sleep=waits))
    with pytest.raises(StorageError, match=r"upload s3://no-such-bucket/p/k failed: NoSuchBucket"):
        missing.put_bytes("k", b"v")
    assert waits.waits == [], "a permanent error is not retried"
