"""Optional bootstrap: grow the seed problem(s) into a pool whose solve rates are already in band.

The rules, as pure functions; :mod:`opensir.loop.bootstrap` runs the rounds. Each round draws
reference problems (the seeds and everything accepted so far), asks the policy as teacher for one new
problem per reference, answers each legal one ``student.samples`` times, and accepts the problems
that pass the reference's filters:

* the majority answer's solve rate is inside the band (edges included),
* the majority answer contains a digit (answers without one are mostly words read as variables),
* the problem has at least ``bootstrap.min_problem_chars`` characters and no XML-like tag,
* the majority answer does not appear in the problem text as a whole token (a leaked answer),
* (added here) the same text was not accepted before.

It stops at ``bootstrap.problems`` accepted problems or after ``bootstrap.max_rounds`` rounds; the
state after every round is what a resumed bootstrap continues from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from opensir.selfplay.answers import Vote
from opensir.selfplay.parsing import TeacherOutput
from opensir.selfplay.pool import NewProblem
from opensir.selfplay.rewards import in_band
from opensir.spec import SelfPlaySpec

_XML_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9_-]*)(?:\s[^<>]*?)?/?>")


@dataclass(frozen=True)
class BootstrapProblem:
    """An accepted problem with the majority answer and solve rate that got it accepted."""

    text: str
    concepts: tuple[str, ...]
    answer: str
    solve_rate: float


@dataclass(frozen=True)
class BootstrapState:
    """Where a bootstrap stands; JSON round-trips through :meth:`to_json` / :meth:`from_json`."""

    accepted: tuple[BootstrapProblem, ...] = ()
    rounds: int = 0
    candidates: int = 0
    """Teacher completions generated."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Why candidates were turned down, by reason."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @staticmethod
    def from_json(text: str) -> BootstrapState:
        data = json.loads(text)
        accepted = tuple(
            BootstrapProblem(p["text"], tuple(p["concepts"]), p["answer"], float(p["solve_rate"]))
            for p in data["accepted"]
        )
        return BootstrapState(accepted, int(data["rounds"]), int(data["candidates"]), dict(data["rejected"]))


def contains_xml_tag(text: str) -> bool:
    """Whether the text holds a tag like ``<problem>`` or ``</think>`` (not ``x < 5`` or ``<a>``)."""
    return any(len(m.group(1)) > 1 for m in _XML_TAG.finditer(text))


def answer_leaked(answer: str, problem: str) -> bool:
    """Whether the answer appears in the problem as a whole token (not as part of a longer number/word)."""
    return re.search(r"(?<!\w)" + re.escape(answer) + r"(?!\w)", problem) is not None


def verdict(text: str, answer: str | None, solve_rate: float, config: SelfPlaySpec) -> str:
    """ "" when a candidate passes the filters, otherwise the reason it does not."""
    if answer is None:
        return "no_answer"
    if not in_band(solve_rate, config.solve_rate.lower, config.solve_rate.upper):
        return "out_of_band"
    if not any(ch.isdigit() for ch in answer):
        return "answer_without_digit"
    if len(text.strip()) < config.bootstrap.min_problem_chars:
        return "too_short"
    if contains_xml_tag(text):
        return "xml_tag"
    if answer_leaked(answer, text):
        return "answer_in_problem"
    return ""


def draw_references(
    state: BootstrapState, seed_problems: Sequence[str], seed: int, count: int
) -> tuple[list[str], int]:
    """The reference problems of round ``state.rounds`` and the seed of its sampling.

    Drawn from ``numpy.random.default_rng([seed, round])`` among the seeds and every problem accepted
    so far, so a resumed bootstrap makes the same draws as one that never stopped.
    """
    rng = np.random.default_rng([seed, state.rounds])
    references = [*seed_problems, *(p.text for p in state.accepted)]
    picks = rng.integers(0, len(references), size=count)
    return [references[i] for i in picks], int(rng.integers(0, 2**31 - 1))


def screen(parsed: Sequence[TeacherOutput]) -> tuple[list[TeacherOutput], dict[str, int]]:
    """The candidates worth answering (legal, no XML-like tag: filtered before answering, as the
    reference does) and how many of the others were turned down, by reason."""
    rejected: dict[str, int] = {}
    candidates = []
    for output in parsed:
        if not output.legal or output.problem is None:
            rejected["illegal"] = rejected.get("illegal", 0) + 1
        elif contains_xml_tag(output.problem):
            rejected["xml_tag"] = rejected.get("xml_tag", 0) + 1
        else:
            candidates.append(output)
    return candidates, rejected


def judge(
    state: BootstrapState,
    candidates: Sequence[TeacherOutput],
    votes: Sequence[Vote],
    screened_out: Mapping[str, int],
    completions: int,
    config: SelfPlaySpec,
) -> BootstrapState:
    """The state after one round: the candidates that pass every filter are accepted (up to
    ``bootstrap.problems``), the rest counted by the reason they were turned down."""
    rejected = dict(state.rejected)
    for reason, count in screened_out.items():
        rejected[reason] = rejected.get(reason, 0) + count
    accepted = list(state.accepted)
    seen = {p.text for p in accepted}
    for candidate, vote in zip(candidates, votes, strict=True):
        text = candidate.problem or ""
        reason = verdict(text, vote.answer, vote.solve_rate, config)
        if not reason and text in seen:
            reason = "duplicate"
        if reason or len(accepted) >= config.bootstrap.problems:
            key = reason or "surplus"
            rejected[key] = rejected.get(key, 0) + 1
            continue
        assert vote.answer is not None
        accepted.append(BootstrapProblem(text, candidate.concepts, vote.answer, vote.solve_rate))
        seen.add(text)
    return replace(
        state,
        accepted=tuple(accepted),
        rounds=state.rounds + 1,
        candidates=state.candidates + completions,
        rejected=rejected,
    )


def initial_problems(seed_problems: Sequence[str], state: BootstrapState) -> list[NewProblem]:
    """The initial pool's problems: the seeds, then the accepted problems."""
    return [NewProblem(text, source="seed") for text in seed_problems] + [
        NewProblem(p.text, p.concepts, p.solve_rate, p.answer, 0, "bootstrap") for p in state.accepted
    ]
