"""The DeepSpeed trainer: the same GRPO step as :class:`~opensir.rl.trainer.TorchTrainer`, with ZeRO.

Every process of the group holds the whole batch (the runner's rank 0 broadcasts it, see
:mod:`opensir.rl.follow`); each computes a disjoint share of its micro-batches (dealt round-robin)
and DeepSpeed reduces the gradients. Each micro-batch's loss is weighted by its share of the whole
batch's loss tokens, as in the torch trainer, and by the world size because DeepSpeed averages
gradients over processes; the gradient applied is therefore that of the token-level mean over the
whole batch, equal (to float rounding) to the one-process result. A process with fewer micro-batches
than the others runs a stand-in pass weighted 0, so that every process takes part in the same
collectives (ZeRO-2's gradient reduce-scatter; ZeRO-3's parameter gathers in every forward).

The optimizer is torch's AdamW handed to ``deepspeed.initialize`` (ZeRO wraps it; no DeepSpeed op is
compiled, also with CPU offload), gradient clipping is DeepSpeed's ``gradient_clipping``, and the
learning-rate schedule is the torch trainer's, stepped once per round. Checkpoints are DeepSpeed's
(``engine.save_checkpoint``: per-rank ZeRO shards, with the schedule and step count as client state)
plus per-rank RNG states and, written by rank 0, the consolidated weights in ``model/`` (gathered
from the ZeRO-3 partitions where needed) for serving, evaluation and export.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from opensir.rl import distributed
from opensir.rl.trainer import (
    GRPOStepper,
    MicroBatch,
    _check_precision,
    _check_reference,
    _rng_state,
    _set_rng_state,
    adapters_disabled,
    enable_gradient_checkpointing,
    make_optimizer,
    make_scheduler,
    save_weights,
)
from opensir.seams import TrainBatch
from opensir.spec import TrainingSpec

log = logging.getLogger(__name__)

_STATE_FILE = "trainer_state.json"
_FORMAT = 1
_ENGINE = "deepspeed"
_TAG = "zero"
"""DeepSpeed's checkpoint tag: one checkpoint per directory, so a fixed name."""


