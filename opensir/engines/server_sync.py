"""Pushing the trainer's weights to the rollout servers (vLLM's OpenAI server), every replica of them.

Three ways, chosen by ``rollout.weightSync``:

- ``store`` (:class:`StoreWeightSync`): the full weights as safetensors in the run's artifact store
  (``weights/v<N>/``); each server fetches them (a ``file://`` store it reads in place, S3 it
  downloads) and reloads them in place.
- ``lora`` (:class:`LoRAWeightSync`): the trainer's peft adapter in the store (``adapters/v<N>/``);
  each server fetches it and loads it with vLLM's runtime LoRA loading; requests then name the new
  adapter (``<served name>-lora-v<N>``), and the previous adapter is unloaded.
- ``broadcast`` (:class:`BroadcastWeightSync`): every tensor over a torch.distributed group between
  the trainer (rank 0) and each server's workers (gloo on CPU, NCCL on GPU): no storage in between.

The HTTP sequence of a sync is documented in :mod:`opensir.engines.vllm_server`, the worker side in
:mod:`opensir.engines.vllm_worker`. A push reaches every replica that ``rollout.url`` resolves to
(:mod:`opensir.engines.replicas`) and returns only after each reports the new version at
``GET /weight_info``; any failed call or timeout raises :class:`WeightSyncError` naming the server
and the cause, so a run never goes on sampling from a stale policy.

Replicas come and go (a pod restarts with the initial weights; a new one is scheduled). The
generator asks :meth:`ServerWeightSync.current` for the replicas to use before each round; a replica
that does not serve the version last pushed is brought up to date first (the trainer's weights have
not changed since that push), and one that does not answer sits the round out.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opensir.engines.replicas import Endpoints, resolve_endpoints, server_root
from opensir.engines.vllm_server import free_port
from opensir.engines.weight_sync import WeightSyncError, full_state_dict, trainer_module, version_name
from opensir.layout import ADAPTERS, WEIGHTS
from opensir.models import is_peft_model
from opensir.retry import POLL, RetryPolicy, WaitTimeoutError, wait_until
from opensir.seams import Trainer
from opensir.serving import lora_model_name, lora_prefix
from opensir.spec import StorageSpec
from opensir.storage import ArtifactStore, LocalStore, open_store_uri, run_uri, store_options

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- server control
class ServerControl:
    """One rollout server's weight-update routes (see :mod:`opensir.engines.vllm_server`), called
    synchronously with a timeout each; every failure is a :class:`WeightSyncError` naming the URL."""

    def __init__(self, base_url: str, *, timeout_s: float = 600.0) -> None:
        self.base_url = server_root(base_url)
        self.timeout_s = timeout_s

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> Any:
        """One request; the decoded JSON answer (None for an empty body, the text for a plain one)."""
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"} if data else {}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:1000]
            hint = " (is the server running with VLLM_SERVER_DEV_MODE=1?)" if error.code == 404 else ""
            raise WeightSyncError(f"{method} {url} failed with HTTP {error.code}{hint}: {detail}") from error
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise WeightSyncError(f"{method} {url} failed: {reason}") from error
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text  # some routes answer plain text ("Success: LoRA adapter ... added")

    def healthy(self) -> bool:
        """Whether the server answers ``GET /health`` (within a few seconds)."""
        try:
            self.call("GET", "/health", timeout_s=min(5.0, self.timeout_s))
        except WeightSyncError:
            return False
        return True

    def pause(self) -> None:
        """Finish requests in flight on the old weights and admit no new ones."""
        self.call("POST", "/pause?mode=wait")

    def resume(self) -> None:
        """Admit requests again."""
        self.call("POST", "/resume")

    def reset_prefix_cache(self) -> None:
        """Drop cached KV blocks: the old weights computed them."""
        self.call("POST", "/reset_prefix_cache")

    def set_version(self, version: int) -> None:
        """Make the server report (and stamp its outputs with) ``version``."""
        self.call("POST", "/update_weight_version", {"new_version": str(version)})

    def version(self, timeout_s: float | None = None) -> str:
        """The weight version the server reports."""
        answer = self.call("GET", "/weight_info", timeout_s=timeout_s)
        return str(answer["weight_version"])

    def collective_rpc(
        self,
        method: str,
        *,
        args: list[str] | None = None,
        kwargs: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Run ``method`` on every vLLM worker; the per-worker results."""
        body: dict[str, Any] = {"method": method, "args": args or [], "kwargs": kwargs or {}}
        answer = self.call("POST", "/collective_rpc", body, timeout_s)
        return [] if answer is None else list(answer.get("results", []))

    def served_models(self) -> list[str]:
        """Served model names: the base model and the loaded LoRA adapters."""
        answer = self.call("GET", "/v1/models")
        return [str(entry["id"]) for entry in answer.get("data", [])]


