"""What every Generator does the same way: check a request, and cut sampled tokens at a stop string.

Engines differ in how they sample, not in what a valid request is or in what a completion cut by a
stop string holds: its token ids must decode to exactly its text, which must not contain the stop
string, so that the trainer scores exactly the tokens the text came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opensir.seams import SamplingParams


def check_request(prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams) -> None:
    """Raise ValueError naming the first argument a generator cannot honour."""
    if n < 1:
        raise ValueError(f"n must be at least 1 (got {n})")
    if sampling.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {sampling.temperature})")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (got {sampling.top_p})")
    if sampling.top_k == 0 or sampling.top_k < -1:
        raise ValueError(f"top_k must be -1 (off) or at least 1 (got {sampling.top_k})")
    if sampling.max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 (got {sampling.max_tokens})")
    if any(not s for s in sampling.stop):
        raise ValueError("stop strings must not be empty")
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {index} is empty; a prompt needs at least one token")


def trim_to_text(tokenizer: Any, tokens: Sequence[int], kept_text: str) -> tuple[list[int], str]:
    """The longest prefix of ``tokens`` whose decoded text is a prefix of ``kept_text`` (the text
    before the stop string), and that text.

    A token that straddles the start of the stop string is dropped with its characters before the
    stop string, so the returned ids decode to exactly the returned text, which never contains the
    stop string.
    """
    for k in range(len(tokens), -1, -1):
        text = tokenizer.decode(list(tokens[:k]), skip_special_tokens=True)
        if len(text) <= len(kept_text) and kept_text.startswith(text):
            return list(tokens[:k]), text
    return [], ""
