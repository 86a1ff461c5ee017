"""Answer extraction, the non-mathematical filter, voting, and math-verify's time limit in threads."""

from __future__ import annotations

import threading
import time

import pytest

from opensir.selfplay import Vote, extract_answer, majority_vote
from opensir.selfplay.answers import answers_equivalent, first_boxed, is_mathematical


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("x \\boxed{42} y \\boxed{7}", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed {x^{2} + 1}", "x^{2} + 1"),
        ("\\boxed{a{b}", None),
        ("no box", None),
    ],
)
def test_first_boxed(text: str, content: str | None) -> None:
    assert first_boxed(text) == content


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Therefore, the final answer is: $\\boxed{42}$", "42"),
        ("first \\boxed{3} then \\boxed{4}", "3"),  # the FIRST box (math-verify alone takes the last)
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{-3}", "-3"),
        ("\\boxed{x^2+1}", "x^{2} + 1"),
        ("\\boxed{\\sqrt{2}}", "\\sqrt{2}"),
        ("\\boxed{12,500}", "12500"),
        ("\\boxed{ANSWER}", None),  # the prompt's placeholder
        ("\\boxed{answer}", None),
        ("\\boxed{}", None),
        ("\\boxed{unbalanced", None),
        ("nothing boxed here: 42", None),
    ],
)
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


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
        ("\\text{yes}", False),
        ("hello world again", False),
        ("NONE", False),
        ("apple", False),
        ("", False),
    ],
)
def test_is_mathematical(s: str, ok: bool) -> None:
    assert is_mathematical(s) is ok


def test_exact_vote_first_seen_wins_ties() -> None:
    vote = majority_vote(["7", "5", "5", None, "7", "9"])
    assert vote == Vote("7", 2, 5, 6, 2 / 5, (True, False, False, False, True, False))


def test_exact_vote_over_all() -> None:
    vote = majority_vote(["7", None, None, "7"], over="all")
    assert vote.answer == "7" and vote.solve_rate == 0.5 and vote.parseable == 2
    assert majority_vote(["7", None, None, "7"]).solve_rate == 1.0


def test_nothing_parses() -> None:
    vote = majority_vote([None, None])
    assert (
        vote.answer is None and vote.count == 0 and vote.solve_rate == 0.0 and vote.agrees == (False, False)
    )
    assert majority_vote([]).solve_rate == 0.0


def test_equivalence_vote_merges_equal_answers() -> None:
    a, b, c = extract_answer("\\boxed{3}"), extract_answer("\\boxed{3.0}"), extract_answer("\\boxed{4}")
    assert a != b  # different canonical strings...
    exact = majority_vote([c, a, b])
    assert exact.answer == c and exact.count == 1
    eq = majority_vote([c, a, b], mode="equivalence")  # ...that math-verify proves equal
    assert eq.answer == a and eq.count == 2 and eq.agrees == (False, True, True)


def test_half_votes_together_in_both_modes() -> None:
    answers = [extract_answer(t) for t in ("\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{1/2}")]
    assert majority_vote(answers).count == 3
    assert majority_vote(answers, mode="equivalence").count == 3
    assert answers_equivalent("\\frac{1}{2}", "0.5")


def test_bad_modes_raise() -> None:
    with pytest.raises(ValueError):
        majority_vote(["1"], mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        majority_vote(["1"], over="some")  # type: ignore[arg-type]


SLOW = ("9^{9^{9^{9}}}", "9^{9^{9^{8}}}")  # sympy tries to evaluate this for a very long time


def test_equivalence_times_out_in_main_thread() -> None:
    start = time.monotonic()
    assert answers_equivalent(*SLOW, timeout_seconds=0.5) is False
    assert time.monotonic() - start < 5


def test_extraction_and_equivalence_work_outside_the_main_thread() -> None:
    results: dict[str, object] = {}

    def work() -> None:
        results["answer"] = extract_answer("\\boxed{0.5}")
        results["vote"] = majority_vote(["3", "3.0", "4"], mode="equivalence")
        start = time.monotonic()
        results["slow"] = answers_equivalent(*SLOW, timeout_seconds=0.5)
        results["slow_seconds"] = time.monotonic() - start
        results["after"] = answers_equivalent("2", "2.0")  # the helper comes back after being killed

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert results["answer"] == "\\frac{1}{2}"
    vote = results["vote"]
    assert isinstance(vote, Vote) and vote.answer == "3" and vote.count == 2
    assert results["slow"] is False and results["slow_seconds"] < 5  # type: ignore[operator]
    assert results["after"] is True