# ------------------------------------------------------------------------------------- run store
@dataclass(frozen=True)
class RunStore:
    """The run's artifact store, as the trainer and the rollout servers both open it.

    The servers open it themselves (:func:`opensir.engines.vllm_worker.fetch`) from its URI and
    connection settings (:func:`opensir.storage.open_store_uri`), with the S3 credentials of their
    own environment; the spec carries no secret.
    """

    storage: StorageSpec
    namespace: str
    run: str

    @property
    def uri(self) -> str:
        """The run's store URI (:func:`opensir.storage.run_uri`)."""
        return run_uri(self.storage.uri, self.namespace, self.run)

    def open(self) -> ArtifactStore:
        """The store, as :func:`opensir.storage.open_store` opens it."""
        return open_store_uri(self.uri, **store_options(self.storage))

    def source(self, store: ArtifactStore, key: str) -> dict[str, Any]:
        """How a server finds the files under ``key`` (the JSON :func:`~opensir.engines.vllm_worker.fetch`
        reads): their directory for a local store, which the server reads in place, else the store's
        URI and connection settings to download them with."""
        if isinstance(store, LocalStore):
            return {"path": str(store.root / key)}
        return {"uri": store.uri, "options": dict(store_options(self.storage)), "key": key}


def publish(store: ArtifactStore, prefix: str, version: int, directory: Path, *, keep: int) -> str:
    """Upload the files of ``directory`` as ``<prefix>/v<version>/``; keep the newest ``keep``
    versions under ``prefix``. Returns the version's key. Each object is written atomically, and the
    servers are told about the version only after all of them are written."""
    key = f"{prefix}/{version_name(version)}"
    store.delete(key)  # a leftover of an earlier attempt at this version
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        store.put_file(f"{key}/{path.relative_to(directory).as_posix()}", path)
    versions = sorted({k.split("/")[1] for k in store.list(prefix + "/") if k.count("/") >= 2})
    for stale in versions[:-keep]:
        store.delete(f"{prefix}/{stale}")
    return key


