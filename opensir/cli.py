"""The ``opensir`` command line: validate and run SelfPlayRun manifests, print the CRD."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from opensir import reference
from opensir import spec as spec_module
from opensir.errors import OpensirError
from opensir.spec import SpecError

if TYPE_CHECKING:
    from opensir.storage import ArtifactStore


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SpecError as error:
        print(error, file=sys.stderr)
        return 2
    except OpensirError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opensir", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check SelfPlayRun manifests and name every problem")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_validate)

    crd = commands.add_parser("crd", help="print the SelfPlayRun CustomResourceDefinition")
    crd.set_defaults(handler=_crd)

    docs = commands.add_parser("reference", help="print the spec reference (docs/spec.md) as markdown")
    docs.set_defaults(handler=_reference)

    run = commands.add_parser(
        "run",
        help="run self-play on this machine",
        description="Run OpenSIR self-play from a SelfPlayRun manifest on this machine, resuming from the "
        "run's last committed checkpoint when there is one.",
        epilog="settable with --set (PATH=VALUE, relative to spec; VALUE is YAML):\n" + reference.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("file", type=Path, metavar="FILE", help="the SelfPlayRun manifest (run.yaml)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field, e.g. --set training.maxSteps=3 (repeatable)",
    )
    run.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start at step 0")
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on this port (default: $OPENSIR_METRICS_PORT; 0 or unset: off)",
    )
    run.set_defaults(handler=_run)

    where = "FILE is a SelfPlayRun manifest (with --set), or a run's store: a directory, file://… or s3://…/NS/RUN"
    status = commands.add_parser(
        "status",
        help="summarise a run from its store",
        description="Summarise a run from its store. " + where,
    )
    _target_arguments(status)
    status.add_argument("--last", type=int, default=10, metavar="N", help="steps in the table (default 10)")
    status.set_defaults(handler=_status)

    pool = commands.add_parser(
        "pool",
        help="list, sample and search the problems of a run's pool",
        description="List, sample and search the problems of a run's pool (from its newest committed "
        "checkpoint). " + where,
    )
    _target_arguments(pool)
    pool.add_argument(
        "--sort",
        choices=["novelty", "difficulty", "step", "id"],
        default="novelty",
        help="order (highest first)",
    )
    pool.add_argument("--top", type=int, default=10, metavar="N", help="problems shown (default 10; 0: all)")
    pool.add_argument("--sample", type=int, default=None, metavar="N", help="a random sample of N instead")
    pool.add_argument("--seed", type=int, default=0, help="seed of --sample")
    pool.add_argument("--concept", default=None, help="only problems with a concept containing this text")
    pool.add_argument("--search", default=None, metavar="TEXT", help="only problems whose text contains this")
    pool.add_argument("--step", type=int, default=None, help="only problems added at this step")
    pool.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="that checkpoint's pool")
    pool.add_argument("--json", action="store_true", help="JSON lines instead of text")
    pool.set_defaults(handler=_pool)

    plot = commands.add_parser(
        "plot",
        help="PNG plots of a run's curriculum",
        description="PNG plots of a run's curriculum. " + where,
    )
    _target_arguments(plot)
    plot.add_argument(
        "--out", type=Path, default=Path("curriculum.png"), help="PNG file (default curriculum.png)"
    )
    plot.set_defaults(handler=_plot)

    boot = commands.add_parser(
        "bootstrap",
        help="only grow the seed problems into an in-band pool (selfPlay.bootstrap)",
        description="Run only the bootstrap phase of a SelfPlayRun; `opensir run` continues from its result.",
    )
    boot.add_argument("file", type=Path, metavar="FILE", help="the SelfPlayRun manifest (run.yaml)")
    boot.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    boot.set_defaults(handler=_bootstrap)

    from opensir.evaluation.command import add_parser as add_eval_parser

    add_eval_parser(commands)
    return parser


# ------------------------------------------------------------------------------------- commands
def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            run = spec_module.load_run(path)
        except SpecError as error:
            print(error, file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: valid SelfPlayRun {run.metadata.namespace}/{run.metadata.name}")
    return 1 if failed else 0


def _crd(args: argparse.Namespace) -> int:
    from opensir.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _reference(args: argparse.Namespace) -> int:
    sys.stdout.write(reference.markdown())
    return 0


def _run(args: argparse.Namespace) -> int:
    run = load_with_overrides(args.file, args.overrides)
    _quiet_libraries()
    # Heavy imports (torch, transformers) only once the manifest is known to be good.
    from opensir.metrics import METRICS_PORT_ENV, RunMetrics
    from opensir.runner import run_selfplay

    port = args.metrics_port
    if port is None:
        port = int(os.environ.get(METRICS_PORT_ENV) or 0)
    if os.environ.get("RANK", "0") != "0":
        port = 0  # under torchrun only global rank 0 serves: the others would race for the pod's port
    metrics = RunMetrics(run.metadata.namespace, run.metadata.name)
    server = metrics.serve(port) if port else None
    try:
        result = run_selfplay(run, fresh=args.fresh, metrics=metrics)
    finally:
        if server is not None:
            server.close()
    print(result.summary())
    return 0


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="FILE", help="run.yaml, or the run's store (directory or URI)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--endpoint", default=None, help="S3 endpoint (host:port) for an s3:// URI")


def _store(args: argparse.Namespace) -> ArtifactStore:
    """The run's store from a manifest (its spec.storage, namespace and name) or from a store URI."""
    from opensir.status import store_from_uri
    from opensir.storage import open_store

    path = Path(args.target)
    if path.is_file():
        run = load_with_overrides(path, args.overrides)
        return open_store(run.spec.storage, run.metadata.namespace, run.metadata.name)
    return store_from_uri(args.target, endpoint=args.endpoint)


