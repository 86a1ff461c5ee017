"""The run loop (DESIGN.md §3): self-play step by step, the optional bootstrap phase, the run's state in
its store, and its Prometheus metrics. ``opensir run`` and the trainer pod call :func:`run_selfplay`."""

from opensir.loop.control import PREEMPTED_EXIT_CODE
from opensir.loop.run import Preempted, RunResult, play_step, run_bootstrap, run_selfplay, step_line
from opensir.loop.state import RunError, RunState

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "Preempted",
    "RunError",
    "RunResult",
    "RunState",
    "play_step",
    "run_bootstrap",
    "run_selfplay",
    "step_line",
]
