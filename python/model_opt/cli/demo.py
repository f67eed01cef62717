"""The `demo` subcommand: train a real model end to end with model_opt and print what it saves."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model_opt.cli.args import positive_int, seconds
from model_opt.cli.exit import EXIT_BAD_INPUT, EXIT_OK
from model_opt.cli.exit import EXIT_CHECKS_FAILED as EXIT_FAILED


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser(
        "demo",
        help="train a torchvision model with reordering and the planned arena; check it against eager",
        description="Trains a torchvision model (random weights) a few steps with model_opt end to end: "
        "capture and reorder, profile, plan, planned steps; checks the losses against eager PyTorch and "
        "reports peaks, arena, the caching allocator's reservation and step times. Exit 0 when every "
        "check passes, 1 when one fails, 2 on a bad argument.",
    )
    d.add_argument("--model", default="resnet18", metavar="NAME", help="torchvision model (default resnet18)")
    d.add_argument("--batch-size", type=positive_int, default=4, metavar="N")
    d.add_argument("--steps", type=positive_int, default=3, metavar="N", help="planned steps (default 3)")
    d.add_argument("--image-size", type=positive_int, default=64, metavar="PIXELS")
    d.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    d.add_argument(
        "--time-limit",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="for the reorder solve and the plan",
    )
    d.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch CPU threads")
    d.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON here")
    d.add_argument("--trace-dir", type=Path, metavar="DIR", help="keep the recorded trace CSV here")
    d.add_argument("--plot-dir", type=Path, metavar="DIR", help="write plan.png and live_bytes.png here")
    d.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401

        from model_opt.apps.demo import DemoError, format_report, run_demo
    except ImportError as e:
        print(f"model-opt demo: needs PyTorch and torchvision ({e})", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        report = run_demo(
            model=args.model,
            batch_size=args.batch_size,
            steps=args.steps,
            image_size=args.image_size,
            device=args.device,
            time_limit=args.time_limit,
            threads=args.threads,
            progress=not args.quiet,
            trace_dir=args.trace_dir,
            plot_dir=args.plot_dir,
        )
    except DemoError as e:
        print(f"model-opt demo: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # a failure of the pipeline itself: one clear line, then the details
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(f"model-opt demo: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(format_report(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if not report.ok:
        for problem in report.problems:
            print(f"model-opt demo: {problem}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