def _status(args: argparse.Namespace) -> int:
    from opensir.status import format_status, read_summary

    print(format_status(read_summary(_store(args)), last=args.last))
    return 0


def _pool(args: argparse.Namespace) -> int:
    from opensir.status import format_pool, load_pool, pool_json, select_problems

    checkpoint, entries = load_pool(_store(args), args.checkpoint)
    shown = select_problems(
        entries,
        order=args.sort,
        concept=args.concept,
        text=args.search,
        step=args.step,
        sample=args.sample,
        seed=args.seed,
        limit=args.top or None,
    )
    sys.stdout.write(pool_json(shown) if args.json else format_pool(checkpoint, entries, shown) + "\n")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from opensir.plots import plot_curriculum
    from opensir.status import RunNotFoundError, load_pool, read_history

    store = _store(args)
    history = read_history(store)
    if not history:
        raise RunNotFoundError(f"{store.uri}: no history.jsonl to plot")
    try:
        _, pool = load_pool(store)
    except RunNotFoundError:
        pool = None  # no checkpoint yet: plot the history alone
    out = plot_curriculum(history, pool, args.out, title=store.uri)
    print(f"wrote {out}")
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    run = load_with_overrides(args.file, args.overrides)
    if not run.spec.self_play.bootstrap.enabled:
        problem = ("spec.selfPlay.bootstrap.enabled", False, "must be true for opensir bootstrap")
        raise SpecError(str(args.file), [problem])
    _quiet_libraries()
    from opensir.runner import run_bootstrap

    pool = run_bootstrap(run)
    print(f"bootstrap: pool of {len(pool)} problems")
    return 0


# -------------------------------------------------------------------------------------- helpers
def _quiet_libraries() -> None:
    """Our progress bar and step lines, not the libraries' loading bars and advice."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("opensir").setLevel(logging.INFO)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_with_overrides(path: Path, overrides: Sequence[str]) -> spec_module.SelfPlayRun:
    """Read a manifest, apply ``PATH=VALUE`` overrides to its spec, and validate the result."""
    if not overrides:
        return spec_module.load_run(path)
    document = spec_module.read_manifest(path)
    for override in overrides:
        field_path, sep, raw_value = override.partition("=")
        if not sep or not field_path:
            raise SpecError(str(path), [("--set", override, "must look like PATH=VALUE")])
        try:
            value = yaml.safe_load(raw_value)
        except yaml.YAMLError as error:
            raise SpecError(str(path), [(f"spec.{field_path}", raw_value, f"is not YAML: {error}")]) from None
        _assign(document.setdefault("spec", {}), field_path.split("."), value, str(path))
    return spec_module.parse_run(document, str(path))


def _assign(node: dict[str, Any], keys: list[str], value: Any, source: str) -> None:
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = "spec." + ".".join(keys[: depth + 1])
            raise SpecError(source, [(where, child, "is not a mapping, so --set cannot go inside it")])
        node = child
    node[keys[-1]] = value
