"""Build the chart's Grafana dashboard (charts/opensir/files/dashboards/opensir-overview.json) from code.

Panels are declared as data here so every query uses the same label filter and every panel gets a unique
id and a grid position without hand-editing JSON. Run it after changing a panel:

    .venv/bin/python scripts/build_dashboard.py

tests/unit/test_metrics.py checks the committed JSON equals this script's output, and
tests/integration/test_prometheus.py runs every query against a real Prometheus scraping a real run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opensir.selfplay import STUDENT_TERMS, TEACHER_TERMS, RewardTerm

OUT = (
    Path(__file__).resolve().parents[1]
    / "charts"
    / "opensir"
    / "files"
    / "dashboards"
    / "opensir-overview.json"
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace", run=~"$run"'
"""The label filter of every query: the dashboard's namespace and run variables."""
GPU_METRICS = ("opensir_gpu_",)
"""Series that exist only where the runner sees a CUDA device."""


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = "{{run}}"
    format: str = "time_series"


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 8
    height: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


def t(expr: str, legend: str = "{{run}}", format: str = "time_series") -> Target:
    """A query; ``SEL`` stands for the label filter and ``RI`` for Grafana's ``$__rate_interval``."""
    return Target(expr.replace("SEL", SEL).replace("[RI]", "[$__rate_interval]"), legend, format)


