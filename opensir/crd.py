"""The SelfPlayRun CustomResourceDefinition, generated from :mod:`opensir.spec`.

pydantic writes JSON Schema 2020-12 with ``$ref``s; Kubernetes wants a *structural* OpenAPI v3.0
schema: everything inlined, ``nullable`` instead of ``anyOf [.., null]``, boolean
``exclusiveMinimum``, no tuples. :func:`openapi_schema` does that translation and nothing else, so
the CRD can never drift from the models (``crds/selfplayrun.yaml`` is checked against it by a test).
"""

from __future__ import annotations

from typing import Any

import yaml

from opensir import spec

# Rules the API server enforces with CEL (the CLI and the operator enforce the same rules through
# the pydantic validators; these make `kubectl apply` refuse them too).
_SPEC_RULES: dict[str, list[dict[str, str]]] = {
    "model": [{"rule": "self == oldSelf", "message": "spec.model is immutable; create a new SelfPlayRun"}],
    "selfPlay": [
        {"rule": "self == oldSelf", "message": "spec.selfPlay is immutable; create a new SelfPlayRun"}
    ],
    "seedProblems": [
        {"rule": "self == oldSelf", "message": "spec.seedProblems is immutable; create a new SelfPlayRun"}
    ],
    "storage": [
        {
            "rule": "self.uri == oldSelf.uri",
            "message": "spec.storage.uri is immutable: the run's checkpoints live there",
            "fieldPath": ".uri",
        }
    ],
}
_OBJECT_RULES: dict[str, list[dict[str, str]]] = {
    "SolveRateBand": [
        {
            "rule": "self.lower < self.upper",
            "message": "lower must be less than upper",
            "fieldPath": ".lower",
        }
    ],
    "DeepSpeedSpec": [
        {
            "rule": "!self.offloadParams || self.stage == 3",
            "message": "offloadParams needs stage 3",
            "fieldPath": ".offloadParams",
        }
    ],
}


def openapi_schema(model: type[spec.BaseModel], *, with_defaults: bool = True) -> dict[str, Any]:
    """Structural OpenAPI v3.0 schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return _convert(raw, definitions, with_defaults, name=model.__name__)


def _convert(
    node: dict[str, Any], defs: dict[str, Any], with_defaults: bool, name: str | None = None
) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        ref_name = node.pop("$ref").rsplit("/", 1)[-1]
        merged = {**defs[ref_name], **node}
        return _convert(merged, defs, with_defaults, name=ref_name)

    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"{name}: unions other than Optional[X] cannot be structural: {options}")
        # Optional[X]: the schema of X with the field's own keywords, converted once, nullable.
        return {**_convert({**options[0], **node}, defs, with_defaults, name), "nullable": True}

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "prefixItems"):
            continue
        if key == "additionalProperties":
            # `false` is how pydantic says "extra=forbid"; Kubernetes prunes unknown fields anyway
            # and rejects the keyword, so only typed maps keep it.
            if isinstance(value, dict):
                out[key] = _convert(value, defs, with_defaults)
        elif key == "properties":
            out[key] = {k: _convert(v, defs, with_defaults) for k, v in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, with_defaults)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out[key.replace("exclusive", "").lower()] = value
            out[key] = True
        elif key == "description":
            out[key] = " ".join(value.split())
        elif key == "default":
            if with_defaults and value is not None:
                out[key] = _without_nulls(value)
        else:
            out[key] = value
    if "prefixItems" in node:
        item_types = {item.get("type") for item in node["prefixItems"]}
        if len(item_types) != 1:
            raise ValueError(f"{name}: tuples of mixed types cannot be structural")
        out["items"] = {"type": item_types.pop()}
    if "enum" in out and "type" not in out:
        kinds = {type(v) for v in out["enum"]}
        out["type"] = {str: "string", int: "integer", bool: "boolean", float: "number"}[kinds.pop()]
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if name in _OBJECT_RULES:
        out["x-kubernetes-validations"] = _OBJECT_RULES[name]
    return out


def _without_nulls(value: Any) -> Any:
    """Defaults as the API server stores them: unset optional fields are absent, not null."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _spec_schema() -> dict[str, Any]:
    schema = openapi_schema(spec.SelfPlayRunSpec)
    for field, rules in _SPEC_RULES.items():
        schema["properties"][field]["x-kubernetes-validations"] = rules
    return schema


def _status_schema() -> dict[str, Any]:
    schema = openapi_schema(spec.SelfPlayRunStatus, with_defaults=False)
    # Room for the operator's own bookkeeping (kopf's progress and diff-base), which the API
    # server would otherwise prune from the status subresource.
    schema["x-kubernetes-preserve-unknown-fields"] = True
    return schema


def crd() -> dict[str, Any]:
    """The SelfPlayRun CustomResourceDefinition."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{spec.PLURAL}.{spec.API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "opensir"},
        },
        "spec": {
            "group": spec.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": spec.KIND,
                "listKind": f"{spec.KIND}List",
                "plural": spec.PLURAL,
                "singular": spec.SINGULAR,
                "shortNames": list(spec.SHORT_NAMES),
                "categories": ["opensir"],
            },
            "versions": [
                {
                    "name": spec.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
                        {"name": "Solve-Rate", "type": "number", "jsonPath": ".status.metrics.solveRate"},
                        {"name": "Pool", "type": "integer", "jsonPath": ".status.pool.size"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": spec.SelfPlayRun.__doc__,
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _spec_schema(),
                                "status": _status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed in crds/selfplayrun.yaml."""
    header = "# Generated by `opensir crd` from opensir/spec.py. Do not edit by hand.\n"
    return header + yaml.dump(crd(), Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated defaults out in full; kubectl users read the CRD, and anchors confuse them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
