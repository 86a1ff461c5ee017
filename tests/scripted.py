"""Stand-ins for the engines in tests of the run loop: a character tokenizer with a chat template."""

from __future__ import annotations

from collections.abc import Sequence


class CharTokenizer:
    """Characters as tokens (id = code point), and a plain chat template."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, chat_template=None):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)
