"""Build the engines a run needs from its spec (DESIGN.md §3): the loop never chooses them itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from opensir.engines.base import Embedder, Generator, Trainer, WeightSync
from opensir.engines.embedding import SentenceTransformerEmbedder
from opensir.engines.hf import HFGenerator
from opensir.engines.models import eos_token_ids, load_causal_lm, load_tokenizer, pick_device, pick_dtype
from opensir.engines.weight_sync import InProcessWeightSync
from opensir.errors import OpensirError
from opensir.rl.trainer import TorchTrainer, frozen_copy
from opensir.selfplay.scaffold import STUDENT_SCAFFOLD, TEACHER_SCAFFOLD, ScaffoldedGenerator
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


def build_engines(spec: SelfPlayRunSpec) -> Engines:
    """Load the policy, its frozen reference, the embedder, and wire generator, trainer and sync."""
    if spec.rollout.engine != "hf":
        raise EngineUnavailableError(
            f"spec.rollout.engine={spec.rollout.engine!r} is not available in this version; use 'hf'"
        )
    if spec.training.engine != "torch":
        raise EngineUnavailableError(
            f"spec.training.engine={spec.training.engine!r} is not available in this version; use 'torch'"
        )
    if spec.training.lora.enabled:
        raise EngineUnavailableError("spec.training.lora.enabled is not available in this version")
    if spec.embedding.engine != "sentence-transformers":
        raise EngineUnavailableError(
            f"spec.embedding.engine={spec.embedding.engine!r} is not available in this version; "
            "use 'sentence-transformers'"
        )

    torch.manual_seed(spec.training.seed)
    device = pick_device()
    dtype = pick_dtype(spec.model.dtype, device)
    tokenizer = load_tokenizer(spec.model)
    policy = load_causal_lm(spec.model, device, dtype)
    # The KL reference is the initial policy, frozen; a copy costs one model of memory and no reload.
    reference = frozen_copy(policy) if spec.training.kl_beta > 0 else None
    trainer = TorchTrainer(
        policy, config=spec.training, pad_token_id=tokenizer.pad_token_id, ref_model=reference, device=device
    )
    stop_ids = eos_token_ids(tokenizer, getattr(policy, "generation_config", None))
    generator = HFGenerator(policy, tokenizer, batch_size=spec.rollout.batch_size, eos_token_ids=stop_ids)
    teacher_generator: Generator = generator
    student_generator: Generator = generator
    if spec.self_play.teacher.scaffold:
        teacher_generator = ScaffoldedGenerator(generator, tokenizer, TEACHER_SCAFFOLD, stop_ids[0])
    if spec.self_play.student.scaffold:
        student_generator = ScaffoldedGenerator(generator, tokenizer, STUDENT_SCAFFOLD, stop_ids[0])
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
        weight_sync=InProcessWeightSync(generator, trainer),
    )
