"""Bootstrap with a scripted generator: filters, stopping, and resuming from saved state."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from opensir.loop.bootstrap import bootstrap_pool
from opensir.seams import Completion, SamplingParams
from opensir.selfplay import BootstrapState
from opensir.selfplay.bootstrap import answer_leaked, contains_xml_tag
from opensir.spec import BootstrapSpec, SelfPlaySpec, StudentSpec


class CharTokenizer:
    """A chat-template tokenizer stand-in: one token per character."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, chat_template=None):
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(ch) for ch in text]


def _decode(ids: Sequence[int]) -> str:
    return "".join(chr(i) for i in ids)


PROBLEMS = {  # problem -> student answers
    "A train travels 60 km in 1.5 hours; what is its speed in km/h?": ["40", "40", "40", "45"],  # 0.75 ok
    "Compute the number of subsets of a set with five elements.": ["32"] * 4,  # 1.0: out of band
    "Short one?": ["1", "1", "1", "2"],  # too short for bootstrap (but legal)
    "What is the value of x if x + 7 = 7 + 12 here, exactly?": ["12", "12", "12", "3"],  # leaked answer
    "Name the colour of the sky on a clear day in summer time.": ["blue", "blue", "blue", "red"],  # no digit
    "Find the remainder when two to the power ten is divided by seven.": ["2", "2", "3", "4"],  # 0.5 ok
}


class ScriptedGenerator:
    def __init__(self) -> None:
        self.turn = 0
        self.calls: list[tuple[int, int]] = []

    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        self.calls.append((len(prompts), n))
        out = []
        for ids in prompts:
            text = _decode(ids)
            if "conceptually different" in text:
                problem = list(PROBLEMS)[self.turn % len(PROBLEMS)]
                self.turn += 1
                body = f"<think>t</think><problem>{problem}</problem><concepts>speed and distance</concepts>"
                out.append([Completion(body, tuple(range(5)), None, "stop")])
            else:
                problem = re.search(r"\[user\](.*)\[assistant\]", text, re.S).group(1)  # type: ignore[union-attr]
                out.append(
                    [
                        Completion(
                            f"Therefore, the final answer is: $\\boxed{{{a}}}$", (1,) * 7, None, "stop"
                        )
                        for a in PROBLEMS[problem][:n]
                    ]
                )
        return out


class HashEmbedder:
    dim = 16

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=16) for t in texts])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


CONFIG = SelfPlaySpec(
    student=StudentSpec(samples=4), bootstrap=BootstrapSpec(enabled=True, problems=2, max_rounds=5)
)


def test_filters() -> None:
    assert contains_xml_tag("What is <problem>2+2</problem>?")
    assert not contains_xml_tag("If x < 5 and y > 2, what is x + 3?")
    assert not contains_xml_tag("the set <a> of items")
    assert answer_leaked("12", "x + 7 = 7 + 12")
    assert not answer_leaked("12", "x + 7 = 7 + 123")


def test_bootstrap_collects_in_band_problems_and_resumes() -> None:
    states: list[BootstrapState] = []
    gen = ScriptedGenerator()
    result = bootstrap_pool(
        ["What is 1+1?"],
        generator=gen,
        tokenizer=CharTokenizer(),
        embedder=HashEmbedder(),
        config=CONFIG,
        prompts_per_round=3,
        on_round=states.append,
    )
    assert result.complete
    texts = [p.text for p in result.state.accepted]
    assert texts == [
        "A train travels 60 km in 1.5 hours; what is its speed in km/h?",
        "Find the remainder when two to the power ten is divided by seven.",
    ]
    assert result.state.accepted[0].answer == "40" and result.state.accepted[0].solve_rate == 0.75
    assert result.state.rounds == 2 and len(states) == 2
    rejected = result.state.rejected
    assert rejected["out_of_band"] == 1 and rejected["too_short"] == 1
    assert rejected["answer_in_problem"] == 1 and rejected["answer_without_digit"] == 1
    assert [p.source for p in result.pool.problems] == ["seed", "bootstrap", "bootstrap"]
    assert result.pool.embeddings.shape == (3, 16)
    assert gen.calls[0] == (3, 1) and gen.calls[1][1] == 4

    # resume from the state after round 1 (e.g. read back from JSON) and finish identically
    saved = BootstrapState.from_json(states[0].to_json())
    assert saved == states[0]
    gen2 = ScriptedGenerator()
    gen2.turn = 3
    resumed = bootstrap_pool(
        ["What is 1+1?"],
        generator=gen2,
        tokenizer=CharTokenizer(),
        embedder=HashEmbedder(),
        config=CONFIG,
        prompts_per_round=3,
        state=saved,
    )
    assert resumed.state == result.state


def test_bootstrap_gives_up_after_max_rounds() -> None:
    config = SelfPlaySpec(student=StudentSpec(samples=4), bootstrap=BootstrapSpec(problems=50, max_rounds=2))
    result = bootstrap_pool(
        ["What is 1+1?"],
        generator=ScriptedGenerator(),
        tokenizer=CharTokenizer(),
        embedder=HashEmbedder(),
        config=config,
        prompts_per_round=2,
    )
    assert not result.complete and result.state.rounds == 2
