"""Prometheus metrics of the operator process: reconciliations, their errors and duration, runs by phase.

Served by prometheus_client on ``OPENSIR_OPERATOR_METRICS_PORT`` (absent or 0: not served) from the
startup handler, on a registry of its own so kopf's process holds nothing else under these names.
Runs by phase is computed at scrape time from the phase each run's daemon last saw, so a deleted run
drops out as soon as its daemon ends instead of leaving a stale gauge behind.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from opensir.spec import SelfPlayRunStatus

PORT_ENV = "OPENSIR_OPERATOR_METRICS_PORT"
PHASES = ("Pending", "Bootstrapping", "Training", "Evaluating", "Suspended", "Succeeded", "Failed")
"""status.phase values (DESIGN.md §4); a run without a phase yet counts as Pending."""


class OperatorMetrics(Collector):
    """Reconciliation counters and the runs-by-phase gauge (this object is its collector)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._phases: dict[tuple[str, str], str] = {}
        self.reconciliations = Counter(
            "opensir_operator_reconciliations_total",
            "Reconciliations of SelfPlayRuns, by namespace and result (ok, error)",
            ["namespace", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "opensir_operator_reconcile_duration_seconds",
            "Wall time of one reconciliation",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30),
            registry=self.registry,
        )
        self.registry.register(self)

    @contextmanager
    def reconciling(self, namespace: str, name: str, status: SelfPlayRunStatus) -> Iterator[None]:
        """Around one reconciliation of a run whose status (before it) is ``status``."""
        self._phases[(namespace, name)] = status.phase
        started = time.monotonic()
        try:
            yield
        except Exception:
            self.reconciliations.labels(namespace=namespace, result="error").inc()
            raise
        finally:
            self.duration.observe(time.monotonic() - started)
        self.reconciliations.labels(namespace=namespace, result="ok").inc()

    def forget(self, namespace: str, name: str) -> None:
        """The run's daemon ended (deleted run, or another operator took over)."""
        self._phases.pop((namespace, name), None)

    def collect(self) -> Iterable[Metric]:
        """The runs-by-phase gauge, computed now (prometheus_client calls this at every scrape)."""
        runs = GaugeMetricFamily("opensir_operator_runs", "SelfPlayRuns by status.phase", labels=["phase"])
        counts = Tally(self._phases.values())
        for phase in sorted(set(PHASES) | set(counts)):
            runs.add_metric([phase], float(counts.get(phase, 0)))
        yield runs

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` from a daemon thread for the life of the process."""
        start_http_server(port, addr=address, registry=self.registry)


METRICS = OperatorMetrics()
"""The process's metrics (one operator per process)."""
