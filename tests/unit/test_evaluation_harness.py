"""The benchmark files, the seeded problem sample, the generation cache and the report, with a
scripted generator (the real model is in tests/integration/test_evaluation.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from scripted import CharTokenizer

from opensir.evaluation.datasets import (
    BENCHMARKS,
    BenchmarkDataError,
    default_data_dir,
    load_benchmark,
    sample_problems,
)
from opensir.evaluation.harness import (
    CACHE_FILE,
    CacheMismatchError,
    EvalSettings,
    GenerationCache,
    cache_header,
    evaluate,
)
from opensir.seams import Completion, SamplingParams

SIZES = {
    "gsm8k": 1319,
    "math500": 500,
    "minerva_math": 272,
    "olympiadbench": 675,
    "college_math": 2818,
    "aime24": 30,
    "amc23": 40,
}


def data_dir() -> Path:
    found = default_data_dir()
    assert found is not None, (
        "the benchmark files (../shared/benchmarks or $OPENSIR_BENCHMARKS_DIR) are needed"
    )
    return found


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_file_reads_in_its_schema(name):
    problems = load_benchmark(name, data_dir())
    assert len(problems) == SIZES[name]
    assert all(p.question and p.answer for p in problems)
    assert [p.index for p in problems] == list(range(len(problems)))


def test_known_references_of_the_real_files():
    assert load_benchmark("gsm8k", data_dir())[0].answer == "18"
    assert load_benchmark("amc23", data_dir())[0].answer == "27.0"
    assert load_benchmark("aime24", data_dir())[0].answer == "204"
    assert load_benchmark("minerva_math", data_dir())[0].answer == "1.6"
    assert load_benchmark("olympiadbench", data_dir())[0].answer == "2"
    assert (
        load_benchmark("college_math", data_dir())[0].answer == "$10-4 n$"
    )  # kept as written: the paper parses it as it stands


def test_the_sample_is_seeded_stable_sorted_and_whole_when_small():
    problems = load_benchmark("gsm8k", data_dir())
    a = sample_problems(problems, 50, seed=0)
    assert len(a) == 50 and len({p.index for p in a}) == 50
    assert [p.index for p in a] == sorted(p.index for p in a)
    assert a == sample_problems(problems, 50, seed=0)
    assert a != sample_problems(problems, 50, seed=1)
    # a bigger sample of another benchmark does not move this one
    assert [p.index for p in a] == [
        p.index for p in sample_problems(load_benchmark("gsm8k", data_dir()), 50, 0)
    ]
    aime = load_benchmark("aime24", data_dir())
    assert sample_problems(aime, 50, seed=0) == aime


def test_missing_file_and_missing_field_are_named(tmp_path):
    with pytest.raises(BenchmarkDataError, match=r"aime24\.jsonl"):
        load_benchmark("aime24", tmp_path)
    (tmp_path / "gsm8k.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(BenchmarkDataError, match="'answer'"):
        load_benchmark("gsm8k", tmp_path)
    with pytest.raises(BenchmarkDataError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu", tmp_path)


class AnswerKeyGenerator:
    """Answers each benchmark prompt with the reference answer on even samples and 0 on odd ones."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, int]] = []
        self.fail_after: int | None = None

    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append((len(prompts), n))
        out = []
        for prompt in prompts:
            text = "".join(chr(t) for t in prompt)
            answer = next(a for q, a in self.answers.items() if q in text)
            out.append(
                [
                    Completion(f"\\boxed{{{answer if s % 2 == 0 else '0'}}}", (1, 2), None, "stop")
                    for s in range(n)
                ]
            )
        return out


def settings(**kw) -> EvalSettings:
    base = dict(
        benchmarks=("aime24", "amc23"),
        samples=2,
        max_problems=3,
        sampling=SamplingParams(temperature=0.6, top_p=0.95, max_tokens=16),
        data_dir=str(data_dir()),
        prompts_per_batch=2,
    )
    base.update(kw)
    return EvalSettings(**base)


def answer_key(s: EvalSettings) -> dict[str, str]:
    from opensir.evaluation.harness import load_problems

    return {p.question: p.answer for ps in load_problems(s).values() for p in ps}


