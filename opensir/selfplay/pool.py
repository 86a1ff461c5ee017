"""The problem pool: every legal problem with its embedding, sampled for reference problems.

The reference kept float64 embeddings, grew them with a full ``vstack`` copy on every append and
rewrote the whole pool at every checkpoint. Here embeddings are float32 unit rows in a preallocated
matrix that doubles when full (amortised O(1) append), FIFO eviction only moves a start offset, and
``save`` appends one shard of the rows added since the last save. A small state file, written
atomically *after* the shard, is what makes a shard part of the pool, so a crash in the middle of a
save leaves the previous state, and every shard it names, intact.

On disk (``directory``)::

    shard-<first id>-<last id>.jsonl   one problem per line
    shard-<first id>-<last id>.npy     float32 [rows, dim], same order
    state-<next id>.json               next id, first live id, shard list, draw counts
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from opensir.files import write_atomic

PoolSampling = Literal["uniform", "recent", "unexplored"]
_FORMAT = 1
_STATE = re.compile(r"^state-(\d{12})\.json$")
_SHARD = re.compile(r"^shard-(\d{12})-(\d{12})\.(jsonl|npy)$")


@dataclass(frozen=True)
class NewProblem:
    """A problem to append, before the pool gives it an id."""

    text: str
    concepts: tuple[str, ...] = ()
    solve_rate: float | None = None
    answer: str | None = None
    step_added: int = 0
    source: str = "teacher"
    """Where it came from: "seed", "bootstrap" or "teacher"."""


@dataclass(frozen=True)
class PoolProblem:
    """A problem of the pool; ids increase in the order problems were added and are never reused."""

    id: int
    text: str
    concepts: tuple[str, ...]
    solve_rate: float | None
    answer: str | None
    step_added: int
    source: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @staticmethod
    def from_json(line: str) -> PoolProblem:
        data: dict[str, Any] = json.loads(line)
        data["concepts"] = tuple(data["concepts"])
        return PoolProblem(**data)


@dataclass(frozen=True)
class _Shard:
    first_id: int
    last_id: int
    rows: int

    @property
    def stem(self) -> str:
        return f"shard-{self.first_id:012d}-{self.last_id:012d}"


def _normalise(embeddings: np.ndarray, dim: int) -> np.ndarray:
    rows = np.asarray(embeddings, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise ValueError(f"embeddings must have shape [n, {dim}], got {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError("embeddings must be finite")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("an embedding is the zero vector; it has no direction to compare")
    return (rows / norms).astype(np.float32, copy=False)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class ProblemPool:
    """Problems with float32 unit-norm embeddings, FIFO-bounded, sampled by a chosen rule.

    ``sampling``: "uniform" (reference: each draw uniform over the pool), "recent" (draw weight grows
    linearly with recency: the newest problem weighs ``n``, the oldest 1) or "unexplored" (weight
    ``1 / (1 + times drawn)``). ``dedup_threshold``: reject a new problem whose cosine similarity to
    a pool problem, or to an accepted earlier problem of the same call, exceeds it.
    """

    def __init__(
        self,
        dim: int,
        *,
        max_size: int | None = None,
        dedup_threshold: float | None = None,
        sampling: PoolSampling = "uniform",
        initial_capacity: int = 1024,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be positive or None, got {max_size}")
        if dedup_threshold is not None and not 0 < dedup_threshold <= 1:
            raise ValueError(f"dedup_threshold must be in (0, 1] or None, got {dedup_threshold}")
        if sampling not in ("uniform", "recent", "unexplored"):
            raise ValueError(f"sampling must be uniform, recent or unexplored, not {sampling!r}")
        self.dim = dim
        self.max_size = max_size
        self.dedup_threshold = dedup_threshold
        self.sampling: PoolSampling = sampling
        capacity = max(1, initial_capacity)
        self._matrix = np.zeros((capacity, dim), dtype=np.float32)
        self._draws = np.zeros(capacity, dtype=np.int64)
        self._rows: list[PoolProblem | None] = [None] * capacity
        self._start = 0  # live rows are [_start, _end)
        self._end = 0
        self._next_id = 0
        self._evicted = 0
        self._saved_next_id = 0
        self._shards: list[_Shard] = []

    # ------------------------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self._end - self._start

    @property
    def problems(self) -> list[PoolProblem]:
        """The live problems, oldest first (a new list)."""
        return [p for p in self._rows[self._start : self._end] if p is not None]

    @property
    def embeddings(self) -> np.ndarray:
        """Read-only float32 view ``[len(self), dim]`` of the live embeddings, oldest first."""
        view = self._matrix[self._start : self._end]
        view.flags.writeable = False
        return view

    @property
    def draw_counts(self) -> np.ndarray:
        """How often each live problem has been drawn by :meth:`sample` (a copy)."""
        return self._draws[self._start : self._end].copy()

    @property
    def capacity(self) -> int:
        """Rows allocated; grows by doubling."""
        return self._matrix.shape[0]

    @property
    def next_id(self) -> int:
        """The id the next accepted problem gets."""
        return self._next_id

    @property
    def last_id(self) -> int:
        """Id of the newest problem ever added (-1 for none); record it to reload exactly this pool."""
        return self._next_id - 1

    @property
    def saved_files(self) -> list[str]:
        """Names of the files the last :meth:`save` (or :meth:`load`) state consists of: its shards,
        oldest first, then its state file. Together they reload exactly that pool, so a checkpoint
        that records them (and keeps the state file as its own) is exact however the directory
        changes later."""
        shards = [f"{s.stem}.{ext}" for s in self._shards for ext in ("jsonl", "npy")]
        return [*shards, f"state-{self._saved_next_id:012d}.json"]

    @property
    def evicted(self) -> int:
        """Problems dropped so far by ``max_size``."""
        return self._evicted

    # ------------------------------------------------------------------------------------ writing
    def _reserve(self, extra: int) -> None:
        """Make room for ``extra`` rows after ``_end``: compact in place or double."""
        capacity = self.capacity
        if self._end + extra <= capacity:
            return
        live = len(self)
        needed = live + extra
        if 2 * needed <= capacity:  # at least half the buffer is dead rows: slide live rows to the front
            matrix, draws, rows = self._matrix, self._draws, self._rows
        else:
            new_capacity = max(2 * capacity, 2 * needed)
            matrix = np.zeros((new_capacity, self.dim), dtype=np.float32)
            draws = np.zeros(new_capacity, dtype=np.int64)
            rows = [None] * new_capacity
        matrix[:live] = self._matrix[self._start : self._end]
        draws[:live] = self._draws[self._start : self._end]
        rows[:live] = self._rows[self._start : self._end]
        rows[live:] = [None] * (len(rows) - live)
        draws[live:] = 0
        self._matrix, self._draws, self._rows = matrix, draws, rows
        self._start, self._end = 0, live

    def add(self, problems: Sequence[NewProblem], embeddings: np.ndarray) -> list[PoolProblem | None]:
        """Append problems with their embeddings; returns each one's pool entry, or None if rejected.

        Embeddings are normalised to unit length and stored as float32. Only a duplicate (see
        ``dedup_threshold``) is rejected; after the append the oldest problems are evicted down to
        ``max_size``.
        """
        rows = _normalise(embeddings, self.dim) if len(problems) else np.zeros((0, self.dim), np.float32)
        if rows.shape[0] != len(problems):
            raise ValueError(f"{rows.shape[0]} embeddings for {len(problems)} problems")
        accept = self._dedup(rows)
        kept = int(accept.sum())
        self._reserve(kept)
        result: list[PoolProblem | None] = []
        cursor = self._end
        for problem, keep, row in zip(problems, accept, rows, strict=True):
            if not keep:
                result.append(None)
                continue
            entry = PoolProblem(
                id=self._next_id,
                text=problem.text,
                concepts=tuple(problem.concepts),
                solve_rate=None if problem.solve_rate is None else float(problem.solve_rate),
                answer=problem.answer,
                step_added=int(problem.step_added),
                source=problem.source,
            )
            self._next_id += 1
            self._matrix[cursor] = row
            self._draws[cursor] = 0
            self._rows[cursor] = entry
            cursor += 1
            result.append(entry)
        self._end = cursor
        if self.max_size is not None and len(self) > self.max_size:
            drop = len(self) - self.max_size
            for i in range(self._start, self._start + drop):
                self._rows[i] = None
            self._start += drop
            self._evicted += drop
        return result

    def _dedup(self, rows: np.ndarray) -> np.ndarray:
        accept = np.ones(rows.shape[0], dtype=bool)
        if self.dedup_threshold is None or rows.shape[0] == 0:
            return accept
        threshold = self.dedup_threshold
        if len(self):
            accept &= (rows @ self.embeddings.T).max(axis=1) <= threshold
        within = rows @ rows.T
        for i in range(1, rows.shape[0]):  # the call's rows, not the pool: a handful per round
            if accept[i] and (within[i, :i][accept[:i]] > threshold).any():
                accept[i] = False
        return accept

    def sample(self, k: int, rng: np.random.Generator) -> list[PoolProblem]:
        """``k`` independent draws (one per teacher prompt, so repeats are possible, as in the reference)."""
        if k < 0:
            raise ValueError(f"k must be non-negative, got {k}")
        n = len(self)
        if k == 0:
            return []
        if n == 0:
            raise ValueError("cannot sample from an empty pool")
        if self.sampling == "uniform":
            picks = rng.integers(0, n, size=k)
        else:
            if self.sampling == "recent":
                weights = np.arange(1, n + 1, dtype=np.float64)
            else:
                weights = 1.0 / (1.0 + self._draws[self._start : self._end].astype(np.float64))
            picks = rng.choice(n, size=k, p=weights / weights.sum())
        np.add.at(self._draws, self._start + picks, 1)
        return [self._rows[self._start + int(i)] for i in picks]  # type: ignore[misc]

    # -------------------------------------------------------------------------------- persistence
    def save(self, directory: Path) -> list[Path]:
        """Write the rows added since the last save as a new shard, then the state; returns the paths.

        Safe to call with nothing new (only the state, with the current draw counts, is written).
        State files of a newer, abandoned timeline (left by a crash after a resume) are removed once
        this state is committed, together with their shards.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        first_live_id = self._next_id - len(self)
        first_new = max(self._saved_next_id, first_live_id)
        if first_new < self._next_id:
            begin = self._start + (first_new - first_live_id)
            entries = self._rows[begin : self._end]
            shard = _Shard(first_new, self._next_id - 1, len(entries))
            lines = "".join(e.to_json() + "\n" for e in entries if e is not None)
            matrix = np.ascontiguousarray(self._matrix[begin : self._end])
            jsonl, npy = directory / f"{shard.stem}.jsonl", directory / f"{shard.stem}.npy"
            write_atomic(jsonl, lines.encode("utf-8"))
            write_atomic(npy, _npy_bytes(matrix))
            written += [jsonl, npy]
            self._shards.append(shard)
        self._shards = [s for s in self._shards if s.last_id >= first_live_id]
        state = {
            "format": _FORMAT,
            "dim": self.dim,
            "next_id": self._next_id,
            "first_live_id": first_live_id,
            "evicted": self._evicted,
            "shards": [asdict(s) for s in self._shards],
            "draw_counts": self._draws[self._start : self._end].tolist(),
        }
        state_path = directory / f"state-{self._next_id:012d}.json"
        write_atomic(state_path, json.dumps(state).encode("utf-8"))
        written.append(state_path)
        self._saved_next_id = self._next_id
        self._remove_abandoned(directory)
        return written

    def _remove_abandoned(self, directory: Path) -> None:
        for path in directory.iterdir():
            state = _STATE.match(path.name)
            shard = _SHARD.match(path.name)
            if (state and int(state.group(1)) > self._next_id) or (
                shard and int(shard.group(1)) >= self._next_id
            ):
                path.unlink()

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        upto_id: int | None = None,
        max_size: int | None = None,
        dedup_threshold: float | None = None,
        sampling: PoolSampling = "uniform",
        initial_capacity: int = 1024,
    ) -> ProblemPool:
        """Reload the pool exactly as the newest save whose rows all have ids ``<= upto_id``.

        Same problems, bitwise-same embeddings, same draw counts and ids. Shards and rows past
        ``upto_id`` (written for a step whose checkpoint was never committed), shards no state
        names and leftover temporary files are ignored. ``max_size``, ``dedup_threshold`` and
        ``sampling`` come from the run's spec, not from the files.
        """
        directory = Path(directory)
        candidates = sorted(
            int(m.group(1)) for p in directory.glob("state-*.json") if (m := _STATE.match(p.name))
        )
        if upto_id is not None:
            candidates = [c for c in candidates if c <= upto_id + 1]
        if not candidates:
            raise FileNotFoundError(
                f"no pool state in {directory}" + (f" up to id {upto_id}" if upto_id is not None else "")
            )
        state = json.loads((directory / f"state-{candidates[-1]:012d}.json").read_text())
        if state.get("format") != _FORMAT:
            raise ValueError(f"unknown pool format {state.get('format')!r} in {directory}")
        pool = cls(
            int(state["dim"]),
            max_size=max_size,
            dedup_threshold=dedup_threshold,
            sampling=sampling,
            initial_capacity=max(initial_capacity, 2 * len(state["draw_counts"])),
        )
        first_live_id, next_id = int(state["first_live_id"]), int(state["next_id"])
        shards = [_Shard(**s) for s in state["shards"]]
        for shard in shards:
            entries = [
                PoolProblem.from_json(line)
                for line in (directory / f"{shard.stem}.jsonl").read_text("utf-8").splitlines()
            ]
            matrix = np.load(directory / f"{shard.stem}.npy", allow_pickle=False)
            if len(entries) != shard.rows or matrix.shape != (shard.rows, pool.dim):
                raise ValueError(f"pool shard {shard.stem} in {directory} does not match its state")
            keep = [i for i, e in enumerate(entries) if first_live_id <= e.id < next_id]
            if keep:
                pool._reserve(len(keep))
                end = pool._end + len(keep)
                pool._matrix[pool._end : end] = matrix[keep]
                pool._rows[pool._end : end] = [entries[i] for i in keep]
                pool._end = end
        draws = np.asarray(state["draw_counts"], dtype=np.int64)
        if draws.shape[0] != len(pool):
            raise ValueError(
                f"pool state in {directory} has {draws.shape[0]} draw counts for {len(pool)} rows"
            )
        pool._draws[pool._start : pool._end] = draws
        pool._next_id = next_id
        pool._evicted = int(state["evicted"])
        pool._saved_next_id = next_id
        pool._shards = shards
        return pool
