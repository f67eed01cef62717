"""The `bench` subcommand: the benchmark table over models x modes x batch sizes, as CSV and markdown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_opt._native import SCHEDULE_METHODS
from model_opt.cli.args import nonnegative_float, positive_int, seconds
from model_opt.cli.exit import EXIT_BAD_INPUT, EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser(
        "bench",
        help="benchmark table: reordering, arena vs lower bound and PyTorch's caching allocator, per model",
        description="For each model, mode and batch size: capture and reorder the step (simulated peaks), "
        "and, for steps small enough to run on CPU, record the reordered step's real trace and report the "
        "planned arena, its lower bound and PyTorch's caching allocator on it. Writes bench.csv and "
        "bench.md into --output-dir.",
    )
    b.add_argument("--model", nargs="+", default=["resnet18"], metavar="NAME", help="models, or 'all'")
    b.add_argument("--mode", nargs="+", choices=["train", "eval"], default=["train"])
    b.add_argument("--batch-size", nargs="+", type=positive_int, default=[1], metavar="N")
    b.add_argument("--time-limit", type=seconds, default=10.0, metavar="SECONDS", help="per solve")
    b.add_argument("--method", choices=SCHEDULE_METHODS, default="auto", help="scheduling method")
    b.add_argument(
        "--trace-max-gb",
        type=nonnegative_float,
        default=1.0,
        metavar="GB",
        help="record a real trace only when the simulated eager peak is at most this (0: never)",
    )
    b.add_argument("--threads", type=positive_int, default=1, metavar="N", help="torch CPU threads")
    b.add_argument("--output-dir", type=Path, default=Path("bench-results"), metavar="DIR")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import torch

        from model_opt.apps import bench, bench_reorder
    except ImportError as e:
        print(f"model-opt bench: needs PyTorch and torchvision ({e})", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        models = bench_reorder.resolve_models(args.model)
    except ValueError as e:
        print(f"model-opt bench: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"model-opt bench: cannot create {args.output_dir}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    torch.set_num_threads(args.threads)
    csv_path, md_path = args.output_dir / "bench.csv", args.output_dir / "bench.md"
    rows: list[bench.BenchRow] = []
    print("| " + " | ".join(bench.HEADER) + " |")
    print("|" + "|".join("---" for _ in bench.HEADER) + "|", flush=True)
    for model in models:
        for mode in args.mode:
            for batch in args.batch_size:
                row = bench.run_row(model, mode, batch, args.time_limit, args.method, args.trace_max_gb)
                rows.append(row)
                print(bench.markdown_row(row), flush=True)
                bench.write_csv(rows, csv_path)  # rewritten after every row: a long run leaves results
    table = bench.markdown_table(rows)
    md_path.write_text(table + "\n")
    print("\n".join(table.split("\n")[len(rows) + 2 :]))
    print(f"wrote {csv_path} and {md_path}", file=sys.stderr)
    return EXIT_OK
