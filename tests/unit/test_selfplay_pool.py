"""The problem pool: growth, eviction, dedup, sampling, and exact, crash-safe reload."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from opensir import files
from opensir.selfplay import ProblemPool
from opensir.selfplay.pool import NewProblem
from opensir.selfplay.selection import select_student_problems, select_teacher_groups


def _rows(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _new(n: int, start: int = 0, step: int = 0) -> list[NewProblem]:
    return [
        NewProblem(f"problem {start + i}", ("concept one",), 0.5 + i / 100, str(i), step, "teacher")
        for i in range(n)
    ]


def test_growth_by_doubling_keeps_rows_and_ids() -> None:
    pool = ProblemPool(8, initial_capacity=4)
    capacities = []
    for step in range(10):
        added = pool.add(_new(3, 3 * step, step), _rows(3, seed=step))
        assert [p.id for p in added if p] == [3 * step, 3 * step + 1, 3 * step + 2]
        capacities.append(pool.capacity)
    assert len(pool) == 30 and pool.capacity >= 30
    assert len(set(capacities)) <= 4  # doubling: 4 -> 8 -> 16 -> 32 (only a few reallocations)
    assert pool.embeddings.dtype == np.float32 and pool.embeddings.shape == (30, 8)
    assert np.allclose(np.linalg.norm(pool.embeddings, axis=1), 1.0, atol=1e-6)
    assert [p.text for p in pool.problems] == [f"problem {i}" for i in range(30)]
    assert not pool.embeddings.flags.writeable


def test_fifo_eviction() -> None:
    pool = ProblemPool(8, max_size=5, initial_capacity=2)
    for step in range(6):
        pool.add(_new(2, 2 * step, step), _rows(2, seed=step))
    assert len(pool) == 5 and pool.evicted == 7
    assert [p.id for p in pool.problems] == [7, 8, 9, 10, 11]
    expected = np.concatenate([_rows(2, seed=s) for s in range(6)])[7:]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(pool.embeddings, expected, atol=1e-6)
    assert pool.capacity <= 32  # compaction, not unbounded growth


def test_dedup_against_pool_and_same_call() -> None:
    pool = ProblemPool(3, dedup_threshold=0.95)
    e = np.eye(3, dtype=np.float32)
    pool.add(_new(1), e[:1])
    near = np.array([[1.0, 0.01, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.01], [0.0, 0.0, 1.0]], np.float32)
    added = pool.add(_new(4, 1), near)
    assert [a.id if a else None for a in added] == [None, 1, None, 2]
    assert len(pool) == 3


def test_bad_embeddings_raise() -> None:
    pool = ProblemPool(3)
    with pytest.raises(ValueError):
        pool.add(_new(1), np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError):
        pool.add(_new(2), np.ones((1, 3), np.float32))
    with pytest.raises(ValueError):
        pool.add(_new(1), np.ones((1, 4), np.float32))


def test_sampling_rules() -> None:
    rng = np.random.default_rng(0)
    pool = ProblemPool(8, sampling="uniform")
    with pytest.raises(ValueError):
        pool.sample(1, rng)
    pool.add(_new(10), _rows(10))
    draws = pool.sample(5000, rng)
    counts = np.bincount([p.id for p in draws], minlength=10)
    assert counts.min() > 400 and (pool.draw_counts == counts).all()

    recent = ProblemPool(8, sampling="recent")
    recent.add(_new(10), _rows(10))
    counts = np.bincount([p.id for p in recent.sample(20000, rng)], minlength=10)
    assert counts[9] > 5 * counts[0]

    unexplored = ProblemPool(8, sampling="unexplored")
    unexplored.add(_new(10), _rows(10))
    for _ in range(200):
        unexplored.sample(1, rng)
    assert unexplored.draw_counts.max() - unexplored.draw_counts.min() <= 30


def test_save_load_exact_and_incremental(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pool = ProblemPool(8, sampling="unexplored")
    pool.add(_new(5), _rows(5))
    pool.sample(7, rng)
    first = pool.save(tmp_path)
    assert [p.suffix for p in first] == [".jsonl", ".npy", ".json"]
    pool.add(_new(3, 5, step=1), _rows(3, seed=2))
    second = pool.save(tmp_path)
    assert len(second) == 3 and "shard-000000000005-000000000007" in second[0].name  # only the new rows
    assert pool.save(tmp_path)[0].suffix == ".json"  # nothing new: only the state

    loaded = ProblemPool.load(tmp_path, sampling="unexplored")
    assert loaded.problems == pool.problems
    assert loaded.embeddings.tobytes() == pool.embeddings.tobytes()
    assert (loaded.draw_counts == pool.draw_counts).all() and loaded.next_id == pool.next_id
    assert loaded.sample(4, np.random.default_rng(9)) == pool.sample(4, np.random.default_rng(9))
    loaded.add(_new(1, 8), _rows(1, seed=3))
    assert loaded.problems[-1].id == 8


def test_load_upto_id_ignores_uncommitted_rows(tmp_path: Path) -> None:
    pool = ProblemPool(8)
    pool.add(_new(4), _rows(4))
    pool.save(tmp_path)
    committed = pool.last_id
    snapshot = (pool.problems, pool.embeddings.tobytes())
    pool.add(_new(4, 4), _rows(4, seed=5))
    pool.save(tmp_path)  # written, but its checkpoint never committed
    resumed = ProblemPool.load(tmp_path, upto_id=committed)
    assert (resumed.problems, resumed.embeddings.tobytes()) == snapshot
    assert resumed.next_id == 4
    # the resumed run goes on; its first save replaces the abandoned timeline
    resumed.add(_new(2, 4), _rows(2, seed=6))
    resumed.save(tmp_path)
    assert not (tmp_path / "state-000000000008.json").exists()
    again = ProblemPool.load(tmp_path)
    assert [p.id for p in again.problems] == list(range(6)) and again.problems[-1].text == "problem 5"


def test_crash_leftovers_are_ignored(tmp_path: Path) -> None:
    pool = ProblemPool(8)
    pool.add(_new(3), _rows(3))
    pool.save(tmp_path)
    (tmp_path / ".shard-000000000003-000000000005.npy.tmp-123").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "shard-000000000003-000000000005.jsonl").write_text('{"id": 3, "text": "trunc')
    (tmp_path / ".state-000000000006.json.tmp-123").write_text("{")
    loaded = ProblemPool.load(tmp_path)
    assert loaded.problems == pool.problems and loaded.embeddings.tobytes() == pool.embeddings.tobytes()


def test_a_save_that_fails_midway_leaves_the_previous_state_and_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = ProblemPool(8)
    pool.add(_new(3), _rows(3))
    pool.save(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    rename = os.replace

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if Path(target).name.startswith("state-"):
            raise OSError("disk full")
        rename(source, target)

    monkeypatch.setattr(files.os, "replace", replace)
    pool.add(_new(2, 3), _rows(2, seed=4))
    with pytest.raises(OSError, match="disk full"):
        pool.save(tmp_path)
    monkeypatch.undo()
    # The new shard is written but no state names it; no temporary is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*before, "shard-000000000003-000000000004.jsonl", "shard-000000000003-000000000004.npy"]
    )
    loaded = ProblemPool.load(tmp_path)
    assert [p.id for p in loaded.problems] == [0, 1, 2]


def test_eviction_survives_reload(tmp_path: Path) -> None:
    pool = ProblemPool(8, max_size=4)
    for step in range(3):
        pool.add(_new(3, 3 * step, step), _rows(3, seed=step))
        pool.save(tmp_path)
    loaded = ProblemPool.load(tmp_path, max_size=4)
    assert [p.id for p in loaded.problems] == [5, 6, 7, 8] and loaded.evicted == 5
    assert loaded.embeddings.tobytes() == pool.embeddings.tobytes()


def test_missing_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ProblemPool.load(tmp_path)


def test_selection_rules() -> None:
    assert select_teacher_groups([[1, 1], [0, 2], [], [0, 1]], 2) == [1, 3]
    assert select_teacher_groups([[1, 1], [], [0, 0]], 3) == [0, 2, 1]  # ties: lower index; empty last
    assert select_student_problems([0.5, 0.9, 0.9, 0.1], 2) == [1, 2]
    assert select_student_problems([0.5], 3) == [0]
    with pytest.raises(ValueError):
        select_student_problems([float("nan")], 1)
