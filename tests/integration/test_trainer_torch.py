"""The torch GRPO trainer on a tiny randomly initialised Llama (same code paths as SmolLM2, fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from opensir.engines.weight_sync import InProcessWeightSync, WeightSyncError
from opensir.rl.trainer import TorchTrainer, frozen_copy, sequence_logprobs
from opensir.seams import TrainBatch, TrainSequence
from opensir.spec import TrainingSpec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VOCAB = 97


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).float()


def make_batch(seed: int, count: int = 6) -> TrainBatch:
    """Ragged prompts and completions, both roles, some tokens masked out, some old logprobs."""
    g = torch.Generator().manual_seed(seed)
    sequences = []
    for i in range(count):
        prompt_len = int(torch.randint(2, 9, (1,), generator=g))
        completion_len = int(torch.randint(1, 12, (1,), generator=g))
        mask = [bool(b) for b in (torch.rand(completion_len, generator=g) > 0.2).tolist()]
        mask[0] = True
        sequences.append(
            TrainSequence(
                role="teacher" if i % 3 == 0 else "student",
                prompt_ids=tuple(torch.randint(1, VOCAB, (prompt_len,), generator=g).tolist()),
                completion_ids=tuple(torch.randint(1, VOCAB, (completion_len,), generator=g).tolist()),
                loss_mask=tuple(mask),
                advantage=float(torch.randn(1, generator=g)),
            )
        )
    return TrainBatch(tuple(sequences))


def config(**overrides: object) -> TrainingSpec:
    values: dict[str, object] = {
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "max_steps": 20,
        "kl_beta": 0.0,
        "micro_batch_size": 4,
        "max_grad_norm": 1e9,
    }
    values.update(overrides)
    return TrainingSpec(**values)


def capture_gradients(trainer: TorchTrainer) -> list[list[torch.Tensor]]:
    """Record the gradients each optimizer step would apply (after clipping), then apply them."""
    captured: list[list[torch.Tensor]] = []

    def record(optimizer: object, args: object, kwargs: object) -> None:
        captured.append([p.grad.detach().clone() for p in trainer.model.parameters()])

    trainer.optimizer.register_step_pre_hook(record)
    return captured


def reference_loss(model: torch.nn.Module, batch: TrainBatch, beta: float = 0.0, ref=None) -> torch.Tensor:
    """GRPO loss at ratio 1, written out one unpadded sequence at a time."""
    total, count = torch.zeros(()), 0
    for s in batch.sequences:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        logits = model(input_ids=ids).logits[0].float()
        p = len(s.prompt_ids)
        lp = torch.log_softmax(logits[p - 1 : -1], dim=-1).gather(-1, ids[0, p:, None]).squeeze(-1)
        if ref is not None:
            with torch.no_grad():
                ref_logits = ref(input_ids=ids).logits[0].float()
            ref_lp = torch.log_softmax(ref_logits[p - 1 : -1], -1).gather(-1, ids[0, p:, None]).squeeze(-1)
        for t, keep in enumerate(s.loss_mask):
            if keep:
                term = -torch.exp(lp[t] - lp[t].detach()) * s.advantage
                if ref is not None:
                    d = ref_lp[t] - lp[t]
                    term = term + beta * (torch.exp(d) - d - 1)
                total = total + term
                count += 1
    return total / count


# ------------------------------------------------------------------------------------------- tests
def test_logprobs_match_unpadded_forward() -> None:
    model = tiny_model().eval()
    batch = make_batch(1)
    with torch.no_grad():
        logprobs, valid = sequence_logprobs(model, batch, pad_token_id=0)
        for row, s in enumerate(batch.sequences):
            ids = torch.tensor([s.prompt_ids + s.completion_ids])
            full = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            p = len(s.prompt_ids)
            expected = full[p - 1 : -1].gather(-1, ids[0, p:, None]).squeeze(-1)
            torch.testing.assert_close(logprobs[row, : len(s.completion_ids)], expected, atol=1e-5, rtol=1e-5)
            assert valid[row].sum() == len(s.completion_ids)
            assert (logprobs[row, len(s.completion_ids) :] == 0).all()


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_loss_and_gradients_equal_reference(beta: float) -> None:
    batch = make_batch(2)
    reference_model, trained = tiny_model(), tiny_model()
    ref = frozen_copy(tiny_model(5)) if beta else None  # a reference different from the policy
    expected = reference_loss(reference_model, batch, beta, ref)
    expected.backward()
    trainer = TorchTrainer(trained, config=config(kl_beta=beta), pad_token_id=0, ref_model=ref)
    captured = capture_gradients(trainer)
    stats = trainer.step(batch)
    assert stats.loss == pytest.approx(float(expected.detach()), abs=1e-5)
    for got, parameter in zip(captured[0], reference_model.parameters(), strict=True):
        torch.testing.assert_close(got, parameter.grad, atol=1e-6, rtol=1e-4)
    assert stats.tokens == batch.num_tokens and stats.step == 1 == trainer.step_count
    assert set(stats.loss_by_role) == {"teacher", "student"}
    assert (stats.kl > 0) == bool(beta)


def test_micro_batches_equal_the_full_batch() -> None:
    batch = make_batch(3, count=7)
    results = []
    for micro in (1, 3, 7):
        trainer = TorchTrainer(tiny_model(), config=config(micro_batch_size=micro), pad_token_id=0)
        captured = capture_gradients(trainer)
        results.append((trainer.step(batch), captured[0]))
    (full_stats, full_grads) = results[-1]
    for stats, grads in results[:-1]:
        assert stats.loss == pytest.approx(full_stats.loss, abs=1e-6)
        assert stats.loss_by_role == pytest.approx(full_stats.loss_by_role, abs=1e-6)
        assert stats.grad_norm == pytest.approx(full_stats.grad_norm, rel=1e-5)
        for a, b in zip(grads, full_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_grad_norm_is_reported_before_clipping() -> None:
    batch = make_batch(4)
    trainer = TorchTrainer(tiny_model(), config=config(max_grad_norm=1e-3), pad_token_id=0)
    captured = capture_gradients(trainer)
    stats = trainer.step(batch)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in captured[0]]))
    assert stats.grad_norm > 1e-2
    assert float(clipped) == pytest.approx(1e-3, rel=1e-3)


def test_kl_is_zero_at_start_and_positive_after_an_update() -> None:
    model = tiny_model()
    trainer = TorchTrainer(
        model, config=config(kl_beta=0.1, learning_rate=1e-2), pad_token_id=0, ref_model=frozen_copy(model)
    )
    first = trainer.step(make_batch(5))
    second = trainer.step(make_batch(5))
    assert first.kl == 0.0
    assert second.kl > 0.0


def test_schedule_warmup_then_constant_and_cosine_decay() -> None:
    batch = make_batch(6)
    trainer = TorchTrainer(tiny_model(), config=config(warmup_steps=4, max_steps=8), pad_token_id=0)
    rates = [trainer.step(batch).learning_rate for _ in range(6)]
    assert rates == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    cosine = TorchTrainer(
        tiny_model(), config=config(schedule="cosine", warmup_steps=0, max_steps=4), pad_token_id=0
    )
    rates = [cosine.step(batch).learning_rate for _ in range(4)]
    assert rates[0] == pytest.approx(1e-3) and rates[2] == pytest.approx(5e-4) and rates[3] < rates[2]


def test_several_iterations_clip_against_the_first_pass() -> None:
    batch = make_batch(7)
    one = TorchTrainer(tiny_model(), config=config(learning_rate=5e-2), pad_token_id=0)
    two = TorchTrainer(
        tiny_model(), config=config(learning_rate=5e-2, iterations_per_batch=2), pad_token_id=0
    )
    captured = capture_gradients(two)
    stats_one, stats_two = one.step(batch), two.step(batch)
    assert len(captured) == 2 and two.step_count == 1
    assert stats_one.clip_fraction == 0.0
    assert stats_two.clip_fraction > 0.0  # the second pass moved past 1 ± ε on some tokens
    differs = any(
        not torch.equal(a, b) for a, b in zip(one.model.parameters(), two.model.parameters(), strict=True)
    )
    assert differs


def test_bf16_and_gradient_checkpointing_steps() -> None:
    batch = make_batch(8)
    plain = TorchTrainer(tiny_model(), config=config(), pad_token_id=0)
    checkpointed = TorchTrainer(tiny_model(), config=config(gradient_checkpointing=True), pad_token_id=0)
    assert checkpointed.step(batch).loss == pytest.approx(plain.step(batch).loss, abs=1e-6)
    bf16 = TorchTrainer(tiny_model(), config=config(precision="bf16"), pad_token_id=0)
    stats = bf16.step(batch)
    assert stats.loss == pytest.approx(plain.step(batch).loss, abs=0.1) and torch.isfinite(
        torch.tensor(stats.loss)
    )


def test_bad_batches_and_configs_are_rejected() -> None:
    trainer = TorchTrainer(tiny_model(), config=config(), pad_token_id=0)
    with pytest.raises(ValueError, match="no sequences"):
        trainer.step(TrainBatch(()))
    masked = TrainSequence("student", (1, 2), (3, 4), (False, False), 1.0)
    with pytest.raises(ValueError, match="every token is masked"):
        trainer.step(TrainBatch((masked,)))
    with pytest.raises(ValueError, match="klBeta"):
        TorchTrainer(tiny_model(), config=config(kl_beta=0.1), pad_token_id=0)


def test_in_process_weight_sync_checks_the_shared_module() -> None:
    model = tiny_model()
    trainer = TorchTrainer(model, config=config(), pad_token_id=0)

    class Holder:
        def __init__(self, module: torch.nn.Module) -> None:
            self.model = module

    sync = InProcessWeightSync(Holder(model))
    assert sync.push(trainer) == 1 and sync.push(trainer) == 2 and sync.version == 2
    with pytest.raises(WeightSyncError, match="different module"):
        InProcessWeightSync(Holder(tiny_model())).push(trainer)
    with pytest.raises(WeightSyncError, match="different module"):
        InProcessWeightSync(Holder(tiny_model()), trainer)


# ------------------------------------------------------------------------------------------- resume
RESUME_SCRIPT = """
import json, random, sys
import numpy as np, torch
sys.path.insert(0, {tests!r})
from test_trainer_torch import tiny_model, make_batch, config
from opensir.rl.trainer import TorchTrainer
trainer = TorchTrainer(tiny_model(seed=123), config=config(**{overrides!r}), pad_token_id=0)
trainer.load({checkpoint!r})
losses = [trainer.step(make_batch(seed)).loss for seed in (12, 13)]
rng = [random.random(), float(np.random.rand()), float(torch.rand(1))]
print(json.dumps({{"losses": losses, "step": trainer.step_count, "rng": rng}}))
"""


def test_save_load_in_a_fresh_process_continues_identically(tmp_path: Path) -> None:
    overrides = {"warmup_steps": 2, "max_steps": 10, "schedule": "cosine", "kl_beta": 0.0}

    def run(trainer: TorchTrainer, seeds: tuple[int, ...]) -> list[float]:
        return [trainer.step(make_batch(seed)).loss for seed in seeds]

    import random

    import numpy as np

    uninterrupted = TorchTrainer(tiny_model(), config=config(**overrides), pad_token_id=0)
    expected = run(uninterrupted, (10, 11, 12, 13))

    interrupted = TorchTrainer(tiny_model(), config=config(**overrides), pad_token_id=0)
    assert run(interrupted, (10, 11)) == expected[:2]
    checkpoint = tmp_path / "step-2"
    checkpoint.mkdir()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    interrupted.save(checkpoint)
    rng_after_save = [random.random(), float(np.random.rand()), float(torch.rand(1))]
    assert (checkpoint / "model" / "model.safetensors").is_file()

    script = RESUME_SCRIPT.format(
        tests=str(Path(__file__).parent), overrides=overrides, checkpoint=str(checkpoint)
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    assert resumed["losses"] == expected[2:]  # bit-identical
    assert resumed["step"] == 4
    assert resumed["rng"] == rng_after_save


def test_load_rejects_a_directory_without_checkpoint(tmp_path: Path) -> None:
    trainer = TorchTrainer(tiny_model(), config=config(), pad_token_id=0)
    with pytest.raises(FileNotFoundError, match=r"trainer_state\.json"):
        trainer.load(tmp_path)
