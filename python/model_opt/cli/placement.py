"""Placement subcommands: `plan` one CSV file, `validate` a solution, `bench-placement` a set of files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_opt._native import PLACEMENT_METHODS, ModelOptError, plan_csv, validate_csv
from model_opt.cli.args import nonnegative_bytes, seconds
from model_opt.cli.exit import EXIT_OK, error, exit_status_of
from model_opt.reports import PlacementSummary


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="place the buffers of a MiniMalloc CSV file")
    p.add_argument("input", type=Path, metavar="INPUT.csv")
    p.add_argument("--capacity", type=nonnegative_bytes, metavar="BYTES", help="arena capacity to fit within")
    p.add_argument(
        "--minimize-below-capacity",
        action="store_true",
        help="with --capacity: once a plan fits, keep minimizing until the time limit or the optimum "
        "(default: stop at the first plan that fits; without --capacity the planner always minimizes)",
    )
    p.add_argument("--method", choices=PLACEMENT_METHODS, default=PLACEMENT_METHODS[0])
    p.add_argument("--time-limit", type=seconds, default=5.0, metavar="SECONDS")
    p.add_argument("--output", "-o", type=Path, metavar="OUT.csv", help="write the solution CSV here")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print incumbent, bound and elapsed time to stderr as they improve (default: stderr is a tty)",
    )
    p.set_defaults(func=run_plan)

    v = subparsers.add_parser("validate", help="check the offsets of a solution CSV file")
    v.add_argument("input", type=Path, metavar="SOLUTION.csv")
    v.add_argument("--capacity", type=nonnegative_bytes, metavar="BYTES")
    v.set_defaults(func=run_validate)

    b = subparsers.add_parser(
        "bench-placement", help="plan every CSV file given (or in the directories given) and print a table"
    )
    b.add_argument("inputs", type=Path, nargs="+", metavar="PATH", help="CSV files or directories")
    b.add_argument("--method", choices=PLACEMENT_METHODS, default=PLACEMENT_METHODS[0])
    b.add_argument("--time-limit", type=seconds, default=5.0, metavar="SECONDS")
    b.set_defaults(func=run_bench)


def _print_progress(incumbent: int | None, bound: int, elapsed: float, phase: str) -> None:
    shown = "none" if incumbent is None else incumbent
    print(f"[{phase}] incumbent={shown} bound={bound} elapsed={elapsed:.3f}s", file=sys.stderr, flush=True)


def summary_line(report: PlacementSummary) -> str:
    return (
        f"buffers={report['buffers']} lower_bound={report['lower_bound_bytes']} "
        f"proven_bound={report['proven_bound_bytes']} peak={report['peak_bytes']} "
        f"peak/lower_bound={report['ratio']:.4f} method={report['method']} status={report['status']} "
        f"time={report['seconds']:.3f}s"
    )


def run_plan(args: argparse.Namespace) -> int:
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        report = plan_csv(
            args.input,
            output=args.output,
            capacity=args.capacity,
            method=args.method,
            time_limit=args.time_limit,
            progress=_print_progress if show_progress else None,
            minimize_below_capacity=args.minimize_below_capacity,
        )
    except ModelOptError as e:
        return error("plan", e, exit_status_of(e))
    print(summary_line(report))
    return EXIT_OK


def run_validate(args: argparse.Namespace) -> int:
    try:
        report = validate_csv(args.input, capacity=args.capacity)
    except ModelOptError as e:
        return error("validate", e, exit_status_of(e))
    r = report
    print(f"valid: buffers={r['buffers']} lower_bound={r['lower_bound_bytes']} peak={r['peak_bytes']}")
    return EXIT_OK


def _csv_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.csv")) if path.is_dir() else [path])
    return files


def run_bench(args: argparse.Namespace) -> int:
    files = _csv_files(args.inputs)
    if not files:
        return error("bench-placement", "no CSV files found")
    header = [
        "instance",
        "buffers",
        "lower bound",
        "peak",
        "peak / lower bound",
        "method",
        "status",
        "time (s)",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    status = EXIT_OK
    for path in files:
        try:
            r = plan_csv(path, method=args.method, time_limit=args.time_limit)
        except ModelOptError as e:
            status = error("bench-placement", e, exit_status_of(e))
            continue
        row = [
            path.stem,
            r["buffers"],
            r["lower_bound_bytes"],
            r["peak_bytes"],
            f"{r['ratio']:.4f}",
            r["method"],
            r["status"],
            f"{r['seconds']:.3f}",
        ]
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    return status
