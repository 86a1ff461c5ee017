"""GRPO advantages and loss: pinned numbers, properties, and a direct reference computation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opensir.rl.grpo import group_advantages, grpo_loss

rewards_lists = st.lists(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=16
)


# --------------------------------------------------------------------------------------- advantages
def test_pinned_student_group() -> None:
    advantages = group_advantages([1.1] * 6 + [0.1] * 2)
    assert advantages.dtype == torch.float32
    assert [round(a, 4) for a in advantages.tolist()] == [0.5399] * 6 + [-1.6198] * 2


def test_equal_rewards_and_single_samples_give_zero() -> None:
    assert group_advantages([0.3] * 8).tolist() == [0.0] * 8
    assert group_advantages([0.1, 0.1, 0.1]).tolist() == [0.0] * 3  # 0.1 is inexact in binary
    assert group_advantages([5.0]).tolist() == [0.0]
    assert group_advantages([]).shape == (0,)


def test_advantages_use_unbiased_std_and_eps() -> None:
    rewards = torch.tensor([0.0, 1.0, 3.0, 4.0], dtype=torch.float64)
    expected = (rewards - rewards.mean()) / (rewards.std(unbiased=True) + 1e-4)
    torch.testing.assert_close(group_advantages(rewards), expected.float())
    torch.testing.assert_close(
        group_advantages(rewards, eps=0.5), ((rewards - 2.0) / (rewards.std() + 0.5)).float()
    )


def test_non_finite_rewards_are_rejected() -> None:
    with pytest.raises(ValueError, match="finite"):
        group_advantages([1.0, float("nan")])


@settings(max_examples=200, deadline=None)
@given(rewards_lists)
def test_advantages_are_finite_and_zero_mean(rewards: list[float]) -> None:
    advantages = group_advantages(rewards)
    assert advantages.shape == (len(rewards),)
    assert torch.isfinite(advantages).all()
    assert abs(float(advantages.double().mean())) < 1e-4
    # Normalised by the std, so bounded by sqrt(n - 1) whatever the reward scale.
    assert float(advantages.abs().max()) <= math.sqrt(max(len(rewards) - 1, 1)) + 1e-3


# ---------------------------------------------------------------------------------------------- loss
def _reference_loss(lp, old, ref, adv, mask, beta, eps) -> torch.Tensor:
    """The GRPO objective written out token by token, as plainly as possible."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if not mask[i, t]:
                continue
            ratio = torch.exp(lp[i, t] - (old[i, t] if old is not None else lp[i, t].detach()))
            surrogate = torch.minimum(ratio * adv[i], torch.clamp(ratio, 1 - eps, 1 + eps) * adv[i])
            term = -surrogate
            if ref is not None:
                term = term + beta * (torch.exp(ref[i, t] - lp[i, t]) - (ref[i, t] - lp[i, t]) - 1)
            total = total + term
            count += 1
    return total / count


def _tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(3, 5, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    old = lp.detach() + torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.3
    ref = lp.detach() + torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.2
    adv = torch.tensor([1.5, -0.7, 0.2], dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 0, 0], [1, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool
    )  # ragged, with a masked-out middle token
    return lp, old, ref, adv, mask


@pytest.mark.parametrize("use_old", [False, True])
@pytest.mark.parametrize("use_ref", [False, True])
def test_loss_and_gradient_match_reference(use_old: bool, use_ref: bool) -> None:
    lp, old, ref, adv, mask = _tensors(0)
    old = old if use_old else None
    ref = ref if use_ref else None
    loss, parts = grpo_loss(lp, old, ref, adv, mask, beta=0.04, clip_epsilon=0.2)
    (grad,) = torch.autograd.grad(loss, lp)
    expected = _reference_loss(lp, old, ref, adv, mask, 0.04, 0.2)
    (expected_grad,) = torch.autograd.grad(expected, lp)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert parts.tokens == int(mask.sum())
    assert (grad[~mask] == 0).all()
    if not use_ref:
        assert parts.kl == 0.0
        assert parts.policy_loss == pytest.approx(float(loss.detach()))
    if not use_old:
        assert parts.clip_fraction == 0.0


def test_without_old_logprobs_the_gradient_is_the_policy_gradient() -> None:
    lp, _, _, adv, mask = _tensors(1)
    loss, _ = grpo_loss(lp, None, None, adv, mask, beta=0.0, clip_epsilon=0.2)
    (grad,) = torch.autograd.grad(loss, lp)
    expected = -(adv[:, None] * mask) / mask.sum()
    torch.testing.assert_close(grad, expected)
    # The loss value is -mean(A) over tokens (ratio 1).
    assert float(loss.detach()) == pytest.approx(float(-(adv[:, None] * mask).sum() / mask.sum()))


def test_clipping_stops_the_gradient_and_is_counted() -> None:
    lp = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)  # ratio e ≈ 2.72 on the first token
    loss, parts = grpo_loss(
        lp,
        old,
        None,
        torch.tensor([1.0], dtype=torch.float64),
        torch.ones(1, 2, dtype=torch.bool),
        beta=0.0,
        clip_epsilon=0.2,
    )
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad[0, 0] == 0  # positive advantage, ratio above 1 + ε: clipped, no gradient
    assert grad[0, 1] != 0
    assert parts.clip_fraction == 0.5
    assert float(loss.detach()) == pytest.approx(-(1.2 + 1.0) / 2)


def test_kl_is_zero_when_policy_equals_reference_and_positive_otherwise() -> None:
    lp, _, ref, adv, mask = _tensors(2)
    _, same = grpo_loss(lp, None, lp.detach(), adv, mask, beta=0.1, clip_epsilon=0.2)
    assert same.kl == 0.0
    _, different = grpo_loss(lp, None, ref, adv, mask, beta=0.1, clip_epsilon=0.2)
    assert different.kl > 0.0


def test_token_mean_weights_long_sequences_more() -> None:
    """Token-level (not sequence-level) mean: the same per-token value in a longer row counts more."""
    lp = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    loss, _ = grpo_loss(
        lp, None, None, torch.tensor([1.0, -1.0], dtype=torch.float64), mask, beta=0.0, clip_epsilon=0.2
    )
    assert float(loss.detach()) == pytest.approx(-(1 - 4) / 5)


def test_empty_mask_gives_zero_loss_with_graph() -> None:
    lp = torch.zeros(1, 3, requires_grad=True)
    loss, parts = grpo_loss(
        lp, None, None, torch.ones(1), torch.zeros(1, 3, dtype=torch.bool), beta=0.1, clip_epsilon=0.2
    )
    assert float(loss.detach()) == 0.0 and parts.tokens == 0
    loss.backward()
    assert lp.grad is not None and (lp.grad == 0).all()


def test_shape_errors_name_the_problem() -> None:
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mask has shape"):
        grpo_loss(
            lp, None, None, torch.zeros(2), torch.ones(2, 2, dtype=torch.bool), beta=0, clip_epsilon=0.2
        )
    with pytest.raises(ValueError, match="advantages has shape"):
        grpo_loss(
            lp, None, None, torch.zeros(3), torch.ones(2, 3, dtype=torch.bool), beta=0, clip_epsilon=0.2
        )
