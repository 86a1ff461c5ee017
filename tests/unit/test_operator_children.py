"""The operator's table of children: one row plus one builder adds a kind of child everywhere it matters
(desired children, API calls, watches and indices, watch selectors, RBAC); and the operator's imports stay
within the parts of opensir it may use."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

kopf = pytest.importorskip("kopf")
pytest.importorskip("kubernetes")

from opensir_operator import children, handlers, manifests, names, settings  # noqa: E402
from opensir_operator.children import (  # noqa: E402
    CHILDREN,
    ChildContext,
    ChildRow,
    Desired,
    Resource,
    always,
    desired_children,
    rbac_rules,
    watched,
)
from opensir_operator.config import OperatorConfig  # noqa: E402
from opensir_operator.kube import Kube  # noqa: E402
from opensir_operator.observe import ProgressReading, summarize  # noqa: E402
from opensir_operator.reconcile import STEPS, RunObject, accept, decide, execute  # noqa: E402
from test_operator_plumbing import FakeApi  # noqa: E402

from opensir.spec import SelfPlayRunStatus  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0
CONFIG = OperatorConfig(default_image="img:1")
BUDGETS = Resource("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets")


def budget(t: manifests.Target) -> manifests.Manifest:
    """The test's new builder: no voluntary eviction of the rollout servers in the middle of a run."""
    return manifests.finish(
        {
            "apiVersion": BUDGETS.api_version,
            "kind": BUDGETS.kind,
            "metadata": manifests.child_metadata(t, f"{t.name}-budget", "budget"),
            "spec": {
                "maxUnavailable": 0,
                "selector": {"matchLabels": names.selector_labels(t.name, "rollout")},
            },
        }
    )


ROWS = (*CHILDREN, ChildRow("budget", BUDGETS, always(budget)))
"""The operator's table plus the test's one row."""


def run_object(status: SelfPlayRunStatus | None = None) -> RunObject:
    spec = {
        "model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "training": {"maxSteps": 4, "saveEvery": 2, "warmupSteps": 0},
        "storage": {"uri": "file:///runs"},
    }
    return RunObject("r", "ns", "u-1", 1, {}, spec, status or SelfPlayRunStatus())


def test_one_row_and_one_builder_add_a_kind_of_child_everywhere():
    o = run_object()
    reading = ProgressReading(store_uri="file:///runs/ns/r")

    # Desired children: created with the others, then kept up to date like them.
    plan = decide(o, accept(o), {}, reading, NOW, CONFIG, rows=ROWS)
    (created,) = [m for m in plan.creates if m["kind"] == "PodDisruptionBudget"]
    assert created == budget(manifests.make_target(accept(o).run, "u-1", "img:1"))  # type: ignore[arg-type]
    seen = {(m["kind"], m["metadata"]["name"]): summarize(m) for m in plan.creates}
    again = decide(o, accept(o), seen, reading, NOW, CONFIG, rows=ROWS)
    assert not again.creates and not again.patches
    stale = {
        **seen,
        ("PodDisruptionBudget", "r-budget"): summarize({**created, "metadata": {"name": "r-budget"}}),
    }
    assert [m["kind"] for m in decide(o, accept(o), stale, reading, NOW, CONFIG, rows=ROWS).patches] == [
        "PodDisruptionBudget"
    ]
    assert not any(
        m["kind"] == "PodDisruptionBudget" for m in decide(o, accept(o), {}, reading, NOW, CONFIG).creates
    )

    # API calls: the path comes from the row.
    api = FakeApi()
    execute(plan, Kube(api, ROWS), o, {})  # type: ignore[arg-type]
    assert ("POST", "/apis/policy/v1/namespaces/ns/poddisruptionbudgets") in [
        (m, p) for m, p, _, _ in api.calls
    ]

    # Watches: an index (passed to the daemons under the row's index id) and an event handler, filtered by
    # the operator's labels on the server too.
    assert BUDGETS in watched(CONFIG, ROWS) and BUDGETS not in watched(CONFIG)
    registry = kopf.OperatorRegistry()
    assert handlers.register_children(CONFIG, ROWS, registry=registry) == watched(CONFIG, ROWS)
    indices = {h.id for h in registry._indexing.get_all_handlers()}
    events = {h.id for h in registry._watching.get_all_handlers()}
    assert "opensir_poddisruptionbudgets" in indices and "poddisruptionbudgets_changed" in events
    assert indices == {r.index_id for r in watched(CONFIG, ROWS)}
    configured = kopf.OperatorSettings()
    settings.configure(configured, CONFIG, ROWS)
    assert configured.watching.label_selectors["policy", "v1", "poddisruptionbudgets"] == (
        "app.kubernetes.io/part-of=opensir"
    )

    # RBAC: the row's resource with the child verbs (the chart must grant them: test_chart_rbac.py).
    assert {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": list(BUDGETS.verbs)} in (
        rbac_rules(CONFIG, ROWS)
    )
    assert len(rbac_rules(CONFIG, ROWS)) == len(rbac_rules(CONFIG)) + 1


