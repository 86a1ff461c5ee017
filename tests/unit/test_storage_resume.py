"""Resume through the real run loop with scripted engines: exact continuation, SIGTERM, corrupt
checkpoints, retention, incremental pool shards (with the real model: tests/e2e/test_tiny_run.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from scripted import CharTokenizer

from opensir.assembly import Engines
from opensir.checkpoint import list_checkpoints
from opensir.loop import PREEMPTED_EXIT_CODE, Preempted, RunResult, run_selfplay
from opensir.seams import Completion, SamplingParams, TrainBatch, TrainStats
from opensir.selfplay import ProblemPool
from opensir.spec import SelfPlayRun, parse_run
from opensir.storage import LocalStore


def _rng(sampling: SamplingParams, prompt: Sequence[int], i: int) -> np.random.Generator:
    """What a seeded sampler does: the completion depends on the request seed and prompt only."""
    return np.random.default_rng([sampling.seed or 0, zlib.crc32(bytes(p % 256 for p in prompt)), i])


def _completion(text: str) -> Completion:
    return Completion(text, tuple(map(ord, text)), None, "stop")


class ScriptedTeacher:
    def generate(self, prompts, n: int, sampling: SamplingParams) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            group = []
            for i in range(n):
                a, b = _rng(sampling, prompt, i).integers(1, 1000, size=2)
                text = (
                    f"<think>vary it</think><problem>What is {a} plus {b} altogether?</problem>"
                    "<concepts>integer addition, mental arithmetic</concepts>"
                )
                group.append(_completion(text))
            out.append(group)
        return out


class ScriptedStudent:
    """Right ("42") with probability 0.7, so solve rates land in the band often enough to train."""

    def __init__(self, on_call: dict[int, object] | None = None) -> None:
        self.calls = 0
        self.on_call = on_call or {}

    def generate(self, prompts, n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls += 1
        action = self.on_call.get(self.calls)
        if callable(action):
            action()
        out = []
        for prompt in prompts:
            rng = _rng(sampling, prompt, 0)
            answers = ["42" if rng.random() < 0.7 else str(rng.integers(0, 9)) for _ in range(n)]
            out.append([_completion(f"so \\boxed{{{a}}}") for a in answers])
        return out


class HashEmbedder:
    dim = 8

    def embed(self, texts):
        rows = np.array(
            [np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim) for t in texts],
            dtype=np.float32,
        )
        return rows.reshape(len(texts), self.dim)


class VectorTrainer:
    """A "model" of 16 float64 weights; each step also draws from the global numpy RNG, as dropout
    would, so a resume that forgot the RNG state would diverge."""

    def __init__(self) -> None:
        self.weights = np.zeros(16)
        self.step_count = 0

    def step(self, batch: TrainBatch) -> TrainStats:
        signal_ = sum(s.advantage * sum(s.loss_mask) for s in batch.sequences)
        self.weights = self.weights * 0.9 + signal_ * 1e-3 + np.random.normal(size=16) * 1e-2
        self.step_count += 1
        return TrainStats(self.step_count, float(signal_), 0.0, 1.0, 1e-3, batch.num_tokens, 0.0)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        np.save(directory / "weights.npy", self.weights)
        _, keys, position, has_gauss, gauss = np.random.get_state()
        np.savez(directory / "rng.npz", keys=keys, position=position, has_gauss=has_gauss, gauss=gauss)
        (directory / "state.json").write_text(json.dumps({"step_count": self.step_count}))

    def load(self, directory: Path) -> None:
        self.weights = np.load(directory / "weights.npy")
        rng = np.load(directory / "rng.npz")
        state = ("MT19937", rng["keys"], int(rng["position"]), int(rng["has_gauss"]), float(rng["gauss"]))
        np.random.set_state(state)
        self.step_count = json.loads((directory / "state.json").read_text())["step_count"]


class CountingSync:
    def __init__(self) -> None:
        self.version = 0

    def push(self, trainer) -> int:
        self.version += 1
        return self.version


def engines(student: ScriptedStudent | None = None) -> Engines:
    np.random.seed(7)  # the process-global RNG a fresh process starts with (the factory seeds torch)
    return Engines(
        CharTokenizer(),
        None,  # type: ignore[arg-type]
        ScriptedTeacher(),
        student or ScriptedStudent(),
        HashEmbedder(),
        VectorTrainer(),
        CountingSync(),
    )


def make_run(storage: Path, max_steps: int, **training) -> SelfPlayRun:
    return parse_run(
        {
            "apiVersion": "opensir.io/v1alpha1",
            "kind": "SelfPlayRun",
            "metadata": {"name": "scripted"},
            "spec": {
                "model": {"name": "scripted"},
                "selfPlay": {
                    "teacher": {"promptsPerStep": 2, "groupSize": 2, "upscaleRatio": 4},
                    "student": {"samples": 4},
                    "pool": {"sampling": "unexplored"},
                },
                "training": {"maxSteps": max_steps, "warmupSteps": 0, "saveEvery": 1, **training},
                "storage": {"uri": f"file://{storage}"},
            },
        }
    )


def run_dir(storage: Path) -> Path:
    return storage / "default" / "scripted"


def final_state(storage: Path, result: RunResult, trainer: VectorTrainer) -> dict:
    """What must match between an interrupted and an uninterrupted run."""
    assert result.last_checkpoint is not None
    local = run_dir(storage) / result.last_checkpoint.prefix
    pool_dir = storage / "pool-check"
    shutil.copytree(local / "pool", pool_dir)  # the state file; the shards live at run level
    for entry in result.last_checkpoint.shared:
        shutil.copyfile(run_dir(storage) / entry.path, pool_dir / Path(entry.path).name)
    pool = ProblemPool.load(pool_dir)
    runner = json.loads((local / "runner.json").read_text())
    for record in runner["history"]:
        record.pop("seconds"), record.pop("phase_seconds")
    return {
        "problems": [asdict(p) for p in pool.problems],
        "embeddings": pool.embeddings.tobytes(),
        "draws": pool.draw_counts.tolist(),
        "weights": trainer.weights.tobytes(),
        "trainer_steps": trainer.step_count,
        "rng": runner["rng"],
        "history": runner["history"],
    }


def test_a_resumed_run_continues_exactly_like_an_uninterrupted_one(tmp_path: Path):
    straight_engines = engines()
    straight = run_selfplay(make_run(tmp_path / "straight", 3), engines=straight_engines)
    expected = final_state(tmp_path / "straight", straight, straight_engines.trainer)
    assert expected["trainer_steps"] >= 2, "the script should train on most steps"

    run_selfplay(make_run(tmp_path / "split", 2), engines=engines())
    resumed_engines = engines()  # a new process: fresh engines, the global RNG reseeded
    resumed = run_selfplay(make_run(tmp_path / "split", 3), engines=resumed_engines)
    assert final_state(tmp_path / "split", resumed, resumed_engines.trainer) == expected


def test_sigterm_commits_the_step_in_progress_and_exits_143_and_the_restart_resumes(tmp_path: Path):
    straight_engines = engines()
    straight = run_selfplay(make_run(tmp_path / "straight", 3, saveEvery=10), engines=straight_engines)
    expected = final_state(tmp_path / "straight", straight, straight_engines.trainer)

    # SIGTERM arrives in the middle of step 2 (the student's second generation call).
    student = ScriptedStudent(on_call={2: lambda: os.kill(os.getpid(), signal.SIGTERM)})
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        run_selfplay(make_run(tmp_path / "split", 3, saveEvery=10), engines=engines(student))
    assert stopped.value.code == PREEMPTED_EXIT_CODE == 143
    assert stopped.value.step == 2 and student.calls == 2, "the step in progress finishes, no other starts"
    assert signal.getsignal(signal.SIGTERM) == before, "the handler is removed again"
    # saveEvery=10 would not have saved step 2: the preemption did.
    assert [c.step for c in list_checkpoints(LocalStore(run_dir(tmp_path / "split")))] == [2]
    progress = json.loads((run_dir(tmp_path / "split") / "progress.json").read_text())
    assert progress["step"] == 2 and progress["lastCheckpoint"]["step"] == 2

    resumed_engines = engines()
    resumed = run_selfplay(make_run(tmp_path / "split", 3, saveEvery=10), engines=resumed_engines)
    assert final_state(tmp_path / "split", resumed, resumed_engines.trainer) == expected


def test_a_corrupt_latest_checkpoint_is_skipped_and_its_step_is_redone(tmp_path: Path, caplog):
    straight_engines = engines()
    straight = run_selfplay(make_run(tmp_path / "straight", 3), engines=straight_engines)
    expected = final_state(tmp_path / "straight", straight, straight_engines.trainer)

    run_selfplay(make_run(tmp_path / "split", 2), engines=engines())
    weights = run_dir(tmp_path / "split") / "checkpoints" / "step-000002" / "trainer" / "weights.npy"
    weights.write_bytes(weights.read_bytes()[:-8] + b"bitrot!!")
    resumed_engines = engines()
    with caplog.at_level(logging.WARNING):
        resumed = run_selfplay(make_run(tmp_path / "split", 3), engines=resumed_engines)
    assert "skipping checkpoint at step 2" in caplog.text and "step-000002/trainer/weights.npy" in caplog.text
    assert final_state(tmp_path / "split", resumed, resumed_engines.trainer) == expected


def test_retention_keeps_the_last_k_and_every_nth_and_the_pool_grows_by_shards(tmp_path: Path):
    run_selfplay(make_run(tmp_path, 5, keepCheckpoints=2, keepEvery=2), engines=engines())
    store = LocalStore(run_dir(tmp_path))
    committed = list_checkpoints(store)
    assert [c.step for c in committed] == [2, 4, 5]
    assert store.list("checkpoints") == sorted(
        key
        for c in committed
        for key in [f"{c.prefix}/manifest.json"] + [f"{c.prefix}/{f.path}" for f in c.files]
    ), "retention leaves nothing of the removed checkpoints"
    # Incremental: step s adds one shard (the seed problem is in step 1's); earlier ones are named again.
    shards = [[e.path for e in c.shared if e.path.endswith(".npy")] for c in committed]
    assert [len(s) for s in shards] == [2, 4, 5]
    assert shards[0] == shards[1][:2] and shards[1] == shards[2][:4]
    assert sorted(store.list("pool")) == sorted({e.path for c in committed for e in c.shared})
