"""What a person at a terminal sees of a run from its store: ``opensir status`` and ``opensir pool``.

Everything here reads only the run's store (``progress.json``, ``history.jsonl``, committed checkpoint
manifests and the pool files a manifest names), so the same commands work on a local directory and on
S3, for a running, finished or crashed run, without kubectl exec into a pod.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from opensir.checkpoint import Checkpoint, list_checkpoints
from opensir.errors import OpensirError
from opensir.layout import POOL, Progress, StepRecord, latest_evaluation, read_history, read_progress
from opensir.selfplay.pool import PoolProblem, ProblemPool
from opensir.spec import EvaluationStatus
from opensir.storage import ArtifactStore, StoreURIError, open_store_uri

PoolOrder = Literal["novelty", "difficulty", "step", "id"]


class RunNotFoundError(OpensirError, FileNotFoundError):
    """The store holds nothing of a run (wrong URI, namespace or name)."""


def store_from_uri(uri: str, *, endpoint: str | None = None) -> ArtifactStore:
    """The store of one run from its URI (``file:///…/<ns>/<run>``, ``s3://bucket/prefix/<ns>/<run>``)
    or a plain directory; the manifest route (:func:`opensir.storage.open_store`) is the usual one."""
    try:
        return open_store_uri(uri, endpoint=endpoint)
    except StoreURIError as error:
        raise RunNotFoundError(str(error)) from None


# -------------------------------------------------------------------------------------- status
@dataclass(frozen=True)
class RunSummary:
    """A run as its store shows it."""

    uri: str
    progress: Progress | None
    history: list[StepRecord]
    checkpoints: list[Checkpoint]
    evaluation: EvaluationStatus | None = None
    """The newest stored benchmark evaluation."""


def read_summary(store: ArtifactStore) -> RunSummary:
    """Progress, history and committed checkpoints; raises when the store has none of them."""
    progress = read_progress(store)
    history = read_history(store)
    checkpoints = list_checkpoints(store)
    if progress is None and not history and not checkpoints:
        raise RunNotFoundError(f"{store.uri}: no progress.json, history or checkpoint (is this a run?)")
    return RunSummary(store.uri, progress, history, checkpoints, latest_evaluation(store))


def format_status(summary: RunSummary, *, now: float | None = None, last: int = 10) -> str:
    """The text of ``opensir status``."""
    now = time.time() if now is None else now
    lines = [f"run          {summary.uri}"]
    progress = summary.progress
    if progress is not None:
        step, max_steps = progress.step, progress.max_steps
        done = step >= max_steps
        eta = "finished" if done else f"ETA {_duration(progress.eta_seconds or 0.0)}"
        percent = f" ({100 * step / max_steps:.0f}%)" if max_steps > 0 else ""
        lines.append(f"progress     step {step}/{max_steps}{percent}, {eta}")
        if progress.updated is not None:
            updated = progress.updated
            lines.append(f"updated      {_when(updated)} ({_duration(now - updated)} ago)")
        pool_size = "?" if progress.pool_size is None else progress.pool_size
        lines.append(f"pool         {pool_size} problems")
    if summary.checkpoints:
        newest = summary.checkpoints[-1]
        steps = ", ".join(str(c.step) for c in summary.checkpoints)
        size = sum(f.size for f in newest.files)
        lines.append(
            f"checkpoint   step {newest.step}, committed {_when(newest.created)} "
            f"({_duration(now - newest.created)} ago), {_bytes(size)}; kept: steps {steps}"
        )
    else:
        lines.append("checkpoint   none committed")
    evaluation = summary.evaluation
    if evaluation is not None:
        per = ", ".join(f"{name} {100 * value:.1f}%" for name, value in evaluation.benchmarks.items())
        steps = ", ".join(map(str, evaluation.evaluated_steps))
        lines.append(
            f"evaluation   step {evaluation.step}: mean accuracy {100 * evaluation.macro_average:.1f}% "
            f"(macro; {per}; n={evaluation.samples}); evaluated steps {steps}"
        )
    history = summary.history
    if history:
        trained = sum(1 for r in history if r.trained)
        lines.append(
            f"steps        {len(history)} recorded, {trained} trained, {len(history) - trained} skipped"
        )
        phases: dict[str, float] = {}
        for record in history:
            for phase, seconds in record.phase_seconds.items():
                phases[phase] = phases.get(phase, 0.0) + seconds
        total = sum(phases.values())
        if total > 0:
            shares = ", ".join(
                f"{phase} {100 * seconds / total:.0f}%"
                for phase, seconds in sorted(phases.items(), key=lambda item: -item[1])
            )
            lines.append(f"time split   {shares}")
        lines += ["", _history_table(history[-last:])]
    return "\n".join(lines)


def _history_table(records: Sequence[StepRecord]) -> str:
    header = (
        f"{'step':>5} {'reward T':>8} {'reward S':>8} {'solve':>6} {'legal':>6} {'in-band':>7} "
        f"{'pool':>5} {'loss':>9} {'kl':>8} {'tokens':>7} {'seconds':>8}"
    )
    rows = [header]
    for r in records:
        loss = f"{r.loss:+.4f}" if r.loss is not None else "skipped"
        kl = f"{r.kl:.1e}" if r.kl is not None else "-"
        rows.append(
            f"{r.step:>5} {r.teacher_reward:>8.3f} {r.student_reward:>8.3f} {r.solve_rate:>6.2f} "
            f"{r.legal_ratio:>6.2f} {r.in_band_ratio:>7.2f} {r.pool_size:>5} {loss:>9} {kl:>8} "
            f"{r.tokens_generated:>7} {r.seconds:>8.1f}"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------- pool
@dataclass(frozen=True)
class PoolEntry:
    """A pool problem with its novelty: 1 - cosine similarity to its nearest earlier problem in the pool."""

    problem: PoolProblem
    novelty: float

    @property
    def difficulty(self) -> float | None:
        """1 - solve rate (None for problems without one, such as seeds)."""
        return None if self.problem.solve_rate is None else 1.0 - self.problem.solve_rate


def load_pool(store: ArtifactStore, step: int | None = None) -> tuple[Checkpoint, list[PoolEntry]]:
    """The pool of the newest committed checkpoint (or of the one at ``step``), with novelties.

    Only the pool's files are fetched (its state file and the shards the manifest names), never the
    model, so this is quick on S3 too.
    """
    checkpoints = list_checkpoints(store)
    if step is not None:
        checkpoints = [c for c in checkpoints if c.step == step]
    if not checkpoints:
        which = f"at step {step}" if step is not None else "at all"
        raise RunNotFoundError(
            f"{store.uri}: no committed checkpoint {which}; the pool is stored with the checkpoints"
        )
    checkpoint = checkpoints[-1]
    with tempfile.TemporaryDirectory(prefix="opensir-pool-") as scratch:
        directory = Path(scratch)
        for entry in checkpoint.files:
            if entry.path.startswith(f"{POOL}/"):
                store.get_file(f"{checkpoint.prefix}/{entry.path}", directory / Path(entry.path).name)
        for entry in checkpoint.shared:
            store.get_file(entry.path, directory / Path(entry.path).name)
        pool = ProblemPool.load(directory)
    return checkpoint, [
        PoolEntry(p, float(n)) for p, n in zip(pool.problems, novelty(pool.embeddings), strict=True)
    ]


def novelty(embeddings: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per row: 1 - max cosine similarity to any earlier row (1 for the first); rows are unit vectors.

    Chunked so a pool of tens of thousands never builds the full similarity matrix.
    """
    n = embeddings.shape[0]
    result = np.ones(n, dtype=np.float64)
    for begin in range(0, n, chunk):
        end = min(begin + chunk, n)
        sims = embeddings[begin:end] @ embeddings[:end].T
        rows = np.arange(begin, end)[:, None]
        sims[np.arange(end)[None, :] >= rows] = -np.inf
        best = sims.max(axis=1)
        has_earlier = np.isfinite(best)
        result[begin:end][has_earlier] = 1.0 - best[has_earlier]
    return result


def select_problems(
    entries: Sequence[PoolEntry],
    *,
    order: PoolOrder = "novelty",
    concept: str | None = None,
    text: str | None = None,
    step: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    limit: int | None = 10,
) -> list[PoolEntry]:
    """Filter (concept and text substrings, case-insensitive; the step a problem was added), then either
    a random sample or the top ``limit`` by ``order`` (highest novelty / difficulty, newest step / id)."""
    chosen = [
        e
        for e in entries
        if (concept is None or any(concept.lower() in c.lower() for c in e.problem.concepts))
        and (text is None or text.lower() in e.problem.text.lower())
        and (step is None or e.problem.step_added == step)
    ]
    if sample is not None:
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(chosen), size=min(sample, len(chosen)), replace=False)
        return [chosen[int(i)] for i in sorted(picks)]
    keys = {
        "novelty": lambda e: e.novelty,
        "difficulty": lambda e: -1.0 if e.difficulty is None else e.difficulty,
        "step": lambda e: e.problem.step_added,
        "id": lambda e: e.problem.id,
    }
    chosen.sort(key=keys[order], reverse=True)
    return chosen if limit is None else chosen[:limit]


