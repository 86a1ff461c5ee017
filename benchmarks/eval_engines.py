"""Evaluation throughput of the generation engines on the same workload: which one to run the
baseline with.

Samples the student answers of a fixed, seeded set of benchmark problems through each engine (hf:
transformers in this process; vllm: a local vLLM server from .venv-vllm, its start-up timed apart)
and prints one markdown row per engine: responses, generated tokens, seconds, tokens per second.
No scoring: only generation is timed. Run it on a quiet machine.

    .venv/bin/python benchmarks/eval_engines.py [--engines hf vllm] [--problems 16] [--samples 2]
        [--max-tokens 256] [--prompts-per-batch 8] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from opensir.evaluation.datasets import default_data_dir
from opensir.evaluation.harness import PAPER_SAMPLING, EvalSettings, load_problems
from opensir.evaluation.targets import load_tokenizer_for, model_target, open_generator
from opensir.selfplay.prompts import render_prompt, student_messages

MODEL = "builtin:smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument("--benchmark", default="gsm8k")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--prompts-per-batch", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16, help="rows decoded together by hf")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the hf engine")
    args = parser.parse_args()

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    data_dir = default_data_dir()
    settings = EvalSettings(
        benchmarks=(args.benchmark,),
        samples=args.samples,
        max_problems=args.problems,
        sampling=replace(PAPER_SAMPLING, max_tokens=args.max_tokens, seed=0),
        data_dir=str(data_dir) if data_dir else None,
    )
    target = model_target(MODEL)
    tokenizer = load_tokenizer_for(target)
    problems = load_problems(settings)[args.benchmark]
    prompts = [render_prompt(tokenizer, student_messages(p.question)) for p in problems]

    rows = []
    for engine in args.engines:
        with tempfile.TemporaryDirectory(prefix="eval-bench-") as logs:
            started = time.perf_counter()
            with open_generator(
                engine, target, tokenizer, batch_size=args.batch_size, log_dir=Path(logs)
            ) as gen:
                ready = time.perf_counter() - started
                tokens = responses = 0
                begin = time.perf_counter()
                for i in range(0, len(prompts), args.prompts_per_batch):
                    out = gen.generate(
                        prompts[i : i + args.prompts_per_batch], args.samples, settings.sampling
                    )
                    responses += sum(len(c) for c in out)
                    tokens += sum(len(x.token_ids) for c in out for x in c)
                seconds = time.perf_counter() - begin
        rows.append((engine, ready, responses, tokens, seconds))

    print(
        f"Evaluation generation, {MODEL}, {args.problems} {args.benchmark} problems x n={args.samples}, "
        f"max tokens {args.max_tokens}, {args.prompts_per_batch} prompts per call; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    print("| engine | start-up s | responses | tokens | generation s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for engine, ready, responses, tokens, seconds in rows:
        print(f"| {engine} | {ready:.1f} | {responses} | {tokens} | {seconds:.1f} | {tokens / seconds:.1f} |")


if __name__ == "__main__":
    main()
