"""The largest batch that fits a GPU's memory, per model: PyTorch (its caching allocator's model on a
device of that size), the model_opt arena, and the arena with the reordered step, at each budget.

    .venv/bin/python benches/fit_table.py [--models resnet18 gpt2 ...] [--memory 16GiB 80GiB]
                                          [--precision fp32 bf16 amp] [--remat]

Each model is captured once per precision (`model_opt.fit.prepare_model`: built and captured with fake
tensors, AdamW; ``fp32``, ``bf16`` parameters, or ``amp``: float32 parameters under autocast to
bfloat16) and every budget is answered from the same estimates. Prints a markdown table for BENCHMARKS.md, one
row per model and budget, with Hugging Face accelerate's `estimate-memory` figure for training with Adam
(4x the weights, no activations) beside it. With ``--remat``, two more columns: the step with
recomputation (`model_opt.fit`'s ``remat`` way, 20% of the step's operations at most), and its ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from model_opt.apps.models import BENCH_MODELS
from model_opt.fit import parse_memory, prepare_model, remat_summary

GIB = 2**30
#: The benchmark's models but two small CNNs like others of the set (googlenet, squeezenet).
MODELS = [m for m in BENCH_MODELS if m not in ("googlenet", "squeezenet")]
HEADER = [
    "model",
    "precision",
    "budget",
    "PyTorch",
    "model_opt arena",
    "ratio",
    "reordered + arena",
    "ratio",
    "remat + reordered + arena",
    "ratio",
    "live peak at arena's batch (GiB)",
    "accelerate Adam (GiB)",
    "captures",
    "time (s)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--memory", nargs="+", default=["16GiB", "80GiB"])
    parser.add_argument("--time-limit", type=float, default=1.0)
    parser.add_argument("--max-batch", type=int, default=16384)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16", "amp"])
    parser.add_argument("--remat", action="store_true", help="also with recomputation (two more columns)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = [h for i, h in enumerate(HEADER) if args.remat or i not in (8, 9)]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|", flush=True)
    notes: list[str] = []  # what each remat way recomputes, printed below the table
    for name, precision in ((m, p) for m in args.models for p in args.precision):
        started = time.perf_counter()
        dtype, amp = ("fp32", True) if precision == "amp" else (precision, False)
        options = dict(time_limit=args.time_limit, dtype=dtype, amp=amp, remat=args.remat)
        fitting = prepare_model(name, sizes=(1, args.max_batch), **options)
        for memory in args.memory:
            r = fitting.report(memory)
            n = r["largest"]
            arena = r["at_largest"]["arena"]
            live = f"{arena['eager_live_peak_bytes'] / GIB:.2f}" if arena else ""

            def ratio(x: float | None) -> str:
                return f"{x:.2f}x" if x else ""

            row = [
                name,
                precision,
                f"{parse_memory(memory) / GIB:.0f} GiB",
                n["pytorch"],
                n["arena"],
                ratio(r["ratio_arena"]),
                n["reordered"],
                ratio(r["ratio_reordered"]),
                *([n["remat"], ratio(r["ratio_remat"])] if args.remat else []),
                live,
                f"{r['accelerate_adam_bytes'] / GIB:.2f}",
                r["captures"],
                f"{time.perf_counter() - started:.0f}",
            ]
            print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
        if fitting.remat is not None:
            notes.append(f"- {name} {precision}: {remat_summary(fitting.remat)}")
    if notes:
        print("\nRecomputation (the remat way):\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
