"""The runner's and the operator's Prometheus metrics, without a Prometheus: values after each hook,
the /metrics endpoint, the GPU collector's absence on CPU, and the dashboard JSON matching its generator."""

from __future__ import annotations

import math
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from opensir.checkpoint import Checkpoint
from opensir.layout import StepRecord
from opensir.loop.metrics import RunMetrics, gpu_available
from opensir.seams import Completion, TrainStats
from opensir.selfplay import (
    Candidate,
    Group,
    PlayedCandidate,
    Reward,
    Round,
    RoundStats,
    StudentSample,
    TeacherOutput,
    Vote,
)

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"namespace": "ns", "run": "r"}


def value(metrics: RunMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels})


def completion(tokens: int) -> Completion:
    return Completion("x" * tokens, tuple(range(tokens)), None, "stop")


def round_result(*, legal: bool = True, student_tokens: tuple[int, ...] = (10, 20, 40)) -> Round:
    """Two teacher completions in one group; the first is legal (solve rate 2/3), the second is not."""
    illegal = TeacherOutput(None, (), False, False, None, "no <problem>")
    zero = Reward({"solvability": 0.0, "diversity": 0.0, "format": 0.0, "length": 0.0}, 0.0)
    second = Candidate(0, 1, PlayedCandidate(completion(50), illegal), zero)
    if not legal:
        first = Candidate(0, 0, PlayedCandidate(completion(30), illegal), zero)
    else:
        parsed = TeacherOutput("What is 2+2?", ("basic arithmetic",), True, True, None)
        samples = tuple(
            StudentSample(completion(n), answer, Reward({"accuracy": a, "format": f}, total))
            for n, answer, (a, f, total) in zip(
                student_tokens,
                ("4", "4", "5"),
                ((1.0, 1.0, 1.0), (1.0, 0.0, 0.9), (0.0, 1.0, 0.1)),
                strict=True,
            )
        )
        first = Candidate(
            0,
            0,
            PlayedCandidate(completion(30), parsed, (1, 2), tuple(s.completion for s in samples)),
            Reward({"solvability": 0.8, "diversity": 0.6, "format": 1.0, "length": 0.4}, 0.7),
            Vote("4", 2, 3, 3, 2 / 3, (True, True, False)),
            samples,
            difficulty=0.8,
            diversity=0.6,
        )
    n = 1 if legal else 0
    return Round(
        groups=(Group(0, "What is 1+1?", (1,), (first, second)),),
        trained_groups=(0,) if legal else (),
        trained_problems=(first,) if legal else (),
        stats=RoundStats(
            completions=2,
            legal=n,
            answered=n,
            in_band=n,
            legal_ratio=n / 2,
            mean_solve_rate=2 / 3 if legal else 0.0,
            in_band_ratio=1.0 if legal else 0.0,
            mean_teacher_reward=0.35 if legal else 0.0,
            mean_student_reward=2 / 3 if legal else 0.0,
        ),
        skip_reason="" if legal else "no legal teacher problem",
    )


def record(step: int = 1) -> StepRecord:
    return StepRecord(
        step=step,
        trained=True,
        teacher_reward=0.35,
        student_reward=2 / 3,
        solve_rate=2 / 3,
        legal_ratio=0.5,
        in_band_ratio=1.0,
        pool_size=7,
        loss=0.1,
        kl=0.01,
        grad_norm=2.0,
        tokens_generated=100,
        seconds=12.0,
        phase_seconds={"teacher_generation": 5.0, "student_generation": 4.0, "training": 3.0},
    )


