"""`opensir run` with training.engine deepspeed under torchrun, 2 processes on CPU: rank 0 plays the
rounds and commits checkpoints, rank 1 trains along; a second launch resumes from the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import FAST_OVERRIDES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
OPENSIR = str(Path(sys.executable).with_name("opensir"))


def launch(storage: Path, max_steps: int) -> subprocess.CompletedProcess[str]:
    overrides = [
        *FAST_OVERRIDES,
        f"training.maxSteps={max_steps}",
        "training.engine=deepspeed",
        f"storage.uri=file://{storage}",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        OPENSIR,
        "run",
        str(ROOT / "examples" / "tiny-cpu.yaml"),
    ]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def test_two_training_processes_run_and_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "default" / "tiny-cpu"
    first = launch(tmp_path, 1)
    assert "training rank 1: trained along with rank 0 for 1 steps" in first.stderr
    second = launch(tmp_path, 2)
    assert "resuming" in second.stderr and "at step 1" in second.stderr

    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [1, 2]
    assert all(r["trained"] and r["loss"] is not None for r in history)

    trainer = run_dir / "checkpoints" / "step-000002" / "trainer"
    state = json.loads((trainer / "trainer_state.json").read_text())
    assert state["engine"] == "deepspeed" and state["world_size"] == 2 and state["step_count"] == 2
    assert {p.name for p in (trainer / "zero").glob("*optim_states.pt")} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }
    weights = [
        load_file(str(run_dir / "checkpoints" / f"step-{s:06d}" / "trainer" / "model" / "model.safetensors"))
        for s in (1, 2)
    ]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
