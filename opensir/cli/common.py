"""What the ``opensir`` commands share: reading a manifest with ``--set`` overrides, naming a run's
store from a manifest or a URI, and quieting the libraries' own output."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from opensir import spec as spec_module
from opensir.spec import SpecError
from opensir.storage import ArtifactStore


def quiet_libraries() -> None:
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


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the commands that read a run's store: a manifest or the store itself."""
    parser.add_argument("target", metavar="FILE", help="run.yaml, or the run's store (directory or URI)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--endpoint", default=None, help="S3 endpoint (host:port) for an s3:// URI")


def target_store(args: argparse.Namespace) -> ArtifactStore:
    """The run's store from a manifest (its spec.storage, namespace and name) or from a store URI."""
    from opensir.cli.status import store_from_uri
    from opensir.storage import open_store

    path = Path(args.target)
    if path.is_file():
        run = load_with_overrides(path, args.overrides)
        return open_store(run.spec.storage, run.metadata.namespace, run.metadata.name)
    return store_from_uri(args.target, endpoint=args.endpoint)
