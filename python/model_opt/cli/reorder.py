"""The `bench-reorder` subcommand: capture, schedule and report operator reordering over models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_opt._native import SCHEDULE_METHODS
from model_opt.cli.args import positive_int, seconds
from model_opt.cli.exit import EXIT_BAD_INPUT, EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser(
        "bench-reorder",
        help="capture training/inference steps of the MODel model set and reorder them for a lower peak",
    )
    b.add_argument("--model", nargs="+", default=["alexnet"], metavar="NAME", help="models, or 'all'")
    b.add_argument("--mode", nargs="+", choices=["train", "eval"], default=["train"])
    b.add_argument("--batch-size", nargs="+", type=positive_int, default=[32], metavar="N")
    b.add_argument("--time-limit", type=seconds, default=10.0, metavar="SECONDS", help="per configuration")
    b.add_argument("--method", choices=SCHEDULE_METHODS, default="auto", help="scheduling method")
    b.add_argument(
        "--optimizer",
        choices=["sgd", "adam", "adamw"],
        default="sgd",
        help="the training step's optimizer (its state is created first and counted as resident)",
    )
    b.add_argument(
        "--measure", action="store_true", help="also run both orders for real and measure their peaks (slow)"
    )
    b.add_argument("--csv", type=Path, metavar="OUT.csv", help="write every row here")
    b.add_argument("--markdown", type=Path, metavar="OUT.md", help="write the markdown table here")
    b.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    try:
        import torch

        from model_opt.apps import bench_reorder as bench
    except ImportError as e:
        print(f"model-opt bench-reorder: needs PyTorch and torchvision ({e})", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        models = bench.resolve_models(args.model)
    except ValueError as e:
        print(f"model-opt bench-reorder: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    torch.set_num_threads(1)
    rows = []
    print("| " + " | ".join(bench.HEADER) + " |")
    print("|" + "|".join("---" for _ in bench.HEADER) + "|", flush=True)
    for model in models:
        for mode in args.mode:
            for batch in args.batch_size:
                row = bench.run_one(
                    model, mode, batch, args.time_limit, args.method, args.measure, args.optimizer
                )
                rows.append(row)
                print(bench.markdown_row(row), flush=True)
                if args.csv:  # rewritten after every row so a long run leaves partial results
                    bench.write_csv(rows, args.csv)
    table = bench.markdown_table(rows)
    print(table.split("\n")[-1])
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return EXIT_OK
