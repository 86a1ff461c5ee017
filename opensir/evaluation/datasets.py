"""The seven math benchmarks, each read in its own schema (``../shared/benchmarks/SOURCES.md``).

No file is normalised on disk: every benchmark has a reader that knows where its question and its
reference answer are (GSM8K's number after ``####``, Minerva's last ``\\boxed{}`` in the solution,
OlympiadBench's list-valued ``final_answer`` …). Problems come from a local directory of JSONL files,
or from the Hugging Face hub through ``datasets`` for users with network access.

A benchmark's problems are numbered by their position in the file (``index``); a seeded sample of
at most ``max_problems`` of them is the same on every machine and every run (:func:`sample_problems`).
"""

from __future__ import annotations

import ast
import json
import os
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from opensir.errors import OpensirError
from opensir.selfplay.answers import first_boxed

GoldRule = Literal["latex", "latexOrExpression"]
"""How the paper parses a benchmark's reference answer: ``latex``, wrapped in ``$…$`` and read as
LaTeX; ``latexOrExpression``, as written, LaTeX first and then a plain expression."""


class BenchmarkDataError(OpensirError, ValueError):
    """A benchmark cannot be read: missing file, unreachable hub, or a record without its fields."""


@dataclass(frozen=True)
class Problem:
    """One benchmark problem with its reference answer, as the benchmark states it (LaTeX or number)."""

    benchmark: str
    index: int
    """Position in the benchmark's file (or hub split): the stable key of the problem."""
    question: str
    answer: str
    """The reference answer, extracted from the benchmark's own answer field."""


def last_boxed(text: str) -> str | None:
    """Content of the LAST balanced ``\\boxed{…}`` in ``text`` (None when there is none)."""
    start = text.rfind("\\boxed")
    while start != -1:
        content = first_boxed(text[start:])
        if content is not None:
            return content
        start = text.rfind("\\boxed", 0, start)
    return None


