"""Fault injection: the checkpoint writer is SIGKILLed at many points of its uploads, then restarted.

The writer (checkpoint_fault_writer.py, a subprocess) writes three synthetic checkpoints (one with a
multipart upload; 8 MB in all) to S3 (moto on 127.0.0.1) with retention, as the runner does. Kill
points are deterministic: before a request, after its response, or halfway through its body, chosen
from a trace of a clean run so that they cover every kind of request (pool shard, manifest removal,
small files, multipart create/part/complete, manifest, retention deletes). After every kill:

- every checkpoint a reader can list verifies against its manifest (no torn commit is visible);
- the latest one is at least the last commit the writer saw succeed (nothing committed is lost) and
  at most the last one it began (nothing appears that was never written);
- the restarted writer resumes from exactly that checkpoint, finds its bytes as written, and
  finishes; retention and garbage collection leave only what the kept manifests name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from s3_testing import CREDENTIALS, make_bucket, moto_s3, store

from opensir.checkpoint import CorruptCheckpointError, fetch_checkpoint, list_checkpoints

pytestmark = pytest.mark.integration
BUCKET = "opensir-faults"
WRITER = Path(__file__).with_name("checkpoint_fault_writer.py")
STEPS = 3


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3() as address:
        make_bucket(address, BUCKET)
        yield address


def write(endpoint: str, prefix: str, log: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(WRITER),
        endpoint,
        BUCKET,
        prefix,
        "--steps",
        str(STEPS),
        "--log",
        str(log),
    ]
    return subprocess.run(
        [*command, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=WRITER.parent,
        env={"PATH": "/usr/bin:/bin", **CREDENTIALS},
        check=False,
    )


def kill_points(trace: list[dict]) -> list[str]:
    """Deterministic kill points over the whole run, covering every kind of request."""
    points = [f"before:{r['i']}" for r in trace[::4]]
    points += [f"mid:{r['i']}:{r['bytes'] // 2}" for r in trace if r["bytes"] >= 4096][::2]
    manifests = [r["i"] for r in trace if r["url"].endswith("/manifest.json")]
    completes = [r["i"] for r in trace if r["method"] == "POST" and "uploadId=" in r["url"]]
    deletes = [r["i"] for r in trace if "?delete" in r["url"] and r["i"] > manifests[0]]
    points += [f"after:{i}" for i in [*manifests, *completes, *deletes[-2:]]]
    return points


def verified_steps(endpoint: str, prefix: str, scratch: Path) -> list[int]:
    """Steps a reader sees as committed; each one must verify in full."""
    s3 = store(endpoint, BUCKET, prefix)
    committed = list_checkpoints(s3)
    for checkpoint in committed:
        fetch_checkpoint(s3, checkpoint, scratch / checkpoint.prefix)  # raises when torn or corrupt
    return [c.step for c in committed]


def last(log: Path, word: str) -> int:
    steps = [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith(word)]
    return max(steps, default=0)


def test_a_killed_writer_always_resumes_from_a_complete_checkpoint(endpoint: str, tmp_path: Path):
    trace_file = tmp_path / "trace.jsonl"
    clean = write(endpoint, "trace", tmp_path / "trace.log", "--trace", str(trace_file))
    assert clean.returncode == 0, clean.stderr
    trace = [json.loads(line) for line in trace_file.read_text().splitlines()]
    points = kill_points(trace)
    assert len(points) >= 20 and len(set(points)) == len(points)

    def trial(number: int, point: str) -> str | None:
        prefix, log, scratch = f"trial-{number}", tmp_path / f"trial-{number}.log", tmp_path / f"t{number}"
        killed = write(endpoint, prefix, log, "--kill", point)
        if killed.returncode != -9:
            return f"{point}: the writer was not killed (rc {killed.returncode}): {killed.stderr[-500:]}"
        try:
            seen = verified_steps(endpoint, prefix, scratch / "after-kill")
        except (CorruptCheckpointError, FileNotFoundError) as error:
            return f"{point}: a listed checkpoint does not verify: {error}"
        latest = seen[-1] if seen else 0
        if not last(log, "committed") <= latest <= last(log, "begin"):
            return f"{point}: latest {latest}, log {log.read_text().split()}"
        log.write_text("")
        resumed = write(endpoint, prefix, log)
        if resumed.returncode != 0:
            return f"{point}: the restart failed: {resumed.stderr[-1000:]}"
        if last(log, "restored") != latest:
            return f"{point}: restarted from {last(log, 'restored')}, expected {latest}"
        final = verified_steps(endpoint, prefix, scratch / "final")
        s3 = store(endpoint, BUCKET, prefix)
        if final != [2, 3] or s3.list("pool") != [f"pool/shard-{s:06d}.bin" for s in (1, 2, 3)]:
            return f"{point}: after the restart {final}, pool {s3.list('pool')}"
        return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f for f in pool.map(trial, range(len(points)), points) if f]
    assert not failures, "\n".join(failures)
