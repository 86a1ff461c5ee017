"""The S3 store's configuration without a server: credentials, URIs, endpoints, retry policy and
which failures count as transient (the server tests are tests/integration/test_storage_s3.py)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import urllib3
from minio.error import InvalidResponseError, S3Error, ServerError

from opensir.checkpoint import checkpoints_to_keep
from opensir.spec import StorageSpec, parse_run
from opensir.storage import (
    CREDENTIALS_DIR_ENV,
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
