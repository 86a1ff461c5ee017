"""`opensir run` end to end, as a user runs it: a real self-play run of SmolLM2-135M on the CPU,
then a resume from its last committed checkpoint, which must end where an uninterrupted run ends."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import FAST_OVERRIDES

from opensir.selfplay import ProblemPool

ROOT = Path(__file__).resolve().parents[2]
OPENSIR = str(Path(sys.executable).with_name("opensir"))


def opensir_run(storage: Path, max_steps: int) -> subprocess.CompletedProcess[str]:
    overrides = [*FAST_OVERRIDES, f"training.maxSteps={max_steps}", f"storage.uri=file://{storage}"]
    command = [OPENSIR, "run", str(ROOT / "examples" / "tiny-cpu.yaml")]
    for override in overrides:
        command += ["--set", override]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)


def manifest(run_dir: Path, step: int) -> dict:
    return json.loads((run_dir / "checkpoints" / f"step-{step:06d}" / "manifest.json").read_text())


def checkpoint_pool(run_dir: Path, step: int, scratch: Path) -> ProblemPool:
    """The pool as the step's checkpoint records it: its own state file plus the shared shards it names."""
    checkpoint = run_dir / "checkpoints" / f"step-{step:06d}"
    shutil.copytree(checkpoint / "pool", scratch)
    for entry in manifest(run_dir, step)["shared"]:
        shutil.copyfile(run_dir / entry["path"], scratch / Path(entry["path"]).name)
    return ProblemPool.load(scratch)


def checkpoint_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(
        (run_dir / "checkpoints" / f"step-{step:06d}" / "trainer" / "model").glob("*.safetensors")
    ):
        weights.update(load_file(str(file)))
    return weights


def history_without_timings(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    for record in records:
        del record["seconds"], record["phase_seconds"]
    return records


@pytest.mark.integration
@pytest.mark.slow
def test_tiny_run_trains_checkpoints_grows_the_pool_and_resumes(tmp_path: Path):
    first = opensir_run(tmp_path, max_steps=2)
    assert first.returncode == 0, first.stderr[-3000:]
    step_lines = [line for line in first.stderr.splitlines() if line.startswith("step ")]
    step_lines += [line for line in first.stdout.splitlines() if line.startswith("step ")]
    steps = [line.split("|")[0].split()[1] for line in step_lines]
    assert steps == ["1/2", "2/2"], first.stdout + first.stderr

    run_dir = tmp_path / "default" / "tiny-cpu"
    for step in (1, 2):
        files = {entry["path"] for entry in manifest(run_dir, step)["files"]}
        assert "runner.json" in files
        assert any(path.startswith("trainer/") and path.endswith(".safetensors") for path in files), files
    assert manifest(run_dir, 2)["extra"]["pool_size"] > 1, "the pool did not grow beyond the seed problem"
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["step"] == 2 and progress["lastCheckpoint"]["step"] == 2
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [1, 2]
    assert any(record["trained"] for record in history), "no step took a GRPO update"

    resumed = opensir_run(tmp_path, max_steps=3)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "step    3/3" in output and "step    1/3" not in output, output[-3000:]
    assert manifest(run_dir, 3)["extra"]["pool_size"] >= manifest(run_dir, 2)["extra"]["pool_size"]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [1, 2, 3]

    # The same three steps without the interruption end in the same state: the resume restored
    # model, optimizer, scheduler, RNGs, pool (with draw counts) and history exactly. On the CPU in
    # fp32 the same operations run in the same order, so the weights agree to within 1e-6 (in
    # practice bitwise).
    straight = opensir_run(tmp_path / "straight", max_steps=3)
    assert straight.returncode == 0, straight.stderr[-3000:]
    straight_dir = tmp_path / "straight" / "default" / "tiny-cpu"
    assert history_without_timings(straight_dir) == history_without_timings(run_dir)
    resumed_pool = checkpoint_pool(run_dir, 3, tmp_path / "pool-resumed")
    straight_pool = checkpoint_pool(straight_dir, 3, tmp_path / "pool-straight")
    assert [(p.id, p.text) for p in resumed_pool.problems] == [(p.id, p.text) for p in straight_pool.problems]
    assert resumed_pool.problems == straight_pool.problems
    assert resumed_pool.embeddings.tobytes() == straight_pool.embeddings.tobytes()
    assert resumed_pool.draw_counts.tolist() == straight_pool.draw_counts.tolist()
    resumed_weights, straight_weights = checkpoint_weights(run_dir, 3), checkpoint_weights(straight_dir, 3)
    assert resumed_weights.keys() == straight_weights.keys()
    worst = max((resumed_weights[k] - straight_weights[k]).abs().max().item() for k in resumed_weights)
    assert worst <= 1e-6, f"step-3 weights differ by up to {worst}"
