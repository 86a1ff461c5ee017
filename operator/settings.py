"""kopf's settings for the operator, applied once at startup.

They keep every mark the operator leaves on objects under ``opensir.io``, so that another kopf operator
in the cluster never mistakes them for its own, and filter the children's watch streams by label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import kopf
from opensir_operator import names
from opensir_operator.children import CHILDREN, ChildRow, watched
from opensir_operator.config import OperatorConfig


def configure(
    settings: kopf.OperatorSettings,
    config: OperatorConfig | None = None,
    rows: Sequence[ChildRow] = CHILDREN,
) -> None:
    """Apply the operator's kopf settings (called from the startup handler); ``config`` defaults to the
    environment's, ``rows`` to the operator's children."""
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
    config = OperatorConfig.from_env() if config is None else config
    for resource in watched(config, rows):
        settings.watching.label_selectors[resource.group, resource.version, resource.plural] = selector
    settings.execution.max_workers = config.workers
