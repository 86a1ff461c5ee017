"""The S3 store's configuration without a server: credentials, URIs, endpoints, retry policy and
which failures count as transient (the server tests are tests/integration/test_storage_s3.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from unittest import mock

import pytest
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from opensir.checkpoint import checkpoints_to_keep
from opensir.spec import StorageSpec, parse_run
from opensir.storage import (
    CREDENTIALS_DIR_ENV,
    ArtifactNotFoundError,
    LocalStore,
    RetryPolicy,
    S3Credentials,
    S3Store,
    StorageError,
    is_transient,
    open_store,
    parse_s3_uri,
    s3_credentials,
)


def s3_error(code: str) -> S3Error:
    return S3Error(mock.Mock(), code, "message", "/bucket/key", "request", "host", "bucket", "key")


def test_credentials_come_from_the_environment_and_never_show_in_a_repr():
    creds = s3_credentials({"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert creds == S3Credentials("AKIA1", "s3cr3t", None)
    assert "s3cr3t" not in repr(creds)
    assert s3_credentials({}) is None
    with pytest.raises(StorageError, match="only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        s3_credentials({"AWS_ACCESS_KEY_ID": "AKIA1"})


@pytest.mark.parametrize(
    "names",
    [
        ("access-key", "secret-key", "session-token"),
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    ],
)
def test_a_mounted_secret_directory_wins_over_the_environment(tmp_path: Path, names):
    for name, value in zip(names, ("from-file\n", "file-secret\n", "token\n"), strict=True):
        (tmp_path / name).write_text(value)
    environ = {CREDENTIALS_DIR_ENV: str(tmp_path), "AWS_ACCESS_KEY_ID": "env", "AWS_SECRET_ACCESS_KEY": "env"}
    assert s3_credentials(environ) == S3Credentials("from-file", "file-secret", "token")


def test_a_secret_directory_without_the_keys_is_a_clear_error(tmp_path: Path):
    (tmp_path / "access-key").write_text("only this")
    with pytest.raises(StorageError, match=rf"{CREDENTIALS_DIR_ENV}={tmp_path} lacks secret-key"):
        s3_credentials({CREDENTIALS_DIR_ENV: str(tmp_path)})


def test_s3_uris_and_endpoints(monkeypatch):
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="s3://BUCKET"):
        parse_s3_uri("s3:///nobucket")
    monkeypatch.delenv(CREDENTIALS_DIR_ENV, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    # Opening contacts nothing; the layout is <bucket>/<prefix>/<namespace>/<run>.
    store = open_store(StorageSpec(uri="s3://bkt/pre", endpoint="http://minio:9000"), "ns", "run")
    assert isinstance(store, S3Store) and store.uri == "s3://bkt/pre/ns/run" and store.prefix == "pre/ns/run"
    assert store.client._base_url.host == "minio:9000" and not store.client._base_url.is_https
    assert open_store(
        StorageSpec(uri="s3://bkt", endpoint="minio:9000"), "ns", "run"
    ).client._base_url.is_https
    assert store.part_size == 64 << 20 and store.retry.attempts == 5
    with pytest.raises(ValueError, match="HOST:PORT"):
        open_store(StorageSpec(uri="s3://bkt", endpoint="ftp://minio"), "ns", "run")


def test_the_spec_bounds_part_size_and_attempts():
    spec = StorageSpec(uri="s3://b/p", partSizeMib=5, requestAttempts=2)
    assert spec.part_size_mib == 5 and spec.request_attempts == 2
    with pytest.raises(ValueError):
        StorageSpec(uri="s3://b/p", partSizeMib=4)


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(attempts=6, base_delay=0.5, max_delay=3.0, random=lambda: 1.0)
    assert [policy.delay(i) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy(base_delay=0.5, random=lambda: 0.25).delay(2) == 0.5
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (urllib3.exceptions.NewConnectionError(mock.Mock(), "refused"), True),
        (urllib3.exceptions.ConnectTimeoutError("connect timed out"), True),
        (urllib3.exceptions.ReadTimeoutError(mock.Mock(), "/", "read timed out"), True),
        (urllib3.exceptions.ProtocolError("Connection aborted."), True),
        (urllib3.exceptions.SSLError("certificate verify failed"), False),
        (ServerError("server failed with HTTP status code 503", 503), True),
        (InvalidResponseError(502, "text/html", "<html>Bad Gateway</html>"), True),
        (InvalidResponseError(403, "text/html", "<html>Forbidden</html>"), False),
        (s3_error("SlowDown"), True),
        (s3_error("InternalError"), True),
        (s3_error("AccessDenied"), False),
        (s3_error("NoSuchBucket"), False),
        (ValueError("invalid object name"), False),
    ],
)
def test_what_counts_as_transient(error: BaseException, transient: bool):
    assert is_transient(error) is transient


class Requests:
    """An S3 request that raises ``errors`` one per call, then returns ``"ok"``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def offline_store(attempts: int, waits: list[float]) -> S3Store:
    """A store whose requests are the test's own functions (``_call``): no client is ever asked."""
    retry = RetryPolicy(
        attempts=attempts, base_delay=0.1, max_delay=0.25, sleep=waits.append, random=lambda: 1.0
    )
    return S3Store(mock.Mock(), "bkt", "team/run", retry=retry)


