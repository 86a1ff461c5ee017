"""The operator's own configuration: what the Helm chart sets through the environment, read once at
startup (image defaults, resync period, workers, the per-run NetworkPolicy)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
        """The configuration the chart sets through the environment (``os.environ`` by default)."""
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