def test_the_operator_watches_what_its_table_builds():
    assert watched(OperatorConfig.from_env()) == handlers.WATCHED
    assert {r.kind for r in watched(CONFIG)} == {row.resource.kind for row in CHILDREN} - {"NetworkPolicy"}
    with_policies = watched(OperatorConfig(network_policy=True))
    assert children.NETWORK_POLICIES in with_policies and children.NETWORK_POLICIES not in watched(CONFIG)
    assert CHILDREN[0].resource.kind == "ConfigMap"  # created first: the pods mount it
    assert not children.JOBS.patchable and children.DEPLOYMENTS.patchable


def test_a_row_that_builds_another_kind_is_refused():
    wrong = ChildRow("budget", children.SERVICES, always(budget))
    run = accept(run_object()).run
    assert run is not None
    context = ChildContext(
        target=manifests.make_target(run, "u-1", "img"),
        config=CONFIG,
        observed={},
        running=True,
        suspended=False,
        bootstrap=False,
        replace_train=False,
        attempt=0,
        eval_step=None,
    )
    with pytest.raises(ValueError, match="built a PodDisruptionBudget"):
        desired_children(context, (wrong,))
    assert all(isinstance(w, Desired) for _, w in desired_children(context))


def test_decide_is_a_list_of_small_steps():
    assert [step.__name__ for step in STEPS] == [
        "training_outcome",
        "bootstrap_phase",
        "evaluations",
        "converge_children",
        "lifecycle_phase",
        "status_conditions",
    ]


# ------------------------------------------------------------------------------------------ imports
ALLOWED = {"opensir.spec", "opensir.layout", "opensir.storage", "opensir.serving", "opensir.errors"}
FORBIDDEN = ("opensir.engines", "opensir.loop", "opensir.cli", "torch", "transformers")


def test_the_operator_imports_only_the_spec_the_store_layout_and_serving():
    for path in sorted((ROOT / "operator").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            for module in modules:
                if module == "opensir" or module.startswith("opensir."):
                    assert module in ALLOWED, f"{path.name} imports {module}"
                assert not module.startswith(FORBIDDEN), f"{path.name} imports {module}"


def test_importing_the_operator_loads_no_engine_nor_torch(tmp_path: Path):
    """The operator's process, as the chart starts it with networkPolicy.enabled."""
    code = (
        "import json, sys; from opensir_operator import handlers; print(json.dumps(["
        "sorted(m for m in sys.modules if m.split('.')[0] in ('opensir', 'torch', 'transformers')),"
        "[r.plural for r in handlers.WATCHED]]))"
    )
    env = {**os.environ, "OPENSIR_NETWORK_POLICY": "true"}
    # Not from the repository root, where operator/ would shadow the standard library's operator module.
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    loaded, plurals = json.loads(result.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith(FORBIDDEN)], loaded
    assert plurals == [r.plural for r in watched(OperatorConfig(network_policy=True))]
    assert "networkpolicies" in plurals
