"""Run by tests/integration/test_vllm_local.py with the vLLM environment's Python (.venv-vllm):
the in-process VLLMGenerator and VLLMWeightSync (full weights and a LoRA adapter) on
SmolLM2-135M-Instruct, checked against transformers in the same process. Prints one JSON line of
measurements; exits non-zero on failure.

    .venv-vllm/bin/python tests/integration/vllm_local_check.py MODEL_DIR
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import peft
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from opensir.engines.hf import HFGenerator
from opensir.engines.vllm_local import VLLMGenerator, VLLMWeightSync
from opensir.models import eos_token_ids
from opensir.rl.trainer import sequence_logprobs
from opensir.seams import SamplingParams, TrainSequence

QUESTIONS = ["What is 1+1?", "Name one prime number."]


@dataclass
class _Trainer:
    model: nn.Module


def main(model_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = []
    for question in QUESTIONS:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        prompts.append(list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded))
    engine = VLLMGenerator(model_dir, dtype="float32", max_model_len=1024, seed=0)

    groups = engine.generate(prompts, 4, SamplingParams(temperature=1.0, max_tokens=24, seed=5))
    assert [len(g) for g in groups] == [4, 4], groups
    sequences = [
        TrainSequence(
            role="student",
            prompt_ids=tuple(p),
            completion_ids=c.token_ids,
            loss_mask=(True,) * len(c.token_ids),
            advantage=0.0,
        )
        for p, g in zip(prompts, groups, strict=True)
        for c in g
    ]
    with torch.no_grad():
        scored, valid = sequence_logprobs(policy, sequences, pad_token_id=tokenizer.pad_token_id or 0)
    worst = 0.0
    for row, completion in enumerate(c for g in groups for c in g):
        assert completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids)
        trainer = scored[row][valid[row]].tolist()
        worst = max(worst, max(abs(a - b) for a, b in zip(completion.logprobs, trainer, strict=True)))

    local = HFGenerator(policy, tokenizer, batch_size=4, eos_token_ids=eos_token_ids(tokenizer))
    greedy = SamplingParams(temperature=0.0, max_tokens=16)
    before = [g[0].token_ids for g in engine.generate(prompts, 1, greedy)]
    same_before = before == [g[0].token_ids for g in local.generate(prompts, 1, greedy)]
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "embed_tokens" in name or "layers.0." in name or "layers.1." in name:
                parameter.add_(torch.randn(parameter.shape, generator=rng) * parameter.std() * 0.05)
    expected = [g[0].token_ids for g in local.generate(prompts, 1, greedy)]
    sync = VLLMWeightSync(engine)
    version = sync.push(_Trainer(policy))
    after = [g[0].token_ids for g in engine.generate(prompts, 1, greedy)]

    # Greedy with n > 1 (vLLM refuses it): n copies of the one greedy completion.
    repeated = engine.generate(prompts[:1], 3, greedy)[0]

    # A stop string: the text ends before it, and the token ids decode to exactly that text.
    plain = local.generate(prompts[:1], 1, SamplingParams(temperature=0.0, max_tokens=16))[0][0]
    stop = plain.text.split()[2]
    stopping = SamplingParams(temperature=0.0, max_tokens=16, stop=(stop,))
    cut = engine.generate(prompts[:1], 1, stopping)[0][0]

    # LoRA: the adapter of a peft model on the initial weights (which a LoRA engine holds) is loaded
    # into the engine; greedy output follows it.
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    lora = peft.get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op adapter); make it do something
                parameter.copy_(torch.randn(parameter.shape, generator=rng) * 0.05)
    adapted = HFGenerator(lora, tokenizer, batch_size=4, eos_token_ids=eos_token_ids(tokenizer))
    with_adapter = [g[0].token_ids for g in adapted.generate(prompts, 1, greedy)]
    lora_engine = VLLMGenerator(model_dir, dtype="float32", max_model_len=1024, seed=0, enable_lora=True)
    lora_sync = VLLMWeightSync(lora_engine)
    lora_version = lora_sync.push(_Trainer(lora))
    lora_after = [g[0].token_ids for g in lora_engine.generate(prompts, 1, greedy)]
    print(
        json.dumps(
            {
                "max_logprob_diff": worst,
                "greedy_equal_before": same_before,
                "update_changed_greedy": expected != before,
                "greedy_equal_after_push": after == expected,
                "version": version,
                "greedy_n3_repeats": [c.token_ids for c in repeated] == [after[0]] * 3,
                "stop_string": stop,
                "stopped_text": cut.text,
                "stopped_tokens_decode_to_text": tokenizer.decode(list(cut.token_ids)) == cut.text,
                "adapter_changed_greedy": with_adapter != expected,
                "lora_version": lora_version,
                "lora_request": lora_engine.lora_request.lora_name,
                "greedy_equal_after_lora_push": lora_after == with_adapter,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1])
