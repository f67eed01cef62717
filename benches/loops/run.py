"""The real-loop suite, longer: each loop of tests/python/loops/loop_worker.py at its "bench" scale
(larger models, more steps), run plain and under model_opt alternately, each run in its own process
(the DDP loop under torchrun, 2 ranks), and a markdown table of what model_opt did:

    .venv/bin/python benches/loops/run.py [--loops gpt2 accum ...] [--rounds 3] [--scale bench]
                                          [--use-key] [--json results.json]

Columns: the loop; its planned steps; the distinct step labels the loop knows (padded length, batch
size, accumulation phase) and the signatures the runtime planned (``stats()["plans"]``, "-" when the
runtime does not report it); divergences on steps whose label was seen before (must be 0) and on first
sight; abandoned steps; whether losses and final parameters were bit-identical to plain PyTorch in every
round; peak RSS of the process, model_opt over plain; RSS growth during the loop (peak minus what was
resident before the first iteration), model_opt over plain; median step time, model_opt over plain.
Ratios are medians over the rounds; each round's plain and model_opt runs are back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LOOPS_DIR = REPO / "tests" / "python" / "loops"
WORKER = LOOPS_DIR / "loop_worker.py"
sys.path.insert(0, str(LOOPS_DIR))
from loop_worker import LOOPS, analyse  # noqa: E402


def run_once(loop: str, mode: str, seed: int, scale: str, use_key: bool, tmp: Path) -> list[dict[str, Any]]:
    """One process (two ranks for ddp); returns the result of each rank."""
    out = tmp / f"{loop}.{mode}.json"
    args = [str(WORKER), "--loop", loop, "--mode", mode, "--seed", str(seed), "--out", str(out),
            "--scale", scale] + (["--use-key"] if use_key else [])  # fmt: skip
    if loop == "ddp":
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", *args]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(
            f"{loop} {mode} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    if loop == "ddp":
        paths = [tmp / f"{loop}.{mode}.rank{r}.json" for r in (0, 1)]
    else:
        paths = [out]
    return [json.loads(p.read_text()) for p in paths]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scale", default="bench", choices=("test", "bench"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--use-key", action="store_true", help="pass each step's label as model_opt.step(key=...)")
    p.add_argument("--json", help="write every round's analysis to this file")
    args = p.parse_args()

    rows = []
    raw: dict[str, list[dict[str, Any]]] = {}
    started = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for loop in args.loops:
            rounds: dict[int, list[dict[str, Any]]] = {}
            for r in range(args.rounds):
                plain = run_once(loop, "plain", args.seed, args.scale, args.use_key, tmp)
                planned = run_once(loop, "model_opt", args.seed, args.scale, args.use_key, tmp)
                for rank, (a, b) in enumerate(zip(plain, planned)):
                    an = analyse(a, b)
                    an["round"] = r
                    rounds.setdefault(rank, []).append(an)
                print(
                    f"{loop}: round {r + 1}/{args.rounds} done ({time.time() - started:.0f} s)",
                    file=sys.stderr,
                )
            for rank, ans in rounds.items():
                name = loop if len(rounds) == 1 else f"{loop} (rank {rank})"
                raw[name] = ans
                last = ans[-1]
                time_ratios = [
                    median(a["model_opt_step_seconds"]) / median(a["plain_step_seconds"]) for a in ans
                ]
                rows.append(
                    [
                        name,
                        str(len(last["model_opt_step_seconds"])),
                        f"{len(last['labels'])} / {last['plans'] if last['plans'] is not None else '-'}",
                        str(max(sum(d for _, _, d in a["repeat_divergences"]) for a in ans)),
                        str(max(a["first_sight_divergences"] for a in ans)),
                        str(max(len(a["abandoned"]) for a in ans)),
                        "yes" if all(a["losses_identical"] and a["params_identical"] for a in ans) else "NO",
                        f"{median([a['plain_peak_rss_kib'] / 1024 for a in ans]):.0f}",
                        f"{median([a['peak_rss_ratio'] for a in ans]):.3f}",
                        f"{median([a['loop_rss_growth_ratio'] for a in ans]):.2f}",
                        f"{median([a['peak_reserved_bytes'] / 2**20 for a in ans]):.1f} / "
                        f"{median([a['peak_allocated_bytes'] / 2**20 for a in ans]):.1f}",
                        f"{1000 * median([median(a['plain_step_seconds']) for a in ans]):.1f}",
                        f"{median(time_ratios):.3f}",
                    ]
                )
    header = [
        "loop", "planned steps", "labels / plans", "divergences after first sight",
        "divergences at first sight", "abandoned steps", "bit-identical", "plain peak RSS (MiB)",
        "peak RSS model_opt/plain", "loop RSS growth model_opt/plain",
        "model_opt peak reserved / peak allocated (MiB)", "plain median step (ms)",
        "median step time model_opt/plain",
    ]  # fmt: skip
    print(f"scale={args.scale} rounds={args.rounds} seed={args.seed} use_key={args.use_key} "
          f"cores={os.cpu_count()} ({time.time() - started:.0f} s)")  # fmt: skip
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
