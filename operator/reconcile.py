"""Reconciliation of one SelfPlayRun: accept its spec, decide what to change, then change it.

:func:`accept` and :func:`decide` are pure: they turn the run object, its observed children and its progress
into a :class:`Plan` (children to delete, create and patch; the new status). :func:`execute` applies a plan
through the API. Keeping the decision pure is what makes the lifecycle (restarts, suspension, refusals,
success) unit-testable without a cluster, and level-based: the same observation always gives the same plan,
so a restarted operator continues where the previous one stopped without duplicating anything.

:func:`decide` runs :data:`STEPS` in order, in the manner of KubeRay's reconciler: the lifecycle steps
(the training Job's outcome, the bootstrap phase, evaluations), the children (the table's desired children
against the observed ones), the phase and the conditions; then it computes the status once.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opensir_operator import manifests, names
from opensir_operator.children import (
    CHILDREN,
    ChildContext,
    ChildKey,
    ChildRow,
    Desired,
    Resource,
    Unwanted,
    Wish,
    desired_children,
)
from opensir_operator.config import OperatorConfig
from opensir_operator.kube import Kube
from opensir_operator.observe import Child, ProgressReading
from opensir_operator.status import (
    build_status,
    condition,
    iso,
    merge_conditions,
    same_status,
    stalled_for,
    status_patch,
)
from pydantic import ValidationError

from opensir.layout import Progress
from opensir.spec import (
    Condition,
    Phase,
    SelfPlayRun,
    SelfPlayRunSpec,
    SelfPlayRunStatus,
    SpecError,
    dump_run,
    parse_run,
)

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
    """As submitted: :func:`accept` validates it."""
    status: SelfPlayRunStatus
    """As last written."""
    deleting: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunObject:
        """Read a SelfPlayRun as kopf delivers it."""
        meta = body.get("metadata") or {}
        name = str(meta.get("name"))
        namespace = str(meta.get("namespace") or "default")
        return cls(
            name=name,
            namespace=namespace,
            uid=str(meta.get("uid") or ""),
            generation=meta.get("generation"),
            annotations=dict(meta.get("annotations") or {}),
            spec=copy.deepcopy(dict(body.get("spec") or {})),
            status=_written_status(body.get("status"), f"{namespace}/{name}"),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    def document(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """A SelfPlayRun manifest of this run with ``spec``, as :func:`opensir.spec.parse_run` reads it."""
        return {
            "apiVersion": names.RUN_API_VERSION,
            "kind": names.RUN_KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": dict(spec),
        }


def _written_status(raw: Any, where: str) -> SelfPlayRunStatus:
    """The status as the operator last wrote it. The CRD's schema keeps anything else out on a cluster; a
    status that does not fit anyway (edited where nothing validates) counts as none, and the next write
    replaces it."""
    try:
        return SelfPlayRunStatus.model_validate(raw or {})
    except ValidationError as error:
        log.warning("%s: ignoring a status that does not fit the schema: %s", where, error)
        return SelfPlayRunStatus()


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
    deletes: list[ChildKey] = field(default_factory=list)
    creates: list[manifests.Manifest] = field(default_factory=list)
    patches: list[manifests.Manifest] = field(default_factory=list)
    status: SelfPlayRunStatus = field(default_factory=SelfPlayRunStatus)
    status_first: bool = False
    """A restart is recorded in the status before the failed Job is replaced, so it is counted once even
    when the operator dies in between."""
    warnings: list[str] = field(default_factory=list)
    """New problems, logged as warnings (kopf posts them as Kubernetes Events)."""


@dataclass(frozen=True)
class Failure:
    """Why the run failed (the Failed condition's reason and message)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """Everything one decision reads: the run, its accepted spec, its children and its progress."""

    obj: RunObject
    acceptance: Acceptance
    target: manifests.Target
    children: Mapping[ChildKey, Child]
    reading: ProgressReading
    now: float
    config: OperatorConfig

    @property
    def spec(self) -> SelfPlayRunSpec:
        """The accepted spec."""
        return self.target.run.spec

    @property
    def previous(self) -> SelfPlayRunStatus:
        """The status as last written."""
        return self.obj.status

    @property
    def progress(self) -> Progress | None:
        """progress.json, when there is one."""
        return self.reading.progress

    @property
    def train(self) -> Child | None:
        """The training Job."""
        return self.children.get(("Job", names.train_name(self.target.name)))

    @property
    def boot(self) -> Child | None:
        """The bootstrap Job."""
        return self.children.get(("Job", names.bootstrap_name(self.target.name)))

    @property
    def evals(self) -> dict[int, Child]:
        """The evaluation Jobs, by the checkpoint step they evaluate."""
        return {c.eval_step: c for c in self.children.values() if c.kind == "Job" and c.eval_step is not None}

    @property
    def more_steps(self) -> bool:
        """training.maxSteps was raised above what the runner last planned and reached."""
        progress, max_steps = self.progress, self.spec.training.max_steps
        return progress is not None and progress.max_steps < max_steps and progress.step < max_steps


@dataclass
class Reconciliation:
    """One decision in the making: what was observed, and what the steps have decided so far."""

    seen: Observation
    plan: Plan
    rows: Sequence[ChildRow] = CHILDREN
    # lifecycle
    restarts: int = 0
    failure: Failure | None = None
    train_done: bool = False
    replace_train: bool = False
    bootstrap: bool = False
    eval_step: int | None = None
    evaluating: bool = False
    failed_evals: list[int] = field(default_factory=list)
    # children
    servers: list[tuple[str, int]] = field(default_factory=list)
    """(Deployment, desired replicas) of the run's own servers."""
    # phase
    phase: Phase = "Pending"
    train_alive: bool = False
    """The observed training Job stays (it is not being replaced or deleted)."""
    started: str | None = None
    completion: str | None = None
    # conditions
    conditions: list[Condition] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        """Failed, or trained to the end."""
        return self.failure is not None or self.train_done

    @property
    def suspended(self) -> bool:
        """spec.suspend holds for a run that has not ended."""
        return self.seen.spec.suspend and not self.terminal

    @property
    def running(self) -> bool:
        """Neither ended nor suspended."""
        return not self.terminal and not self.suspended


Step = Callable[[Reconciliation], None]


def _previous_failure(status: SelfPlayRunStatus) -> Failure | None:
    if status.phase != "Failed":
        return None
    for previous in status.conditions:
        if previous.type == "Failed" and previous.status == "True" and previous.reason in STICKY_FAILURES:
            return Failure(previous.reason, previous.message)
    return None


# ------------------------------------------------------------------------------------------ lifecycle
def training_outcome(r: Reconciliation) -> None:
    """What the training Job's state means: a restart (counted once), the run's failure once restarts
    exceed spec.backoffLimit, a continuation when maxSteps was raised, or the end of training."""
    seen, spec, train = r.seen, r.seen.spec, r.seen.train
    r.restarts = max(seen.previous.restarts, train.attempt if train else 0)
    r.failure = _previous_failure(seen.previous)
    if r.failure is not None:
        return
    if train is None:
        # Gone after success (deleted by hand, or by a TTL): still done, unless there are more steps.
        r.train_done = seen.previous.phase in ("Succeeded", "Evaluating") and not seen.more_steps
        return
    if train.deleting:
        return
    if train.failed:
        if train.attempt < r.restarts:
            r.replace_train = True  # a restart recorded before the operator stopped
        elif r.restarts < spec.backoff_limit:
            r.restarts += 1
            r.replace_train = r.plan.status_first = True
            r.plan.warnings.append(
                f"training Job failed ({train.reason}: {train.message}); restarting from "
                f"the last checkpoint ({r.restarts}/{spec.backoff_limit})"
            )
        else:
            r.failure = Failure(
                "BackoffLimitExceeded",
                f"the training Job failed {r.restarts + 1} time(s), more than backoffLimit "
                f"{spec.backoff_limit} allows; last failure: {train.reason}: {train.message}",
            )
    elif train.succeeded:
        if seen.more_steps and not spec.suspend:
            r.replace_train = True  # continue from the last checkpoint
        else:
            r.train_done = True


def bootstrap_phase(r: Reconciliation) -> None:
    """Whether the pool is still to be bootstrapped: only before training ever started."""
    seen, boot = r.seen, r.seen.boot
    r.bootstrap = (
        seen.spec.self_play.bootstrap.enabled
        and r.failure is None
        and not r.train_done
        and (seen.train is None or r.replace_train)
        and seen.progress is None
        and not seen.previous.start_time
        and not (boot is not None and boot.succeeded)
    )
    if r.bootstrap and boot is not None and boot.failed:
        r.failure = Failure("BootstrapFailed", f"the bootstrap Job failed: {boot.reason}: {boot.message}")
        r.bootstrap = False


def evaluations(r: Reconciliation) -> None:
    """The newest checkpoint's evaluation when it is due, and whether the run waits for evaluations."""
    seen, evals, max_steps = r.seen, r.seen.evals, r.seen.spec.training.max_steps
    checkpoint = seen.progress.last_checkpoint if seen.progress is not None else None
    step = checkpoint.step if checkpoint is not None and r.failure is None else None
    if step is not None and step not in evals and seen.spec.evaluation.due(step, max_steps):
        r.eval_step = step
    unfinished = any(not (e.succeeded or e.failed) for e in evals.values())
    r.evaluating = r.train_done and (r.eval_step is not None or unfinished)
    r.failed_evals = sorted(step for step, e in evals.items() if e.failed)


# ------------------------------------------------------------------------------------------ children
def converge_children(r: Reconciliation) -> None:
    """The table's desired children against the observed ones: what to create, patch and delete."""
    seen = r.seen
    context = ChildContext(
        target=seen.target,
        config=seen.config,
        observed=seen.children,
        running=r.running,
        suspended=r.suspended,
        bootstrap=r.bootstrap,
        replace_train=r.replace_train,
        attempt=r.restarts,
        eval_step=r.eval_step,
    )
    for resource, wish in desired_children(context, r.rows):
        _converge(r.plan, resource, wish, seen.children)
        if isinstance(wish, Desired) and resource.kind == "Deployment":  # a run's Deployments are its servers
            r.servers.append((wish.key[1], int(wish.manifest["spec"]["replicas"])))


def _converge(plan: Plan, resource: Resource, wish: Wish, observed: Mapping[ChildKey, Child]) -> None:
    """The API calls that bring one child to its desired state. A child being deleted is left alone until
    it is gone: recreating it now would collide with it."""
    if isinstance(wish, Unwanted):
        key = (resource.kind, wish.name)
        child = observed.get(key)
        if child is not None and not child.deleting:
            plan.deletes.append(key)
        return
    child = observed.get(wish.key)
    if child is None:
        if wish.create:
            plan.creates.append(wish.manifest)
    elif child.deleting:
        return
    elif wish.replace:
        plan.deletes.append(wish.key)
        plan.creates.append(wish.manifest)
    elif resource.patchable and child.spec_hash != wish.manifest["metadata"]["annotations"][names.SPEC_HASH]:
        plan.patches.append(wish.manifest)


# ------------------------------------------------------------------------------------------ phase
def lifecycle_phase(r: Reconciliation) -> None:
    """The phase, and when training started and the run ended (kept once set)."""
    seen, train = r.seen, r.seen.train
    r.train_alive = train is not None and not r.replace_train and not train.deleting
    r.started = seen.previous.start_time or (
        (train.start_time or iso(seen.now)) if r.train_alive and train is not None and train.started else None
    )
    if r.failure is not None:
        r.phase = "Failed"
    elif r.train_done:
        r.phase = "Evaluating" if r.evaluating else "Succeeded"
    elif r.suspended:
        r.phase = "Suspended"
    elif r.bootstrap:
        r.phase = "Bootstrapping"
    elif r.started:
        r.phase = "Training"
    else:
        r.phase = "Pending"
    ended = r.phase in ("Succeeded", "Failed")
    r.completion = (seen.previous.completion_time or iso(seen.now)) if ended else None
    if r.failure is not None and r.failure != _previous_failure(seen.previous):
        r.plan.warnings.append(f"run failed: {r.failure.message}")


# ------------------------------------------------------------------------------------------ conditions
def status_conditions(r: Reconciliation) -> None:
    """Ready, Progressing, Suspended, Degraded, Succeeded and Failed, with their reasons."""
    seen, spec = r.seen, r.seen.spec
    train = seen.train if r.train_alive else None
    succeeded = r.phase == "Succeeded"
    steps = seen.progress.step if seen.progress else spec.training.max_steps
    degraded = _degraded(r)
    r.conditions = [
        _ready(seen.children, r.servers, r.phase),
        _progressing(r, train),
        _suspended(r.suspended, train is not None and not (train.succeeded or train.failed)),
        degraded,
        condition(
            "Succeeded",
            succeeded,
            "Succeeded" if succeeded else "NotFinished",
            f"trained {steps} steps" if succeeded else "",
        ),
        condition(
            "Failed",
            r.failure is not None,
            r.failure.reason if r.failure else "NotFailed",
            r.failure.message if r.failure else "",
        ),
    ]
    if degraded.status == "True" and degraded.reason in ("SpecChangeRefused", "InvalidSpec"):
        before = next((c for c in seen.previous.conditions if c.type == "Degraded"), None)
        if before is None or before.message != degraded.message:
            r.plan.warnings.append(degraded.message)


def _ready(children: Mapping[ChildKey, Child], servers: list[tuple[str, int]], phase: Phase) -> Condition:
    if not servers:
        return condition(
            "Ready", True, "ExternalServers", "generation and embedding use servers outside the run"
        )
    if all(replicas == 0 for _, replicas in servers):
        return condition("Ready", False, "ScaledDown", f"servers are scaled to zero ({phase})")
    counts = []
    ready = True
    for server, replicas in servers:
        observed = children.get(("Deployment", server))
        have = observed.ready_replicas if observed is not None else 0
        counts.append(f"{server} {have}/{replicas}")
        ready = ready and have >= replicas
    return condition(
        "Ready", ready, "ServersReady" if ready else "ServersNotReady", "ready: " + ", ".join(counts)
    )


def _progressing(r: Reconciliation, train: Child | None) -> Condition:
    seen = r.seen
    progress, max_steps = seen.progress, seen.spec.training.max_steps
    if r.phase == "Failed":
        return condition("Progressing", False, "Failed", "the run failed")
    if r.phase == "Succeeded":
        return condition("Progressing", False, "Succeeded", "training finished")
    if r.evaluating:
        return condition("Progressing", True, "Evaluating", "evaluating the final checkpoint")
    if r.phase == "Suspended":
        return condition("Progressing", False, "Suspended", "the run is suspended")
    if r.bootstrap:
        return condition("Progressing", True, "Bootstrapping", "building the initial problem pool")
    if train is None or not train.started:
        if train is not None and seen.spec.cluster.queue_name is not None:
            return condition("Progressing", True, "Queued", "the training Job waits for admission (Kueue)")
        return condition("Progressing", True, "Starting", "waiting for the training Job to start")
    step = progress.step if progress is not None else 0
    quiet = stalled_for(progress, train.start_time, seen.now)
    stall_timeout = seen.spec.cluster.stall_timeout_seconds
    if quiet is not None and quiet > stall_timeout:
        return condition(
            "Progressing",
            False,
            "Stalled",
            f"no new step for {int(quiet)}s (stallTimeoutSeconds {stall_timeout}); last step {step}",
        )
    return condition("Progressing", True, "Training", f"step {step}/{max_steps}")


def _suspended(suspended: bool, training_still_running: bool) -> Condition:
    if not suspended:
        return condition("Suspended", False, "NotSuspended")
    if training_still_running:
        return condition("Suspended", True, "Suspending", "removing the training Job")
    return condition(
        "Suspended",
        True,
        "Suspended",
        "spec.suspend is true: servers scaled to zero, training Job "
        "removed; setting it to false continues from the last committed checkpoint",
    )


def _degraded(r: Reconciliation) -> Condition:
    seen = r.seen
    if seen.acceptance.refusal is not None:
        return condition("Degraded", True, *seen.acceptance.refusal)
    if seen.reading.error is not None:
        return condition("Degraded", True, "ProgressUnavailable", seen.reading.error)
    if r.failed_evals:
        return condition(
            "Degraded",
            True,
            "EvaluationFailed",
            "evaluation failed at step(s) " + ", ".join(map(str, r.failed_evals)),
        )
    if r.restarts and not r.terminal:
        return condition(
            "Degraded",
            True,
            "TrainingRestarted",
            f"the training Job was restarted {r.restarts} time(s) of {seen.spec.backoff_limit} allowed",
        )
    return condition("Degraded", False, "AsExpected")


STEPS: tuple[Step, ...] = (
    training_outcome,
    bootstrap_phase,
    evaluations,
    converge_children,
    lifecycle_phase,
    status_conditions,
)
"""The reconcile steps, in order: each reads what the ones before it decided."""


def decide(
    obj: RunObject,
    acceptance: Acceptance,
    children: Mapping[ChildKey, Child],
    reading: ProgressReading,
    now: float,
    config: OperatorConfig,
    rows: Sequence[ChildRow] = CHILDREN,
) -> Plan:
    """The plan that moves the observed state of one run toward its spec: the steps, then the status."""
    plan = Plan(annotation=acceptance.annotation)
    if acceptance.run is None:
        return _invalid(obj, acceptance, reading, now, plan)
    target = manifests.make_target(acceptance.run, obj.uid, config.default_image)
    r = Reconciliation(Observation(obj, acceptance, target, children, reading, now, config), plan, rows)
    for step in STEPS:
        step(r)
    plan.status = build_status(
        generation=obj.generation,
        phase=r.phase,
        conditions=merge_conditions(obj.status.conditions, r.conditions, now, obj.generation),
        reading=reading,
        max_steps=target.run.spec.training.max_steps,
        restarts=r.restarts,
        start_time=r.started,
        completion_time=r.completion,
    )
    return plan


def _invalid(
    obj: RunObject, acceptance: Acceptance, reading: ProgressReading, now: float, plan: Plan
) -> Plan:
    """An invalid spec with no accepted one to fall back on: nothing is built and the run fails."""
    message = acceptance.invalid or "invalid spec"
    failed = [
        condition("Ready", False, "InvalidSpec", "nothing was created"),
        condition("Progressing", False, "InvalidSpec"),
        condition("Suspended", False, "NotSuspended"),
        condition("Degraded", True, "InvalidSpec", message),
        condition("Succeeded", False, "NotFinished"),
        condition("Failed", True, "InvalidSpec", message),
    ]
    before = next((c for c in obj.status.conditions if c.type == "Failed"), None)
    if before is None or before.message != message:
        plan.warnings.append(message)
    steps = _get(obj.spec, ("training", "maxSteps"))
    plan.status = build_status(
        generation=obj.generation,
        phase="Failed",
        conditions=merge_conditions(obj.status.conditions, failed, now, obj.generation),
        reading=reading,
        max_steps=steps if isinstance(steps, int) else 0,
        restarts=obj.status.restarts,
        start_time=obj.status.start_time,
        completion_time=obj.status.completion_time,  # kept as it was: the merge patch never removed it here
    )
    return plan


# ------------------------------------------------------------------------------------------ execute
@dataclass
class Expectations:
    """What the watch streams must show before the run is reconciled again: the effects of our own writes.

    Without this, a reconciliation woken by an unrelated event could act on a view that does not yet
    contain its predecessor's writes and, e.g., create a Job again (a 409) or delete it twice.
    """

    created: dict[ChildKey, str | None] = field(default_factory=dict)
    """(kind, name) → uid of what was created (None: it already existed)."""
    deleted: dict[ChildKey, str | None] = field(default_factory=dict)
    """(kind, name) → uid of what was deleted."""
    status: SelfPlayRunStatus | None = None
    annotation: str | None = None

    def __bool__(self) -> bool:
        return bool(self.created or self.deleted or self.status is not None or self.annotation is not None)

    def met(self, obj: RunObject, children: Mapping[ChildKey, Child]) -> bool:
        """Whether the run and its children, as the watches show them now, include every write."""
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


def execute(plan: Plan, kube: Kube, obj: RunObject, children: Mapping[ChildKey, Child]) -> Expectations:
    """Apply a plan. Conflicts and vanished objects are left to the next reconciliation, which will
    observe them (level-based). The status is serialised here, once, as the merge patch that writes it."""
    expect = Expectations()
    if plan.annotation is not None:
        kube.patch_run(
            obj.namespace, obj.name, {"metadata": {"annotations": {names.ACCEPTED_SPEC: plan.annotation}}}
        )
        expect.annotation = plan.annotation
    write_status = not same_status(obj.status, plan.status)
    patch = status_patch(plan.status, obj.status)
    if write_status and plan.status_first:
        kube.patch_run_status(obj.namespace, obj.name, patch)
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
        kube.patch_run_status(obj.namespace, obj.name, patch)
    if write_status:
        expect.status = plan.status
    return expect


def cleanup(kube: Kube, namespace: str, children: Mapping[ChildKey, Child]) -> list[str]:
    """Delete a run's children. On a cluster the garbage collector follows the ownerReferences anyway;
    deleting them here makes deletion prompt and works where there is no garbage collector."""
    deleted = []
    for child in children.values():
        if not child.deleting:
            kube.delete(child.kind, namespace, child.name)
            deleted.append(f"{child.kind}/{child.name}")
    return deleted
