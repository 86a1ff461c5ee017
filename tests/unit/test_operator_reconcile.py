"""The operator's decisions as pure functions: spec acceptance, the lifecycle plan, and the status."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from opensir_operator import names
from opensir_operator.config import OperatorConfig
from opensir_operator.observe import Child, ProgressReading, summarize
from opensir_operator.reconcile import Expectations, Plan, RunObject, accept, decide
from opensir_operator.status import status_patch

from opensir.layout import CheckpointRef, Progress, StepRecord
from opensir.spec import Condition, SelfPlayRunStatus

NOW = 1_800_000_000.0
CONFIG = OperatorConfig(default_image="img:1")
BASE_SPEC: dict[str, Any] = {
    "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
    "training": {"maxSteps": 4, "saveEvery": 2, "warmupSteps": 0},
    "storage": {"uri": "file:///runs"},
}


def obj(
    spec: dict[str, Any] | None = None,
    status: SelfPlayRunStatus | None = None,
    annotations: dict[str, str] | None = None,
    generation: int = 1,
) -> RunObject:
    return RunObject(
        name="r",
        namespace="ns",
        uid="u-1",
        generation=generation,
        annotations=annotations or {},
        spec=spec or copy.deepcopy(BASE_SPEC),
        status=status or SelfPlayRunStatus(),
    )


def with_spec(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def accepted(o: RunObject) -> RunObject:
    """The object as it is after the operator recorded its accepted spec."""
    annotation = accept(o).annotation
    assert annotation is not None
    return RunObject(
        o.name, o.namespace, o.uid, o.generation, {names.ACCEPTED_SPEC: annotation}, o.spec, o.status
    )


def plan_for(
    o: RunObject,
    children: dict[tuple[str, str], Child] | None = None,
    progress: Progress | None = None,
    error: str | None = None,
    now: float = NOW,
) -> Plan:
    reading = ProgressReading(progress=progress, store_uri="file:///runs/ns/r", error=error)
    return decide(o, accept(o), children or {}, reading, now, CONFIG)


def observed(plan: Plan, **job_status: Any) -> dict[tuple[str, str], Child]:
    """The children the plan creates, as the watch would show them (jobs with the given status)."""
    children = {}
    for manifest in plan.creates:
        body = copy.deepcopy(manifest)
        body["metadata"]["uid"] = f"uid-{manifest['metadata']['name']}"
        if manifest["kind"] == "Job":
            body["status"] = job_status
        children[manifest["kind"], manifest["metadata"]["name"]] = summarize(body)
    return children


def job(name: str, attempt: int = 0, **status: Any) -> Child:
    return summarize(
        {
            "kind": "Job",
            "metadata": {
                "name": name,
                "uid": f"uid-{name}-{attempt}",
                "annotations": {names.ATTEMPT: str(attempt)},
            },
            "status": status,
        }
    )


STARTED = {"startTime": "2027-01-15T08:00:00Z", "active": 1}
FAILED = {
    "conditions": [
        {
            "type": "Failed",
            "status": "True",
            "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        }
    ],
    "failed": 1,
}
COMPLETE = {
    "conditions": [{"type": "Complete", "status": "True", "reason": "CompletionsReached"}],
    "succeeded": 1,
}


def kinds(plan: Plan) -> set[tuple[str, str]]:
    return {(m["kind"], m["metadata"]["name"]) for m in plan.creates}


def condition(plan: Plan, kind: str) -> Condition:
    return next(c for c in plan.status.conditions if c.type == kind)


def written(plan: Plan, previous: RunObject | None = None) -> dict[str, Any]:
    """The status as the operator writes it: the merge patch of the status subresource."""
    return status_patch(plan.status, previous.status if previous is not None else SelfPlayRunStatus())


def progress(
    step: int, max_steps: int = 4, updated: float = NOW - 5, checkpoint: int | None = None
) -> Progress:
    last = StepRecord(
        step=step,
        trained=True,
        teacher_reward=1.2,
        student_reward=0.9,
        solve_rate=0.5,
        legal_ratio=0.75,
        in_band_ratio=0.25,
        pool_size=9,
        loss=None,
        kl=None,
        grad_norm=None,
        tokens_generated=100,
        seconds=1.0,
    )
    return Progress(
        step=step,
        max_steps=max_steps,
        updated=updated,
        eta_seconds=30.0,
        pool_size=9,
        last_step=last,
        last_checkpoint=None if checkpoint is None else CheckpointRef(checkpoint, "file:///c", NOW - 60),
    )


# ------------------------------------------------------------------------------------------ accept
def test_first_acceptance_records_the_spec():
    result = accept(obj())
    assert result.run is not None and result.refusal is None
    assert json.loads(result.annotation or "")["model"]["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert accept(accepted(obj())).annotation is None  # nothing changed: nothing to write


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": {"name": "other/model"}}, "spec.model"),
        ({"selfPlay": {"student": {"samples": 4}}}, "spec.selfPlay"),
        ({"seedProblems": ["What is 2+2?"]}, "spec.seedProblems"),
        ({"storage": {"uri": "file:///elsewhere"}}, "spec.storage.uri"),
    ],
)
def test_immutable_changes_are_refused_and_mutable_ones_applied(change: dict[str, Any], field: str):
    before = accepted(obj())
    spec = with_spec(**change)
    spec["training"] = {**spec["training"], "maxSteps": 10}
    spec["suspend"] = True
    result = accept(RunObject("r", "ns", "u-1", 2, before.annotations, spec, SelfPlayRunStatus()))
    assert result.refusal is not None
    reason, message = result.refusal
    assert reason == "SpecChangeRefused"
    assert field in message and "create a new SelfPlayRun" in message
    assert result.run is not None
    assert result.run.spec.model.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert result.run.spec.storage.uri == "file:///runs"
    assert result.run.spec.training.max_steps == 10 and result.run.spec.suspend  # mutable changes applied
    assert json.loads(result.annotation or "")["training"]["maxSteps"] == 10


def test_an_invalid_spec_keeps_the_accepted_one_or_fails_the_run():
    before = accepted(obj())
    bad = with_spec(training={"maxSteps": 4, "warmupSteps": 9})
    result = accept(RunObject("r", "ns", "u-1", 2, before.annotations, bad, SelfPlayRunStatus()))
    assert result.run is not None and result.refusal is not None
    assert result.refusal[0] == "InvalidSpec" and "warmupSteps" in result.refusal[1]
    fresh = accept(obj(bad))
    assert fresh.run is None and "warmupSteps" in (fresh.invalid or "")
    plan = plan_for(obj(bad))
    assert plan.status.phase == "Failed" and not plan.creates
    assert condition(plan, "Failed").reason == "InvalidSpec"
    assert plan.warnings


# ------------------------------------------------------------------------------------------ create
def test_create_makes_all_children_and_reports_pending():
    o = obj(with_spec(embedding={"engine": "server"}))
    plan = plan_for(o)
    assert kinds(plan) == {
        ("ConfigMap", "r-config"),
        ("Deployment", "r-rollout"),
        ("Service", "r-rollout"),
        ("Deployment", "r-embed"),
        ("Service", "r-embed"),
        ("Job", "r-train"),
    }
    assert not plan.deletes and not plan.patches
    assert plan.annotation is not None
    assert plan.status.phase == "Pending"
    assert plan.status.observed_generation == 1
    assert condition(plan, "Progressing").reason == "Starting"
    assert condition(plan, "Ready").reason == "ServersNotReady"
    # The same observation again (children now visible) plans nothing new: no duplicates.
    again = plan_for(accepted(o), observed(plan))
    assert not again.creates and not again.deletes and not again.patches and again.annotation is None


def test_training_status_from_progress_and_ready_servers():
    o = accepted(obj())
    children = observed(plan_for(o), **STARTED)
    children["Deployment", "r-rollout"] = Child(
        kind="Deployment",
        name="r-rollout",
        spec_hash=children["Deployment", "r-rollout"].spec_hash,
        replicas=1,
        ready_replicas=1,
    )
    plan = plan_for(o, children, progress(2, checkpoint=2))
    assert plan.status.phase == "Training"
    status = written(plan)
    assert status["progress"] == {
        "step": 2,
        "maxSteps": 4,
        "percent": 50.0,
        "updated": "2027-01-15T07:59:55Z",
        "eta": "2027-01-15T08:00:25Z",
    }
    assert status["lastCheckpoint"] == {"step": 2, "uri": "file:///c", "time": "2027-01-15T07:59:00Z"}
    assert status["pool"] == {"size": 9, "uri": "file:///runs/ns/r/pool"}
    # The headline numbers of the last step; a missing one (no loss yet) is left out.
    assert status["metrics"] == {
        "teacherReward": 1.2,
        "studentReward": 0.9,
        "solveRate": 0.5,
        "legalRatio": 0.75,
        "inBandRatio": 0.25,
    }
    assert status["startTime"] == "2027-01-15T08:00:00Z"
    assert condition(plan, "Ready").status == "True"
    assert condition(plan, "Progressing").reason == "Training"


def test_kueue_queued_job_is_pending_with_reason_queued():
    o = accepted(obj(with_spec(cluster={"queueName": "q"})))
    plan = plan_for(o, observed(plan_for(o)))
    assert plan.status.phase == "Pending"
    assert condition(plan, "Progressing").reason == "Queued"


def test_stall_is_reported_after_the_timeout():
    o = accepted(obj(with_spec(cluster={"stallTimeoutSeconds": 60})))
    children = observed(plan_for(o), **STARTED)
    assert condition(plan_for(o, children, progress(1, updated=NOW - 30)), "Progressing").status == "True"
    stalled = condition(plan_for(o, children, progress(1, updated=NOW - 61)), "Progressing")
    assert (stalled.status, stalled.reason) == ("False", "Stalled")
    assert "60" in stalled.message


# ------------------------------------------------------------------------------------------ failure
def test_a_failed_job_is_restarted_and_counted_once():
    o = accepted(obj(with_spec(backoffLimit=2)))
    children = observed(plan_for(o))
    children["Job", "r-train"] = job("r-train", 0, **STARTED, **FAILED)
    plan = plan_for(o, children)
    assert plan.status.restarts == 1 and plan.status_first
    assert plan.deletes == [("Job", "r-train")]
    created = [m for m in plan.creates if m["kind"] == "Job"]
    assert len(created) == 1 and created[0]["metadata"]["annotations"][names.ATTEMPT] == "1"
    assert condition(plan, "Degraded").reason == "TrainingRestarted"
    assert plan.warnings

    # The operator died after writing the status but before replacing the Job: replaced, not re-counted.
    o2 = RunObject(o.name, o.namespace, o.uid, o.generation, o.annotations, o.spec, plan.status)
    again = plan_for(o2, children)
    assert again.status.restarts == 1
    assert again.deletes == [("Job", "r-train")]
    assert [m["metadata"]["annotations"][names.ATTEMPT] for m in again.creates if m["kind"] == "Job"] == ["1"]

    # The new Job shows up before the run's status does: nothing more happens.
    children["Job", "r-train"] = job("r-train", 1)
    stale = plan_for(o, children)
    assert stale.status.restarts == 1 and not stale.deletes and not stale.creates


def test_failures_beyond_the_backoff_limit_fail_the_run_for_good():
    o = accepted(obj(with_spec(backoffLimit=1)))
    children = observed(plan_for(o))
    children["Job", "r-train"] = job("r-train", 1, **FAILED)
    plan = plan_for(
        RunObject(o.name, o.namespace, o.uid, 1, o.annotations, o.spec, SelfPlayRunStatus(restarts=1)),
        children,
    )
    assert plan.status.phase == "Failed"
    failed = condition(plan, "Failed")
    assert (failed.status, failed.reason) == ("True", "BackoffLimitExceeded")
    assert "backoffLimit 1" in failed.message and "BackoffLimitExceeded" in failed.message
    assert not plan.deletes and not [m for m in plan.creates if m["kind"] == "Job"]
    assert [p["spec"]["replicas"] for p in plan.patches if p["kind"] == "Deployment"] == [0]
    assert plan.status.completion_time
    # Sticky: even with the Job gone, the run stays Failed.
    done = RunObject(o.name, o.namespace, o.uid, 1, o.annotations, o.spec, plan.status)
    later = plan_for(done, {k: v for k, v in children.items() if k[0] != "Job"})
    assert later.status.phase == "Failed" and not [m for m in later.creates if m["kind"] == "Job"]
    assert later.status.completion_time == plan.status.completion_time


# ------------------------------------------------------------------------------------------ success
def test_success_scales_down_evaluates_the_final_checkpoint_then_succeeds():
    o = accepted(obj(with_spec(evaluation={"benchmarks": ["gsm8k"], "every": 0})))
    children = observed(plan_for(o))
    children["Job", "r-train"] = job("r-train", 0, **COMPLETE)
    plan = plan_for(o, children, progress(4, checkpoint=4))
    assert plan.status.phase == "Evaluating"
    assert ("Job", "r-eval-4") in kinds(plan)
    assert [p["spec"]["replicas"] for p in plan.patches if p["kind"] == "Deployment"] == [0]
    children["Job", "r-eval-4"] = Child(kind="Job", name="r-eval-4", eval_step=4, succeeded=True)
    done = plan_for(o, children, progress(4, checkpoint=4))
    assert done.status.phase == "Succeeded"
    assert condition(done, "Succeeded").status == "True"
    assert condition(done, "Ready").reason == "ScaledDown"


def test_intermediate_checkpoints_are_evaluated_on_schedule():
    o = accepted(obj(with_spec(evaluation={"benchmarks": ["gsm8k"], "every": 2}, training={"maxSteps": 6})))
    children = observed(plan_for(o), **STARTED)
    assert ("Job", "r-eval-2") in kinds(plan_for(o, children, progress(2, 6, checkpoint=2)))
    assert not kinds(plan_for(o, children, progress(3, 6, checkpoint=3)))


def test_more_steps_after_success_continue_training():
    o = accepted(obj())
    children = observed(plan_for(o))
    children["Job", "r-train"] = job("r-train", 0, **STARTED, **COMPLETE)
    done = plan_for(o, children, progress(4, 4, checkpoint=4))
    assert done.status.phase == "Succeeded"
    more = RunObject("r", "ns", "u-1", 2, o.annotations, with_spec(training={"maxSteps": 8}), done.status)
    plan = plan_for(more, children, progress(4, 4, checkpoint=4))
    assert plan.deletes == [("Job", "r-train")]
    assert ("Job", "r-train") in kinds(plan)
    assert plan.status.phase == "Training"
    assert plan.status.restarts == 0
    assert plan.status.completion_time is None
    assert written(plan, more)["completionTime"] is None  # a merge patch removes it


# ------------------------------------------------------------------------------------------ suspend
def test_suspend_removes_the_job_and_scales_to_zero_and_resume_continues():
    o = accepted(obj())
    children = observed(plan_for(o), **STARTED)
    started = SelfPlayRunStatus(start_time="x")
    suspended = RunObject("r", "ns", "u-1", 2, o.annotations, with_spec(suspend=True), started)
    plan = plan_for(suspended, children, progress(2, checkpoint=2))
    assert plan.deletes == [("Job", "r-train")]
    assert [p["spec"]["replicas"] for p in plan.patches if p["kind"] == "Deployment"] == [0]
    assert condition(plan, "Suspended").reason == "Suspending"
    gone = {k: v for k, v in children.items() if k != ("Job", "r-train")}
    plan = plan_for(suspended, gone, progress(2, checkpoint=2))
    assert plan.status.phase == "Suspended" and not plan.creates
    assert condition(plan, "Suspended").status == "True"
    resumed = RunObject("r", "ns", "u-1", 3, o.annotations, with_spec(), plan.status)
    plan = plan_for(resumed, gone, progress(2, checkpoint=2))
    assert ("Job", "r-train") in kinds(plan)
    assert plan.status.restarts == 0
    assert condition(plan, "Suspended").status == "False"


def test_bootstrap_runs_before_training():
    o = accepted(obj(with_spec(selfPlay={"bootstrap": {"enabled": True}})))
    plan = plan_for(o)
    assert ("Job", "r-bootstrap") in kinds(plan) and ("Job", "r-train") not in kinds(plan)
    assert plan.status.phase == "Bootstrapping"
    children = observed(plan)
    children["Job", "r-bootstrap"] = job("r-bootstrap", **COMPLETE)
    after = plan_for(o, children)
    assert ("Job", "r-train") in kinds(after)
    children["Job", "r-bootstrap"] = job("r-bootstrap", **FAILED)
    failed = plan_for(o, children)
    assert failed.status.phase == "Failed" and condition(failed, "Failed").reason == "BootstrapFailed"


def test_progress_read_errors_are_reported_not_hidden():
    plan = plan_for(accepted(obj()), error="file:///runs/ns/r/progress.json is unreadable: bad json")
    degraded = condition(plan, "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "ProgressUnavailable")


def test_condition_transition_times_only_move_on_change():
    o = accepted(obj())
    first = plan_for(o, now=NOW)
    later = plan_for(
        RunObject("r", "ns", "u-1", 1, o.annotations, o.spec, first.status), observed(first), now=NOW + 100
    )
    before = {c.type: c.last_transition_time for c in first.status.conditions}
    after = {c.type: c.last_transition_time for c in later.status.conditions}
    assert before == after


def test_expectations_wait_for_the_watch_to_show_our_writes():
    o = obj()
    expect = Expectations(created={("Job", "r-train"): "new"}, deleted={("Job", "r-train"): "old"})
    assert not expect.met(o, {("Job", "r-train"): Child(kind="Job", name="r-train", uid="old")})
    assert not expect.met(o, {})
    assert expect.met(o, {("Job", "r-train"): Child(kind="Job", name="r-train", uid="new")})
    assert not Expectations()
    assert not Expectations(status=SelfPlayRunStatus(phase="Training")).met(o, {})


def test_with_network_policies_every_run_gets_one_and_keeps_it():
    prometheus = {"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}
    config = OperatorConfig(
        default_image="img:1", network_policy=True, network_policy_extra_ingress=(prometheus,)
    )
    o = obj(with_spec())
    plan = decide(o, accept(o), {}, ProgressReading(store_uri="file:///runs/ns/r"), NOW, config)
    (policy,) = [m for m in plan.creates if m["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["name"] == "r-network"
    own = {"podSelector": {"matchLabels": {names.RUN_LABEL: "r"}}}
    assert policy["spec"]["podSelector"] == own["podSelector"]
    assert policy["spec"]["ingress"] == [{"from": [own]}, prometheus]
    again = decide(accepted(o), accept(accepted(o)), observed(plan), ProgressReading(), NOW, config)
    assert not any(m["kind"] == "NetworkPolicy" for m in again.creates + again.patches)
    assert ("NetworkPolicy", "r-network") not in kinds(plan_for(o))  # off by default