def format_pool(
    checkpoint: Checkpoint, entries: Sequence[PoolEntry], shown: Sequence[PoolEntry], *, width: int = 90
) -> str:
    """The text of ``opensir pool``: a header line, then one block per problem."""
    concepts = {c for e in entries for c in e.problem.concepts}
    lines = [
        f"pool of checkpoint step {checkpoint.step}: {len(entries)} problems, {len(concepts)} concepts; "
        f"showing {len(shown)}",
        "",
    ]
    for e in shown:
        p = e.problem
        solve = "-" if p.solve_rate is None else f"{p.solve_rate:.2f}"
        lines.append(
            f"#{p.id:<5} step {p.step_added:<4} {p.source:<9} solve {solve:<5} novelty {e.novelty:.3f}"
            f"  answer {p.answer if p.answer is not None else '-'}"
        )
        body = " ".join(p.text.split())
        lines.append("    " + (body if len(body) <= width else body[: width - 1] + "…"))
        if p.concepts:
            lines.append("    concepts: " + "; ".join(p.concepts))
    return "\n".join(lines)


def pool_json(entries: Sequence[PoolEntry]) -> str:
    """JSON lines of the shown problems (for jq and scripts)."""
    return "".join(
        json.dumps({**json.loads(e.problem.to_json()), "novelty": e.novelty}, ensure_ascii=False) + "\n"
        for e in entries
    )


# ------------------------------------------------------------------------------------- helpers
def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
