"""``opensir validate``, ``opensir crd`` and ``opensir reference``: manifests and what the spec generates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from opensir import reference
from opensir import spec as spec_module
from opensir.spec import SpecError


def add_parsers(commands: Any) -> None:
    """Add the commands of this module to the CLI's subparsers."""
    validate = commands.add_parser("validate", help="check SelfPlayRun manifests and name every problem")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(handler=_validate)

    crd = commands.add_parser("crd", help="print the SelfPlayRun CustomResourceDefinition")
    crd.set_defaults(handler=_crd)

    docs = commands.add_parser("reference", help="print the spec reference (docs/spec.md) as markdown")
    docs.set_defaults(handler=_reference)


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