REWARD_PANELS = Panel("(reward terms)", "", ())
"""Stands in :data:`ROWS` for the panels :func:`reward_panels` derives from the reward terms."""

ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Progress and health",
        [
            Panel(
                "Step",
                "Self-play steps completed / maxSteps.",
                (t("max by (namespace, run) (opensir_runner_step_steps{SEL})"),),
                kind="stat",
                width=4,
                height=5,
            ),
            Panel(
                "Progress",
                "Share of maxSteps completed.",
                (
                    t(
                        "100 * max by (namespace, run) (opensir_runner_step_steps{SEL})"
                        " / max by (namespace, run) (opensir_runner_max_steps_steps{SEL})"
                    ),
                ),
                kind="gauge",
                unit="percent",
                width=4,
                height=5,
                extra={
                    "fieldConfig": {"defaults": {"unit": "percent", "min": 0, "max": 100}, "overrides": []}
                },
            ),
            Panel(
                "Since last step",
                "Seconds since the last step finished (alert OpenSIRRunStalled).",
                (t("time() - max by (namespace, run) (opensir_runner_last_step_timestamp_seconds{SEL})"),),
                kind="stat",
                unit="s",
                width=4,
                height=5,
            ),
            Panel(
                "Checkpoint age",
                "Seconds since the last committed checkpoint (alert OpenSIRCheckpointTooOld).",
                (t("max by (namespace, run) (opensir_checkpoint_age_seconds{SEL})"),),
                kind="stat",
                unit="s",
                width=4,
                height=5,
            ),
            Panel(
                "Served weights",
                "Weights version the generator serves, and failed pushes in the window "
                "(OpenSIRWeightSyncFailing).",
                (
                    t("max by (namespace, run) (opensir_weightsync_served_version{SEL})", "{{run}} version"),
                    t(
                        "sum by (namespace, run) (increase(opensir_weightsync_failures_total{SEL}[RI]))",
                        "{{run}} failures",
                    ),
                ),
                kind="stat",
                width=4,
                height=5,
            ),
            Panel(
                "Steps without legal problems",
                "Consecutive steps in which the teacher wrote no legal problem (OpenSIRNoLegalProblems).",
                (t("max by (namespace, run) (opensir_selfplay_steps_without_legal_problems_steps{SEL})"),),
                kind="stat",
                width=4,
                height=5,
            ),
        ],
    ),
    (
        "Curriculum",
        [
            Panel(
                "Solve-rate distribution",
                "Generated problems per solve-rate bucket over time: the curriculum the teacher writes.",
                (
                    t(
                        "sum by (le) (increase(opensir_selfplay_solve_rate_ratio_bucket{SEL}[RI]))",
                        "{{le}}",
                        "heatmap",
                    ),
                ),
                kind="heatmap",
                width=12,
                extra={
                    "options": {
                        "calculate": False,
                        "yAxis": {"unit": "percentunit"},
                        "cellGap": 1,
                        "color": {"mode": "scheme", "scheme": "Oranges"},
                    }
                },
            ),
            Panel(
                "Legal, in-band and solve rate",
                "Share of teacher completions that were legal problems, share of those inside the band, "
                "and the mean solve rate since the runner started.",
                (
                    t("opensir_selfplay_legal_problems_ratio{SEL}", "{{run}} legal"),
                    t("opensir_selfplay_in_band_problems_ratio{SEL}", "{{run}} in band"),
                    t(
                        "opensir_selfplay_solve_rate_ratio_sum{SEL}"
                        " / opensir_selfplay_solve_rate_ratio_count{SEL}",
                        "{{run}} mean solve rate",
                    ),
                ),
                unit="percentunit",
                width=12,
            ),
            Panel(
                "Difficulty and diversity",
                "Mean difficulty (solvability triangle) and diversity (distance to the pool) of the last "
                "step's legal problems.",
                (
                    t("opensir_selfplay_difficulty_ratio{SEL}", "{{run}} difficulty"),
                    t("opensir_selfplay_diversity_ratio{SEL}", "{{run}} diversity"),
                ),
                unit="percentunit",
                width=12,
            ),
            Panel(
                "Problems by outcome",
                "Teacher completions in the window: generated, legal, answered (majority answer), in band.",
                (
                    t(
                        "sum by (run, outcome) (increase(opensir_selfplay_problems_total{SEL}[RI]))",
                        "{{run}} {{outcome}}",
                    ),
                ),
                width=12,
            ),
        ],
    ),
    (
        "Rewards",
        [
            REWARD_PANELS,
        ],
    ),
    (
        "Pool",
        [
            Panel(
                "Pool size",
                "Problems in the pool.",
                (t("opensir_pool_size_problems{SEL}"),),
                width=12,
            ),
            Panel(
                "Pool novelty",
                "Mean novelty (diversity when added) of the problems the runner added since it started.",
                (t("opensir_pool_novelty_mean_ratio{SEL}"),),
                unit="percentunit",
                width=12,
            ),
        ],
    ),
    (
        "Throughput and time",
        [
            Panel(
                "Tokens per second",
                "Generated tokens per second, per role.",
                (
                    t(
                        "sum by (run, role) (rate(opensir_generation_tokens_total{SEL}[RI]))",
                        "{{run}} {{role}}",
                    ),
                ),
                width=8,
            ),
            Panel(
                "Completion length (p50, p90)",
                "Tokens per completion, per role.",
                (
                    t(
                        "histogram_quantile(0.5, sum by (run, role, le) "
                        "(rate(opensir_generation_completion_length_tokens_bucket{SEL}[RI])))",
                        "{{run}} {{role}} p50",
                    ),
                    t(
                        "histogram_quantile(0.9, sum by (run, role, le) "
                        "(rate(opensir_generation_completion_length_tokens_bucket{SEL}[RI])))",
                        "{{run}} {{role}} p90",
                    ),
                ),
                width=8,
            ),
            Panel(
                "Step duration",
                "Mean wall time of a self-play step in the window.",
                (
                    t(
                        "sum by (run) (increase(opensir_runner_step_duration_seconds_sum{SEL}[RI]))"
                        " / sum by (run) (increase(opensir_runner_step_duration_seconds_count{SEL}"
                        "[RI]))"
                    ),
                ),
                unit="s",
                width=8,
            ),
            Panel(
                "Time per phase",
                "Seconds spent in each phase of the steps in the window (teacher and student generation, "
                "embedding, rewards, training, weight sync, checkpoint), stacked.",
                (
                    t(
                        "sum by (phase) (increase(opensir_runner_phase_duration_seconds_sum{SEL}[RI]))",
                        "{{phase}}",
                    ),
                ),
                unit="s",
                width=24,
                extra={
                    "fieldConfig": {
                        "defaults": {
                            "unit": "s",
                            "custom": {"stacking": {"mode": "normal"}, "fillOpacity": 60},
                        },
                        "overrides": [],
                    }
                },
            ),
        ],
    ),
    (
        "Training",
        [
            Panel(
                "Loss",
                "GRPO loss of the last optimizer step (alert OpenSIRNonFiniteLoss).",
                (t("opensir_trainer_loss{SEL}"),),
            ),
            Panel("KL to the reference", "Mean k3 KL estimate.", (t("opensir_trainer_kl{SEL}"),)),
            Panel("Gradient norm", "Before clipping.", (t("opensir_trainer_grad_norm{SEL}"),)),
            Panel(
                "Optimizer step and served weights",
                "A served version lagging the optimizer step means weight sync is behind.",
                (
                    t("opensir_trainer_optimizer_step_steps{SEL}", "{{run}} optimizer step"),
                    t("opensir_weightsync_served_version{SEL}", "{{run}} served version"),
                ),
                width=12,
            ),
            Panel(
                "GPU memory",
                "Memory held by tensors and reserved by torch's allocator, per device (GPU runs only).",
                (
                    t("opensir_gpu_memory_allocated_bytes{SEL}", "{{run}} gpu{{device}} allocated"),
                    t("opensir_gpu_memory_reserved_bytes{SEL}", "{{run}} gpu{{device}} reserved"),
                    t("opensir_gpu_utilization_ratio{SEL}", "{{run}} gpu{{device}} utilisation"),
                ),
                unit="bytes",
                width=12,
            ),
        ],
    ),
]


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend,
                **({"format": target.format} if target.format != "time_series" else {}),
            }
            for i, target in enumerate(panel.targets)
        ],
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
    }
    if panel.kind in ("stat", "gauge"):
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    body.update(panel.extra)
    return body


