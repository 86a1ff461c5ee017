"""Teacher legality rules and the student's final-answer line."""

from __future__ import annotations

import pytest

from opensir.selfplay import has_final_answer_line, parse_teacher, teacher_format_ok

GOOD = (
    "<think>Move from arithmetic to geometry.</think>\n"
    "<problem>A circle has radius 3. What is its area divided by pi?</problem>\n"
    "<concepts>Area of a circle, Multiplication</concepts>"
)


def test_legal_completion() -> None:
    out = parse_teacher(GOOD)
    assert out.legal and out.reason == ""
    assert out.problem == "A circle has radius 3. What is its area divided by pi?"
    assert out.concepts == ("area of a circle", "multiplication")
    assert out.has_think and teacher_format_ok(out)
    assert out.concepts_span is not None
    start, end = out.concepts_span
    assert GOOD[start:end] == "<concepts>Area of a circle, Multiplication</concepts>"


def test_legal_without_think_has_no_format_reward() -> None:
    out = parse_teacher(GOOD.split("</think>")[1])
    assert out.legal and not out.has_think and not teacher_format_ok(out)


def test_short_concepts_are_dropped_but_one_long_suffices() -> None:
    out = parse_teacher(
        "<problem>What is 17 times 23 minus 4?</problem><concepts>algebra, multiplication</concepts>"
    )
    assert out.legal and out.concepts == ("multiplication",)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no tags at all", "no <problem>"),
        ("<problem>2+2=?</problem><concepts>basic arithmetic</concepts>", "fewer than 10"),
        ("<problem>...</problem><concepts>basic arithmetic</concepts>", "placeholder"),
        ("<problem>What is 17 times 23 minus 4?</problem>", "no <concepts>"),
        ("<problem>What is 17 times 23 minus 4?</problem><concepts> </concepts>", "empty"),
        (
            "<problem>What is 17 times 23 minus 4?</problem>"
            "<concepts>multiplication,\nsubtraction</concepts>",
            "several lines",
        ),
        (
            "<problem>What is 17 times 23 minus 4?</problem><concepts>a, b, c, multiplication</concepts>",
            "more than 3",
        ),
        ("<problem>What is 17 times 23 minus 4?</problem><concepts>sums, products</concepts>", "at least 10"),
    ],
)
def test_illegal(text: str, reason: str) -> None:
    out = parse_teacher(text)
    assert not out.legal and out.problem is None and out.concepts == ()
    assert reason in out.reason
    assert not teacher_format_ok(out)


def test_limits_are_configurable() -> None:
    text = "<problem>What is 7*6?</problem><concepts>arithmetic, tables, products, numbers</concepts>"
    assert not parse_teacher(text).legal
    out = parse_teacher(text, max_concepts=4, min_problem_chars=5, min_concept_chars=6)
    assert out.legal and out.concepts == ("arithmetic", "tables", "products", "numbers")


def test_first_blocks_win_and_tags_are_case_insensitive() -> None:
    text = (
        "<PROBLEM> Find the sum of the first 10 odd numbers. </PROBLEM><Concepts>arithmetic series</Concepts>"
        "<problem>second problem ignored here</problem>"
    )
    out = parse_teacher(text)
    assert out.legal and out.problem == "Find the sum of the first 10 odd numbers."


def test_concepts_span_reported_even_when_illegal() -> None:
    text = "<problem>short</problem><concepts>arithmetic series</concepts>"
    out = parse_teacher(text)
    assert not out.legal and out.concepts_span == (text.index("<concepts>"), len(text))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("... so 4.\nTherefore, the final answer is: $\\boxed{4}$", True),
        ("Therefore, the final answer is: $\\boxed{\\frac{1}{2}}$.", True),
        ("Therefore the final answer is \\boxed{4}", False),  # tolerated only by the tolerant rule
        ("The answer is \\boxed{4}.", False),
        ("Therefore, the final answer is: 4", False),
        ("Therefore, the final answer is: $\\boxed{}$", False),
    ],
)
def test_final_answer_line(text: str, ok: bool) -> None:
    assert has_final_answer_line(text) is ok


def test_copying_the_explicit_prompts_placeholders_is_refused_when_asked():
    from opensir.selfplay import teacher_messages
    from opensir.selfplay.parsing import TEMPLATE_CONCEPTS, TEMPLATE_PROBLEM

    prompt = teacher_messages("What is 1+1?", "explicit")[-1]["content"]
    assert TEMPLATE_PROBLEM in prompt and TEMPLATE_CONCEPTS in prompt
    copied = (
        f"<think>x</think><problem>{TEMPLATE_PROBLEM.capitalize()}.</problem>"
        "<concepts>algebraic identities</concepts>"
    )
    assert parse_teacher(copied).legal  # the reference refuses only "..."
    refused = parse_teacher(copied, reject_placeholders=True)
    assert refused.reason == "the problem is a template placeholder"
    assert not parse_teacher(
        "<problem>Your problem here</problem>" + CONCEPTS, reject_placeholders=True
    ).legal
    concepts = (
        "<problem>What is the sum of the first ten odd numbers?</problem>"
        f"<concepts>{TEMPLATE_CONCEPTS}</concepts>"
    )
    assert parse_teacher(concepts).legal
    assert not parse_teacher(concepts, reject_placeholders=True).legal


CONCEPTS = "<concepts>basic arithmetic</concepts>"
