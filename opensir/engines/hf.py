"""Sampling from a transformers causal LM in the runner's own process (CPU runs, small GPUs).

The decode loop is written here rather than delegated to ``model.generate`` because the run loop
needs things ``generate`` does not give cheaply: the log-probability of every sampled token (without
keeping ``[steps, batch, vocab]`` score tensors), vLLM's sampling semantics (temperature, then top-k,
then top-p), stop strings that trim the returned tokens, a per-request seed that leaves the global
RNG alone, and dropping finished sequences from the batch so long-tailed groups do not keep paying
for the whole batch.

Reported log-probabilities: by default (``logprobs_mode="processed"``) the log-softmax of the logits
the token was actually sampled from, i.e. after temperature, top-k and top-p (the distribution the
Completion docstring asks for; vLLM's ``processed_logprobs``). With ``logprobs_mode="raw"`` they are
the log-softmax of the model's unmodified logits (vLLM V1's default ``raw_logprobs``), which is what
the trainer computes. The two agree at temperature 1 without top-k/top-p. Greedy decoding
(temperature 0) reports raw log-probabilities in both modes.

Randomness: a request with ``seed`` samples from its own ``torch.Generator`` (same seed, prompts and
batch size give the same completions, and the global RNG is not touched); ``seed=None`` samples from
torch's global generator, which the trainer's checkpoints save and restore, so a resumed run
continues the same random stream.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from opensir.engines.requests import check_request, trim_to_text
from opensir.seams import Completion, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LogprobsMode = Literal["processed", "raw"]


@dataclass
class _Row:
    """One completion being generated."""

    prompt: int
    sample: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


class HFGenerator:
    """:class:`~opensir.seams.Generator` over an in-process transformers model.

    ``model`` may be the very module the trainer updates (see
    :class:`~opensir.engines.weight_sync.InProcessWeightSync`): generation runs in eval mode under
    ``torch.inference_mode`` and restores the module's training mode afterwards.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int,
        eos_token_ids: Sequence[int],
        logprobs_mode: LogprobsMode = "processed",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        if not eos_token_ids:
            raise ValueError("eos_token_ids must name at least one token (the chat template's end of turn)")
        if logprobs_mode not in ("processed", "raw"):
            raise ValueError(f"logprobs_mode must be 'processed' or 'raw' (got {logprobs_mode!r})")
        self._model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self.logprobs_mode: LogprobsMode = logprobs_mode
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else self.eos_token_ids[0]
        parameters = inspect.signature(model.forward).parameters
        # transformers 5 renamed past_key_values to cache (the old name is deprecated until 5.40).
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self._max_positions: int | None = getattr(model.config, "max_position_embeddings", None)

    @property
    def model(self) -> PreTrainedModel:
        """The module generated from (weight sync checks that it is the trainer's)."""
        return self._model

    # --------------------------------------------------------------------------------------- public
    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Return, for each prompt in order, its ``n`` completions (see the module docstring)."""
        check_request(prompts, n, sampling)
        for index, prompt in enumerate(prompts):
            if self._max_positions is not None and len(prompt) >= self._max_positions:
                raise ValueError(
                    f"prompt {index} has {len(prompt)} tokens; the model takes at most "
                    f"{self._max_positions} positions in all"
                )
        if not prompts:
            return []
        # Group equal-length prompts' samples into the same chunk to keep left padding small.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        rows = [_Row(prompt=p, sample=s) for p in order for s in range(n)]
        device = next(self._model.parameters()).device
        rng = None
        if sampling.seed is not None:
            rng = torch.Generator(device=device)
            rng.manual_seed(sampling.seed)
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(rows), self.batch_size):
                    self._generate_chunk(
                        prompts, rows[start : start + self.batch_size], sampling, rng, device
                    )
        finally:
            self._model.train(was_training)
        results: list[list[Completion]] = [[] for _ in prompts]
        for row in sorted(rows, key=lambda r: (r.prompt, r.sample)):
            results[row.prompt].append(self._finish(row, sampling))
        return results

    # ------------------------------------------------------------------------------------- decoding
    def _generate_chunk(
        self,
        prompts: Sequence[Sequence[int]],
        rows: list[_Row],
        sampling: SamplingParams,
        rng: torch.Generator | None,
        device: torch.device,
    ) -> None:
        from transformers import DynamicCache

        unique = list(dict.fromkeys(row.prompt for row in rows))
        width = max(len(prompts[p]) for p in unique)
        input_ids = torch.full((len(unique), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(unique), width), dtype=torch.long)
        for i, p in enumerate(unique):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(prompts[p]) :] = torch.tensor(list(prompts[p]), dtype=torch.long)
            attention[i, width - len(prompts[p]) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(DynamicCache, self._model.config)
        # Prefill each distinct prompt once, then copy its cache to each of its samples.
        logits = self._forward(input_ids, attention, positions, cache)
        expand = torch.tensor([unique.index(row.prompt) for row in rows], device=device)
        cache.batch_select_indices(expand)
        logits, attention = logits[expand], attention[expand]
        next_position = positions[expand, -1] + 1

        max_tokens = sampling.max_tokens
        if self._max_positions is not None:
            max_tokens = min(max_tokens, self._max_positions - width)
        stop_window = max((len(s) for s in sampling.stop), default=0) + 8
        eos = torch.tensor(self.eos_token_ids, device=device)
        active = list(rows)  # rows still in the batch, aligned with its batch dimension
        for step in range(max_tokens):
            tokens, logprobs = self._sample(logits, sampling, rng)
            is_eos = torch.isin(tokens, eos).tolist()
            token_list, logprob_list = tokens.tolist(), logprobs.tolist()
            for i, row in enumerate(active):
                if row.finish_reason is not None:
                    continue
                row.tokens.append(token_list[i])
                row.logprobs.append(logprob_list[i])
                if is_eos[i] or (sampling.stop and self._hit_stop(row.tokens, sampling.stop, stop_window)):
                    row.finish_reason = "stop"
                elif step + 1 == max_tokens:
                    row.finish_reason = "length"
            finished = [i for i, row in enumerate(active) if row.finish_reason is not None]
            if len(finished) == len(active):
                return
            # Drop finished rows once they are a quarter of the batch: copying the cache costs
            # about as much as a few decode steps of the dead rows.
            if len(finished) * 4 >= len(active):
                keep = [i for i, row in enumerate(active) if row.finish_reason is None]
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                tokens, attention, next_position = tokens[index], attention[index], next_position[index]
                active = [active[i] for i in keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            logits = self._forward(tokens[:, None], attention, next_position[:, None], cache)
            next_position = next_position + 1
        for row in active:  # max_tokens was 0 after capping at the model's context
            if row.finish_reason is None:
                row.finish_reason = "length"

    def _forward(
        self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, cache: object
    ) -> torch.Tensor:
        """Logits of the next token after each row, in float32."""
        output = self._model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
        )
        return output.logits[:, -1, :].float()

    def _sample(
        self, logits: torch.Tensor, sampling: SamplingParams, rng: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens and their reported log-probabilities (vLLM order: temperature, top-k, top-p)."""
        raw = torch.log_softmax(logits, dim=-1)
        if sampling.temperature == 0:
            tokens = logits.argmax(dim=-1)
            return tokens, raw.gather(-1, tokens[:, None]).squeeze(-1)
        processed = logits / sampling.temperature
        if sampling.top_k > 0 and sampling.top_k < processed.shape[-1]:
            kth = processed.topk(sampling.top_k, dim=-1).values[:, -1:]
            processed = processed.masked_fill(processed < kth, float("-inf"))
        if sampling.top_p < 1.0:
            processed = _top_p(processed, sampling.top_p)
        logprobs = torch.log_softmax(processed, dim=-1)
        tokens = torch.multinomial(logprobs.exp(), 1, generator=rng).squeeze(-1)
        reported = logprobs if self.logprobs_mode == "processed" else raw
        return tokens, reported.gather(-1, tokens[:, None]).squeeze(-1)

    # ------------------------------------------------------------------------------------- finishing
    def _hit_stop(self, tokens: list[int], stop: tuple[str, ...], window: int) -> bool:
        # A stop string that was not in the text before this token must end within its last few
        # tokens, so decoding a tail window is enough (and keeps the check O(1) per token).
        tail = self.tokenizer.decode(tokens[-window:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    def _finish(self, row: _Row, sampling: SamplingParams) -> Completion:
        tokens, logprobs = row.tokens, row.logprobs
        ends_with_eos = bool(tokens) and tokens[-1] in self.eos_token_ids
        text = self.tokenizer.decode(tokens[:-1] if ends_with_eos else tokens, skip_special_tokens=True)
        if sampling.stop and not ends_with_eos:
            cuts = [text.find(s) for s in sampling.stop if s in text]
            if cuts:
                tokens, text = trim_to_text(self.tokenizer, tokens, text[: min(cuts)])
                logprobs = logprobs[: len(tokens)]
        return Completion(
            text=text,
            token_ids=tuple(tokens),
            logprobs=tuple(logprobs),
            finish_reason=row.finish_reason or "length",
        )


def _new_cache(cache_class: type, config: object) -> object:
    try:
        return cache_class(config=config)
    except TypeError:  # transformers before the config-aware cache
        return cache_class()


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """vLLM's nucleus filter: drop the least likely tokens whose total probability is at most
    1 - top_p, always keeping the most likely token."""
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= 1 - top_p
    remove[:, -1] = False
    return logits.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), float("-inf"))
