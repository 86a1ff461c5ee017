"""Build the engines a run needs from its spec (DESIGN.md §3): the loop never chooses them itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from opensir.engines.embedding import SentenceTransformerEmbedder
from opensir.engines.hf import HFGenerator
from opensir.engines.remote import build_remote_rollout, build_server_embedder
from opensir.engines.scaffold import STUDENT_SCAFFOLD, TEACHER_SCAFFOLD, ScaffoldedGenerator
from opensir.engines.server_sync import RunStore
from opensir.engines.weight_sync import InProcessWeightSync
from opensir.errors import OpensirError
from opensir.models import eos_token_ids, load_causal_lm, load_tokenizer, pick_device, pick_dtype
from opensir.rl.deepspeed_trainer import DeepSpeedTrainer
from opensir.rl.trainer import TorchTrainer, frozen_copy
from opensir.seams import Embedder, Generator, Trainer, WeightSync
from opensir.spec import SelfPlayRunSpec

log = logging.getLogger(__name__)


class EngineUnavailableError(OpensirError, RuntimeError):
    """The spec asks for an engine this installation cannot provide; the message says which and why."""


@dataclass
class Engines:
    """What the run loop talks to."""

    tokenizer: Any
    """The policy's tokenizer (renders prompts; maps loss masks to tokens)."""
    generator: Generator
    """The policy's generator."""
    teacher_generator: Generator
    """Samples teacher completions: the generator itself, or the teacher scaffold around it."""
    student_generator: Generator
    """Samples student completions: the generator itself, or the student scaffold around it."""
    embedder: Embedder
    trainer: Trainer
    weight_sync: WeightSync


def build_trainer(
    spec: SelfPlayRunSpec, policy: torch.nn.Module, pad_token_id: int, device: torch.device | str
) -> TorchTrainer | DeepSpeedTrainer:
    """The trainer ``spec.training`` asks for, around the loaded ``policy``.

    LoRA mode wraps the policy in adapters, and its frozen base is the KL reference; otherwise the
    reference is a frozen copy of the initial policy (none when klBeta is 0). The DeepSpeed trainer
    joins the launcher's process group (a group of one without a launcher).
    """
    training = spec.training
    if training.lora.enabled:
        from opensir.rl.lora import apply_lora

        policy = apply_lora(policy, training.lora)
    # The KL reference is the initial policy, frozen; a copy costs one model of memory and no reload.
    needs_copy = training.kl_beta > 0 and not training.lora.enabled
    reference = frozen_copy(policy) if needs_copy else None
    if training.engine == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError as error:
            raise EngineUnavailableError(
                f"spec.training.engine='deepspeed' needs DeepSpeed ({error}); install it with "
                "DS_BUILD_OPS=0 pip install 'opensir[deepspeed]' (scripts/setup.sh does)"
            ) from error
        return DeepSpeedTrainer(
            policy, config=training, pad_token_id=pad_token_id, ref_model=reference, device=device
        )
    return TorchTrainer(
        policy, config=training, pad_token_id=pad_token_id, ref_model=reference, device=device
    )


def is_training_follower(spec: SelfPlayRunSpec) -> bool:
    """Whether this process is a rank > 0 of a multi-process DeepSpeed launch: it only trains, along
    with rank 0, which plays the rounds (see :mod:`opensir.rl.follow`)."""
    from opensir.rl.distributed import launched_rank

    return spec.training.engine == "deepspeed" and launched_rank() != 0


def build_follower_trainer(spec: SelfPlayRunSpec) -> DeepSpeedTrainer:
    """The trainer of a follower rank: the policy and the DeepSpeed trainer, no generator or embedder."""
    torch.manual_seed(spec.training.seed)
    device = pick_device()
    tokenizer = load_tokenizer(spec.model)
    # Loaded on the CPU: DeepSpeed moves it to this rank's GPU (LOCAL_RANK), not every rank's to GPU 0.
    policy = load_causal_lm(spec.model, "cpu", pick_dtype(spec.model.dtype, device))
    trainer = build_trainer(spec, policy, tokenizer.pad_token_id, device)
    assert isinstance(trainer, DeepSpeedTrainer)
    return trainer


def build_engines(spec: SelfPlayRunSpec, run_store: RunStore | None = None) -> Engines:
    """Load the policy, its frozen reference, the embedder, and wire generator, trainer and sync.

    ``run_store``: the run's artifact store, through which the store and lora weight syncs publish
    what the rollout servers load (the runner passes it; only those syncs need it).
    """
    torch.manual_seed(spec.training.seed)
    device = pick_device()
    dtype = pick_dtype(spec.model.dtype, device)
    tokenizer = load_tokenizer(spec.model)
    policy = load_causal_lm(spec.model, device, dtype)
    built = build_trainer(spec, policy, tokenizer.pad_token_id, device)
    trainer: Trainer = built
    if isinstance(built, DeepSpeedTrainer) and built.world_size > 1:
        from opensir.rl.follow import LeaderTrainer

        trainer = LeaderTrainer(built)  # rank 0: the other ranks train along (opensir.rl.follow)
    # The generator samples from the module the trainer updates (peft-wrapped in LoRA mode).
    policy = built.model
    stop_ids = eos_token_ids(tokenizer, getattr(policy, "generation_config", None))
    generator: Generator
    weight_sync: WeightSync
    if spec.rollout.engine == "hf":
        generator = HFGenerator(policy, tokenizer, batch_size=spec.rollout.batch_size, eos_token_ids=stop_ids)
        weight_sync = InProcessWeightSync(generator, trainer)
    else:  # vLLM in this process, or the rollout server (opensir.engines.remote)
        generator, weight_sync = build_remote_rollout(spec, tokenizer, run_store)
    teacher_generator: Generator = generator
    student_generator: Generator = generator
    if spec.self_play.teacher.scaffold:
        teacher_generator = ScaffoldedGenerator(generator, tokenizer, TEACHER_SCAFFOLD, stop_ids[0])
    if spec.self_play.student.scaffold:
        student_generator = ScaffoldedGenerator(generator, tokenizer, STUDENT_SCAFFOLD, stop_ids[0])
    embedder: Embedder
    if spec.embedding.engine == "server":
        embedder = build_server_embedder(spec)
    else:
        embedder = SentenceTransformerEmbedder(
            spec.embedding.model, batch_size=spec.embedding.batch_size, device=device
        )
    log.info("engines: %s on %s (%s), embedder %s", spec.model.name, device, dtype, spec.embedding.model)
    return Engines(
        tokenizer=tokenizer,
        generator=generator,
        teacher_generator=teacher_generator,
        student_generator=student_generator,
        embedder=embedder,
        trainer=trainer,
        weight_sync=weight_sync,
    )
