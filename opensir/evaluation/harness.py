"""Cached, resumable benchmark evaluation of one model through any :class:`Generator`.

Every sampled response is appended to a JSONL cache (one line per benchmark/problem/sample, flushed
and synced after each batch) before anything else happens with it. An interrupted evaluation that is
started again with the same cache generates only the samples that are missing. The cache's first
line records the model, the sampling and the prompt; a cache written with other ones is refused,
since mixing their samples would measure neither. Scoring and metrics are recomputed from the cache
on every run, so they always reflect the current scoring code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from opensir.errors import OpensirError
from opensir.evaluation.datasets import BENCHMARKS, Problem, benchmark_info, load_benchmark, sample_problems
from opensir.evaluation.metrics import (
    BenchmarkMetrics,
    Estimate,
    ProblemSamples,
    benchmark_metrics,
    default_ks,
    macro_average,
)
from opensir.evaluation.scoring import Score, same_answer, score_response
from opensir.layout import EVAL_RESULTS
from opensir.seams import Completion, Generator, SamplingParams
from opensir.selfplay.prompts import render_prompt, student_messages

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHE_FILE = "generations.jsonl"
RESULTS_JSON = EVAL_RESULTS
RESULTS_MD = "results.md"
CI_METHOD = "95% percentile bootstrap over problems (1000 resamples; stratified for the macro average)"


PAPER_SAMPLING = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=4096)
"""The paper's evaluation sampling (OpenSIR: temperature 0.6, top-p 0.95)."""


