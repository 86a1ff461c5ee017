"""S3 for tests: moto's S3 server in a thread on 127.0.0.1 (a free port chosen by the OS), and stores on
it through the ``minio`` client (DESIGN.md §5). Imported by the S3 tests and by the fault-injection
writer script; not a test module."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import urllib3
from minio import Minio

from opensir.storage import RetryPolicy, S3Store

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "opensir-test", "AWS_SECRET_ACCESS_KEY": "opensir-test-secret"}


@contextmanager
def moto_s3() -> Iterator[str]:
    """An S3 protocol server for the duration of the block; yields its endpoint ``127.0.0.1:PORT``."""
    from moto.server import ThreadedMotoServer  # here: the writer subprocesses need only the client

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()  # returns once the socket is bound and serving
    try:
        host, port = server.get_host_and_port()
        yield f"{host}:{port}"
    finally:
        server.stop()


def client(endpoint: str, http: urllib3.PoolManager | None = None) -> Minio:
    """A minio client as the store makes it: urllib3's own retries off, so only RetryPolicy retries."""
    return Minio(
        endpoint,
        access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        secure=False,
        region=REGION,
        http_client=http or urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30)),
    )


def make_bucket(endpoint: str, bucket: str) -> None:
    s3 = client(endpoint)
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)


def store(
    endpoint: str,
    bucket: str,
    prefix: str,
    *,
    retry: RetryPolicy | None = None,
    http: urllib3.PoolManager | None = None,
    parallel_uploads: int = 3,
) -> S3Store:
    """A store with the smallest part size S3 allows, so that a few MB already go multipart."""
    return S3Store(
        client(endpoint, http),
        bucket,
        prefix,
        part_size=5 << 20,
        parallel_uploads=parallel_uploads,
        retry=retry or RetryPolicy(attempts=3, base_delay=0.0),
    )
