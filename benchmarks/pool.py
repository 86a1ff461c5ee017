"""Problem-pool benchmark: one append of 32 problems, and the diversity of 32 candidates.

Compares opensir's pool (float32, preallocated matrix that doubles; top-k of the pool block first)
with the reference's way, measured in the same run: float64 embeddings grown with a full
``np.vstack`` copy on every append, and diversity computed over the full similarity row.

    .venv/bin/python benchmarks/pool.py [--sizes 1000 10000 100000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from opensir.selfplay import ProblemPool, diversity_reward
from opensir.selfplay.pool import NewProblem

DIM, BATCH, K = 384, 32, 5


def _unit(rng: np.random.Generator, n: int, dtype: type = np.float32) -> np.ndarray:
    rows = rng.normal(size=(n, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(dtype)


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.min(times))


def reference_diversity(candidates: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """The reference's computation (float64, full row partition), without its -inf bug in tiny pools."""
    within = candidates @ candidates.T
    np.fill_diagonal(within, -np.inf)
    sims = np.concatenate([within, candidates @ pool.T], axis=1)
    k = min(K, sims.shape[1])
    top = np.partition(sims, -k, axis=1)[:, -k:]
    return (1.0 - top.mean(axis=1)) / 2


def bench(size: int, repeats: int) -> tuple[float, float, float, float]:
    rng = np.random.default_rng(0)
    initial = _unit(rng, size)
    batches = [_unit(rng, BATCH) for _ in range(repeats)]
    problems = [NewProblem(f"problem {i}") for i in range(BATCH)]

    pool = ProblemPool(DIM, initial_capacity=size + 1)
    pool.add([NewProblem(f"seed {i}") for i in range(size)], initial)
    it = iter(batches)
    ours_append = _best_ms(lambda: pool.add(problems, next(it)), repeats)

    reference = initial.astype(np.float64)
    it64 = iter([b.astype(np.float64) for b in batches])

    def vstack_append() -> None:
        nonlocal reference
        reference = np.vstack([reference, next(it64)])

    ref_append = _best_ms(vstack_append, repeats)

    candidates = _unit(rng, BATCH)
    diversity_reward(candidates, pool.embeddings, k=K)  # warm-up (BLAS threads, caches)
    ours_div = _best_ms(lambda: diversity_reward(candidates, pool.embeddings, k=K), repeats)
    c64 = candidates.astype(np.float64)
    ref_div = _best_ms(lambda: reference_diversity(c64, reference), repeats)
    assert np.allclose(
        diversity_reward(candidates, pool.embeddings, k=K), reference_diversity(c64, reference), atol=1e-5
    )
    return ours_append, ref_append, ours_div, ref_div


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"# {machine}, {os.cpu_count()} CPU cores, no GPU, numpy {np.__version__}")
    print(f"# {DIM}-d embeddings, {BATCH} per append, {BATCH} candidates, top-{K}, best of {args.repeats}")
    header = (
        "| pool size | append 32: opensir (ms) | append 32: vstack float64 (ms) "
        "| diversity 32: opensir (ms) | diversity 32: reference float64 (ms) |"
    )
    print(header)
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        a, b, c, d = bench(size, args.repeats)
        print(f"| {size:,} | {a:.3f} | {b:.3f} | {c:.2f} | {d:.2f} |")


if __name__ == "__main__":
    main()