def test_evaluate_scores_caches_and_resumes(tmp_path):
    s = settings()
    generator = AnswerKeyGenerator(answer_key(s))
    generator.fail_after = 1
    cache_path = tmp_path / CACHE_FILE
    with pytest.raises(KeyboardInterrupt):
        evaluate(generator, CharTokenizer(), "scripted", s, cache_path, progress=False)
    first = cache_path.read_text().splitlines()
    assert len(first) == 1 + 2 * 2  # header + one batch: 2 problems x 2 samples

    generator.fail_after = None
    generator.calls.clear()
    report = evaluate(generator, CharTokenizer(), "scripted", s, cache_path, progress=False)
    assert cache_path.read_text().splitlines()[: len(first)] == first  # cached samples kept as they were
    assert sum(p * n for p, n in generator.calls) == 2 * 3 * 2 - 4  # only the missing ones
    assert report.generated == 8
    for name in ("aime24", "amc23"):
        m = report.benchmarks[name]
        assert m.problems == 3
        assert m.mean_accuracy.value == pytest.approx(0.5)
        assert m.pass_at[2].value == pytest.approx(1.0)
        assert m.maj_at[2].value == pytest.approx(1.0)  # a tie; the right answer came first
    assert report.macro["mean_accuracy"].value == pytest.approx(0.5)

    generator.calls.clear()
    again = evaluate(generator, CharTokenizer(), "scripted", s, cache_path, progress=False)
    assert generator.calls == [] and again.generated == 0

    written = report.write(tmp_path / "out")
    names = {p.name for p in written}
    assert names == {"aime24.json", "amc23.json", "results.json", "results.md"}
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["benchmarks"]["amc23"]["mean_accuracy"]["value"] == pytest.approx(0.5)
    assert summary["macro_average"]["pass@2"]["ci95"][1] <= 1.0
    per = json.loads((tmp_path / "out" / "amc23.json").read_text())["per_problem"]
    assert [r["correct"] for r in per] == [[True, False]] * 3
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| AIME 2024 | 3 | 50.0 [" in table and "**macro average**" in table


def test_more_samples_reuse_the_cached_ones(tmp_path):
    s = settings(benchmarks=("amc23",), samples=1)
    generator = AnswerKeyGenerator(answer_key(s))
    evaluate(generator, CharTokenizer(), "scripted", s, tmp_path / CACHE_FILE, progress=False)
    generator.calls.clear()
    report = evaluate(
        generator,
        CharTokenizer(),
        "scripted",
        settings(benchmarks=("amc23",), samples=2),
        tmp_path / CACHE_FILE,
        progress=False,
    )
    assert generator.calls == [(2, 1), (1, 1)]  # sample 1 of each problem only
    assert report.benchmarks["amc23"].samples == 2


def test_a_cache_of_another_setup_is_refused(tmp_path):
    path = tmp_path / CACHE_FILE
    GenerationCache.open(path, cache_header("model-a", settings()))
    with pytest.raises(CacheMismatchError, match="model"):
        GenerationCache.open(path, cache_header("model-b", settings()))
    hotter = settings(sampling=SamplingParams(temperature=1.0, top_p=0.95, max_tokens=16))
    with pytest.raises(CacheMismatchError, match="sampling"):
        GenerationCache.open(path, cache_header("model-a", hotter))


def test_a_torn_last_line_is_dropped_and_appends_start_on_a_new_line(tmp_path):
    path = tmp_path / CACHE_FILE
    header = cache_header("m", settings())
    cache = GenerationCache.open(path, header)
    cache.append([{"benchmark": "amc23", "index": 0, "sample": 0, "text": "x"}])
    with path.open("a") as handle:
        handle.write('{"benchmark": "amc23", "ind')  # killed mid-write
    cache = GenerationCache.open(path, header)
    assert set(cache.records) == {("amc23", 0, 0)}
    cache.append([{"benchmark": "amc23", "index": 1, "sample": 0, "text": "y"}])
    assert set(GenerationCache.open(path, header).records) == {("amc23", 0, 0), ("amc23", 1, 0)}


def test_bad_settings_are_named():
    from opensir.errors import OpensirError

    with pytest.raises(OpensirError, match="mmlu"):
        EvalSettings(benchmarks=("mmlu",))
    with pytest.raises(OpensirError, match="samples"):
        EvalSettings(samples=0)
