"""The DeepSpeed trainer with 2 processes on CPU (gloo), launched by torchrun like on a cluster.

Tolerances: the DeepSpeed runs reduce gradients over 2 processes, so the sums are taken in another
order than in the one-process torch trainer; after 4 AdamW steps (lr 1e-3) parameters agree to
1e-6 absolute and losses to 1e-6 relative (observed: ~2e-8). Resuming a DeepSpeed run in fresh
processes is exact: losses and weights are bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from opensir.rl.deepspeed_trainer import deepspeed_config
from opensir.rl.lora import apply_lora
from opensir.rl.trainer import TorchTrainer, frozen_copy

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer_torch import config, make_batch, tiny_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).parent / "deepspeed_worker.py"
SEEDS = (10, 11, 12, 13)
# Several micro-batches per process, one process with a stand-in pass (7 sequences in chunks of 3),
# a KL reference that differs from the policy after step 1, warmup and active clipping.
OVERRIDES = {"micro_batch_size": 3, "kl_beta": 0.1, "warmup_steps": 2, "max_grad_norm": 0.5}


def torchrun(tmp: Path, name: str, *args: str, processes: int = 2, timeout: int = 600) -> dict:
    """Run the worker under torchrun with ``processes`` processes; rank 0's result."""
    out = tmp / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        str(WORKER),
        "--out",
        str(out),
        *args,
    ]
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(out.read_text())
    result["weights"] = torch.load(f"{out}.weights.pt", weights_only=True)
    return result


def torch_run(seeds: tuple[int, ...], **extra: object) -> tuple[list[float], dict[str, torch.Tensor]]:
    spec = config(**OVERRIDES, **extra)
    model = tiny_model()
    if spec.lora.enabled:
        model = apply_lora(model, spec.lora)
    reference = None if spec.lora.enabled else frozen_copy(model)
    trainer = TorchTrainer(model, config=spec, pad_token_id=0, ref_model=reference)
    losses = [trainer.step(make_batch(seed, count=7)).loss for seed in seeds]
    return losses, trainer.model.state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ds-full")
    seeds = [str(s) for s in SEEDS]
    return torchrun(tmp, "full", "--stage", "2", "--overrides", json.dumps(OVERRIDES), "--seeds", *seeds)


def assert_same_parameters(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=name)


def test_config_follows_the_spec() -> None:
    spec = config(engine="deepspeed", deepspeed={"stage": 3, "offloadOptimizer": True, "offloadParams": True})
    ds = deepspeed_config(spec)
    assert ds["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu"},
        "offload_param": {"device": "cpu"},
    }
    assert ds["gradient_clipping"] == spec.max_grad_norm
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["train_micro_batch_size_per_gpu"] == spec.micro_batch_size
    assert ds["bf16"] == {"enabled": False}


def test_zero2_on_two_processes_matches_the_torch_trainer(uninterrupted: dict) -> None:
    losses, weights = torch_run(SEEDS)
    assert uninterrupted["world_size"] == 2 and uninterrupted["stage"] == 2
    assert uninterrupted["step_count"] == len(SEEDS)
    assert [s["loss"] for s in uninterrupted["stats"]] == pytest.approx(losses, rel=1e-6, abs=1e-7)
    assert [s["learning_rate"] for s in uninterrupted["stats"]] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
    assert all(s["grad_norm"] > OVERRIDES["max_grad_norm"] for s in uninterrupted["stats"])  # clipping on
    assert uninterrupted["stats"][-1]["kl"] > 0
    assert set(uninterrupted["stats"][0]["loss_by_role"]) == {"teacher", "student"}
    assert_same_parameters(uninterrupted["weights"], weights)


def test_zero3_on_two_processes_matches_the_torch_trainer(tmp_path: Path) -> None:
    seeds = SEEDS[:2]
    result = torchrun(
        tmp_path, "z3", "--stage", "3", "--overrides", json.dumps(OVERRIDES), "--seeds", *map(str, seeds)
    )
    losses, weights = torch_run(seeds)
    assert result["stage"] == 3
    assert [s["loss"] for s in result["stats"]] == pytest.approx(losses, rel=1e-6, abs=1e-7)
    assert_same_parameters(result["weights"], weights)


