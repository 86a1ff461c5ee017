"""Names, labels and annotations of a SelfPlayRun's children (DESIGN.md §4).

Children have deterministic names derived from the run's name, so that an operator that restarts (or a
second reconciliation racing the first) finds what already exists instead of creating a duplicate.
"""

from __future__ import annotations

from opensir.spec import API_GROUP, API_VERSION, KIND, PLURAL

GROUP = API_GROUP
VERSION = API_VERSION
RUN_KIND = KIND
RUN_PLURAL = PLURAL
RUN_API_VERSION = f"{API_GROUP}/{API_VERSION}"

# Common labels: the first two are the contract of DESIGN.md §4 (selectors, dashboards, RBAC rules).
PART_OF = "app.kubernetes.io/part-of"
PART_OF_VALUE = "opensir"
RUN_LABEL = f"{GROUP}/run"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "opensir-operator"
INSTANCE = "app.kubernetes.io/instance"
NAME = "app.kubernetes.io/name"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"

# Annotations the operator owns.
SPEC_HASH = f"{GROUP}/spec-hash"
"""On every child: hash of the manifest the operator built, to patch only what really changed."""
ATTEMPT = f"{GROUP}/attempt"
"""On the training Job: which restart it is (0 = first), so a restart is counted exactly once."""
ACCEPTED_SPEC = f"{GROUP}/accepted-spec"
"""On the SelfPlayRun: the last spec the operator accepted, to refuse changes of immutable fields."""
EVAL_STEP = f"{GROUP}/eval-step"
"""On evaluation Jobs: the checkpoint step they evaluate."""

FINALIZER = f"{GROUP}/finalizer"

ROLLOUT_PORT = 8000
RENDEZVOUS_PORT = 29500
WEIGHT_SYNC_PORT = 29600
"""The trainer's port for the broadcast weight sync (the rollout servers connect to it)."""
METRICS_PORT = 9400
CONFIG_DIR = "/etc/opensir"
CONFIG_KEY = "run.yaml"


def config_name(run: str) -> str:
    """The ConfigMap with the run's run.yaml."""
    return f"{run}-config"


def network_policy_name(run: str) -> str:
    """The NetworkPolicy around the run's pods."""
    return f"{run}-network"


def rollout_name(run: str) -> str:
    """The rollout server's Deployment and Service."""
    return f"{run}-rollout"


def embed_name(run: str) -> str:
    """The embedding server's Deployment and Service."""
    return f"{run}-embed"


def bootstrap_name(run: str) -> str:
    """The bootstrap Job."""
    return f"{run}-bootstrap"


def train_name(run: str) -> str:
    """Name of the training Job and, for multi-node runs, of its headless rendezvous Service."""
    return f"{run}-train"


def eval_name(run: str, step: int) -> str:
    """The evaluation Job of the checkpoint at ``step``."""
    return f"{run}-eval-{step}"


def common_labels(run: str, component: str) -> dict[str, str]:
    """The labels of every child and of its pods."""
    return {
        PART_OF: PART_OF_VALUE,
        RUN_LABEL: run,
        COMPONENT: component,
        MANAGED_BY: MANAGED_BY_VALUE,
        INSTANCE: run,
        NAME: "opensir",
    }


def selector_labels(run: str, component: str) -> dict[str, str]:
    """The immutable subset used in Deployment/Service selectors (never add to it: selectors are frozen)."""
    return {RUN_LABEL: run, COMPONENT: component}
