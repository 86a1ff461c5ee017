"""GRPO's two formulas as pure torch functions: group-normalised advantages and the clipped loss.

Kept free of models and batches so that the numbers the method depends on (DESIGN.md §1.6) can be
pinned by unit tests and reused by every trainer engine (torch, DeepSpeed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def group_advantages(rewards: Sequence[float] | Tensor, eps: float = 1e-4) -> Tensor:
    """Advantages of ONE group of completions of the same prompt: (R − mean) / (std + eps).

    ``std`` is the unbiased (n − 1) standard deviation, as in the OpenSIR reference and TRL. A group
    whose rewards are all equal carries no signal and gets zeros, and so does a group of one (whose
    unbiased std is undefined); the result is never NaN. Returned in float32.
    """
    values = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    if not torch.isfinite(values).all():
        raise ValueError(f"rewards must be finite (got {values.tolist()})")
    if values.numel() < 2 or bool((values == values[0]).all()):
        return torch.zeros(values.numel(), dtype=torch.float32)
    return ((values - values.mean()) / (values.std(unbiased=True) + eps)).to(torch.float32)


@dataclass(frozen=True)
class GRPOLossParts:
    """The pieces of one GRPO loss, detached, for reporting."""

    policy_loss: float
    """Token-mean clipped surrogate (without the KL term)."""
    kl: float
    """Token-mean k3 KL estimate to the reference (0 without a reference)."""
    clip_fraction: float
    """Share of loss tokens whose ratio fell outside [1 − ε, 1 + ε] on the side that clips."""
    tokens: int
    """Loss tokens the means were taken over."""
    sequence_loss_sums: Tensor
    """Per sequence ``[B]``: sum of its masked per-token losses (for per-role reporting)."""
    sequence_tokens: Tensor
    """Per sequence ``[B]``: its masked token count."""


def grpo_per_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    *,
    beta: float,
    clip_epsilon: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token GRPO loss ``[B, T]``, its k3 KL ``[B, T]`` and which tokens were clipped ``[B, T]``.

    The unreduced form, for callers that reduce over several micro-batches themselves. Padding
    positions hold arbitrary values; mask them out when reducing.
    """
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must be [batch, tokens] (got shape {tuple(logprobs.shape)})")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}; expected ({logprobs.shape[0]},): one per row"
        )
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    ratio = torch.exp(logprobs - old)
    advantage = advantages[:, None].to(logprobs.dtype)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip_epsilon, 1 + clip_epsilon) * advantage
    per_token = -torch.minimum(unclipped, clipped)
    was_clipped = clipped < unclipped
    if ref_logprobs is not None and beta != 0:
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    else:
        kl = torch.zeros_like(logprobs)
    return per_token, kl, was_clipped


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    beta: float,
    clip_epsilon: float,
) -> tuple[Tensor, GRPOLossParts]:
    """GRPO loss: token-level mean over every masked token of the batch (both roles together).

    Per token: ``−min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) + β·KL``, with ``ρ = exp(logprobs − old_logprobs)``
    (``old_logprobs=None`` means the policy that sampled is the current one: ``logprobs.detach()``,
    so ρ = 1 and the gradient is the plain policy gradient) and the k3 estimator
    ``KL = exp(ref − lp) − (ref − lp) − 1`` to the reference policy (skipped when ``ref_logprobs`` is
    None or β is 0). All tensors but ``advantages`` ([B]) are [B, T]; ``mask`` is boolean. A batch
    with no masked token gives a zero loss that still has a graph (so callers can backpropagate).
    """
    if mask.shape != logprobs.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(logprobs.shape)}")
    mask = mask.to(torch.bool)
    per_token, kl, was_clipped = grpo_per_token_loss(
        logprobs, old_logprobs, ref_logprobs, advantages, beta=beta, clip_epsilon=clip_epsilon
    )
    count = int(mask.sum())
    denominator = max(count, 1)
    weights = mask.to(per_token.dtype)
    loss = (per_token * weights).sum() / denominator
    with torch.no_grad():
        kl_mean = (kl * weights).sum() / denominator
        parts = GRPOLossParts(
            policy_loss=float(loss.detach()) - beta * float(kl_mean),  # kl is all zeros when not applied
            kl=float(kl_mean),
            clip_fraction=float((was_clipped & mask).sum()) / denominator,
            tokens=count,
            sequence_loss_sums=(per_token * weights).sum(dim=1).detach(),
            sequence_tokens=mask.sum(dim=1),
        )
    return loss, parts
