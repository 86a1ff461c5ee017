"""One process of a DeepSpeed training test, started by torchrun from test_trainer_deepspeed.py.

Builds the tiny Llama of test_trainer_torch (or SmolLM2-135M with ``--smollm``), optionally loads a
checkpoint, takes a GRPO step on each batch seed, optionally saves, and on rank 0 writes the losses,
statistics and final weights to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from test_trainer_torch import config, make_batch, tiny_model

from opensir.rl import distributed
from opensir.rl.deepspeed_trainer import DeepSpeedTrainer
from opensir.rl.lora import apply_lora
from opensir.rl.trainer import frozen_copy


def draw_rng() -> list[float]:
    """A torch random draw of every rank, gathered on every rank."""
    draws: list[float | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(draws, float(torch.rand(1)))
    return [float(d) for d in draws if d is not None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="*", default=[])
    parser.add_argument("--overrides", default="{}", help="TrainingSpec fields as JSON")
    parser.add_argument("--load")
    parser.add_argument("--save")
    parser.add_argument("--smollm", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    overrides = json.loads(args.overrides)
    overrides.setdefault("deepspeed", {"stage": args.stage})
    spec = config(engine="deepspeed", **overrides)
    if args.smollm:
        from opensir.models import load_causal_lm
        from opensir.spec import ModelSpec

        torch.manual_seed(0)
        model = load_causal_lm(
            ModelSpec(name="builtin:smollm2-135m-instruct"), torch.device("cpu"), torch.float32
        )
        vocab = model.config.vocab_size
    else:
        model, vocab = tiny_model(), 97
    if spec.lora.enabled:
        model = apply_lora(model, spec.lora)
    reference = frozen_copy(model) if spec.kl_beta > 0 and not spec.lora.enabled else None
    trainer = DeepSpeedTrainer(model, config=spec, pad_token_id=0, ref_model=reference, device="cpu")
    rng_at_checkpoint = None
    if args.load:
        trainer.load(Path(args.load))
        rng_at_checkpoint = draw_rng()
    stats = []
    for seed in args.seeds:
        batch = make_batch(seed, count=7)
        if args.smollm:  # the tiny batches' token ids are valid for any vocabulary; spread them out
            batch = type(batch)(
                tuple(
                    type(s)(
                        s.role,
                        tuple(t * (vocab // 97) for t in s.prompt_ids),
                        tuple(t * (vocab // 97) for t in s.completion_ids),
                        s.loss_mask,
                        s.advantage,
                    )
                    for s in batch.sequences
                )
            )
        stats.append(asdict(trainer.step(batch)))
    if args.save:
        torch.manual_seed(1000 + trainer.rank)  # a state the loading processes cannot have by chance
        trainer.save(Path(args.save))
        rng_at_checkpoint = draw_rng()
    weights = trainer.full_state_dict()
    if trainer.rank == 0:
        assert weights is not None
        torch.save(weights, f"{args.out}.weights.pt")
        result = {
            "stats": stats,
            "step_count": trainer.step_count,
            "stage": trainer.stage,
            "world_size": trainer.world_size,
            "rng_at_checkpoint": rng_at_checkpoint,
        }
        Path(args.out).write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main()
