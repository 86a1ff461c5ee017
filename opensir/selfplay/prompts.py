"""The two prompts of self-play, their rendering to token ids, and the teacher's loss mask.

Prompts travel to every engine as token ids rendered here once, with the policy's own chat
template, so that what is sampled and what is later trained on are exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from opensir.selfplay.parsing import TEMPLATE_CONCEPTS, TEMPLATE_PROBLEM, concepts_span

Messages = list[dict[str, str]]
PromptStyle = Literal["reference", "explicit"]

# The reference implementation's instructions (the paper's prompts), word for word: what a faithful
# run asks the policy. The student's is also the paper's evaluation prompt.
_REFERENCE_TEACHER_SYSTEM = "You are a helpful AI Assistant"
_REFERENCE_TEACHER = (
    "You are given a math problem: {problem}\n\n"
    "Your task is to create a math problem that is conceptually different from the provided problem. "
    "The new problem must be answerable with a numerical value or mathematical expression.\n\n"
    "First, explain how your new problem differs conceptually from the original problem inside the "
    "<think>...</think> tags. Then, present your new problem inside the <problem>...</problem> tags. "
    "Finally, identify at most three math concepts required to solve your problem. Provide these "
    "concepts in a comma separated list inside the <concepts>...</concepts> tags."
)
_REFERENCE_STUDENT_SYSTEM = (
    "You are a helpful AI Assistant, designed to provide well-reasoned and detailed responses. You "
    "FIRST think about the reasoning process step by step and then provide the user with the answer. "
    "The last line of your response should be 'Therefore, the final answer is: $\\boxed{ANSWER}$' "
    "(without quotes) where ANSWER is just the final number or expression that solves the problem."
)

# opensir's explicit wording (selfPlay.prompts: explicit): the format written out with placeholders,
# which small models copy more reliably than a description of it.
_EXPLICIT_SYSTEM = "You are a helpful assistant who reasons carefully about mathematics."

_EXPLICIT_TEACHER = """Here is a math problem for reference:

{problem}

Write ONE new math problem that is conceptually different from the reference: it should exercise \
other mathematical ideas, not just change the numbers or the story. The new problem must be \
self-contained and have a single answer that is a number or a mathematical expression.

