"""The one map from a storage URI to its backend (opensir.storage.open_store_uri), as open_store, the
trainer's RunStore and the rollout servers' fetch (opensir.engines.vllm_worker) use it. Opening contacts
nothing, so S3 stores are checked by their configuration, without a server."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from opensir.errors import OpensirError
from opensir.spec import StorageSpec
from opensir.storage import (
    CREDENTIALS_DIR_ENV,
    LocalStore,
    S3Store,
    StoreURIError,
    open_store,
    open_store_uri,
    run_uri,
    store_options,
)


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CREDENTIALS_DIR_ENV, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")


def test_a_directory_or_file_uri_is_a_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    plain = open_store_uri(str(tmp_path / "ns" / "run"))
    assert isinstance(plain, LocalStore) and plain.root == tmp_path / "ns" / "run" and plain.root.is_dir()
    assert open_store_uri(f"file://{tmp_path}/ns/run").uri == plain.uri
    monkeypatch.chdir(tmp_path)
    relative = open_store_uri("file://./runs/ns/run")
    assert isinstance(relative, LocalStore) and relative.root == tmp_path / "runs" / "ns" / "run"


def test_an_s3_run_uri_is_an_s3_store_with_the_settings_given():
    store = open_store_uri(
        "s3://bkt/team/runs/ns/run", endpoint="http://minio:9000", part_size_mib=5, request_attempts=2
    )
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == ("bkt", "team/runs/ns/run", "s3://bkt/team/runs/ns/run")
    assert store.client._base_url.host == "minio:9000" and not store.client._base_url.is_https
    assert store.part_size == 5 << 20 and store.retry.attempts == 2
    assert open_store_uri("s3://bkt/ns/run", endpoint="minio:9000").client._base_url.is_https


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://bkt/run", "an S3 run URI looks like s3://BUCKET"),
        ("s3://bkt", "an S3 run URI looks like s3://BUCKET"),
        ("s3:///ns/run", "must look like s3://BUCKET"),
        ("gs://bkt/ns/run", "must be a directory, file://DIR or s3://"),
    ],
)
def test_uris_that_name_no_run_store_are_refused(uri: str, message: str):
    with pytest.raises(StoreURIError, match=message) as raised:
        open_store_uri(uri)
    # A ValueError, as a bad URI always was, and an OpensirError, which the CLI prints without traceback.
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, OpensirError)


def test_every_store_reopens_from_its_own_uri(tmp_path: Path):
    for store in (open_store_uri(str(tmp_path / "ns" / "r")), open_store_uri("s3://bkt/p/ns/r")):
        assert open_store_uri(store.uri).uri == store.uri


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("s3://bkt/pre", "s3://bkt/pre/ns/run"),
        ("s3://bkt/", "s3://bkt/ns/run"),
        ("file://./runs", "file://./runs/ns/run"),
        ("file:///", "file:///ns/run"),
    ],
)
def test_a_runs_uri_is_its_namespace_and_name_under_the_root(root: str, expected: str):
    assert run_uri(root, "ns", "run") == expected


def test_open_store_is_open_store_uri_of_the_runs_uri(tmp_path: Path):
    spec = StorageSpec(
        uri="s3://bkt/pre", endpoint="minio:9000", secure=False, partSizeMib=8, requestAttempts=3
    )
    store = open_store(spec, "ns", "run")
    again = open_store_uri("s3://bkt/pre/ns/run", **store_options(spec))
    assert isinstance(store, S3Store) and isinstance(again, S3Store)
    assert (store.uri, store.part_size, store.retry.attempts) == (again.uri, 8 << 20, 3)
    assert not store.client._base_url.is_https and not again.client._base_url.is_https
    local = open_store(StorageSpec(uri=f"file://{tmp_path}"), "ns", "run")
    assert isinstance(local, LocalStore) and local.root == tmp_path / "ns" / "run"


def test_the_defaults_are_the_storage_sections():
    defaults = {
        name: p.default
        for name, p in inspect.signature(open_store_uri).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    assert defaults == dict(store_options(StorageSpec()))


def test_a_rollout_server_opens_the_trainers_s3_store_from_the_source():
    from opensir.engines.server_sync import RunStore

    run_store = RunStore(StorageSpec(uri="s3://bkt/pre", endpoint="minio:9000", partSizeMib=16), "ns", "run")
    store = run_store.open()
    source = json.loads(json.dumps(run_store.source(store, "weights/v000001")))  # as the RPC carries it
    assert source == {
        "uri": "s3://bkt/pre/ns/run",
        "options": {
            "endpoint": "minio:9000",
            "region": None,
            "secure": True,
            "part_size_mib": 16,
            "request_attempts": 5,
        },
        "key": "weights/v000001",
    }
    served = open_store_uri(source["uri"], **source["options"])
    assert isinstance(served, S3Store) and served.uri == store.uri and served.part_size == 16 << 20


def test_a_rollout_server_downloads_a_stores_files_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from opensir.engines import vllm_worker
    from opensir.engines.server_sync import RunStore

    monkeypatch.setattr(vllm_worker, "FETCH_ROOT", tmp_path / "fetch")
    run_store = RunStore(StorageSpec(uri=f"file://{tmp_path}/store"), "ns", "run")
    store = run_store.open()
    in_place = run_store.source(store, "adapters/v1")
    assert in_place == {"path": str(store.root / "adapters/v1")}, "a local store is read in place"
    for version in ("v1", "v2", "v3"):
        store.put_bytes(f"adapters/{version}/adapter.bin", version.encode())
        store.put_bytes(f"adapters/{version}/sub/config.json", b"{}")
    # A store the server does not see in place (the S3 case) is downloaded, here from its file:// URI.
    for version in ("v1", "v2", "v3"):
        source = {"uri": store.uri, "options": {}, "key": f"adapters/{version}"}
        directory = vllm_worker.fetch(source, 0, keep=2)
        assert (directory / "adapter.bin").read_bytes() == version.encode()
        assert (directory / "sub" / "config.json").is_file()
    assert directory.parent.parent == tmp_path / "fetch" / "rank0" / str(store.root).strip("/")
    assert sorted(p.name for p in directory.parent.iterdir()) == ["v2", "v3"], "the newest two are kept"
    with pytest.raises(FileNotFoundError, match="holds no files"):
        vllm_worker.fetch({"uri": store.uri, "options": {}, "key": "adapters/v9"}, 0)
    assert not any(p.name.endswith(".partial") for p in directory.parent.iterdir())
