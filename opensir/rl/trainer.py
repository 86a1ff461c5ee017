"""The GRPO trainers' shared step and the single-process torch trainer: one optimizer step per round.

:class:`GRPOStepper` holds the step every engine runs (this module's :class:`TorchTrainer` and
:class:`opensir.rl.deepspeed_trainer.DeepSpeedTrainer`); the engines differ only in how gradients
are reduced and applied.

It owns the policy's optimiser, learning-rate schedule and step count, and everything needed to
resume a run bit-for-bit (weights, AdamW moments, schedule, RNG states). The loss is the token-level
mean over every loss token of the step's whole batch (both roles together, DESIGN.md §1.6); micro
batches only bound memory and never change the result, because each micro-batch's mean loss is
weighted by its share of the batch's loss tokens before its gradients are accumulated.

Per-token log-probabilities are computed the way TRL's GRPOTrainer does: one forward pass over
prompt + completion (right padded), the logits of position t scoring token t + 1, logits only for
the span that holds completion tokens (``logits_to_keep``), and log-softmax in float32 as
gather − logsumexp one sequence at a time so no full float32 ``[B, T, V]`` copy is made.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_model
from torch import Tensor, nn

from opensir.models import is_peft_model
from opensir.rl.grpo import grpo_loss
from opensir.seams import Role, TrainBatch, TrainSequence, TrainStats
from opensir.spec import TrainingSpec

_STATE_FILE = "trainer_state.json"
_FORMAT = 1


# ------------------------------------------------------------------------------------------ logprobs
def sequence_logprobs(
    model: nn.Module,
    batch: TrainBatch | Sequence[TrainSequence],
    *,
    pad_token_id: int = 0,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-probabilities of each sequence's completion tokens given its prompt.

    Returns ``(logprobs, valid)``, both ``[B, T]`` with T the longest completion: ``logprobs`` in
    float32 (0 at padding), ``valid`` True where a completion token exists (the loss mask is not
    applied). Runs with whatever grad mode and autocast the caller has set; the model's mode
    (train/eval) is left as it is.
    """
    sequences = batch.sequences if isinstance(batch, TrainBatch) else tuple(batch)
    if not sequences:
        raise ValueError("sequence_logprobs needs at least one sequence")
    for index, sequence in enumerate(sequences):
        if not sequence.prompt_ids or not sequence.completion_ids:
            raise ValueError(
                f"sequence {index} has {len(sequence.prompt_ids)} prompt and "
                f"{len(sequence.completion_ids)} completion tokens; both need at least one"
            )
    if device is None:
        device = next(model.parameters()).device
    prompt_lengths = [len(s.prompt_ids) for s in sequences]
    completion_lengths = [len(s.completion_ids) for s in sequences]
    width = max(p + c for p, c in zip(prompt_lengths, completion_lengths, strict=True))
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens = sequence.prompt_ids + sequence.completion_ids
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention[row, : len(tokens)] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)

    # Only positions first_scored .. width - 2 predict completion tokens of some row.
    first_scored = min(prompt_lengths) - 1
    keep = width - first_scored
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False, logits_to_keep=keep).logits
    logits = logits[:, -keep:-1, :]  # [B, keep - 1, V]: position first_scored + k scores token +k+1
    targets = input_ids[:, first_scored + 1 :]
    scored = torch.stack([_selected_logprobs(logits[row], targets[row]) for row in range(len(sequences))])

    longest = max(completion_lengths)
    steps = torch.arange(longest, device=device)
    starts = torch.tensor([p - 1 - first_scored for p in prompt_lengths], device=device)
    lengths = torch.tensor(completion_lengths, device=device)
    valid = steps[None, :] < lengths[:, None]
    index = (starts[:, None] + steps[None, :]).clamp(max=scored.shape[1] - 1)
    logprobs = scored.gather(1, index).masked_fill(~valid, 0.0)
    return logprobs, valid


def _selected_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log_softmax(logits)[targets] in float32 for one sequence ``[T, V]`` -> ``[T]``."""
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


# ------------------------------------------------------------------------------------------- trainer
def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode deep copy of ``model``: the KL reference (the initial policy)."""
    import copy

    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


