"""What is evaluated (a model, or a run's checkpoint) and the engine that samples from it.

The model argument of ``opensir eval`` is a hub id, a local directory or a ``builtin:`` name; a
run's store (a directory, ``file://…`` or ``s3://…/NAMESPACE/RUN``); or a SelfPlayRun manifest,
whose store, tokenizer and ``spec.evaluation`` settings are used. For a run, the newest committed
checkpoint (or ``--step``'s) is evaluated: only its model weights are downloaded and verified.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from opensir.checkpoint import Checkpoint, CorruptCheckpointError, list_checkpoints
from opensir.errors import OpensirError
from opensir.layout import CHECKPOINTS, evals_prefix
from opensir.seams import Generator
from opensir.spec import ModelSpec, SelfPlayRunSpec
from opensir.storage import ArtifactStore, sha256_file

if TYPE_CHECKING:
    from opensir.evaluation.harness import EvalSettings

log = logging.getLogger(__name__)

EngineName = Literal["hf", "server", "vllm"]
MODEL_FILES = "trainer/model/"
"""Where a checkpoint keeps the policy's weights (``TorchTrainer.save``: a transformers directory)."""


class EvalTargetError(OpensirError, LookupError):
    """The model or checkpoint to evaluate cannot be found."""


@dataclass(frozen=True)
class EvalTarget:
    """A model ready to load: its weights' directory and where its tokenizer comes from."""

    label: str
    """What the cache and the report call it."""
    weights: Path
    tokenizer: ModelSpec
    store: ArtifactStore | None = None
    """The run's store, when a run's checkpoint is evaluated (results are stored next to it)."""
    step: int | None = None


def pick_checkpoint(store: ArtifactStore, step: int | None) -> Checkpoint:
    """The committed checkpoint at ``step``, or the newest one."""
    committed = list_checkpoints(store)
    if not committed:
        raise EvalTargetError(f"{store.uri}: the run has no committed checkpoint to evaluate")
    if step is None:
        return committed[-1]
    for checkpoint in committed:
        if checkpoint.step == step:
            return checkpoint
    steps = ", ".join(str(c.step) for c in committed)
    raise EvalTargetError(f"{store.uri}: no committed checkpoint at step {step} (committed: {steps})")


def fetch_weights(store: ArtifactStore, checkpoint: Checkpoint, destination: Path) -> Path:
    """Download and verify the model files of ``checkpoint`` (not its optimizer or pool) into
    ``destination``."""
    entries = [e for e in checkpoint.files if e.path.startswith(MODEL_FILES)]
    if not entries:
        raise EvalTargetError(
            f"{store.uri}/{checkpoint.prefix}: the checkpoint has no model weights under {MODEL_FILES}"
        )
    for entry in entries:
        local = destination / entry.path
        store.get_file(f"{checkpoint.prefix}/{entry.path}", local)
        if local.stat().st_size != entry.size or sha256_file(local) != entry.sha256:
            raise CorruptCheckpointError(
                f"{store.uri}/{checkpoint.prefix}/{entry.path}: content does not match the manifest"
            )
    return destination / MODEL_FILES.rstrip("/")


def checkpoint_target(
    store: ArtifactStore, step: int | None, tokenizer: ModelSpec, workdir: Path
) -> EvalTarget:
    """The weights of a run's checkpoint, fetched into ``workdir``."""
    checkpoint = pick_checkpoint(store, step)
    weights = fetch_weights(store, checkpoint, workdir / checkpoint.prefix.rsplit("/", 1)[-1])
    label = f"{store.uri}/{checkpoint.prefix}"
    log.info("evaluating %s (tokenizer of %s)", label, tokenizer.name)
    return EvalTarget(label, weights, tokenizer, store, checkpoint.step)


def model_target(name: str, tokenizer: str | None = None, *, dtype: str = "auto") -> EvalTarget:
    """A hub id, local directory or ``builtin:`` model."""
    from opensir.models import resolve_model

    return EvalTarget(name, resolve_model(name), ModelSpec(name=tokenizer or name, dtype=dtype))


def is_store_uri(model: str) -> bool:
    """Whether ``model`` names a run's store rather than a model."""
    if model.startswith(("file://", "s3://")):
        return True
    return (Path(model).expanduser() / CHECKPOINTS).is_dir()


# ----------------------------------------------------------------------------------------- engines
def load_tokenizer_for(target: EvalTarget) -> Any:
    """The tokenizer (and chat template) that renders the prompts."""
    from opensir.models import load_tokenizer

    return load_tokenizer(target.tokenizer)


