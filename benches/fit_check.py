"""`model_opt.fit`'s predictions against real runs on CPU under the runtime's memory limit.

    .venv/bin/python benches/fit_check.py [--models mlp resnet18] [--memory 64MiB 1GiB]

Per model and budget (`model_opt.apps.fit_check.check`): the predicted arena against the arena the
runtime planned from the real trace at the predicted batch, the predicted total (arena, and the pool
with the resident tensors) against what the runtime holds, and the predicted largest batch against
the largest batch whose real run fits the budget (bisection over fresh processes), with the limit set
from the first step and with the limit set once the plan is made. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

from model_opt.apps.fit_check import check

MIB = 2**20
HEADER = [
    "model",
    "budget",
    "predicted: PyTorch / arena",
    "arena predicted (MiB)",
    "arena measured (MiB)",
    "error",
    "total predicted (MiB)",
    "total measured (MiB)",
    "error",
    "largest real, limit from the start",
    "largest real, limit from the plan",
    "time (s)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "resnet18"])
    parser.add_argument("--memory", nargs="+", default=["64MiB", "1GiB"])
    args = parser.parse_args()
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("---" for _ in HEADER) + "|", flush=True)
    for name, memory in zip(args.models, args.memory):
        started = time.perf_counter()
        r = check(name, memory, max_size=65536)
        p = r["predicted"]
        row = [
            name,
            memory,
            f"{p['pytorch']} / {p['arena']}",
            f"{r['arena_predicted_bytes'] / MIB:.1f}",
            f"{r['arena_measured_bytes'] / MIB:.1f}",
            f"{100 * r['arena_error']:+.1f}%",
            f"{r['total_predicted_bytes'] / MIB:.1f}",
            f"{r['total_measured_bytes'] / MIB:.1f}",
            f"{100 * r['total_error']:+.1f}%",
            r["largest_real_limit_from_start"],
            r["largest_real_limit_from_plan"],
            f"{time.perf_counter() - started:.0f}",
        ]
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)


if __name__ == "__main__":
    main()
