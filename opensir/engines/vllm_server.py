"""The rollout server: vLLM's own OpenAI server, started so that it can take new weights.

There is no opensir server code in front of vLLM. The rollout server is
``python -m vllm.entrypoints.openai.api_server`` with the switches :func:`server_args` and
:func:`server_env` give it, on a cluster (``operator/manifests.py``) and locally
(:func:`start_local_server`, for tests and benchmarks) alike.

Weight-update protocol (vLLM 0.32; the client side is :mod:`opensir.engines.server_sync`)
-----------------------------------------------------------------------------------------
The server runs with ``VLLM_SERVER_DEV_MODE=1``, which adds vLLM's development and RL routes, and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`` when LoRA is on. A weight sync of version ``V`` is this
sequence of HTTP calls to every replica, each with a timeout; any non-2xx answer or timeout fails
the sync:

1. ``POST /pause?mode=wait``: let requests in flight finish on the old weights, admit no new ones.
2. Load the weights, one of:

   - full weights through the run's store (``store``): the trainer has uploaded
     ``weights/v<V>/model.safetensors``; ``POST /collective_rpc`` with ``{"method":
     "opensir_reload_weights", "kwargs": {"source": JSON}}`` makes every worker fetch them (read in
     place from a ``file://`` store, downloaded from S3) and reload them with vLLM's own in-place
     reload (``Worker.reload_weights``): checkpoint (Hugging Face) names, each layer's post-load
     processing (CPU weight repacking, quantisation) run again, the KV cache allocation left alone;
     the extension then re-ties tied weights.
   - full weights over torch.distributed (``broadcast``): once per replica, ``POST
     /collective_rpc`` with ``{"method": "opensir_init_broadcast", "args": [JSON]}`` while the
     trainer joins the same group as rank 0; per sync, ``opensir_receive_broadcast`` with the
     parameter list while the trainer broadcasts the tensors (see :mod:`opensir.engines.vllm_worker`).
   - a LoRA adapter through the run's store (``lora``): ``opensir_fetch`` with the adapter's
     ``adapters/v<V>/`` (peft ``save_pretrained`` layout) returns its directory on the server; then
     ``POST /v1/load_lora_adapter`` with ``{"lora_name": "<served name>-lora-v<V>", "lora_path":
     DIR}`` and ``POST /v1/unload_lora_adapter`` for the run's other adapters. Requests name the
     adapter as their ``model``, so each request says which version it wants.

3. ``POST /reset_prefix_cache``: cached KV blocks were computed by the old weights.
4. ``POST /update_weight_version`` with ``{"new_version": "V"}``: vLLM stamps every later output
   with it and reports it at ``GET /weight_info`` (``{"weight_version": "V"}``).
5. ``POST /resume``.
6. ``GET /weight_info`` must now say ``V``: that is the acknowledgement the trainer waits for.

Before each round the generator asks every replica for ``GET /weight_info`` and brings one that
reports another version (a restarted pod) up to date with the same sequence.

vLLM's native weight-transfer engines (``/init_weight_transfer_engine``, ``/update_weights``) were
considered: their trainer side needs vLLM installed in the trainer's environment and they have no
CPU (gloo) backend, while the trainer here must work with plain torch. TRL's ``trl vllm-serve`` puts
its own FastAPI server (``/init_communicator/``, ``/update_named_param/``) in front of
``vllm.LLM``; using vLLM's own OpenAI server with a worker extension keeps every OpenAI route,
``n``, log-probabilities and runtime LoRA exactly as vLLM ships them.

The development routes include ``/collective_rpc``, which runs worker methods: the server must
only be reachable by the run's own pods (the chart's NetworkPolicy) or, locally, bind to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from opensir.errors import OpensirError
from opensir.retry import POLL, WaitTimeoutError, wait_until
from opensir.serving import VLLM_SERVER_MODULE, ServerConfig, server_args, server_env

DEFAULT_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"
"""Where ``scripts/install_vllm.sh`` puts the vLLM environment of a source checkout."""


class RolloutServerError(OpensirError, RuntimeError):
    """A local vLLM server could not be started, or stopped running."""


READY_POLL = replace(POLL, base_delay=0.25, max_delay=2.0)
"""Paces the ``/health`` checks of a starting local server: 0.25 s, growing 1.5-fold up to 2 s."""


# --------------------------------------------------------------------------------- local servers
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _has_cuda() -> bool:
    """Whether this machine has a GPU for the server (else vLLM runs on the CPU)."""
    import torch

    return bool(torch.cuda.is_available())


def vllm_python(venv: Path | None = None) -> Path:
    """The interpreter of the vLLM environment (``OPENSIR_VLLM_PYTHON`` overrides)."""
    override = os.environ.get("OPENSIR_VLLM_PYTHON")
    if override:
        return Path(override)
    python = (venv or DEFAULT_VENV) / "bin" / "python"
    if not python.is_file():
        raise RolloutServerError(
            f"no vLLM environment at {python.parent.parent}: run scripts/install_vllm.sh "
            f"(or point OPENSIR_VLLM_PYTHON at a Python with vllm installed)"
        )
    return python


@dataclass
class LocalServer:
    """A vLLM server process this process started; stop it with :meth:`stop` (by PID)."""

    config: ServerConfig
    python: Path
    log_path: Path
    env: Mapping[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        """``http://host:port`` (without ``/v1``)."""
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        """Launch the server process (returns at once; see :meth:`wait_ready`)."""
        if self.process is not None and self.process.poll() is None:
            raise RolloutServerError(f"the server at {self.base_url} is already running (pid {self.pid})")
        command = [str(self.python), "-m", VLLM_SERVER_MODULE, *server_args(self.config)]
        with self.log_path.open("ab") as log:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            # A new session makes the server and its engine-core child one process group to stop.
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Return once ``GET /health`` answers 200; raise with the log's tail if the process exits
        or ``timeout`` seconds pass."""

        def ready() -> bool:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RolloutServerError(
                    f"the vLLM server for {self.base_url} exited (code {code}) before it was ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=5) as response:
                return bool(response.status == 200)

        try:
            wait_until(
                ready,
                what=f"the vLLM server at {self.base_url} to answer /health",
                timeout=timeout,
                policy=READY_POLL,
                # Refused or timed out: not listening yet, while the model loads.
                transient=lambda error: isinstance(error, urllib.error.URLError | OSError),
            )
        except WaitTimeoutError as error:
            self.stop()
            raise RolloutServerError(
                f"the vLLM server at {self.base_url} was not ready after {timeout:.0f} s; "
                f"log {self.log_path}:\n{self.log_tail()}"
            ) from error

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after ``timeout``)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            process.wait()
        # The engine core is a child in the same group; make sure nothing of it survives.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log."""
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_server(
    model: str | Path,
    *,
    log_dir: Path,
    port: int | None = None,
    served_model_name: str = "policy",
    dtype: str = "float32",
    max_model_len: int | None = 2048,
    enable_lora: bool = False,
    max_lora_rank: int = 16,
    embedding: bool = False,
    kv_cache_gib: int = 1,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    python: Path | None = None,
    wait: bool = True,
    ready_timeout: float = 600.0,
) -> LocalServer:
    """Start a vLLM OpenAI server on 127.0.0.1 from the vLLM environment and (by default) wait
    until it is ready. For tests, benchmarks and evaluation on one machine; stop it with
    ``server.stop()`` or use it as a context manager.

    ``kv_cache_gib`` sizes the CPU KV cache (``VLLM_CPU_KVCACHE_SPACE``); it is ignored on GPUs.
    ``env`` adds to the server's environment (e.g. the storage credentials it fetches weights with).
    """
    config = ServerConfig(
        model=str(model),
        served_model_name=served_model_name,
        port=port if port is not None else free_port(),
        dtype=dtype,
        max_model_len=max_model_len,
        enable_lora=enable_lora,
        max_lora_rank=max_lora_rank,
        embedding=embedding,
        whole_prefill=not embedding and not _has_cuda(),
        extra_args=tuple(extra_args),
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    server = LocalServer(
        config=config,
        python=python or vllm_python(),
        log_path=log_dir / f"vllm-{config.port}.log",
        env={
            **server_env(config),
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "VLLM_NO_USAGE_STATS": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        },
    )
    server.start()
    if wait:
        try:
            server.wait_ready(ready_timeout)
        except BaseException:
            server.stop()
            raise
    return server


if __name__ == "__main__":  # pragma: no cover - a convenience for trying the server by hand
    from opensir.models import resolve_model

    handle = start_local_server(resolve_model(sys.argv[1]), log_dir=Path("/tmp"), enable_lora=True)
    print(handle.base_url, "pid", handle.pid, flush=True)
    try:
        signal.pause()
    finally:
        handle.stop()
