"""Reconciliation of one SelfPlayRun: accept its spec, decide what to change, then change it.

:func:`accept` and :func:`decide` are pure: they turn the run object, its observed children and its progress
into a :class:`Plan` (children to delete, create and patch; the new status). :func:`execute` applies a plan
through the API. Keeping the decision pure is what makes the lifecycle (restarts, suspension, refusals,
success) unit-testable without a cluster, and level-based: the same observation always gives the same plan,
so a restarted operator continues where the previous one stopped without duplicating anything.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opensir_operator import manifests, names
from opensir_operator.kube import Kube
from opensir_operator.observe import Child, ProgressReading
from opensir_operator.settings import OperatorConfig
from opensir_operator.status import Condition, build_status, iso, merge_conditions, same_status, stalled_for

from opensir.spec import SelfPlayRun, SpecError, dump_run, parse_run

log = logging.getLogger(__name__)

IMMUTABLE_FIELDS: tuple[tuple[str, ...], ...] = (
    ("model",),
    ("selfPlay",),
    ("seedProblems",),
    ("storage", "uri"),
)
"""Spec fields a running run cannot change. model and selfPlay are also refused by the CRD's CEL rules
(``self == oldSelf``); seedProblems only matter at step 0 and storage.uri holds the run's state."""

STICKY_FAILURES = ("BackoffLimitExceeded", "BootstrapFailed")
"""Failures that end a run for good (an invalid spec can still be fixed)."""


