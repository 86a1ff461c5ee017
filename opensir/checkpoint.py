"""Checkpoints as atomic commits: files first, ``manifest.json`` last (DESIGN.md §4).

A checkpoint is ``checkpoints/step-NNNNNN/`` in the run's store. Its manifest lists every file with
size and SHA-256 and is written after all of them; a checkpoint without a manifest does not exist, so
a crash at any point of a save leaves the previous committed state as the latest one.

A manifest may also list *shared* objects: run-level keys outside its prefix that earlier saves
uploaded and several checkpoints need, such as the pool's shards (``pool/shard-…``). This is what
makes pool persistence incremental: a save uploads only the new shard, and its manifest names every
shard the pool at that step consists of. Like a checkpoint's own files, a shared object is part of
the committed state only through a manifest that names it, and it is verified on every restore.

Retention (:func:`prune_checkpoints`) removes a checkpoint's manifest before its files, so an
interrupted prune leaves an uncommitted directory (garbage, removed by the next prune), never a
manifest that names deleted files.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opensir.errors import OpensirError
from opensir.layout import CHECKPOINTS, MANIFEST, checkpoint_prefix, step_of
from opensir.storage import ArtifactStore, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""2 added ``shared``; format 1 manifests read as having no shared objects."""


class CorruptCheckpointError(OpensirError, RuntimeError):
    """A committed checkpoint's files do not match its manifest."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint, as its manifest records it."""

    path: str
    """Relative to the checkpoint's prefix (own files) or to the run's root (shared objects)."""
    size: int
    sha256: str

    @classmethod
    def of(cls, path: str, local: Path) -> FileEntry:
        """The entry for a local file that is (or will be) stored under ``path``."""
        return cls(path, local.stat().st_size, sha256_file(local))


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
    shared: tuple[FileEntry, ...] = ()
    """Run-level objects this checkpoint needs besides its own files (the pool's shards)."""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "step": self.step,
                "created": self.created,
                "files": [vars(f) for f in self.files],
                "shared": [vars(f) for f in self.shared],
                "extra": self.extra,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, prefix: str, data: bytes) -> Checkpoint:
        raw = json.loads(data)
        if int(raw.get("format", 1)) > FORMAT_VERSION:
            raise ValueError(f"manifest format {raw['format']} is newer than this version ({FORMAT_VERSION})")
        return cls(
            step=int(raw["step"]),
            prefix=prefix,
            files=tuple(FileEntry(**f) for f in raw["files"]),
            created=float(raw["created"]),
            extra=dict(raw.get("extra", {})),
            shared=tuple(FileEntry(**f) for f in raw.get("shared", [])),
        )


def commit_checkpoint(
    store: ArtifactStore,
    step: int,
    staged: Path,
    extra: dict[str, Any],
    shared: Sequence[FileEntry] = (),
) -> Checkpoint:
    """Upload every file under the local directory ``staged`` and commit them as step ``step``.

    ``shared`` lists run-level objects the caller has already uploaded (see the module docstring);
    they are recorded, not uploaded. A manifest already at this step (left by an abandoned timeline,
    e.g. one whose newer checkpoint failed its checksum) is removed first, so no reader ever pairs it
    with the files being replaced.
    """
    prefix = checkpoint_prefix(step)
    files = sorted(p for p in staged.rglob("*") if p.is_file())
    relatives = {p.relative_to(staged).as_posix() for p in files}
    clashes = sorted(relatives & {entry.path for entry in shared})
    if clashes:
        raise ValueError(f"staged files would shadow shared objects when fetched: {clashes}")
    store.delete(f"{prefix}/{MANIFEST}")
    entries = []
    for path in files:
        relative = path.relative_to(staged).as_posix()
        entry = FileEntry.of(relative, path)  # hashed before the upload: what we meant to write
        store.put_file(f"{prefix}/{relative}", path)
        entries.append(entry)
    checkpoint = Checkpoint(step, prefix, tuple(entries), time.time(), extra, tuple(shared))
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
            log.warning("ignoring %s/%s: unreadable manifest (%s)", store.uri, key, error)
    return sorted(found, key=lambda c: c.step)