def _strip_dollars(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    return text


def _field(record: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in record or record[name] is None:
        raise BenchmarkDataError(f"{where}: the record has no {name!r} field (fields: {sorted(record)})")
    return record[name]


def _gsm8k_answer(record: Mapping[str, Any], where: str) -> str:
    answer = str(_field(record, "answer", where))
    if "####" not in answer:
        raise BenchmarkDataError(f"{where}: GSM8K answer has no '####' final answer: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _minerva_answer(record: Mapping[str, Any], where: str) -> str:
    solution = str(_field(record, "solution", where))
    boxed = last_boxed(solution)
    if boxed is None:
        raise BenchmarkDataError(f"{where}: Minerva solution has no \\boxed{{}} answer")
    return boxed.strip()


def _olympiad_answer(record: Mapping[str, Any], where: str) -> str:
    value = _field(record, "final_answer", where)
    if isinstance(value, str):
        # "a list written as a string": a Python/JSON list literal, or one bare answer
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = [value]
        value = parsed if isinstance(parsed, (list, tuple)) else [value]
    answers = [str(v).strip() for v in value]
    if not answers or not all(_strip_dollars(a) for a in answers):
        raise BenchmarkDataError(f"{where}: OlympiadBench final_answer is empty: {value!r}")
    # Kept as written ($…$ included), as the paper parses it. Several answers (is_multiple_answer)
    # compare as a set, which math-verify reads from "$a$, $b$" (the reference kept only the first).
    return ", ".join(answers)


def _plain(field: str, *, strip_dollars: bool = True) -> Callable[[Mapping[str, Any], str], str]:
    def read(record: Mapping[str, Any], where: str) -> str:
        text = str(_field(record, field, where))
        return _strip_dollars(text) if strip_dollars else text.strip()

    return read


@dataclass(frozen=True)
class BenchmarkInfo:
    """Where one benchmark's problems are and how its records are read."""

    name: str
    title: str
    """The name in tables (GSM8K, MATH-500 …)."""
    file: str
    question_field: str
    read_answer: Callable[[Mapping[str, Any], str], str]
    hub: tuple[str, str | None, str]
    """(dataset repository, configuration, split) on the Hugging Face hub with the same schema."""
    gold_rule: GoldRule = "latex"
    """How the reference answer is parsed for checking (the reference's choice for each benchmark)."""


BENCHMARKS: dict[str, BenchmarkInfo] = {
    b.name: b
    for b in (
        BenchmarkInfo(
            "gsm8k", "GSM8K", "gsm8k.jsonl", "question", _gsm8k_answer, ("openai/gsm8k", "main", "test")
        ),
        BenchmarkInfo(
            "math500",
            "MATH-500",
            "math500.jsonl",
            "problem",
            _plain("answer"),
            ("HuggingFaceH4/MATH-500", None, "test"),
        ),
        BenchmarkInfo(
            "minerva_math",
            "Minerva-Math",
            "minerva_math.jsonl",
            "problem",
            _minerva_answer,
            ("math-ai/minervamath", None, "test"),
        ),
        BenchmarkInfo(
            "olympiadbench",
            "OlympiadBench",
            "olympiadbench.jsonl",
            "question",
            _olympiad_answer,
            ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
            "latexOrExpression",
        ),
        BenchmarkInfo(
            "college_math",
            "College Math",
            "college_math.jsonl",
            "question",
            _plain("answer", strip_dollars=False),
            ("realtreetune/college_math", None, "test"),
            "latexOrExpression",
        ),
        BenchmarkInfo(
            "aime24",
            "AIME 2024",
            "aime24.jsonl",
            "problem",
            _plain("answer"),
            ("math-ai/aime24", None, "test"),
        ),
        BenchmarkInfo(
            "amc23", "AMC 2023", "amc23.jsonl", "problem", _plain("answer"), ("math-ai/amc23", None, "test")
        ),
    )
}
"""The seven benchmarks, in the order tables list them."""

DATA_DIR_ENV = "OPENSIR_BENCHMARKS_DIR"
"""Environment variable naming the local benchmark directory when none is given."""


def benchmark_info(name: str) -> BenchmarkInfo:
    """The benchmark called ``name``; a clear error listing the known ones otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise BenchmarkDataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def parse_records(name: str, records: Iterable[Mapping[str, Any]], source: str) -> list[Problem]:
    """Problems of benchmark ``name`` from its raw records, in order (pure: no I/O)."""
    info = benchmark_info(name)
    problems = []
    for index, record in enumerate(records):
        where = f"{source} record {index}"
        question = str(_field(record, info.question_field, where)).strip()
        problems.append(Problem(name, index, question, info.read_answer(record, where)))
    if not problems:
        raise BenchmarkDataError(f"{source}: no problems")
    return problems


def default_data_dir() -> Path | None:
    """``$OPENSIR_BENCHMARKS_DIR``, else the checkout's ``../shared/benchmarks`` when it exists."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[3] / "shared" / "benchmarks"
    return shared if shared.is_dir() else None


def load_benchmark(name: str, data_dir: str | Path | None) -> list[Problem]:
    """All problems of benchmark ``name`` from ``data_dir/<file>.jsonl``, or from the hub when
    ``data_dir`` is None."""
    info = benchmark_info(name)
    if data_dir is not None:
        path = Path(data_dir).expanduser() / info.file
        if not path.is_file():
            raise BenchmarkDataError(
                f"benchmark {name}: {path} does not exist (the data directory must hold {info.file})"
            )
        records = []
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise BenchmarkDataError(f"{path}:{line_number}: not JSON: {error}") from None
        return parse_records(name, records, str(path))
    return parse_records(name, _hub_records(info), f"hub:{info.hub[0]}")


def _hub_records(info: BenchmarkInfo) -> list[Mapping[str, Any]]:
    repo, config, split = info.hub
    try:
        import datasets
    except ImportError:
        raise BenchmarkDataError(
            f"benchmark {info.name}: no data directory was given and the 'datasets' package is not installed "
            f"to read {repo} from the Hugging Face hub; pass --data-dir DIR (a directory with {info.file})"
        ) from None
    try:
        dataset = datasets.load_dataset(repo, config, split=split)
    except Exception as error:  # offline, unknown repo, gated: datasets raises many unrelated types
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = " (HF_HUB_OFFLINE is set)" if offline else ""
        raise BenchmarkDataError(
            f"benchmark {info.name}: cannot read {repo} ({config or 'default'}, {split}) from the "
            f"Hugging Face "
            f"hub{hint}: {type(error).__name__}: {error}. Pass --data-dir DIR with {info.file} instead"
        ) from error
    return list(dataset)


def sample_problems(problems: Sequence[Problem], max_problems: int | None, seed: int) -> list[Problem]:
    """A fixed, seeded sample of at most ``max_problems`` problems, in file order; all when fewer.

    Each benchmark draws with its own generator (the seed mixed with the benchmark's name), so a
    benchmark's sample does not change when other benchmarks are added or removed.
    """
    if max_problems is None or max_problems >= len(problems):
        return list(problems)
    if max_problems < 1:
        raise ValueError(f"max_problems must be at least 1 (got {max_problems})")
    name = problems[0].benchmark if problems else ""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    chosen = np.sort(rng.choice(len(problems), size=max_problems, replace=False))
    return [problems[int(i)] for i in chosen]
