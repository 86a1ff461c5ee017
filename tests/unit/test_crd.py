"""The CRD is generated from the spec models, structural, committed, and accepts the examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from opensir.crd import crd, crd_yaml
from opensir.spec import load_run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def schema():
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_is_the_generated_one():
    committed = (ROOT / "crds" / "selfplayrun.yaml").read_text()
    stale = "crds/selfplayrun.yaml is stale: run `opensir crd > crds/selfplayrun.yaml`"
    assert committed == crd_yaml(), stale


def test_names_status_and_columns():
    definition = crd()
    assert definition["metadata"]["name"] == "selfplayruns.opensir.io"
    names = definition["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("SelfPlayRun", "selfplayruns", ["spr"])
    version = definition["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Step": ".status.progress.step",
        "Solve-Rate": ".status.metrics.solveRate",
        "Pool": ".status.pool.size",
        "Age": ".metadata.creationTimestamp",
    }
    assert schema()["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def _walk(node, path="openAPIV3Schema"):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    # The rules of https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/
    # custom-resource-definitions/#specifying-a-structural-schema that a generator can break.
    for path, node in _walk(schema()):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "not", "const", "prefixItems"} & set(node), path
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or (node.get("x-kubernetes-preserve-unknown-fields"))
        )
        assert typed, f"{path} has no type"
        if "properties" in node:
            assert node["type"] == "object", path
        assert node.get("additionalProperties") is not False, path
        if path.count(".") >= 2 and path.startswith("openAPIV3Schema.spec"):
            assert node.get("description") or path.endswith("[]") or path.endswith("}"), path


def test_cross_field_and_immutability_rules_are_in_the_schema():
    spec_schema = schema()["properties"]["spec"]["properties"]
    assert spec_schema["model"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert spec_schema["selfPlay"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    band = spec_schema["selfPlay"]["properties"]["solveRate"]
    assert band["x-kubernetes-validations"][0]["rule"] == "self.lower < self.upper"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_crd_schema(example):
    document = yaml.safe_load(example.read_text())
    load_run(example)
    errors = list(OAS30Validator(schema()).iter_errors(document))
    assert errors == []


def test_crd_schema_rejects_what_the_models_reject():
    document = yaml.safe_load(EXAMPLES[0].read_text())
    document["spec"]["selfPlay"]["teacher"]["groupSize"] = 1
    document["spec"]["rollout"]["engine"] = "tgi"
    messages = [e.message for e in OAS30Validator(schema()).iter_errors(document)]
    assert any("1 is less than the minimum of 2" in m for m in messages), messages
    assert any("'tgi' is not one of" in m for m in messages), messages


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"tiny-cpu.yaml", "one-gpu.yaml", "paper-llama-3b.yaml"}
