"""Evaluations inside a run: when a checkpoint is due, where results are stored, and how the
operator summarises them in SelfPlayRun.status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opensir.layout import evals_prefix, evaluated_steps, latest_evaluation
from opensir.spec import EvaluationSpec, EvaluationStatus, parse_run
from opensir.storage import LocalStore


def results(macro: float, per: dict[str, float], samples: int = 2) -> dict:
    acc = lambda v: {"value": v, "ci95": [v, v]}  # noqa: E731
    return {
        "samples": samples,
        "benchmarks": {name: {"mean_accuracy": acc(v)} for name, v in per.items()},
        "macro_average": {"mean_accuracy": acc(macro)},
    }


def test_which_checkpoints_are_evaluated():
    off = EvaluationSpec()
    assert not off.due(10, 10)
    final_only = EvaluationSpec(benchmarks=["gsm8k"])
    assert [s for s in range(1, 11) if final_only.due(s, 10)] == [10]
    every = EvaluationSpec(benchmarks=["gsm8k"], every=4)
    assert [s for s in range(1, 11) if every.due(s, 10)] == [4, 8, 10]


def test_the_newest_stored_evaluation_is_summarised(tmp_path: Path):
    store = LocalStore(tmp_path)
    assert latest_evaluation(store) is None
    store.put_bytes(
        f"{evals_prefix(4)}/results.json", json.dumps(results(0.2, {"gsm8k": 0.3, "amc23": 0.1})).encode()
    )
    store.put_bytes(
        f"{evals_prefix(8)}/results.json", json.dumps(results(0.25, {"gsm8k": 0.4, "amc23": 0.1})).encode()
    )
    store.put_bytes(f"{evals_prefix(8)}/gsm8k.json", b"{}")
    store.put_bytes(f"{evals_prefix(12)}/generations.jsonl", b"")  # an evaluation still running
    assert evaluated_steps(store) == [4, 8]
    assert latest_evaluation(store) == EvaluationStatus(
        step=8, macro_average=0.25, benchmarks={"gsm8k": 0.4, "amc23": 0.1}, samples=2, evaluated_steps=[4, 8]
    )
    store.put_bytes(f"{evals_prefix(16)}/results.json", b"{torn")
    assert latest_evaluation(store).step == 8  # an unreadable newer one is skipped


def test_the_operator_puts_the_summary_into_the_status(tmp_path: Path):
    from opensir_operator.observe import read_run_progress
    from opensir_operator.status import build_status

    run = parse_run(
        {
            "apiVersion": "opensir.io/v1alpha1",
            "kind": "SelfPlayRun",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {
                "model": {"name": "m"},
                "storage": {"uri": f"file://{tmp_path}"},
                "evaluation": {"benchmarks": ["gsm8k", "amc23"]},
            },
        }
    )
    store = LocalStore(tmp_path / "ns" / "r")
    store.put_bytes("progress.json", json.dumps({"step": 10, "maxSteps": 10, "poolSize": 3}).encode())
    assert read_run_progress(run).evaluation is None
    store.put_bytes(
        f"{evals_prefix(10)}/results.json", json.dumps(results(0.25, {"gsm8k": 0.4, "amc23": 0.1})).encode()
    )
    reading = read_run_progress(run)
    status = build_status(
        generation=1,
        phase="Succeeded",
        conditions=[],
        reading=reading,
        max_steps=10,
        restarts=0,
        start_time=None,
        completion_time=None,
    )
    assert status.evaluation is not None
    assert status.evaluation.model_dump(mode="json", by_alias=True, exclude_none=True) == {
        "step": 10,
        "macroAverage": 0.25,
        "benchmarks": {"gsm8k": 0.4, "amc23": 0.1},
        "samples": 2,
        "evaluatedSteps": [10],
    }


class CountingTrainer:
    """Takes "steps" without a model; saves a marker where the trainer's files go."""

    step_count = 0

    def step(self, batch):
        from opensir.seams import TrainStats

        self.step_count += 1
        return TrainStats(self.step_count, 0.0, 0.0, 0.0, 1e-6, 1, 0.0)

    def save(self, directory: Path) -> None:
        (directory / "model").mkdir(parents=True)
        (directory / "model" / "weights.txt").write_text(str(self.step_count))

    def load(self, directory: Path) -> None:
        raise AssertionError("nothing to resume")


