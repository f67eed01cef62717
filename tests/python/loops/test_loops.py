"""Real training loops, each written as its tutorial writes it (loop_worker.py), run plain and under
model_opt in separate processes with the same seeds. Each test asserts:

- the losses of every iteration are bit-identical (compared as float.hex);
- the final parameters and buffers are bit-identical (sha256 of each tensor's bytes);
- every planned step whose signature label (padded length, batch size, accumulation phase: what the
  loop knows of its shapes) was seen in an earlier profiled or planned step has zero divergences;
- no step was abandoned (``last_step["abandoned"]`` and ``stats()["abandoned_steps"]``);
- no free of a pointer model_opt did not allocate (``unknown_frees``), in particular with forked
  DataLoader workers;
- the runtime planned at most one signature per distinct label (``stats()["plans"]``, when reported;
  one more with step keys: the profiled step has no key);
- after every planned step, what the runtime reserves is the largest plan's arena (at most 1.05 times
  the largest lower bound) plus what is live in the fallback pool and at most 8 MiB of its cache;
- the most it reserved at once (``peak_reserved_bytes``) is at most 1.10 times the most allocated at
  once plus 8 MiB: the warm-up's or an unplanned step's temporaries never sit in the pool beside the
  arena.

The peak RSS of model_opt over plain is printed (``pytest -rP`` shows it), not asserted: it is a
benchmark (benches/loops/run.py, BENCHMARKS.md). Each loop is small (a few seconds per process); the
two modes run side by side, so the suite takes about a minute on 2 cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
WORKER = HERE / "loop_worker.py"
sys.path.insert(0, str(HERE))
from loop_worker import analyse, step_table  # noqa: E402

pytestmark = pytest.mark.loops

TIMEOUT = 300
SEED = 0
# Cached pool memory allowed after a step: a few of the pool's 2 MiB segments.
POOL_CACHE_SLACK = 8 << 20


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = -9
    text = log.read_text(errors="replace")
    return rc, text[-6000:]


def run_both(loop: str, tmp_path: Path, *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs the loop plain and under model_opt, each in its own process (side by side)."""
    procs = {}
    for mode in ("plain", "model_opt"):
        cmd = [sys.executable, str(WORKER), "--loop", loop, "--mode", mode, "--seed", str(SEED),
               "--out", str(tmp_path / f"{mode}.json"), *extra]  # fmt: skip
        procs[mode] = start(cmd, tmp_path / f"{mode}.log")
    results = {}
    for mode, proc in procs.items():
        rc, tail = finish(proc, tmp_path / f"{mode}.log")
        assert rc == 0, f"{loop} {mode} exited with {rc}:\n{tail}"
        results[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    return results["plain"], results["model_opt"]


def check(name: str, plain: dict[str, Any], planned: dict[str, Any]) -> dict[str, Any]:
    """Asserts everything the suite promises at once, so that one run names every failure."""
    a = analyse(plain, planned)
    print(
        f"{name}: peak RSS model_opt/plain {a['peak_rss_ratio']:.3f} "
        f"({a['model_opt_peak_rss_kib']} / {a['plain_peak_rss_kib']} KiB), growth during the loop "
        f"{a['model_opt_loop_rss_growth_kib']} / {a['plain_loop_rss_growth_kib']} KiB; "
        f"labels {len(a['labels'])}, plans {a['plans']}; divergences on first sight "
        f"{a['first_sight_divergences']}, on repeats {sum(d for _, _, d in a['repeat_divergences'])}; "
        f"pool cache at most {a['max_pool_cache_bytes'] / 2**20:.1f} MiB, arena at most "
        f"{a['max_arena_over_bound']:.3f} x the largest lower bound; peak reserved "
        f"{a['peak_reserved_bytes'] / 2**20:.1f} MiB for {a['peak_allocated_bytes'] / 2**20:.1f} MiB "
        "allocated at most"
    )
    failures = []
    if not a["losses_identical"]:
        failures.append(f"losses differ from plain PyTorch from iteration {a['first_loss_difference']}")
    if not a["params_identical"]:
        failures.append(f"final parameters differ from plain PyTorch: {a['params_differing'][:8]}")
    if a["repeat_divergences"]:
        failures.append(
            "divergences on steps whose signature was seen before (index, label, divergences): "
            f"{a['repeat_divergences']}"
        )
    if a["abandoned"] or a["abandoned_steps"]:
        failures.append(f"abandoned steps: {a['abandoned']} (abandoned_steps={a['abandoned_steps']})")
    # reserved_bytes = arena + pool: the arena is the largest plan's (about its lower bound), and the
    # pool holds what is live outside steps (weights, optimizer state, kept outputs) plus a little
    # cache; never the warm-up's or an unplanned step's temporaries on top of the arena.
    if a["max_arena_over_bound"] > 1.05:
        failures.append(f"arena {a['max_arena_over_bound']:.3f} x the largest lower bound (> 1.05)")
    if a["max_pool_cache_bytes"] > POOL_CACHE_SLACK:
        failures.append(
            f"fallback pool reserved {a['max_pool_cache_bytes'] / 2**20:.1f} MiB beyond what was live "
            f"after a step (> {POOL_CACHE_SLACK >> 20} MiB)"
        )
    # Never a step's temporaries in both the arena and the pool: the most reserved at once is the most
    # allocated at once, give or take rounding and a few cached segments.
    if a["peak_reserved_bytes"] > 1.10 * a["peak_allocated_bytes"] + POOL_CACHE_SLACK:
        failures.append(
            f"peak reserved {a['peak_reserved_bytes'] / 2**20:.1f} MiB for a peak of "
            f"{a['peak_allocated_bytes'] / 2**20:.1f} MiB allocated (> 1.10 x + 8 MiB)"
        )
    if a["unknown_frees"]:
        failures.append(f"{a['unknown_frees']} frees of pointers model_opt did not allocate")
    # With step keys the profiled step (profile() takes no key) may hold one more, unkeyed, plan.
    most = len(a["labels"]) + (1 if planned.get("use_key") else 0)
    if a["plans"] is not None and not 1 <= a["plans"] <= most:
        failures.append(f"{a['plans']} plans for {len(a['labels'])} distinct step labels {a['labels']}")
    if a["repeat_new_signature"]:
        # Not a failure by itself (a label may be coarser than a signature), but worth seeing.
        print(f"{name}: new signature reported on a seen label: {a['repeat_new_signature']}")
    if failures:
        pytest.fail(
            f"{name}:\n- " + "\n- ".join(failures) + "\nsteps:\n" + step_table(planned), pytrace=False
        )
    return a


@pytest.mark.parametrize(
    "loop",
    [
        # HF GPT-2 (random init from a config) with dynamic padding, AdamW, linear LR schedule,
        # clip_grad_norm_: every batch padded to its longest sequence, lengths repeat.
        "gpt2",
        # Flat gradient accumulation: 4 micro-batches, optimizer.step() inside every 4th iteration.
        # Micro-batch 0 (gradients set to None: backward's gradients are kept as .grad) requests
        # exactly what micro-batches 1-2 request, where the same tensors are temporaries: the
        # runtime tells them apart by what the device holds when the step begins.
        "accum",
        # Quickstart loop, 70 samples in batches of 16 (last batch 6), 2 epochs.
        "dataloader",
        # The same with num_workers=2: forked workers allocate through the inherited allocator.
        "dataloader_workers",
        # bf16 autocast on CPU, activation checkpointing (use_reentrant=False) with dropout.
        "autocast_ckpt",
    ],
)
def test_loop_matches_plain_pytorch(loop: str, tmp_path: Path) -> None:
    plain, planned = run_both(loop, tmp_path)
    check(loop, plain, planned)


@pytest.mark.parametrize("loop", ["gpt2", "accum"])
def test_loop_with_step_keys_matches_plain_pytorch(loop: str, tmp_path: Path) -> None:
    """The same loops naming each step's signature: model_opt.step(key=label), the label being the
    padded length and batch size (gpt2) or the accumulation phase (accum)."""
    plain, planned = run_both(loop, tmp_path, "--use-key")
    check(f"{loop} (step keys)", plain, planned)


def test_ddp_under_torchrun_matches_plain_ddp(tmp_path: Path) -> None:
    """DDP on CPU with gloo, 2 ranks started by torchrun, each rank on its own runtime and plans:
    per rank, losses and parameters equal to plain DDP's; both ranks end with the same parameters."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        found = shutil.which("torchrun")
        if found is None:
            pytest.skip("torchrun not found beside the interpreter nor on PATH")
        torchrun = Path(found)
    procs = {}
    for mode in ("plain", "model_opt"):
        cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(WORKER), "--loop", "ddp",
               "--mode", mode, "--seed", str(SEED), "--out", str(tmp_path / f"{mode}.json")]  # fmt: skip
        procs[mode] = start(cmd, tmp_path / f"{mode}.log")
    tails = {}
    for mode, proc in procs.items():
        rc, tails[mode] = finish(proc, tmp_path / f"{mode}.log")
        if rc != 0:
            no_network = any(
                s in tails[mode]
                for s in ("DistNetworkError", "RendezvousConnectionError", "Address family not supported",
                          "Cannot assign requested address", "Network is unreachable")
            )  # fmt: skip
            if mode == "plain" and no_network:
                pytest.skip(f"torchrun cannot start its rendezvous on this machine:\n{tails[mode][-1500:]}")
            raise AssertionError(f"torchrun ddp {mode} exited with {rc}:\n{tails[mode]}")
    ranks = {}
    for rank in (0, 1):
        plain = json.loads((tmp_path / f"plain.rank{rank}.json").read_text())
        planned = json.loads((tmp_path / f"model_opt.rank{rank}.json").read_text())
        assert plain["world_size"] == planned["world_size"] == 2
        check(f"ddp rank {rank}", plain, planned)
        ranks[rank] = planned
    assert ranks[0]["params"] == ranks[1]["params"], "DDP ranks ended with different parameters"
    # Each rank planned on its own runtime.
    for rank, r in ranks.items():
        assert r["plan_reports"] and r["plan_reports"][0]["buffers"] > 0, (rank, r["plan_reports"])
