"""Scaffolded generation (``selfPlay.teacher.scaffold`` / ``selfPlay.student.scaffold``; off in the
published method).

Small policies (SmolLM2-135M, say) rarely write the teacher's ``<think>…</think><problem>…</problem>
<concepts>…</concepts>`` format or the student's final ``\\boxed{}`` line on their own; then every
round has no legal problem or no parseable answer and self-play never starts. A scaffold writes the
fixed parts itself and samples only the text between them, one segment at a time with the segment's
end as stop string: what guided decoding does with a grammar, but through any
:class:`~opensir.seams.Generator`. Forced tokens are flagged in ``Completion.sampled`` so the
trainer never takes a gradient through tokens the policy did not choose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from opensir.seams import Completion, Generator, SamplingParams


@dataclass(frozen=True)
class Segment:
    """One sampled stretch of a scaffolded completion."""

    opening: str
    """Text forced before the segment."""
    stop: str
    """Sampling of the segment stops here (the stop string itself is not kept)."""
    closing: str
    """Text forced after the segment."""
    share: float
    """Share of ``max_tokens`` the segment may sample."""


TEACHER_SCAFFOLD = (
    Segment("<think>", "</think>", "</think>", 0.5),
    Segment("\n<problem>", "</problem>", "</problem>", 0.35),
    Segment("\n<concepts>", "</concepts>", "</concepts>", 0.15),
)
"""The teacher's format (DESIGN.md §1): reasoning, the new problem, its concepts."""

STUDENT_SCAFFOLD = (
    Segment("", "\\boxed", "", 0.9),
    Segment("\n\nTherefore, the final answer is: $\\boxed{", "}", "}$", 0.1),
)
"""The student's reasoning, then the final-answer line the student prompt asks for."""

_MIN_SEGMENT_TOKENS = 8


@dataclass
class _Draft:
    ids: list[int]
    sampled: list[bool]

    def extend(self, ids: Sequence[int], sampled: bool) -> None:
        self.ids += ids
        self.sampled += [sampled] * len(ids)


class ScaffoldedGenerator:
    """A :class:`Generator` whose completions always follow ``segments``."""

    def __init__(
        self, generator: Generator, tokenizer: Any, segments: Sequence[Segment], end_of_turn_id: int
    ) -> None:
        self.generator = generator
        self.tokenizer = tokenizer
        self.segments = tuple(segments)
        self.end_of_turn_id = end_of_turn_id

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        drafts = [[_Draft([], []) for _ in range(n)] for _ in prompts]
        flat = [(p, d) for p, group in zip(prompts, drafts, strict=True) for d in group]
        for index, segment in enumerate(self.segments):
            opening, closing = self._encode(segment.opening), self._encode(segment.closing)
            for _, draft in flat:
                draft.extend(opening, sampled=False)
            params = replace(
                sampling,
                max_tokens=max(_MIN_SEGMENT_TOKENS, int(sampling.max_tokens * segment.share)),
                stop=(segment.stop,),
                seed=None if sampling.seed is None else sampling.seed + index,
            )
            outputs = self.generator.generate([list(p) + d.ids for p, d in flat], 1, params)
            for (_, draft), (completion,) in zip(flat, outputs, strict=True):
                # An end of turn inside a segment only ends that segment: the scaffold goes on.
                draft.extend([t for t in completion.token_ids if t != self.end_of_turn_id], sampled=True)
                draft.extend(closing, sampled=False)
        completions = []
        for group in drafts:
            row = []
            for draft in group:
                draft.extend([self.end_of_turn_id], sampled=False)
                text = self.tokenizer.decode(draft.ids, skip_special_tokens=True)
                row.append(Completion(text, tuple(draft.ids), None, "stop", tuple(draft.sampled)))
            completions.append(row)
        return completions
