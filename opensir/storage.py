"""The artifact store of one run: ``<storage.uri>/<namespace>/<run>/`` (DESIGN.md §4).

Keys are ``/``-separated paths under the run's prefix (``checkpoints/step-000025/manifest.json``).
Every write is atomic per object: a reader sees the whole old object or the whole new one, never a
torn file. Multi-object commits (checkpoints, pool shards) build on that by writing their manifest
last (:mod:`opensir.checkpoint`).

Two backends behind :class:`ArtifactStore`: :class:`LocalStore` (a directory; temporary name, fsync,
rename: :mod:`opensir.files`) and :class:`S3Store` (S3-compatible storage through the ``minio``
client, the ``s3`` extra: ``s3://bucket/prefix`` holds a run under ``<prefix>/<namespace>/<run>/``).
S3 requests are retried on transient failures only (:func:`is_transient`, with
:class:`~opensir.retry.RetryPolicy`); every failure that reaches the caller is a
:class:`StorageError` naming bucket, key and cause. Credentials come from the environment or a
mounted Secret (:func:`s3_credentials`), never from the spec.

One function maps a URI to its backend: :func:`open_store_uri` opens a run's store from the run's
own URI (what :attr:`ArtifactStore.uri` reports); :func:`open_store` (a run of a spec), the rollout
servers (:mod:`opensir.engines.vllm_worker`) and the CLI go through it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from opensir.errors import OpensirError
from opensir.files import TEMPORARY_SUFFIX, copy_atomic, write_atomic
from opensir.retry import RetriesExhaustedError, RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from minio import Minio

    # Only for annotations: the rollout servers open stores through this module without the spec.
    from opensir.spec import StorageSpec

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
        # The object appears whole or not at all, even when the process is killed mid-write. Private
        # to the user, as the store's objects have always been.
        write_atomic(target, data, mode=_OBJECT_MODE)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_atomic(path, target, mode=_OBJECT_MODE)

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
            if p.is_file() and not p.name.endswith(TEMPORARY_SUFFIX)
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


_OBJECT_MODE = 0o600
"""Permission bits (before the umask) of a local store's objects."""


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
    memory. Every request goes through :attr:`retry` (default: 5 attempts, full jitter from 0.5 s
    doubling up to 30 s); see :func:`is_transient` for what is retried.
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
        try:
            return call_with_retries(
                request,
                policy=self.retry,
                transient=is_transient,
                what=f"{action} {where}",
                explain=_describe,
                logger=log,
            )
        except RetriesExhaustedError as failure:
            raise StorageError(
                f"S3 {action} {where} failed after {failure.attempts} attempts; last error: {failure.cause}"
            ) from failure.last_error
        except Exception as error:  # permanent: the retries pass it on unchanged, to be named here
            if isinstance(error, S3Error) and error.code in ("NoSuchKey", "NotFound"):
                raise ArtifactNotFoundError(f"{where} does not exist") from error
            raise StorageError(f"S3 {action} {where} failed: {_describe(error)}") from error

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


def _describe(error: Exception) -> str:
    from minio.error import S3Error

    if isinstance(error, S3Error):
        return f"{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


