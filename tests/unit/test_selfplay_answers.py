"""Answer reading (both rules), the filter, voting, and math-verify's time limit in threads."""

from __future__ import annotations

import threading
import time

import pytest

from opensir.selfplay import Answer, Vote, majority_vote, read_answer
from opensir.selfplay.answers import answers_equivalent, first_boxed, is_mathematical


def text(completion: str, rule: str = "reference") -> str | None:
    answer = read_answer(completion, rule=rule)  # type: ignore[arg-type]
    return None if answer is None else answer.text


def answers(*texts: str | None) -> list[Answer | None]:
    return [None if t is None else Answer(t, t) for t in texts]


@pytest.mark.parametrize(
    ("completion", "content"),
    [
        ("x \\boxed{42} y \\boxed{7}", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed {x^{2} + 1}", "x^{2} + 1"),
        ("\\boxed{a{b}", None),
        ("no box", None),
    ],
)
def test_first_boxed(completion: str, content: str | None) -> None:
    assert first_boxed(completion) == content


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Therefore, the final answer is: $\\boxed{42}$", "42"),
        ("first \\boxed{3}.\n\nTherefore, the final answer is: $\\boxed{4}$", "4"),  # read from the end
        ("first \\boxed{3}.\n\nthen \\boxed{4}", "{3, 4}"),  # unanchored boxes: one set
        ("\\boxed{0.5}", "1/2"),
        ("\\boxed{\\dfrac{1}{2}}", "1/2"),
        ("\\boxed{-3}", "-3"),
        ("\\boxed{x^2+1}", "x**2 + 1"),
        ("\\boxed{\\sqrt{2}}", "sqrt(2)"),
        ("\\boxed{ANSWER}", None),  # the prompt's placeholder (the reference's guard never fired)
        ("Therefore, the final answer is: $\\boxed{ANSWER}$", None),
        ("\\boxed{}", None),
        ("\\boxed{unbalanced", None),
        ("nothing boxed here: 42", None),  # no anchor: the reference reads nothing
    ],
)
def test_reference_rule(completion: str, expected: str | None) -> None:
    assert text(completion) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("first \\boxed{3} then \\boxed{4}", "3"),
        ("\\boxed{0.5}", "1/2"),
        ("\\boxed{answer}", None),
        ("\\boxed{your answer}", None),
        ("Therefore, the final answer is: $7$", None),  # only boxes count
        ("\\boxed{12,500}", "12500"),
    ],
)
def test_first_box_rule(completion: str, expected: str | None) -> None:
    assert text(completion, "firstBox") == expected


def test_an_answer_carries_latex_that_parses_again() -> None:
    answer = read_answer("\\boxed{\\sqrt{2}/2}")
    assert answer == Answer("sqrt(2)/2", "\\frac{\\sqrt{2}}{2}")
    assert answers_equivalent(answer.latex, "\\frac{1}{\\sqrt{2}}")


@pytest.mark.parametrize(
    ("s", "ok"),
    [
        ("42", True),
        ("-3.5", True),
        ("12,500.00", True),
        ("3:2", True),
        ("25\\%", True),
        ("\\$18.90", True),
        ("5!", True),
        ("x", True),
        ("2a", True),
        ("x**2 + 1", True),
        ("sqrt(2)", True),
        ("{3/4", True),
        ("\\text{yes}", False),
        ("hello world again", False),
        ("NONE", False),
        ("apple", False),
        ("0...", False),
        ("", False),
    ],
)
def test_is_mathematical(s: str, ok: bool) -> None:
    assert is_mathematical(s) is ok


def test_exact_vote_first_seen_wins_ties() -> None:
    vote = majority_vote(answers("7", "5", "5", None, "7", "9"))
    assert vote == Vote("7", 2, 5, 6, 2 / 5, (True, False, False, False, True, False))


def test_exact_vote_over_all() -> None:
    vote = majority_vote(answers("7", None, None, "7"), over="all")
    assert vote.answer == "7" and vote.solve_rate == 0.5 and vote.parseable == 2
    assert majority_vote(answers("7", None, None, "7")).solve_rate == 1.0


def test_nothing_parses() -> None:
    vote = majority_vote([None, None])
    assert (
        vote.answer is None and vote.count == 0 and vote.solve_rate == 0.0 and vote.agrees == (False, False)
    )
    assert majority_vote([]).solve_rate == 0.0


def test_equivalence_vote_merges_equal_answers() -> None:
    a, b, c = (read_answer(f"\\boxed{{{t}}}") for t in ("3", "3.0", "4"))
    assert a is not None and b is not None and a.text != b.text  # different strings...
    exact = majority_vote([c, a, b])
    assert exact.answer == c.text and exact.count == 1  # type: ignore[union-attr]
    eq = majority_vote([c, a, b], mode="equivalence")  # ...that math-verify proves equal
    assert eq.answer == a.text and eq.count == 2 and eq.agrees == (False, True, True)


def test_half_votes_together_in_both_modes() -> None:
    read = [read_answer(t) for t in ("\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{1/2}")]
    assert majority_vote(read).count == 3
    assert majority_vote(read, mode="equivalence").count == 3
    assert answers_equivalent("\\frac{1}{2}", "0.5")


def test_bad_modes_raise() -> None:
    with pytest.raises(ValueError):
        majority_vote(answers("1"), mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        majority_vote(answers("1"), over="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        read_answer("\\boxed{1}", rule="lastBox")  # type: ignore[arg-type]


SLOW = ("9^{9^{9^{9}}}", "9^{9^{9^{8}}}")  # sympy tries to evaluate this for a very long time


def test_equivalence_times_out_in_main_thread() -> None:
    start = time.monotonic()
    assert answers_equivalent(*SLOW, timeout_seconds=0.5) is False
    assert time.monotonic() - start < 5


def test_reading_and_equivalence_work_outside_the_main_thread() -> None:
    results: dict[str, object] = {}

    def work() -> None:
        results["answer"] = read_answer("Therefore, the final answer is: $\\boxed{0.5}$")
        results["vote"] = majority_vote(
            [read_answer(f"\\boxed{{{t}}}") for t in ("3", "3.0", "4")], mode="equivalence"
        )
        start = time.monotonic()
        results["slow"] = answers_equivalent(*SLOW, timeout_seconds=0.5)
        results["slow_seconds"] = time.monotonic() - start
        results["after"] = answers_equivalent("2", "2.0")  # the helper comes back after being killed

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert results["answer"] == Answer("1/2", "\\frac{1}{2}")
    vote = results["vote"]
    assert isinstance(vote, Vote) and vote.answer == "3" and vote.count == 2
    assert results["slow"] is False and results["slow_seconds"] < 5  # type: ignore[operator]
    assert results["after"] is True