class GRPOStepper:
    """The GRPO step every trainer engine shares: micro-batches, loss weighting, statistics.

    An engine supplies the forward module (:attr:`model` for logprobs), the optimizer mechanics
    (:meth:`_zero_grad`, :meth:`_backward`, :meth:`_optimizer_step`), which micro-batches this process
    computes (:meth:`_local_micro_batches`) and how statistics of several processes are summed
    (:meth:`_sum_across_processes`). The loss of every micro-batch is its token-mean times its share of
    the *whole* batch's loss tokens, so the accumulated gradient is the gradient of the token-level mean
    over the whole batch, whatever the micro-batch size and however many processes share the batch.
    """

    config: TrainingSpec
    device: torch.device
    pad_token_id: int
    model: nn.Module
    ref_model: nn.Module | None
    scheduler: torch.optim.lr_scheduler.LRScheduler
    _step_count: int
    _gradient_scale: float = 1.0
    """Multiplies every backward: the world size where the engine averages gradients over processes."""

    @property
    def step_count(self) -> int:
        """Optimizer steps (self-play rounds) taken so far; restored by :meth:`load`."""
        return self._step_count

    @property
    def learning_rate(self) -> float:
        """The learning rate the next step will use."""
        return float(self.scheduler.optimizer.param_groups[0]["lr"])

    def _autocast(self) -> AbstractContextManager[object]:
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------------------- engine hooks
    def _forward_module(self) -> nn.Module:
        """The module the policy's log-probabilities are computed with."""
        return self.model

    def _local_micro_batches(self, batch: TrainBatch) -> list[MicroBatch]:
        size = self.config.micro_batch_size
        return [MicroBatch(batch.sequences[i : i + size]) for i in range(0, len(batch.sequences), size)]

    def _zero_grad(self) -> None:
        raise NotImplementedError

    def _backward(self, loss: Tensor, *, last: bool) -> None:
        raise NotImplementedError

    def _optimizer_step(self) -> float:
        """Clip, update, and return the gradient norm before clipping."""
        raise NotImplementedError

    def _sum_across_processes(self, values: Tensor) -> Tensor:
        return values

    def _reference_context(self) -> AbstractContextManager[object]:
        """Where the reference model is the policy with its adapters disabled (LoRA), this disables them."""
        return nullcontext()

    # ------------------------------------------------------------------------------------------ step
    def step(self, batch: TrainBatch) -> TrainStats:
        """One GRPO update on ``batch``: μ = ``iterations_per_batch`` optimizer updates on it, PPO-clipped
        against the first pass's log-probabilities."""
        if not batch.sequences:
            raise ValueError(
                "TrainBatch has no sequences; the run loop must skip steps with nothing to train"
            )
        total_tokens = batch.num_tokens
        if total_tokens == 0:
            raise ValueError(
                f"TrainBatch has {len(batch.sequences)} sequences but every token is masked out of the loss"
            )
        started = time.perf_counter()
        micro_batches = self._local_micro_batches(batch)
        references = [self._reference_logprobs(mb.sequences) for mb in micro_batches]
        olds: list[Tensor | None] = [None] * len(micro_batches)
        learning_rate = self.learning_rate
        iterations = self.config.iterations_per_batch
        # Summed over micro-batches, iterations and processes: loss, kl, clip, then (sum, tokens) per role.
        sums = torch.zeros(3 + 2 * len(ROLES), dtype=torch.float64)
        grad_norm = 0.0
        module = self._forward_module()
        self.model.train()
        for _ in range(iterations):
            self._zero_grad()
            for k, micro in enumerate(micro_batches):
                sequences = micro.sequences
                advantages = torch.tensor(
                    [s.advantage for s in sequences], dtype=torch.float32, device=self.device
                )
                with self._autocast():
                    logprobs, _ = sequence_logprobs(
                        module, sequences, pad_token_id=self.pad_token_id, device=self.device
                    )
                mask = _loss_mask(sequences, logprobs.shape, self.device)
                if olds[k] is None:  # the first pass is the sampling policy: ratio 1, later passes clip
                    olds[k] = logprobs.detach()
                loss, parts = grpo_loss(
                    logprobs,
                    olds[k],
                    references[k],
                    advantages,
                    mask,
                    beta=self.config.kl_beta,
                    clip_epsilon=self.config.clip_epsilon,
                )
                share = parts.tokens / total_tokens if micro.counts else 0.0
                self._backward(loss * share * self._gradient_scale, last=k == len(micro_batches) - 1)
                if not micro.counts:
                    continue
                sums[0] += float(loss.detach()) * share
                sums[1] += parts.kl * share
                sums[2] += parts.clip_fraction * share
                for sequence, loss_sum, tokens in zip(
                    sequences, parts.sequence_loss_sums.tolist(), parts.sequence_tokens.tolist(), strict=True
                ):
                    slot = 3 + 2 * ROLES.index(sequence.role)
                    sums[slot] += loss_sum
                    sums[slot + 1] += tokens
            grad_norm += self._optimizer_step() / iterations
        self._zero_grad()
        self.scheduler.step()
        self._step_count += 1
        totals = (self._sum_across_processes(sums) / iterations).tolist()
        loss_by_role = {
            role: totals[3 + 2 * i] / totals[4 + 2 * i] for i, role in enumerate(ROLES) if totals[4 + 2 * i]
        }
        return TrainStats(
            step=self._step_count,
            loss=totals[0],
            kl=totals[1],
            grad_norm=grad_norm,
            learning_rate=learning_rate,
            tokens=total_tokens,
            seconds=time.perf_counter() - started,
            loss_by_role=loss_by_role,
            clip_fraction=totals[2],
        )

    def _reference_logprobs(self, sequences: Sequence[TrainSequence]) -> Tensor | None:
        if self.config.kl_beta == 0:
            return None
        reference = self.ref_model if self.ref_model is not None else self._forward_module()
        with torch.no_grad(), self._autocast(), self._reference_context():
            logprobs, _ = sequence_logprobs(
                reference, sequences, pad_token_id=self.pad_token_id, device=self.device
            )
        return logprobs