# ------------------------------------------------------------------------------------------ shared
class ServerWeightSync:
    """What the server-side syncs share: the update sequence, its fan-out over the replicas, its
    acknowledgement, and the repair of replicas that fell behind (:meth:`current`).

    ``endpoints`` lists the replicas (default: everything ``base_url`` resolves to, see
    :mod:`opensir.engines.replicas`); ``timeout_s`` bounds every call and the wait for a first replica,
    which :attr:`ready_poll` paces.
    """

    def __init__(
        self,
        base_url: str,
        *,
        endpoints: Endpoints | None = None,
        version: int = 0,
        timeout_s: float = 600.0,
    ) -> None:
        self.base_url = server_root(base_url)
        self.endpoints: Endpoints = endpoints or (lambda: resolve_endpoints(self.base_url))
        self.timeout_s = timeout_s
        self._version = version
        self._model: nn.Module | None = None
        self._acked: dict[str, int] = {}
        self.ready_poll: RetryPolicy = POLL
        """Paces the ``/health`` checks while no replica answers (0.5 s, growing to 5 s)."""

    @property
    def version(self) -> int:
        """The last version pushed and acknowledged (``version`` at construction before any push)."""
        return self._version

    def push(self, trainer: Trainer) -> int:
        """Publish the trainer's weights as the next version; return it once every replica serves it.

        On failure a server is left paused where its weights may be half-updated (full-weight syncs),
        so nothing samples from a mix of old and new weights.
        """
        model = trainer_module(trainer)
        version = self._version + 1
        try:
            targets = self._ready_endpoints()
            self._publish(model, version)
            for endpoint in targets:
                self._sync(endpoint, model, version)
        except WeightSyncError as error:
            raise WeightSyncError(
                f"weight sync of version {version} to {self.base_url} failed: {error}"
            ) from error
        self._version, self._model = version, model
        self._pushed(version)
        return version

    def current(self, endpoints: list[str]) -> list[str]:
        """Of ``endpoints``, those that serve the version last pushed, after syncing the ones that
        answer with another version (a restarted or new replica). Replicas that do not answer are
        left out; before the first push every replica is taken as it is."""
        if self._model is None:
            return list(endpoints)
        ready = []
        for endpoint in endpoints:
            control = ServerControl(endpoint, timeout_s=self.timeout_s)
            try:
                served = control.version(timeout_s=min(10.0, self.timeout_s))
            except WeightSyncError as error:
                log.warning("rollout replica %s sits this round out: %s", endpoint, error)
                continue
            if served != str(self._version) or self._acked.get(endpoint) != self._version:
                log.warning(
                    "rollout replica %s serves weight version %s, not %d: syncing it",
                    endpoint,
                    served,
                    self._version,
                )
                self._forget(endpoint)
                try:
                    self._sync(endpoint, self._model, self._version)
                except WeightSyncError as error:
                    raise WeightSyncError(
                        f"bringing rollout replica {endpoint} to weight version {self._version} "
                        f"failed: {error}"
                    ) from error
            ready.append(endpoint)
        return ready

    def _ready_endpoints(self) -> list[str]:
        """The replicas that answer ``/health``, waiting (bounded backoff, ``timeout_s``) for a first one:
        at a run's start the servers may still be loading the model."""
        found: list[str] = []

        def healthy() -> list[str]:
            found[:] = self.endpoints()
            return [e for e in found if ServerControl(e, timeout_s=self.timeout_s).healthy()]

        try:
            return wait_until(
                healthy,
                what=f"a rollout server at {self.base_url} to answer /health",
                timeout=self.timeout_s,
                policy=self.ready_poll,
                logger=log,
            )
        except WaitTimeoutError as error:
            seen = ", ".join(found) or "no address"
            raise WeightSyncError(
                f"no rollout server at {self.base_url} answered /health within {self.timeout_s:.0f} s "
                f"(it resolves to {seen})"
            ) from error

    def _sync(self, endpoint: str, model: nn.Module, version: int) -> None:
        control = ServerControl(endpoint, timeout_s=self.timeout_s)
        control.pause()
        self._load(control, model, version)
        control.reset_prefix_cache()
        control.set_version(version)
        control.resume()
        served = control.version()
        if served != str(version):
            raise WeightSyncError(
                f"rollout server {endpoint} reports weight version {served!r} after the sync of "
                f"version {version}"
            )
        self._acked[endpoint] = version

    def _publish(self, model: nn.Module, version: int) -> None:
        """Work done once per version, before any server pauses (uploading files)."""

    def _load(self, control: ServerControl, model: nn.Module, version: int) -> None:
        raise NotImplementedError

    def _pushed(self, version: int) -> None:
        """Called once every replica serves ``version``."""

    def _forget(self, endpoint: str) -> None:
        """Drop what is kept about a replica that fell behind, before it is synced again."""


