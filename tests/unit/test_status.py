"""`opensir status`, `opensir pool` and `opensir plot` on a store laid out as the runner writes it (a
committed checkpoint whose pool state names shared shards, progress.json and history.jsonl)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from opensir import cli
from opensir.checkpoint import FileEntry, commit_checkpoint
from opensir.cli.status import (
    RunNotFoundError,
    format_status,
    load_pool,
    novelty,
    read_summary,
    select_problems,
    store_from_uri,
)
from opensir.selfplay.pool import NewProblem, ProblemPool
from opensir.storage import LocalStore

PROBLEMS = [
    NewProblem("What is 1+1?", (), None, None, 0, "seed"),
    NewProblem("A train leaves at 3 pm going 60 km/h; how far by 5 pm?", ("speed", "time"), 2 / 3, "120", 1),
    NewProblem("Find x if 2x + 3 = 11.", ("linear equations",), 1 / 3, "4", 1),
    NewProblem("How many primes are below 20?", ("primes", "counting"), 1.0, "8", 2),
]
EMBEDDINGS = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0.6, 0.0, 0.8, 0], [0, 0, 0, 1]], dtype=np.float32)


def history_record(step: int) -> dict:
    return {
        "step": step,
        "trained": step != 2,
        "teacher_reward": 0.4 + step / 10,
        "student_reward": 0.5,
        "solve_rate": 0.5,
        "legal_ratio": 0.75,
        "in_band_ratio": 0.5,
        "pool_size": 2 + step,
        "loss": 0.1 if step != 2 else None,
        "kl": 0.0 if step != 2 else None,
        "grad_norm": 1.0 if step != 2 else None,
        "tokens_generated": 1000,
        "seconds": 10.0,
        "phase_seconds": {"teacher_generation": 6.0, "student_generation": 3.0, "training": 1.0},
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs" / "default" / "demo"
    store = LocalStore(root)
    pool = ProblemPool(4)
    pool.add(PROBLEMS, EMBEDDINGS)
    pool_dir = tmp_path / "pool"
    pool.save(pool_dir)
    *shards, state_file = pool.saved_files
    shared = []
    for name in shards:
        store.put_file(f"pool/{name}", pool_dir / name)
        shared.append(FileEntry.of(f"pool/{name}", pool_dir / name))
    staged = tmp_path / "staged"
    (staged / "pool").mkdir(parents=True)
    shutil.copyfile(pool_dir / state_file, staged / "pool" / state_file)
    (staged / "runner.json").write_text("{}")
    commit_checkpoint(store, 3, staged, {"pool_size": 4}, shared)
    history = [history_record(s) for s in (1, 2, 3)]
    store.put_bytes("history.jsonl", "".join(json.dumps(r) + "\n" for r in history).encode())
    progress = {"step": 3, "maxSteps": 4, "updated": 1_700_000_000.0, "etaSeconds": 10.0, "poolSize": 4}
    store.put_bytes("progress.json", json.dumps(progress).encode())
    return root


def test_status_summarises_progress_checkpoints_history_and_time(run_dir: Path) -> None:
    text = format_status(read_summary(store_from_uri(f"file://{run_dir}")), now=1_700_000_060.0)
    assert "step 3/4 (75%), ETA 10s" in text
    assert "(60s ago)" in text
    assert "checkpoint   step 3" in text and "kept: steps 3" in text
    assert "3 recorded, 2 trained, 1 skipped" in text
    assert "time split   teacher_generation 60%, student_generation 30%, training 10%" in text
    assert "  skipped" in text  # the untrained step's loss column


def test_status_of_something_that_is_no_run_says_so(tmp_path: Path) -> None:
    with pytest.raises(RunNotFoundError, match=r"no progress\.json, history or checkpoint"):
        read_summary(LocalStore(tmp_path / "nothing"))


def test_novelty_is_distance_to_the_nearest_earlier_problem() -> None:
    values = novelty(EMBEDDINGS, chunk=2)  # chunks smaller than the pool give the same answer
    assert values == pytest.approx([1.0, 0.4, 0.4, 1.0])


def test_pool_is_read_from_the_checkpoint_and_filtered(run_dir: Path) -> None:
    checkpoint, entries = load_pool(LocalStore(run_dir))
    assert checkpoint.step == 3 and len(entries) == 4
    top = select_problems(entries, order="difficulty", limit=1)
    assert top[0].problem.text.startswith("Find x")
    assert [e.problem.id for e in select_problems(entries, concept="PRIME")] == [3]
    assert [e.problem.id for e in select_problems(entries, step=1, order="id")] == [2, 1]
    assert [e.problem.id for e in select_problems(entries, text="train")] == [1]
    assert len(select_problems(entries, sample=2, seed=1)) == 2
    with pytest.raises(RunNotFoundError, match="no committed checkpoint at step 9"):
        load_pool(LocalStore(run_dir), step=9)


def test_cli_status_pool_and_plot(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", str(run_dir)]) == 0
    assert "step 3/4" in capsys.readouterr().out
    assert cli.main(["pool", f"file://{run_dir}", "--sort", "novelty", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 problems, 5 concepts; showing 2" in out
    assert cli.main(["pool", str(run_dir), "--concept", "speed", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["answer"] == "120"
    png = tmp_path / "out" / "curriculum.png"
    assert cli.main(["plot", str(run_dir), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["status", str(tmp_path / "missing")]) == 1
    assert "is this a run?" in capsys.readouterr().err


def test_cli_status_reads_the_store_a_manifest_names(run_dir: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        "apiVersion: opensir.io/v1alpha1\nkind: SelfPlayRun\nmetadata: {name: demo}\n"
        f"spec:\n  model: {{name: scripted}}\n  storage: {{uri: 'file://{tmp_path / 'runs'}'}}\n"
    )
    assert cli.main(["status", str(manifest)]) == 0
    assert "step 3/4" in capsys.readouterr().out