def build_generator(
    engine: EngineName,
    target: EvalTarget,
    tokenizer: Any,
    *,
    batch_size: int = 16,
    server_url: str | None = None,
    served_model: str | None = None,
) -> Generator:
    """The generator for ``engine``: ``hf`` loads the weights in this process; ``server`` talks to an
    OpenAI-compatible server (vLLM) already serving them at ``server_url``."""
    if engine == "hf":
        from opensir.engines.hf import HFGenerator
        from opensir.models import eos_token_ids, load_causal_lm, pick_device, pick_dtype

        device = pick_device()
        spec = target.tokenizer.model_copy(update={"name": str(target.weights), "revision": None})
        model = load_causal_lm(spec, device, pick_dtype(spec.dtype, device))
        stops = eos_token_ids(tokenizer, getattr(model, "generation_config", None))
        return HFGenerator(model, tokenizer, batch_size=batch_size, eos_token_ids=stops)
    if engine == "server":
        if not server_url:
            raise OpensirError("--engine server needs --server-url (the OpenAI-compatible server's base URL)")
        try:
            from opensir.engines.http import HTTPGenerator
        except ImportError as error:
            raise OpensirError(f"--engine server is not available in this installation: {error}") from error
        return HTTPGenerator(server_url, served_model or target.label, tokenizer=tokenizer)
    raise OpensirError(f"engine must be 'hf', 'server' or 'vllm', not {engine!r}")


@contextmanager
def open_generator(
    engine: EngineName,
    target: EvalTarget,
    tokenizer: Any,
    *,
    batch_size: int = 16,
    server_url: str | None = None,
    served_model: str | None = None,
    log_dir: Path | None = None,
    kv_cache_gib: int = 2,
    max_model_len: int | None = None,
) -> Iterator[Generator]:
    """The generator for ``engine``, and for ``vllm`` a local vLLM server started on the target's
    weights (from the ``.venv-vllm`` environment, see scripts/install_vllm.sh) and stopped on exit."""
    if engine != "vllm":
        yield build_generator(
            engine, target, tokenizer, batch_size=batch_size, server_url=server_url, served_model=served_model
        )
        return
    from opensir.engines.http import HTTPGenerator
    from opensir.engines.vllm_server import start_local_server

    dtype = target.tokenizer.dtype if target.tokenizer.dtype != "auto" else "float32"
    log.info("starting a local vLLM server on %s (log in %s)", target.weights, log_dir)
    server = start_local_server(
        target.weights,
        log_dir=log_dir or Path("."),
        dtype=dtype,
        max_model_len=max_model_len,
        kv_cache_gib=kv_cache_gib,
    )
    try:
        yield HTTPGenerator(server.base_url, server.config.served_model_name, tokenizer=tokenizer)
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ results
def store_results(store: ArtifactStore, step: int, directory: Path) -> list[str]:
    """Upload an evaluation's output directory (per-benchmark JSON, results, cache) next to the checkpoint."""
    keys = []
    for path in sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl", ".md")
    ):
        key = f"{evals_prefix(step)}/{path.name}"
        store.put_file(key, path)
        keys.append(key)
    return keys


# --------------------------------------------------------------------------------- inside a run
def settings_of(spec: SelfPlayRunSpec, *, seed: int = 0) -> EvalSettings:
    """The evaluation settings of a run's ``spec.evaluation``."""
    from opensir.evaluation.harness import EvalSettings
    from opensir.seams import SamplingParams

    evaluation = spec.evaluation
    return EvalSettings(
        benchmarks=tuple(evaluation.benchmarks),
        samples=evaluation.samples,
        max_problems=evaluation.max_problems,
        sampling=SamplingParams.from_spec(evaluation.sampling),
        seed=seed,
        data_dir=evaluation.data_dir,
        chat_template=spec.model.chat_template,
    )


def evaluate_run_checkpoint(
    spec: SelfPlayRunSpec,
    generator: Generator,
    tokenizer: Any,
    store: ArtifactStore,
    checkpoint: Checkpoint,
    workdir: Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run's committed checkpoint with a generator already serving its weights (the run's
    own, in process), store the results next to it and return the summary (``results.json``)."""
    from opensir.evaluation.harness import CACHE_FILE, evaluate

    out = workdir / evals_prefix(checkpoint.step)
    cached = f"{evals_prefix(checkpoint.step)}/{CACHE_FILE}"
    if not (out / CACHE_FILE).exists() and store.exists(cached):
        store.get_file(cached, out / CACHE_FILE)
    label = f"{store.uri}/{checkpoint.prefix}"
    report = evaluate(generator, tokenizer, label, settings_of(spec), out / CACHE_FILE, progress=progress)
    report.write(out)
    store_results(store, checkpoint.step, out)
    return report.summary_json()
