"""kmock 0.8 as a Kubernetes API server in its own process, for the operator's end-to-end tests.

Started by tests/e2e/conftest.py as ``python kmock_server.py``; prints ``{"port": N}`` on its first line
of stdout and serves until SIGTERM. It adds to kmock's KubernetesEmulator what the operator and kopf rely
on (DESIGN.md §5): metadata.uid/resourceVersion/generation/creationTimestamp on create and patch
(generation only on spec changes), names from generateName, status isolation for resources with a status
subresource, 422 on a failed JSON-patch ``test``, and ``/api/v1/namespaces`` paths. Every API request
is recorded; ``GET /_kmock/requests`` returns the record.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import re
import secrets
import signal
import sys
import uuid
from typing import Any

import attrs
import jsonpatch
import kmock
from kmock._internal import dicts, enums, parsing, rendering

RESOURCES: dict[str, dict[str, Any]] = {
    "opensir.io/v1alpha1/selfplayruns": {
        "kind": "SelfPlayRun",
        "singular": "selfplayrun",
        "shortnames": {"spr"},
        "subresources": {"status"},
    },
    "v1/configmaps": {"kind": "ConfigMap", "singular": "configmap", "shortnames": {"cm"}},
    "v1/services": {
        "kind": "Service",
        "singular": "service",
        "shortnames": {"svc"},
        "subresources": {"status"},
    },
    "v1/secrets": {"kind": "Secret", "singular": "secret"},
    "v1/events": {"kind": "Event", "singular": "event", "shortnames": {"ev"}},
    "apps/v1/deployments": {
        "kind": "Deployment",
        "singular": "deployment",
        "shortnames": {"deploy"},
        "subresources": {"status", "scale"},
    },
    "batch/v1/jobs": {"kind": "Job", "singular": "job", "subresources": {"status"}},
}
CLUSTER_RESOURCES: dict[str, dict[str, Any]] = {
    "v1/namespaces": {
        "kind": "Namespace",
        "singular": "namespace",
        "shortnames": {"ns"},
        "subresources": {"status", "finalize"},
    },
}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
WITH_STATUS = {
    key.rsplit("/", 1)[-1] for key, info in RESOURCES.items() if "status" in info.get("subresources", ())
}


# ----------------------------------------------------------------------------------- path parsing
_original_parse_path = parsing.parse_path
_NAMESPACES = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|finalize))?/?$")


def parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 reads ``/api/v1/namespaces/X`` as "namespace X" (and fails on ``/api/v1/namespaces``);
    for the cluster-scoped Namespace resource it is the object X of plural ``namespaces``."""
    match = _NAMESPACES.match(path)
    if match:
        return parsing.ParsedPath("", "v1", "namespaces", None, match["name"], match["sub"])
    return _original_parse_path(path)


parsing.parse_path = parse_path


# ----------------------------------------------------------------------------------- the emulator
class UnprocessableError(kmock.KubernetesError):
    pass


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator with the object metadata a real API server maintains."""

    log: list[dict[str, Any]] = attrs.field(factory=list)
    _versions: Any = attrs.field(factory=lambda: itertools.count(1000))
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    def _next_version(self) -> str:
        return str(next(self._versions))

    async def _handle(self, request: rendering.Request) -> Any:
        if request.url.path.startswith("/_kmock/"):
            return await super()._handle(request)
        record = _record(request)
        self.log.append(record)
        try:
            return await self._handle_recorded(request, record)
        finally:
            # kmock matches every request against every request it has ever seen (quadratic); the
            # history lives in self.log, so kmock keeps only the requests in flight.
            self._requests[:] = [r for r in self._requests if r is not request]

    async def _handle_recorded(self, request: rendering.Request, record: dict[str, Any]) -> Any:
        try:
            if request.resource is not None and request.action in (enums.action.CREATE, enums.action.UPDATE):
                async with self._writes:
                    self._stamp(request)
                    response = await super()._handle(request)
            else:
                response = await super()._handle(request)
        except Exception as error:
            record["status"] = getattr(error, "status", 500)
            raise
        record["status"] = response.status
        return response

    def _stamp(self, request: rendering.Request) -> None:
        plural = request.resource.plural
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            now = (
                datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
            )
            meta.update(
                uid=str(uuid.uuid4()),
                resourceVersion=self._next_version(),
                generation=1,
                creationTimestamp=now,
            )
            if plural in WITH_STATUS:
                request.data.pop("status", None)
            return
        key = (request.resource, request.namespace, request.name)
        if request.name is None or key not in self.objects or self.objects[key].deleted:
            return  # kmock answers 404
        current = self.objects[key].raw
        version = self._next_version()
        if isinstance(request.data, list):  # a JSON patch: its `test` ops must hold now, else 422
            try:
                jsonpatch.apply_patch(current, request.data)
            except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchTestFailed) as error:
                raise UnprocessableError(status=422, reason="Invalid", message=str(error)) from None
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            return
        if not isinstance(request.data, dict):
            return
        data = request.data
        if plural in WITH_STATUS:
            if request.subresource == "status":
                kept = {"status": data.get("status")} if "status" in data else {}
                data.clear()
                data.update(kept)
            else:
                data.pop("status", None)
        meta = dict(data.get("metadata") or {})
        meta["resourceVersion"] = version
        if request.subresource is None and isinstance(data.get("spec"), dict):
            spec = dicts.merge_patch_dict(current.get("spec") or {}, data["spec"])
            if spec != current.get("spec"):
                meta["generation"] = int(current.get("metadata", {}).get("generation") or 1) + 1
        data["metadata"] = meta


def _record(request: rendering.Request) -> dict[str, Any]:
    resource = request.resource
    data = request.data if isinstance(request.data, dict) else {}
    name = request.name or (data.get("metadata") or {}).get("name")
    return {
        "method": request.method,
        "path": request.url.path,
        "query": dict(request.params or {}),
        "action": None if request.action is None else str(request.action.value),
        "group": None if resource is None else resource.group,
        "version": None if resource is None else resource.version,
        "resource": None if resource is None else resource.plural,
        "subresource": request.subresource,
        "namespace": request.namespace,
        "name": name,
        "userAgent": (request.headers or {}).get("User-Agent", ""),
        "status": None,
    }


async def main() -> None:
    emulator = Emulator()
    for key, info in RESOURCES.items():
        emulator.resources[key] = kmock.ResourceInfo(namespaced=True, verbs=VERBS, **info)
    for key, info in CLUSTER_RESOURCES.items():
        emulator.resources[key] = kmock.ResourceInfo(namespaced=False, verbs=VERBS, **info)

    async def serve_log(request: rendering.Request) -> dict[str, Any]:
        return {"items": emulator.log}

    emulator["get /_kmock/requests"] << serve_log
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with emulator, kmock.Server(emulator) as server:
        sys.stdout.write(json.dumps({"port": server.port}) + "\n")
        sys.stdout.flush()
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
