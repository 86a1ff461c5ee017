"""Checkpoint benchmark: save and restore throughput of a SmolLM2-sized checkpoint to S3.

A synthetic checkpoint of ``--total-mib`` (default 540 MiB: a third "model" safetensors, two thirds
"optimizer" moments, plus the small runner and RNG files) is committed with
:func:`opensir.checkpoint.commit_checkpoint` (SHA-256 of every file, multipart uploads, manifest last)
and restored with :func:`opensir.checkpoint.fetch_checkpoint` (download, then verify every
checksum). Next to it, the same number of bytes as one file through a plain ``fput_object`` /
``fget_object`` with the client's defaults: the ceiling of what the S3 server and client can move,
so the ratio is what atomic, verified commits cost. The S3 server is moto's, in a child process on
127.0.0.1 (so that it does not share the benchmark's interpreter lock).

    .venv/bin/python benchmarks/checkpoint.py [--total-mib 540] [--repeats 3] [--part-size-mib 64]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

BUCKET = "opensir-bench"


def serve_moto(conn: Connection) -> None:
    """Child process: moto's S3 server on a free port until the parent says stop."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    conn.send(server.get_host_and_port()[1])
    conn.recv()
    server.stop()


def _write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left:
            chunk = min(left, 64 << 20)
            handle.write(os.urandom(chunk))
            left -= chunk


def _timed(fn: Callable[[], object], repeats: int, between: Callable[[], object]) -> float:
    """Median seconds of ``repeats`` runs; ``between`` resets state after each (not timed)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        between()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mib", type=int, default=540)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part-size-mib", type=int, default=64)
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(target=serve_moto, args=(child,), daemon=True)
    server.start()
    port = parent.recv()
    endpoint = f"127.0.0.1:{port}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")

    from opensir.checkpoint import commit_checkpoint, fetch_checkpoint, list_checkpoints
    from opensir.spec import StorageSpec
    from opensir.storage import S3Store, open_store

    spec = StorageSpec(
        uri=f"s3://{BUCKET}/bench",
        endpoint=f"http://{endpoint}",
        region="us-east-1",
        partSizeMib=args.part_size_mib,
    )
    store = open_store(spec, "default", "smollm2")
    assert isinstance(store, S3Store)
    client = store.client
    client.make_bucket(BUCKET)

    total = args.total_mib << 20
    with tempfile.TemporaryDirectory(prefix="opensir-bench-") as scratch:
        root = Path(scratch)
        staged = root / "staged"
        model = total // 3
        _write_random(staged / "trainer" / "model" / "model.safetensors", model)
        _write_random(staged / "trainer" / "optimizer.pt", total - model - 16384)
        _write_random(staged / "trainer" / "rng.pt", 12288)
        _write_random(staged / "runner.json", 4096)
        blob = root / "blob.bin"
        _write_random(blob, total)

        def save() -> None:
            commit_checkpoint(store, 1, staged, {})

        def clear() -> None:
            store.delete("checkpoints")
            client.remove_object(BUCKET, "baseline/blob.bin")

        def restore() -> None:
            fetch_checkpoint(store, list_checkpoints(store)[0], root / "restore")

        def clear_local() -> None:
            shutil.rmtree(root / "restore", ignore_errors=True)
            (root / "blob.back").unlink(missing_ok=True)

        ours_save = _timed(save, args.repeats, lambda: store.delete("checkpoints"))
        plain_save = _timed(
            lambda: client.fput_object(BUCKET, "baseline/blob.bin", str(blob)),
            args.repeats,
            lambda: client.remove_object(BUCKET, "baseline/blob.bin"),
        )
        save()
        client.fput_object(BUCKET, "baseline/blob.bin", str(blob))
        ours_restore = _timed(restore, args.repeats, clear_local)
        plain_restore = _timed(
            lambda: client.fget_object(BUCKET, "baseline/blob.bin", str(root / "blob.back")),
            args.repeats,
            clear_local,
        )
        clear()

    parent.send("stop")
    server.join(timeout=30)

    mib = total / (1 << 20)
    print(
        f"checkpoint {mib:.0f} MiB in 4 files; S3 = moto on {endpoint} (child process); "
        f"part size {args.part_size_mib} MiB; median of {args.repeats}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| operation | opensir (s) | opensir (MiB/s) | plain object (s) | plain (MiB/s) | opensir / plain |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, ours, plain in (("save", ours_save, plain_save), ("restore", ours_restore, plain_restore)):
        rates = f"{mib / ours:.0f} | {plain:.2f} | {mib / plain:.0f} | {plain / ours:.2f}"
        print(f"| {name} | {ours:.2f} | {rates} |")


if __name__ == "__main__":
    main()
