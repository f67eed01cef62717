"""PyTorch's CUDA memory functions under model_opt's allocator (`model_opt.runtime.memory_api`): they
answer the runtime's numbers, both spellings and torch.accelerator's, per device or refused; the patch
comes off; cudnn.benchmark is kept off; the allocator settings a pluggable allocator ignores are warned
about. No GPU here: the runtime serves "CUDA" memory from the stub driver (tests/runtime_support), and
PyTorch's CUDA build accepts the allocator without a device. `allocator()` runs once per process, so
each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from model_opt.runtime import memory_api  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# Each case: the stub driver as the CUDA driver, C entry points to allocate on a "CUDA" device as
# PyTorch would, and model_opt's allocator installed (unless the case installs it itself).
PRELUDE = """
import ctypes, json, os, warnings
import torch, model_opt
from model_opt.runtime import memory_api
_sym = model_opt._native.runtime_symbols()
cuda_alloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p)(
    _sym["model_opt_alloc"])
cuda_free = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p)(
    _sym["model_opt_free"])
"""
INSTALL = "torch.cuda.memory.change_current_allocator(model_opt.allocator())\n"

ENV_SETTINGS = (
    "PYTORCH_CUDA_ALLOC_CONF",
    "PYTORCH_ALLOC_CONF",
    "TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK",
    "NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK",
)


def run_case(stub: Path, code: str, install: bool = True, **env: str) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k not in ENV_SETTINGS}
    environ.update(MODEL_OPT_LIBCUDA=str(stub), **env)
    script = PRELUDE + (INSTALL if install else "") + textwrap.dedent(code)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environ
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_patched_functions_answer_the_runtimes_numbers(stub_libcuda: Path) -> None:
    r = run_case(
        stub_libcuda,
        """
        out = {"start": torch.cuda.memory_allocated(0)}
        a = cuda_alloc(1000, 0, None)
        b = cuda_alloc(300_000, 0, None)
        c = cuda_alloc(5000, 0, None)
        s = model_opt.stats()
        out["stats"] = {k: s[k] for k in ("allocated_bytes", "reserved_bytes", "peak_reserved_bytes")}
        out["allocated"] = [torch.cuda.memory_allocated(d) for d in
                            (None, 0, "cuda", "cuda:0", torch.device("cuda", 0), torch.device("cuda"))]
        out["allocated_memory_module"] = torch.cuda.memory.memory_allocated(0)
        out["accelerator"] = torch.accelerator.memory_allocated(0)
        out["reserved"] = torch.cuda.memory_reserved(0)
        out["stats_1"] = torch.cuda.memory_stats(0)
        out["nested"] = torch.cuda.memory_stats_as_nested_dict(0)
        out["c_binding"] = torch._C._cuda_memoryStats(0)
        cuda_free(b, 300_000, 0, None)
        out["after_free"] = [torch.cuda.memory_allocated(0), torch.cuda.max_memory_allocated(0)]
        out["deprecated_cached"] = torch.cuda.memory_cached(0)
        torch.cuda.reset_peak_memory_stats(0)
        out["after_reset"] = [torch.cuda.max_memory_allocated(0), torch.cuda.max_memory_reserved(0),
                              torch.cuda.memory_reserved(0)]
        torch.cuda.reset_accumulated_memory_stats(0)
        d = cuda_alloc(2000, 0, None)
        out["stats_2"] = torch.accelerator.memory_stats(0)
        out["oom_ptr"] = cuda_alloc(1 << 40, 0, None)   # past the stub's 256 MiB
        out["ooms"] = torch.cuda.memory_stats()["num_ooms"]
        out["summary"] = torch.cuda.memory_summary(0)
        out["summary_short"] = torch.cuda.memory.memory_summary(abbreviated=True)
        out["unused_device"] = [torch.cuda.memory_allocated(1), torch.cuda.memory_reserved(1)]
        print(json.dumps(out))
        """,
    )
    live = 1000 + 300_000 + 5000
    assert r["start"] == 0
    assert r["stats"]["allocated_bytes"] == live
    # Every spelling of device 0, and None (CUDA not initialized: device 0), reads the runtime's bytes.
    assert r["allocated"] == [live] * 6
    assert r["allocated_memory_module"] == live and r["accelerator"] == live
    assert r["reserved"] == r["stats"]["reserved_bytes"] > live
    s1 = r["stats_1"]
    assert list(s1) == sorted(memory_api.MEMORY_STATS_KEYS)
    assert s1["allocated_bytes.all.current"] == s1["requested_bytes.all.current"] == live
    assert s1["allocated_bytes.all.peak"] == live
    assert s1["reserved_bytes.all.current"] == r["stats"]["reserved_bytes"]
    assert s1["reserved_bytes.all.peak"] == r["stats"]["peak_reserved_bytes"]
    counts = [s1[f"allocation.all.{m}"] for m in ("current", "allocated", "freed")]
    assert counts == [3, 3, 0]
    assert s1["num_ooms"] == 0
    assert r["nested"]["allocated_bytes"]["all"]["current"] == live and r["nested"]["num_ooms"] == 0
    assert r["c_binding"] == r["nested"]
    # After a free: the current drops, the peak stays until reset.
    assert r["after_free"] == [live - 300_000, live]
    assert r["deprecated_cached"] == r["reserved"]
    assert r["after_reset"][0] == live - 300_000
    assert r["after_reset"][1] == r["after_reset"][2]
    s2 = r["stats_2"]
    assert s2["allocation.all.allocated"] == 1 and s2["allocation.all.freed"] == 0
    assert s2["allocation.all.current"] == 3
    assert s2["allocated_bytes.all.current"] == live - 300_000 + 2000
    assert r["oom_ptr"] is None and r["ooms"] == 1
    assert "model_opt CUDA memory summary, device ID 0" in r["summary"]
    assert "Allocated memory" in r["summary"] and "divergences" in r["summary"]
    assert "out of memory: 1" in r["summary"]
    assert "device ID 0" in r["summary_short"] and "divergences" not in r["summary_short"]
    # A device the runtime never served holds nothing.
    assert r["unused_device"] == [0, 0]


def test_a_function_imported_before_the_patch_reaches_the_runtime(stub_libcuda: Path) -> None:
    # PyTorch's own reset_peak_memory_stats and memory_stats_as_nested_dict, bound by name before
    # allocator() patched anything, call the torch._C bindings, which are patched too.
    r = run_case(
        stub_libcuda,
        """
        from torch.cuda.memory import reset_peak_memory_stats as early_reset
        torch.cuda.memory.change_current_allocator(model_opt.allocator())
        a = cuda_alloc(4096, 0, None)
        b = cuda_alloc(8192, 0, None)
        cuda_free(b, 8192, 0, None)
        out = {"before": torch.cuda.max_memory_allocated(0)}
        early_reset(0)
        out["after"] = torch.cuda.max_memory_allocated(0)
        out["accelerator_binding"] = torch._C._accelerator_getDeviceStats(0)["allocated_bytes"]["all"]
        print(json.dumps(out))
        """,
        install=False,
    )
    assert r["before"] == 4096 + 8192 and r["after"] == 4096
    assert r["accelerator_binding"] == {"current": 4096, "peak": 4096}


def test_two_devices_are_refused_except_reserved_bytes(stub_libcuda: Path) -> None:
    r = run_case(
        stub_libcuda,
        """
        a = cuda_alloc(1000, 0, None)
        b = cuda_alloc(3000, 1, None)
        out = {"errors": []}
        for f in (torch.cuda.memory_allocated, torch.cuda.memory_stats, torch.cuda.max_memory_reserved,
                  torch.cuda.reset_peak_memory_stats, torch.cuda.memory_summary):
            try:
                f(0)
                out["errors"].append(None)
            except model_opt.ModelOptError as e:
                out["errors"].append(str(e))
        out["reserved"] = [torch.cuda.memory_reserved(0), torch.cuda.memory_reserved("cuda:1")]
        out["total"] = model_opt.stats()["reserved_bytes"]
        out["bad"] = []
        for device in ("cpu", -1, True, 1.5):
            try:
                torch.cuda.memory_allocated(device)
                out["bad"].append(None)
            except ValueError as e:
                out["bad"].append(str(e))
        print(json.dumps(out))
        """,
    )
    assert all(e is not None for e in r["errors"]), r["errors"]
    for e in r["errors"]:
        assert "of cuda:0 is not known" in e and "also holds memory on cuda:1" in e
        assert "model_opt.stats()" in e
    assert r["reserved"][0] > 0 and r["reserved"][1] > 0
    assert sum(r["reserved"]) == r["total"]
    assert all(b is not None and "CUDA device" in b for b in r["bad"]), r["bad"]


def test_unpatching_puts_pytorchs_functions_back(stub_libcuda: Path) -> None:
    r = run_case(
        stub_libcuda,
        """
        places = [(torch.cuda.memory, n) for n in memory_api._CUDA_FUNCTIONS]
        places += [(torch.cuda, n) for n in memory_api._CUDA_FUNCTIONS]
        places += [(torch.accelerator.memory, n) for n in memory_api._ACCELERATOR_FUNCTIONS]
        places += [(torch.accelerator, n) for n in memory_api._ACCELERATOR_FUNCTIONS]
        places += [(torch._C, n) for n in memory_api._C_BINDINGS]
        originals = [getattr(o, n) for o, n in places]
        set_flag = torch._C._set_cudnn_benchmark
        torch.cuda.memory.change_current_allocator(model_opt.allocator())
        out = {"patched": memory_api.memory_api_patched(),
               "replaced": sum(getattr(o, n) is not f for (o, n), f in zip(places, originals)),
               "places": len(places)}
        out["unpatch"] = memory_api.unpatch_memory_api()
        out["restored"] = sum(getattr(o, n) is f for (o, n), f in zip(places, originals))
        out["unpatch_again"] = memory_api.unpatch_memory_api()
        out["patched_after"] = memory_api.memory_api_patched()
        out["unguard"] = memory_api.unguard_cudnn_benchmark()
        out["set_flag_restored"] = torch._C._set_cudnn_benchmark is set_flag
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.backends.cudnn.benchmark = True
        out["benchmark"] = torch.backends.cudnn.benchmark
        out["warnings"] = len(caught)
        torch.backends.cudnn.benchmark = False
        memory_api.patch_memory_api()
        out["repatched"] = torch.cuda.memory_allocated.__wrapped__ is memory_api.memory_allocated
        print(json.dumps(out))
        """,
        install=False,
    )
    assert r["patched"] and r["replaced"] == r["places"] == 2 * 9 + 2 * 7 + 6
    assert r["unpatch"] is True and r["restored"] == r["places"]
    assert r["unpatch_again"] is False and r["patched_after"] is False
    assert r["unguard"] is True and r["set_flag_restored"]
    assert r["benchmark"] is True and r["warnings"] == 0
    assert r["repatched"] is True


def test_an_allocator_never_installed_leaves_pytorchs_answers(stub_libcuda: Path) -> None:
    r = run_case(
        stub_libcuda,
        """
        a = model_opt.allocator()
        p = cuda_alloc(4096, 0, None)
        out = {"runtime": model_opt.stats()["allocated_bytes"], "patched": memory_api.memory_api_patched()}
        # PyTorch's own allocator is still current, and knows of no CUDA memory (CUDA not initialized).
        out["before"] = [torch.cuda.memory_allocated(0), torch.cuda.memory_stats(0)]
        torch.cuda.memory.change_current_allocator(a)
        out["after"] = torch.cuda.memory_allocated(0)
        print(json.dumps(out))
        """,
        install=False,
    )
    assert r["runtime"] == 4096 and r["patched"] is True
    assert r["before"] == [0, {}]
    assert r["after"] == 4096


def test_patch_memory_api_false_keeps_pytorchs_functions(stub_libcuda: Path) -> None:
    r = run_case(
        stub_libcuda,
        """
        original = torch.cuda.memory_allocated
        torch.cuda.memory.change_current_allocator(model_opt.allocator(patch_memory_api=False))
        torch.backends.cudnn.benchmark = True
        print(json.dumps({"same": torch.cuda.memory_allocated is original,
                          "patched": memory_api.memory_api_patched(),
                          "benchmark": torch.backends.cudnn.benchmark}))
        """,
        install=False,
    )
    assert r == {"same": True, "patched": False, "benchmark": False}


def test_cudnn_benchmark_is_switched_off_with_a_warning(stub_libcuda: Path) -> None:
    r = run_case(
        stub_libcuda,
        """
        torch.backends.cudnn.benchmark = True
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.memory.change_current_allocator(model_opt.allocator())
            out = {"at_install": [str(w.message) for w in caught], "after": torch.backends.cudnn.benchmark}
            caught.clear()
            torch.backends.cudnn.benchmark = True
            out["set_true"] = [torch.backends.cudnn.benchmark, [w.category.__name__ for w in caught]]
            caught.clear()
            torch.backends.cudnn.benchmark = False
            out["set_false"] = [torch.backends.cudnn.benchmark, len(caught)]
            with torch.backends.cudnn.flags(enabled=True, benchmark=True):
                out["in_flags"] = torch.backends.cudnn.benchmark
            out["flags_warned"] = len(caught)
        print(json.dumps(out))
        """,
        install=False,
    )
    assert len(r["at_install"]) == 1 and "cacheInfo" in r["at_install"][0]
    assert "torch.backends.cudnn.benchmark is switched off" in r["at_install"][0]
    assert r["after"] is False
    assert r["set_true"] == [False, ["AllocatorSettingWarning"]]
    assert r["set_false"] == [False, 0]
    assert r["in_flags"] is False and r["flags_warned"] == 1


def test_allocator_warns_about_alloc_conf_and_switches_off_the_nccl_hook(stub_libcuda: Path) -> None:
    r = run_case(
        stub_libcuda,
        """
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.memory.change_current_allocator(model_opt.allocator())
            out = {"messages": [str(w.message) for w in caught],
                   "categories": sorted({w.category.__name__ for w in caught}),
                   "files": sorted({os.path.basename(w.filename) for w in caught}),
                   "hook": os.environ["TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK"],
                   "hook_seen_by_c": libc.getenv(b"TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK").decode()}
            caught.clear()
            out["again"] = memory_api.check_allocator_environment()
            out["again_warnings"] = len(caught)
        print(json.dumps(out))
        """,
        install=False,
        PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True,max_split_size_mb:128",
        TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK="True",
    )
    conf = [m for m in r["messages"] if "PYTORCH_CUDA_ALLOC_CONF" in m]
    hook = [m for m in r["messages"] if "TENSOR_REGISTER_ALLOCATOR_HOOK" in m]
    assert len(conf) == 1 and len(hook) == 1 and len(r["messages"]) == 2, r["messages"]
    assert "expandable_segments:True,max_split_size_mb:128" in conf[0] and "ignored" in conf[0]
    assert "=True: model_opt set it to 0" in hook[0] and "attachAllocatorTraceTracker" in hook[0]
    assert r["categories"] == ["AllocatorSettingWarning"]
    # The warnings point at the line that called allocator(), not into model_opt.
    assert r["files"] == ["<string>"]
    assert r["hook"] == "0" and r["hook_seen_by_c"] == "0"
    # Once a process.
    assert r["again"] == [] and r["again_warnings"] == 0


def test_allocator_without_settings_warns_nothing(stub_libcuda: Path) -> None:
    r = run_case(
        stub_libcuda,
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.memory.change_current_allocator(model_opt.allocator())
        print(json.dumps([str(w.message) for w in caught]))
        """,
        install=False,
        TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK="0",
    )
    assert r == []


@pytest.mark.parametrize(
    ("environ", "warned", "after"),
    [
        ({}, [], {}),
        ({"PYTORCH_ALLOC_CONF": "backend:cudaMallocAsync"}, ["PYTORCH_ALLOC_CONF"], None),
        ({"PYTORCH_CUDA_ALLOC_CONF": ""}, [], None),
        (
            {"NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK": "yes"},
            ["NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK"],
            {"NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK": "0"},
        ),
        (
            {
                "TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK": "1",
                "NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK": "0",
            },
            ["TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK"],
            {
                "TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK": "0",
                "NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK": "0",
            },
        ),
        ({"TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK": "false"}, [], None),
    ],
)
def test_check_allocator_environment(
    environ: dict[str, str], warned: list[str], after: dict[str, str] | None
) -> None:
    env = dict(environ)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = memory_api.check_allocator_environment(env, force=True)
    assert found == warned
    assert len(caught) == len(warned)
    assert all(issubclass(w.category, memory_api.AllocatorSettingWarning) for w in caught)
    assert env == (environ if after is None else after)