# ------------------------------------------------------------------------------------------- store
class StoreWeightSync(ServerWeightSync):
    """Full weights through the run's artifact store: ``weights/v<N>/model.safetensors``.

    The newest ``keep`` versions stay in the store (one is enough: a replica that restarts later is
    brought up to date from the current one).
    """

    def __init__(self, base_url: str, run_store: RunStore, *, keep: int = 1, **options: Any) -> None:
        super().__init__(base_url, **options)
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (got {keep})")
        self.run_store = run_store
        self.store = run_store.open()
        self.keep = keep

    def _publish(self, model: nn.Module, version: int) -> None:
        from safetensors.torch import save_file

        tensors = {name: t.contiguous().cpu() for name, t in full_state_dict(model).items()}
        with tempfile.TemporaryDirectory(prefix="opensir-weights-") as scratch:
            save_file(tensors, str(Path(scratch) / "model.safetensors"), metadata={"format": "pt"})
            publish(self.store, WEIGHTS, version, Path(scratch), keep=self.keep)

    def _load(self, control: ServerControl, model: nn.Module, version: int) -> None:
        source = self.run_store.source(self.store, f"{WEIGHTS}/{version_name(version)}")
        control.collective_rpc("opensir_reload_weights", kwargs={"source": json.dumps(source)})


# -------------------------------------------------------------------------------------------- lora
class LoRAWeightSync(ServerWeightSync):
    """The trainer's LoRA adapter through the run's artifact store, loaded into the servers at runtime.

    The adapter of version N is written with peft's ``save_pretrained`` to ``adapters/v<N>/`` of the
    store and loaded as ``<served_model_name>-lora-v<N>``; the server's other adapters of this run are
    unloaded. ``on_model`` (e.g. setting :attr:`HTTPGenerator.model <opensir.engines.http.HTTPGenerator>`)
    is told the new adapter's name, because requests choose their adapter by model name.
    """

    def __init__(
        self,
        base_url: str,
        run_store: RunStore,
        *,
        served_model_name: str,
        on_model: Any = None,
        keep: int = 2,
        **options: Any,
    ) -> None:
        super().__init__(base_url, **options)
        self.run_store = run_store
        self.store = run_store.open()
        self.served_model_name = served_model_name
        self.on_model = on_model
        self.keep = keep
        self.model_name: str | None = None
        """The served name of the adapter now loaded (None before the first push)."""

    def _publish(self, model: nn.Module, version: int) -> None:
        if not is_peft_model(model):
            raise WeightSyncError(
                f"weightSync lora needs a LoRA (peft) model; the trainer's model is {type(model).__name__}"
            )
        with tempfile.TemporaryDirectory(prefix="opensir-adapter-") as scratch:
            model.save_pretrained(scratch)  # type: ignore[operator]
            publish(self.store, ADAPTERS, version, Path(scratch), keep=self.keep)

    def _load(self, control: ServerControl, model: nn.Module, version: int) -> None:
        name = lora_model_name(self.served_model_name, version)
        if name not in control.served_models():
            source = self.run_store.source(self.store, f"{ADAPTERS}/{version_name(version)}")
            (path, *_) = control.collective_rpc("opensir_fetch", args=[json.dumps(source)])
            control.call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        for stale in control.served_models():
            if stale.startswith(lora_prefix(self.served_model_name)) and stale != name:
                control.call("POST", "/v1/unload_lora_adapter", {"lora_name": stale})
        if name not in control.served_models():
            raise WeightSyncError(f"{control.base_url} does not list adapter {name} after loading it")

    def _pushed(self, version: int) -> None:
        self.model_name = lora_model_name(self.served_model_name, version)
        if self.on_model is not None:
            self.on_model(self.model_name)


