"""LoRA mode: train low-rank adapters (peft) on the frozen policy instead of all its weights.

The frozen base model doubles as the KL reference (the trainers compute reference log-probabilities
with the adapters disabled), so LoRA mode never holds a second copy of the weights. Checkpoints hold
the adapter only (peft's ``adapter_model.safetensors`` and ``adapter_config.json``).
"""

from __future__ import annotations

from torch import nn

from opensir.errors import OpensirError
from opensir.spec import LoraSpec


class LoraError(OpensirError, ValueError):
    """``training.lora`` does not fit the model (e.g. a target module it does not have)."""


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Wrap ``model`` in a peft model with fresh adapters on ``spec.targetModules``.

    peft injects the adapter layers into ``model`` itself, so a generator holding ``model`` keeps
    working; hand the returned peft model to the trainer and, for in-process sampling with the
    adapters, to the generator. Only the adapters require gradients afterwards.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise LoraError(
            "training.lora.enabled needs peft: pip install 'opensir[lora]' (scripts/setup.sh installs it)"
        ) from error
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(spec.target_modules) - names)
    if missing:
        raise LoraError(
            f"training.lora.targetModules names modules the model does not have: {missing} "
            f"(it has e.g. {sorted(n for n in names if n.endswith('proj'))[:8]})"
        )
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)  # type: ignore[arg-type,no-any-return]
