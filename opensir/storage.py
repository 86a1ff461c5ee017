"""The artifact store of one run: ``<storage.uri>/<namespace>/<run>/`` (DESIGN.md §4).

Keys are ``/``-separated paths under the run's prefix (``checkpoints/step-000025/manifest.json``).
Every write is atomic per object: a reader sees the whole old object or the whole new one, never a
torn file. Multi-object commits (checkpoints, pool shards) build on that by writing their manifest
last (:mod:`opensir.checkpoint`).

Two backends behind :class:`ArtifactStore`: :class:`LocalStore` (a directory; temporary name, fsync,
rename) and :class:`S3Store` (S3-compatible storage through the ``minio`` client, the ``s3`` extra:
``s3://bucket/prefix`` holds a run under ``<prefix>/<namespace>/<run>/``). S3 requests are retried
on transient failures only (:func:`is_transient`, :class:`RetryPolicy`); every failure that reaches
the caller is a :class:`StorageError` naming bucket, key and cause. Credentials come from the
environment or a mounted Secret (:func:`s3_credentials`), never from the spec.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from opensir.errors import OpensirError
from opensir.spec import StorageSpec

if TYPE_CHECKING:
    from minio import Minio

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class ArtifactNotFoundError(FileNotFoundError):
    """The key does not exist in the store."""


class StorageError(OpensirError, OSError):
    """A store request failed for good (a permanent error, or a transient one that outlived its retries).

    The message names the bucket (or directory), the key and the cause. It is an :class:`OSError` so
    that callers that treat any I/O failure alike (the operator reading ``progress.json``) need not
    know which backend the run uses.
    """


@runtime_checkable
class ArtifactStore(Protocol):
    """Objects of one run, addressed by key."""

    @property
    def uri(self) -> str:
        """URI of the run's prefix, for people and for the status."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key`` atomically."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Copy the local file ``path`` to ``key`` atomically."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read ``key``; raises :class:`ArtifactNotFoundError` when it is absent."""
        ...

    def get_file(self, key: str, path: Path) -> None:
        """Copy ``key`` to the local file ``path``."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, sorted."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        ...

    def delete(self, prefix: str) -> None:
        """Remove every key under ``prefix``."""
        ...


class LocalStore:
    """A run's artifacts in a local directory (laptops, tests, a shared filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise ValueError(f"key {key!r} leaves the run directory {self.root}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A unique temporary name in the same directory, fsynced, then renamed: the object appears
        # whole or not at all, even when the process is killed mid-write.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle, open(path, "rb") as source:
                shutil.copyfileobj(source, handle, length=8 << 20)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"{self.uri}/{key} does not exist") from None

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ArtifactNotFoundError(f"{self.uri}/{key} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        keys = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        ]
        return sorted(keys)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, prefix: str) -> None:
        target = self._path(prefix)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- S3
CREDENTIALS_DIR_ENV = "OPENSIR_S3_CREDENTIALS_DIR"
"""Names a directory of credential files (a mounted Secret); see :func:`s3_credentials`."""

TRANSIENT_S3_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "OperationAborted",
        "XMinioServerNotInitialized",
    }
)
"""S3 error codes that say "the server could not do it now", not "the request is wrong". Every other code
(AccessDenied, NoSuchBucket, InvalidAccessKeyId, ...) is permanent: repeating the request cannot help."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of transient failures with exponential backoff and full jitter.

    After failed attempt ``i`` (from 0) the store waits ``uniform(0, min(max_delay, base_delay * 2**i))``:
    full jitter keeps the pods that lost the same endpoint from coming back in lockstep. ``sleep`` and
    ``random`` are seams for tests, which record the waits instead of taking them.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    random: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based)."""
        return self.random() * min(self.max_delay, self.base_delay * 2**attempt)


def is_transient(error: BaseException) -> bool:
    """Whether a failed S3 request may succeed when repeated.

    Transient: the connection could not be made, timed out or broke mid-response (urllib3's
    ``TimeoutError`` family, which includes refused connections and DNS failures, and
    ``ProtocolError``); a 5xx answer without an S3 error body (``ServerError``, or a proxy's non-XML
    page); and the S3 codes in :data:`TRANSIENT_S3_CODES`. Everything else, TLS failures included, is
    permanent.
    """
    from minio.error import InvalidResponseError, S3Error, ServerError
    from urllib3.exceptions import ProtocolError
    from urllib3.exceptions import TimeoutError as ConnectionTimeoutError

    if isinstance(error, S3Error):
        return error.code in TRANSIENT_S3_CODES
    if isinstance(error, ServerError):
        return error.status_code >= 500
    if isinstance(error, InvalidResponseError):
        # The status is only kept in a private attribute (it is also what the error pickles).
        return int(getattr(error, "_code", 0) or 0) >= 500
    return isinstance(error, ConnectionTimeoutError | ProtocolError)


