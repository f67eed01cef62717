"""The `plot` subcommand: draw a placement solution (address vs time) and its live bytes as PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path

from model_opt._native import InputError
from model_opt.cli.exit import EXIT_OK, error


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw a plan as a PNG: address vs time, one rectangle per buffer",
        description="Draws a solution CSV (from `model-opt plan --output`) as a PNG: address against time, "
        "one rectangle per buffer, with the peak and the lower bound.",
    )
    p.add_argument("solution", type=Path, metavar="SOLUTION.csv", help="MiniMalloc CSV with an offset column")
    p.add_argument("--output", "-o", type=Path, metavar="OUT.png", help="default: SOLUTION.png beside it")
    p.add_argument("--live", type=Path, metavar="LIVE.png", help="also draw live bytes over time here")
    p.add_argument("--title", help="plot title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from model_opt.plot import plot_plan, plot_trace_live_bytes
    except ImportError as e:  # pragma: no cover - the package imports without matplotlib
        return error("plot", e)
    if not args.solution.exists():
        return error("plot", f"{args.solution}: no such file")
    output = args.output or args.solution.with_suffix(".png")
    try:
        plot_plan(args.solution, output, title=args.title)
        if args.live:
            plot_trace_live_bytes(args.solution, args.live)
    except (ImportError, InputError) as e:
        return error("plot", e)
    print(output)
    if args.live:
        print(args.live)
    return EXIT_OK