Answer in exactly this format:
<think>how your problem differs conceptually from the reference, and why it is solvable</think>
<problem>{template_problem}</problem>
<concepts>{template_concepts}</concepts>"""

_EXPLICIT_STUDENT_SYSTEM = (
    "You are a helpful assistant. Reason through the problem step by step, then end your reply "
    "with a line of the form 'Therefore, the final answer is: $\\boxed{ANSWER}$', where ANSWER "
    "is only the final number or expression."
)


def teacher_messages(reference_problem: str, style: PromptStyle = "reference") -> Messages:
    """Ask for a conceptually different problem, written as ``<think>``/``<problem>``/``<concepts>``."""
    if style == "reference":
        user = _REFERENCE_TEACHER.replace("{problem}", reference_problem)
        return [{"role": "system", "content": _REFERENCE_TEACHER_SYSTEM}, {"role": "user", "content": user}]
    user = _EXPLICIT_TEACHER.format(
        problem=reference_problem.strip(),
        template_problem=TEMPLATE_PROBLEM,
        template_concepts=TEMPLATE_CONCEPTS,
    )
    return [{"role": "system", "content": _EXPLICIT_SYSTEM}, {"role": "user", "content": user}]


def student_messages(problem: str, style: PromptStyle = "reference") -> Messages:
    """Ask for step-by-step reasoning ending in a final-answer line with ``\\boxed{}``."""
    if style == "reference":
        return [
            {"role": "system", "content": _REFERENCE_STUDENT_SYSTEM},
            {"role": "user", "content": problem},
        ]
    return [
        {"role": "system", "content": _EXPLICIT_STUDENT_SYSTEM},
        {"role": "user", "content": problem.strip()},
    ]


def _merge_system(messages: Messages) -> Messages:
    """Fold a leading system turn into the first user turn, for templates without a system role."""
    if not messages or messages[0]["role"] != "system":
        return list(messages)
    system, rest = messages[0]["content"], list(messages[1:])
    if rest and rest[0]["role"] == "user":
        rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
    else:
        rest.insert(0, {"role": "user", "content": system})
    return rest


def _apply_template(tokenizer: Any, messages: Messages, chat_template: str | None) -> str:
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, chat_template=chat_template
    )
    if isinstance(rendered, list):  # some versions return a batch even for one conversation
        rendered = rendered[0]
    if not isinstance(rendered, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}, not str")
    return rendered


def render_prompt(tokenizer: Any, messages: Messages, chat_template: str | None = None) -> list[int]:
    """Token ids of ``messages`` under the chat template, ending with the generation prompt.

    Templates that reject a system role (Gemma raises "System role not supported") or silently drop
    it get the system text merged into the first user turn, as the reference does for Gemma. The
    text is rendered first and encoded without extra special tokens, so the template's own BOS is
    kept exactly once, whatever ``apply_chat_template`` returns in the installed transformers.
    """
    has_system = bool(messages) and messages[0]["role"] == "system"
    try:
        text = _apply_template(tokenizer, messages, chat_template)
    except Exception as error:  # template errors have no common type across versions
        if not has_system:
            raise
        try:
            text = _apply_template(tokenizer, _merge_system(messages), chat_template)
        except Exception:
            raise error from None
    else:
        if has_system and messages[0]["content"].strip() not in text:
            text = _apply_template(tokenizer, _merge_system(messages), chat_template)
    return list(tokenizer.encode(text, add_special_tokens=False))


def _token_char_ends(tokenizer: Any, token_ids: Sequence[int]) -> tuple[list[int], str]:
    """For each token, the length of the decoded text once it is emitted, and the decoded text.

    Incremental detokenisation: a token whose bytes do not yet form whole characters (decoded as
    U+FFFD) is emitted together with the token that completes them. Windows stay short, so the cost
    is linear in the completion length.
    """
    ids = list(token_ids)
    ends: list[int] = []
    pieces: list[str] = []
    length = 0
    prefix, read = 0, 0
    for j in range(len(ids)):
        before = tokenizer.decode(ids[prefix:read], skip_special_tokens=False)
        after = tokenizer.decode(ids[prefix : j + 1], skip_special_tokens=False)
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            piece = after[len(before) :]
            pieces.append(piece)
            length += len(piece)
            prefix, read = read, j + 1
        ends.append(length)
    return ends, "".join(pieces)


def _token_char_ends_slow(tokenizer: Any, token_ids: Sequence[int]) -> tuple[list[int], str]:
    """Quadratic fallback: decode every prefix (for tokenizers whose windows do not concatenate)."""
    ids = list(token_ids)
    ends = [len(tokenizer.decode(ids[: j + 1], skip_special_tokens=False)) for j in range(len(ids))]
    running = 0
    for j, end in enumerate(ends):  # keep the ends monotone across partial characters
        running = max(running, end)
        ends[j] = running
    return ends, tokenizer.decode(ids, skip_special_tokens=False)


def completion_loss_mask(tokenizer: Any, token_ids: Sequence[int], text: str) -> tuple[bool, ...]:
    """One flag per completion token: False where the token overlaps the ``<concepts>…</concepts>`` span.

    The concepts are a label the teacher writes about its own problem; the reference keeps them out
    of the policy-gradient loss so the teacher is not rewarded for the label itself. ``text`` is the
    completion text: when it has no concepts block, every token counts and nothing is decoded.
    """
    n = len(token_ids)
    if "<concepts>" not in text.lower() or n == 0:
        return (True,) * n
    ends, decoded = _token_char_ends(tokenizer, token_ids)
    if decoded != tokenizer.decode(list(token_ids), skip_special_tokens=False):
        ends, decoded = _token_char_ends_slow(tokenizer, token_ids)
    span = concepts_span(decoded)
    if span is None:
        return (True,) * n
    start, end = span
    mask = []
    begin = 0
    for token_end in ends:
        # token j covers decoded[begin:token_end]; an empty range (a pending partial character)
        # is attributed to the position where it will appear.
        lo, hi = begin, max(token_end, begin)
        overlaps = (lo < end and hi > start) if hi > lo else (start <= lo < end)
        mask.append(not overlaps)
        begin = token_end
    return tuple(mask)
