"""A faithful run reads answers, format lines, legality and solvability exactly as the reference does.

Every expected value below is what the reference implementation (EdinburghNLP/OpenSIR,
``src/opensir/train.py`` and ``src/utils/math_processing.py``, with the math-verify this project pins)
gives for the same input; ``docs/method.md`` lists each place where opensir departs from it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from math_verify import LatexExtractionConfig, parse

from opensir.selfplay import has_final_answer_line, parse_teacher, read_answer, solvability_reward
from opensir.selfplay.answers import TEMPLATE_ANSWER, is_mathematical
from opensir.selfplay.parsing import TEMPLATE_CONCEPTS
from opensir.spec import SpecError, parse_run


def reference_answer(completion: str) -> str | None:
    """math-verify called with the reference's configuration, then the reference's filter."""
    parsed = parse(
        completion,
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)],
        extraction_mode="first_match",
        fallback_mode="first_match",
    )
    if not parsed:
        return None
    if isinstance(parsed[-1], str) and parsed[-1].strip() == TEMPLATE_ANSWER:
        return None  # the one fix: the reference meant to refuse a copied \boxed{ANSWER}
    text = str(parsed[0])
    return text if is_mathematical(text) else None


def answer(completion: str) -> str | None:
    read = read_answer(completion)
    return None if read is None else read.text


# ------------------------------------------------------------------------- the answer a vote sees
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Step: \\boxed{3}.\n\nTherefore, the final answer is: $\\boxed{5}$", "5"),
        ("$\\boxed{3}$ and $\\boxed{5}$", "{3, 5}"),
        ("\\boxed{2} first, then more. Final: \\boxed{9}", "{2, 9}"),
        ("Therefore, the final answer is: $7$", "7"),
        ("The answer is $-32$.", "-32"),
        # An unclosed box after an anchor: math-verify's string fallback, which the filter accepts.
        ("Therefore, the final answer is: $\\boxed{3/4$", "{3/4"),
        # Without an anchor math-verify finds nothing in it.
        ("$\\boxed{3/4$", None),
        ("\\boxed{0.5}", "1/2"),
        ("The answer is 42.", None),  # a number outside $…$ is not anchored LaTeX
        ("\\boxed{\\text{Evelyn}}", None),  # the filter refuses \text{…} and words
    ],
)
def test_answers_are_the_references(completion: str, expected: str | None) -> None:
    assert answer(completion) == expected
    assert reference_answer(completion) == expected


def test_the_copied_placeholder_is_no_answer() -> None:
    """The reference's guard compares sympy's printout with "\\boxed{ANSWER}" and never fires: a
    student that copies the prompt's template votes with "a*e*n*r*s*w". Fixed here."""
    assert answer("Therefore, the final answer is: $\\boxed{ANSWER}$") is None


_FRAGMENTS = st.sampled_from(
    [
        "\\boxed{",
        "}",
        "{",
        "$",
        "$$",
        "\\(",
        "\\)",
        "3",
        "-7",
        "0.5",
        "x^2",
        "\\frac{1}{2}",
        "\\sqrt{2}",
        "\\text{yes}",
        "Therefore, the final answer is: ",
        "The answer is ",
        "final answer: ",
        "\n\n",
        " and ",
        ", ",
        ". ",
        "Let me think.",
        "ANSWER",
        "apple",
        "=",
        "\\{1, 2\\}",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=14).map("".join))
def test_property_default_reading_is_math_verify_with_the_references_configuration(completion: str) -> None:
    assert answer(completion) == reference_answer(completion)


