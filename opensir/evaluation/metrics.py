"""Benchmark metrics from per-sample verdicts: mean accuracy, pass@k, maj@k, their 95% intervals.

Per problem with ``n`` samples of which ``c`` are right:

* **mean accuracy** ``c / n`` — the paper's number (accuracy averaged over the n samples);
* **pass@k** — the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` (Chen et al., 2021);
* **maj@k** — whether the most frequent answer among k samples is right. For ``k = n`` it is exact
  (ties go to the answer seen first); for ``k < n`` it is the average over ``MAJ_SUBSETS`` seeded
  random k-subsets of the samples. Samples without an answer do not vote; no votes at all is wrong.

A benchmark's value is the mean over its problems; the macro average is the unweighted mean over
benchmarks. Every value comes with a 95% percentile-bootstrap confidence interval over problems
(``BOOTSTRAP_RESAMPLES`` seeded resamples; for the macro average, problems are resampled within
each benchmark, so the interval reflects each benchmark's own size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
MAJ_SUBSETS = 64
CONFIDENCE = 0.95


@dataclass(frozen=True)
class ProblemSamples:
    """The verdicts on one problem's samples, in sample order."""

    correct: tuple[bool, ...]
    votes: tuple[int | None, ...]
    """Per sample: the id of its answer's equivalence class (equal ids = the same answer), None when
    it has no answer. Right answers share one class."""

    def __post_init__(self) -> None:
        if len(self.correct) != len(self.votes):
            raise ValueError("correct and votes must have one entry per sample")
        if not self.correct:
            raise ValueError("a problem needs at least one sample")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for ``c`` right out of ``n`` samples (``k <= n``)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(correct: Sequence[bool], votes: Sequence[int | None]) -> bool:
    """Whether the most frequent answer (earliest on a tie) among these samples is right."""
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    for i, vote in enumerate(votes):
        if vote is None:
            continue
        counts[vote] = counts.get(vote, 0) + 1
        first.setdefault(vote, i)
    if not counts:
        return False
    best = max(counts, key=lambda v: (counts[v], -first[v]))
    return bool(correct[first[best]])


def maj_at_k(problem: ProblemSamples, k: int, rng: np.random.Generator) -> float:
    """maj@k of one problem (exact for k = n, else the mean over MAJ_SUBSETS random k-subsets)."""
    n = len(problem.correct)
    if not 0 < k <= n:
        raise ValueError(f"maj@k needs 0 < k <= n (n={n}, k={k})")
    if k == n:
        return float(majority_correct(problem.correct, problem.votes))
    hits = 0
    for _ in range(MAJ_SUBSETS):
        subset = np.sort(rng.choice(n, size=k, replace=False))
        hits += majority_correct([problem.correct[i] for i in subset], [problem.votes[i] for i in subset])
    return hits / MAJ_SUBSETS


def default_ks(n: int) -> list[int]:
    """Powers of two up to ``n``, and ``n`` itself."""
    ks = [k for k in (1 << i for i in range(n.bit_length())) if k <= n]
    return sorted(set(ks) | {n})


@dataclass(frozen=True)
class Estimate:
    """A value and its 95% confidence interval."""

    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "ci95": [self.low, self.high]}


@dataclass(frozen=True)
class BenchmarkMetrics:
    """One benchmark's metrics; ``per_problem`` holds the per-problem values they average."""

    problems: int
    samples: int
    mean_accuracy: Estimate
    pass_at: dict[int, Estimate]
    maj_at: dict[int, Estimate]
    per_problem: dict[str, np.ndarray] = field(repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        return {
            "problems": self.problems,
            "samples": self.samples,
            "mean_accuracy": self.mean_accuracy.to_json(),
            "pass_at_k": {str(k): e.to_json() for k, e in self.pass_at.items()},
            "maj_at_k": {str(k): e.to_json() for k, e in self.maj_at.items()},
        }


def _interval(values: np.ndarray, rng: np.random.Generator) -> Estimate:
    if len(values) == 1:
        return Estimate(float(values[0]), float(values[0]), float(values[0]))
    draws = rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))
    means = values[draws].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(float(values.mean()), float(low), float(high))


def benchmark_metrics(
    problems: Sequence[ProblemSamples], ks: Sequence[int] | None = None, seed: int = 0
) -> BenchmarkMetrics:
    """Metrics of one benchmark; every problem must have the same number of samples."""
    if not problems:
        raise ValueError("no problems to score")
    n = len(problems[0].correct)
    if any(len(p.correct) != n for p in problems):
        raise ValueError("every problem must have the same number of samples")
    ks = sorted(set(ks)) if ks is not None else default_ks(n)
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {"mean_accuracy": np.array([sum(p.correct) / n for p in problems])}
    for k in ks:
        values[f"pass@{k}"] = np.array([pass_at_k(n, sum(p.correct), k) for p in problems])
        values[f"maj@{k}"] = np.array([maj_at_k(p, k, rng) for p in problems])
    return BenchmarkMetrics(
        problems=len(problems),
        samples=n,
        mean_accuracy=_interval(values["mean_accuracy"], rng),
        pass_at={k: _interval(values[f"pass@{k}"], rng) for k in ks},
        maj_at={k: _interval(values[f"maj@{k}"], rng) for k in ks},
        per_problem=values,
    )


def macro_average(results: Mapping[str, BenchmarkMetrics], metric: str, seed: int = 0) -> Estimate:
    """Unweighted mean of ``metric`` ("mean_accuracy", "pass@k", "maj@k") over benchmarks, with a
    stratified bootstrap interval (problems resampled within each benchmark)."""
    if not results:
        raise ValueError("no benchmarks to average")
    rng = np.random.default_rng(seed)
    columns = [r.per_problem[metric] for r in results.values()]
    value = float(np.mean([c.mean() for c in columns]))
    means = np.zeros(BOOTSTRAP_RESAMPLES)
    for column in columns:
        draws = rng.integers(0, len(column), size=(BOOTSTRAP_RESAMPLES, len(column)))
        means += column[draws].mean(axis=1)
    means /= len(columns)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(value, float(low), float(high))