class NoSync:
    def push(self, trainer) -> int:
        return trainer.step_count


class AnsweringPolicy:
    """The scripted self-play policy, which also answers every benchmark prompt with 1."""

    def __init__(self) -> None:
        from test_runner import ScriptedPolicy

        self.selfplay = ScriptedPolicy()
        self.benchmark_prompts = 0

    def generate(self, prompts, n, sampling):
        from opensir.seams import Completion

        texts = ["".join(map(chr, p)) for p in prompts]
        if all("<problem>" not in t and "apples do the" not in t for t in texts) and any(
            "$" in t for t in texts
        ):
            self.benchmark_prompts += len(prompts)
            return [[Completion("so \\boxed{1}", (1,), None, "stop")] * n for _ in prompts]
        return self.selfplay.generate(prompts, n, sampling)


def test_a_local_run_evaluates_due_checkpoints_in_process_and_stores_the_results(tmp_path: Path):
    from scripted import CharTokenizer
    from test_runner import HashEmbedder

    from opensir.assembly import Engines
    from opensir.evaluation.datasets import default_data_dir
    from opensir.loop import run_selfplay

    run = parse_run(
        {
            "apiVersion": "opensir.io/v1alpha1",
            "kind": "SelfPlayRun",
            "metadata": {"name": "ev"},
            "spec": {
                "model": {"name": "scripted"},
                "selfPlay": {"teacher": {"groupSize": 2, "upscaleRatio": 1}, "student": {"samples": 4}},
                "training": {"maxSteps": 3, "warmupSteps": 0, "saveEvery": 1},
                "storage": {"uri": f"file://{tmp_path}"},
                "evaluation": {
                    "benchmarks": ["amc23"],
                    "every": 2,
                    "samples": 2,
                    "maxProblems": 3,
                    "dataDir": str(default_data_dir()),
                },
            },
        }
    )
    policy = AnsweringPolicy()
    engines = Engines(CharTokenizer(), policy, policy, policy, HashEmbedder(), CountingTrainer(), NoSync())
    run_selfplay(run, engines=engines, evaluate=True)
    store = LocalStore(tmp_path / "default" / "ev")
    assert evaluated_steps(store) == [2, 3]  # every 2 steps, and the final checkpoint
    assert policy.benchmark_prompts == 2 * 3  # two evaluations of three problems
    summary = json.loads((tmp_path / "default" / "ev" / evals_prefix(3) / "results.json").read_text())
    assert summary["model"] == f"file://{tmp_path}/default/ev/checkpoints/step-000003"
    amc = json.loads((tmp_path / "default" / "ev" / evals_prefix(3) / "amc23.json").read_text())
    assert [p["reference"] for p in amc["per_problem"]] == ["1.0", "1.0", "3.0"]  # the seeded sample
    assert [p["correct"] for p in amc["per_problem"]] == [[True, True], [True, True], [False, False]]
    assert summary["benchmarks"]["amc23"]["mean_accuracy"]["value"] == pytest.approx(2 / 3)

    # in a pod the operator's evaluation Jobs do it instead
    other = run.model_copy(update={"metadata": run.metadata.model_copy(update={"name": "ev2"})})
    run_selfplay(other, engines=engines, evaluate=False)
    assert evaluated_steps(LocalStore(tmp_path / "default" / "ev2")) == []


def test_opensir_status_shows_the_newest_evaluation(tmp_path: Path):
    from opensir.cli.status import format_status, read_summary

    store = LocalStore(tmp_path)
    store.put_bytes("progress.json", json.dumps({"step": 8, "maxSteps": 8, "updated": 0.0}).encode())
    store.put_bytes(
        f"{evals_prefix(8)}/results.json", json.dumps(results(0.25, {"gsm8k": 0.4, "amc23": 0.1})).encode()
    )
    text = format_status(read_summary(store), now=10.0)
    assert (
        "evaluation   step 8: mean accuracy 25.0% (macro; gsm8k 40.0%, amc23 10.0%; n=2); evaluated steps 8"
        in text
    )
