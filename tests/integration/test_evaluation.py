"""A real evaluation of SmolLM2-135M-Instruct through the CLI: interrupted, resumed from the cache,
and of a run's committed checkpoint with the results stored next to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from opensir import cli
from opensir.evaluation import targets
from opensir.evaluation.datasets import default_data_dir
from opensir.evaluation.harness import CACHE_FILE

pytestmark = pytest.mark.integration

POLICY = "builtin:smollm2-135m-instruct"
SMALL = [
    "--benchmarks",
    "aime24,amc23",
    "--max-problems",
    "2",
    "-n",
    "2",
    "--max-tokens",
    "24",
    "--no-progress",
]


class Counting:
    """Wraps the real generator: counts what it is asked for, and interrupts after ``stop_after`` calls."""

    def __init__(self, inner, stop_after: int | None) -> None:
        self.inner, self.stop_after, self.generated = inner, stop_after, 0
        self.calls = 0

    def generate(self, prompts, n, sampling):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt  # what Ctrl-C does between two batches
        self.calls += 1
        out = self.inner.generate(prompts, n, sampling)
        self.generated += sum(len(c) for c in out)
        return out


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a loaded 2-core machine, torch's spinning threads slow decoding 30x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cache_lines(out: Path) -> list[str]:
    return (out / CACHE_FILE).read_text().splitlines()


def test_interrupted_evaluation_resumes_from_the_cache(tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    made: list[Counting] = []
    real = targets.build_generator
    stops = [2, None, None]

    def build(*args, **kwargs):
        made.append(Counting(real(*args, **kwargs), stops[len(made)]))
        return made[-1]

    monkeypatch.setattr(targets, "build_generator", build)
    args = ["eval", POLICY, *SMALL, "--prompts-per-batch", "1", "--out", str(out)]

    assert cli.main(args) == 130  # interrupted after two problems
    first = cache_lines(out)
    assert len(first) == 1 + 2 * 2  # header + 2 problems x 2 samples
    header = json.loads(first[0])["header"]
    assert header["model"] == POLICY and header["sampling"]["temperature"] == 0.6
    assert header["sampling"]["top_p"] == 0.95 and header["sampling"]["max_tokens"] == 24
    assert not (out / "results.json").exists()

    assert cli.main(args) == 0
    assert made[1].generated == 4  # only the two problems that were missing
    lines = cache_lines(out)
    assert lines[: len(first)] == first  # the cached samples are untouched
    assert len(lines) == 1 + 4 * 2
    keys = {(r["benchmark"], r["index"], r["sample"]) for r in map(json.loads, lines[1:])}
    assert len(keys) == 8 and {b for b, _, _ in keys} == {"aime24", "amc23"}

    summary = json.loads((out / "results.json").read_text())
    assert set(summary["benchmarks"]) == {"aime24", "amc23"}
    for metrics in summary["benchmarks"].values():
        assert metrics["problems"] == 2 and metrics["samples"] == 2
        low, high = metrics["mean_accuracy"]["ci95"]
        assert 0.0 <= low <= metrics["mean_accuracy"]["value"] <= high <= 1.0
        assert set(metrics["pass_at_k"]) == {"1", "2"} and set(metrics["maj_at_k"]) == {"1", "2"}
    per = json.loads((out / "amc23.json").read_text())["per_problem"]
    assert len(per) == 2 and all(len(p["correct"]) == 2 for p in per)
    table = (out / "results.md").read_text()
    assert "| AIME 2024 | 2 |" in table and "| AMC 2023 | 2 |" in table and "macro average" in table
    assert "| AMC 2023 | 2 |" in capsys.readouterr().out

    # A third run generates nothing at all.
    assert cli.main(args) == 0
    assert made[2].generated == 0 and made[2].calls == 0


def save_checkpoint(store_root: Path, namespace: str, run: str, step: int) -> None:
    """A committed checkpoint in the trainer's layout, holding SmolLM2's real weights."""
    from opensir.checkpoint import commit_checkpoint
    from opensir.models import load_causal_lm
    from opensir.spec import ModelSpec
    from opensir.storage import LocalStore

    staged = store_root / "staged"
    import torch

    model = load_causal_lm(ModelSpec(name=POLICY, dtype="float32"), "cpu", torch.float32)
    model.save_pretrained(staged / "trainer" / "model", safe_serialization=True)
    (staged / "trainer" / "optimizer.pt").write_bytes(b"not needed by evaluation")
    commit_checkpoint(LocalStore(store_root / namespace / run), step, staged, {"pool_size": 1})


def test_a_run_checkpoint_is_evaluated_and_stored_next_to_it(tmp_path, capsys):
    root = tmp_path / "store"
    save_checkpoint(root, "team", "r1", 4)
    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "opensir.io/v1alpha1",
                "kind": "SelfPlayRun",
                "metadata": {"name": "r1", "namespace": "team"},
                "spec": {
                    "model": {"name": POLICY, "dtype": "float32"},
                    "storage": {"uri": f"file://{root}"},
                    "evaluation": {
                        "benchmarks": ["amc23"],
                        "samples": 1,
                        "maxProblems": 2,
                        "sampling": {"temperature": 0.6, "topP": 0.95, "maxTokens": 16},
                        "dataDir": str(default_data_dir()),
                    },
                },
            }
        )
    )
    out = tmp_path / "out"
    # what the operator's evaluation Job runs (operator/manifests.py EVALUATE_COMMAND)
    assert cli.main(["eval", str(manifest), "--out", str(out), "--no-progress", "--step", "4"]) == 0
    stored = root / "team" / "r1" / "evals" / "step-000004"
    assert {p.name for p in stored.iterdir()} == {"amc23.json", "results.json", "results.md", CACHE_FILE}
    summary = json.loads((stored / "results.json").read_text())
    assert summary["model"].endswith("checkpoints/step-000004")
    assert summary["benchmarks"]["amc23"]["problems"] == 2 and summary["samples"] == 1

    assert cli.main(["eval", str(manifest), "--step", "7"]) == 1
    assert "no committed checkpoint at step 7 (committed: 4)" in capsys.readouterr().err
    # a store URI needs the base model's tokenizer
    assert cli.main(["eval", f"file://{root}/team/r1", "--no-progress"]) == 1
    assert "--tokenizer" in capsys.readouterr().err
