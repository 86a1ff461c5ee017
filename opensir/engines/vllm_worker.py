"""vLLM worker extension: receive full weights from the trainer over a torch.distributed group.

Loaded inside every vLLM worker by ``--worker-extension-cls
opensir.engines.vllm_worker.OpensirWorkerExtension`` (vLLM mixes the class into its ``Worker``), and
called through the server's ``POST /collective_rpc`` route (``VLLM_SERVER_DEV_MODE=1``). That route
passes only strings, so every argument is one JSON document. This module imports only the standard
library, torch and :mod:`opensir.files` (standard library only) at import time, and opensir's
storage when it fetches from S3, because it runs in the server's environment, where opensir is
installed without its dependencies (``scripts/install_vllm.sh``; the runtime image has them all).
See :mod:`opensir.engines.vllm_server` for the whole weight-update protocol.

Broadcast protocol (the trainer side is :class:`opensir.engines.server_sync.BroadcastWeightSync`):

- ``opensir_init_broadcast(json)`` with ``{"host", "port", "world_size", "rank_offset", "backend",
  "group", "timeout_s"}``: the trainer hosts a ``TCPStore`` at host:port and is rank 0; worker ``r``
  joins as rank ``rank_offset + r``. The group is built directly on the store
  (``ProcessGroupGloo`` on CPU, ``ProcessGroupNCCL`` on GPU), never through
  ``init_process_group``, so it cannot collide with vLLM's own default group.
- ``opensir_receive_broadcast(json)`` with ``{"params": [[name, dtype, shape], ...]}``: for each
  parameter in that order the trainer broadcasts one tensor from rank 0; the worker receives it and
  streams it into vLLM's in-place reload (``Worker.reload_weights``), which takes Hugging Face
  checkpoint names and re-runs each layer's post-load processing. Returns the number of tensors.
- ``opensir_close_broadcast()``: drop the group.

Weights and adapters that the trainer publishes in the run's artifact store are fetched by
``opensir_reload_weights(source=JSON)`` (full weights, reloaded in place) and ``opensir_fetch(JSON)``
(a LoRA adapter's directory, which ``/v1/load_lora_adapter`` then loads); :func:`fetch` describes the
source. Reading an S3 store needs ``opensir[s3]`` and the store's credentials in the server's
environment, as the trainer has them.

Full reloads go through ``opensir_reload_weights`` rather than vLLM's bare ``reload_weights``: the
in-place reload gives the embedding a fresh parameter, and an output head tied to it
(``tie_word_embeddings``, as in SmolLM2 and Llama 3.2) would otherwise keep the old one, and on CPU
its prepacked GEMM too. Every reload here records which modules share a parameter before it, ties
them to the reloaded one after it and re-runs the followers' post-load processing.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from opensir.files import atomic_directory

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


class OpensirWorkerExtension:
    """Methods mixed into vLLM's worker; every name starts with ``opensir_`` to avoid clashes."""

    _opensir_group: Any = None
    _opensir_device: torch.device | None = None
    _opensir_store: Any = None
    """The trainer's TCPStore client: the group needs it alive as long as it is used."""

    def opensir_init_broadcast(self, payload: str) -> dict[str, Any]:
        """Join the trainer's broadcast group (see the module docstring)."""
        info = json.loads(payload)
        rank = int(info["rank_offset"]) + int(getattr(self, "rank", 0))
        world_size = int(info["world_size"])
        timeout = timedelta(seconds=float(info.get("timeout_s", 300)))
        store = dist.TCPStore(
            info["host"], int(info["port"]), world_size, is_master=False, timeout=timeout, use_libuv=False
        )
        prefixed = dist.PrefixStore(str(info.get("group", "opensir")), store)
        backend = info.get("backend", "gloo")
        if backend == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
        elif backend == "gloo":
            device = torch.device("cpu")
            group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
        else:
            raise ValueError(f"unknown broadcast backend {backend!r} (gloo or nccl)")
        # The first collective proves both sides are in the same group before any weights move.
        probe = torch.zeros(1, device=device)
        group.broadcast([probe]).wait()
        self._opensir_group, self._opensir_device, self._opensir_store = group, device, store
        return {"rank": rank, "probe": float(probe.item())}

    def opensir_receive_broadcast(self, payload: str) -> int:
        """Receive every parameter the trainer broadcasts and load them in place."""
        if self._opensir_group is None:
            raise RuntimeError("opensir_receive_broadcast before opensir_init_broadcast")
        params = json.loads(payload)["params"]
        received = 0

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal received
            for name, dtype, shape in params:
                tensor = torch.empty(tuple(shape), dtype=_DTYPES[dtype], device=self._opensir_device)
                self._opensir_group.broadcast([tensor]).wait()
                received += 1
                yield name, tensor

        weights = stream()
        self._opensir_reload(weights_iterator=weights, is_checkpoint_format=True)
        # A model that ignores some names (tied heads) still has to drain the stream, or the
        # trainer would block on its next broadcast.
        for _ in weights:
            pass
        return received

    def opensir_reload_weights(self, source: str) -> None:
        """Reload every weight in place from the safetensors files ``source`` names (see
        :func:`fetch`); a downloaded copy is removed once loaded."""
        where = json.loads(source)
        directory = fetch(where, int(getattr(self, "rank", 0)))
        try:
            self._opensir_reload(weights_path=str(directory), is_checkpoint_format=True)
        finally:
            if "path" not in where:
                _remove_download(directory)

    def opensir_fetch(self, source: str) -> str:
        """Make the files ``source`` names available on this server's disk (see :func:`fetch`);
        returns their directory (a LoRA adapter, loaded next by ``/v1/load_lora_adapter``)."""
        return str(fetch(json.loads(source), int(getattr(self, "rank", 0)), keep=2))

    def _opensir_reload(self, **kwargs: Any) -> None:
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        ties = _tied_parameters(model)
        self.reload_weights(**kwargs)  # type: ignore[attr-defined]
        for (leader, leader_name), followers in ties:
            for module, name in followers:
                setattr(module, name, leader._parameters[leader_name])
                # The follower kept kernel state derived from the old tensor (on CPU, the tied
                # head's prepacked oneDNN GEMM): derive it again from the reloaded one.
                method = getattr(module, "quant_method", None)
                if method is not None and hasattr(method, "process_weights_after_loading"):
                    method.process_weights_after_loading(module)

    def opensir_close_broadcast(self) -> None:
        """Forget the broadcast group (the trainer tears down its side itself)."""
        self._opensir_group = None
        self._opensir_store = None


