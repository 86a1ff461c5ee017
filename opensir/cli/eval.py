"""``opensir eval``: evaluate a model or a run's checkpoint on the math benchmarks.

Light at import (the CLI imports it for its parser); torch and transformers load in :func:`run_eval`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from opensir.errors import OpensirError

BENCHMARK_NAMES = ("gsm8k", "math500", "minerva_math", "olympiadbench", "college_math", "aime24", "amc23")

DESCRIPTION = """\
Evaluate a model, or a run's checkpoint, on the seven math benchmarks (GSM8K, MATH-500, Minerva-Math,
OlympiadBench, College Math, AIME 2024, AMC 2023) with the paper's protocol: the student prompt,
n=16 samples per problem, temperature 0.6, top-p 0.95, answers checked with math-verify. Reports mean
accuracy over the samples, pass@k and maj@k per benchmark and their macro average, each with a 95%
bootstrap confidence interval, as results.json and results.md (plus <benchmark>.json with every
answer). Generations are cached in OUT/generations.jsonl: run the same command again to resume.

MODEL is a hub id, a local directory or builtin:smollm2-135m-instruct; a run's store (directory,
file://… or s3://…/NAMESPACE/RUN, with --tokenizer); or a SelfPlayRun manifest, whose newest
checkpoint (or --step's) is evaluated with the manifest's spec.evaluation settings and the results
stored next to the checkpoint (evals/step-NNNNNN/)."""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` command to the CLI's subparsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "eval",
        help="evaluate a model or checkpoint on the math benchmarks",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", metavar="MODEL", help="model, run store, or SelfPlayRun manifest (see above)"
    )
    parser.add_argument(
        "--step", type=int, default=None, help="the run's checkpoint at this step (default: newest)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field of the manifest's spec (with a manifest)",
    )
    parser.add_argument(
        "--benchmarks",
        default=None,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(BENCHMARK_NAMES)} (default: all)",
    )
    parser.add_argument("--samples", "-n", type=int, default=None, help="samples per problem (default 16)")
    parser.add_argument(
        "--max-problems",
        type=int,
        default=None,
        metavar="N",
        help="a seeded sample of at most N problems per benchmark (default: all)",
    )
    parser.add_argument("--temperature", type=float, default=None, help="default 0.6")
    parser.add_argument("--top-p", type=float, default=None, help="default 0.95")
    parser.add_argument("--top-k", type=int, default=None, help="default -1 (off)")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="most tokens per response (default 4096)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the problem sample and the sampling (default 0)"
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="directory with the benchmarks' JSONL files (default: $OPENSIR_BENCHMARKS_DIR, the "
        "checkout's ../shared/benchmarks, else the Hugging Face hub)",
    )
    data.add_argument("--hub", action="store_true", help="read the benchmarks from the Hugging Face hub")
    parser.add_argument(
        "--engine",
        choices=["hf", "vllm", "server"],
        default="hf",
        help="hf: transformers in this process; vllm: a local vLLM server started from .venv-vllm "
        "(scripts/install_vllm.sh) and stopped at the end; server: an OpenAI-compatible server "
        "already serving the model (--server-url)",
    )
    parser.add_argument(
        "--kv-cache-gib", type=int, default=2, help="CPU KV cache of the vllm engine (default 2)"
    )
    parser.add_argument(
        "--server-url", default=None, help="base URL of the server, e.g. http://127.0.0.1:8000/v1"
    )
    parser.add_argument(
        "--served-model", default=None, help="the model name the server knows (default: MODEL)"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="model whose tokenizer and chat template render prompts (default: MODEL's, or the run's)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="sequences decoded together by the hf engine"
    )
    parser.add_argument(
        "--prompts-per-batch",
        type=int,
        default=8,
        help="problems per generate call, the unit of caching (default 8)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: evals/<model>, or evals/<run>-step-N for a run)",
    )
    parser.add_argument("--endpoint", default=None, help="S3 endpoint (host:port) for an s3:// store")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads of the hf engine (default: torch's; 1 is fastest on a busy CPU)",
    )
    parser.set_defaults(handler=run_eval)
    return parser


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def run_eval(args: argparse.Namespace) -> int:
    """The ``eval`` command."""
    from opensir.cli.common import load_with_overrides, quiet_libraries
    from opensir.evaluation.datasets import default_data_dir
    from opensir.evaluation.harness import CACHE_FILE, EvalSettings, evaluate
    from opensir.evaluation.targets import (
        checkpoint_target,
        is_store_uri,
        load_tokenizer_for,
        model_target,
        open_generator,
        store_results,
    )
    from opensir.layout import evals_prefix
    from opensir.seams import SamplingParams
    from opensir.spec import EvaluationSpec, ModelSpec

    path = Path(args.model)
    run = None
    if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
        run = load_with_overrides(path, args.overrides)
    elif args.overrides:
        raise OpensirError("--set applies to a SelfPlayRun manifest, and MODEL is not one")
    evaluation = run.spec.evaluation if run is not None else EvaluationSpec()
    benchmarks = tuple(evaluation.benchmarks) or BENCHMARK_NAMES
    if args.benchmarks:
        benchmarks = tuple(b.strip() for b in args.benchmarks.split(",") if b.strip())
    data_dir: str | None
    if args.hub:
        data_dir = None
    elif args.data_dir is not None:
        data_dir = args.data_dir
    elif run is not None:
        data_dir = evaluation.data_dir
    else:
        found = default_data_dir()
        data_dir = str(found) if found is not None else None
    sampling = evaluation.sampling
    settings = EvalSettings(
        benchmarks=benchmarks,
        samples=args.samples or evaluation.samples,
        max_problems=args.max_problems if args.max_problems is not None else evaluation.max_problems,
        sampling=SamplingParams(
            temperature=sampling.temperature if args.temperature is None else args.temperature,
            top_p=sampling.top_p if args.top_p is None else args.top_p,
            top_k=sampling.top_k if args.top_k is None else args.top_k,
            max_tokens=sampling.max_tokens if args.max_tokens is None else args.max_tokens,
        ),
        seed=args.seed,
        data_dir=data_dir,
        chat_template=run.spec.model.chat_template if run is not None else None,
        prompts_per_batch=args.prompts_per_batch,
    )
    quiet_libraries()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="opensir-eval-") as scratch:
        if run is not None or is_store_uri(args.model):
            if run is not None:
                from opensir.storage import open_store

                store = open_store(run.spec.storage, run.metadata.namespace, run.metadata.name)
                tokenizer_spec = run.spec.model
                if args.tokenizer:
                    tokenizer_spec = ModelSpec(name=args.tokenizer)
            else:
                from opensir.cli.status import store_from_uri

                if not args.tokenizer:
                    raise OpensirError(
                        f"{args.model} is a run's store: name the base model with --tokenizer (its tokenizer "
                        "and "
                        "chat template render the prompts), or pass the run's manifest instead"
                    )
                store = store_from_uri(args.model, endpoint=args.endpoint)
                tokenizer_spec = ModelSpec(name=args.tokenizer)
            target = checkpoint_target(store, args.step, tokenizer_spec, Path(scratch))
            assert target.step is not None
            out = args.out or Path("evals") / _slug(f"{store.uri.rsplit('//', 1)[-1]}-step-{target.step}")
            cached_key = f"{evals_prefix(target.step)}/{CACHE_FILE}"
            if not (out / CACHE_FILE).exists() and store.exists(cached_key):
                store.get_file(cached_key, out / CACHE_FILE)  # resume an evaluation a killed pod began
        else:
            if args.step is not None:
                raise OpensirError("--step selects a run's checkpoint, and MODEL is a model, not a run")
            target = model_target(args.model, args.tokenizer)
            out = args.out or Path("evals") / _slug(args.model)
        tokenizer = load_tokenizer_for(target)
        try:
            with open_generator(
                args.engine,
                target,
                tokenizer,
                batch_size=args.batch_size,
                server_url=args.server_url,
                served_model=args.served_model,
                log_dir=out,
                kv_cache_gib=args.kv_cache_gib,
            ) as generator:
                report = evaluate(
                    generator,
                    tokenizer,
                    target.label,
                    settings,
                    out / CACHE_FILE,
                    progress=not args.no_progress,
                )
        finally:
            if target.store is not None and target.step is not None and (out / CACHE_FILE).exists():
                # even when interrupted: a restarted evaluation Job resumes from the stored cache
                target.store.put_file(f"{evals_prefix(target.step)}/{CACHE_FILE}", out / CACHE_FILE)
        report = replace(report, seconds=time.monotonic() - started)
        report.write(out)
        if target.store is not None and target.step is not None:
            keys = store_results(target.store, target.step, out)
            print(
                f"stored {len(keys)} files under {target.store.uri}/{evals_prefix(target.step)}",
                file=sys.stderr,
            )
    sys.stdout.write(report.markdown())
    print(
        f"\n{report.generated} responses generated in {report.seconds:.0f} s (wall, model loading included); "
        f"results in {out}/",
        file=sys.stderr,
    )
    return 0
