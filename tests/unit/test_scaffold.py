"""Scaffolded generation: forced tags around sampled text, forced tokens flagged, budgets and stops."""

from __future__ import annotations

from collections.abc import Sequence

from opensir.engines.scaffold import STUDENT_SCAFFOLD, TEACHER_SCAFFOLD, ScaffoldedGenerator
from opensir.seams import Completion, SamplingParams
from opensir.selfplay import parse_teacher
from opensir.selfplay.parsing import has_final_answer_line

EOT = 0


class CharTokenizer:
    """One token per character (id = code point + 1; 0 is the end of turn)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) + 1 for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 1) for i in ids if i != EOT)


class ScriptedGenerator:
    """Answers each call with the next scripted text per prompt, recording what it was asked."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.calls: list[tuple[list[list[int]], int, SamplingParams]] = []
        self.tokenizer = CharTokenizer()

    def generate(self, prompts, n, sampling):
        self.calls.append(([list(p) for p in prompts], n, sampling))
        text = self.script[len(self.calls) - 1]
        ids = (*self.tokenizer.encode(text), EOT)
        return [[Completion(text, ids, None, "stop")] * n for _ in prompts]


def test_teacher_scaffold_writes_the_tags_and_flags_them_as_forced():
    inner = ScriptedGenerator(["plan a new problem", "What is 2+3?", "addition, arithmetic"])
    scaffold = ScaffoldedGenerator(inner, CharTokenizer(), TEACHER_SCAFFOLD, EOT)
    [[completion, second]] = scaffold.generate([[7, 8]], 2, SamplingParams(max_tokens=100, seed=5))

    assert completion.text == (
        "<think>plan a new problem</think>\n<problem>What is 2+3?</problem>"
        "\n<concepts>addition, arithmetic</concepts>"
    )
    parsed = parse_teacher(completion.text)
    assert parsed.legal and parsed.problem == "What is 2+3?" and parsed.has_think
    pairs = zip(completion.token_ids, completion.sampled, strict=True)
    sampled_text = "".join(chr(t - 1) for t, s in pairs if s)
    assert sampled_text == "plan a new problemWhat is 2+3?addition, arithmetic"
    assert completion.token_ids[-1] == EOT and completion.sampled[-1] is False
    assert len(completion.sampled) == len(completion.token_ids)
    assert second == completion

    # Each segment continues the prompt and what came before, with its own stop, budget and seed.
    stops = [call[2].stop for call in inner.calls]
    assert stops == [("</think>",), ("</problem>",), ("</concepts>",)]
    assert [call[2].max_tokens for call in inner.calls] == [50, 35, 15]
    assert [call[2].seed for call in inner.calls] == [5, 6, 7]
    assert all(call[1] == 1 and len(call[0]) == 2 for call in inner.calls)
    second_prompt = inner.calls[1][0][0]
    assert second_prompt[:2] == [7, 8]
    assert CharTokenizer().decode(second_prompt[2:]) == "<think>plan a new problem</think>\n<problem>"


def test_student_scaffold_ends_with_a_parseable_final_answer_line():
    inner = ScriptedGenerator(["1 plus 1 makes two", "2"])
    scaffold = ScaffoldedGenerator(inner, CharTokenizer(), STUDENT_SCAFFOLD, EOT)
    [[completion]] = scaffold.generate([[1]], 1, SamplingParams(max_tokens=200))
    assert completion.text == "1 plus 1 makes two\n\nTherefore, the final answer is: $\\boxed{2}$"
    assert has_final_answer_line(completion.text)
    assert [call[2].stop for call in inner.calls] == [("\\boxed",), ("}",)]
    assert [call[2].seed for call in inner.calls] == [None, None]


def test_an_end_of_turn_inside_a_segment_does_not_end_the_completion():
    inner = ScriptedGenerator(["short", "A problem long enough", "concept number one"])
    scaffold = ScaffoldedGenerator(inner, CharTokenizer(), TEACHER_SCAFFOLD, EOT)
    [[completion]] = scaffold.generate([[1]], 1, SamplingParams(max_tokens=10))
    assert completion.token_ids.count(EOT) == 1
    assert parse_teacher(completion.text).legal
    assert min(call[2].max_tokens for call in inner.calls) == 8  # every segment gets a minimum budget
