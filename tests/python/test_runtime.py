"""The allocator runtime through Python: PyTorch accepts the allocator, and real CPU training on the
planned arena is bit-identical to PyTorch's own allocator. Each case runs in a fresh interpreter,
because an installed allocator cannot be removed from a process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
# The keys the issue promises in stats().
STATS_KEYS = (
    "mode",
    "allocated_bytes",
    "peak_allocated_bytes",
    "reserved_bytes",
    "arena_bytes",
    "lower_bound_bytes",
    "planned_hits",
    "fallback_allocations",
    "fallback_bytes",
    "divergences",
    "plan_active",
)


def run_python(code: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def test_allocator_is_accepted_once_by_pytorch_without_a_gpu() -> None:
    out = run_python(
        """
        import torch, model_opt
        a = model_opt.allocator()
        assert isinstance(a, torch.cuda.memory.CUDAPluggableAllocator)
        torch.cuda.memory.change_current_allocator(a)
        print("accepted")
        print("hooks:", ",".join(sorted(model_opt.runtime.hooks_installed)))
        try:
            model_opt.allocator()
        except model_opt.ModelOptError as e:
            print("second:", e)
        """
    )
    assert out.returncode == 0, out.stderr
    assert "accepted" in out.stdout
    # The optional hooks are set through the setters PyTorch's _CUDAPluggableAllocator exposes.
    assert "hooks: set_init_fn,set_memory_fraction_fn,set_record_stream_fn,set_reset_fn" in out.stdout
    assert "second: model_opt.allocator() was already called" in out.stdout
    assert "before any CUDA tensor" in out.stdout


def test_runtime_api_on_the_cpu_shim(tmp_path: Path) -> None:
    out = run_python(
        f"""
        import json, torch, model_opt
        errors = []
        try:
            with model_opt.step():
                pass
        except model_opt.ModelOptError as e:
            errors.append(str(e))
        model_opt.install_cpu_allocator()
        def work():
            x = torch.ones(1000)
            y = (x * 2 + 1).sum()
            return float(y)
        with model_opt.profile():
            work()
        report = model_opt.plan(time_limit=1.0)
        with model_opt.step():
            work()
        s = model_opt.stats()
        paths = model_opt.save_trace({str(tmp_path / "trace.csv")!r})
        checked = model_opt.plan_csv(str(paths[0]))
        model_opt.reset_peak_stats()
        print(json.dumps(dict(errors=errors, report=report, stats=s, checked=checked,
                              peak=model_opt.stats()["peak_allocated_bytes"])))
        """
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert "profile()" in r["errors"][0] and "plan()" in r["errors"][0]
    assert r["report"]["buffers"] >= 2 and r["report"]["arena_bytes"] >= r["report"]["lower_bound_bytes"]
    s = r["stats"]
    for key in STATS_KEYS:
        assert key in s
    assert s["mode"] == "planned" and s["divergences"] == 0 and s["planned_hits"] == r["report"]["buffers"]
    assert r["checked"]["buffers"] == r["report"]["buffers"]
    assert (tmp_path / "trace.persistent.csv").read_text().startswith("id,lower,size,stream")
    assert r["peak"] == s["allocated_bytes"]


def run_training(model: str, steps: int, *extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE / "runtime_e2e_worker.py"), model, str(steps), *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("model", ["resnet18", "transformer"])
def test_training_on_the_planned_arena_is_bit_identical(model: str) -> None:
    r = run_training(model, steps=3)
    assert r["losses"] == r["ref_losses"], "losses differ from PyTorch's default CPU allocator"
    assert r["params_identical"], "final parameters differ from PyTorch's default CPU allocator"
    assert len(r["steps"]) == 3
    for step in r["steps"]:
        assert step["divergences"] == 0, step
        assert step["transient_fallbacks"] == 0, step
        assert not step["abandoned"]
        # Every allocation the plan saw as transient came from the arena; the rest matched persistent ones.
        assert step["planned_hits"] == r["plan"]["buffers"], step
        assert step["planned_hits"] + step["persistent_allocations"] == step["allocations"]
    plan = r["plan"]
    assert plan["arena_bytes"] <= 1.05 * plan["lower_bound_bytes"], plan
    assert r["stats"]["divergences"] == 0 and r["stats"]["unknown_frees"] == 0


def test_profiling_the_first_step_heals_by_replanning() -> None:
    """The first step of training is not like the next ones (the optimizer creates its state): the
    two steps after it diverge, the runtime plans again from the second, and the rest are exact."""
    r = run_training("resnet18", 5, "first")
    assert r["losses"] == r["ref_losses"] and r["params_identical"]
    assert r["steps"][0]["divergences"] > 0 and r["steps"][1]["divergences"] > 0
    for step in r["steps"][2:]:
        assert step["divergences"] == 0 and step["transient_fallbacks"] == 0, step
    assert r["stats"]["auto_replans"] == 1
