"""The artifact store of one run: ``<storage.uri>/<namespace>/<run>/`` (DESIGN.md §4).

Keys are ``/``-separated paths under the run's prefix (``checkpoints/step-000025/manifest.json``).
Every write is atomic per object: a reader sees the whole old object or the whole new one, never a
torn file. Multi-object commits (checkpoints, pool shards) build on that by writing their manifest
last (:mod:`opensir.checkpoint`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

from opensir.spec import StorageSpec


class ArtifactNotFoundError(FileNotFoundError):
    """The key does not exist in the store."""


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


def open_store(storage: StorageSpec, namespace: str, run_name: str) -> ArtifactStore:
    """The store of run ``namespace/run_name`` as the spec's ``storage`` section describes it."""
    if storage.uri.startswith("file://"):
        return LocalStore(Path(storage.uri.removeprefix("file://")) / namespace / run_name)
    raise NotImplementedError(
        f"storage.uri {storage.uri!r}: the S3 backend is not available in this version; use file://"
    )


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