def fetch_checkpoint(store: ArtifactStore, checkpoint: Checkpoint, destination: Path) -> Path:
    """Download a checkpoint's files, and its shared objects under their run-level keys, into
    ``destination``, and verify every one against the manifest."""
    wanted = [(f"{checkpoint.prefix}/{e.path}", e) for e in checkpoint.files]
    wanted += [(e.path, e) for e in checkpoint.shared]
    for key, entry in wanted:
        local = destination / entry.path
        store.get_file(key, local)
        size = local.stat().st_size
        if size != entry.size or sha256_file(local) != entry.sha256:
            raise CorruptCheckpointError(
                f"{store.uri}/{key}: content does not match the manifest of step {checkpoint.step} "
                f"(size {size}, expected {entry.size})"
            )
    return destination


def fetch_latest_valid(store: ArtifactStore, destination: Path) -> Checkpoint | None:
    """The newest checkpoint whose files verify, downloaded into ``destination/step-NNNNNN``.

    A checkpoint with a missing or corrupt file is skipped with a warning naming it, for the one
    before it. Store failures (an unreachable endpoint) are not "corrupt": they propagate, since
    falling back to an older checkpoint, or to step 0, would silently throw work away.
    """
    for checkpoint in reversed(list_checkpoints(store)):
        target = destination / checkpoint.prefix.rsplit("/", 1)[-1]
        try:
            fetch_checkpoint(store, checkpoint, target)
        except (CorruptCheckpointError, FileNotFoundError) as error:
            log.warning(
                "skipping checkpoint at step %d (%s/%s): %s",
                checkpoint.step,
                store.uri,
                checkpoint.prefix,
                error,
            )
            shutil.rmtree(target, ignore_errors=True)
            continue
        return checkpoint
    return None


def checkpoints_to_keep(steps: Sequence[int], keep_last: int | None, keep_every: int | None) -> set[int]:
    """Which of the committed ``steps`` retention keeps: the newest ``keep_last`` (all when None) and
    every multiple of ``keep_every``. The newest one is always kept."""
    ordered = sorted(steps)
    if keep_last is None:
        return set(ordered)
    keep = set(ordered[-max(keep_last, 1) :])
    if keep_every is not None:
        keep |= {s for s in ordered if s % keep_every == 0}
    return keep


def prune_checkpoints(store: ArtifactStore, keep_last: int | None, keep_every: int | None) -> list[int]:
    """Apply retention; returns the steps removed.

    Also removes what no remaining manifest needs: directories of saves that never committed (older
    than the newest commit, so never one in progress) and shared objects under the prefixes that the
    remaining manifests use (pool shards of evicted problems, shards of saves that never committed).
    Call it only from the run's single writer, after a commit.
    """
    committed = list_checkpoints(store)
    if not committed:
        return []
    keep = checkpoints_to_keep([c.step for c in committed], keep_last, keep_every)
    removed = []
    for checkpoint in committed:
        if checkpoint.step not in keep:
            store.delete(f"{checkpoint.prefix}/{MANIFEST}")  # uncommit first, then the files
            store.delete(checkpoint.prefix)
            removed.append(checkpoint.step)
    kept = [c for c in committed if c.step in keep]
    newest = kept[-1].step
    committed_prefixes = {c.prefix for c in committed}
    for key in store.list(CHECKPOINTS):
        prefix = "/".join(key.split("/")[:2])
        step = step_of(prefix)
        if prefix not in committed_prefixes and step is not None and step < newest:
            store.delete(prefix)
            committed_prefixes.add(prefix)  # once per directory
    needed = {e.path for c in kept for e in c.shared}
    for shared_prefix in sorted({p.split("/", 1)[0] for p in needed if "/" in p}):
        for key in store.list(shared_prefix):
            if key not in needed:
                store.delete(key)
    if removed:
        log.info("retention removed checkpoints at steps %s from %s", removed, store.uri)
    return removed
