"""The `fit` subcommand: the largest batch size whose training step fits a memory budget, under PyTorch,
under the model_opt arena, and with the reordered step (`model_opt.fit`)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from model_opt._native import SCHEDULE_METHODS
from model_opt.cli.args import positive_int, seconds, size_range
from model_opt.cli.exit import EXIT_OK, error
from model_opt.errors import ArgumentError
from model_opt.reports import FIT_WAYS as WAYS

MIB = 2**20
GIB = 2**30


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    f = subparsers.add_parser(
        "fit",
        help="the largest batch size that fits a memory budget: PyTorch, model_opt's arena, reordered",
        description="Captures the training step with fake tensors (no memory of its size is used) and "
        "searches, by doubling then bisection, the largest batch size whose step fits --memory: under "
        "PyTorch's caching allocator (its model), under the model_opt arena, and with the step reordered "
        "as model_opt.optimize runs it. Prints the three sizes, their ratio to PyTorch's, and what "
        "the memory holds at each.",
    )
    what = f.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--model",
        metavar="NAME",
        help="a model of the benchmark registry (see bench-reorder), or gpt2_medium or llama_1b (1.1B "
        "parameters); built with fake tensors, so no memory of its size is used",
    )
    what.add_argument(
        "--script",
        metavar="FILE:FUNCTION",
        help="FUNCTION() in FILE returns (train_step, make_args), make_args(batch) the step's arguments",
    )
    f.add_argument("--memory", required=True, metavar="SIZE", help="the budget, e.g. 16GiB, 80GB, or bytes")
    f.add_argument(
        "--batch-size-range", type=size_range, default=(1, 4096), metavar="LO:HI", help="sizes tried (1:4096)"
    )
    f.add_argument("--seq-len", type=positive_int, metavar="N", help="token models: tokens a sequence (128)")
    f.add_argument(
        "--seq-len-range",
        type=size_range,
        metavar="LO:HI",
        help="token models: search the sequence length instead, at --batch-size",
    )
    f.add_argument("--batch-size", type=positive_int, default=1, metavar="N", help="with --seq-len-range (1)")
    f.add_argument(
        "--optimizer",
        choices=["sgd", "adam", "adamw"],
        help="with --model: the training step's optimizer (adamw)",
    )
    f.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="with --model: the parameters' type (bf16, fp16: pure low-precision training; fp32)",
    )
    f.add_argument(
        "--amp",
        action="store_true",
        help="with --model: forward and loss under torch.autocast to bfloat16 (mixed precision)",
    )
    f.add_argument(
        "--remat",
        action="store_true",
        help="also with recomputation (what model_opt.optimize(allow=('reorder', 'remat')) recomputes within "
        "20%% of the step's operations, chosen once on a small capture): a fourth column",
    )
    f.add_argument("--time-limit", type=seconds, default=1.0, metavar="SECONDS", help="per solve, per size")
    f.add_argument("--method", choices=SCHEDULE_METHODS, default="auto", help="scheduling method")
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    f.add_argument("--plot", type=Path, metavar="PNG", help="draw memory against batch size, with the budget")
    f.add_argument("--threads", type=positive_int, default=1, metavar="N", help="torch CPU threads")
    f.set_defaults(func=run)


def _load_script(spec: str) -> tuple[Any, Any]:
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ArgumentError(f"--script {spec!r} must be FILE:FUNCTION")
    module_spec = importlib.util.spec_from_file_location("model_opt_fit_script", path)
    if module_spec is None or module_spec.loader is None or not Path(path).is_file():
        raise ArgumentError(f"--script: cannot read {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    setup = getattr(module, name, None)
    if not callable(setup):
        raise ArgumentError(f"--script: {path} has no function {name}")
    made = setup()
    if not (isinstance(made, tuple) and len(made) == 2 and all(callable(x) for x in made)):
        raise ArgumentError(f"--script: {name}() must return (train_step, make_args)")
    return made


def _size(n: int | None) -> str:
    return "none" if n is None else str(n)


def format_report(r: dict[str, Any]) -> str:
    """The report as the few lines a person reads."""
    what = r["model"] or "the step"
    if r.get("dtype") is not None:
        what += f" ({r['dtype']}{', autocast bf16' if r.get('amp') else ''})"
    lo, hi = r["sizes"]
    how = "fitted from" if r["fitted"] else "captured at every size,"
    variable = r["variable"].replace("_", " ").replace("seq len", "sequence length")
    lines = [
        f"{what}: the largest {variable} in {lo}..{hi} under {r['memory_bytes'] / GIB:.2f} GiB "
        f"({how} {r['captures']} captures, {r['seconds']:.1f} s)",
    ]
    ways = [w for w in WAYS if w in r["largest"]]
    for way in ways:
        label = WAYS[way]
        n = r["largest"][way]
        ratio = r.get(f"ratio_{way}")
        lines.append(f"  {label:<36}{_size(n):>8}" + (f"   {ratio:.2f}x" if ratio else ""))
    lines.append("  at that size:           needs (MiB)  live peak (MiB)  PyTorch reserves (MiB)")
    for way in ways:
        e = r["at_largest"][way]
        if e is not None:
            lines.append(
                f"  {way:<10} size {e['size']:<9}{e[f'{way}_bytes'] / MIB:>12.0f}"
                f"{e['eager_live_peak_bytes'] / MIB:>17.0f}{e['pytorch_reserved_bytes'] / MIB:>24.0f}"
            )
    weights, state = r["weights_bytes"] / MIB, r["optimizer_state_bytes"] / MIB
    accelerate = r["accelerate_adam_bytes"] / MIB
    if r.get("remat"):
        from model_opt.fit import remat_summary  # here: this module loads without torch

        lines.append(f"  remat: {remat_summary(r['remat'])}")
    lines.append(
        f"  weights {weights:.0f} MiB, optimizer state {state:.0f} MiB; "
        f"accelerate estimate-memory (Adam, no activations): {accelerate:.0f} MiB"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        import torch

        from model_opt.capture.dataflow import CaptureError
        from model_opt.fit import fit, fit_model, parse_memory
    except ImportError as e:
        return error("fit", f"needs PyTorch and torchvision ({e})")
    torch.set_num_threads(args.threads)

    def progress(e: Any) -> None:
        if not args.json:
            remat = "" if e["remat_bytes"] is None else f", remat {e['remat_bytes'] / MIB:.0f} MiB"
            print(
                f"  size {e['size']}: PyTorch {e['pytorch_bytes'] / MIB:.0f} MiB, arena "
                f"{e['arena_bytes'] / MIB:.0f} MiB, reordered {e['reordered_bytes'] / MIB:.0f} MiB{remat}",
                file=sys.stderr,
                flush=True,
            )

    try:
        memory = parse_memory(args.memory)
        options: dict[str, Any] = dict(
            memory=memory,
            sizes=args.batch_size_range,
            time_limit=args.time_limit,
            method=args.method,
            progress=progress,
            remat=args.remat,
        )
        if args.model is not None:
            if args.model == "all":
                raise ArgumentError("--model takes one model")
            precision = dict(optimizer=args.optimizer or "adamw", dtype=args.dtype, amp=args.amp)
            if args.seq_len_range is not None:
                if args.seq_len is not None:
                    raise ArgumentError("--seq-len and --seq-len-range exclude each other")
                options["sizes"] = args.seq_len_range
                report = fit_model(
                    args.model, variable="seq_len", batch_size=args.batch_size, **precision, **options
                )
            else:
                report = fit_model(args.model, seq_len=args.seq_len, **precision, **options)
        else:
            if args.dtype != "fp32" or args.amp or args.optimizer is not None:
                raise ArgumentError(
                    "--optimizer, --dtype and --amp go with --model; a --script step sets its own "
                    "(its optimizer, its parameters' dtype, torch.autocast in the step)"
                )
            step, make_args = _load_script(args.script)
            report = fit(step, make_args, **options)
    except (ArgumentError, CaptureError) as e:
        return error("fit", e)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(dict(report)))
    if args.plot is not None:
        from model_opt.plot import plot_fit

        path = plot_fit(report, args.plot)
        print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK
