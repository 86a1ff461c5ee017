"""Training: GRPO's formulas, the batch a round becomes, and the trainers (torch; DeepSpeed ZeRO,
across processes, with rank 0 leading); LoRA mode."""
