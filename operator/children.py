"""The operator's children as one table: every object a SelfPlayRun owns, and the rule that wants it.

A row names a child's API resource and its component, and holds the rule that turns this reconciliation's
lifecycle decisions into the child's desired state through its pure builder in
:mod:`opensir_operator.manifests`. Everything that depends on which children exist derives from
:data:`CHILDREN`: the kopf watches and indices (handlers.py), their label selectors (settings.py), the API
paths (kube.py), the desired children (reconcile.py) and the RBAC the operator needs (:func:`rbac_rules`,
held against the Helm chart by tests/unit/test_chart_rbac.py). A new kind of child is one row here plus
one builder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from opensir_operator import manifests, names
from opensir_operator.config import OperatorConfig
from opensir_operator.observe import Child

from opensir.spec import SelfPlayRunSpec

ChildKey = tuple[str, str]
"""(kind, name): how desired and observed children are matched."""

CHILD_VERBS = ("get", "list", "watch", "create", "patch", "delete")
"""What the chart's Role grants on each child resource. kopf lists and watches; kube.py creates,
merge-patches and deletes; no call of today's operator needs get, nor patch on Jobs."""


def _always(_: OperatorConfig) -> bool:
    return True


@dataclass(frozen=True)
class Resource:
    """A Kubernetes API resource that children are made of."""

    kind: str
    group: str
    version: str
    plural: str
    patchable: bool = True
    """False for Jobs: their pod template is immutable, so an ended Job is replaced, never patched."""
    enabled: Callable[[OperatorConfig], bool] = _always
    """Whether this operator configuration builds it, and so watches it: the chart grants RBAC for an
    optional resource only where it is enabled, and a watch without RBAC fails the operator."""
    verbs: tuple[str, ...] = CHILD_VERBS

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise (a manifest's apiVersion)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self, namespace: str) -> str:
        """The API path of these objects in one namespace."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{root}/namespaces/{namespace}/{self.plural}"

    @property
    def index_id(self) -> str:
        """The kopf index of these children, also the name kopf passes it to handlers under."""
        return f"opensir_{self.plural}"


CONFIG_MAPS = Resource("ConfigMap", "", "v1", "configmaps")
SERVICES = Resource("Service", "", "v1", "services")
DEPLOYMENTS = Resource("Deployment", "apps", "v1", "deployments")
JOBS = Resource("Job", "batch", "v1", "jobs", patchable=False)
NETWORK_POLICIES = Resource(
    "NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", enabled=lambda c: c.network_policy
)


# ------------------------------------------------------------------------------------------ wishes
@dataclass(frozen=True)
class ChildContext:
    """What the rules decide from: the run's builder target and this reconciliation's lifecycle
    decisions (made by the lifecycle steps of :mod:`opensir_operator.reconcile`)."""

    target: manifests.Target
    config: OperatorConfig
    observed: Mapping[ChildKey, Child]
    running: bool
    """Neither finished, failed nor suspended: the servers are up and training is wanted."""
    suspended: bool
    bootstrap: bool
    """The bootstrap phase is still to run before training."""
    replace_train: bool
    """The training Job ended and is to be replaced (a restart, or more steps after success)."""
    attempt: int
    """Restart number of a training Job created now."""
    eval_step: int | None
    """A committed checkpoint that is due for evaluation and has no evaluation Job yet."""

    @property
    def spec(self) -> SelfPlayRunSpec:
        """The accepted spec."""
        return self.target.run.spec

    def child(self, kind: str, name: str) -> Child | None:
        """The observed child of that kind and name."""
        return self.observed.get((kind, name))


@dataclass(frozen=True)
class Desired:
    """A child that should exist as ``manifest``."""

    manifest: manifests.Manifest
    create: bool = True
    """False: only keep an existing one up to date (a server is never created only to hold zero replicas)."""
    replace: bool = False
    """Delete the existing one and create this one: an ended Job can neither restart nor be patched."""

    @property
    def key(self) -> ChildKey:
        """(kind, name) of the child."""
        return self.manifest["kind"], self.manifest["metadata"]["name"]


@dataclass(frozen=True)
class Unwanted:
    """A child that should not exist: an observed one is deleted."""

    name: str


Wish = Desired | Unwanted
Rule = Callable[[ChildContext], Iterable[Wish]]


@dataclass(frozen=True)
class ChildRow:
    """One row of the table: a child, or a family of children such as the evaluation Jobs."""

    component: str
    resource: Resource
    rule: Rule
    """Its desired state now; yielding nothing leaves whatever exists as it is."""


def always(build: Callable[[manifests.Target], manifests.Manifest]) -> Rule:
    """The rule of a child that every run has, built from the run alone."""

    def rule(context: ChildContext) -> Iterator[Wish]:
        yield Desired(build(context.target))

    return rule


# ------------------------------------------------------------------------------------------ rules
def _server_replicas(context: ChildContext, replicas: int) -> int:
    return replicas if context.running else 0  # the bootstrap phase generates through the servers too


def _rollout_deployment(context: ChildContext) -> Iterator[Wish]:
    if manifests.needs_rollout_server(context.target):
        replicas = _server_replicas(context, context.spec.rollout.replicas)
        yield Desired(manifests.rollout_deployment(context.target, replicas), create=replicas > 0)


def _rollout_service(context: ChildContext) -> Iterator[Wish]:
    if manifests.needs_rollout_server(context.target):
        yield Desired(manifests.rollout_service(context.target))


def _embed_deployment(context: ChildContext) -> Iterator[Wish]:
    if manifests.needs_embed_server(context.target):
        replicas = _server_replicas(context, context.spec.embedding.replicas)
        yield Desired(manifests.embed_deployment(context.target, replicas), create=replicas > 0)


def _embed_service(context: ChildContext) -> Iterator[Wish]:
    if manifests.needs_embed_server(context.target):
        yield Desired(manifests.embed_service(context.target))


def _train_service(context: ChildContext) -> Iterator[Wish]:
    # Left in place when training stops: it selects no pods then, and a resumed run needs it again.
    if context.spec.training.nodes > 1 and context.running:
        yield Desired(manifests.train_service(context.target))


def _network_policy(context: ChildContext) -> Iterator[Wish]:
    yield Desired(manifests.network_policy(context.target, context.config.network_policy_extra_ingress))


def _ended(job: Child) -> bool:
    return job.succeeded or job.failed


def _bootstrap_job(context: ChildContext) -> Iterator[Wish]:
    name = names.bootstrap_name(context.target.name)
    boot = context.child(JOBS.kind, name)
    if context.running and context.bootstrap:
        yield Desired(manifests.bootstrap_job(context.target))
    elif not context.running and boot is not None and not _ended(boot):
        yield Unwanted(name)  # suspended or ended: its pool would be built for nothing


def _train_job(context: ChildContext) -> Iterator[Wish]:
    name = names.train_name(context.target.name)
    train = context.child(JOBS.kind, name)
    if context.running and not context.bootstrap:
        yield Desired(manifests.train_job(context.target, context.attempt), replace=context.replace_train)
    elif train is not None and (context.replace_train or (context.suspended and not _ended(train))):
        yield Unwanted(name)  # a suspended run's runner checkpoints on SIGTERM and resumes from it later


def _eval_jobs(context: ChildContext) -> Iterator[Wish]:
    if context.eval_step is not None:
        yield Desired(manifests.eval_job(context.target, context.eval_step))


CHILDREN: tuple[ChildRow, ...] = (
    ChildRow("config", CONFIG_MAPS, always(manifests.config_map)),
    ChildRow("rollout", DEPLOYMENTS, _rollout_deployment),
    ChildRow("rollout", SERVICES, _rollout_service),
    ChildRow("embed", DEPLOYMENTS, _embed_deployment),
    ChildRow("embed", SERVICES, _embed_service),
    ChildRow("train", SERVICES, _train_service),
    ChildRow("network", NETWORK_POLICIES, _network_policy),
    ChildRow("bootstrap", JOBS, _bootstrap_job),
    ChildRow("train", JOBS, _train_job),
    ChildRow("eval", JOBS, _eval_jobs),
)
"""Every child of a SelfPlayRun (DESIGN.md §4), in the order they are created: the ConfigMap first, as the
pods mount it; the servers before the Jobs that use them."""


# ------------------------------------------------------------------------------------------ derived
def resources(rows: Sequence[ChildRow] = CHILDREN) -> tuple[Resource, ...]:
    """The distinct resources of the rows, in table order."""
    return tuple(dict.fromkeys(row.resource for row in rows))


def watched(config: OperatorConfig, rows: Sequence[ChildRow] = CHILDREN) -> tuple[Resource, ...]:
    """The resources this configuration builds, which the operator watches and indexes."""
    return tuple(resource for resource in resources(rows) if resource.enabled(config))


def desired_children(
    context: ChildContext, rows: Sequence[ChildRow] = CHILDREN
) -> list[tuple[Resource, Wish]]:
    """Every row's wishes in this context (rows of disabled resources have none), in table order."""
    wishes = []
    for row in rows:
        if not row.resource.enabled(context.config):
            continue
        for wish in row.rule(context):
            if isinstance(wish, Desired) and wish.manifest["kind"] != row.resource.kind:
                raise ValueError(
                    f"the {row.component} {row.resource.kind} row built a {wish.manifest['kind']}"
                )
            wishes.append((row.resource, wish))
    return wishes


def rbac_rules(config: OperatorConfig, rows: Sequence[ChildRow] = CHILDREN) -> list[dict[str, list[str]]]:
    """The RBAC PolicyRules the operator needs on its children in this configuration."""
    return [
        {"apiGroups": [resource.group], "resources": [resource.plural], "verbs": list(resource.verbs)}
        for resource in watched(config, rows)
    ]
