"""Getting the trainer's new weights into the generator: the seam, and the in-process case.

The :class:`~opensir.seams.WeightSync` protocol is the seam; which implementation stands
behind it follows ``rollout.weightSync`` (see :meth:`~opensir.spec.SelfPlayRunSpec.weight_sync_kind`):

- ``inprocess`` (:class:`InProcessWeightSync`): the generator samples from the trainer's own
  ``nn.Module``, so the weights are already there; push only checks that and counts versions.
- the in-process vLLM engine loads the weights, or a LoRA adapter, in place
  (:class:`opensir.engines.vllm_local.VLLMWeightSync`);
- ``store``, ``lora`` and ``broadcast`` push to the rollout servers (:mod:`opensir.engines.server_sync`).

Every push returns only once the generator serves the new version; a failure raises
:class:`WeightSyncError` with the cause, so a run never goes on sampling from a stale policy.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from opensir.errors import OpensirError
from opensir.files import atomic_directory
from opensir.models import is_peft_model
from opensir.seams import Trainer

log = logging.getLogger(__name__)


class _HasModel(Protocol):
    @property
    def model(self) -> nn.Module: ...


class WeightSyncError(OpensirError, RuntimeError):
    """The generator would not serve the trainer's weights."""


class InProcessWeightSync:
    """Weight sync for local runs where the generator shares the trainer's module.

    Nothing is copied: an optimizer step already changed the weights the generator reads. ``push``
    verifies that the generator really holds the trainer's module (a copy would silently keep
    sampling from the initial policy) and returns the new version number.
    """

    def __init__(self, generator: _HasModel, trainer: Trainer | None = None, *, version: int = 0) -> None:
        """``trainer``, when given, is checked right away so that miswiring fails at start-up."""
        self._generator = generator
        self._version = version
        if trainer is not None:
            self._check(trainer)

    @property
    def version(self) -> int:
        """The weights version the generator serves (0 = the initial weights)."""
        return self._version

    def push(self, trainer: Trainer) -> int:
        """Check that the generator samples from the trainer's module; bump and return the version."""
        self._check(trainer)
        self._version += 1
        return self._version

    def _check(self, trainer: Trainer) -> None:
        trained = getattr(trainer, "model", None)
        if not isinstance(trained, nn.Module):
            raise WeightSyncError(
                f"{type(trainer).__name__} exposes no .model module; in-process weight sync needs the "
                f"trainer's nn.Module (use weightSync: store for this trainer)"
            )
        served = self._generator.model
        if served is not trained:
            raise WeightSyncError(
                f"the generator samples from a different module ({type(served).__name__} at {id(served):#x}) "
                f"than the trainer updates ({type(trained).__name__} at {id(trained):#x}); in-process weight "
                f"sync needs both to share one module"
            )


def trainer_module(trainer: Trainer) -> nn.Module:
    """The module the trainer updates, which every push takes the weights from."""
    model = getattr(trainer, "model", None)
    if not isinstance(model, nn.Module):
        raise WeightSyncError(f"{type(trainer).__name__} exposes no .model module to take weights from")
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under their Hugging Face checkpoint names, each shared tensor once.

    Tied weights (an output head tied to the embedding) keep the name registered first, the
    embedding's, which is the name vLLM loads tied heads from.
    """
    if is_peft_model(model):
        raise WeightSyncError(
            "the trainer's model is a LoRA (peft) model: its full weights are base + adapter; "
            "use weightSync: lora to push the adapter"
        )
    seen: set[object] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        # The same memory seen as the same tensor (a tied head); views of one storage are kept apart.
        key: object = id(tensor)
        if tensor.numel():
            key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach()
    return tensors


def version_name(version: int) -> str:
    """The name of weights version ``version`` in a directory or store (``v000007``)."""
    return f"v{version:06d}"


def write_adapter(model: nn.Module, directory: Path, version: int, *, keep: int = 2) -> Path:
    """The LoRA adapter of a peft ``model`` in peft's ``save_pretrained`` layout, as
    ``directory/v<version>``: written under a temporary name and renamed when complete, so a reader
    never sees half of it. All but the newest ``keep`` versions are removed."""
    if not is_peft_model(model):
        raise WeightSyncError(
            f"LoRA weight sync needs a LoRA (peft) model; the trainer's model is {type(model).__name__}"
        )
    final = directory / version_name(version)
    with atomic_directory(final) as staging:
        model.save_pretrained(str(staging))  # type: ignore[operator]
    for stale in sorted(p for p in directory.glob("v*") if p.is_dir())[:-keep]:
        try:
            shutil.rmtree(stale)
        except OSError as error:
            # Pruning is housekeeping: an old version left behind costs disk space, not correctness.
            log.warning("could not remove the old adapter %s: %s", stale, error)
    return final
