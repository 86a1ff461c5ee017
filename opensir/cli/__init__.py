"""The ``opensir`` command line: one module per group of commands, errors printed without a traceback.

``manifest`` (validate, crd, reference), ``run`` (run, bootstrap), ``show`` (status, pool, plot)
and ``eval``; ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from opensir.cli import eval as eval_command
from opensir.cli import manifest, show
from opensir.cli import run as run_command
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
    parser = argparse.ArgumentParser(prog="opensir", description="validate and run SelfPlayRun manifests")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    manifest.add_parsers(commands)
    run_command.add_parsers(commands)
    show.add_parsers(commands)
    eval_command.add_parser(commands)
    return parser
