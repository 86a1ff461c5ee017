"""Getting the trainer's new weights into the generator.

The :class:`~opensir.engines.base.WeightSync` protocol is the seam; which implementation stands
behind it follows ``rollout.weightSync``:

- ``inprocess`` (this module): the generator samples from the trainer's own ``nn.Module``, so
  the weights are already there; push only checks that and counts versions.
- ``store``, ``lora`` and ``broadcast`` (later): write the weights (or the LoRA adapter) to the
  artifact store, or broadcast them over NCCL, then ask the rollout server to load them and wait
  until it reports the new version; push must not return before the server serves it.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from opensir.engines.base import Trainer
from opensir.errors import OpensirError


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
