"""Student answers: how a completion's answer is read, and the majority vote over a problem's answers.

There is no label in self-play: the majority answer of the student's samples *is* the label
(DESIGN.md §1), so how answers are read and grouped decides every student reward and every solve
rate. By default both follow the reference implementation exactly (``docs/method.md``):

* **Reading** (``rule="reference"``): math-verify's ``parse`` of the whole completion with one
  ``LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)`` and
  ``first_match`` extraction and fallback. math-verify searches from the END of the text, so the answer
  is the last ``\\boxed{…}`` (or the set of the boxes of one final statement), an answer anchored by
  "final answer is: $7$", or math-verify's string fallback. The answer's string is ``str()`` of the
  first parse result, kept when the reference's filter finds it mathematical
  (:func:`is_mathematical`). One fix: a copy of the prompt's ``\\boxed{ANSWER}`` placeholder is no
  answer (the reference's guard compared sympy's printout and never fired).
  ``rule="firstBox"`` (opensir's earlier improvement, off by default) reads the FIRST balanced
  ``\\boxed{…}`` alone and also refuses placeholder words (``answer``, ``your answer``).
* **Voting** (``mode="exact"``): identical answer strings vote together, the first-seen answer wins
  ties, and the solve rate is the majority count over the answers that parsed.
  ``mode="equivalence"`` lets answers that math-verify proves equal vote together (``0.5`` and
  ``\\frac{1}{2}``, ``3`` and ``3.0``).

Every math-verify call runs under :func:`opensir.selfplay.timelimit.call_with_time_limit`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from math_verify.errors import TimeoutException

from opensir.selfplay.timelimit import call_with_time_limit
from opensir.spec import StudentSpec

logger = logging.getLogger(__name__)

AnswerRule = Literal["reference", "firstBox"]
VotingMode = Literal["exact", "equivalence"]
SolveRateOver = Literal["parseable", "all"]

_BOXED = re.compile(r"\\boxed\s*\{")
TEMPLATE_ANSWER = "ANSWER"
"""What the student prompt shows inside ``\\boxed{}``; a completion that copies it gave no answer."""
# Placeholder words the firstBox rule also refuses (the reference's filter lets them through as
# products of symbols: "your answer" parses to y*o*u*r*a*n*s*w*e*r).
_PLACEHOLDER_ANSWERS = frozenset({"answer", "final answer", "your answer", "..."})


@dataclass(frozen=True)
class Answer:
    """One student answer, as the vote sees it."""

    text: str
    """``str()`` of math-verify's first parse result, as the reference keeps it: answers vote together
    exactly when these strings are identical (``1/2`` for ``0.5``, ``\\frac{1}{2}`` and ``1/2``)."""
    latex: str
    """The same answer printed as LaTeX (the string itself for math-verify's string fallback), which
    math-verify can parse again: what equivalence voting compares."""


# --------------------------------------------------------------------------------- first \boxed{}
def first_boxed(text: str) -> str | None:
    """Content of the first ``\\boxed{…}`` with balanced braces, or None when there is none."""
    match = _BOXED.search(text)
    while match is not None:
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            char = text[i]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
        # unbalanced: no later \boxed{} can close either, since this one swallowed the rest
        return None
    return None


# ----------------------------------------------------------------- the non-mathematical filter
_CURRENCY = r"[\$£€¥¢₹₽₪₨₩₦₡₵₴₸₺₼]"
_ACCEPT_WHOLE = tuple(
    re.compile(p)
    for p in (
        r"^-?\d+(\.\d+)?$",  # 42, -3.5
        r"^-?\.\d+$",  # .35
        r"^-?\d{1,3}(,\d{3})*(\.\d+)?$",  # 12,500.00
        r"^\d+(\.\d+)?(,\s*\d+(\.\d+)?)+$",  # 15, 21, 27
        r"^\d+(\.\d+)?(:\d+(\.\d+)?)+$",  # 3:2:1
        r"^\d+(\.\d+)?\\?%$",  # 25%, 25\%
        r"^\d+!$",  # 5!
        r"^\\\$\d+(\.\d+)?$",  # \$18.90
        rf"^({_CURRENCY}?\d+(\.\d+)?{_CURRENCY}?|\d+(\.\d+)?{_CURRENCY})$",  # £500, 142.86$
        r"^\d+/\d+$",  # 3/4
    )
)
_ACCEPT_ANYWHERE = tuple(
    re.compile(p)
    for p in (
        r"\\;",  # LaTeX spacing
        r"\\\w+",  # any LaTeX command (\pi, \frac, \sqrt, \infty …)
        r"[\+\-\*/\^=<>(){}\[\]]",  # arithmetic, relations, brackets
        r"^\d+\^\d+$",
        r"^\d+[a-z]$",  # 2a
        r"^\d+\$$",
        r"^[a-zA-Z]{1,2}$",  # x, ab
        r"[_\^]",
        r"^\d+(\.\d+)?[eE][+-]?\d+$",  # 1.2e-4
    )
)
_MATH_CHARS = re.compile(r"[\d\+\-\*/\^=<>(){}\[\]\\%!$:£€¥¢₹₽₪₨₩₦₡₵₴₸₺₼]")


def is_mathematical(answer: str) -> bool:
    """The reference's filter for answers that are words rather than mathematics.

    Applied to the canonical (sympy) string of a parsed answer, as the reference does: numbers,
    LaTeX and anything with an operator pass; multi-word prose, all-caps labels and alphabetic
    words longer than three letters do not.
    """
    s = answer
    if s.strip() == "\\boxed{ANSWER}":  # the reference's guard (a printed answer never looks like this)
        return False
    if not s or s.isspace() or re.match(r"\\text\{[^}]*\}", s):
        return False
    if any(p.match(s) for p in _ACCEPT_WHOLE) or any(p.search(s) for p in _ACCEPT_ANYWHERE):
        return True
    if len(s) > 10 and " " in s and not _MATH_CHARS.search(s):
        return False
    if (s.isupper() and len(s) > 3 and s.isalpha()) or (re.match(r"^[A-Za-z\s]+$", s) and len(s) > 3):
        return False
    if len(s) <= 3 and re.match(r"^[A-Za-z0-9]+$", s):
        return True
    return bool(re.search(r"\d", s) and re.search(r"[a-zA-Z]", s))


# ----------------------------------------------------------------------- reading, time-limited
def _extraction_config() -> list[Any]:
    """The reference's one extraction target: LaTeX, boxed first, nothing read without an anchor."""
    from math_verify import LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]


