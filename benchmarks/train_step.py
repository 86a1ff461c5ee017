"""Time and peak memory of one GRPO optimizer step: opensir's TorchTrainer next to TRL's GRPOTrainer.

Both do the same work on the same model (SmolLM2-135M-Instruct, fp32, CPU) and the same fixed batch:
reference log-probabilities from a frozen copy of the initial policy (β = 1e-4), then the policy's
forward and backward over the batch in micro-batches, the clipped GRPO loss as the token-level mean
over the whole batch (TRL: ``loss_type="dapo"``, which normalises by the batch's loss tokens too),
gradient-norm clipping at 0.5 and one AdamW update (lr 3e-7, constant with warmup).

TRL generates inside ``training_step``; to time only the update, its trainer is built as usual and
then driven the way its ``training_step`` drives it after generation: ``compute_loss`` on inputs in
TRL's own layout (left-padded prompts, right-padded completions, masks, advantages, reference
log-probabilities from ``_get_per_token_logps_and_entropies`` of its ``ref_model``), backward,
clipping and ``optimizer.step``. Each engine runs in its own process, so the peak resident memory
(``ru_maxrss``: model loading included, so it counts policy + reference + AdamW state + the step's
activations) is its own. The first step is a warm-up; the table gives the median of the rest.

    .venv/bin/python benchmarks/train_step.py            # prints a markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

MODEL = "builtin:smollm2-135m-instruct"
BETA = 1e-4


def make_batch(args: argparse.Namespace, vocab: int):
    """The fixed batch: ragged prompts and completions of both roles, some tokens out of the loss."""
    from opensir.seams import TrainBatch, TrainSequence

    g = torch.Generator().manual_seed(0)
    sequences = []
    for i in range(args.sequences):
        prompt_len = int(torch.randint(args.prompt_tokens // 2, args.prompt_tokens + 1, (1,), generator=g))
        completion_len = int(
            torch.randint(args.completion_tokens // 2, args.completion_tokens + 1, (1,), generator=g)
        )
        mask = (torch.rand(completion_len, generator=g) > 0.1).tolist()
        sequences.append(
            TrainSequence(
                role="teacher" if i % 4 == 0 else "student",
                prompt_ids=tuple(torch.randint(100, vocab, (prompt_len,), generator=g).tolist()),
                completion_ids=tuple(torch.randint(100, vocab, (completion_len,), generator=g).tolist()),
                loss_mask=tuple(bool(m) for m in mask),
                advantage=float(torch.randn(1, generator=g)),
            )
        )
    return TrainBatch(tuple(sequences))


def run_opensir(args: argparse.Namespace) -> dict[str, object]:
    from opensir.models import load_causal_lm
    from opensir.rl.trainer import TorchTrainer, frozen_copy
    from opensir.spec import ModelSpec, TrainingSpec

    model = load_causal_lm(ModelSpec(name=MODEL), "cpu", torch.float32)
    batch = make_batch(args, model.config.vocab_size)
    config = TrainingSpec(
        kl_beta=BETA, micro_batch_size=args.micro_batch, learning_rate=3e-7, max_grad_norm=0.5
    )
    trainer = TorchTrainer(model, config=config, pad_token_id=0, ref_model=frozen_copy(model))
    times, losses = [], []
    for _ in range(args.steps):
        started = time.perf_counter()
        stats = trainer.step(batch)
        times.append(time.perf_counter() - started)
        losses.append(stats.loss)
    return {"times": times, "losses": losses, "tokens": batch.num_tokens}


def run_trl(args: argparse.Namespace) -> dict[str, object]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from opensir.models import resolve_model

    path = str(resolve_model(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(path)
    micro = args.micro_batch
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=args.sequences // micro,
        num_generations=micro,
        beta=BETA,
        loss_type="dapo",
        learning_rate=3e-7,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=25,
        max_grad_norm=0.5,
        max_completion_length=args.completion_tokens,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        model_init_kwargs={"dtype": torch.float32},
    )
    trainer = GRPOTrainer(
        model=path,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=config,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * args.sequences}),
        processing_class=tokenizer,
    )
    model = trainer.model
    trainer.create_optimizer_and_scheduler(num_training_steps=200)
    # What HF Trainer's training loop sets before it calls training_step.
    trainer.current_gradient_accumulation_steps = config.gradient_accumulation_steps
    batch = make_batch(args, model.config.vocab_size)
    pad = tokenizer.pad_token_id
    sequences = batch.sequences
    chunks = [sequences[i : i + micro] for i in range(0, len(sequences), micro)]
    layouts = [_trl_inputs(chunk, pad) for chunk in chunks]
    times, losses = [], []
    for _ in range(args.steps):
        started = time.perf_counter()
        model.train()
        total = torch.tensor(float(batch.num_tokens))
        step_loss = 0.0
        for inputs in layouts:
            with torch.no_grad():
                ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
                attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
                inputs["ref_per_token_logps"], _, _ = trainer._get_per_token_logps_and_entropies(
                    trainer.ref_model, ids, attention, inputs["completion_ids"].size(1), micro
                )
            inputs["num_items_in_batch"] = total
            loss = trainer.compute_loss(model, inputs)
            trainer.accelerator.backward(loss)
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
        losses.append(step_loss)
    return {"times": times, "losses": losses, "tokens": batch.num_tokens}


def _trl_inputs(sequences, pad: int) -> dict[str, torch.Tensor]:
    """TRL's training inputs: prompts left-padded, completions right-padded, loss mask = completion_mask."""
    prompt_width = max(len(s.prompt_ids) for s in sequences)
    completion_width = max(len(s.completion_ids) for s in sequences)
    rows = len(sequences)
    prompt_ids = torch.full((rows, prompt_width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((rows, prompt_width), dtype=torch.long)
    completion_ids = torch.full((rows, completion_width), pad, dtype=torch.long)
    completion_mask = torch.zeros((rows, completion_width), dtype=torch.long)
    for row, s in enumerate(sequences):
        prompt_ids[row, prompt_width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
        prompt_mask[row, prompt_width - len(s.prompt_ids) :] = 1
        completion_ids[row, : len(s.completion_ids)] = torch.tensor(s.completion_ids)
        completion_mask[row, : len(s.completion_ids)] = torch.tensor(s.loss_mask, dtype=torch.long)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([s.advantage for s in sequences], dtype=torch.float32),
    }


def child(args: argparse.Namespace) -> None:
    result = run_opensir(args) if args.engine == "opensir" else run_trl(args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequences", type=int, default=8, help="sequences in the batch (default 8)")
    parser.add_argument("--prompt-tokens", type=int, default=96, help="longest prompt (default 96)")
    parser.add_argument("--completion-tokens", type=int, default=128, help="longest completion (default 128)")
    parser.add_argument(
        "--micro-batch", type=int, default=4, help="sequences per forward/backward (default 4)"
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="optimizer steps, the first a warm-up (default 3)"
    )
    parser.add_argument("--engine", choices=["opensir", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        child(args)
        return
    if args.sequences % args.micro_batch:
        parser.error("--sequences must be a multiple of --micro-batch (TRL's accumulation needs it)")

    results = {}
    for engine in ("opensir", "trl"):
        command = [sys.executable, __file__, "--engine", engine, *sys.argv[1:]]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"{engine} failed:\n{done.stderr[-4000:]}")
        results[engine] = json.loads(lines[-1].removeprefix("RESULT "))

    def seconds(engine: str) -> float:
        return statistics.median(results[engine]["times"][1:] or results[engine]["times"])

    ours, trl = results["opensir"], results["trl"]
    print(
        f"One GRPO optimizer step on {MODEL} (fp32, CPU, {torch.get_num_threads()} threads): "
        f"{args.sequences} sequences, prompts <= {args.prompt_tokens} and completions <= "
        f"{args.completion_tokens} tokens ({ours['tokens']} loss tokens), "
        f"micro-batches of {args.micro_batch}, beta {BETA}; "
        f"median of {max(args.steps - 1, 1)} steps after a warm-up.\n"
    )
    print("| engine | step time (s) | all steps (s) | peak RSS (MiB) | first-step loss |")
    print("|---|---:|---:|---:|---:|")
    for name, engine in (("opensir TorchTrainer", "opensir"), ("TRL GRPOTrainer", "trl")):
        r = results[engine]
        steps = ", ".join(f"{t:.2f}" for t in r["times"])
        print(
            f"| {name} | {seconds(engine):.2f} | {steps} | {r['peak_rss_mib']:.0f} | {r['losses'][0]:+.6f} |"
        )
    print(
        f"| **ratio opensir / TRL** | **{seconds('opensir') / seconds('trl'):.2f}** | | "
        f"**{ours['peak_rss_mib'] / trl['peak_rss_mib']:.2f}** | |"
    )


if __name__ == "__main__":
    main()