# --------------------------------------------------------------------------------------- broadcast
class BroadcastWeightSync(ServerWeightSync):
    """Full weights over torch.distributed groups: for each replica, one group of the trainer (rank 0)
    and that server's workers (ranks 1..``server_workers``); gloo on CPU, NCCL on GPU (see
    :mod:`opensir.engines.vllm_worker`).

    The groups are formed at a replica's first sync: the trainer hosts one ``TCPStore`` on
    ``bind_host``:``port`` (0 picks a free port; a cluster fixes it, so that it can be opened to the
    rollout pods) and tells each server to join at ``advertise_host``:port (the address the servers
    reach the trainer at: 127.0.0.1 locally, the trainer pod's IP on a cluster); each group has a
    key prefix of its own in that store.
    """

    def __init__(
        self,
        base_url: str,
        *,
        advertise_host: str = "127.0.0.1",
        bind_host: str = "0.0.0.0",
        port: int = 0,
        backend: str | None = None,
        server_workers: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(base_url, **options)
        self.advertise_host = advertise_host
        self.bind_host = bind_host
        self.port = port
        self.backend = backend
        self.server_workers = server_workers
        self._store: Any = None
        self._groups: dict[str, Any] = {}
        self._device = torch.device("cpu")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opensir-broadcast")

    def _rendezvous(self) -> Any:
        import torch.distributed as dist

        if self._store is None:
            self.port = self.port or free_port(self.bind_host)
            self._store = dist.TCPStore(
                self.bind_host,
                self.port,
                None,
                is_master=True,
                timeout=timedelta(seconds=self.timeout_s),
                wait_for_workers=False,
                use_libuv=False,
            )
        return self._store

    def _connect(self, control: ServerControl, model: nn.Module) -> Any:
        import torch.distributed as dist

        device = next(model.parameters()).device
        backend = self.backend or ("nccl" if device.type == "cuda" else "gloo")
        world_size = 1 + self.server_workers
        timeout = timedelta(seconds=self.timeout_s)
        store = self._rendezvous()  # first: it picks the port the payload names
        group_name = f"opensir-{len(self._groups)}-{time.time_ns()}"
        payload = json.dumps(
            {
                "host": self.advertise_host,
                "port": self.port,
                "world_size": world_size,
                "rank_offset": 1,
                "backend": backend,
                "group": group_name,
                "timeout_s": self.timeout_s,
            }
        )
        prefixed = dist.PrefixStore(group_name, store)
        joined = self._pool.submit(control.collective_rpc, "opensir_init_broadcast", args=[payload])
        try:
            if backend == "nccl":
                options = dist.ProcessGroupNCCL.Options()
                options._timeout = timeout
                group = dist.ProcessGroupNCCL(prefixed, 0, world_size, options)
                self._device = device
            else:
                group = dist.ProcessGroupGloo(prefixed, 0, world_size, timeout)
                self._device = torch.device("cpu")
            probe = torch.ones(1, device=self._device)
            group.broadcast([probe]).wait()
        except Exception as error:
            _result(joined, self.timeout_s)  # the server's side usually says more
            raise WeightSyncError(
                f"could not form the {backend} broadcast group with {control.base_url}: {error}"
            ) from error
        _result(joined, self.timeout_s)
        self.backend = backend
        return group

    def _load(self, control: ServerControl, model: nn.Module, version: int) -> None:
        endpoint = control.base_url
        if endpoint not in self._groups:
            self._groups[endpoint] = self._connect(control, model)
        group = self._groups[endpoint]
        tensors = full_state_dict(model)
        params = [[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors.items()]
        received = self._pool.submit(
            control.collective_rpc, "opensir_receive_broadcast", args=[json.dumps({"params": params})]
        )
        try:
            for tensor in tensors.values():
                group.broadcast([tensor.detach().to(self._device).contiguous()]).wait()
        except Exception as error:
            del self._groups[endpoint]  # a broken group cannot be reused; the next sync forms a new one
            _result(received, self.timeout_s)
            raise WeightSyncError(f"broadcasting weights to {endpoint} failed: {error}") from error
        counts = _result(received, self.timeout_s)
        if any(int(c) != len(params) for c in counts):
            raise WeightSyncError(f"{endpoint} workers received {counts} of {len(params)} tensors")

    def _forget(self, endpoint: str) -> None:
        # A replica that fell behind most likely restarted and lost its end of the group.
        self._groups.pop(endpoint, None)

    def close(self) -> None:
        """Leave the broadcast groups (each server is told to drop its side too)."""
        for endpoint in list(self._groups):
            del self._groups[endpoint]
            try:
                ServerControl(endpoint, timeout_s=30).collective_rpc("opensir_close_broadcast")
            except WeightSyncError as error:
                log.warning("could not tell %s to leave the broadcast group: %s", endpoint, error)
        self._store = None
        self._pool.shutdown(wait=False)


def _result(future: Future[Any], timeout_s: float) -> Any:
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError as error:
        raise WeightSyncError(f"the server did not finish within {timeout_s:.0f} s") from error
