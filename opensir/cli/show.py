"""``opensir status``, ``opensir pool`` and ``opensir plot``: a run as its store shows it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from opensir.cli.common import add_target_arguments, target_store


def add_parsers(commands: Any) -> None:
    """Add the commands of this module to the CLI's subparsers."""
    where = "FILE is a SelfPlayRun manifest (with --set), or a run's store: a directory, file://… or s3://…/NS/RUN"
    status = commands.add_parser(
        "status",
        help="summarise a run from its store",
        description="Summarise a run from its store. " + where,
    )
    add_target_arguments(status)
    status.add_argument("--last", type=int, default=10, metavar="N", help="steps in the table (default 10)")
    status.set_defaults(handler=_status)

    pool = commands.add_parser(
        "pool",
        help="list, sample and search the problems of a run's pool",
        description="List, sample and search the problems of a run's pool (from its newest committed "
        "checkpoint). " + where,
    )
    add_target_arguments(pool)
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
    add_target_arguments(plot)
    plot.add_argument(
        "--out", type=Path, default=Path("curriculum.png"), help="PNG file (default curriculum.png)"
    )
    plot.set_defaults(handler=_plot)


def _status(args: argparse.Namespace) -> int:
    from opensir.cli.status import format_status, read_summary

    print(format_status(read_summary(target_store(args)), last=args.last))
    return 0


def _pool(args: argparse.Namespace) -> int:
    from opensir.cli.status import format_pool, load_pool, pool_json, select_problems

    checkpoint, entries = load_pool(target_store(args), args.checkpoint)
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
    from opensir.cli.plots import plot_curriculum
    from opensir.cli.status import RunNotFoundError, load_pool
    from opensir.layout import read_history

    store = target_store(args)
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
