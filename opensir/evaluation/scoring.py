"""Is a response right? The paper's check, as the reference's ``evaluate.py`` makes it.

* The response is parsed by math-verify with ``[ExprExtractionConfig(), LatexExtractionConfig(
  boxed_match_priority=0, try_extract_without_anchor=False)]`` and ``first_match`` extraction and
  fallback: math-verify searches from the end, so this is the last ``\\boxed{…}``, else an answer
  anchored by "final answer is" / "answer:" (a ``$…$`` span or a plain number or expression), else
  nothing: a response that states no answer is wrong.
* The benchmark's answer is parsed as the reference parses each benchmark's gold (:data:`GoldRule`):
  ``"$answer$"`` with one ``LatexExtractionConfig()`` (GSM8K, MATH-500, Minerva, and AIME and AMC,
  which the reference does not evaluate), or the bare answer with LaTeX then plain expressions
  (OlympiadBench, College Math).
* ``math_verify.verify(gold, prediction)`` decides, as the reference calls it.

Where the reference reads a benchmark's answer wrongly, the reader in :mod:`opensir.evaluation.datasets`
fixes it before this step (listed in ``docs/method.md``): GSM8K's thousands separators are dropped
(``1,250`` would parse as a set) and OlympiadBench's several answers are all kept, not only the first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from math_verify.errors import TimeoutException

from opensir.evaluation.datasets import GoldRule, last_boxed
from opensir.selfplay.answers import answers_equivalent
from opensir.selfplay.timelimit import call_with_time_limit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """The verdict on one response."""

    answer: str | None
    """The response's final answer as math-verify extracted it; None when it states none."""
    canonical: str | None
    """Its parsed form printed as LaTeX (what maj@k groups by equivalence)."""
    correct: bool
    boxed: bool = False
    """Whether the response has a ``\\boxed{}`` (the format the prompt asks for); a diagnostic only."""


def _gold(reference: str, rule: GoldRule) -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    if rule == "latex":
        target, config = "$" + reference + "$", [LatexExtractionConfig()]
    else:
        target, config = reference, [LatexExtractionConfig(), ExprExtractionConfig()]
    return parse(
        target,
        extraction_config=config,
        extraction_mode="first_match",
        fallback_mode="first_match",
        parsing_timeout=None,
    )


def _score(response: str, reference: str, rule: GoldRule) -> tuple[str | None, str | None, bool]:
    """(extracted answer, its LaTeX, right?) for one response (runs under the time limit)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    prediction = parse(
        response,
        extraction_config=[
            ExprExtractionConfig(),
            LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
        ],
        extraction_mode="first_match",
        fallback_mode="first_match",
        parsing_timeout=None,
    )
    if not prediction:
        return None, None, False
    gold = _gold(reference, rule)
    right = bool(gold) and bool(verify(gold, prediction, timeout_seconds=None))
    value, written = prediction[0], prediction[-1]
    if isinstance(value, str):
        canonical = value
    else:
        import sympy

        try:
            canonical = str(sympy.latex(value))
        except Exception:  # sympy's printers fail on some degenerate trees
            canonical = str(value)
    return str(written), canonical, right


def score_response(
    response: str, reference: str, rule: GoldRule = "latex", *, timeout_seconds: float = 10.0
) -> Score:
    """Whether ``response`` states ``reference`` as its final answer (see the module docstring).

    ``timeout_seconds`` bounds parsing and checking together; a response that runs past it is wrong.
    """
    boxed = last_boxed(response) is not None
    try:
        answer, canonical, right = call_with_time_limit(_score, (response, reference, rule), timeout_seconds)
    except TimeoutException:
        logger.warning("scoring timed out after %s s: %.100r", timeout_seconds, response[-100:])
        return Score(None, None, False, boxed)
    return Score(answer, canonical, right, boxed)


def same_answer(a: str, b: str, *, timeout_seconds: float = 5.0) -> bool:
    """Whether two responses' canonical answers are equal (for majority voting)."""
    return answers_equivalent(a, b, timeout_seconds=timeout_seconds)
