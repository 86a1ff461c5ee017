"""Prometheus metrics of a self-play run (DESIGN.md §6: ``opensir_<subsystem>_<name>_<unit>``).

One :class:`RunMetrics` per run, on its own :class:`~prometheus_client.CollectorRegistry`: two runs in
one process (tests) never share series, and every series carries the ``namespace`` and ``run`` labels,
so a Prometheus that scrapes many trainer pods can tell them apart without relabelling.

The loop calls a handful of hooks with its typed records (:class:`~opensir.selfplay.Round`,
:class:`~opensir.seams.TrainStats`, :class:`~opensir.checkpoint.Checkpoint`,
:class:`~opensir.layout.StepRecord`); the recorder never reaches into the loop. The reward
components are the terms of :data:`~opensir.selfplay.TEACHER_TERMS` and
:data:`~opensir.selfplay.STUDENT_TERMS`, so a new term is recorded without a change here. Values that
are only meaningful at read time (seconds since the last checkpoint, GPU memory) are computed when
Prometheus scrapes, not on a timer.

Dimensionless quantities in [0, 1] end in ``_ratio``; counts of things end in the thing's plural
(``_problems``, ``_tokens``); loss, KL and gradient norm have no physical unit and carry none.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from opensir.selfplay import STUDENT_TERMS, TEACHER_TERMS, RewardTerm, Round

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from opensir.checkpoint import Checkpoint
    from opensir.layout import StepRecord
    from opensir.seams import TrainStats

METRICS_PORT_ENV = "OPENSIR_METRICS_PORT"
"""The trainer pod's metrics port (set by the operator; the pod's container port named ``metrics``)."""

PHASES = (
    "teacher_generation",
    "student_generation",
    "embedding",
    "rewards",
    "training",
    "weight_sync",
    "checkpoint",
)
"""Phases of a step, as the runner's phase timer names them (``checkpoint`` only on save steps)."""


def components(terms: Sequence[RewardTerm[Any]]) -> tuple[str, ...]:
    """The ``component`` label values of one role's reward: its terms, then ``total``."""
    return (*(term.name for term in terms), "total")


_RATIO_BUCKETS = tuple(i / 10 for i in range(11))
"""Solve rates are i/n for n samples; tenths resolve every n up to 10 well enough for a heatmap."""
_LENGTH_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