@dataclass(frozen=True)
class S3Credentials:
    """Static S3 credentials; the repr leaves the secrets out so that they never reach a log."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


_CREDENTIAL_FILES = {
    "access_key": ("access-key", "AWS_ACCESS_KEY_ID"),
    "secret_key": ("secret-key", "AWS_SECRET_ACCESS_KEY"),
    "session_token": ("session-token", "AWS_SESSION_TOKEN"),
}


def s3_credentials(environ: Mapping[str, str] = os.environ) -> S3Credentials | None:
    """S3 credentials from the process environment, never from the spec.

    When ``$OPENSIR_S3_CREDENTIALS_DIR`` is set it wins: a directory (a mounted Secret) with files
    ``access-key`` and ``secret-key`` (optionally ``session-token``), or the same under the Secret's
    key names ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``). Otherwise the
    variables ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``). None when
    neither is set: requests go unsigned, which only a public bucket accepts.
    """
    directory = environ.get(CREDENTIALS_DIR_ENV)
    if directory:
        found: dict[str, str | None] = {}
        for name, candidates in _CREDENTIAL_FILES.items():
            path = next((Path(directory) / c for c in candidates if (Path(directory) / c).is_file()), None)
            found[name] = None if path is None else path.read_text().strip()
        missing = [_CREDENTIAL_FILES[n][0] for n in ("access_key", "secret_key") if not found[n]]
        if missing:
            raise StorageError(
                f"${CREDENTIALS_DIR_ENV}={directory} lacks {' and '.join(missing)} (or the key names "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        return S3Credentials(str(found["access_key"]), str(found["secret_key"]), found["session_token"])
    access, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        return S3Credentials(access, secret, environ.get("AWS_SESSION_TOKEN") or None)
    if access or secret:
        raise StorageError("only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; S3 needs both")
    return None


MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = 5 << 30


class S3Store:
    """A run's artifacts in an S3-compatible bucket (AWS S3, MinIO), as ``<bucket>/<prefix>/<key>``.

    An S3 object is atomic by itself: a PUT, and a multipart upload once completed, replaces the whole
    object, and an interrupted multipart upload never becomes visible (a bucket lifecycle rule
    ``AbortIncompleteMultipartUpload`` reclaims its parts). So writes need no temporary names. Files
    larger than ``part_size`` stream in parts, ``parallel_uploads`` at a time, without being read into
    memory. Every request goes through :attr:`retry`; see :func:`is_transient` for what is retried.
    """

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str,
        *,
        part_size: int = 64 << 20,
        parallel_uploads: int = 3,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between 5 MiB and 5 GiB (S3 limits), got {part_size}")
        if parallel_uploads < 1:
            raise ValueError(f"parallel_uploads must be at least 1, got {parallel_uploads}")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.parallel_uploads = parallel_uploads
        self.retry = retry or RetryPolicy()

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _object(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix and key else self.prefix or key

    def _call(self, action: str, key: str, request: Callable[[], _T]) -> _T:
        """Run one S3 request with retries; failures become errors that name bucket, key and cause."""
        from minio.error import S3Error

        where = f"s3://{self.bucket}/{self._object(key)}"
        for attempt in range(self.retry.attempts):
            try:
                return request()
            except Exception as error:  # classified right here: not-found, transient or permanent
                if isinstance(error, S3Error) and error.code in ("NoSuchKey", "NotFound"):
                    raise ArtifactNotFoundError(f"{where} does not exist") from error
                if not is_transient(error):
                    raise StorageError(f"S3 {action} {where} failed: {_describe(error)}") from error
                if attempt + 1 == self.retry.attempts:
                    raise StorageError(
                        f"S3 {action} {where} failed after {self.retry.attempts} attempts; last error: "
                        f"{_describe(error)}"
                    ) from error
                delay = self.retry.delay(attempt)
                log.warning(
                    "%s %s: %s; retrying in %.2fs (attempt %d of %d)",
                    action,
                    where,
                    _describe(error),
                    delay,
                    attempt + 2,
                    self.retry.attempts,
                )
                self.retry.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def put_bytes(self, key: str, data: bytes) -> None:
        name = self._object(key)
        self._call(
            "upload",
            key,
            lambda: self.client.put_object(
                self.bucket, name, io.BytesIO(data), len(data), part_size=self.part_size
            ),
        )

    def put_file(self, key: str, path: Path) -> None:
        name = self._object(key)
        self._call(
            "upload",
            key,
            lambda: self.client.fput_object(
                self.bucket,
                name,
                str(path),
                part_size=self.part_size,
                num_parallel_uploads=self.parallel_uploads,
            ),
        )

    def get_bytes(self, key: str) -> bytes:
        name = self._object(key)

        def read() -> bytes:
            response = self.client.get_object(self.bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("download", key, read)

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        name = self._object(key)
        # fget_object writes a temporary file next to ``path`` and renames it when complete.
        self._call("download", key, lambda: self.client.fget_object(self.bucket, name, str(path)))

    def list(self, prefix: str) -> list[str]:
        base = self._object(prefix)
        start = f"{base}/" if base else ""
        names = self._call(
            "list",
            start,
            lambda: [
                str(o.object_name)
                for o in self.client.list_objects(self.bucket, prefix=start, recursive=True)
            ],
        )
        strip = f"{self.prefix}/" if self.prefix else ""
        return sorted(name.removeprefix(strip) for name in names)

    def exists(self, key: str) -> bool:
        name = self._object(key)
        try:
            self._call("stat", key, lambda: self.client.stat_object(self.bucket, name))
        except ArtifactNotFoundError:
            return False
        return True

    def delete(self, prefix: str) -> None:
        from minio.deleteobjects import DeleteObject

        keys = self.list(prefix)
        if prefix.strip("/"):
            keys.append(prefix.strip("/"))  # the key itself, when ``prefix`` names one object
        names = [self._object(k) for k in keys]
        if not names:
            return
        errors = self._call(
            "delete",
            prefix,
            lambda: list(self.client.remove_objects(self.bucket, [DeleteObject(n) for n in names])),
        )
        if errors:
            shown = "; ".join(f"{e.name}: {e.code} {e.message}" for e in errors[:5])
            raise StorageError(f"delete under s3://{self.bucket}/{self._object(prefix)} failed: {shown}")


def _describe(error: BaseException) -> str:
    from minio.error import S3Error

    if isinstance(error, S3Error):
        return f"{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``."""
    parsed = urlsplit(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"storage.uri {uri!r} must look like s3://BUCKET or s3://BUCKET/PREFIX")
    return parsed.netloc, parsed.path.strip("/")


