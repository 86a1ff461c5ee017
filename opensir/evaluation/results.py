"""Stored evaluation results of a run's checkpoints: where they are and what a status shows of them.

Light on purpose (no torch, no transformers): the operator reads these for ``SelfPlayRun.status``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from opensir.storage import ArtifactNotFoundError, ArtifactStore

log = logging.getLogger(__name__)

EVALS = "evals"
RESULTS = "results.json"


def evals_prefix(step: int) -> str:
    """Where a checkpoint's evaluation results go in the run's store (DESIGN.md §4)."""
    return f"{EVALS}/step-{step:06d}"


def evaluated_steps(store: ArtifactStore) -> list[int]:
    """Checkpoint steps with a stored ``results.json``, oldest first."""
    steps = []
    for key in store.list(EVALS):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == RESULTS and parts[1].startswith("step-"):
            digits = parts[1].removeprefix("step-")
            if digits.isdigit():
                steps.append(int(digits))
    return sorted(steps)


def read_results(store: ArtifactStore, step: int) -> dict[str, Any] | None:
    """The stored ``results.json`` of ``step``; None when absent or unreadable (logged)."""
    key = f"{evals_prefix(step)}/{RESULTS}"
    try:
        data = json.loads(store.get_bytes(key))
    except ArtifactNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as error:
        log.warning("ignoring %s/%s: %s", store.uri, key, error)
        return None
    return data if isinstance(data, dict) else None


def status_summary(step: int, results: dict[str, Any], steps: list[int]) -> dict[str, Any]:
    """What ``SelfPlayRun.status.evaluation`` shows of one evaluation (camelCase, as the CRD has it):
    mean accuracy over the samples per benchmark and their macro average."""
    return {
        "step": step,
        "macroAverage": float(results["macro_average"]["mean_accuracy"]["value"]),
        "benchmarks": {name: float(b["mean_accuracy"]["value"]) for name, b in results["benchmarks"].items()},
        "samples": int(results["samples"]),
        "evaluatedSteps": steps,
    }


def latest_summary(store: ArtifactStore) -> dict[str, Any] | None:
    """The status summary of the newest stored evaluation, or None when there is none."""
    steps = evaluated_steps(store)
    for step in reversed(steps):
        results = read_results(store, step)
        if results is not None:
            try:
                return status_summary(step, results, steps)
            except (KeyError, TypeError, ValueError) as error:
                log.warning("ignoring %s/%s/%s: %s", store.uri, evals_prefix(step), RESULTS, error)
    return None
