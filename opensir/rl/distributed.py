"""Process groups for multi-process training, and moving checkpoint files between ranks.

Training with several processes (DeepSpeed ZeRO) is launched by the standard launchers (``torchrun``,
the ``deepspeed`` launcher, the operator's indexed Job), which describe the group in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Without a launcher the
process is a group of one. Gloo is the backend on CPU and NCCL on GPUs.

Checkpoints are written into a directory that only rank 0 is sure to see (the runner stages them in
its own scratch space before committing them to the store). :func:`shared_directory` tells whether
every rank sees the same directory (one node, or a shared volume); where they do not, the files a
rank writes are shipped to rank 0 (:func:`gather_files`) and, on load, from rank 0 to every rank
(:func:`broadcast_files`).
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

_TOKEN_FILE = ".opensir-rank0-token"

TIMEOUT = timedelta(hours=12)
"""How long a collective operation may wait: the follower ranks wait in one while rank 0 plays a
round (or bootstraps the pool), which on a CPU or with large groups can take hours."""


def launched_world_size() -> int:
    """Processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's global rank as the launcher set it (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def init_process_group(device: torch.device, timeout: timedelta = TIMEOUT) -> None:
    """Join the launcher's process group through DeepSpeed (gloo on CPU, NCCL on CUDA).

    Without a launcher the environment of a one-process group on a free local port is filled in, so
    a plain ``python`` process trains with DeepSpeed too. Idempotent.
    """
    import deepspeed

    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.update(
            {
                "RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port()),
            }
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout)


def shutdown() -> None:
    """Leave the process group once every rank is done (a no-op without one).

    Exiting with the group still up lets gloo's threads be torn down by the interpreter's exit,
    which now and then aborts the process ("terminate called without an active exception") after
    all its work was done, failing the launch.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    """Global rank in the initialised group (0 when there is none)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the initialised group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every rank (pickled; the others pass anything)."""
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shared_directory(directory: Path) -> bool:
    """Whether every rank sees rank 0's ``directory`` (which rank 0 creates). Collective."""
    if world_size() == 1:
        return True
    token = secrets.token_hex(16) if rank() == 0 else ""
    if rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _TOKEN_FILE).write_text(token)
    token = str(broadcast_object(token))
    marker = directory / _TOKEN_FILE
    sees = torch.tensor([1 if marker.is_file() and marker.read_text() == token else 0])
    dist.all_reduce(sees, op=dist.ReduceOp.MIN)
    dist.barrier()
    if rank() == 0:
        marker.unlink()
    return bool(sees.item())


def gather_files(local: Path, destination: Path) -> None:
    """Every rank's files under ``local`` land under rank 0's ``destination`` (same relative paths).

    Collective; files are pickled through the process group, so the whole of one rank's share is
    held in memory at once on rank 0.
    """
    files = _read_tree(local) if rank() != 0 else {}
    gathered: list[dict[str, bytes] | None] = [None] * world_size()
    dist.gather_object(files, gathered if rank() == 0 else None, dst=0)
    if rank() == 0:
        for share in gathered[1:]:
            _write_tree(destination, share or {})


def broadcast_files(source: Path | None, destination: Path) -> None:
    """Rank 0's files under ``source`` written under every other rank's ``destination``. Collective."""
    files = _read_tree(source) if rank() == 0 and source is not None else {}
    files = broadcast_object(files)  # type: ignore[assignment]
    if rank() != 0:
        _write_tree(destination, files)


def _read_tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != _TOKEN_FILE
    }


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
