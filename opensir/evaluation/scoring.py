"""Is a response right? The paper's check: the response's final ``\\boxed{}`` against the reference
answer with math-verify.

Both sides go through :mod:`opensir.selfplay.answers` (math-verify with its own time limits): the
response's LAST ``\\boxed{…}`` (the student prompt asks for the answer at the end) and the reference
answer are parsed to canonical strings, and math-verify decides whether they are equal, so
``0.5``/``\\frac{1}{2}`` and ``27.0``/``27`` match. A reference answer that is words, not mathematics
(``\\text{Evelyn}``, ``diverges``), is compared as normalised text instead.

A response without any ``\\boxed{}`` is read the way math-verify's own answer extraction anchors
on answer phrases: the answer stated after the last "final answer is" / "answer is" / "answer:"
(a ``$…$`` span, else the number there, after the last ``=`` of an equation). Small models often
end with "Therefore, the final answer is: 28." instead of boxing it; counting only boxed answers
would measure the format rather than the mathematics. :attr:`Score.boxed` keeps the two apart, and
the reports give the share of boxed responses. A response with neither is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from opensir.evaluation.datasets import last_boxed
from opensir.selfplay.answers import answers_equivalent, extract_answer

_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_DOLLARS = re.compile(r"^\$\$?(.+?)\$\$?")


def phrase_answer(text: str) -> str | None:
    """The answer stated after the response's last answer phrase ("the final answer is: 28."), or None."""
    matches = list(_ANSWER_PHRASE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].split("\n", 1)[0].strip()
    dollars = _DOLLARS.match(rest)
    if dollars:
        return dollars.group(1).strip() or None
    if rest.startswith("\\(") and "\\)" in rest:
        return rest[2 : rest.index("\\)")].strip() or None
    sentence = re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0]
    if "=" in sentence:
        sentence = sentence.rsplit("=", 1)[1]
    number = _NUMBER.search(sentence)
    return number.group(0).replace(",", "") if number else None


def normalize_text(answer: str) -> str:
    """Text form of an answer for the non-mathematical fallback: without ``$``, ``\\text{}``, extra
    spacing, case and a final period."""
    text = _TEXT_COMMAND.sub(r"\1", answer.strip().strip("$"))
    text = re.sub(r"\s+", " ", text.replace("\\,", " ").replace("\\ ", " ")).strip()
    return text.rstrip(".").strip().lower()


@lru_cache(maxsize=65536)
def canonical_answer(answer: str, timeout_seconds: float = 5.0) -> str | None:
    """math-verify's canonical form of one bare answer (``27.0``, ``\\frac{1}{2}``); None when it is
    not mathematical."""
    return extract_answer("\\boxed{" + answer + "}", timeout_seconds=timeout_seconds)


@dataclass(frozen=True)
class Score:
    """The verdict on one response."""

    answer: str | None
    """The response's final answer as written (its last ``\\boxed{}``, else the answer phrase's);
    None when it states none."""
    canonical: str | None
    """Its canonical form (math-verify), or the normalised text when it is not mathematical."""
    correct: bool
    boxed: bool = False
    """Whether the answer was in a ``\\boxed{}`` (the format the student prompt asks for)."""


def score_response(response: str, reference: str, *, timeout_seconds: float = 5.0) -> Score:
    """Whether ``response`` states ``reference`` as its final answer (see the module docstring)."""
    answer = last_boxed(response)
    boxed = answer is not None and bool(answer.strip())
    if not boxed:
        answer = phrase_answer(response)
    if answer is None or not answer.strip():
        return Score(None, None, False)
    predicted = canonical_answer(answer, timeout_seconds)
    gold = canonical_answer(reference, timeout_seconds)
    if predicted is not None and gold is not None:
        right = answers_equivalent(gold, predicted, timeout_seconds=timeout_seconds)
        return Score(answer, predicted, right, boxed)
    text = normalize_text(answer)
    right = bool(text) and text == normalize_text(reference)
    return Score(answer, predicted if predicted is not None else text, right, boxed)


def same_answer(a: str, b: str, *, timeout_seconds: float = 5.0) -> bool:
    """Whether two canonical answers of responses are equal (for majority voting)."""
    return answers_equivalent(a, b, timeout_seconds=timeout_seconds)