class RunMetrics:
    """The metrics of one run; hooks are cheap and safe to call whether or not anything serves them."""

    def __init__(self, namespace: str, run: str, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._base = {"namespace": namespace, "run": run}
        self._novelty_sum = 0.0
        self._novelty_count = 0
        self._last_checkpoint_time: float | None = None
        base = ("namespace", "run")
        r = self.registry

        # Curriculum and rewards.
        self.reward = Gauge(
            "opensir_selfplay_reward_ratio",
            "Mean reward term of the last step, per role and component (total is the weighted sum)",
            [*base, "role", "component"],
            registry=r,
        )
        self.solve_rate = Histogram(
            "opensir_selfplay_solve_rate_ratio",
            "Solve rate (majority-agreeing share of student samples) of each answered generated problem",
            base,
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.legal_ratio = Gauge(
            "opensir_selfplay_legal_problems_ratio",
            "Share of the last step's teacher completions that were legal problems",
            base,
            registry=r,
        )
        self.in_band_ratio = Gauge(
            "opensir_selfplay_in_band_problems_ratio",
            "Share of the last step's legal problems whose solve rate is inside the band",
            base,
            registry=r,
        )
        self.difficulty = Gauge(
            "opensir_selfplay_difficulty_ratio",
            "Mean difficulty (solvability triangle of the solve rate) of the last step's legal problems",
            base,
            registry=r,
        )
        self.diversity = Gauge(
            "opensir_selfplay_diversity_ratio",
            "Mean diversity (embedding distance to the pool) of the last step's legal problems",
            base,
            registry=r,
        )
        self.problems = Counter(
            "opensir_selfplay_problems_total",
            "Teacher completions, by outcome: generated, legal, answered (has a majority answer), in_band",
            [*base, "outcome"],
            registry=r,
        )
        self.steps_without_legal = Gauge(
            "opensir_selfplay_steps_without_legal_problems_steps",
            "Consecutive steps, up to the last one, in which no teacher completion was a legal problem",
            base,
            registry=r,
        )
        # Pool.
        self.pool_size = Gauge(
            "opensir_pool_size_problems", "Problems in the pool after the last step", base, registry=r
        )
        self.pool_novelty = Gauge(
            "opensir_pool_novelty_mean_ratio",
            "Mean novelty (diversity reward when added) of the problems this process added to the pool",
            base,
            registry=r,
        )
        # Generation.
        self.completion_length = Histogram(
            "opensir_generation_completion_length_tokens",
            "Tokens of each generated completion, per role",
            [*base, "role"],
            buckets=_LENGTH_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "opensir_generation_tokens_total", "Tokens generated, per role", [*base, "role"], registry=r
        )
        # Runner.
        self.phase_seconds = Histogram(
            "opensir_runner_phase_duration_seconds",
            "Wall time of each phase of a step",
            [*base, "phase"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "opensir_runner_step_duration_seconds",
            "Wall time of one self-play step",
            base,
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.steps = Counter(
            "opensir_runner_steps_total", "Self-play steps completed by this process", base, registry=r
        )
        self.skipped = Counter(
            "opensir_runner_skipped_steps_total",
            "Steps with nothing to train on (no problem had a majority answer)",
            base,
            registry=r,
        )
        self.step = Gauge(
            "opensir_runner_step_steps", "Self-play steps completed by the run", base, registry=r
        )
        self.max_steps = Gauge("opensir_runner_max_steps_steps", "spec.training.maxSteps", base, registry=r)
        self.last_step_time = Gauge(
            "opensir_runner_last_step_timestamp_seconds",
            "When the last step finished (Unix time)",
            base,
            registry=r,
        )
        # Trainer.
        self.optimizer_step = Gauge(
            "opensir_trainer_optimizer_step_steps", "Optimizer steps taken by the policy", base, registry=r
        )
        self.loss = Gauge("opensir_trainer_loss", "GRPO loss of the last optimizer step", base, registry=r)
        self.kl = Gauge(
            "opensir_trainer_kl",
            "Mean KL estimate to the reference of the last optimizer step",
            base,
            registry=r,
        )
        self.grad_norm = Gauge(
            "opensir_trainer_grad_norm",
            "Gradient norm (before clipping) of the last optimizer step",
            base,
            registry=r,
        )
        # Weight sync.
        self.weight_version = Gauge(
            "opensir_weightsync_served_version", "Weights version the generator serves", base, registry=r
        )
        self.sync_attempts = Counter(
            "opensir_weightsync_attempts_total", "Weight pushes to the generator", base, registry=r
        )
        self.sync_failures = Counter(
            "opensir_weightsync_failures_total", "Weight pushes that raised", base, registry=r
        )
        # Checkpoints.
        self.checkpoint_step = Gauge(
            "opensir_checkpoint_last_step_steps", "Step of the last committed checkpoint", base, registry=r
        )
        self.checkpoint_time = Gauge(
            "opensir_checkpoint_last_commit_timestamp_seconds",
            "When the last checkpoint was committed (Unix time)",
            base,
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "opensir_checkpoint_age_seconds",
            "Seconds since the last committed checkpoint (absent until there is one)",
            base,
            registry=r,
        )
        if gpu_available():
            r.register(GpuCollector(namespace, run))

    # ------------------------------------------------------------------------------------- hooks
    def started(self, *, step: int, max_steps: int, checkpoint: Checkpoint | None) -> None:
        """The run starts (or resumes) at ``step``."""
        self.step.labels(**self._base).set(step)
        self.max_steps.labels(**self._base).set(max_steps)
        self.last_step_time.labels(**self._base).set(time.time())  # "stalled" counts from the start
        self.steps_without_legal.labels(**self._base).set(0)
        for role, terms in (("teacher", TEACHER_TERMS), ("student", STUDENT_TERMS)):
            for component in components(terms):
                self.reward.labels(**self._base, role=role, component=component)
        for counter in (self.steps, self.skipped, self.sync_attempts, self.sync_failures):
            counter.labels(**self._base)
        for outcome in ("generated", "legal", "answered", "in_band"):
            self.problems.labels(**self._base, outcome=outcome)
        if checkpoint is not None:
            self.checkpoint_committed(checkpoint)

    def round_scored(self, round_: Round) -> None:
        """After rewards: the curriculum, the rewards per role and component, completion lengths."""
        legal = round_.legal
        for role, rewards in (
            ("teacher", [c.reward for c in round_.candidates]),
            ("student", [s.reward for c in legal for s in c.samples]),
        ):
            names = sorted({name for r in rewards for name in r.terms}) if rewards else []
            for component in names:
                values = [r.terms.get(component, 0.0) for r in rewards]
                self.reward.labels(**self._base, role=role, component=component).set(_mean(values))
            self.reward.labels(**self._base, role=role, component="total").set(
                _mean([r.total for r in rewards])
            )
        for candidate in legal:
            if candidate.answered and candidate.vote is not None:
                self.solve_rate.labels(**self._base).observe(candidate.vote.solve_rate)
        stats = round_.stats
        for outcome, count in (
            ("generated", stats.completions),
            ("legal", stats.legal),
            ("answered", stats.answered),
            ("in_band", stats.in_band),
        ):
            self.problems.labels(**self._base, outcome=outcome).inc(count)
        self.difficulty.labels(**self._base).set(_mean([c.difficulty for c in legal]))
        diversity = [c.diversity for c in legal if c.diversity is not None]
        self.diversity.labels(**self._base).set(_mean(diversity))
        self._novelty_sum += sum(diversity)
        self._novelty_count += len(diversity)
        if self._novelty_count:
            self.pool_novelty.labels(**self._base).set(self._novelty_sum / self._novelty_count)
        without = self.steps_without_legal.labels(**self._base)
        if stats.legal:
            without.set(0)
        else:
            without.inc()
        teacher_lengths = [len(c.played.completion.token_ids) for c in round_.candidates]
        student_lengths = [len(s.completion.token_ids) for c in legal for s in c.samples]
        for role, counts in (("teacher", teacher_lengths), ("student", student_lengths)):
            histogram = self.completion_length.labels(**self._base, role=role)
            for count in counts:
                histogram.observe(count)
            self.tokens.labels(**self._base, role=role).inc(sum(counts))

    def trained(self, stats: TrainStats) -> None:
        """After the optimizer step, before the runner checks the loss: a NaN must reach the alert."""
        self.optimizer_step.labels(**self._base).set(stats.step)
        self.loss.labels(**self._base).set(stats.loss)
        self.kl.labels(**self._base).set(stats.kl)
        self.grad_norm.labels(**self._base).set(stats.grad_norm)

    @contextmanager
    def weight_sync(self) -> Iterator[None]:
        """Around a weight push: counts attempts and failures; the failure still propagates."""
        self.sync_attempts.labels(**self._base).inc()
        try:
            yield
        except BaseException:
            self.sync_failures.labels(**self._base).inc()
            raise

    def weights_served(self, version: int) -> None:
        self.weight_version.labels(**self._base).set(version)

    def step_finished(self, record: StepRecord) -> None:
        """End of a step: progress, pool size and the phase durations of the step."""
        self.steps.labels(**self._base).inc()
        if not record.trained:
            self.skipped.labels(**self._base).inc()
        self.step.labels(**self._base).set(record.step)
        self.last_step_time.labels(**self._base).set(time.time())
        self.legal_ratio.labels(**self._base).set(record.legal_ratio)
        self.in_band_ratio.labels(**self._base).set(record.in_band_ratio)
        self.pool_size.labels(**self._base).set(record.pool_size)
        self.step_seconds.labels(**self._base).observe(record.seconds)
        for phase, seconds in record.phase_seconds.items():
            self.phase_seconds.labels(**self._base, phase=phase).observe(seconds)

    def checkpoint_committed(self, checkpoint: Checkpoint, seconds: float | None = None) -> None:
        """A checkpoint is committed (``seconds``: how long saving it took, when this process saved it)."""
        self.checkpoint_step.labels(**self._base).set(checkpoint.step)
        self.checkpoint_time.labels(**self._base).set(checkpoint.created)
        if self._last_checkpoint_time is None:
            self.checkpoint_age.labels(**self._base).set_function(self._checkpoint_age)
        self._last_checkpoint_time = checkpoint.created
        if seconds is not None:
            self.phase_seconds.labels(**self._base, phase="checkpoint").observe(seconds)

    def _checkpoint_age(self) -> float:
        assert self._last_checkpoint_time is not None, "registered only once a checkpoint exists"
        return max(0.0, time.time() - self._last_checkpoint_time)

    # ----------------------------------------------------------------------------------- serving
    def serve(self, port: int, address: str = "0.0.0.0") -> MetricsServer:
        """Serve ``/metrics`` on ``address:port`` from a daemon thread until :meth:`MetricsServer.close`."""
        server, thread = start_http_server(port, addr=address, registry=self.registry)
        return MetricsServer(server, thread)


class MetricsServer:
    """A running ``/metrics`` HTTP server; ``port`` is the bound one (useful with port 0)."""

    def __init__(self, server: WSGIServer, thread: object) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gpu_available() -> bool:
    """Whether CUDA devices exist; False (not an error) on a CPU-only machine or without torch."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


class GpuCollector(Collector):
    """GPU memory (torch's caching allocator) and utilisation (NVML, when pynvml is installed), read at
    scrape time so the numbers are current rather than as of the last step."""

    def __init__(self, namespace: str, run: str) -> None:
        self._labels = [namespace, run]
        self._nvml = importlib.util.find_spec("pynvml") is not None

    def collect(self) -> Iterable[Metric]:
        import torch

        names = ["namespace", "run", "device"]
        allocated = GaugeMetricFamily(
            "opensir_gpu_memory_allocated_bytes", "Memory held by tensors, per device", labels=names
        )
        reserved = GaugeMetricFamily(
            "opensir_gpu_memory_reserved_bytes", "Memory reserved by torch's caching allocator", labels=names
        )
        peak = GaugeMetricFamily(
            "opensir_gpu_memory_peak_allocated_bytes", "Peak memory held by tensors", labels=names
        )
        utilization = GaugeMetricFamily(
            "opensir_gpu_utilization_ratio", "Share of time a kernel ran (NVML), per device", labels=names
        )
        for index in range(torch.cuda.device_count()):
            labels = [*self._labels, str(index)]
            allocated.add_metric(labels, float(torch.cuda.memory_allocated(index)))
            reserved.add_metric(labels, float(torch.cuda.memory_reserved(index)))
            peak.add_metric(labels, float(torch.cuda.max_memory_allocated(index)))
            if self._nvml:
                utilization.add_metric(labels, torch.cuda.utilization(index) / 100.0)
        yield from (allocated, reserved, peak)
        if self._nvml:
            yield utilization


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