def test_a_step_sets_every_curriculum_reward_and_phase_series() -> None:
    metrics = RunMetrics("ns", "r")
    metrics.started(step=0, max_steps=10, checkpoint=None)
    assert value(metrics, "opensir_runner_max_steps_steps") == 10
    assert value(metrics, "opensir_runner_steps_total") == 0  # present before the first step
    metrics.round_scored(round_result())
    metrics.step_finished(record())

    assert value(metrics, "opensir_selfplay_reward_ratio", role="teacher", component="solvability") == 0.4
    assert value(metrics, "opensir_selfplay_reward_ratio", role="teacher", component="total") == 0.35
    assert value(
        metrics, "opensir_selfplay_reward_ratio", role="student", component="accuracy"
    ) == pytest.approx(2 / 3)
    assert value(metrics, "opensir_selfplay_solve_rate_ratio_count") == 1
    assert value(metrics, "opensir_selfplay_solve_rate_ratio_bucket", le="0.6") == 0
    assert value(metrics, "opensir_selfplay_solve_rate_ratio_bucket", le="0.7") == 1
    assert value(metrics, "opensir_selfplay_problems_total", outcome="generated") == 2
    assert value(metrics, "opensir_selfplay_problems_total", outcome="legal") == 1
    assert value(metrics, "opensir_selfplay_difficulty_ratio") == 0.8
    assert value(metrics, "opensir_pool_novelty_mean_ratio") == 0.6
    assert value(metrics, "opensir_generation_tokens_total", role="student") == 70
    assert value(metrics, "opensir_generation_completion_length_tokens_count", role="teacher") == 2
    assert value(metrics, "opensir_selfplay_legal_problems_ratio") == 0.5
    assert value(metrics, "opensir_pool_size_problems") == 7
    assert value(metrics, "opensir_runner_step_steps") == 1
    assert value(metrics, "opensir_runner_phase_duration_seconds_sum", phase="teacher_generation") == 5.0
    assert value(metrics, "opensir_runner_step_duration_seconds_count") == 1


def test_steps_without_legal_problems_count_up_and_reset() -> None:
    metrics = RunMetrics("ns", "r")
    metrics.started(step=0, max_steps=10, checkpoint=None)
    for expected in (1, 2, 3):
        metrics.round_scored(round_result(legal=False))
        assert value(metrics, "opensir_selfplay_steps_without_legal_problems_steps") == expected
    metrics.round_scored(round_result(student_tokens=(1, 2, 3)))
    assert value(metrics, "opensir_selfplay_steps_without_legal_problems_steps") == 0


def test_training_weight_sync_and_checkpoint_hooks() -> None:
    metrics = RunMetrics("ns", "r")
    metrics.started(step=0, max_steps=10, checkpoint=None)
    assert value(metrics, "opensir_checkpoint_age_seconds") is None  # no checkpoint, no age
    metrics.trained(
        TrainStats(step=3, loss=float("nan"), kl=0.5, grad_norm=1.5, learning_rate=1e-6, tokens=9, seconds=1)
    )
    assert math.isnan(value(metrics, "opensir_trainer_loss") or 0.0)  # recorded before the runner stops
    assert value(metrics, "opensir_trainer_optimizer_step_steps") == 3
    with metrics.weight_sync():
        pass
    metrics.weights_served(4)
    with pytest.raises(RuntimeError), metrics.weight_sync():
        raise RuntimeError("rollout server gone")
    assert value(metrics, "opensir_weightsync_attempts_total") == 2
    assert value(metrics, "opensir_weightsync_failures_total") == 1
    assert value(metrics, "opensir_weightsync_served_version") == 4
    checkpoint = Checkpoint(step=2, prefix="checkpoints/step-000002", files=(), created=1000.0, extra={})
    metrics.checkpoint_committed(checkpoint, seconds=2.5)
    assert value(metrics, "opensir_checkpoint_last_step_steps") == 2
    assert (value(metrics, "opensir_checkpoint_age_seconds") or 0) > 1e9  # computed at read time
    assert value(metrics, "opensir_runner_phase_duration_seconds_count", phase="checkpoint") == 1


def test_served_metrics_parse_and_carry_run_labels() -> None:
    metrics = RunMetrics("ns", "r")
    metrics.started(step=0, max_steps=2, checkpoint=None)
    metrics.step_finished(record())
    with metrics.serve(0, "127.0.0.1") as server:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "opensir_runner_step_duration_seconds" in families
    for family in families.values():
        assert family.name.startswith("opensir_"), family.name
        for sample in family.samples:
            assert sample.labels["namespace"] == "ns" and sample.labels["run"] == "r", sample


def test_two_runs_in_one_process_do_not_share_series() -> None:
    first, second = RunMetrics("ns", "r"), RunMetrics("ns", "r")
    first.started(step=5, max_steps=10, checkpoint=None)
    second.started(step=0, max_steps=10, checkpoint=None)
    assert value(first, "opensir_runner_step_steps") == 5 and value(second, "opensir_runner_step_steps") == 0