def _endpoint(storage: StorageSpec) -> tuple[str, bool]:
    """Host:port and TLS of the S3 endpoint; a URL's scheme, when given, decides TLS."""
    if storage.endpoint is None:
        return "s3.amazonaws.com", storage.secure
    parsed = urlsplit(storage.endpoint if "://" in storage.endpoint else f"//{storage.endpoint}")
    if parsed.scheme not in ("", "http", "https") or parsed.path.strip("/") or not parsed.netloc:
        raise ValueError(f"storage.endpoint {storage.endpoint!r} must be HOST:PORT or http(s)://HOST:PORT")
    return parsed.netloc, storage.secure if not parsed.scheme else parsed.scheme == "https"


def _open_s3_store(storage: StorageSpec, namespace: str, run_name: str) -> S3Store:
    try:
        import certifi
        import urllib3
        from minio import Minio
    except ImportError as error:
        raise StorageError(
            f"storage.uri {storage.uri!r} needs the S3 client: pip install 'opensir[s3]' ({error})"
        ) from error
    bucket, prefix = parse_s3_uri(storage.uri)
    endpoint, secure = _endpoint(storage)
    credentials = s3_credentials()
    if credentials is None:
        log.info("no S3 credentials in the environment or $%s: requests go unsigned", CREDENTIALS_DIR_ENV)
    # Our own HTTP client with urllib3's retries off: RetryPolicy is the only retry layer, so the
    # number of attempts is what the spec says, and failures reach us unwrapped for classification.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=120),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=False,
    )
    client = Minio(
        endpoint,
        access_key=credentials.access_key if credentials else None,
        secret_key=credentials.secret_key if credentials else None,
        session_token=credentials.session_token if credentials else None,
        secure=secure,
        region=storage.region,
        http_client=http,
    )
    run_prefix = "/".join(part for part in (prefix, namespace, run_name) if part)
    return S3Store(
        client,
        bucket,
        run_prefix,
        part_size=storage.part_size_mib << 20,
        retry=RetryPolicy(attempts=storage.request_attempts),
    )


def open_store(storage: StorageSpec, namespace: str, run_name: str) -> ArtifactStore:
    """The store of run ``namespace/run_name`` as the spec's ``storage`` section describes it.

    Opening contacts nothing: an unreachable endpoint or a missing bucket shows on the first request,
    as a :class:`StorageError` that names the bucket and key.
    """
    if storage.uri.startswith("file://"):
        return LocalStore(Path(storage.uri.removeprefix("file://")) / namespace / run_name)
    if storage.uri.startswith("s3://"):
        return _open_s3_store(storage, namespace, run_name)
    raise ValueError(f"storage.uri {storage.uri!r} must start with file:// or s3://")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