def reward_panels(
    teacher_terms: Sequence[RewardTerm[Any]], student_terms: Sequence[RewardTerm[Any]]
) -> list[Panel]:
    """One panel per role, naming every term of its reward (the metrics' ``component`` labels)."""
    panels = []
    for role, terms in (("teacher", teacher_terms), ("student", student_terms)):
        listed = ", ".join(f"{term.name} ({term.description})" for term in terms)
        panels.append(
            Panel(
                f"{role.capitalize()} reward terms",
                f"Mean {role} reward per term: {listed}; and the weighted total.",
                (t(f'opensir_selfplay_reward_ratio{{SEL, role="{role}"}}', "{{run}} {{component}}"),),
                width=12,
            )
        )
    return panels


def dashboard(
    teacher_terms: Sequence[RewardTerm[Any]] = TEACHER_TERMS,
    student_terms: Sequence[RewardTerm[Any]] = STUDENT_TERMS,
) -> dict[str, Any]:
    """The dashboard model (Grafana schemaVersion 39); the reward panels follow the given terms."""
    panels: list[dict[str, Any]] = []
    y = 0
    for title, declared in ROWS:
        row_panels: list[Panel] = []
        for panel in declared:
            row_panels += reward_panels(teacher_terms, student_terms) if panel is REWARD_PANELS else [panel]
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x = row_height = 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel(panel, len(panels) + 1, x, y))
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": "opensir-overview",
        "title": "OpenSIR / Self-play runs",
        "description": "Curriculum, rewards, pool, throughput and health of OpenSIR SelfPlayRuns, from the "
        "opensir_* metrics of the runs' trainer pods. Generated by scripts/build_dashboard.py.",
        "tags": ["opensir"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 2,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "links": [],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                },
                _variable("namespace", "Namespace", "label_values(opensir_runner_step_steps, namespace)"),
                _variable(
                    "run", "Run", 'label_values(opensir_runner_step_steps{namespace=~"$namespace"}, run)'
                ),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
