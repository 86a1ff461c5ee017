"""Reading what the policy wrote: the teacher's problem block and the student's final-answer line.

A teacher completion is *legal* (DESIGN.md §1) when it has a ``<problem>`` block of at least
``min_problem_chars`` characters that is not exactly ``...``, and a one-line ``<concepts>`` block
with at most ``max_concepts`` comma-separated concepts of which at least one has
``min_concept_chars`` characters: the reference's rules, to the letter. ``reject_placeholders``
(off by default) also refuses problems and concepts that copy a placeholder. Only legal problems are
answered, rewarded beyond zero and appended to the pool, so the rules here decide what the whole run
learns from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from opensir.spec import TeacherSpec

_FLAGS = re.DOTALL | re.IGNORECASE
_PROBLEM = re.compile(r"<problem>\s*(.*?)\s*</problem>", _FLAGS)
_CONCEPTS = re.compile(r"<concepts>\s*(.*?)\s*</concepts>", _FLAGS)
_THINK = re.compile(r"<think>\s*(.*?)\s*</think>", _FLAGS)
# The student prompt asks for exactly this closing line; the format reward checks that it is there:
# the reference's expression (one line, ``.`` does not cross newlines), and a tolerant one.
_FINAL_ANSWER_LINE = {
    "reference": re.compile(r"Therefore, the final answer is: \$\\boxed\{(.+)\}\$"),
    "tolerant": re.compile(r"Therefore,?\s*the\s+final\s+answer\s+is:?\s*\$?\s*\\boxed\s*\{.+\}\s*\$?"),
}
FormatRule = Literal["reference", "tolerant"]

# Problems that merely echo the prompt's template instead of posing a problem.
TEMPLATE_PROBLEM = "the full statement of your new problem"
"""What the teacher prompt shows inside ``<problem>``; a completion that copies it wrote no problem."""
TEMPLATE_CONCEPTS = "at most three comma-separated math concepts needed to solve it"
"""What the teacher prompt shows inside ``<concepts>``; copying it names no concept."""

_PLACEHOLDERS = frozenset(
    {
        TEMPLATE_PROBLEM,
        "...",
        "…",
        "your problem here",
        "your new problem here",
        "new problem here",
        "insert problem here",
        "insert your problem here",
        "problem statement here",
        "the new problem",
    }
)


@dataclass(frozen=True)
class TeacherOutput:
    """One teacher completion, parsed.

    ``problem`` and ``concepts`` are only filled for legal completions, so that no caller can
    accidentally use an illegal problem; ``reason`` says why a completion is illegal ("" when legal).
    ``concepts_span`` is the character span ``[start, end)`` of the whole ``<concepts>…</concepts>``
    block (tags included) wherever one is present, legal or not: that span is left out of the loss.
    """

    problem: str | None
    concepts: tuple[str, ...]
    has_think: bool
    legal: bool
    concepts_span: tuple[int, int] | None
    reason: str = ""


def concepts_span(text: str) -> tuple[int, int] | None:
    """Character span of the first ``<concepts>…</concepts>`` block, tags included, or None."""
    match = _CONCEPTS.search(text)
    return (match.start(), match.end()) if match else None


def _is_placeholder(problem: str) -> bool:
    normalised = problem.strip().strip(".:!?").strip().lower()
    return problem.strip() in _PLACEHOLDERS or normalised in _PLACEHOLDERS or normalised == ""


_REFERENCE_PLACEHOLDER = "..."
"""The one placeholder problem the reference refuses (compared after stripping whitespace)."""


def parse_teacher(
    text: str,
    *,
    max_concepts: int = 3,
    min_problem_chars: int = 10,
    min_concept_chars: int = 10,
    reject_placeholders: bool = False,
) -> TeacherOutput:
    """Parse a teacher completion and decide whether it is legal.

    Concepts are lower-cased and the ones shorter than ``min_concept_chars`` are dropped (as the
    reference does); the rest are kept in their written order.
    """
    has_think = _THINK.search(text) is not None
    span = concepts_span(text)

    def illegal(reason: str) -> TeacherOutput:
        return TeacherOutput(None, (), has_think, False, span, reason)

    problem_match = _PROBLEM.search(text)
    if problem_match is None:
        return illegal("no <problem>…</problem> block")
    problem = problem_match.group(1).strip()
    if not problem:
        return illegal("the problem is empty")
    if problem == _REFERENCE_PLACEHOLDER or (reject_placeholders and _is_placeholder(problem)):
        return illegal("the problem is a template placeholder")
    if len(problem) < min_problem_chars:
        return illegal(f"the problem has fewer than {min_problem_chars} characters")

    concepts_match = _CONCEPTS.search(text)
    if concepts_match is None:
        return illegal("no <concepts>…</concepts> block")
    raw = concepts_match.group(1).strip()
    if not raw:
        return illegal("the concepts block is empty")
    if "\n" in raw or "\r" in raw:
        return illegal("the concepts span several lines")
    items = [item.strip().lower() for item in raw.split(",")]
    if len(items) > max_concepts:
        return illegal(f"more than {max_concepts} concepts")
    kept = tuple(
        item
        for item in items
        if len(item) >= min_concept_chars and not (reject_placeholders and item == TEMPLATE_CONCEPTS)
    )
    if not kept:
        return illegal(f"no concept has at least {min_concept_chars} characters")
    return TeacherOutput(problem, kept, has_think, True, span, "")


def parse_teacher_completion(text: str, teacher: TeacherSpec) -> TeacherOutput:
    """:func:`parse_teacher` with the limits and switches of the spec's teacher section."""
    return parse_teacher(
        text,
        max_concepts=teacher.max_concepts,
        min_problem_chars=teacher.min_problem_chars,
        min_concept_chars=teacher.min_concept_chars,
        reject_placeholders=teacher.reject_placeholders,
    )


def teacher_format_ok(output: TeacherOutput) -> bool:
    """The teacher format reward's condition: a legal problem and a ``<think>`` block."""
    return output.legal and output.has_think


def has_final_answer_line(text: str, rule: FormatRule = "reference") -> bool:
    """The student format reward's condition: the closing "Therefore, the final answer is: $\\boxed{…}$"
    (exactly so by the reference's rule; with other punctuation and spacing by the tolerant one)."""
    return _FINAL_ANSWER_LINE[rule].search(text) is not None