def test_s3_requests_retry_transient_failures_and_log_each_wait(caplog):
    waits: list[float] = []
    dropped = urllib3.exceptions.ProtocolError("Connection aborted.")
    request = Requests(dropped, s3_error("SlowDown"))
    with caplog.at_level(logging.WARNING, logger="opensir.storage"):
        assert offline_store(4, waits)._call("upload", "progress.json", request) == "ok"
    assert request.calls == 3 and waits == [0.1, 0.2]
    assert [r.getMessage() for r in caplog.records] == [
        "upload s3://bkt/team/run/progress.json: ProtocolError: Connection aborted.; retrying in 0.10s "
        "(attempt 2 of 4)",
        "upload s3://bkt/team/run/progress.json: SlowDown: message; retrying in 0.20s (attempt 3 of 4)",
    ]


def test_s3_requests_that_keep_failing_name_bucket_key_and_the_last_cause():
    waits: list[float] = []
    last = urllib3.exceptions.ProtocolError("reset")
    request = Requests(s3_error("InternalError"), s3_error("InternalError"), last)
    with pytest.raises(StorageError) as raised:
        offline_store(3, waits)._call("download", "pool/shard-1", request)
    assert str(raised.value) == (
        "S3 download s3://bkt/team/run/pool/shard-1 failed after 3 attempts; last error: ProtocolError: reset"
    )
    assert raised.value.__cause__ is last and waits == [0.1, 0.2]


def test_s3_permanent_failures_and_missing_keys_are_not_retried():
    waits: list[float] = []
    with pytest.raises(StorageError, match=r"^S3 upload s3://bkt/team/run/k failed: AccessDenied: message$"):
        offline_store(5, waits)._call("upload", "k", Requests(s3_error("AccessDenied")))
    with pytest.raises(ArtifactNotFoundError, match="s3://bkt/team/run/k does not exist"):
        offline_store(5, waits)._call("download", "k", Requests(s3_error("NoSuchKey")))
    assert waits == []


def test_the_local_stores_objects_stay_private_and_temporaries_unlisted(tmp_path: Path):
    store = LocalStore(tmp_path)
    store.put_bytes("a/progress.json", b"{}")
    source = tmp_path / "source.bin"
    source.write_bytes(b"weights")
    store.put_file("a/w.bin", source)
    (tmp_path / "a" / ".w.bin.0123abcd.tmp").write_bytes(b"a writer killed mid-write")
    assert store.list("a") == ["a/progress.json", "a/w.bin"]
    assert {(tmp_path / k).stat().st_mode & 0o777 for k in store.list("a")} == {0o600}


def test_retention_keeps_the_last_k_and_every_nth():
    steps = [5, 10, 15, 20, 25, 30]
    assert checkpoints_to_keep(steps, None, None) == set(steps)
    assert checkpoints_to_keep(steps, 2, None) == {25, 30}
    assert checkpoints_to_keep(steps, 1, 10) == {10, 20, 30}


def test_the_spec_has_keep_every():
    run = parse_run(
        {
            "apiVersion": "opensir.io/v1alpha1",
            "kind": "SelfPlayRun",
            "metadata": {"name": "r"},
            "spec": {"model": {"name": "m"}, "training": {"keepCheckpoints": 2, "keepEvery": 50}},
        }
    )
    assert run.spec.training.keep_every == 50