class StoreURIError(OpensirError, ValueError):
    """A URI that names no store: an unknown scheme, or an S3 URI without a bucket (or, for a run's
    store, without its namespace and run)."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``."""
    parsed = urlsplit(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreURIError(f"storage.uri {uri!r} must look like s3://BUCKET or s3://BUCKET/PREFIX")
    return parsed.netloc, parsed.path.strip("/")


class StoreOptions(TypedDict, total=False):
    """How to reach an S3 store beyond its URI: the connection settings of a spec's ``storage``
    section, as the keyword arguments of :func:`open_store_uri`. Plain JSON values, so that the
    trainer can hand them to the rollout servers."""

    endpoint: str | None
    region: str | None
    secure: bool
    part_size_mib: int
    request_attempts: int


def store_options(storage: StorageSpec) -> StoreOptions:
    """The connection settings of the ``storage`` section (see :class:`StoreOptions`)."""
    return StoreOptions(
        endpoint=storage.endpoint,
        region=storage.region,
        secure=storage.secure,
        part_size_mib=storage.part_size_mib,
        request_attempts=storage.request_attempts,
    )


def run_uri(root: str, namespace: str, run_name: str) -> str:
    """The URI of run ``namespace/run_name`` under the storage root ``root`` (a spec's ``storage.uri``):
    ``<root>/<namespace>/<run_name>``."""
    return f"{root}{'' if root.endswith('/') else '/'}{namespace}/{run_name}"


def open_store_uri(
    uri: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    secure: bool = True,
    part_size_mib: int = 64,
    request_attempts: int = 5,
) -> ArtifactStore:
    """The store of one run from the run's URI, as :attr:`ArtifactStore.uri` reports it.

    - A directory, or ``file://DIR``: a :class:`LocalStore` there (created when missing).
    - ``s3://BUCKET[/PREFIX]/NAMESPACE/RUN``: an :class:`S3Store` (needs ``opensir[s3]``) on
      ``endpoint`` (``HOST:PORT`` or ``http(s)://HOST:PORT``, whose scheme then decides TLS instead of
      ``secure``; None is AWS) in ``region`` (None asks the server), uploading files larger than
      ``part_size_mib`` MiB in parts of that size and making ``request_attempts`` attempts per
      request. Credentials come from the environment (:func:`s3_credentials`), never from here.

    The defaults are those of the spec's ``storage`` section; :func:`store_options` gives a spec's
    settings. Opening contacts nothing: an unreachable endpoint or a missing bucket shows on the
    first request, as a :class:`StorageError` that names the bucket and key. Another scheme, or an S3
    URI without bucket, namespace and run, raises :class:`StoreURIError`.
    """
    scheme, separator, rest = uri.partition("://")
    if not separator:
        return LocalStore(Path(uri))
    if scheme == "file":
        return LocalStore(Path(rest))
    if scheme == "s3":
        bucket, path = parse_s3_uri(uri)
        parts = [part for part in path.split("/") if part]
        if len(parts) < 2:
            raise StoreURIError(f"{uri}: an S3 run URI looks like s3://BUCKET[/PREFIX]/NAMESPACE/RUN")
        return _open_s3_store(
            uri,
            bucket,
            "/".join(parts),
            endpoint=endpoint,
            region=region,
            secure=secure,
            part_size=part_size_mib << 20,
            attempts=request_attempts,
        )
    raise StoreURIError(f"store URI {uri!r} must be a directory, file://DIR or s3://BUCKET/...")


def open_store(storage: StorageSpec, namespace: str, run_name: str) -> ArtifactStore:
    """The store of run ``namespace/run_name`` as the spec's ``storage`` section describes it
    (:func:`open_store_uri` of :func:`run_uri`)."""
    return open_store_uri(run_uri(storage.uri, namespace, run_name), **store_options(storage))


def _endpoint(endpoint: str | None, secure: bool) -> tuple[str, bool]:
    """Host:port and TLS of the S3 endpoint; a URL's scheme, when given, decides TLS."""
    if endpoint is None:
        return "s3.amazonaws.com", secure
    parsed = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parsed.scheme not in ("", "http", "https") or parsed.path.strip("/") or not parsed.netloc:
        raise ValueError(f"storage.endpoint {endpoint!r} must be HOST:PORT or http(s)://HOST:PORT")
    return parsed.netloc, secure if not parsed.scheme else parsed.scheme == "https"


def _open_s3_store(
    uri: str,
    bucket: str,
    prefix: str,
    *,
    endpoint: str | None,
    region: str | None,
    secure: bool,
    part_size: int,
    attempts: int,
) -> S3Store:
    try:
        import certifi
        import urllib3
        from minio import Minio
    except ImportError as error:
        raise StorageError(
            f"store {uri!r} needs the S3 client: pip install 'opensir[s3]' ({error})"
        ) from error
    host, tls = _endpoint(endpoint, secure)
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
        host,
        access_key=credentials.access_key if credentials else None,
        secret_key=credentials.secret_key if credentials else None,
        session_token=credentials.session_token if credentials else None,
        secure=tls,
        region=region,
        http_client=http,
    )
    return S3Store(client, bucket, prefix, part_size=part_size, retry=RetryPolicy(attempts=attempts))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
