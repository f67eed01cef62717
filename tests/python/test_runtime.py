"""The allocator runtime through Python: PyTorch accepts the allocator, and real CPU training on the
planned arena is bit-identical to PyTorch's own allocator. Each case runs in a fresh interpreter,
because an installed allocator cannot be removed from a process."""

from __future__ import annotations

import json
import os
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
    "peak_reserved_bytes",
    "arena_bytes",
    "lower_bound_bytes",
    "planned_hits",
    "fallback_allocations",
    "fallback_bytes",
    "divergences",
    "plan_active",
)


def run_python(
    code: str, timeout: float = 600, libcuda: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter; `libcuda`: the CUDA driver file it uses (the stub)."""
    env = dict(os.environ, MODEL_OPT_LIBCUDA=str(libcuda)) if libcuda is not None else None
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_allocator_is_accepted_once_by_pytorch_without_a_gpu(stub_libcuda: Path) -> None:
    # The stub driver stands in for the GPU that allocator()'s preflight checks.
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
        """,
        libcuda=stub_libcuda,
    )
    assert out.returncode == 0, out.stderr
    assert "accepted" in out.stdout
    # The optional hooks are set through the setters PyTorch's _CUDAPluggableAllocator exposes (the CUDA
    # graph pool hooks by the C++ front, when it was built with the CUDA runtime headers).
    from model_opt.runtime.install import cuda_include_dir

    graphs = "graph_pools," if cuda_include_dir() is not None else ""
    hooks = f"{graphs}set_init_fn,set_memory_fraction_fn,set_record_stream_fn,set_reset_fn"
    assert f"hooks: {hooks}" in out.stdout
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
    step after it follows no plan, so it is recorded and planned as a new signature at its end, and
    every step after that is exact. Nothing diverges on the way."""
    r = run_training("resnet18", 5, "first")
    assert r["losses"] == r["ref_losses"] and r["params_identical"]
    first = r["steps"][0]
    assert first["new_signature"] and first["unplanned_allocations"] > 0, first
    for step in r["steps"]:
        assert step["divergences"] == 0 and step["transient_fallbacks"] == 0, step
    for step in r["steps"][1:]:
        assert not step["new_signature"] and step["planned_hits"] > 0, step
        assert step["planned_hits"] + step["persistent_allocations"] == step["allocations"], step
    assert r["stats"]["new_signatures"] == 1 and r["stats"]["auto_replans"] == 0
    assert r["stats"]["plans"] == 2


# The runtime driven through its C entry points for host memory (the ones the CPU shim calls), so that
# each allocation and free is the test's own: no PyTorch, no compiler, a fresh process in a blink.
HOST_ABI = """
import ctypes, json, threading
import model_opt
from model_opt import runtime
_sym = model_opt._native.runtime_symbols()
alloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)(_sym["model_opt_host_alloc"])
free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_sym["model_opt_host_free"])

def work(sizes):
    ptrs = [alloc(n) for n in sizes]
    for p in reversed(ptrs):
        free(p)

def diverge(n):
    # n requests larger than any planned buffer: none can take a planned address.
    return [alloc(100_000) for _ in range(n)]

def step_of(*parts):
    with model_opt.step():
        held = []
        for part in parts:
            held += part() or []
        for p in held:
            free(p)
    return model_opt.stats()["last_step"]
