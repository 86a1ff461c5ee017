"""A real Prometheus scrapes a real self-play run: every documented runner metric and every query of every
dashboard panel returns data for the run.

One short run (the tiny example shrunk like tests/e2e/test_tiny_run.py, one step) is driven in-process by
:func:`opensir.loop.run.run_selfplay` with a :class:`~opensir.loop.metrics.RunMetrics` this module serves on
127.0.0.1, so the exporter stays up after the run for as long as the assertions need it. Prometheus (the
Debian package, scripts/install_prometheus.sh) is started by the fixture with a generated config that
scrapes that port every second, and stopped by PID. Nothing waits on a clock: every check waits for an
observable state (target health, a query returning data) under a generous deadline.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from opensir.cli.common import load_with_overrides
from opensir.loop import RunResult, run_selfplay
from opensir.loop.metrics import RunMetrics, gpu_available

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import build_dashboard  # noqa: E402  (scripts/ is not a package)
from tiny import FAST_OVERRIDES  # noqa: E402

DEADLINE_SECONDS = 120.0
NAMESPACE, RUN = "default", "tiny-cpu"
SMALLER = [*FAST_OVERRIDES, "training.maxSteps=1"]
# What Grafana substitutes for its variables; the range covers the whole run.
VARIABLES = {"$namespace": NAMESPACE, "$run": RUN, "$__rate_interval": "30m"}
T = TypeVar("T")


@dataclass(frozen=True)
class ObservedRun:
    prometheus: str
    """Base URL of the Prometheus HTTP API."""
    result: RunResult
    metrics: RunMetrics


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait_for(what: str, probe: Callable[[], T | None]) -> T:
    """``probe()`` until it returns something other than None, or fail after the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except OSError as error:  # not listening yet
            last_error, value = error, None
        if value is not None:
            return value
        time.sleep(0.5)
    raise AssertionError(
        f"gave up waiting for {what} after {DEADLINE_SECONDS:.0f}s (last error: {last_error})"
    )


def query(base: str, expr: str) -> list[dict[str, Any]]:
    """An instant query; raises on a PromQL error, returns the (possibly empty) result."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = get_json(url)
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{expr}: {error.read().decode()}") from None
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def query_with_data(base: str, expr: str) -> list[dict[str, Any]]:
    return wait_for(f"data for {expr}", lambda: query(base, expr) or None)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedRun]:
    prometheus_binary = shutil.which("prometheus")
    assert prometheus_binary, "prometheus is not on PATH: run scripts/install_prometheus.sh"
    scratch = tmp_path_factory.mktemp("prometheus")
    run = load_with_overrides(
        ROOT / "examples" / "tiny-cpu.yaml", [*SMALLER, f"storage.uri=file://{scratch / 'runs'}"]
    )
    metrics = RunMetrics(run.metadata.namespace, run.metadata.name)
    with metrics.serve(0, "127.0.0.1") as server:
        config = scratch / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: opensir\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
        )
        port = free_port()
        log = (scratch / "prometheus.log").open("w")
        process = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={scratch / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                "Prometheus ready",
                lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=5).status == 200 or None,
            )
            wait_for("the run's target to be up", lambda: _target_up(base))
            result = run_selfplay(run, fresh=True, metrics=metrics)
            yield ObservedRun(base, result, metrics)
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()


def _target_up(base: str) -> bool | None:
    targets = get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
    return True if targets and all(t["health"] == "up" for t in targets) else None


# --------------------------------------------------------------------------------------------- tests
def documented_metrics() -> dict[str, str]:
    """Metric name -> type, from the chart README's metric table (the names the dashboard relies on)."""
    readme = (ROOT / "charts" / "opensir" / "README.md").read_text()
    table = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(opensir_[a-z_]+)` \| (\w+) \| (\w+)", table, flags=re.MULTILINE)
    return {name: kind for name, kind, source in rows if source == "runner"}


def test_every_documented_runner_metric_is_scraped(observed: ObservedRun) -> None:
    documented = documented_metrics()
    assert len(documented) >= 30
    for name, kind in documented.items():
        if name.startswith("opensir_gpu_") and not gpu_available():
            continue
        series = f"{name}_count" if kind == "histogram" else name
        result = query_with_data(observed.prometheus, f'{series}{{namespace="{NAMESPACE}", run="{RUN}"}}')
        assert result, name


def test_the_scraped_values_describe_the_run(observed: ObservedRun) -> None:
    base = observed.prometheus

    def value(expr: str) -> float:
        return float(query_with_data(base, expr)[0]["value"][1])

    assert value("opensir_runner_step_steps") == observed.result.steps == 1
    assert value("opensir_runner_max_steps_steps") == 1
    assert value("opensir_runner_steps_total") == 1
    assert value("opensir_checkpoint_last_step_steps") == 1
    assert value("opensir_checkpoint_age_seconds") >= 0
    assert value('opensir_selfplay_problems_total{outcome="generated"}') == 4  # groupSize 2 x upscale 2
    assert value("opensir_selfplay_solve_rate_ratio_count") == value(
        'opensir_selfplay_problems_total{outcome="answered"}'
    )
    assert value("opensir_pool_size_problems") == observed.result.pool_size
    assert value('opensir_generation_tokens_total{role="teacher"}') > 0
    phases = {
        r["metric"]["phase"] for r in query_with_data(base, "opensir_runner_phase_duration_seconds_count")
    }
    assert {"teacher_generation", "embedding", "rewards", "checkpoint"} <= phases
    # The seeded tiny run trains on its one step (the loss, KL and weight series depend on it).
    assert observed.result.trained_steps == 1
    assert value("opensir_trainer_optimizer_step_steps") == 1
    assert value("opensir_weightsync_served_version") == 2  # the initial weights, then the step's
    assert math.isfinite(value("opensir_trainer_loss"))
    assert "training" in phases and "weight_sync" in phases


def dashboard_targets() -> list[tuple[str, str]]:
    panels = [p for p in build_dashboard.dashboard()["panels"] if p["type"] != "row"]
    return [(p["title"], target["expr"]) for p in panels for target in p["targets"]]


def substitute(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, expr
    return expr


@pytest.mark.parametrize(
    ("title", "expr"), dashboard_targets(), ids=[f"{t}:{e[:40]}" for t, e in dashboard_targets()]
)
def test_every_dashboard_query_returns_data(observed: ObservedRun, title: str, expr: str) -> None:
    if any(m in expr for m in build_dashboard.GPU_METRICS) and not gpu_available():
        assert query(observed.prometheus, substitute(expr)) == []  # valid PromQL, no GPU here
        return
    assert query_with_data(observed.prometheus, substitute(expr)), title


def test_dashboard_variables_find_the_run(observed: ObservedRun) -> None:
    for variable in build_dashboard.dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert match, variable["definition"]
        selector, label = substitute(match.group(1)), match.group(2)
        url = f"{observed.prometheus}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
            {"match[]": selector}
        )
        values = wait_for(f"{label} values", lambda url=url: get_json(url)["data"] or None)
        assert {NAMESPACE, RUN} & set(values), (variable["name"], values)
