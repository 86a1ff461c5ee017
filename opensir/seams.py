"""The seams between the run loop and what it drives (DESIGN.md §3): the only types both sides know.

The loop sees a :class:`Generator` (prompts as token ids in, :class:`Completion` s out), an
:class:`Embedder`, a :class:`Trainer` (a :class:`TrainBatch` in, :class:`TrainStats` out) and a
:class:`WeightSync`. Which implementation stands behind each is chosen from the spec by
:mod:`opensir.assembly`; this module imports no engine and no trainer. Prompts travel as token ids,
already rendered with the policy's chat template, so that every engine samples from, and the trainer
later scores, exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from opensir.spec import SamplingSpec


# ------------------------------------------------------------------------------------ generation
@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions; the field meanings follow vLLM's ``SamplingParams``."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    """-1 disables top-k filtering."""
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    """Strings that end a completion; the stop string itself is not part of the text."""
    seed: int | None = None
    """Seed for this request; None leaves the engine's own generator state untouched."""

    @property
    def greedy(self) -> bool:
        """Temperature 0: every sample of a prompt is the same argmax continuation (vLLM refuses
        n > 1 for it, so its engines ask for one and repeat it)."""
        return self.temperature == 0

    @classmethod
    def from_spec(cls, sampling: SamplingSpec, seed: int | None = None) -> SamplingParams:
        """The request parameters of a spec's ``sampling`` section."""
        return cls(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_tokens,
            seed=seed,
        )


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of one prompt."""

    text: str
    token_ids: tuple[int, ...]
    """The sampled tokens, the end-of-sequence token included when one was sampled."""
    logprobs: tuple[float, ...] | None
    """Log-probability of each sampled token under the sampling distribution, where the engine gives it."""
    finish_reason: str
    """"stop" (end-of-sequence or a stop string) or "length" (max_tokens reached)."""
    sampled: tuple[bool, ...] | None = None
    """Per token: False where the caller forced the token instead of sampling it (scaffolded formats,
    see :mod:`opensir.engines.scaffold`); such tokens are kept out of the loss. None: all sampled."""


@runtime_checkable
class Generator(Protocol):
    """Samples ``n`` completions for each prompt."""

    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Return, for each prompt in order, its ``n`` completions."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to float32, L2-normalised vectors."""

    @property
    def dim(self) -> int:
        """Width of every embedding."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a float32 array of shape ``[len(texts), dim]`` with unit-norm rows."""
        ...


# -------------------------------------------------------------------------------------- training
Role = Literal["teacher", "student"]


@dataclass(frozen=True)
class TrainSequence:
    """One completion to learn from, with the prompt it continued."""

    role: Role
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]
    """One flag per completion token; False excludes the token from the loss (the teacher's
    ``<concepts>`` span)."""
    advantage: float

    def __post_init__(self) -> None:
        if len(self.loss_mask) != len(self.completion_ids):
            raise ValueError(
                f"loss_mask has {len(self.loss_mask)} entries for "
                f"{len(self.completion_ids)} completion tokens"
            )


@dataclass(frozen=True)
class TrainBatch:
    """All sequences of one optimizer step (both roles)."""

    sequences: tuple[TrainSequence, ...]

    @property
    def num_tokens(self) -> int:
        """Completion tokens that count toward the loss."""
        return sum(sum(s.loss_mask) for s in self.sequences)


@dataclass(frozen=True)
class TrainStats:
    """What one optimizer step did."""

    step: int
    """Optimizer steps taken after this one."""
    loss: float
    kl: float
    """Mean k3 KL estimate to the reference model over loss tokens (0 when beta is 0)."""
    grad_norm: float
    """Gradient norm before clipping."""
    learning_rate: float
    tokens: int
    """Completion tokens that counted toward the loss."""
    seconds: float
    loss_by_role: dict[str, float] = field(default_factory=dict)
    clip_fraction: float = 0.0
    """Share of loss tokens whose probability ratio was clipped (0 with one iteration per batch)."""


@runtime_checkable
class Trainer(Protocol):
    """Owns the policy being trained, its optimiser and everything needed to resume it exactly."""

    @property
    def step_count(self) -> int:
        """Optimizer steps taken so far (restored by :meth:`load`)."""
        ...

    def step(self, batch: TrainBatch) -> TrainStats:
        """Take one optimizer step on ``batch`` and report what happened."""
        ...

    def save(self, directory: Path) -> None:
        """Write model, optimiser, scheduler and RNG state into ``directory`` (which exists and is empty)."""
        ...

    def load(self, directory: Path) -> None:
        """Restore exactly the state written by :meth:`save`."""
        ...


@runtime_checkable
class WeightSync(Protocol):
    """Makes the generator serve the trainer's current weights."""

    def push(self, trainer: Trainer) -> int:
        """Publish the trainer's weights and return the version now served.

        Returns only once the generator serves the new version; raises when it does not.
        """
        ...