def deepspeed_config(config: TrainingSpec) -> dict[str, Any]:
    """The DeepSpeed configuration ``training`` implies (a pure function, for tests and for the docs).

    Gradient accumulation is driven by the trainer (a round's batch has as many micro-batches as it
    has), so DeepSpeed's own accumulation count is 1 and the boundary is set per micro-batch.
    """
    zero: dict[str, Any] = {"stage": config.deepspeed.stage}
    if config.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if config.deepspeed.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": config.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": config.precision == "bf16"},
        # torch's AdamW is ZeRO-compatible; with offload it runs on the CPU partitions instead of
        # DeepSpeedCPUAdam, which would need a C++ build at first use.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedTrainer(GRPOStepper):
    """:class:`~opensir.seams.Trainer` on DeepSpeed ZeRO (stages 0–3, optional CPU offload).

    Every rank of the process group constructs it and calls :meth:`step`, :meth:`save` and
    :meth:`load` together, with the same arguments (these are collective). ``model`` is the full
    initial policy on every rank (ZeRO partitions it here); ``ref_model`` a frozen copy of it, kept
    whole on every rank (not needed when β = 0 or in LoRA mode, where the base model is the reference).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        config: TrainingSpec,
        pad_token_id: int,
        ref_model: nn.Module | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.config = config
        self.pad_token_id = pad_token_id
        self.device = _pick_device(device)
        distributed.init_process_group(self.device)
        _check_precision(config, self.device)
        reference = _check_reference(config, model, ref_model)
        self.ref_model = None
        if reference is not None:
            dtype = torch.bfloat16 if config.precision == "bf16" else None
            self.ref_model = reference.to(device=self.device, dtype=dtype)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError("the model has no trainable parameters")
        optimizer = make_optimizer(parameters, config)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model.to(self.device),
            optimizer=optimizer,
            config=deepspeed_config(config),
            dist_init_required=False,
        )
        self.model = self.engine.module
        # ZeRO keeps torch's AdamW as its inner optimizer and shares its param groups, so the schedule
        # sets the learning rate ZeRO's update uses.
        self.optimizer = optimizer
        self.scheduler = make_scheduler(optimizer, config)
        self.rank = distributed.rank()
        self.world_size = distributed.world_size()
        self._gradient_scale = float(self.world_size)
        self._step_count = 0

    @property
    def stage(self) -> int:
        """The ZeRO stage in use."""
        return int(self.engine.zero_optimization_stage())

    # ------------------------------------------------------------------------------- engine hooks
    def _forward_module(self) -> nn.Module:
        return self.engine  # type: ignore[no-any-return]

    def _autocast(self) -> AbstractContextManager[object]:
        # In bf16 DeepSpeed holds the weights in bf16 itself (fp32 master copies in the optimizer).
        return nullcontext()

    def _reference_context(self) -> AbstractContextManager[object]:
        return adapters_disabled(self.model)

    def _local_micro_batches(self, batch: TrainBatch) -> list[MicroBatch]:
        size = self.config.micro_batch_size
        chunks = [batch.sequences[i : i + size] for i in range(0, len(batch.sequences), size)]
        mine = [MicroBatch(chunks[i]) for i in range(self.rank, len(chunks), self.world_size)]
        rounds = math.ceil(len(chunks) / self.world_size)
        stand_in = MicroBatch(batch.sequences[:1], counts=False)
        return mine + [stand_in] * (rounds - len(mine))

    def _zero_grad(self) -> None:
        self.engine.zero_grad()

    def _backward(self, loss: Tensor, *, last: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss, scale_wrt_gas=False)

    def _optimizer_step(self) -> float:
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            raise RuntimeError("DeepSpeed computed no gradient norm (zero_optimization.compute_grad_norm)")
        return float(norm)

    def _sum_across_processes(self, values: Tensor) -> Tensor:
        if self.world_size == 1:
            return values
        reduced = values.to(self.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.cpu()

    # ------------------------------------------------------------------------------------- weights
    def full_state_dict(self) -> dict[str, Tensor] | None:
        """The whole model's weights on CPU, on rank 0 (None elsewhere). Collective under ZeRO-3."""
        if self.stage == 3:
            import deepspeed

            parameters = list(self.model.parameters())
            with deepspeed.zero.GatheredParameters(parameters, modifier_rank=None):
                state = (
                    {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                    if self.rank == 0
                    else None
                )
            return state
        if self.rank != 0:
            return None
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    # ------------------------------------------------------------------------------------ checkpoint
    def save(self, directory: Path) -> None:
        """Write the checkpoint into rank 0's ``directory`` (collective; every rank passes rank 0's path).

        Contents: ``zero/`` (DeepSpeed's checkpoint: weights, each rank's ZeRO optimizer shard, the
        schedule and step count as client state), ``rng-rank<N>.pt`` per rank, ``model/`` (the
        consolidated weights) and ``trainer_state.json``, written last. Ranks that do not see rank 0's
        directory write into scratch space and ship their files to rank 0.
        """
        directory = Path(directory)
        shared = distributed.shared_directory(directory)
        local = directory if shared or self.rank == 0 else Path(tempfile.mkdtemp(prefix="opensir-ds-save-"))
        try:
            local.mkdir(parents=True, exist_ok=True)
            client_state = {"step_count": self._step_count, "scheduler": self.scheduler.state_dict()}
            self.engine.save_checkpoint(str(local), tag=_TAG, client_state=client_state, save_latest=False)
            torch.save(_rng_state(), local / f"rng-rank{self.rank}.pt")
            weights = self.full_state_dict()
            if not shared:
                distributed.gather_files(local, directory)
        finally:
            if local != directory:
                shutil.rmtree(local, ignore_errors=True)
        if self.rank == 0:
            assert weights is not None
            _save_consolidated(self.model, weights, directory / "model")
            state = {
                "format": _FORMAT,
                "engine": _ENGINE,
                "step_count": self._step_count,
                "world_size": self.world_size,
                "zero_stage": self.stage,
            }
            (directory / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        dist.barrier()

    def load(self, directory: Path) -> None:
        """Restore what :meth:`save` wrote, with the same number of processes (collective)."""
        directory = Path(directory)
        state = _read_state(directory) if self.rank == 0 else None
        state = distributed.broadcast_object(state)  # type: ignore[assignment]
        if isinstance(state, str):
            raise FileNotFoundError(state) if "missing" in state else ValueError(state)
        assert isinstance(state, dict)
        if state["world_size"] != self.world_size:
            raise ValueError(
                f"{directory} was saved by {state['world_size']} processes; this run has {self.world_size} "
                "(resume with the same training.nodes and processes per node)"
            )
        shared = distributed.shared_directory(directory)
        local = directory
        if not shared:
            local = Path(tempfile.mkdtemp(prefix="opensir-ds-load-")) if self.rank != 0 else directory
            distributed.broadcast_files(directory if self.rank == 0 else None, local)
        try:
            path, client_state = self.engine.load_checkpoint(
                str(local), tag=_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
            )
            if path is None or client_state is None:
                raise FileNotFoundError(f"{directory} holds no DeepSpeed checkpoint tagged {_TAG!r}")
            self.scheduler.load_state_dict(client_state["scheduler"])
            self._step_count = int(client_state["step_count"])
            _set_rng_state(torch.load(local / f"rng-rank{self.rank}.pt", weights_only=True))
        finally:
            if local != directory:
                shutil.rmtree(local, ignore_errors=True)
        dist.barrier()


def _read_state(directory: Path) -> dict[str, Any] | str:
    """The checkpoint's state, or the message of what is wrong with it (sent to every rank)."""
    state_file = directory / _STATE_FILE
    if not state_file.is_file():
        return f"{directory} is not a trainer checkpoint: {_STATE_FILE} is missing"
    state = json.loads(state_file.read_text())
    if state.get("format") != _FORMAT or state.get("engine") != _ENGINE:
        return (
            f"{state_file} is format {state.get('format')!r} of engine {state.get('engine', 'torch')!r}; "
            f"the deepspeed trainer reads format {_FORMAT} of its own checkpoints"
        )
    return dict(state)


def _save_consolidated(model: nn.Module, weights: dict[str, Tensor], model_dir: Path) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(model_dir, state_dict=weights, safe_serialization=True)
    else:
        save_weights(model, model_dir)


def _pick_device(device: torch.device | str | None) -> torch.device:
    """CPU, or this process's GPU (``LOCAL_RANK``) where CUDA is asked for or available."""
    wanted = torch.device(device) if device is not None else None
    if wanted is not None and wanted.type != "cuda":
        return wanted
    if wanted is None and not torch.cuda.is_available():
        return torch.device("cpu")
    index = wanted.index if wanted is not None and wanted.index is not None else None
    if index is None:
        index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