def _latex(value: Any) -> str:
    import sympy

    try:
        return str(sympy.latex(value)).strip()
    except Exception:  # sympy's printers fail on some degenerate trees; str() still names the answer
        return str(value)


def _read(completion: str, rule: AnswerRule) -> Answer | None:
    """The answer of one completion under ``rule`` (runs under the time limit)."""
    from math_verify import parse

    if rule == "firstBox":
        content = first_boxed(completion)
        if content is None or not content.strip():
            return None
        if content.strip().strip("$").strip().lower() in _PLACEHOLDER_ANSWERS:
            return None
        completion = "\\boxed{" + content + "}"
    elif rule != "reference":
        raise ValueError(f"answer rule must be 'reference' or 'firstBox', not {rule!r}")
    parsed = parse(
        completion,
        extraction_config=_extraction_config(),
        extraction_mode="first_match",
        fallback_mode="first_match",
        parsing_timeout=None,  # bounded by call_with_time_limit instead
    )
    if not parsed:
        return None
    # math-verify returns [expression, the string it was parsed from] (only the string on fallback).
    if isinstance(parsed[-1], str) and parsed[-1].strip() == TEMPLATE_ANSWER:
        return None
    value = parsed[0]
    try:
        text = str(value)
    except Exception:  # as the reference: an answer that cannot be printed is no answer
        return None
    if not is_mathematical(text):
        return None
    return Answer(text, text if isinstance(value, str) else _latex(value))


def _equivalent(a: str, b: str) -> bool:
    """math-verify's verdict on two LaTeX answers (both directions must hold)."""
    from math_verify import parse, verify

    parsed = [
        parse(
            "\\boxed{" + s + "}",
            extraction_config=_extraction_config(),
            extraction_mode="first_match",
            parsing_timeout=None,
        )
        for s in (a, b)
    ]
    if not parsed[0] or not parsed[1]:
        return False
    return bool(
        verify(parsed[0], parsed[1], timeout_seconds=None)
        and verify(parsed[1], parsed[0], timeout_seconds=None)
    )


