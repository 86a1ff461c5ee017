"""The ``opensir`` command line: validate and run SelfPlayRun manifests, print the CRD."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from opensir import reference
from opensir import spec as spec_module
from opensir.errors import OpensirError
from opensir.spec import SpecError


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
    run.set_defaults(handler=_run)

    boot = commands.add_parser(
        "bootstrap",
        help="only grow the seed problems into an in-band pool (selfPlay.bootstrap)",
        description="Run only the bootstrap phase of a SelfPlayRun; `opensir run` continues from its result.",
    )
    boot.add_argument("file", type=Path, metavar="FILE", help="the SelfPlayRun manifest (run.yaml)")
    boot.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    boot.set_defaults(handler=_bootstrap)
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
    from opensir.runner import run_selfplay

    result = run_selfplay(run, fresh=args.fresh)
    print(result.summary())
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