class CacheMismatchError(OpensirError):
    """The generation cache was written for another model, sampling or prompt."""


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how to sample (the paper's protocol by default)."""

    benchmarks: tuple[str, ...] = tuple(BENCHMARKS)
    samples: int = 16
    max_problems: int | None = None
    """A seeded sample of at most this many problems per benchmark; None takes all."""
    sampling: SamplingParams = PAPER_SAMPLING
    seed: int = 0
    """Seeds the problem sample, the sampling of responses and the bootstrap."""
    data_dir: str | None = None
    """Directory of the benchmark JSONL files; None reads the Hugging Face hub."""
    chat_template: str | None = None
    prompts_per_batch: int = 8
    """Prompts per generate() call: the unit of caching (and what is lost at worst on a kill)."""

    def __post_init__(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise OpensirError(f"benchmarks {unknown or '[]'}: choose from {', '.join(BENCHMARKS)}")
        if self.samples < 1:
            raise OpensirError(f"samples must be at least 1 (got {self.samples})")
        if self.max_problems is not None and self.max_problems < 1:
            raise OpensirError(f"max problems must be at least 1 (got {self.max_problems})")
        if self.prompts_per_batch < 1:
            raise OpensirError(f"prompts per batch must be at least 1 (got {self.prompts_per_batch})")


# ------------------------------------------------------------------------------------------- cache
def cache_header(model: str, settings: EvalSettings) -> dict[str, Any]:
    """What a cache's samples depend on; two runs may share a cache only when these agree."""
    sampling = asdict(replace(settings.sampling, seed=None))
    sampling["stop"] = list(sampling["stop"])
    prompt = json.dumps([student_messages("{problem}"), settings.chat_template], sort_keys=True)
    return {
        "format": CACHE_FORMAT,
        "model": model,
        "sampling": sampling,
        "seed": settings.seed,
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
    }


@dataclass
class GenerationCache:
    """The append-only JSONL cache of sampled responses, keyed by (benchmark, problem index, sample)."""

    path: Path
    header: dict[str, Any]
    records: dict[tuple[str, int, int], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, header: Mapping[str, Any]) -> GenerationCache:
        """Read the cache at ``path`` (creating it with ``header`` when absent); refuse a mismatched one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = cls(path, dict(header))
        if not path.exists() or path.stat().st_size == 0:
            path.write_text(json.dumps({"header": cache.header}) + "\n")
            return cache
        lines = path.read_text(encoding="utf-8").splitlines()
        try:
            found = json.loads(lines[0])["header"]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError):
            raise CacheMismatchError(f"{path}: not an opensir generation cache (no header line)") from None
        if found != cache.header:
            differs = sorted(k for k in set(found) | set(cache.header) if found.get(k) != cache.header.get(k))
            raise CacheMismatchError(
                f"{path} holds generations of another setup ({', '.join(differs)} differ: cached "
                f"{ {k: found.get(k) for k in differs} }, "
                f"now { {k: cache.header.get(k) for k in differs} }); "
                "use another output directory, or delete the cache to start over"
            )
        for number, line in enumerate(lines[1:], 2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # a write cut short by a kill (appends then go on from a fresh line): generated again
                log.warning("%s:%d: ignoring a truncated line", path, number)
                continue
            try:
                key = (str(record["benchmark"]), int(record["index"]), int(record["sample"]))
            except (KeyError, TypeError, ValueError):
                raise CacheMismatchError(f"{path}:{number}: not a generation record") from None
            cache.records[key] = record
        return cache

    def missing(self, problem: Problem, samples: int) -> list[int]:
        """Sample numbers of ``problem`` not yet in the cache."""
        return [s for s in range(samples) if (problem.benchmark, problem.index, s) not in self.records]

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Add records durably (written, flushed and synced before this returns)."""
        with self.path.open("rb+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a torn line from a kill: start on a fresh one
                    handle.write(b"\n")
            handle.write("".join(json.dumps(r) + "\n" for r in records).encode())
            handle.flush()
            os.fsync(handle.fileno())
        for r in records:
            self.records[(r["benchmark"], r["index"], r["sample"])] = r


# -------------------------------------------------------------------------------------- generation
def _batch_seed(seed: int, benchmark: str, indices: Sequence[int], samples: Sequence[int]) -> int:
    key = json.dumps([seed, benchmark, list(indices), list(samples)])
    return zlib.crc32(key.encode())


def generate_missing(
    generator: Generator,
    tokenizer: Any,
    problems: Mapping[str, Sequence[Problem]],
    cache: GenerationCache,
    settings: EvalSettings,
    *,
    progress: bool = True,
) -> int:
    """Sample every response the cache lacks, appending each batch as it arrives; returns how many."""
    work: list[tuple[Problem, list[int]]] = []
    total = 0
    for name in settings.benchmarks:
        for problem in problems[name]:
            total += settings.samples
            missing = cache.missing(problem, settings.samples)
            if missing:
                work.append((problem, missing))
    done = total - sum(len(m) for _, m in work)
    if done:
        log.info("resuming: %d of %d samples are cached in %s", done, total, cache.path)
    generated = 0
    with tqdm(
        total=total, initial=done, desc="eval", unit="sample", disable=not progress, dynamic_ncols=True
    ) as bar:
        # one generate() call per batch of problems that lack the same samples (usually all of them)
        batches: list[list[tuple[Problem, list[int]]]] = []
        for item in work:
            last = batches[-1] if batches else None
            if (
                last is not None
                and len(last) < settings.prompts_per_batch
                and last[0][0].benchmark == item[0].benchmark
                and last[0][1] == item[1]
            ):
                last.append(item)
            else:
                batches.append([item])
        for batch in batches:
            benchmark, sample_numbers = batch[0][0].benchmark, batch[0][1]
            bar.set_postfix_str(benchmark, refresh=False)
            prompts = [
                render_prompt(tokenizer, student_messages(p.question), settings.chat_template)
                for p, _ in batch
            ]
            seed = _batch_seed(settings.seed, benchmark, [p.index for p, _ in batch], sample_numbers)
            sampling = replace(settings.sampling, seed=seed)
            outputs = generator.generate(prompts, len(sample_numbers), sampling)
            records = [
                _record(problem, sample, completion)
                for (problem, _), completions in zip(batch, outputs, strict=True)
                for sample, completion in zip(sample_numbers, completions, strict=True)
            ]
            cache.append(records)
            generated += len(records)
            bar.update(len(records))
    return generated


def _record(problem: Problem, sample: int, completion: Completion) -> dict[str, Any]:
    return {
        "benchmark": problem.benchmark,
        "index": problem.index,
        "sample": sample,
        "text": completion.text,
        "tokens": len(completion.token_ids),
        "finish_reason": completion.finish_reason,
    }


# ----------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class ProblemResult:
    """One problem's samples as scored."""

    problem: Problem
    scores: tuple[Score, ...]
    votes: tuple[int | None, ...]
    tokens: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.problem.index,
            "reference": self.problem.answer,
            "answers": [s.answer for s in self.scores],
            "correct": [s.correct for s in self.scores],
            "boxed": [s.boxed for s in self.scores],
            "tokens": list(self.tokens),
        }


def score_problem(problem: Problem, records: Sequence[Mapping[str, Any]]) -> ProblemResult:
    """Score each sample and group the answers into classes for majority voting.

    Right answers form one class (they all equal the reference); wrong ones are grouped by
    math-verify equivalence of their canonical forms; samples without an answer do not vote.
    """
    rule = benchmark_info(problem.benchmark).gold_rule
    scores = tuple(score_response(str(r["text"]), problem.answer, rule) for r in records)
    votes: list[int | None] = []
    wrong_classes: list[str] = []
    for score in scores:
        if score.correct:
            votes.append(0)
        elif score.canonical is None:
            votes.append(None)
        else:
            for number, representative in enumerate(wrong_classes, 1):
                if representative == score.canonical or same_answer(representative, score.canonical):
                    votes.append(number)
                    break
            else:
                wrong_classes.append(score.canonical)
                votes.append(len(wrong_classes))
    return ProblemResult(problem, scores, tuple(votes), tuple(int(r.get("tokens", 0)) for r in records))


# ----------------------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class EvalReport:
    """Metrics of every benchmark and their macro average."""

    model: str
    settings: EvalSettings
    benchmarks: dict[str, BenchmarkMetrics]
    problems: dict[str, list[ProblemResult]]
    macro: dict[str, Estimate]
    """Macro averages, keyed "mean_accuracy", "pass@k", "maj@k"."""
    seconds: float = 0.0
    generated: int = 0

    def ks(self) -> list[int]:
        return default_ks(self.settings.samples)

    def summary_json(self) -> dict[str, Any]:
        """The report without per-problem detail (what results.json and the run's status carry)."""
        sampling = asdict(replace(self.settings.sampling, seed=None))
        sampling["stop"] = list(sampling["stop"])
        return {
            "model": self.model,
            "samples": self.settings.samples,
            "max_problems": self.settings.max_problems,
            "seed": self.settings.seed,
            "sampling": sampling,
            "seconds": self.seconds,
            "generated": self.generated,
            "confidence_interval": CI_METHOD,
            "benchmarks": {
                name: {**m.to_json(), **self.answer_rates(name)} for name, m in self.benchmarks.items()
            },
            "macro_average": {key: e.to_json() for key, e in self.macro.items()},
        }

    def answer_rates(self, name: str) -> dict[str, float]:
        """Shares of a benchmark's responses that state an answer at all, and in a ``\\boxed{}``."""
        scores = [s for r in self.problems[name] for s in r.scores]
        return {
            "answered_rate": sum(s.answer is not None for s in scores) / len(scores),
            "boxed_rate": sum(s.boxed for s in scores) / len(scores),
        }

    def benchmark_json(self, name: str) -> dict[str, Any]:
        """One benchmark's metrics with every problem's answers (``<benchmark>.json``)."""
        return {
            "model": self.model,
            "benchmark": name,
            **self.benchmarks[name].to_json(),
            **self.answer_rates(name),
            "per_problem": [r.to_json() for r in self.problems[name]],
        }

    def markdown(self) -> str:
        """The results table: mean accuracy, pass@n and maj@n per benchmark, with 95% intervals."""
        n = self.settings.samples

        def cell(e: Estimate) -> str:
            return f"{100 * e.value:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}]"

        lines = [
            f"| benchmark | problems | mean acc. (n={n}) | pass@{n} | maj@{n} | answered | boxed |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, m in self.benchmarks.items():
            title = BENCHMARKS[name].title
            rates = self.answer_rates(name)
            lines.append(
                f"| {title} | {m.problems} | {cell(m.mean_accuracy)} | {cell(m.pass_at[n])} "
                f"| {cell(m.maj_at[n])} | {100 * rates['answered_rate']:.0f}% "
                f"| {100 * rates['boxed_rate']:.0f}% |"
            )
        macro = self.macro
        lines.append(
            f"| **macro average** | {sum(m.problems for m in self.benchmarks.values())} | "
            f"{cell(macro['mean_accuracy'])} | {cell(macro[f'pass@{n}'])} | {cell(macro[f'maj@{n}'])} | | |"
        )
        lines.append("")
        lines.append(
            "Accuracy in %, with 95% confidence intervals (percentile bootstrap over problems); answered: "
            "responses that state a final answer, boxed: in a \\boxed{}. "
            f"Model `{self.model}`; sampling temperature {self.settings.sampling.temperature}, "
            f"top-p {self.settings.sampling.top_p}, max tokens {self.settings.sampling.max_tokens}; "
            f"seed {self.settings.seed}."
        )
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> list[Path]:
        """Write ``results.json``, ``results.md`` and one ``<benchmark>.json`` per benchmark."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name in self.benchmarks:
            path = directory / f"{name}.json"
            path.write_text(json.dumps(self.benchmark_json(name), indent=1) + "\n")
            written.append(path)
        (directory / RESULTS_JSON).write_text(json.dumps(self.summary_json(), indent=1) + "\n")
        (directory / RESULTS_MD).write_text(self.markdown())
        return [*written, directory / RESULTS_JSON, directory / RESULTS_MD]


def load_problems(settings: EvalSettings) -> dict[str, list[Problem]]:
    """The seeded problem sample of every benchmark of ``settings``."""
    return {
        name: sample_problems(load_benchmark(name, settings.data_dir), settings.max_problems, settings.seed)
        for name in settings.benchmarks
    }


def evaluate(
    generator: Generator,
    tokenizer: Any,
    model: str,
    settings: EvalSettings,
    cache_path: Path,
    *,
    progress: bool = True,
    clock: Callable[[], float] | None = None,
) -> EvalReport:
    """Generate what the cache lacks, then score everything and compute the metrics.

    ``model`` names what is evaluated (it goes into the cache header and the report).
    """
    import time

    clock = clock or time.monotonic
    started = clock()
    problems = load_problems(settings)
    cache = GenerationCache.open(cache_path, cache_header(model, settings))
    generated = generate_missing(generator, tokenizer, problems, cache, settings, progress=progress)
    results: dict[str, list[ProblemResult]] = {}
    metrics: dict[str, BenchmarkMetrics] = {}
    for name in settings.benchmarks:
        results[name] = [
            score_problem(p, [cache.records[(name, p.index, s)] for s in range(settings.samples)])
            for p in problems[name]
        ]
        metrics[name] = benchmark_metrics(
            [ProblemSamples(tuple(s.correct for s in r.scores), r.votes) for r in results[name]],
            seed=settings.seed,
        )
    keys = ["mean_accuracy"] + [
        f"{kind}@{k}" for k in default_ks(settings.samples) for kind in ("pass", "maj")
    ]
    macro = {key: macro_average(metrics, key, seed=settings.seed) for key in keys}
    return EvalReport(
        model, settings, metrics, results, macro, seconds=clock() - started, generated=generated
    )
