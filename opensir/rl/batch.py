"""What the run loop hands the trainer, and what the trainer reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    old_logprobs: tuple[float, ...] | None = None
    """Log-probabilities of the completion under the policy that sampled it, for PPO clipping when
    a batch is used for more than one iteration; None means "the current policy"."""

    def __post_init__(self) -> None:
        if len(self.loss_mask) != len(self.completion_ids):
            raise ValueError(
                f"loss_mask has {len(self.loss_mask)} entries for "
                f"{len(self.completion_ids)} completion tokens"
            )
        if self.old_logprobs is not None and len(self.old_logprobs) != len(self.completion_ids):
            raise ValueError(
                f"old_logprobs has {len(self.old_logprobs)} entries for "
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
