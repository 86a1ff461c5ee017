"""The vLLM servers' command lines: the rollout server and the embedding server, from their settings.

Pure functions, shared by the operator (the rollout and embedding Deployments, ``operator/
manifests.py``) and by the local launcher (:func:`opensir.engines.vllm_server.start_local_server`), so
a cluster runs exactly the command the tests run. The weight-update protocol these switches enable
is described in :mod:`opensir.engines.vllm_server`.
"""

from __future__ import annotations

from dataclasses import dataclass

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
WORKER_EXTENSION = "opensir.engines.vllm_worker.OpensirWorkerExtension"
"""Qualified name of the worker extension (importable inside the server's environment)."""


@dataclass(frozen=True)
class ServerConfig:
    """How to start a vLLM OpenAI server for the policy (or, with ``embedding``, an embedder)."""

    model: str
    """Local model directory or hub id."""
    served_model_name: str = "policy"
    """The ``model`` name requests use (LoRA versions are served as ``<name>-lora-v<N>``)."""
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    """vLLM ``--dtype``: auto, float32, bfloat16, float16."""
    max_model_len: int | None = None
    """Longest prompt + completion; None takes the model's."""
    seed: int = 0
    enable_lora: bool = False
    max_lora_rank: int = 16
    """vLLM accepts 1, 8, 16, 32, 64, 128, 256, 320 or 512; the adapter's rank must not exceed it."""
    tensor_parallel: int = 1
    gpu_memory_utilization: float | None = None
    """None leaves vLLM's default (and is ignored on CPU)."""
    revision: str | None = None
    trust_remote_code: bool = False
    embedding: bool = False
    """Serve the model as an embedder (``--runner pooling --convert embed``) instead of a generator."""
    whole_prefill: bool = False
    """Prefill every prompt in one step (no chunked prefill): needed on CPUs, see
    :func:`whole_prefill_options`."""
    extra_args: tuple[str, ...] = ()


def server_args(config: ServerConfig) -> list[str]:
    """The vLLM command-line arguments (after ``python -m vllm.entrypoints.openai.api_server``)."""
    args = [
        "--model",
        config.model,
        "--served-model-name",
        config.served_model_name,
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--dtype",
        config.dtype,
        "--seed",
        str(config.seed),
    ]
    if config.embedding:
        args += ["--runner", "pooling", "--convert", "embed"]
    else:
        # Completions report the log-probability of each token under the distribution it was sampled
        # from (after temperature/top-k/top-p), as Completion.logprobs documents; the extension adds
        # the broadcast weight-sync methods to every worker.
        args += ["--logprobs-mode", "processed_logprobs", "--worker-extension-cls", WORKER_EXTENSION]
    if config.tensor_parallel != 1:
        args += ["--tensor-parallel-size", str(config.tensor_parallel)]
    if config.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    if config.max_model_len is not None:
        args += ["--max-model-len", str(config.max_model_len)]
    if config.revision:
        args += ["--revision", config.revision]
    if config.trust_remote_code:
        args.append("--trust-remote-code")
    if config.whole_prefill:
        options = whole_prefill_options(config.max_model_len)
        args += [
            "--no-enable-chunked-prefill",
            "--max-num-batched-tokens",
            str(options["max_num_batched_tokens"]),
        ]
    if config.enable_lora and not config.embedding:
        args += [
            "--enable-lora",
            "--max-lora-rank",
            str(lora_rank_slot(config.max_lora_rank)),
            "--max-loras",
            "1",
        ]
    return args + list(config.extra_args)


def server_env(config: ServerConfig) -> dict[str, str]:
    """Environment variables the server needs on top of the pod's or the caller's."""
    if config.embedding:
        return {}
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    if config.enable_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return env


def whole_prefill_options(max_model_len: int | None) -> dict[str, object]:
    """vLLM engine options that prefill every prompt in one step.

    vLLM's CPU build fails a seeded request whose prompt is prefilled in chunks ("CPU Generator does
    not use offset": the sampler rewinds the request's generator after a partial prefill, which only
    CUDA generators can do), and the whole engine dies with it. Seeded sampling is what makes runs
    and evaluations repeatable, so CPU engines prefill whole prompts instead; the token budget of a
    step must then hold the longest prompt.
    """
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len or 8192, 2048)}


_LORA_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_slot(rank: int) -> int:
    """The smallest ``--max-lora-rank`` value vLLM accepts that holds adapters of ``rank``."""
    for slot in _LORA_SLOTS:
        if rank <= slot:
            return slot
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank ({_LORA_SLOTS[-1]})")


def lora_prefix(served_model_name: str) -> str:
    """What the served names of a policy's LoRA adapters start with."""
    return f"{served_model_name}-lora-v"


def lora_model_name(served_model_name: str, version: int) -> str:
    """The served name of the LoRA adapter of weights version ``version``."""
    return f"{lora_prefix(served_model_name)}{version}"