# ------------------------------------------------------------------------------ the format reward
@pytest.mark.parametrize(
    ("completion", "reference", "tolerant"),
    [
        ("so 4.\nTherefore, the final answer is: $\\boxed{4}$", True, True),
        ("Therefore, the final answer is: $\\boxed{\\frac{1}{2}}$.", True, True),
        ("Therefore the final answer is: $\\boxed{5}$", False, True),  # no comma
        ("Therefore, the final answer is: \\boxed{5}", False, True),  # no dollars
        ("Therefore, the final answer is $\\boxed{5}$", False, True),  # no colon
        ("Therefore, the final answer is: $ \\boxed{5} $", False, True),  # spaces inside $ … $
        ("Therefore, the final answer is: $\\boxed {5}$", False, True),  # a space before {
        ("Therefore,  the final answer is: $\\boxed{5}$", False, True),  # a double space
        ("Therefore, the final answer is: $\\boxed{5\n}$", False, False),  # a newline in the box
        ("The answer is \\boxed{4}.", False, False),
        ("Therefore, the final answer is: $\\boxed{}$", False, False),
    ],
)
def test_final_answer_line(completion: str, reference: bool, tolerant: bool) -> None:
    assert has_final_answer_line(completion) is reference
    assert has_final_answer_line(completion, "tolerant") is tolerant


# ----------------------------------------------------------------------------- teacher legality
CONCEPTS = "<concepts>basic arithmetic</concepts>"


@pytest.mark.parametrize(
    ("completion", "legal"),
    [
        (f"<problem>...</problem>{CONCEPTS}", False),  # the one placeholder the reference refuses
        (f"<problem>  ...  </problem>{CONCEPTS}", False),
        (f"<problem>Your problem here</problem>{CONCEPTS}", True),
        (f"<problem>The full statement of your new problem.</problem>{CONCEPTS}", True),
        (f"<problem>What is 17 times 23?</problem><concepts>{TEMPLATE_CONCEPTS}</concepts>", True),
        (f"<problem>....</problem>{CONCEPTS}", False),  # under 10 characters
    ],
)
def test_legality_is_the_references_and_placeholders_are_a_switch(completion: str, legal: bool) -> None:
    assert parse_teacher(completion).legal is legal
    if legal:
        assert not parse_teacher(completion, reject_placeholders=True).legal


# --------------------------------------------------------------------------------- solvability
def test_band_edges_compare_exactly() -> None:
    # A band written as 0.1*3 is 0.30000000000000004, so 3/10 is outside it, as in the reference.
    assert solvability_reward(3 / 10, 10, 0.1 * 3, 0.9) == 0.0
    assert solvability_reward(4 / 10, 10, 0.1 * 3, 0.9) > 0.0
    assert solvability_reward(3 / 10, 10, 0.3, 0.9) == pytest.approx(1 / 7)


def run_with(**self_play):
    return {
        "apiVersion": "opensir.io/v1alpha1",
        "kind": "SelfPlayRun",
        "metadata": {"name": "band"},
        "spec": {"model": {"name": "builtin:smollm2-135m-instruct"}, "selfPlay": self_play},
    }


def test_a_band_no_solve_rate_can_reach_is_refused_with_its_path() -> None:
    # With 4 samples the reachable solve rates are 1/4, 1/2, 3/4 and 1: none lies in [0.55, 0.7]
    # (the reference divides by zero).
    with pytest.raises(SpecError) as caught:
        parse_run(run_with(solveRate={"lower": 0.55, "upper": 0.7}, student={"samples": 4}))
    [(path, value, message)] = caught.value.problems
    assert path == "spec.selfPlay.solveRate" and value == {"lower": 0.55, "upper": 0.7}
    assert "i/4" in message
    parse_run(run_with(solveRate={"lower": 0.55, "upper": 0.7}, student={"samples": 8}))  # 5/8 is inside


# ------------------------------------------------------------------------------------ sampling
def test_rollouts_sample_as_the_reference_does_and_overrides_keep_the_other_defaults() -> None:
    spec = parse_run(run_with(teacher={"sampling": {"maxTokens": 128}})).spec
    teacher, student = spec.self_play.teacher.sampling, spec.self_play.student.sampling
    assert (teacher.top_k, teacher.temperature, teacher.top_p, teacher.max_tokens) == (50, 1.0, 1.0, 128)
    assert (student.top_k, student.max_tokens) == (50, 2048)
    assert spec.self_play.prompts == "reference"
    assert spec.self_play.student.answer_rule == "reference"
    assert spec.self_play.student.format_rule == "reference"
    assert spec.self_play.teacher.reject_placeholders is False
