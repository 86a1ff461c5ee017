"""The run loop with scripted engines: a model that writes garbage is stopped with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scripted import CharTokenizer

from opensir.assembly import Engines
from opensir.loop import RunError, run_selfplay
from opensir.seams import Completion, SamplingParams
from opensir.spec import parse_run


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


class CountingSync:
    """A WeightSync that counts its pushes."""

    def __init__(self) -> None:
        self.pushes = 0

    def push(self, trainer) -> int:
        self.pushes += 1
        return self.pushes


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
    sync = CountingSync()
    engines = Engines(CharTokenizer(), babbler, babbler, babbler, HashEmbedder(), UntouchableTrainer(), sync)
    with pytest.raises(RunError, match=r"3 rounds in a row had nothing to train on \(legal ratio 0\.00"):
        run_selfplay(run, engines=engines)
    assert babbler.calls == 3  # teacher only: with no legal problem there is nothing to answer
    assert sync.pushes == 1  # the initial weights, before the first round; no update after it
    progress = json.loads((tmp_path / "default" / "babble" / "progress.json").read_text())
    assert progress["step"] == 3 and progress["lastStep"]["trained"] is False
    assert progress["poolSize"] == 1 and progress["lastCheckpoint"] is None


class ScriptedPolicy:
    """Writes a new legal problem for every teacher prompt; students answer 12 three times in four."""

    def __init__(self) -> None:
        self.problems = 0
        self.calls = 0

    def generate(self, prompts, n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls += 1
        out = []
        for prompt in prompts:
            if "<problem>" in "".join(map(chr, prompt)):
                self.problems += 1
                name = "".join(chr(ord("a") + int(d)) for d in str(self.problems))
                text = (
                    f"<think>vary it</think><problem>How many apples do the {name} baskets hold together?"
                    "</problem><concepts>multiplication facts</concepts>"
                )
                out.append([Completion(text, tuple(map(ord, text)), None, "stop")] * n)
            else:
                texts = ["so \\boxed{12}"] * (n - 1) + ["so \\boxed{13}"]
                out.append([Completion(t, tuple(map(ord, t)), None, "stop") for t in texts])
        return out


def test_bootstrap_builds_an_in_band_pool_and_resumes_from_its_stored_state(tmp_path: Path):
    from opensir.loop import run_bootstrap

    run = parse_run(
        {
            "apiVersion": "opensir.io/v1alpha1",
            "kind": "SelfPlayRun",
            "metadata": {"name": "boot"},
            "spec": {
                "model": {"name": "scripted"},
                "selfPlay": {
                    "teacher": {"groupSize": 2, "upscaleRatio": 1},
                    "student": {"samples": 4},
                    "bootstrap": {"enabled": True, "problems": 3, "maxRounds": 5},
                },
                "training": {"maxSteps": 10, "warmupSteps": 0},
                "storage": {"uri": f"file://{tmp_path}"},
            },
        }
    )
    policy = ScriptedPolicy()
    engines = Engines(CharTokenizer(), policy, policy, policy, HashEmbedder(), UntouchableTrainer(), None)
    pool = run_bootstrap(run, engines=engines)
    assert [p.source for p in pool.problems] == ["seed", "bootstrap", "bootstrap", "bootstrap"]
    assert all(p.solve_rate == 0.75 and p.answer == "12" for p in pool.problems[1:])
    stored = json.loads((tmp_path / "default" / "boot" / "bootstrap.json").read_text())
    assert len(stored["accepted"]) == 3 and stored["rounds"] == 2

    calls = policy.calls
    again = run_bootstrap(run, engines=engines)
    assert policy.calls == calls, "a finished bootstrap is read back, not generated again"
    assert [p.text for p in again.problems] == [p.text for p in pool.problems]
