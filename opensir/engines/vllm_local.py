"""Sampling with vLLM in the runner's own process (``vllm.LLM``): one-GPU local runs.

:class:`VLLMGenerator` takes token-id prompts (``TokensPrompt``) and returns vLLM's sampled token ids
and the log-probability of each (``logprobs=0``; the engine runs with ``logprobs_mode=
"processed_logprobs"``, the distribution the token was sampled from, as for the rollout server).
:class:`VLLMWeightSync` copies the trainer's weights into the engine after each optimizer step
through vLLM's in-place reload, in the engine's own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
set by the generator) so no tensor is serialised; in LoRA mode it loads the trainer's adapter.

Needs ``vllm`` importable in the runner's environment (the runtime image; locally .venv-vllm).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opensir.engines.requests import check_request, trim_to_text
from opensir.engines.weight_sync import WeightSyncError, full_state_dict, trainer_module, write_adapter
from opensir.models import is_peft_model
from opensir.seams import Completion, SamplingParams, Trainer
from opensir.serving import WORKER_EXTENSION, lora_model_name, lora_rank_slot, whole_prefill_options


class VLLMGenerator:
    """:class:`~opensir.seams.Generator` over an in-process ``vllm.LLM``."""

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel: int = 1,
        seed: int = 0,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> None:
        # The engine core must live in this process for VLLMWeightSync to reach its worker.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        options: dict[str, Any] = {}
        if not torch.cuda.is_available():
            options.update(whole_prefill_options(max_model_len))
        if enable_lora:
            options.update(enable_lora=True, max_lora_rank=lora_rank_slot(max_lora_rank), max_loras=1)
        self.llm = LLM(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel,
            seed=seed,
            trust_remote_code=trust_remote_code,
            revision=revision,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=WORKER_EXTENSION,
            **options,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.lora_enabled = enable_lora
        self.lora_request: Any = None
        """The LoRA adapter requests use (set by VLLMWeightSync in LoRA mode), or None."""

    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Return, for each prompt in order, its ``n`` completions."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        check_request(prompts, n, sampling)
        if not prompts:
            return []
        distinct = 1 if sampling.greedy else n
        params = VLLMSamplingParams(
            n=distinct,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logprobs=0,
            skip_special_tokens=True,
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts],
            params,
            use_tqdm=False,
            lora_request=self.lora_request,
        )
        results = []
        for output in outputs:
            group = []
            for sample in sorted(output.outputs, key=lambda o: o.index):
                tokens = tuple(int(t) for t in sample.token_ids)
                logprobs = None
                if sample.logprobs is not None:
                    logprobs = tuple(
                        float(step[t].logprob) for step, t in zip(sample.logprobs, tokens, strict=True)
                    )
                text = sample.text
                if isinstance(sample.stop_reason, str):  # cut at a stop string: see opensir.engines.requests
                    kept, text = trim_to_text(self.tokenizer, tokens, text)
                    tokens = tuple(kept)
                    logprobs = None if logprobs is None else logprobs[: len(tokens)]
                finish = sample.finish_reason or "length"
                group.append(Completion(text=text, token_ids=tokens, logprobs=logprobs, finish_reason=finish))
            results.append(group * (n // distinct))
        return results


class VLLMWeightSync:
    """Puts the trainer's weights into an in-process :class:`VLLMGenerator` after each step.

    Full weights are loaded in place (no files). A LoRA (peft) policy's adapter is written with
    ``save_pretrained`` to ``<adapter_dir>/v<N>`` and requests then carry a ``LoRARequest`` for it;
    its id is the version, so vLLM loads each version afresh, and the previous one is removed. The
    generator must have been built with ``enable_lora`` for that.
    """

    def __init__(
        self, generator: VLLMGenerator, *, version: int = 0, adapter_dir: Path | None = None, keep: int = 2
    ) -> None:
        self.generator = generator
        self._version = version
        self._adapter_dir = adapter_dir
        self.keep = keep

    @property
    def version(self) -> int:
        """The weights version the engine serves."""
        return self._version

    def push(self, trainer: Trainer) -> int:
        """Load the trainer's weights (or its adapter) into the engine; return the new version."""
        model = trainer_module(trainer)
        version = self._version + 1
        try:
            if is_peft_model(model):
                self._load_adapter(model, version)
            else:
                self._load_weights(model)
            self.generator.llm.reset_prefix_cache()
        except WeightSyncError:
            raise
        except Exception as error:
            raise WeightSyncError(
                f"loading weights version {version} into the in-process vLLM engine failed: {error}"
            ) from error
        self._version = version
        return version

    def _load_weights(self, model: nn.Module) -> None:
        tensors = full_state_dict(model)

        def load(worker: Any) -> int:
            worker._opensir_reload(weights_iterator=iter(tensors.items()), is_checkpoint_format=True)
            return len(tensors)

        self.generator.llm.collective_rpc(load)

    def _load_adapter(self, model: nn.Module, version: int) -> None:
        from vllm.lora.request import LoRARequest

        if not self.generator.lora_enabled:
            raise WeightSyncError(
                "the trainer's model is a LoRA (peft) model, but the in-process vLLM engine was built "
                "without enable_lora"
            )
        if self._adapter_dir is None:
            self._adapter_dir = Path(tempfile.mkdtemp(prefix="opensir-adapters-"))
        path = write_adapter(model, self._adapter_dir, version, keep=self.keep)
        previous = self.generator.lora_request
        request = LoRARequest(lora_model_name("policy", version), version, str(path))
        if not self.generator.llm.llm_engine.add_lora(request):
            raise WeightSyncError(f"vLLM did not load the adapter of version {version} from {path}")
        self.generator.lora_request = request
        if previous is not None:
            self.generator.llm.llm_engine.remove_lora(previous.lora_int_id)