@pytest.mark.skipif(gpu_available(), reason="checks the CPU-only behaviour")
def test_no_gpu_series_without_a_gpu() -> None:
    names = {m.name for m in RunMetrics("ns", "r").registry.collect()}
    assert not any(name.startswith("opensir_gpu_") for name in names)


def test_operator_metrics_count_reconciliations_and_runs_by_phase() -> None:
    from opensir_operator.metrics import OperatorMetrics

    from opensir.spec import SelfPlayRunStatus

    metrics = OperatorMetrics()
    with metrics.reconciling("a", "one", SelfPlayRunStatus(phase="Training")):
        pass
    with pytest.raises(ValueError), metrics.reconciling("a", "two", SelfPlayRunStatus()):
        raise ValueError("bad spec")
    get = metrics.registry.get_sample_value
    assert get("opensir_operator_reconciliations_total", {"namespace": "a", "result": "ok"}) == 1
    assert get("opensir_operator_reconciliations_total", {"namespace": "a", "result": "error"}) == 1
    assert get("opensir_operator_reconcile_duration_seconds_count") == 2
    assert get("opensir_operator_runs", {"phase": "Training"}) == 1
    assert get("opensir_operator_runs", {"phase": "Pending"}) == 1
    metrics.forget("a", "one")
    assert get("opensir_operator_runs", {"phase": "Training"}) == 0


def test_committed_dashboard_is_the_generator_output() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_dashboard

    committed = (ROOT / "charts" / "opensir" / "files" / "dashboards" / "opensir-overview.json").read_text()
    assert committed == build_dashboard.render(), "run .venv/bin/python scripts/build_dashboard.py"


def test_dashboard_reads_only_documented_metrics() -> None:
    import re

    sys.path.insert(0, str(ROOT / "scripts"))
    import build_dashboard

    readme = (ROOT / "charts" / "opensir" / "README.md").read_text()
    documented = set(re.findall(r"^\| `(opensir_[a-z_]+)`", readme, flags=re.MULTILINE))
    used = set()
    for panel in build_dashboard.dashboard()["panels"]:
        for target in panel.get("targets", []):
            used |= set(re.findall(r"\b(opensir_[a-z_]+)\b", target["expr"]))
    base = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert base <= documented, base - documented


def test_a_new_reward_term_reaches_the_rewards_the_metrics_and_the_dashboard() -> None:
    """Registering a teacher term is one function and one entry: it is computed into every reward,
    recorded under its name as a metric component, and named by the dashboard's reward panel."""
    import numpy as np
    from scripted import played_groups

    from opensir.selfplay import TEACHER_TERMS, RewardTerm, score_round
    from opensir.spec import SelfPlaySpec

    def novelty(facts) -> float:
        return facts.diversity

    terms = (*TEACHER_TERMS, RewardTerm("novelty", novelty, lambda weights: 2.0, "the diversity, again"))
    config = SelfPlaySpec.model_validate({"teacher": {"groupSize": 2}, "student": {"samples": 2}})
    problem = "<think>t</think><problem>What is seven times six?</problem><concepts>multiplication</concepts>"
    line = "Therefore, the final answer is: $\\boxed{42}$"
    groups = played_groups([[problem, "junk"]], {(0, 0): [line, line]}, config=config)
    round_ = score_round(
        groups, np.eye(4, dtype=np.float32)[:1], np.zeros((0, 4), np.float32), config, teacher_terms=terms
    )
    legal = round_.legal[0]
    plain = score_round(groups, np.eye(4, dtype=np.float32)[:1], np.zeros((0, 4), np.float32), config)
    assert legal.reward["novelty"] == 0.5  # alone in an empty pool
    assert legal.reward.total == pytest.approx(plain.legal[0].reward.total + 2.0 * 0.5)

    metrics = RunMetrics("ns", "r")
    metrics.round_scored(round_)
    assert value(metrics, "opensir_selfplay_reward_ratio", role="teacher", component="novelty") == 0.25

    sys.path.insert(0, str(ROOT / "scripts"))
    import build_dashboard

    panels = build_dashboard.dashboard(teacher_terms=terms)["panels"]
    [teacher] = [p for p in panels if p["title"] == "Teacher reward terms"]
    assert "novelty (the diversity, again)" in teacher["description"]
    assert "component" in teacher["targets"][0]["legendFormat"]
