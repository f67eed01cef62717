"""Issue 17's checks on a real GPU, one case per fresh process, printed as JSON (for
tests/python/test_cuda_path.py; never run yet: there is no GPU where it was written).

Usage: python cuda_path_worker.py {errors,contexts,graph}

- errors: a request past a memory limit, past `set_per_process_memory_fraction`, and past the device
  raises torch.OutOfMemoryError (not a NULL pointer); the runtime goes on serving afterwards.
- contexts: the runtime's calls (allocation, plan(), empty_cache()) leave the calling thread's current
  CUDA context as they found it: none on a fresh thread, device 1's after set_device(1) (two GPUs).
- graph: a torch.cuda.graph capture is served from the graph's private pool (the pool hooks of the CUDA
  front): the replay computes the right values, eager tensors made after the capture are not
  overwritten by a replay, and the pool's memory goes back when the graph is deleted. Without the hooks
  (a front built without the CUDA headers) the capture is refused with model_opt's message.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
from typing import Any

import torch

import model_opt


def current_context() -> int:
    """This thread's current CUDA context (the driver's CUcontext), 0 for none."""
    cuda = ctypes.CDLL("libcuda.so.1")
    ctx = ctypes.c_void_p()
    r = cuda.cuCtxGetCurrent(ctypes.byref(ctx))
    if r != 0:
        raise RuntimeError(f"cuCtxGetCurrent failed with {r}")
    return ctx.value or 0


def exception_chain(e: BaseException | None) -> list[dict[str, Any]]:
    out = []
    while e is not None:
        out.append(
            {"type": type(e).__name__, "oom": isinstance(e, torch.OutOfMemoryError), "text": str(e)[:600]}
        )
        e = e.__cause__ or e.__context__
    return out


def attempt(fn: Any) -> dict[str, Any]:
    try:
        fn()
        return {"raised": False}
    except Exception as e:  # noqa: BLE001  (the point is to see which one)
        return {"raised": True, "chain": exception_chain(e)}


def errors() -> dict[str, Any]:
    out: dict[str, Any] = {}
    x = torch.ones(1 << 20, device="cuda")  # warm: context, first segment
    model_opt.set_memory_limit("64MiB", "cuda:0")
    out["limit"] = attempt(lambda: torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
    model_opt.set_memory_limit(None, "cuda:0")
    out["after_limit"] = float(torch.ones(1 << 20, device="cuda").sum().item())
    torch.cuda.set_per_process_memory_fraction(0.01, 0)
    out["fraction_limit"] = model_opt.memory_limit("cuda:0")[1]
    big = int(torch.cuda.get_device_properties(0).total_memory * 0.05)
    out["fraction"] = attempt(lambda: torch.empty(big, dtype=torch.uint8, device="cuda"))
    torch.cuda.set_per_process_memory_fraction(1.0, 0)
    total = torch.cuda.get_device_properties(0).total_memory
    out["device"] = attempt(lambda: torch.empty(2 * total, dtype=torch.uint8, device="cuda"))
    out["after_all"] = float((x * 2).sum().item())
    out["last_error"] = model_opt.runtime.last_error()
    return out


def contexts() -> dict[str, Any]:
    out: dict[str, Any] = {"devices": torch.cuda.device_count()}
    seen: dict[str, Any] = {}

    def fresh_thread() -> None:
        # No context current on a new thread; the runtime's own calls must not leave one behind.
        seen["before"] = current_context()
        model_opt.runtime.empty_cache()
        model_opt.stats()
        seen["after_empty_cache"] = current_context()

    torch.ones(1 << 20, device="cuda")
    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join()
    out["fresh_thread"] = seen
    if torch.cuda.device_count() >= 2:
        torch.cuda.set_device(1)
        ctx1 = current_context()
        with model_opt.profile():
            a = torch.ones(1 << 20, device="cuda:0")
            b = torch.ones(1 << 20, device="cuda:1")
            c = (a.sum() + b.sum().to("cuda:0")).item()
        model_opt.plan(time_limit=1.0)
        model_opt.runtime.empty_cache()
        out["after_plan_device"] = torch.cuda.current_device()
        out["after_plan_context_same"] = current_context() == ctx1
        d = torch.empty(1024, device="cuda")
        out["new_tensor_device"] = d.device.index
        out["value"] = c
    return out


def graph() -> dict[str, Any]:
    out: dict[str, Any] = {}
    stat_keys = ("graph_pool_allocations", "graph_pool_bytes", "graph_held_frees", "allocated_bytes")
    x = torch.ones(1 << 16, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = x * 2  # warm-up outside the capture, as PyTorch's docs ask
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    captured: dict[str, Any] = {}

    def capture() -> None:
        with torch.cuda.graph(g):
            tmp = x * 3  # freed inside the capture: its memory is the graph's for good
            captured["out"] = tmp + y
            del tmp

    out["capture"] = attempt(capture)
    out["stats_captured"] = {k: model_opt.stats()[k] for k in stat_keys}
    if not out["capture"]["raised"]:
        # Eager tensors made after the capture must never sit on the graph's memory: a replay would
        # overwrite them.
        fills = [torch.full((1 << 16,), float(i), device="cuda") for i in range(32)]
        x.fill_(2.0)
        g.replay()
        torch.cuda.synchronize()
        out["replay_value"] = float(captured["out"][0].item())  # 2 * 3 + 2
        out["replay_all_equal"] = bool((captured["out"] == captured["out"][0]).all().item())
        out["fills_intact"] = all(
            float(f.min().item()) == float(i) == float(f.max().item()) for i, f in enumerate(fills)
        )
        del fills, captured["out"], g
        import gc

        gc.collect()
        torch.cuda.synchronize()
        out["stats_released"] = {k: model_opt.stats()[k] for k in stat_keys}
    out["eager_after"] = float((x * 4).sum().item())
    out["stats_after"] = {k: model_opt.stats()[k] for k in ("allocated_bytes", "divergences")}
    return out


def main() -> None:
    torch.cuda.memory.change_current_allocator(model_opt.allocator())
    case = sys.argv[1]
    result = {"errors": errors, "contexts": contexts, "graph": graph}[case]()
    print(json.dumps({"case": case, **result}))


if __name__ == "__main__":
    main()