ROLES: tuple[Role, ...] = ("teacher", "student")


@dataclass(frozen=True)
class MicroBatch:
    """Sequences computed in one forward/backward pass.

    ``counts`` False marks a stand-in pass: a process with no sequences left still runs forward and
    backward (weighted 0) so that every process takes part in the same collectives (ZeRO's gradient
    reduction and, with ZeRO-3, its parameter gathering).
    """

    sequences: Sequence[TrainSequence]
    counts: bool = True


class TorchTrainer(GRPOStepper):
    """:class:`~opensir.seams.Trainer` for one process (CPU or one GPU).

    ``config.iterations_per_batch`` (GRPO's μ) > 1 makes :meth:`step` take μ AdamW updates on the same
    batch, PPO-clipped against the log-probabilities of the first pass; the learning-rate schedule
    and ``step_count`` count calls to :meth:`step` (self-play rounds), so all μ updates of a round use
    the round's learning rate.

    With ``config.lora.enabled`` pass a peft model (see :func:`opensir.rl.lora.apply_lora`): only the
    adapters train, and the reference log-probabilities come from the same model with its adapters
    disabled, so no second copy of the weights is kept.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        config: TrainingSpec,
        pad_token_id: int,
        ref_model: nn.Module | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.pad_token_id = pad_token_id
        self.model = model.to(self.device)
        self.ref_model = _check_reference(config, model, ref_model)
        if self.ref_model is not None:
            self.ref_model = self.ref_model.to(self.device)
        _check_precision(config, self.device)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self._parameters = [p for p in self.model.parameters() if p.requires_grad]
        if not self._parameters:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = make_optimizer(self._parameters, config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self._step_count = 0

    def _reference_context(self) -> AbstractContextManager[object]:
        return adapters_disabled(self.model)

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _backward(self, loss: Tensor, *, last: bool) -> None:
        if loss.requires_grad:
            loss.backward()

    def _optimizer_step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(self._parameters, self.config.max_grad_norm)
        self.optimizer.step()
        return float(grad_norm)

    # ------------------------------------------------------------------------------------ checkpoint
    def save(self, directory: Path) -> None:
        """Write ``model/`` (safetensors; a transformers directory when the model is one, a peft
        adapter directory in LoRA mode), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` and
        ``trainer_state.json`` into ``directory``.

        The frozen reference model is not saved: it is the initial policy, rebuilt from the spec.
        """
        directory = Path(directory)
        save_weights(self.model, directory / "model")
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")
        torch.save(_rng_state(), directory / "rng.pt")
        state = {"format": _FORMAT, "step_count": self._step_count}
        (directory / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def load(self, directory: Path) -> None:
        """Restore what :meth:`save` wrote, including the process-global RNG states (python,
        numpy, torch), so that a resumed run samples what the uninterrupted one would have."""
        directory = Path(directory)
        state_file = directory / _STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(f"{directory} is not a trainer checkpoint: {_STATE_FILE} is missing")
        state = json.loads(state_file.read_text())
        if state.get("format") != _FORMAT:
            raise ValueError(f"{state_file} has format {state.get('format')!r}; this version reads {_FORMAT}")
        load_weights(self.model, directory / "model")
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        _set_rng_state(torch.load(directory / "rng.pt", weights_only=True))
        self._step_count = int(state["step_count"])


# ------------------------------------------------------------------------------------------- helpers
def make_optimizer(parameters: Sequence[nn.Parameter], config: TrainingSpec) -> torch.optim.AdamW:
    """AdamW as ``training`` configures it (every engine uses this one optimizer)."""
    return torch.optim.AdamW(
        parameters,
        lr=config.learning_rate,
        betas=config.adam_betas,
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingSpec
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule (transformers' ``get_scheduler``), stepped once per round."""
    from transformers import get_scheduler

    return get_scheduler(
        config.schedule,
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.max_steps,
    )


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs work)."""
    kwargs = {"use_reentrant": False}
    # transformers 5.x renamed the switch; the old name is deprecated but is all 4.x has.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError("training.gradientCheckpointing needs a transformers model")
    if is_peft_model(model) and hasattr(model, "enable_input_require_grads"):
        # With frozen embeddings nothing entering the checkpointed blocks requires grad; peft's
        # hook makes the embedding output require it so the adapters inside still get gradients.
        model.enable_input_require_grads()


def adapters_disabled(model: nn.Module) -> AbstractContextManager[object]:
    """The base model of a peft model (its adapters off): LoRA's KL reference; a no-op otherwise."""
    if is_peft_model(model):
        return model.disable_adapter()  # type: ignore[operator,no-any-return]
    return nullcontext()


def _check_reference(config: TrainingSpec, model: nn.Module, ref_model: nn.Module | None) -> nn.Module | None:
    """The frozen reference to keep: none when β = 0 or in LoRA mode (the base model is the reference)."""
    if config.kl_beta == 0:
        return None
    if config.lora.enabled:
        if not is_peft_model(model):
            raise ValueError("training.lora.enabled needs a peft model (opensir.rl.lora.apply_lora)")
        return None
    if ref_model is None:
        raise ValueError(
            f"training.klBeta is {config.kl_beta}, so a frozen reference model is needed "
            f"(pass ref_model, e.g. frozen_copy(model)); set klBeta: 0 to train without one"
        )
    return ref_model.eval().requires_grad_(False)


def _check_precision(config: TrainingSpec, device: torch.device) -> None:
    if config.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("training.precision is bf16 but this GPU does not support bfloat16; use fp32")


def save_weights(model: nn.Module, model_dir: Path) -> None:
    """The model's weights as safetensors: a transformers (or, in LoRA mode, peft adapter) directory."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(model_dir, safe_serialization=True)
    else:
        model_dir.mkdir(parents=True)
        save_model(model, str(model_dir / "model.safetensors"))


def _loss_mask(sequences: Sequence[TrainSequence], shape: torch.Size, device: torch.device) -> Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        mask[row, : len(sequence.loss_mask)] = torch.tensor(sequence.loss_mask, dtype=torch.bool)
    return mask.to(device)


def load_weights(model: nn.Module, model_dir: Path) -> None:
    """Load what :func:`save_weights` wrote; every weight of the model must be there (tied ones once)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    weights: dict[str, Tensor] = {}
    for file in files:
        weights.update(load_file(str(file)))
    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, weights)
        if result.unexpected_keys:
            raise ValueError(f"adapter {model_dir} has weights the model lacks: {result.unexpected_keys[:5]}")
        return
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {model_dir} has weights the model lacks: {result.unexpected_keys[:5]}")
    # Tied weights (lm_head = embed_tokens) are written once; they count as loaded when they share
    # storage with a loaded tensor.
    state = model.state_dict()
    loaded = {state[name].data_ptr() for name in weights}
    missing = [name for name in result.missing_keys if state[name].data_ptr() not in loaded]
    if missing:
        raise ValueError(f"checkpoint {model_dir} lacks weights of the model: {missing[:5]}")


def _rng_state() -> dict[str, object]:
    version, mt_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, object] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [
            name,
            torch.from_numpy(np.asarray(keys).astype(np.int64)),
            position,
            has_gauss,
            cached_gaussian,
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, object]) -> None:
    version, mt_state, gauss = state["python"]  # type: ignore[misc]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]  # type: ignore[misc]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])  # type: ignore[arg-type]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])  # type: ignore[arg-type]
