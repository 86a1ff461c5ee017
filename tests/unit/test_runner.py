"""The run loop with scripted engines: a model that writes garbage is stopped with a clear error."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from opensir.engines.base import Completion, SamplingParams
from opensir.engines.factory import Engines
from opensir.runner import RunError, run_selfplay
from opensir.spec import parse_run


class ChatTokenizer:
    """Characters as tokens, and a plain chat template."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, chat_template=None):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


class Babbler:
    """A policy that never writes the teacher format."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts, n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls += 1
        text = "I like numbers."
        return [[Completion(text, tuple(map(ord, text)), None, "stop")] * n for _ in prompts]


class HashEmbedder:
    dim = 4

    def embed(self, texts):
        rows = np.array([[len(t), sum(map(ord, t)) % 7, 1.0, 2.0] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True) if len(texts) else rows.reshape(0, 4)


class UntouchableTrainer:
    step_count = 0

    def step(self, batch):
        raise AssertionError("nothing should be trained on")

    def save(self, directory: Path) -> None:
        raise AssertionError("no checkpoint should be written")

    def load(self, directory: Path) -> None:
        raise AssertionError("nothing to resume")


def test_a_policy_that_never_writes_a_legal_problem_fails_with_the_reason(tmp_path: Path):
    run = parse_run(
        {
            "apiVersion": "opensir.io/v1alpha1",
            "kind": "SelfPlayRun",
            "metadata": {"name": "babble"},
            "spec": {
                "model": {"name": "scripted"},
                "selfPlay": {"teacher": {"groupSize": 2, "upscaleRatio": 1}, "student": {"samples": 2}},
                "training": {"maxSteps": 10, "warmupSteps": 0, "maxConsecutiveSkips": 3},
                "storage": {"uri": f"file://{tmp_path}"},
            },
        }
    )
    babbler = Babbler()
    engines = Engines(ChatTokenizer(), babbler, babbler, babbler, HashEmbedder(), UntouchableTrainer(), None)
    with pytest.raises(RunError, match=r"3 rounds in a row had nothing to train on \(legal ratio 0\.00"):
        run_selfplay(run, engines=engines)
    assert babbler.calls == 3  # teacher only: with no legal problem there is nothing to answer
    progress = json.loads((tmp_path / "default" / "babble" / "progress.json").read_text())
    assert progress["step"] == 3 and progress["lastStep"]["trained"] is False
    assert progress["poolSize"] == 1 and progress["lastCheckpoint"] is None