"""


def run_host_abi(code: str) -> dict[str, Any]:
    out = run_python(HOST_ABI + textwrap.dedent(code), timeout=120)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


SIZES = [1000, 2000, 3000, 4000]


def test_max_divergences_abandons_the_step_after_n_plus_1_divergences() -> None:
    r = run_host_abi(
        f"""
        runtime.set_auto_replan(False)  # diverging steps must not re-plan here
        with model_opt.profile():
            work({SIZES})
        model_opt.plan(time_limit=1.0)
        out = {{"default": model_opt.stats()["max_divergences"]}}
        out["at_100"] = step_of(lambda: diverge(100), lambda: work({SIZES}))
        inside = []
        out["at_101"] = step_of(
            lambda: diverge(101),
            lambda: inside.append(model_opt.stats()["plan_active"]),
            lambda: work({SIZES}),
            lambda: diverge(3),
        )
        out["inside"] = inside
        out["abandoned_steps"] = model_opt.stats()["abandoned_steps"]
        runtime.set_max_divergences(3)
        out["set"] = model_opt.stats()["max_divergences"]
        out["at_3"] = step_of(lambda: diverge(3), lambda: work({SIZES}))
        out["at_4"] = step_of(lambda: diverge(4), lambda: work({SIZES}))
        out["clean"] = step_of(lambda: work({SIZES}))
        try:
            runtime.set_max_divergences(-1)
        except ValueError as e:
            out["negative"] = str(e)
        out["stats"] = model_opt.stats()
        print(json.dumps(out))
        """
    )
    assert r["default"] == 100
    # 100 divergences: the limit is not passed, the plan serves the rest of the step.
    assert r["at_100"] == {
        "allocations": 104, "planned_hits": 4, "persistent_allocations": 0,
        "transient_fallbacks": 100, "divergences": 100, "abandoned": False,
        "new_signature": False, "unplanned_allocations": 0, "first_fit": False,
    }  # fmt: skip
    # The 101st divergence passes it: the rest of the step (the planned buffers included) goes to the
    # fallback, uncounted as divergences, and the plan is inactive until the step ends.
    assert r["at_101"] == {
        "allocations": 108, "planned_hits": 0, "persistent_allocations": 0,
        "transient_fallbacks": 108, "divergences": 101, "abandoned": True,
        "new_signature": False, "unplanned_allocations": 0, "first_fit": False,
    }  # fmt: skip
    assert r["inside"] == [False]
    assert r["abandoned_steps"] == 1
    assert r["set"] == 3
    assert (r["at_3"]["divergences"], r["at_3"]["planned_hits"], r["at_3"]["abandoned"]) == (3, 4, False)
    assert (r["at_4"]["divergences"], r["at_4"]["planned_hits"], r["at_4"]["abandoned"]) == (4, 0, True)
    assert r["clean"]["planned_hits"] == 4 and r["clean"]["divergences"] == 0
    assert r["negative"] == "max divergences -1 must be >= 0"
    s = r["stats"]
    assert s["abandoned_steps"] == 2 and s["plan_active"] and s["auto_replans"] == 0
    assert s["allocated_bytes"] == 0


def test_a_new_kind_of_step_is_planned_automatically_and_only_when_enabled() -> None:
    r = run_host_abi(
        """
        with model_opt.profile():
            work([1000, 2000])
        model_opt.plan(time_limit=1.0)
        runtime.set_auto_replan(False)
        off = [step_of(lambda: work([5000, 6000, 7000])) for _ in range(3)]
        off_replans = model_opt.stats()["auto_replans"]
        runtime.set_auto_replan(True)
        on = [step_of(lambda: work([5000, 6000, 7000])) for _ in range(3)]
        print(json.dumps(dict(off=off, off_replans=off_replans, on=on, stats=model_opt.stats())))
        """
    )
    # Off: the step keeps diverging, nothing is re-planned.
    assert [s["divergences"] for s in r["off"]] == [3, 3, 3]
    assert r["off_replans"] == 0
    # On: the first step follows no plan, so it is recorded (served unplanned, not diverging) and
    # planned at its end as a new signature; the next steps follow that plan exactly.
    assert [s["divergences"] for s in r["on"]] == [0, 0, 0]
    assert r["on"][0]["new_signature"] and r["on"][0]["unplanned_allocations"] == 3
    assert [s["planned_hits"] for s in r["on"]] == [0, 3, 3]
    assert not r["on"][1]["new_signature"]
    s = r["stats"]
    assert (s["new_signatures"], s["auto_replans"], s["plans"], s["plan_buffers"]) == (1, 0, 2, 3)


def test_last_error_reports_the_latest_failure_of_any_thread() -> None:
    r = run_host_abi(
        """
        out = {"fresh": runtime.last_error()}
        local = ctypes.create_string_buffer(64)
        free(ctypes.addressof(local))
        out["main"] = runtime.last_error()
        out["in_stats"] = model_opt.stats()["last_error"]
        out["cleared"] = runtime.last_error(clear=True)
        out["after_clear"] = [runtime.last_error(), model_opt.stats()["last_error"]]
        worker = threading.Thread(target=lambda: free(ctypes.addressof(local) + 16))
        worker.start()
        worker.join()
        out["thread"] = runtime.last_error()
        out["address"] = hex(ctypes.addressof(local) + 16)
        out["unknown_frees"] = model_opt.stats()["unknown_frees"]
        print(json.dumps(out))
        """
    )
    assert r["fresh"] is None
    assert r["main"].startswith("free of 0x") and "which model_opt did not allocate" in r["main"]
    assert r["main"].endswith("must be freed by the allocator that made it")
    assert r["in_stats"] == r["main"] and r["cleared"] == r["main"]
    assert r["after_clear"] == [None, None]
    # A failure on another thread (as a hook on an autograd worker) is seen from Python's thread.
    assert r["thread"] is not None and r["thread"].startswith(f"free of {r['address']} on device -1,")
    assert r["unknown_frees"] == 2


def test_empty_cache_returns_the_idle_fallback_memory_and_keeps_the_arena() -> None:
    r = run_host_abi(
        f"""
        with model_opt.profile():
            work({SIZES})  # served by the fallback pool while recording
        model_opt.plan(time_limit=1.0)
        out = {{"before": model_opt.stats()}}
        held = alloc(3 << 20)  # outside a step: the fallback pool, too large for the cached segment
        out["held"] = model_opt.stats()["fallback_reserved_bytes"]
        out["released_1"] = runtime.empty_cache()
        out["middle"] = model_opt.stats()
        free(held)
        out["released_2"] = runtime.empty_cache()
        out["released_3"] = runtime.empty_cache()
        out["after"] = model_opt.stats()
        out["step"] = step_of(lambda: work({SIZES}))
        print(json.dumps(out))
        """
    )
    before, middle, after = r["before"], r["middle"], r["after"]
    # plan() already returned the segment the recorded step used (the plan serves it now).
    assert before["arena_bytes"] > 0 and before["fallback_reserved_bytes"] == 0
    assert before["reserved_bytes"] == before["arena_bytes"]
    # A segment holding a live allocation stays.
    assert r["held"] >= 3 << 20
    assert r["released_1"] == 0
    assert middle["fallback_reserved_bytes"] == r["held"]
    assert middle["arena_bytes"] == before["arena_bytes"]
    assert r["released_2"] == middle["fallback_reserved_bytes"]
    assert r["released_3"] == 0
    assert after["fallback_reserved_bytes"] == 0
    assert after["reserved_bytes"] == after["arena_bytes"] == before["arena_bytes"]
    # The plan still serves the step.
    assert r["step"]["planned_hits"] == len(SIZES) and r["step"]["divergences"] == 0


def test_save_trace_writes_transient_and_persistent_rows(tmp_path: Path) -> None:
    trace = tmp_path / "step.csv"
    r = run_host_abi(
        f"""
        with model_opt.profile():
            a = alloc(1000)   # event 0
            b = alloc(2048)   # event 1, never freed in the step: persistent
            c = alloc(3000)   # event 2
            free(a)           # event 3
            d = alloc(4096)   # event 4, persistent
            free(c)           # event 5
        report = model_opt.plan(time_limit=1.0)
        paths = [str(p) for p in model_opt.save_trace({str(trace)!r})]
        print(json.dumps(dict(report=report, paths=paths)))
        """
    )
    side = tmp_path / "step.persistent.csv"
    assert r["paths"] == [str(trace), str(side)]
    assert trace.read_text() == "id,lower,upper,size\nhost_0,0,3,1000\nhost_2,2,5,3000\n"
    assert side.read_text() == "id,lower,size,stream\nhost_1,1,2048,0\nhost_3,4,4096,0\n"
    assert r["report"]["buffers"] == 2
    assert (r["report"]["persistent_buffers"], r["report"]["persistent_bytes"]) == (2, 2048 + 4096)


def test_allocator_refuses_once_cuda_is_initialized(stub_libcuda: Path) -> None:
    # No GPU here: CUDA's "initialized" state is what PyTorch reports, so it is set by hand.
    out = run_python(
        """
        import torch, model_opt
        real = torch.cuda.is_initialized
        torch.cuda.is_initialized = lambda: True
        try:
            model_opt.allocator()
            print("accepted")
        except model_opt.ModelOptError as e:
            print("refused:", e)
        print("hooks:", model_opt.runtime.hooks_installed)
        torch.cuda.is_initialized = real
        a = model_opt.allocator()  # the refused call did not count as the one call per process
        print("then:", type(a).__name__)
        """,
        libcuda=stub_libcuda,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == (
        "refused: CUDA is already initialized, so PyTorch can no longer change its allocator. Call "
        "torch.cuda.memory.change_current_allocator(model_opt.allocator()) first, before creating any "
        "CUDA tensor or calling torch.cuda functions that initialize CUDA"
    )
    assert lines[1] == "hooks: []"
    assert lines[2] == "then: CUDAPluggableAllocator"
