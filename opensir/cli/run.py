"""``opensir run`` and ``opensir bootstrap``: self-play (or only its bootstrap phase) on this machine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from opensir import reference
from opensir.cli.common import load_with_overrides, quiet_libraries
from opensir.spec import SpecError


def add_parsers(commands: Any) -> None:
    """Add the commands of this module to the CLI's subparsers."""
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

    boot = commands.add_parser(
        "bootstrap",
        help="only grow the seed problems into an in-band pool (selfPlay.bootstrap)",
        description="Run only the bootstrap phase of a SelfPlayRun; `opensir run` continues from its result.",
    )
    boot.add_argument("file", type=Path, metavar="FILE", help="the SelfPlayRun manifest (run.yaml)")
    boot.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    boot.set_defaults(handler=_bootstrap)


def _run(args: argparse.Namespace) -> int:
    run = load_with_overrides(args.file, args.overrides)
    quiet_libraries()
    # Heavy imports (torch, transformers) only once the manifest is known to be good.
    from opensir.loop import run_selfplay
    from opensir.loop.metrics import METRICS_PORT_ENV, RunMetrics

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


def _bootstrap(args: argparse.Namespace) -> int:
    run = load_with_overrides(args.file, args.overrides)
    if not run.spec.self_play.bootstrap.enabled:
        problem = ("spec.selfPlay.bootstrap.enabled", False, "must be true for opensir bootstrap")
        raise SpecError(str(args.file), [problem])
    quiet_libraries()
    from opensir.loop import run_bootstrap

    pool = run_bootstrap(run)
    print(f"bootstrap: pool of {len(pool)} problems")
    return 0