@pytest.mark.parametrize(
    "extra",
    [
        {"deepspeed": {"stage": 2, "offloadOptimizer": True}},
        {"lora": {"enabled": True, "rank": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}},
    ],
    ids=["zero2-offload-optimizer", "zero2-lora"],
)
def test_offload_and_lora_match_the_torch_trainer(tmp_path: Path, extra: dict) -> None:
    seeds = SEEDS[:3]  # the first step has learning rate 0 (warmup); the third sees moved weights
    overrides = json.dumps({**OVERRIDES, **extra})
    result = torchrun(tmp_path, "variant", "--overrides", overrides, "--seeds", *map(str, seeds))
    losses, weights = torch_run(seeds, **{k: v for k, v in extra.items() if k != "deepspeed"})
    assert [s["loss"] for s in result["stats"]] == pytest.approx(losses, rel=1e-6, abs=1e-7)
    assert_same_parameters(result["weights"], weights)
    if "lora" in extra:
        assert result["stats"][2]["kl"] > 0  # the reference is the base model with adapters disabled


def test_save_and_load_in_fresh_processes_continue_exactly(uninterrupted: dict, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    overrides = json.dumps(OVERRIDES)
    first = torchrun(
        tmp_path, "first", "--overrides", overrides, "--seeds", "10", "11", "--save", str(checkpoint)
    )
    resumed = torchrun(
        tmp_path, "resumed", "--overrides", overrides, "--load", str(checkpoint), "--seeds", "12", "13"
    )
    expected = [s["loss"] for s in uninterrupted["stats"]]
    assert [s["loss"] for s in first["stats"] + resumed["stats"]] == expected  # bit-identical
    assert resumed["step_count"] == 4
    for name, value in uninterrupted["weights"].items():
        assert torch.equal(resumed["weights"][name], value), name
    # Each rank's RNG state is restored: after loading, every rank draws what it drew after saving.
    assert resumed["rng_at_checkpoint"] == first["rng_at_checkpoint"]
    assert len(set(first["rng_at_checkpoint"])) == 2

    # The checkpoint carries DeepSpeed's per-rank shards and consolidated weights any loader reads.
    assert sorted(p.name for p in (checkpoint / "zero").glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    assert {p.name for p in checkpoint.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state == {"format": 1, "engine": "deepspeed", "step_count": 2, "world_size": 2, "zero_stage": 2}
    exported = LlamaForCausalLM.from_pretrained(checkpoint / "model")
    for name, value in first["weights"].items():
        assert torch.equal(exported.state_dict()[name], value), name


def test_resume_with_another_world_size_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    torchrun(tmp_path, "save", "--seeds", "10", "--save", str(checkpoint))
    out = tmp_path / "one.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(WORKER), "--out", str(out), "--load", str(checkpoint)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    assert "saved by 2 processes; this run has 1" in done.stderr


@pytest.mark.slow
def test_zero3_trains_smollm2_on_two_processes(tmp_path: Path) -> None:
    result = torchrun(
        tmp_path,
        "smollm",
        "--smollm",
        "--stage",
        "3",
        "--overrides",
        json.dumps({"micro_batch_size": 2, "learning_rate": 1e-5}),
        "--seeds",
        "10",
    )
    (stats,) = result["stats"]
    assert result["stage"] == 3 and result["world_size"] == 2
    assert torch.isfinite(torch.tensor([stats["loss"], stats["grad_norm"]])).all()
    assert stats["grad_norm"] > 0 and stats["tokens"] > 0
    from opensir.models import load_causal_lm
    from opensir.spec import ModelSpec

    initial = load_causal_lm(
        ModelSpec(name="builtin:smollm2-135m-instruct"), torch.device("cpu"), torch.float32
    )
    trained = result["weights"]
    assert set(trained) == set(initial.state_dict())
    moved = [name for name, value in initial.state_dict().items() if not torch.equal(trained[name], value)]
    assert len(moved) > len(trained) // 2  # the step changed (nearly) every weight
