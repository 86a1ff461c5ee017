"""Checkpoints as atomic commits: files first, ``manifest.json`` last (DESIGN.md §4).

A checkpoint is ``checkpoints/step-NNNNNN/`` in the run's store. Its manifest lists every file with
size and SHA-256, and is written after all of them; a checkpoint without a manifest does not exist,
so a crash at any point of a save leaves the previous committed state as the latest one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opensir.storage import ArtifactStore, sha256_file

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CorruptCheckpointError(RuntimeError):
    """A committed checkpoint's files do not match its manifest."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint, as its manifest records it."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint."""

    step: int
    prefix: str
    """Key prefix in the store, ``checkpoints/step-NNNNNN``."""
    files: tuple[FileEntry, ...]
    created: float
    """Commit time (seconds since the epoch)."""
    extra: dict[str, Any]
    """Small metadata the runner keeps with the checkpoint (pool size and the like)."""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "step": self.step,
                "created": self.created,
                "files": [vars(f) for f in self.files],
                "extra": self.extra,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, prefix: str, data: bytes) -> Checkpoint:
        raw = json.loads(data)
        return cls(
            step=int(raw["step"]),
            prefix=prefix,
            files=tuple(FileEntry(**f) for f in raw["files"]),
            created=float(raw["created"]),
            extra=dict(raw.get("extra", {})),
        )


def checkpoint_prefix(step: int) -> str:
    return f"{CHECKPOINTS}/step-{step:06d}"


def commit_checkpoint(store: ArtifactStore, step: int, staged: Path, extra: dict[str, Any]) -> Checkpoint:
    """Upload every file under the local directory ``staged`` and commit them as step ``step``."""
    prefix = checkpoint_prefix(step)
    entries = []
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        relative = path.relative_to(staged).as_posix()
        store.put_file(f"{prefix}/{relative}", path)
        entries.append(FileEntry(relative, path.stat().st_size, sha256_file(path)))
    checkpoint = Checkpoint(step, prefix, tuple(entries), time.time(), extra)
    store.put_bytes(f"{prefix}/{MANIFEST}", checkpoint.to_json())
    return checkpoint


def list_checkpoints(store: ArtifactStore) -> list[Checkpoint]:
    """Committed checkpoints, oldest first. Directories without a readable manifest are not checkpoints."""
    found = []
    for key in store.list(CHECKPOINTS):
        if not key.endswith(f"/{MANIFEST}"):
            continue
        prefix = key.removesuffix(f"/{MANIFEST}")
        try:
            found.append(Checkpoint.from_json(prefix, store.get_bytes(key)))
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignoring %s: unreadable manifest (%s)", key, error)
    return sorted(found, key=lambda c: c.step)


def fetch_checkpoint(store: ArtifactStore, checkpoint: Checkpoint, destination: Path) -> Path:
    """Download a checkpoint's files into ``destination`` and verify them against the manifest."""
    for entry in checkpoint.files:
        local = destination / entry.path
        store.get_file(f"{checkpoint.prefix}/{entry.path}", local)
        size = local.stat().st_size
        if size != entry.size or sha256_file(local) != entry.sha256:
            raise CorruptCheckpointError(
                f"{store.uri}/{checkpoint.prefix}/{entry.path}: content does not match the manifest "
                f"(size {size}, expected {entry.size})"
            )
    return destination


def fetch_latest_valid(store: ArtifactStore, destination: Path) -> Checkpoint | None:
    """The newest checkpoint whose files verify, downloaded into ``destination``; corrupt ones are skipped."""
    for checkpoint in reversed(list_checkpoints(store)):
        target = destination / checkpoint.prefix.rsplit("/", 1)[-1]
        try:
            fetch_checkpoint(store, checkpoint, target)
        except (CorruptCheckpointError, FileNotFoundError) as error:
            log.warning("skipping checkpoint at step %d: %s", checkpoint.step, error)
            continue
        return checkpoint
    return None
