"""Choosing the generator, weight sync and embedder of the vLLM engines from a spec
(``rollout.engine`` vllm or server, ``embedding.engine`` server); used by
:func:`opensir.assembly.build_engines`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from opensir.engines.embedding import ServerEmbedder
from opensir.engines.http import HTTPGenerator
from opensir.errors import OpensirError
from opensir.seams import Generator, WeightSync
from opensir.spec import SelfPlayRunSpec

if TYPE_CHECKING:
    from opensir.engines.server_sync import RunStore

TRAINER_ADDRESS_ENV = "OPENSIR_TRAINER_ADDRESS"
"""Address the rollout servers reach the trainer at, for ``weightSync: broadcast`` (the pod IP on a
cluster); 127.0.0.1 when unset."""
WEIGHT_SYNC_PORT_ENV = "OPENSIR_WEIGHT_SYNC_PORT"
"""Port the trainer opens for ``weightSync: broadcast`` (fixed on a cluster, so that the rollout pods
may be let in); a free port when unset."""


class RolloutConfigError(OpensirError, ValueError):
    """The spec's rollout or embedding section cannot be wired as written."""


def build_remote_rollout(
    spec: SelfPlayRunSpec, tokenizer: Any, run_store: RunStore | None = None
) -> tuple[Generator, WeightSync]:
    """Generator and weight sync for ``rollout.engine`` vllm (in-process ``vllm.LLM``) or server.

    ``run_store`` is where ``weightSync`` store and lora publish what the servers load (the run's
    artifact store); a run always passes it.
    """
    kind = spec.weight_sync_kind()
    if spec.rollout.engine == "vllm":
        return _in_process_vllm(spec, kind)
    url = spec.rollout.url
    if url is None:
        raise RolloutConfigError(
            "rollout.url is required with rollout.engine 'server' outside a cluster (on a cluster the "
            "operator points it at the run's rollout server)"
        )
    from opensir.engines.server_sync import BroadcastWeightSync, LoRAWeightSync, StoreWeightSync

    generator = HTTPGenerator(url, spec.model.name, tokenizer=tokenizer)
    sync: StoreWeightSync | LoRAWeightSync | BroadcastWeightSync
    if kind == "lora":

        def use(name: str) -> None:
            generator.model = name

        sync = LoRAWeightSync(
            url, _published_in(run_store, kind), served_model_name=spec.model.name, on_model=use
        )
    elif kind == "store":
        sync = StoreWeightSync(url, _published_in(run_store, kind))
    else:
        sync = BroadcastWeightSync(
            url,
            advertise_host=os.environ.get(TRAINER_ADDRESS_ENV, "127.0.0.1"),
            port=int(os.environ.get(WEIGHT_SYNC_PORT_ENV, "0")),
            server_workers=spec.rollout.tensor_parallel,
        )
    generator.guard = sync.current
    return generator, sync


def _published_in(run_store: RunStore | None, kind: str) -> RunStore:
    if run_store is None:
        raise RolloutConfigError(
            f"rollout.weightSync {kind!r} publishes through the run's store; none was given"
        )
    return run_store


def _in_process_vllm(spec: SelfPlayRunSpec, kind: str) -> tuple[Generator, WeightSync]:
    try:
        from opensir.engines.vllm_local import VLLMGenerator, VLLMWeightSync
        from opensir.models import resolve_model

        generator = VLLMGenerator(
            str(resolve_model(spec.model.name, spec.model.revision)),
            dtype=spec.model.dtype,
            max_model_len=spec.rollout.max_model_len,
            gpu_memory_utilization=spec.rollout.gpu_memory_utilization,
            tensor_parallel=spec.rollout.tensor_parallel,
            seed=spec.training.seed,
            trust_remote_code=spec.model.trust_remote_code,
            revision=spec.model.revision,
            enable_lora=spec.training.lora.enabled,
            max_lora_rank=spec.training.lora.rank,
        )
    except ImportError as error:
        raise RolloutConfigError(
            f"rollout.engine 'vllm' needs vllm in this environment ({error}); install opensir[vllm] "
            "or use rollout.engine 'server'"
        ) from error
    # The engine lives in this process, so every kind but broadcast loads the weights in place. (On a
    # cluster rollout.engine is always server, so only a local run can ask for this.)
    if kind == "broadcast":
        raise RolloutConfigError(
            "rollout.weightSync 'broadcast' needs rollout.engine 'server'; the in-process vLLM engine "
            "takes the weights in place (use auto)"
        )
    return generator, VLLMWeightSync(generator)


def build_server_embedder(spec: SelfPlayRunSpec) -> ServerEmbedder:
    """The embedder of ``embedding.engine`` server."""
    if spec.embedding.url is None:
        raise RolloutConfigError("embedding.url is required with embedding.engine 'server' outside a cluster")
    return ServerEmbedder(spec.embedding.url, spec.embedding.model, batch_size=spec.embedding.batch_size)
