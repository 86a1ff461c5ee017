"""LoRA mode of the torch trainer (peft) on the tiny Llama: adapters train, the base is the reference."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from opensir.rl.lora import LoraError, apply_lora
from opensir.rl.trainer import TorchTrainer, sequence_logprobs
from opensir.spec import LoraSpec

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer_torch import config, make_batch, tiny_model

pytestmark = pytest.mark.integration

LORA = {"enabled": True, "rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj", "up_proj"]}


def lora_trainer(**overrides: object) -> TorchTrainer:
    spec = config(lora=LORA, learning_rate=1e-2, **overrides)
    return TorchTrainer(apply_lora(tiny_model(), spec.lora), config=spec, pad_token_id=0)


def test_only_adapters_train_and_the_base_is_the_reference() -> None:
    trainer = lora_trainer(kl_beta=0.1)
    assert trainer.ref_model is None  # no second copy: the base model with adapters off is the reference
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    adapters_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert adapters_before and all(
        p.requires_grad == ("lora_" in n) for n, p in trainer.model.named_parameters()
    )
    first = trainer.step(make_batch(1))
    second = trainer.step(make_batch(1))
    assert first.kl == 0.0  # LoRA B starts at zero: policy == base
    assert second.kl > 0.0
    for name, value in trainer.model.named_parameters():
        if "lora_" in name:
            continue
        assert torch.equal(value, base_before[name]), name
    assert any(
        not torch.equal(p, adapters_before[n]) for n, p in trainer.model.named_parameters() if "lora_" in n
    )
    # The reference really is the untouched base: equal to a fresh copy of the initial model.
    batch = make_batch(2)
    with torch.no_grad(), trainer.model.disable_adapter():
        base_lp, _ = sequence_logprobs(trainer.model, batch, pad_token_id=0)
    with torch.no_grad():
        fresh_lp, _ = sequence_logprobs(tiny_model().eval(), batch, pad_token_id=0)
        trained_lp, _ = sequence_logprobs(trainer.model.eval(), batch, pad_token_id=0)
    torch.testing.assert_close(base_lp, fresh_lp)
    assert not torch.allclose(trained_lp, fresh_lp)


def test_first_step_loss_equals_full_finetuning() -> None:
    batch = make_batch(3)
    full = TorchTrainer(tiny_model(), config=config(), pad_token_id=0)
    assert lora_trainer().step(batch).loss == pytest.approx(full.step(batch).loss, abs=1e-6)


def test_adapter_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    uninterrupted = lora_trainer()
    expected = [uninterrupted.step(make_batch(seed)).loss for seed in (4, 5, 6)]
    first = lora_trainer()
    assert [first.step(make_batch(4)).loss] == expected[:1]
    first.save(tmp_path)
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "model" / "model.safetensors").exists()  # the adapter only
    resumed = lora_trainer()
    resumed.load(tmp_path)
    assert [resumed.step(make_batch(seed)).loss for seed in (5, 6)] == expected[1:]


def test_gradient_checkpointing_with_adapters() -> None:
    batch = make_batch(7)
    plain, checkpointed = lora_trainer(), lora_trainer(gradient_checkpointing=True)
    plain.step(batch)
    checkpointed.step(batch)
    assert checkpointed.step(batch).loss == pytest.approx(plain.step(batch).loss, abs=1e-6)


def test_unknown_target_modules_are_named() -> None:
    with pytest.raises(LoraError, match=r"\['c_attn'\]"):
        apply_lora(tiny_model(), LoraSpec(enabled=True, target_modules=["q_proj", "c_attn"]))


# ------------------------------------------------------------------------------------------ factory
def run_spec(**training: object):
    from opensir.spec import load_run

    run = load_run(Path(__file__).resolve().parents[2] / "examples" / "tiny-cpu.yaml")
    return run.spec.model_copy(update={"training": config(**training)})


def test_factory_builds_the_lora_trainer_without_a_reference_copy() -> None:
    from opensir.assembly import build_trainer

    trainer = build_trainer(run_spec(lora=LORA, kl_beta=0.1), tiny_model(), 0, "cpu")
    assert isinstance(trainer, TorchTrainer)
    assert trainer.ref_model is None and hasattr(trainer.model, "peft_config")
    plain = build_trainer(run_spec(kl_beta=0.1), tiny_model(), 0, "cpu")
    assert plain.ref_model is not None and plain.ref_model is not plain.model


def test_a_run_with_zero3_is_refused_when_validated() -> None:
    from opensir.spec import SpecError, dump_run, load_run, parse_run

    document = dump_run(load_run(Path(__file__).resolve().parents[2] / "examples" / "tiny-cpu.yaml"))
    document["spec"]["training"].update(engine="deepspeed", deepspeed={"stage": 3})
    with pytest.raises(SpecError) as caught:
        parse_run(document)
    [(path, value, message)] = caught.value.problems
    assert (path, value) == ("spec.training.deepspeed.stage", 3) and "partitions" in message


def test_only_ranks_above_zero_of_a_deepspeed_launch_follow(monkeypatch: pytest.MonkeyPatch) -> None:
    from opensir.assembly import is_training_follower

    monkeypatch.setenv("RANK", "1")
    assert is_training_follower(run_spec(engine="deepspeed"))
    assert not is_training_follower(run_spec(engine="torch"))
    monkeypatch.setenv("RANK", "0")
    assert not is_training_follower(run_spec(engine="deepspeed"))
