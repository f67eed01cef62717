"""model_opt's CUDA front (cpp/cuda_front.cpp) and the preflight of `model_opt.allocator()`, without a GPU:
the runtime serves "CUDA" memory from the strict stub driver (tests/runtime_support/stub_libcuda.c), and
a small test extension (pluggable_malloc.cpp) calls PyTorch's own CUDAPluggableAllocator::malloc on the
allocator `allocator()` built, as PyTorch does for every CUDA tensor. So what a user would see is seen
here: a refused request raises torch.OutOfMemoryError (out of memory, a memory limit) or RuntimeError
(a driver error, a stream capturing a CUDA graph), never a NULL pointer. Each case runs in a fresh
interpreter: `allocator()` runs once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def pluggable_malloc() -> Path:
    """The test extension, built against the installed torch and the CUDA headers triton ships (the
    toolkit is not installed here); its library file."""
    triton = pytest.importorskip("triton")
    include = Path(triton.__file__).parent / "backends" / "nvidia" / "include"
    if not (include / "cuda_runtime_api.h").is_file():
        pytest.skip("no CUDA runtime headers to build the test extension against")
    from torch.utils.cpp_extension import load

    from model_opt.runtime.install import _ensure_ninja

    _ensure_ninja()
    # A fixed directory per torch version: ninja rebuilds only what changed (a build takes a minute).
    build = Path(tempfile.gettempdir()) / f"model_opt_pluggable_malloc-torch{torch.__version__}"
    build.mkdir(exist_ok=True)
    load(
        name="pluggable_malloc_test",
        sources=[str(HERE / "pluggable_malloc.cpp")],
        build_directory=str(build),
        extra_include_paths=[str(include)],
        extra_ldflags=["-ltorch_cuda", "-lc10_cuda"],
    )
    return build / "pluggable_malloc_test.so"


PRELUDE = """
import ctypes, importlib.util, json, os
import torch, model_opt
stub = ctypes.CDLL(os.environ["STUB_LIBCUDA"])
stub.stub_fail.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
stub.stub_device_of.argtypes = [ctypes.c_ulonglong]
stub.stub_set_capturing.argtypes = [ctypes.c_size_t, ctypes.c_int]
"""

LOAD_EXTENSION = """
spec = importlib.util.spec_from_file_location("pluggable_malloc_test", os.environ["PLUGGABLE_MALLOC"])
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)
a = model_opt.allocator()
torch.cuda.memory.change_current_allocator(a)
native = a.allocator()

def attempt(size, device=0, stream=0):
    '''What PyTorch's malloc does with the request: the address, or the exception's type and text.'''
    try:
        return {"ptr": ext.malloc(native, size, device, stream)}
    except Exception as e:
        return {"error": type(e).__name__, "oom": isinstance(e, torch.OutOfMemoryError), "text": str(e)}
