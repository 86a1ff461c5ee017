"""``opensir plot``: PNG plots of a run's curriculum over steps, for a report (matplotlib, Agg).

Reads the same store records as ``opensir status`` (``history.jsonl``, and the pool of the newest
checkpoint when there is one, for the per-problem solve rates), so it needs no Prometheus.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from opensir.cli.status import PoolEntry
from opensir.layout import StepRecord


def plot_curriculum(
    history: Sequence[StepRecord],
    pool: Sequence[PoolEntry] | None,
    out: Path,
    *,
    title: str,
) -> Path:
    """Four panels: curriculum ratios, rewards, pool growth (with each problem's solve rate when the
    pool is known) and where the time of each step went; written to ``out`` as a PNG."""
    if not history:
        raise ValueError("the run has no recorded steps to plot")
    steps = [r.step for r in history]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    figure.suptitle(title)

    curriculum = axes[0][0]
    for key, label in (
        ("solve_rate", "mean solve rate"),
        ("legal_ratio", "legal problems"),
        ("in_band_ratio", "in band"),
    ):
        curriculum.plot(steps, [getattr(r, key) for r in history], marker="o", label=label)
    curriculum.set(title="Curriculum", xlabel="step", ylabel="ratio", ylim=(-0.05, 1.05))
    curriculum.legend(loc="best")

    rewards = axes[0][1]
    rewards.plot(steps, [r.teacher_reward for r in history], marker="o", label="teacher")
    rewards.plot(steps, [r.student_reward for r in history], marker="o", label="student")
    rewards.set(title="Mean reward", xlabel="step", ylabel="reward")
    rewards.legend(loc="best")

    growth = axes[1][0]
    growth.plot(steps, [r.pool_size for r in history], marker="o", color="tab:gray", label="pool size")
    growth.set(title="Pool", xlabel="step", ylabel="problems")
    if pool:
        scored = [e for e in pool if e.problem.solve_rate is not None]
        solve_axis = growth.twinx()
        solve_axis.scatter(
            [e.problem.step_added for e in scored],
            [e.problem.solve_rate for e in scored],
            c=[e.novelty for e in scored],
            cmap="viridis",
            s=18,
            label="problem solve rate (colour: novelty)",
        )
        solve_axis.set(ylabel="solve rate of each added problem", ylim=(-0.05, 1.05))
        solve_axis.legend(loc="lower right")
    growth.legend(loc="upper left")

    phases_axis = axes[1][1]
    phases = sorted({p for r in history for p in r.phase_seconds})
    bottom = [0.0] * len(history)
    for phase in phases:
        values = [r.phase_seconds.get(phase, 0.0) for r in history]
        phases_axis.bar(steps, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    phases_axis.set(title="Time per step", xlabel="step", ylabel="seconds")
    if phases:
        phases_axis.legend(loc="upper left", fontsize="small", ncols=2)

    for axis in (curriculum, rewards, growth, phases_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
