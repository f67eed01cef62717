"""Issue 17 on a real GPU (skipped without one; never run yet): refusals raise PyTorch's errors, the
runtime leaves the caller's current device alone, and a CUDA graph capture is served from its own
pool, each case in a fresh process (tests/python/cuda_path_worker.py). The same behaviour is tested
without a GPU against the strict stub driver (test_cuda_front.py, tests/runtime_cuda_strict.rs,
tests/runtime_cuda_graphs.rs); this is the check that the real driver and PyTorch agree with the stub.
With MODEL_OPT_GPU_REPORT_DIR set (scripts/gpu_check.sh), each case's output is written there as
JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("MODEL_OPT_REQUIRE_CUDA") != "1",
    reason="needs an NVIDIA GPU and the CUDA build of PyTorch",
)

WORKER = Path(__file__).resolve().parent / "cuda_path_worker.py"


def run(case: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(WORKER), case], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, f"{case} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    folder = os.environ.get("MODEL_OPT_GPU_REPORT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"cuda_path_{case}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


def test_refusals_raise_torch_out_of_memory_and_the_runtime_goes_on() -> None:
    r = run("errors")
    for case in ("limit", "fraction", "device"):
        assert r[case]["raised"], (case, r[case])
        first = r[case]["chain"][0]
        assert first["oom"] and first["text"].startswith("CUDA out of memory."), (case, first)
    assert r["fraction_limit"] > 0
    assert r["after_limit"] == float(1 << 20)
    assert r["after_all"] == float(2 << 20)


def test_the_callers_current_device_is_left_alone() -> None:
    r = run("contexts")
    assert r["fresh_thread"]["before"] == 0
    assert r["fresh_thread"]["after_empty_cache"] == 0, "empty_cache() left a context current"
    if r["devices"] >= 2:
        assert r["after_plan_device"] == 1 and r["after_plan_context_same"], r
        assert r["new_tensor_device"] == 1, r


def test_a_cuda_graph_capture_is_served_from_its_private_pool() -> None:
    from model_opt.runtime.install import cuda_include_dir

    r = run("graph")
    if cuda_include_dir() is None:
        # A front without the pool hooks: the capture is refused, clearly.
        assert r["capture"]["raised"], r
        texts = " | ".join(e["text"] for e in r["capture"]["chain"])
        assert "is capturing a CUDA graph" in texts, texts
    else:
        assert not r["capture"]["raised"], r
        assert r["stats_captured"]["graph_pool_allocations"] >= 2, r
        assert r["replay_value"] == 8.0 and r["replay_all_equal"], r
        assert r["fills_intact"], "a replay overwrote an eager tensor made after the capture"
        assert r["stats_released"]["graph_pool_bytes"] == 0, r
    assert r["eager_after"] == float(4 << 16)