# ------------------------------------------------------------------------------------ public API
def read_answer(
    completion: str, *, rule: AnswerRule = "reference", timeout_seconds: float = 5.0
) -> Answer | None:
    """The answer of one student completion (see the module docstring), or None when it states none
    that parses, is mathematical and is not the prompt's placeholder, or when math-verify runs out of
    time."""
    try:
        return call_with_time_limit(_read, (completion, rule), timeout_seconds)
    except TimeoutException:
        logger.warning("answer parsing timed out after %s s: %.200r", timeout_seconds, completion[-200:])
        return None


def answers_equivalent(a: str, b: str, *, timeout_seconds: float = 5.0) -> bool:
    """Whether math-verify proves two LaTeX answers equal within the time limit (False when not)."""
    if a == b:
        return True
    try:
        return bool(call_with_time_limit(_equivalent, (a, b), timeout_seconds))
    except TimeoutException:
        logger.warning("answer comparison timed out after %s s: %.100r vs %.100r", timeout_seconds, a, b)
        return False


@dataclass(frozen=True)
class Vote:
    """The majority vote over one problem's student answers.

    ``agrees[i]`` says whether answer ``i`` votes with the majority (in equivalence mode, whether it
    is in the majority's cluster); it is what the student's accuracy reward reads.
    """

    answer: str | None
    """The majority answer's string (:attr:`Answer.text`): the pseudo-label."""
    count: int
    parseable: int
    total: int
    solve_rate: float
    agrees: tuple[bool, ...] = ()


def majority_vote(
    answers: Sequence[Answer | None],
    *,
    mode: VotingMode = "exact",
    over: SolveRateOver = "parseable",
    timeout_seconds: float = 5.0,
) -> Vote:
    """The pseudo-label of one problem and its solve rate.

    ``exact`` (reference): identical answer strings vote together; on a tie the answer seen first
    wins. ``equivalence``: each answer joins the first earlier cluster whose first answer math-verify
    proves equal to it; the largest cluster wins, the earliest on a tie, and is named by its first
    answer. The solve rate is the majority count over the parseable answers (reference) or over all
    samples; with no parseable answer there is no label and the solve rate is 0.
    """
    if mode not in ("exact", "equivalence"):
        raise ValueError(f"voting mode must be 'exact' or 'equivalence', not {mode!r}")
    if over not in ("parseable", "all"):
        raise ValueError(f"solve rate must be over 'parseable' or 'all', not {over!r}")
    total = len(answers)
    clusters: list[tuple[Answer, list[int]]] = []
    index: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        joined = index.get(answer.text)
        if joined is None and mode == "equivalence":
            joined = next(
                (
                    c
                    for c, (representative, _) in enumerate(clusters)
                    if answers_equivalent(representative.latex, answer.latex, timeout_seconds=timeout_seconds)
                ),
                None,
            )
        if joined is None:
            clusters.append((answer, []))
            joined = len(clusters) - 1
        clusters[joined][1].append(i)
        index[answer.text] = joined

    if not clusters:
        return Vote(None, 0, 0, total, 0.0, (False,) * total)
    parseable = sum(len(members) for _, members in clusters)
    best = max(range(len(clusters)), key=lambda c: (len(clusters[c][1]), -c))
    label, members = clusters[best]
    solve_rate = len(members) / (parseable if over == "parseable" else total)
    assert math.isfinite(solve_rate)
    member_set = set(members)
    agrees = tuple(i in member_set for i in range(total))
    return Vote(label.text, len(members), parseable, total, solve_rate, agrees)


def vote_on_completions(texts: Sequence[str], student: StudentSpec) -> tuple[tuple[Answer | None, ...], Vote]:
    """Read each of one problem's student completions and vote, as ``student`` configures it."""
    timeout = student.voting_timeout_seconds
    answers = tuple(read_answer(t, rule=student.answer_rule, timeout_seconds=timeout) for t in texts)
    vote = majority_vote(answers, mode=student.voting, over=student.solve_rate_over, timeout_seconds=timeout)
    return answers, vote
