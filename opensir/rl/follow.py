"""Several training processes behind one trainer: rank 0 plays the rounds, the others only train.

The run loop stays one linear program on rank 0 (verl-style): its trainer is a :class:`LeaderTrainer`,
which, before each collective operation of the wrapped :class:`~opensir.rl.deepspeed_trainer.
DeepSpeedTrainer`, broadcasts what to do (step on this batch, save to or load from this directory).
Every other rank runs :func:`follow`, which receives those commands and takes part in the same
operation, until rank 0 says stop.

When rank 0 fails, it sends nothing: it may have failed inside a collective operation, where a
further broadcast would hang. Its process exits non-zero, and the launcher (torchrun, the deepspeed
launcher) then ends the other ranks; the Job restarts the group from the last committed checkpoint.
Followers wait for commands with the process group's timeout (:data:`opensir.rl.distributed.TIMEOUT`),
long enough for rank 0 to play a round, or a bootstrap phase, in between.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from opensir.rl import distributed
from opensir.rl.deepspeed_trainer import DeepSpeedTrainer
from opensir.seams import TrainBatch, TrainStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """What rank 0 asks the other ranks to do next."""

    kind: Literal["step", "save", "load", "stop"]
    batch: TrainBatch | None = None
    directory: str | None = None


class LeaderTrainer:
    """Rank 0's :class:`~opensir.seams.Trainer`: the DeepSpeed trainer, with the other ranks in tow."""

    def __init__(self, trainer: DeepSpeedTrainer) -> None:
        self.trainer = trainer
        self._closed = False

    @property
    def model(self) -> nn.Module:
        """The module the trainer updates (the in-process generator samples from it)."""
        return self.trainer.model

    @property
    def step_count(self) -> int:
        """Optimizer steps taken so far."""
        return self.trainer.step_count

    def step(self, batch: TrainBatch) -> TrainStats:
        """Send ``batch`` to every rank and take the step together."""
        distributed.broadcast_object(Command("step", batch=batch))
        return self.trainer.step(batch)

    def save(self, directory: Path) -> None:
        """Save together into rank 0's ``directory``."""
        distributed.broadcast_object(Command("save", directory=str(directory)))
        self.trainer.save(directory)

    def load(self, directory: Path) -> None:
        """Load together from rank 0's ``directory``."""
        distributed.broadcast_object(Command("load", directory=str(directory)))
        self.trainer.load(directory)

    def close(self) -> None:
        """Release the followers after the run loop ended (finished, or stopped by SIGTERM after a save)."""
        if not self._closed:
            self._closed = True
            distributed.broadcast_object(Command("stop"))


def follow(trainer: DeepSpeedTrainer) -> int:
    """Serve rank 0's commands until it stops; returns the optimizer steps taken.

    SIGTERM is ignored while following: on preemption rank 0 decides when to stop (after it has
    committed a checkpoint, which needs every rank), and the launcher ends the group after that.
    """
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        while True:
            command = distributed.broadcast_object(None)
            if not isinstance(command, Command):
                raise RuntimeError(f"rank 0 sent {type(command).__name__}, not a trainer command")
            if command.kind == "step":
                assert command.batch is not None
                trainer.step(command.batch)
            elif command.kind == "save":
                assert command.directory is not None
                trainer.save(Path(command.directory))
            elif command.kind == "load":
                assert command.directory is not None
                trainer.load(Path(command.directory))
            else:
                return trainer.step_count
    finally:
        signal.signal(signal.SIGTERM, previous)
