"""The operator's own configuration: kopf settings and what comes from the environment.

Everything here is read once at startup. The environment is the Helm chart's interface to the operator
(image defaults, resync period); kopf's settings keep every mark the operator leaves on objects under
``opensir.io`` so that another kopf operator in the cluster never mistakes them for its own.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from opensir_operator import names

DEFAULT_IMAGE = "ghcr.io/opensir/opensir-runtime:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide defaults that a SelfPlayRun does not carry."""

    default_image: str = DEFAULT_IMAGE
    """Runtime image of the trainer and servers when spec.cluster.image is not set."""
    resync_seconds: float = 30.0
    """Longest time between two reconciliations of a run when nothing changes: progress.json lives in
    object storage, which sends no watch events, so it is re-read at this period (and stalls noticed)."""
    workers: int = 8
    """Threads for blocking Kubernetes API and storage calls (shared by all runs)."""
    network_policy: bool = False
    """Give every run a NetworkPolicy that admits traffic to its pods only from its own pods (the
    rollout servers' development routes and the weight-sync port must not be open to the cluster)."""
    network_policy_extra_ingress: tuple[dict[str, Any], ...] = ()
    """NetworkPolicyIngressRule objects appended to every run's policy (e.g. Prometheus on metrics)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if environ is None else environ
        return cls(
            default_image=env.get("OPENSIR_RUNTIME_IMAGE", DEFAULT_IMAGE),
            resync_seconds=float(env.get("OPENSIR_RESYNC_SECONDS", "30")),
            workers=int(env.get("OPENSIR_OPERATOR_WORKERS", "8")),
            network_policy=env.get(NETWORK_POLICY_ENV, "false").strip().lower() == "true",
            network_policy_extra_ingress=_ingress_rules(env.get(EXTRA_INGRESS_ENV, "")),
        )


NETWORK_POLICY_ENV = "OPENSIR_NETWORK_POLICY"
EXTRA_INGRESS_ENV = "OPENSIR_NETWORK_POLICY_EXTRA_INGRESS"


def _ingress_rules(text: str) -> tuple[dict[str, Any], ...]:
    if not text.strip():
        return ()
    try:
        rules = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"${EXTRA_INGRESS_ENV} is not JSON ({error}): {text[:200]!r}") from error
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise ValueError(f"${EXTRA_INGRESS_ENV} must be a JSON list of NetworkPolicyIngressRule objects")
    return tuple(rules)


CHILD_RESOURCES = (
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("apps", "v1", "deployments"),
    ("batch", "v1", "jobs"),
)
NETWORK_POLICIES = ("networking.k8s.io", "v1", "networkpolicies")
"""Watched (and built) only with ``network_policy``: the operator has no RBAC for them otherwise."""


def configure(settings: kopf.OperatorSettings) -> None:
    """Apply the operator's kopf settings (called from the startup handler)."""
    # Marks on objects live under our own group, never kopf's defaults.
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    # One replica by design (the chart's Deployment has replicas: 1 and strategy Recreate): standalone
    # mode needs no KopfPeering CRD nor RBAC for it. Running two replicas would double-reconcile.
    settings.peering.standalone = True
    # The watched resources are fixed; scanning for CRDs and namespaces would only need more RBAC.
    settings.scanning.disabled = True
    # Handler chatter as Kubernetes Events floods the API with 50 runs; warnings (refused spec changes,
    # failures) are what a user of `kubectl describe` needs.
    settings.posting.level = logging.WARNING
    # Server-side filtering of the children's watch streams (clients filter by labels again).
    selector = f"{names.PART_OF}={names.PART_OF_VALUE}"
    config = OperatorConfig.from_env()
    for group, version, plural in CHILD_RESOURCES + ((NETWORK_POLICIES,) if config.network_policy else ()):
        settings.watching.label_selectors[group, version, plural] = selector
    settings.execution.max_workers = config.workers
