"""The `snapshot` and `caching` subcommands: a recorded trace as a PyTorch memory snapshot, and what
PyTorch's CUDA caching allocator would reserve for it."""

from __future__ import annotations

import argparse
from pathlib import Path

from model_opt._native import InputError
from model_opt.cli.exit import EXIT_OK, error


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser(
        "snapshot",
        help="write a trace (and its plan) as a torch.cuda.memory._snapshot() pickle",
        description="Writes a recorded trace as a pickle in the format of torch.cuda.memory._snapshot(), "
        "readable by PyTorch's memory visualizer and torch.cuda._memory_viz. With --plan, buffers sit at "
        "their planned offsets in one arena segment; without, at the addresses PyTorch's caching "
        "allocator policy would give them.",
    )
    s.add_argument("trace", type=Path, metavar="TRACE.csv", help="MiniMalloc CSV (e.g. from save_trace)")
    s.add_argument("--plan", type=Path, metavar="SOLUTION.csv", help="a plan of the trace (plan --output)")
    s.add_argument("--output", "-o", type=Path, required=True, metavar="OUT.pickle")
    s.set_defaults(func=run_snapshot)

    c = subparsers.add_parser(
        "caching", help="replay a trace through a model of PyTorch's CUDA caching allocator"
    )
    c.add_argument("trace", type=Path, metavar="TRACE.csv")
    c.set_defaults(func=run_caching)


def run_snapshot(args: argparse.Namespace) -> int:
    from model_opt.snapshot import save_snapshot

    try:
        path = save_snapshot(args.trace, args.output, plan_csv=args.plan)
    except InputError as e:
        return error("snapshot", e)
    print(path)
    return EXIT_OK


def run_caching(args: argparse.Namespace) -> int:
    from model_opt import caching_allocator_peak

    try:
        r = caching_allocator_peak(args.trace)
    except InputError as e:
        return error("caching", e)
    print(
        f"buffers={r['buffers']} lower_bound={r['peak_requested_bytes']} "
        f"reserved_peak={r['reserved_peak_bytes']} allocated_at_peak={r['allocated_at_peak_bytes']} "
        f"fragmentation={r['fragmentation']:.4f} segments={r['segments']}"
    )
    return EXIT_OK
