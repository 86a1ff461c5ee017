"""A small checkpoint writer for tests/integration/test_checkpoint_faults.py; run as a script.

It behaves like the runner's save path on a synthetic checkpoint of a few MB: resume from the latest
valid checkpoint (checking that its bytes are exactly what was written for that step), then for each
next step upload a new shared "pool shard", commit the step's files (one multipart-sized "model",
small "optimizer", "rng", "runner.json" and pool state) and apply retention.

Kill injection is deterministic: every mutating S3 request (PUT, POST, DELETE) gets an index, and
``--kill before:I``, ``--kill after:I`` or ``--kill mid:I:BYTES`` SIGKILLs the process before request
I is sent, after its response arrives, or after BYTES of its body went out. ``--trace FILE`` records
the requests (one JSON line each) so the test can choose points. ``--log FILE`` gets ``begin N``,
``committed N`` and ``restored N`` lines, flushed to disk before the next request.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import urllib3
from s3_testing import store as s3_store

from opensir.checkpoint import (
    FileEntry,
    commit_checkpoint,
    fetch_latest_valid,
    prune_checkpoints,
)

MULTIPART_STEP = 2
"""The step whose "model" is large enough for a multipart upload (two parts at the 5 MiB minimum);
the others stay small so that the many trials stay fast."""
SHARD_BYTES = 64 << 10


def step_files(step: int) -> dict[str, bytes]:
    """The checkpoint's own files at ``step``: deterministic bytes, different at every step."""
    rng = random.Random(step)
    model_bytes = (6 << 20) + 123 if step == MULTIPART_STEP else 512 << 10
    return {
        "trainer/model/model.safetensors": rng.randbytes(model_bytes),
        "trainer/optimizer.pt": rng.randbytes(256 << 10),
        "trainer/rng.pt": rng.randbytes(4096),
        "runner.json": json.dumps({"step": step}).encode(),
        f"pool/state-{step:012d}.json": json.dumps({"shards": step}).encode(),
    }


def shard(step: int) -> tuple[str, bytes]:
    return f"pool/shard-{step:06d}.bin", random.Random(-step).randbytes(SHARD_BYTES)


class KillingPoolManager(urllib3.PoolManager):
    """urllib3 with a SIGKILL at a chosen request (and byte) and a trace of the mutating requests."""

    def __init__(self, kill: str | None, trace: Path | None) -> None:
        super().__init__(retries=False, timeout=urllib3.Timeout(connect=5, read=60))
        parts = kill.split(":") if kill else []
        self.when = parts[0] if parts else None
        self.index = int(parts[1]) if parts else -1
        self.at_byte = int(parts[2]) if len(parts) > 2 else 0
        self.trace = trace
        self.count = 0

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        if method not in ("PUT", "POST", "DELETE"):
            return super().urlopen(method, url, redirect=redirect, **kw)
        index, self.count = self.count, self.count + 1
        body = kw.get("body") or b""
        if self.trace:
            with open(self.trace, "a") as handle:
                handle.write(
                    json.dumps({"i": index, "method": method, "url": url, "bytes": len(body)}) + "\n"
                )
        if index == self.index and self.when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        if index == self.index and self.when == "mid":
            kw["body"] = _dying_body(bytes(body), self.at_byte)
        response = super().urlopen(method, url, redirect=redirect, **kw)
        if index == self.index and self.when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return response


def _dying_body(body: bytes, at: int) -> Iterator[bytes]:
    """Sends ``body[:at]`` (the request's Content-Length stays the full size), then dies."""
    yield body[:at]
    os.kill(os.getpid(), signal.SIGKILL)
    yield body[at:]  # never reached


def note(log: Path, line: str) -> None:
    with open(log, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("bucket")
    parser.add_argument("prefix")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--kill")
    parser.add_argument("--trace", type=Path)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    store = s3_store(
        args.endpoint,
        args.bucket,
        args.prefix,
        http=KillingPoolManager(args.kill, args.trace),
        parallel_uploads=1,
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        restored = fetch_latest_valid(store, work / "restore")
        shared: list[FileEntry] = []
        if restored is not None:
            local = work / "restore" / restored.prefix.rsplit("/", 1)[-1]
            expected = {**step_files(restored.step), **dict(shard(s) for s in range(1, restored.step + 1))}
            found = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
            if found != expected:
                print(f"restored step {restored.step} differs from what was written", file=sys.stderr)
                return 1
            shared = list(restored.shared)
            note(args.log, f"restored {restored.step}")
        for step in range((restored.step if restored else 0) + 1, args.steps + 1):
            note(args.log, f"begin {step}")
            key, data = shard(step)
            (work / "shard").write_bytes(data)
            store.put_file(key, work / "shard")
            shared.append(FileEntry.of(key, work / "shard"))
            staged = work / f"step-{step}"
            for relative, content in step_files(step).items():
                (staged / relative).parent.mkdir(parents=True, exist_ok=True)
                (staged / relative).write_bytes(content)
            commit_checkpoint(store, step, staged, {"step": step}, shared)
            note(args.log, f"committed {step}")
            prune_checkpoints(store, keep_last=1, keep_every=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
