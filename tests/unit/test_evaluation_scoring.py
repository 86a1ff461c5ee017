"""Answer scoring of each benchmark's reference format, read from the benchmark files' own schemas."""

from __future__ import annotations

import pytest

from opensir.evaluation.datasets import BENCHMARKS, GoldRule, last_boxed, parse_records
from opensir.evaluation.scoring import score_response


class Reference(str):
    """A benchmark's reference answer that remembers how the paper parses it."""

    rule: GoldRule


def reference(benchmark: str, record: dict[str, object]) -> Reference:
    answer = Reference(parse_records(benchmark, [record], "test")[0].answer)
    answer.rule = BENCHMARKS[benchmark].gold_rule
    return answer


def final(answer: str) -> str:
    """A response in the student prompt's format."""
    return f"Let me work it out step by step.\nTherefore, the final answer is: $\\boxed{{{answer}}}$"


def right(response: str, ref: Reference) -> bool:
    return score_response(response, ref, ref.rule).correct


# ---------------------------------------------------------------------------------------- GSM8K
GSM8K = {
    "question": "Janet sells 9 eggs at $2. How much does she make?",
    "answer": "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18",
}


def test_gsm8k_reference_is_the_number_after_the_final_hashes():
    assert reference("gsm8k", GSM8K) == "18"
    assert reference("gsm8k", {"question": "q", "answer": "so\n#### 1,250"}) == "1250"


@pytest.mark.parametrize("answer", ["18", "18.0", "\\$18", "18.00"])
def test_gsm8k_right_answers(answer):
    assert right(final(answer), reference("gsm8k", GSM8K))


@pytest.mark.parametrize(
    "response",
    [final("9"), final("16"), "The answer is 81.", "18 eggs or 19", final("36") + " or maybe \\boxed{18.5}"],
)
def test_gsm8k_wrong_answers(response):
    assert not right(response, reference("gsm8k", GSM8K))


def test_gsm8k_thousands_separator_in_the_response():
    assert right(final("1,250"), reference("gsm8k", {"question": "q", "answer": "#### 1,250"}))


# ------------------------------------------------------------------------------------- MATH-500
MATH500 = {"problem": "Convert $(0,3)$ to polar.", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)"}
HALF = {"problem": "What is 1/2?", "answer": "\\frac{1}{2}"}


def test_math500_reference_is_the_answer_field():
    assert reference("math500", MATH500) == "\\left( 3, \\frac{\\pi}{2} \\right)"


@pytest.mark.parametrize(
    "answer", ["\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", "(3,\\frac{\\pi}{2})"]
)
def test_math500_tuple_answers(answer):
    assert right(final(answer), reference("math500", MATH500))


@pytest.mark.parametrize("answer", ["(3, \\pi)", "(\\frac{\\pi}{2}, 3)", "3"])
def test_math500_wrong_tuples(answer):
    assert not right(final(answer), reference("math500", MATH500))


@pytest.mark.parametrize("answer", ["0.5", "\\frac{1}{2}", "1/2", "\\dfrac12"])
def test_a_half_in_equivalent_forms(answer):
    assert right(final(answer), reference("math500", HALF))


@pytest.mark.parametrize("answer", ["0.51", "2", "\\frac{1}{3}"])
def test_not_a_half(answer):
    assert not right(final(answer), reference("math500", HALF))


def test_text_answers():
    ref = reference("math500", {"problem": "Who?", "answer": "\\text{Evelyn}"})
    assert right(final("\\text{Evelyn}"), ref)
    assert not right(final("\\text{Bob}"), ref)


def test_the_last_boxed_answer_counts():
    ref = reference("math500", HALF)
    assert right("First guess \\boxed{3}.\n\nSo in the end: \\boxed{\\frac{1}{2}}", ref)
    assert not right("First guess \\boxed{\\frac{1}{2}}.\n\nSo in the end: \\boxed{3}", ref)
    # Two boxes of one statement are one answer, a set, as math-verify reads them: not 1/2.
    score = score_response("First guess \\boxed{3}, but actually \\boxed{\\frac{1}{2}}", ref)
    assert not score.correct and score.answer == "3,\\frac{1}{2}"


def test_a_bare_number_is_an_answer_as_in_the_paper():
    # ExprExtractionConfig reads a plain number without an answer phrase, as the paper's check does.
    assert right("18 eggs", reference("gsm8k", GSM8K))


def test_an_unboxed_answer_is_read_after_the_answer_phrase():
    ref = reference("gsm8k", GSM8K)
    score = score_response("She makes 9 * 2 = 18 dollars.\nTherefore, the final answer is: 18.", ref)
    assert score.correct and score.answer == "18" and not score.boxed
    assert right("So the answer is 9 * 2 = 18 dollars a day.", ref)  # the result of the equation
    assert right("The answer is $18$.", ref)
    assert not right("Therefore, the final answer is: 9.", ref)
    assert right(final("18"), ref) and score_response(final("18"), ref).boxed