"""


def run_case(stub: Path, code: str, extension: Path | None = None, **env: str) -> dict[str, Any]:
    environ = dict(os.environ, MODEL_OPT_LIBCUDA=str(stub), STUB_LIBCUDA=str(stub))
    environ.update(env)
    script = PRELUDE + textwrap.dedent(code)
    if extension is not None:
        environ["PLUGGABLE_MALLOC"] = str(extension)
        script = PRELUDE + LOAD_EXTENSION + textwrap.dedent(code)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env=environ,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_refusals_raise_pytorchs_errors_through_its_pluggable_allocator(
    stub_libcuda: Path, pluggable_malloc: Path
) -> None:
    r = run_case(
        stub_libcuda,
        """
        out = {}
        ok = attempt(4096)
        out["served_on"] = stub.stub_device_of(ok["ptr"])
        out["allocated"] = model_opt.stats()["allocated_bytes"]
        ext.free(native, ok["ptr"])
        out["allocated_after_free"] = model_opt.stats()["allocated_bytes"]
        out["zero"] = attempt(0)
        # A memory limit on the CUDA device: out of memory past it, served again once lifted.
        model_opt.set_memory_limit("1MiB", "cuda:0")
        out["limit"] = attempt(8 << 20)
        model_opt.set_memory_limit(None, "cuda:0")
        lifted = attempt(8 << 20)
        out["lifted"] = "ptr" in lifted
        ext.free(native, lifted["ptr"])
        model_opt.runtime.empty_cache()
        # PyTorch's set_per_process_memory_fraction calls this hook (it needs a GPU to be called here).
        fraction = ctypes.CFUNCTYPE(None, ctypes.c_double, ctypes.c_int)(
            model_opt._native.runtime_symbols()["model_opt_set_memory_fraction"])
        fraction(0.01, 0)
        out["fraction_limit"] = model_opt.memory_limit("cuda:0")[1]
        out["fraction"] = attempt(8 << 20)
        model_opt.set_memory_limit(None, "cuda:0")
        # The driver out of memory, on demand.
        stub.stub_fail(b"cuMemAlloc_v2", 2, -1)
        out["driver_oom"] = attempt(64 << 20)
        stub.stub_clear_faults()
        # A driver error the bindings of no CUDA version know, and a sticky one.
        stub.stub_fail(b"cuMemAlloc_v2", 12345, 1)
        out["unknown_code"] = attempt(96 << 20)
        stub.stub_set_sticky(700)
        out["sticky"] = attempt(4096)
        stub.stub_set_sticky(0)
        # A stream capturing a CUDA graph; another stream is served meanwhile.
        stub.stub_set_capturing(0x5000, 1)
        out["capturing"] = attempt(4096, 0, 0x5000)
        other = attempt(4096, 0, 0x6000)
        out["other_stream"] = "ptr" in other
        ext.free(native, other["ptr"])
        stub.stub_set_capturing(0x5000, 0)
        print(json.dumps(out))
        """,
        extension=pluggable_malloc,
    )
    assert r["served_on"] == 0 and r["allocated"] == 4096 and r["allocated_after_free"] == 0
    assert r["zero"] == {"ptr": 0}
    for case in ("limit", "fraction", "driver_oom"):
        e = r[case]
        assert e.get("error") == "OutOfMemoryError" and e["oom"], (case, e)
        assert e["text"].startswith(
            "CUDA out of memory. Tried to allocate 8388608 bytes"
            if case != "driver_oom"
            else "CUDA out of memory. Tried to allocate 67108864 bytes"
        ), e
    assert "the device's memory limit is 1048576 bytes" in r["limit"]["text"]
    assert r["lifted"]
    assert r["fraction_limit"] == int((256 << 20) * 0.01)
    assert "CUDA_ERROR_OUT_OF_MEMORY" in r["driver_oom"]["text"]
    for case, words in (
        ("unknown_code", "cuMemAlloc failed with unknown CUDA error 12345"),
        ("sticky", "CUDA_ERROR_ILLEGAL_ADDRESS (700)"),
        ("capturing", "is capturing a CUDA graph"),
    ):
        e = r[case]
        assert e.get("error") == "RuntimeError" and not e["oom"], (case, e)
        assert e["text"].startswith("model_opt could not allocate") and words in e["text"], (case, e)
    assert r["other_stream"]


def test_a_graph_capture_is_served_from_its_private_pool_through_pytorchs_pool_hooks(
    stub_libcuda: Path, pluggable_malloc: Path
) -> None:
    """What torch.cuda.graph does to the allocator, through PyTorch's own CUDAPluggableAllocator: the
    pool hooks model_opt.allocator() set send the capturing stream's requests to the graph's private
    pool; other streams are served as before; memory freed during the capture is held; the pool's
    memory goes back when PyTorch releases it and nothing in it is in use."""
    r = run_case(
        stub_libcuda,
        """
        out = {"hooks": model_opt.runtime.install.hooks_installed}
        before = attempt(8192, 0, 0x6000)
        stub.stub_set_capturing(0x5000, 1)
        ext.begin_pool(native, 0, 0, 5, 0x5000)
        g1 = attempt(1 << 20, 0, 0x5000)
        g2 = attempt(4096, 0, 0x5000)
        ext.free(native, g2["ptr"])
        g3 = attempt(4096, 0, 0x5000)
        out["reused_in_pool"] = g3["ptr"] == g2["ptr"]
        other = attempt(4096, 0, 0x6000)
        out["other_served"] = "ptr" in other
        ext.free(native, before["ptr"])
        s = model_opt.stats()
        out["during"] = {k: s[k] for k in ("graph_pool_allocations", "graph_pool_bytes", "graph_held_frees")}
        stub.stub_set_capturing(0x5000, 0)
        ext.end_pool(native, 0, 0, 5)
        # After the capture: nothing outside the graph lands on its memory.
        graph = [(g1["ptr"], 1 << 20), (g3["ptr"], 4096), (before["ptr"], 8192)]
        overlaps = 0
        for size in (4096, 1 << 20):
            for stream in (0x5000, 0x6000):
                p = attempt(size, 0, stream)["ptr"]
                overlaps += any(p < a + n and a < p + size for a, n in graph)
                ext.free(native, p)
        out["overlaps"] = overlaps
        ext.free(native, g1["ptr"])
        ext.release_pool(native, 0, 0, 5)
        out["kept_while_used"] = model_opt.stats()["graph_pool_bytes"] > 0
        ext.free(native, g3["ptr"])
        out["after_release"] = model_opt.stats()["graph_pool_bytes"]
        ext.free(native, other["ptr"])
        # torch.compile's CUDA graph trees checkpoint the allocator's state, which a pluggable one lacks.
        try:
            torch._C._cuda_getCheckpointState(0, (0, 5))
            out["graph_trees"] = "no error"
        except model_opt.ModelOptError as e:
            out["graph_trees"] = str(e)
        print(json.dumps(out))
        """,
        extension=pluggable_malloc,
    )
    assert "graph_pools" in r["hooks"], r["hooks"]
    assert "reduce-overhead" in r["graph_trees"] and "max-autotune-no-cudagraphs" in r["graph_trees"]
    assert r["reused_in_pool"] and r["other_served"]
    assert r["during"]["graph_pool_allocations"] == 3
    assert r["during"]["graph_pool_bytes"] >= (1 << 20) + 4096
    assert r["during"]["graph_held_frees"] == 1, "the tensor from before the capture was not held"
    assert r["overlaps"] == 0
    assert r["kept_while_used"]
    assert r["after_release"] == 0


def test_the_allocator_is_built_on_the_front_and_keeps_the_runtime_hooks(stub_libcuda: Path) -> None:
    r = run_case(
        stub_libcuda,
        """
        a = model_opt.allocator()
        torch.cuda.memory.change_current_allocator(a)
        from model_opt.runtime import install
        symbols = model_opt._native.runtime_symbols()
        front = ctypes.CDLL(install._cuda_front.__file__)
        print(json.dumps({
            "type": type(a).__name__,
            "hooks": sorted(model_opt.runtime.hooks_installed),
            "front_file": install._cuda_front.__file__,
            "front_alloc": ctypes.cast(front.model_opt_cuda_alloc, ctypes.c_void_p).value,
            "runtime_alloc": symbols["model_opt_alloc"],
            "contexts_left_current": stub.stub_context_depth(),
        }))
        """,
    )
    assert r["type"] == "CUDAPluggableAllocator"
    # The CUDA graph pool hooks come with a front built against the CUDA runtime headers, when found.
    from model_opt.runtime.install import cuda_include_dir

    graphs = cuda_include_dir() is not None
    hooks = ["set_init_fn", "set_memory_fraction_fn", "set_record_stream_fn", "set_reset_fn"]
    assert r["hooks"] == sorted(hooks + (["graph_pools"] if graphs else []))
    front = "model_opt_cuda_front_graphs.so" if graphs else "model_opt_cuda_front.so"
    assert Path(r["front_file"]).name == front
    assert r["front_alloc"] and r["front_alloc"] != r["runtime_alloc"]
    # The preflight made device 0's context current only while it checked it.
    assert r["contexts_left_current"] == 0


@pytest.mark.parametrize(
    ("setup", "message", "then"),
    [
        ("", "no CUDA driver: cannot load /nonexistent/libcuda.so.1", "refused again"),
        (
            "stub.stub_fail(b'cuInit', 4, -1)",
            "cuInit failed with CUDA_ERROR_DEINITIALIZED (4)",
            "refused again",
        ),
        ("stub.stub_set_device_count(0)", "cuda backend has no device 0", "refused again"),
        (
            "stub.stub_fail(b'cuMemAlloc_v2', 999, 1)",
            "cuMemAlloc failed with unknown CUDA error 999",
            "accepted",
        ),
    ],
)
def test_the_preflight_refuses_a_driver_that_does_not_work(
    stub_libcuda: Path, setup: str, message: str, then: str
) -> None:
    env = {"MODEL_OPT_LIBCUDA": "/nonexistent/libcuda.so.1"} if not setup else {}
    r = run_case(
        stub_libcuda,
        setup
        + "\n"
        + textwrap.dedent(
            """
        out = {}
        try:
            model_opt.allocator()
            out["first"] = "accepted"
        except model_opt.ModelOptError as e:
            out["first"] = str(e)
        out["hooks"] = list(model_opt.runtime.hooks_installed)
        try:
            model_opt.allocator()  # a refused call is not the one call per process
            out["second"] = "accepted"
        except model_opt.ModelOptError as e:
            out["second"] = "refused again"
        print(json.dumps(out))
        """
        ),
        **env,
    )
    assert message in r["first"], r
    assert r["hooks"] == []
    # Loading and cuInit are checked once per process (their result is kept); a failed allocation is
    # tried again.
    assert r["second"] == then
