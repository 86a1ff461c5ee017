"""Stand-ins for tests: a character tokenizer with a chat template, canned completions and rounds, and a
fake clock for the retry helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class CharTokenizer:
    """Characters as tokens (id = code point), and a plain chat template."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, chat_template=None):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def completion(text: str, token_count: int | None = None, sampled: tuple[bool, ...] | None = None):
    """A completion of ``text``: one token per character, or ``token_count`` tokens when given."""
    from opensir.seams import Completion

    ids = tuple(range(1, (len(text) if token_count is None else token_count) + 1))
    return Completion(text, ids, None, "stop", sampled)


def played_groups(
    teacher: Sequence[Sequence[str]],
    student: dict[tuple[int, int], Sequence[str]],
    tokens: dict[tuple[int, int], Sequence[int]] | None = None,
    *,
    config=None,
):
    """What the loop hands :func:`opensir.selfplay.score_round`, from canned texts: teacher completions
    per group, and the student's answers (and their token counts) per legal ``(group, index)``."""
    from opensir.selfplay import PlayedCandidate, PlayedGroup, parse_teacher_completion
    from opensir.spec import TeacherSpec

    teacher_spec = TeacherSpec() if config is None else config.teacher
    groups = []
    for g, texts in enumerate(teacher):
        candidates = []
        for c, text in enumerate(texts):
            parsed = parse_teacher_completion(text, teacher_spec)
            answers = student.get((g, c), ()) if parsed.legal else ()
            counts = (tokens or {}).get((g, c), [None] * len(answers))
            candidates.append(
                PlayedCandidate(
                    completion(text),
                    parsed,
                    (1000 + 10 * g + c,) if answers else (),
                    tuple(completion(a, n) for a, n in zip(answers, counts, strict=True)),
                )
            )
        groups.append(PlayedGroup(f"reference {g}", (100 + g,), tuple(candidates)))
    return groups


@dataclass
class FakeTime:
    """A monotonic clock that only the fake sleeps move, recording every wait: retry and poll tests pass
    its ``clock``, ``sleep`` and ``async_sleep`` to :class:`opensir.retry.RetryPolicy`, so none waits."""

    now: float = 0.0
    waits: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def policy(self, **options: object):
        """A :class:`~opensir.retry.RetryPolicy` on this clock, with the largest jitter factor (1.0)."""
        from opensir.retry import RetryPolicy

        seams = {"sleep": self.sleep, "async_sleep": self.async_sleep, "clock": self.clock}
        return RetryPolicy(**{"random": lambda: 1.0, **seams, **options})  # type: ignore[arg-type]