def test_a_boxed_answer_wins_over_the_answer_phrase():
    ref = reference("math500", HALF)
    assert not right("The answer is 1/2. Therefore, the final answer is: $\\boxed{3}$", ref)


def test_no_stated_answer_is_wrong():
    score = score_response("I could not work this out.", "\\frac{1}{2}")
    assert score.answer is None and not score.correct and not score.boxed
    score = score_response("I computed 1/2 at the end, 42 too.", "\\frac{1}{2}")
    assert score.answer == "42" and not score.correct  # the last number, read without an anchor


# ---------------------------------------------------------------------------------- AIME / AMC
def test_aime_answer_is_a_string_integer():
    ref = reference("aime24", {"problem": "Find the minutes.", "answer": "204"})
    assert ref == "204"
    assert right(final("204"), ref) and right(final("204.0"), ref)
    assert not right(final("240"), ref) and not right(final("2040"), ref)


@pytest.mark.parametrize("answer", ["27", "27.0", "27.00", "\\frac{54}{2}"])
def test_amc_float_answers_equal_integers(answer):
    ref = reference("amc23", {"problem": "How many miles?", "answer": 27.0})
    assert ref == "27.0"
    assert right(final(answer), ref)


@pytest.mark.parametrize("answer", ["28", "2.7", "270"])
def test_amc_wrong_answers(answer):
    assert not right(final(answer), reference("amc23", {"problem": "p", "answer": 27.0}))


# ---------------------------------------------------------------------------------------- Minerva
MINERVA = {
    "problem": "Find the diameter of the image (in cm).",
    "solution": "First \\boxed{7200} is the focal length in cm, then\n"
    "\\[s=\\frac{45}{3600} \\frac{\\pi}{180} 7200=\\boxed{1.6} \\mathrm{~cm}\\]",
}


def test_minerva_reference_is_the_last_boxed_in_the_solution():
    assert reference("minerva_math", MINERVA) == "1.6"


@pytest.mark.parametrize("answer", ["1.6", "1.60", "\\frac{8}{5}", "1.6 \\mathrm{~cm}"])
def test_minerva_right_answers(answer):
    assert right(final(answer), reference("minerva_math", MINERVA))


@pytest.mark.parametrize("answer", ["7200", "16", "0.16"])
def test_minerva_wrong_answers(answer):
    assert not right(final(answer), reference("minerva_math", MINERVA))


def test_minerva_nested_braces_in_the_reference():
    ref = reference("minerva_math", {"problem": "p", "solution": "so $\\boxed{\\frac{1}{\\sqrt{2}}}$."})
    assert ref == "\\frac{1}{\\sqrt{2}}"
    assert right(final("\\frac{\\sqrt{2}}{2}"), ref)
    assert not right(final("\\sqrt{2}"), ref)


# --------------------------------------------------------------------------------- OlympiadBench
def test_olympiad_final_answer_is_a_list():
    record = {"question": "How many moves?", "final_answer": ["2"], "is_multiple_answer": False}
    ref = reference("olympiadbench", record)
    assert ref == "2"
    assert right(final("2"), ref) and not right(final("3"), ref)


def test_olympiad_dollar_wrapped_expression():
    ref = reference("olympiadbench", {"question": "mu?", "final_answer": ["$\\frac{1}{2 n+2}$"]})
    assert ref == "$\\frac{1}{2 n+2}$"  # kept as written: the paper parses it as LaTeX, then as an expression
    assert right(final("\\frac{1}{2(n+1)}"), ref)
    assert not right(final("\\frac{1}{2n}"), ref)


def test_olympiad_list_written_as_a_string_and_multiple_answers():
    record = {"question": "Find all x.", "final_answer": "['$3$', '$-1$']", "is_multiple_answer": True}
    ref = reference("olympiadbench", record)
    assert ref == "$3$, $-1$"
    assert right(final("3, -1"), ref)
    assert right(final("-1, 3"), ref)  # a set of answers: order does not matter
    assert not right(final("3"), ref)
    assert not right(final("3, 1"), ref)


# ---------------------------------------------------------------------------------- College Math
def test_college_math_dollar_wrapped_answers():
    ref = reference("college_math", {"question": "Simplify: $-10-4(n-5)$", "answer": "$10-4 n$"})
    assert ref == "$10-4 n$"
    assert right(final("10 - 4n"), ref)
    assert right(final("-4n + 10"), ref)
    assert not right(final("10 + 4n"), ref)


def test_college_math_words_are_never_right_as_in_the_paper():
    # The paper's check parses a reference that is a word to nothing, so no response matches it.
    ref = reference("college_math", {"question": "Converge?", "answer": "diverges"})
    assert not right(final("\\text{diverges}"), ref)
    assert not right(final("diverges"), ref)


def test_college_math_decimal_and_fraction():
    ref = reference("college_math", {"question": "q", "answer": "$\\frac{3}{4}$"})
    assert right(final("0.75"), ref) and not right(final("0.7"), ref)


# ----------------------------------------------------------------------------------------- helpers
def test_last_boxed_balances_braces():
    assert last_boxed("\\boxed{a} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{1} and an unclosed \\boxed{2") == "1"
