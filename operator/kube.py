"""A small client for the few API calls the operator makes, on the official ``kubernetes`` client.

It speaks raw JSON (no model classes): the manifests are built as dicts and never need deserialising,
which is also several times cheaper with many runs. Patches are JSON merge patches, whose list semantics
(replace the whole list) are what a reconciler that owns the whole object wants.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from opensir_operator import names
from opensir_operator.children import CHILDREN, ChildRow, Resource, resources

log = logging.getLogger(__name__)

USER_AGENT = "opensir-operator/0.1"

RUN = Resource(names.RUN_KIND, names.GROUP, names.VERSION, names.RUN_PLURAL)
MERGE_PATCH = "application/merge-patch+json"


def api_client(workers: int = 8) -> client.ApiClient:
    """In-cluster credentials in a pod, else the kubeconfig (KUBECONFIG), as kubectl does."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        # KUBECONFIG is read now, not when the kubernetes package was imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    configuration.connection_pool_maxsize = max(workers, 4)
    api = client.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


class Kube:
    """Create, patch and delete children and patch SelfPlayRuns; idempotent where reconciliation needs.

    The API path of a child comes from its kind's row in the table of children (``rows``)."""

    def __init__(self, api: client.ApiClient, rows: Sequence[ChildRow] = CHILDREN) -> None:
        self.api = api
        self.resources = {resource.kind: resource for resource in (*resources(rows), RUN)}

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        response = self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        data = response.data
        return json.loads(data) if data else {}

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create and return the object; None when it already exists (made by an earlier reconciliation
        whose result the watch has not shown yet, or by someone else)."""
        path = self.resources[manifest["kind"]].collection_path(manifest["metadata"]["namespace"])
        try:
            return self._call("POST", path, manifest)
        except ApiException as error:
            if error.status == 409:
                log.info("%s %s already exists", manifest["kind"], manifest["metadata"]["name"])
                return None
            raise

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> bool:
        """Merge-patch; False when the object is gone (the next reconciliation recreates it)."""
        path = self.resources[kind].collection_path(namespace) + f"/{name}"
        try:
            self._call("PATCH", path, body, MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (pods go with their owner); False when it was already gone."""
        path = self.resources[kind].collection_path(namespace) + f"/{name}"
        try:
            self._call("DELETE", path, {"propagationPolicy": "Background"})
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def patch_run(self, namespace: str, name: str, body: dict[str, Any]) -> bool:
        """Merge-patch a SelfPlayRun's metadata or spec; False when it is gone."""
        return self.patch(names.RUN_KIND, namespace, name, body)

    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patch a SelfPlayRun's status subresource (a serialised status); False when it is gone."""
        path = RUN.collection_path(namespace) + f"/{name}/status"
        try:
            self._call("PATCH", path, {"status": status}, MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True