@dataclass(frozen=True)
class RunObject:
    """The parts of a SelfPlayRun object reconciliation reads."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    deleting: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunObject:
        meta = body.get("metadata") or {}
        return cls(
            name=str(meta.get("name")),
            namespace=str(meta.get("namespace") or "default"),
            uid=str(meta.get("uid") or ""),
            generation=meta.get("generation"),
            annotations=dict(meta.get("annotations") or {}),
            spec=copy.deepcopy(dict(body.get("spec") or {})),
            status=copy.deepcopy(dict(body.get("status") or {})),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    def document(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": names.RUN_API_VERSION,
            "kind": names.RUN_KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": dict(spec),
        }


# ------------------------------------------------------------------------------------------ accept
@dataclass(frozen=True)
class Acceptance:
    """Which spec the operator works with, and why it is not the submitted one when it is not."""

    run: SelfPlayRun | None
    """The accepted run; None when the spec is invalid and nothing was ever accepted."""
    annotation: str | None = None
    """New value of the accepted-spec annotation, when it changes."""
    refusal: tuple[str, str] | None = None
    """(reason, message) of a refused change."""
    invalid: str | None = None
    """Why the spec is invalid (with no accepted spec to fall back on)."""


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = copy.deepcopy(value)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def accept(obj: RunObject) -> Acceptance:
    """Validate the submitted spec and check it against the last accepted one.

    Changes of immutable fields are refused (the run continues with the accepted values; the mutable
    changes made at the same time still apply); an invalid spec keeps the accepted one in force.
    """
    accepted: dict[str, Any] | None = None
    raw = obj.annotations.get(names.ACCEPTED_SPEC)
    if raw:
        try:
            loaded = json.loads(raw)
        except ValueError:
            log.warning(
                "%s/%s: ignoring an unreadable %s annotation", obj.namespace, obj.name, names.ACCEPTED_SPEC
            )
        else:
            accepted = loaded if isinstance(loaded, dict) else None
    try:
        current = parse_run(obj.document(obj.spec), f"SelfPlayRun {obj.namespace}/{obj.name}")
    except SpecError as error:
        if accepted is None:
            return Acceptance(run=None, invalid=str(error))
        message = (
            f"the new spec is invalid and was not applied; the last accepted spec stays in force. {error}"
        )
        return Acceptance(run=parse_run(obj.document(accepted)), refusal=("InvalidSpec", message))

    submitted = dump_run(current)["spec"]
    if accepted is None:
        return Acceptance(run=current, annotation=_compact(submitted))
    changed = [path for path in IMMUTABLE_FIELDS if _get(submitted, path) != _get(accepted, path)]
    if not changed:
        return Acceptance(run=current, annotation=None if submitted == accepted else _compact(submitted))

    merged = copy.deepcopy(submitted)
    for path in changed:
        _set(merged, path, _get(accepted, path))
    details = "; ".join(
        f"spec.{'.'.join(p)} changed from {_short(_get(accepted, p))} to {_short(_get(submitted, p))}"
        for p in changed
    )
    fields = ", ".join("spec." + ".".join(p) for p in changed)
    message = (
        f"{fields} cannot change on an existing run and the change was not applied ({details}); "
        "revert it, or create a new SelfPlayRun"
    )
    try:
        run = parse_run(obj.document(merged))
    except SpecError:
        run = parse_run(obj.document(accepted))
    effective = dump_run(run)["spec"]
    return Acceptance(
        run=run,
        annotation=None if effective == accepted else _compact(effective),
        refusal=("SpecChangeRefused", message),
    )


def _compact(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ decide
@dataclass
class Plan:
    """What one reconciliation changes. Applied in order: status (when first), deletes, creates, patches."""

    annotation: str | None = None
    deletes: list[tuple[str, str]] = field(default_factory=list)
    creates: list[manifests.Manifest] = field(default_factory=list)
    patches: list[manifests.Manifest] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    status_first: bool = False
    """A restart is recorded in the status before the failed Job is replaced, so it is counted once even
    when the operator dies in between."""
    warnings: list[str] = field(default_factory=list)
    """New problems, logged as warnings (kopf posts them as Kubernetes Events)."""


def _previous_failure(status: Mapping[str, Any]) -> tuple[str, str] | None:
    if status.get("phase") != "Failed":
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            reason = str(condition.get("reason") or "")
            if reason in STICKY_FAILURES:
                return reason, str(condition.get("message") or "")
    return None


def _ensure(
    plan: Plan,
    children: Mapping[tuple[str, str], Child],
    manifest: manifests.Manifest,
    patchable: bool = True,
) -> None:
    """Create a missing child; patch an existing one whose manifest changed (Jobs are immutable)."""
    observed = children.get((manifest["kind"], manifest["metadata"]["name"]))
    if observed is None:
        plan.creates.append(manifest)
    elif (
        patchable
        and not observed.deleting
        and observed.spec_hash != manifest["metadata"]["annotations"][names.SPEC_HASH]
    ):
        plan.patches.append(manifest)


def decide(
    obj: RunObject,
    acceptance: Acceptance,
    children: Mapping[tuple[str, str], Child],
    reading: ProgressReading,
    now: float,
    config: OperatorConfig,
) -> Plan:
    """The plan that moves the observed state of one run toward its spec."""
    previous = obj.status
    plan = Plan(annotation=acceptance.annotation)
    if acceptance.run is None:
        return _invalid(obj, acceptance, reading, now, plan)

    target = manifests.make_target(acceptance.run, obj.uid, config.default_image)
    spec = target.run.spec
    name = target.name
    max_steps = spec.training.max_steps
    progress = reading.progress
    train = children.get(("Job", names.train_name(name)))
    boot = children.get(("Job", names.bootstrap_name(name)))
    evals = {c.eval_step: c for c in children.values() if c.kind == "Job" and c.eval_step is not None}

    restarts = max(int(previous.get("restarts") or 0), train.attempt if train else 0)
    failure = _previous_failure(previous)
    more_steps = progress is not None and progress.max_steps < max_steps and progress.step < max_steps
    train_done = False
    replace_train = False

    # 1. The training Job's outcome.
    if failure is None and train is not None and not train.deleting:
        if train.failed:
            if train.attempt < restarts:
                replace_train = True  # a restart recorded before the operator stopped
            elif restarts < spec.backoff_limit:
                restarts += 1
                replace_train = plan.status_first = True
                plan.warnings.append(
                    f"training Job failed ({train.reason}: {train.message}); restarting from "
                    f"the last checkpoint ({restarts}/{spec.backoff_limit})"
                )
            else:
                failure = (
                    "BackoffLimitExceeded",
                    f"the training Job failed {restarts + 1} time(s), more than backoffLimit "
                    f"{spec.backoff_limit} allows; last failure: {train.reason}: {train.message}",
                )
        elif train.succeeded:
            if more_steps and not spec.suspend:
                replace_train = True  # training.maxSteps was raised: continue from the last checkpoint
            else:
                train_done = True
    elif failure is None and train is None and previous.get("phase") in ("Succeeded", "Evaluating"):
        train_done = not more_steps

    # 2. Bootstrap, only before training ever started.
    bootstrap_needed = (
        spec.self_play.bootstrap.enabled
        and failure is None
        and not train_done
        and (train is None or replace_train)
        and progress is None
        and not previous.get("startTime")
        and not (boot is not None and boot.succeeded)
    )
    if bootstrap_needed and boot is not None and boot.failed:
        failure = ("BootstrapFailed", f"the bootstrap Job failed: {boot.reason}: {boot.message}")
        bootstrap_needed = False
    if failure is not None and failure != _previous_failure(previous):
        plan.warnings.append(f"run failed: {failure[1]}")

    terminal = failure is not None or train_done
    suspended = spec.suspend and not terminal
    running = not terminal and not suspended

    # 3. Evaluation of due checkpoints.
    evaluating = False
    if failure is None and progress is not None and progress.last_checkpoint:
        step = int(progress.last_checkpoint.get("step") or 0)
        if spec.evaluation.due(step, max_steps) and step not in evals:
            plan.creates.append(manifests.eval_job(target, step))
            evaluating = train_done
    evaluating = evaluating or (train_done and any(not (e.succeeded or e.failed) for e in evals.values()))
    failed_evals = sorted(s for s, e in evals.items() if e.failed)

    # 4. Children.
    replicas_on = running  # the servers also serve the bootstrap phase
    _ensure(plan, children, manifests.config_map(target))
    servers: list[tuple[str, int]] = []
    if manifests.needs_rollout_server(target):
        servers.append((names.rollout_name(name), spec.rollout.replicas if replicas_on else 0))
        _ensure_server(plan, children, manifests.rollout_deployment(target, servers[-1][1]))
        _ensure(plan, children, manifests.rollout_service(target))
    if manifests.needs_embed_server(target):
        servers.append((names.embed_name(name), spec.embedding.replicas if replicas_on else 0))
        _ensure_server(plan, children, manifests.embed_deployment(target, servers[-1][1]))
        _ensure(plan, children, manifests.embed_service(target))
    if spec.training.nodes > 1 and running:
        _ensure(plan, children, manifests.train_service(target))
    if config.network_policy:
        _ensure(plan, children, manifests.network_policy(target, config.network_policy_extra_ingress))

    if boot is not None and not (boot.succeeded or boot.failed) and not boot.deleting and not running:
        plan.deletes.append(("Job", boot.name))
    if running and bootstrap_needed and boot is None:
        plan.creates.append(manifests.bootstrap_job(target))

    if train is not None and not train.deleting:
        unfinished = not (train.succeeded or train.failed)
        if replace_train or (suspended and unfinished):
            plan.deletes.append(("Job", train.name))
    train_absent = train is None or train.deleting or replace_train
    if running and not bootstrap_needed and train_absent and not (train is not None and train.deleting):
        plan.creates.append(manifests.train_job(target, restarts))

    # 5. Status.
    train_alive = train is not None and not replace_train and not train.deleting
    started = previous.get("startTime") or (
        (train.start_time or iso(now)) if train_alive and train is not None and train.started else None
    )
    if failure is not None:
        phase = "Failed"
    elif train_done:
        phase = "Evaluating" if evaluating else "Succeeded"
    elif suspended:
        phase = "Suspended"
    elif bootstrap_needed:
        phase = "Bootstrapping"
    elif started:
        phase = "Training"
    else:
        phase = "Pending"
    completion = (previous.get("completionTime") or iso(now)) if phase in ("Succeeded", "Failed") else None

    conditions = [
        _ready(children, servers, phase),
        _progressing(
            phase,
            spec.cluster.stall_timeout_seconds,
            progress,
            train if train_alive else None,
            bootstrap_needed,
            spec.cluster.queue_name is not None,
            max_steps,
            now,
            evaluating,
        ),
        _suspended(suspended, train_alive and train is not None and not (train.succeeded or train.failed)),
        _degraded(acceptance, reading, restarts, spec.backoff_limit, failed_evals, terminal),
        Condition(
            "Succeeded",
            phase == "Succeeded",
            "Succeeded" if phase == "Succeeded" else "NotFinished",
            f"trained {progress.step if progress else max_steps} steps" if phase == "Succeeded" else "",
        ),
        Condition(
            "Failed",
            failure is not None,
            failure[0] if failure else "NotFailed",
            failure[1] if failure else "",
        ),
    ]
    degraded = conditions[3]
    if degraded.status and degraded.reason in ("SpecChangeRefused", "InvalidSpec"):
        before = {c.get("type"): c for c in previous.get("conditions") or []}.get("Degraded") or {}
        if before.get("message") != degraded.message:
            plan.warnings.append(degraded.message)
    plan.status = build_status(
        generation=obj.generation,
        phase=phase,
        conditions=merge_conditions(previous.get("conditions") or [], conditions, now, obj.generation),
        reading=reading,
        max_steps=max_steps,
        restarts=restarts,
        start_time=started,
        completion_time=completion,
    )
    if completion is None and previous.get("completionTime"):
        plan.status["completionTime"] = None  # a finished run that continues (more steps): not finished
    return plan


def _ensure_server(
    plan: Plan, children: Mapping[tuple[str, str], Child], manifest: manifests.Manifest
) -> None:
    """A server Deployment: never create one only to hold zero replicas."""
    if manifest["spec"]["replicas"] == 0 and ("Deployment", manifest["metadata"]["name"]) not in children:
        return
    _ensure(plan, children, manifest)


def _invalid(
    obj: RunObject, acceptance: Acceptance, reading: ProgressReading, now: float, plan: Plan
) -> Plan:
    message = acceptance.invalid or "invalid spec"
    conditions = [
        Condition("Ready", False, "InvalidSpec", "nothing was created"),
        Condition("Progressing", False, "InvalidSpec", ""),
        Condition("Suspended", False, "NotSuspended", ""),
        Condition("Degraded", True, "InvalidSpec", message),
        Condition("Succeeded", False, "NotFinished", ""),
        Condition("Failed", True, "InvalidSpec", message),
    ]
    before = {c.get("type"): c for c in obj.status.get("conditions") or []}.get("Failed") or {}
    if before.get("message") != message:
        plan.warnings.append(message)
    plan.status = build_status(
        generation=obj.generation,
        phase="Failed",
        conditions=merge_conditions(obj.status.get("conditions") or [], conditions, now, obj.generation),
        reading=reading,
        max_steps=steps if isinstance(steps := _get(obj.spec, ("training", "maxSteps")), int) else 0,
        restarts=int(obj.status.get("restarts") or 0),
        start_time=obj.status.get("startTime"),
        completion_time=None,
    )
    return plan


def _ready(
    children: Mapping[tuple[str, str], Child], servers: list[tuple[str, int]], phase: str
) -> Condition:
    if not servers:
        return Condition(
            "Ready", True, "ExternalServers", "generation and embedding use servers outside the run"
        )
    if all(replicas == 0 for _, replicas in servers):
        return Condition("Ready", False, "ScaledDown", f"servers are scaled to zero ({phase})")
    counts = []
    ready = True
    for server, replicas in servers:
        observed = children.get(("Deployment", server))
        have = observed.ready_replicas if observed is not None else 0
        counts.append(f"{server} {have}/{replicas}")
        ready = ready and have >= replicas
    return Condition(
        "Ready", ready, "ServersReady" if ready else "ServersNotReady", "ready: " + ", ".join(counts)
    )


def _progressing(
    phase: str,
    stall_timeout: int,
    progress: Any,
    train: Child | None,
    bootstrap: bool,
    queued: bool,
    max_steps: int,
    now: float,
    evaluating: bool,
) -> Condition:
    if phase == "Failed":
        return Condition("Progressing", False, "Failed", "the run failed")
    if phase == "Succeeded":
        return Condition("Progressing", False, "Succeeded", "training finished")
    if evaluating:
        return Condition("Progressing", True, "Evaluating", "evaluating the final checkpoint")
    if phase == "Suspended":
        return Condition("Progressing", False, "Suspended", "the run is suspended")
    if bootstrap:
        return Condition("Progressing", True, "Bootstrapping", "building the initial problem pool")
    if train is None or not train.started:
        if train is not None and queued:
            return Condition("Progressing", True, "Queued", "the training Job waits for admission (Kueue)")
        return Condition("Progressing", True, "Starting", "waiting for the training Job to start")
    quiet = stalled_for(progress, train.start_time, now)
    if quiet is not None and quiet > stall_timeout:
        step = progress.step if progress is not None else 0
        return Condition(
            "Progressing",
            False,
            "Stalled",
            f"no new step for {int(quiet)}s (stallTimeoutSeconds {stall_timeout}); last step {step}",
        )
    step = progress.step if progress is not None else 0
    return Condition("Progressing", True, "Training", f"step {step}/{max_steps}")


def _suspended(suspended: bool, training_still_running: bool) -> Condition:
    if not suspended:
        return Condition("Suspended", False, "NotSuspended", "")
    if training_still_running:
        return Condition("Suspended", True, "Suspending", "removing the training Job")
    return Condition(
        "Suspended",
        True,
        "Suspended",
        "spec.suspend is true: servers scaled to zero, training Job "
        "removed; setting it to false continues from the last committed checkpoint",
    )


def _degraded(
    acceptance: Acceptance,
    reading: ProgressReading,
    restarts: int,
    backoff_limit: int,
    failed_evals: list[int],
    terminal: bool,
) -> Condition:
    if acceptance.refusal is not None:
        return Condition("Degraded", True, *acceptance.refusal)
    if reading.error is not None:
        return Condition("Degraded", True, "ProgressUnavailable", reading.error)
    if failed_evals:
        return Condition(
            "Degraded",
            True,
            "EvaluationFailed",
            "evaluation failed at step(s) " + ", ".join(map(str, failed_evals)),
        )
    if restarts and not terminal:
        return Condition(
            "Degraded",
            True,
            "TrainingRestarted",
            f"the training Job was restarted {restarts} time(s) of {backoff_limit} allowed",
        )
    return Condition("Degraded", False, "AsExpected", "")


# ------------------------------------------------------------------------------------------ execute
@dataclass
class Expectations:
    """What the watch streams must show before the run is reconciled again: the effects of our own writes.

    Without this, a reconciliation woken by an unrelated event could act on a view that does not yet
    contain its predecessor's writes and, e.g., create a Job again (a 409) or delete it twice.
    """

    created: dict[tuple[str, str], str | None] = field(default_factory=dict)
    """(kind, name) → uid of what was created (None: it already existed)."""
    deleted: dict[tuple[str, str], str | None] = field(default_factory=dict)
    """(kind, name) → uid of what was deleted."""
    status: dict[str, Any] | None = None
    annotation: str | None = None

    def __bool__(self) -> bool:
        return bool(self.created or self.deleted or self.status is not None or self.annotation is not None)

    def met(self, obj: RunObject, children: Mapping[tuple[str, str], Child]) -> bool:
        for key, uid in self.deleted.items():
            child = children.get(key)
            if child is not None and child.uid == uid and key not in self.created:
                return False
        for key, uid in self.created.items():
            child = children.get(key)
            if child is None or (uid is not None and child.uid != uid):
                return False
        if self.status is not None and not same_status(obj.status, self.status):
            return False
        return self.annotation is None or obj.annotations.get(names.ACCEPTED_SPEC) == self.annotation


def execute(
    plan: Plan, kube: Kube, obj: RunObject, children: Mapping[tuple[str, str], Child]
) -> Expectations:
    """Apply a plan. Conflicts and vanished objects are left to the next reconciliation, which will
    observe them (level-based)."""
    expect = Expectations()
    if plan.annotation is not None:
        kube.patch_run(
            obj.namespace, obj.name, {"metadata": {"annotations": {names.ACCEPTED_SPEC: plan.annotation}}}
        )
        expect.annotation = plan.annotation
    write_status = not same_status(obj.status, plan.status)
    if write_status and plan.status_first:
        kube.patch_run_status(obj.namespace, obj.name, plan.status)
    for kind, name in plan.deletes:
        kube.delete(kind, obj.namespace, name)
        child = children.get((kind, name))
        expect.deleted[kind, name] = child.uid if child is not None else None
    for manifest in plan.creates:
        created = kube.create(manifest)
        key = (manifest["kind"], manifest["metadata"]["name"])
        expect.created[key] = (created or {}).get("metadata", {}).get("uid")
    for manifest in plan.patches:
        kube.patch(manifest["kind"], obj.namespace, manifest["metadata"]["name"], manifest)
    if write_status and not plan.status_first:
        kube.patch_run_status(obj.namespace, obj.name, plan.status)
    if write_status:
        expect.status = plan.status
    return expect


def cleanup(kube: Kube, namespace: str, children: Mapping[tuple[str, str], Child]) -> list[str]:
    """Delete a run's children. On a cluster the garbage collector follows the ownerReferences anyway;
    deleting them here makes deletion prompt and works where there is no garbage collector."""
    deleted = []
    for child in children.values():
        if not child.deleting:
            kube.delete(child.kind, namespace, child.name)
            deleted.append(f"{child.kind}/{child.name}")
    return deleted