FETCH_ROOT = Path(tempfile.gettempdir()) / "opensir-fetch"
"""Where artifacts downloaded from the run's store land on the server."""


def fetch(source: dict[str, Any], rank: int, *, keep: int | None = None) -> Path:
    """The local directory of the files ``source`` names.

    ``{"path": DIR}``: a directory the server sees already (a ``file://`` store on the same machine).
    ``{"uri": URI, "options": {...}, "key": KEY}``: every object under ``KEY`` of the run's store,
    opened by :func:`opensir.storage.open_store_uri` with the trainer's connection settings
    (``options``) and the S3 credentials of this pod's environment, downloaded to
    ``FETCH_ROOT/rank<N>/<bucket>/<prefix>/KEY``. A download completes under a temporary name first
    (:func:`opensir.files.atomic_directory`), so a directory that exists is whole. ``keep``: remove
    all but the newest ``keep`` downloads of the same parent key (older adapter versions).
    """
    if "path" in source:
        return Path(source["path"])
    from opensir.storage import open_store_uri

    store = open_store_uri(str(source["uri"]), **source.get("options", {}))
    key = str(source["key"]).strip("/")
    target = FETCH_ROOT / f"rank{rank}" / _local_name(store.uri) / key
    if target.is_dir():
        return target
    keys = store.list(key + "/")
    if not keys:
        raise FileNotFoundError(f"{store.uri}/{key}/ holds no files to load")
    with atomic_directory(target) as staging:
        for name in keys:
            store.get_file(name, staging / name.removeprefix(key + "/"))
    if keep is not None:
        versions = sorted(p for p in target.parent.iterdir() if p.is_dir() and not p.name.startswith("."))
        for stale in versions[:-keep]:
            _remove_download(stale)
    return target


def _remove_download(directory: Path) -> None:
    """Remove a download that is no longer needed. A failure is logged, not raised: a download left
    behind costs disk space, not correctness, and must not fail the reload that used it."""
    try:
        shutil.rmtree(directory)
    except OSError as error:
        log.warning("could not remove the download %s: %s", directory, error)


def _local_name(uri: str) -> Path:
    """A relative path for the downloads of the store at ``uri``: its bucket and prefix, so that two
    stores never share a directory."""
    parsed = urlsplit(uri)
    parts = [parsed.netloc, *parsed.path.split("/")]
    if any(part in (".", "..") for part in parts):
        raise ValueError(f"store URI {uri!r} has . or .. segments; it cannot name a download directory")
    return Path(*(part for part in parts if part))


_Slot = tuple[torch.nn.Module, str]


def _tied_parameters(model: torch.nn.Module) -> list[tuple[_Slot, list[_Slot]]]:
    """Each parameter held by more than one module: its first holder (in module order, the
    embedding before the head) and the others."""
    holders: dict[int, list[_Slot]] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for name, parameter in module._parameters.items():
            if parameter is not None:
                holders.setdefault(id(parameter), []).append((module, name))
    ties = []
    for slots in holders.values():
        unique = list({(id(m), n): (m, n) for m, n in slots}.values())
        if len(unique) > 1:
            ties.append((unique[0], unique[1:]))
    return ties
