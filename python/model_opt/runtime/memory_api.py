"""PyTorch's CUDA memory functions answered by model_opt's runtime, and the PyTorch settings that a
pluggable allocator cannot honour.

Under ``torch.cuda.memory.change_current_allocator(model_opt.allocator())`` PyTorch 2.15's
``torch.cuda.memory_stats``, ``memory_allocated``, ``max_memory_allocated``, ``memory_reserved``,
``max_memory_reserved``, ``memory_summary``, ``reset_peak_memory_stats`` and
``reset_accumulated_memory_stats`` (and ``torch.accelerator``'s) raise ("CUDAPluggableAllocator does
not yet support getDeviceStats / resetPeakStats / resetAccumulatedStats"), yet Hugging Face
``Trainer``, Lightning and most training scripts call them for logging. `patch_memory_api` replaces
them (``torch.cuda.memory.X`` and its re-export ``torch.cuda.X``, ``torch.accelerator``'s, and the
``torch._C`` bindings behind them, so a function imported by name before the patch works too) with
the functions of this module, which read `model_opt.stats`; `unpatch_memory_api` puts PyTorch's back.

`memory_stats` uses PyTorch's keys, and only those the runtime answers truthfully
(`MEMORY_STATS_KEYS`); a key it cannot answer is left out rather than filled with a made-up number,
so ``memory_stats().get(key, 0)`` behaves as under PyTorch's ``cudaMallocAsync`` backend. The runtime
counts allocations over all devices together, so a device's numbers are answered when the runtime
holds memory on that device only (the usual one process per GPU) and refused with `ModelOptError`
otherwise; `memory_reserved` is known per device and always answered.

`guard_cudnn_benchmark` switches ``torch.backends.cudnn.benchmark`` off (with a warning) because its
search asks the allocator for its largest free block (``cacheInfo``), which a pluggable allocator
refuses at the first convolution. `check_allocator_environment` warns about ``PYTORCH_CUDA_ALLOC_CONF``
(ignored by a pluggable allocator) and switches off ``TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK``
(which makes ``init_process_group("nccl")`` fail). `prepare_allocator` does all three for
`model_opt.allocator`.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any

from model_opt import _native
from model_opt._native import ModelOptError
from model_opt.errors import ArgumentError

__all__ = [
    "MEMORY_STATS_KEYS",
    "AllocatorSettingWarning",
    "check_allocator_environment",
    "guard_cudnn_benchmark",
    "max_memory_allocated",
    "max_memory_reserved",
    "memory_allocated",
    "memory_api_patched",
    "memory_reserved",
    "memory_stats",
    "memory_stats_as_nested_dict",
    "memory_summary",
    "patch_memory_api",
    "prepare_allocator",
    "reset_accumulated_memory_stats",
    "reset_peak_memory_stats",
    "unguard_cudnn_benchmark",
    "unpatch_memory_api",
]


class AllocatorSettingWarning(UserWarning):
    """A PyTorch setting that model_opt's pluggable CUDA allocator cannot honour was ignored or
    switched off."""


#: The ``torch.cuda.memory_stats()`` keys model_opt answers, and what each one is:
#:
#: * ``allocated_bytes.all.current`` / ``.peak``: bytes of live allocations (the sizes PyTorch asked
#:   for; PyTorch's own allocator counts them rounded up to 512 B blocks) and their peak since the start
#:   or the last `reset_peak_memory_stats` (``stats()["allocated_bytes"]`` and
#:   ``["peak_allocated_bytes"]``).
#: * ``requested_bytes.all.current`` / ``.peak``: the same numbers (they are the requested sizes).
#: * ``reserved_bytes.all.current`` / ``.peak``: the planned arena plus the fallback pool's segments,
#:   and the most held at once (``stats()["reserved_bytes"]`` and ``["peak_reserved_bytes"]``).
#: * ``allocation.all.current`` / ``.allocated`` / ``.freed``: live allocations, and allocations and
#:   frees since the start or the last `reset_accumulated_memory_stats`.
#: * ``num_ooms``: requests refused because the device was out of memory (``stats()["out_of_memory"]``).
#:
#: Not answered (absent): the ``large_pool`` / ``small_pool`` split, ``segment.*``, ``active*``,
#: ``inactive_split*``, ``oversize_*``, the ``.allocated`` / ``.freed`` byte totals, the ``.peak`` of
#: allocation counts, ``num_alloc_retries``, ``num_sync_all_streams``, ``num_device_alloc`` /
#: ``num_device_free``, ``num_oom_rejections`` and ``max_split_size``: the runtime does not count them.
MEMORY_STATS_KEYS: tuple[str, ...] = (
    "allocated_bytes.all.current",
    "allocated_bytes.all.peak",
    "allocation.all.allocated",
    "allocation.all.current",
    "allocation.all.freed",
    "num_ooms",
    "requested_bytes.all.current",
    "requested_bytes.all.peak",
    "reserved_bytes.all.current",
    "reserved_bytes.all.peak",
)

# Counters as they were at the last reset_accumulated_memory_stats (the runtime's own never reset).
_accumulated_base = {"allocations": 0, "frees": 0, "out_of_memory": 0}


def _device_index(device: Any) -> int:
    """The CUDA device index PyTorch's memory functions mean by `device` (None: the current device)."""
    if device is None:
        return _current_device()
    if isinstance(device, bool):
        raise ArgumentError(f"device {device!r} is not a CUDA device")
    if isinstance(device, int):
        if device < 0:
            raise ArgumentError(f"device {device} is not a CUDA device index (>= 0)")
        return device
    import torch

    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as e:
            raise ArgumentError(f"device {device!r} is not a CUDA device: {e}") from None
    if isinstance(device, torch.device):
        if device.type != "cuda":
            raise ArgumentError(f"device {str(device)!r} is not a CUDA device")
        return _current_device() if device.index is None else device.index
    raise ArgumentError(f"device {device!r} is not a CUDA device, index or None")


def _current_device() -> int:
    import torch

    # Before CUDA is initialized no CUDA tensor exists, and the device CUDA will start on is 0;
    # asking torch.cuda.current_device() would initialize CUDA for a logging call.
    return int(torch.cuda.current_device()) if torch.cuda.is_initialized() else 0


def _refuse_other_devices(device: int, held: list[int], what: str) -> None:
    others = sorted(d for d in held if d != device)
    if device in held and others:
        names = ", ".join("host memory" if d == -1 else f"cuda:{d}" for d in others)
        raise ModelOptError(
            f"{what} of cuda:{device} is not known: model_opt counts allocations over all devices "
            f"together, and this process also holds memory on {names}. Read model_opt.stats() for the "
            f"total; torch.cuda.memory_reserved(device) is known per device"
        )


def memory_stats(device: Any = None) -> dict[str, int]:
    """``torch.cuda.memory_stats`` answered by the runtime: the keys in `MEMORY_STATS_KEYS`, sorted.

    Args:
        device: a CUDA device (``torch.device``, ``"cuda:N"``, N), or None for the current one.

    Returns:
        An ordered dict of the answered keys (all zero for a device the runtime never served).

    Raises:
        ModelOptError: the runtime holds memory on `device` and on another device too (its counts are
            over all devices together, so the device's own cannot be told).
        ArgumentError: `device` is not a CUDA device.
    """
    index = _device_index(device)
    s = _native.runtime_stats()
    held = list(s["devices"])
    if index not in held:
        values = dict.fromkeys(MEMORY_STATS_KEYS, 0)
    else:
        _refuse_other_devices(index, held, "memory_stats")
        live = s["allocations"] - s["frees"]
        values = {
            "allocated_bytes.all.current": s["allocated_bytes"],
            "allocated_bytes.all.peak": s["peak_allocated_bytes"],
            "allocation.all.allocated": s["allocations"] - _accumulated_base["allocations"],
            "allocation.all.current": live,
            "allocation.all.freed": s["frees"] - _accumulated_base["frees"],
            "num_ooms": s["out_of_memory"] - _accumulated_base["out_of_memory"],
            "requested_bytes.all.current": s["allocated_bytes"],
            "requested_bytes.all.peak": s["peak_allocated_bytes"],
            "reserved_bytes.all.current": s["reserved_bytes"],
            "reserved_bytes.all.peak": s["peak_reserved_bytes"],
        }
    return OrderedDict(sorted((k, int(v)) for k, v in values.items()))


def memory_stats_as_nested_dict(device: Any = None) -> dict[str, Any]:
    """`memory_stats` nested as ``torch.cuda.memory_stats_as_nested_dict`` returns it
    (``{"allocated_bytes": {"all": {"current": ...}}, "num_ooms": ...}``)."""
    nested: dict[str, Any] = {}
    for key, value in memory_stats(device).items():
        *path, last = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def memory_allocated(device: Any = None) -> int:
    """Bytes of live allocations on `device` (``torch.cuda.memory_allocated``); see `memory_stats`."""
    return memory_stats(device)["allocated_bytes.all.current"]


def max_memory_allocated(device: Any = None) -> int:
    """Peak of `memory_allocated` since the start or `reset_peak_memory_stats`
    (``torch.cuda.max_memory_allocated``); see `memory_stats`."""
    return memory_stats(device)["allocated_bytes.all.peak"]


def memory_reserved(device: Any = None) -> int:
    """Bytes the runtime holds from `device`, arena and fallback pool together
    (``torch.cuda.memory_reserved``); known per device, so answered in every case."""
    return int(_native.runtime_memory_limit(_device_index(device))[0])


def max_memory_reserved(device: Any = None) -> int:
    """Peak of `memory_reserved` since the start or `reset_peak_memory_stats`
    (``torch.cuda.max_memory_reserved``); see `memory_stats`."""
    return memory_stats(device)["reserved_bytes.all.peak"]


def reset_peak_memory_stats(device: Any = None) -> None:
    """Set the peaks (allocated and reserved) to the current values (``model_opt.reset_peak_stats``).

    Raises:
        ModelOptError: the runtime holds memory on another device too, whose peaks would be reset
            with it (the runtime resets all devices' together).
    """
    index = _device_index(device)
    _refuse_other_devices(index, list(_native.runtime_stats()["devices"]), "reset_peak_memory_stats")
    _native.runtime_reset_peak_stats()


def reset_accumulated_memory_stats(device: Any = None) -> None:
    """Start ``allocation.all.allocated``, ``allocation.all.freed`` and ``num_ooms`` from zero again.

    Raises:
        ModelOptError: the runtime holds memory on another device too (its counts are shared).
    """
    index = _device_index(device)
    s = _native.runtime_stats()
    _refuse_other_devices(index, list(s["devices"]), "reset_accumulated_memory_stats")
    _accumulated_base.update(allocations=s["allocations"], frees=s["frees"], out_of_memory=s["out_of_memory"])


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def memory_summary(device: Any = None, abbreviated: bool = False) -> str:
    """A printable summary of the runtime's memory on `device` (``torch.cuda.memory_summary``).

    The numbers of `memory_stats`, then (unless `abbreviated`) what the runtime did: mode, arena,
    fallback pool, planned hits, divergences, and its last error.
    """
    index = _device_index(device)
    m = memory_stats(index)
    s = _native.runtime_stats()
    width = 75
    rows = [
        f"model_opt CUDA memory summary, device ID {index}".center(width),
        "-" * width,
        f"{'':22}| {'current':>14} | {'peak':>14}",
        f"{'Allocated memory':22}| {_size(m['allocated_bytes.all.current']):>14} | "
        f"{_size(m['allocated_bytes.all.peak']):>14}",
        f"{'Reserved memory':22}| {_size(m['reserved_bytes.all.current']):>14} | "
        f"{_size(m['reserved_bytes.all.peak']):>14}",
        f"{'Live allocations':22}| {m['allocation.all.current']:>14} |",
        f"Allocations: {m['allocation.all.allocated']}, frees: {m['allocation.all.freed']}, "
        f"out of memory: {m['num_ooms']}",
    ]
    if not abbreviated:
        rows += [
            "-" * width,
            f"mode: {s['mode']}, plans: {s['plans']}, steps: {s['steps']}, plan active: {s['plan_active']}",
            f"arena: {_size(s['arena_bytes'])}, fallback pool: {_size(s['fallback_reserved_bytes'])}, "
            f"plan lower bound: {_size(s['lower_bound_bytes'])}",
            f"planned hits: {s['planned_hits']}, fallback allocations: {s['fallback_allocations']}, "
            f"divergences: {s['divergences']}, abandoned steps: {s['abandoned_steps']}",
            f"devices (all devices' counts together): {s['devices']}",
            f"last error: {s['last_error']}",
        ]
    line = "=" * width
    return "\n".join([line, *rows, line]) + "\n"


# The functions patch_memory_api replaces, by name: in torch.cuda.memory and torch.cuda.
_CUDA_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "memory_stats": memory_stats,
    "memory_stats_as_nested_dict": memory_stats_as_nested_dict,
    "memory_allocated": memory_allocated,
    "max_memory_allocated": max_memory_allocated,
    "memory_reserved": memory_reserved,
    "max_memory_reserved": max_memory_reserved,
    "memory_summary": memory_summary,
    "reset_peak_memory_stats": reset_peak_memory_stats,
    "reset_accumulated_memory_stats": reset_accumulated_memory_stats,
}
# In torch.accelerator.memory and torch.accelerator (the same functions, device positional).
_ACCELERATOR_FUNCTIONS = (
    "memory_stats",
    "memory_allocated",
    "max_memory_allocated",
    "memory_reserved",
    "max_memory_reserved",
    "reset_peak_memory_stats",
    "reset_accumulated_memory_stats",
)
# The torch._C bindings PyTorch's Python functions call (a PyTorch function imported by name before
# the patch reaches them); they get a device index already resolved.
_C_BINDINGS: dict[str, Callable[[Any], Any]] = {
    "_cuda_memoryStats": memory_stats_as_nested_dict,
    "_cuda_resetPeakMemoryStats": reset_peak_memory_stats,
    "_cuda_resetAccumulatedMemoryStats": reset_accumulated_memory_stats,
    "_accelerator_getDeviceStats": memory_stats_as_nested_dict,
    "_accelerator_resetPeakStats": reset_peak_memory_stats,
    "_accelerator_resetAccumulatedStats": reset_accumulated_memory_stats,
}

# (object, attribute, original value) of every attribute patched, in patching order.
_patched: list[tuple[Any, str, Any]] = []


def _pluggable_allocator_installed() -> bool:
    """Whether PyTorch's current CUDA allocator is a pluggable one (model_opt's, once ``allocator()``
    has been passed to ``change_current_allocator``). Asks without initializing CUDA."""
    import torch

    backend = getattr(torch._C, "_cuda_getAllocatorBackend", None)
    return backend is None or backend() == "pluggable"


def _routed(ours: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """`ours` while the pluggable allocator is installed, PyTorch's `original` otherwise (an allocator
    made by ``allocator()`` but never installed leaves PyTorch's statistics working and true)."""

    def routed(*args: Any, **kwargs: Any) -> Any:
        if _pluggable_allocator_installed():
            return ours(*args, **kwargs)
        return original(*args, **kwargs)

    return functools.update_wrapper(routed, ours)


def _set(obj: Any, name: str, ours: Callable[..., Any], saved: list[tuple[Any, str, Any]]) -> None:
    if hasattr(obj, name):
        original = getattr(obj, name)
        saved.append((obj, name, original))
        setattr(obj, name, _routed(ours, original))


def patch_memory_api() -> None:
    """Route PyTorch's CUDA memory statistics functions to the runtime (see the module's docstring).

    Patches ``torch.cuda.memory``, its re-exports in ``torch.cuda``, ``torch.accelerator.memory``,
    ``torch.accelerator`` and the ``torch._C`` bindings behind them. Each patched function answers
    from the runtime while PyTorch's current CUDA allocator is the pluggable one, and calls PyTorch's
    own otherwise (its ``__wrapped__`` is this module's function). Does nothing when already
    patched; `unpatch_memory_api` undoes it. ``model_opt.allocator()`` calls it unless
    ``patch_memory_api=False``.
    """
    if _patched:
        return
    import torch
    import torch.cuda.memory

    saved: list[tuple[Any, str, Any]] = []
    for module in (torch.cuda.memory, torch.cuda):
        for name, fn in _CUDA_FUNCTIONS.items():
            _set(module, name, fn, saved)
    accelerator = getattr(torch, "accelerator", None)
    for module in (getattr(accelerator, "memory", None), accelerator):
        if module is not None:
            for name in _ACCELERATOR_FUNCTIONS:
                _set(module, name, _CUDA_FUNCTIONS[name], saved)
    for name, fn in _C_BINDINGS.items():
        _set(torch._C, name, fn, saved)
    _patched.extend(saved)


def unpatch_memory_api() -> bool:
    """Put back PyTorch's functions replaced by `patch_memory_api`. Returns False when none were."""
    if not _patched:
        return False
    for obj, name, original in reversed(_patched):
        setattr(obj, name, original)
    _patched.clear()
    return True


def memory_api_patched() -> bool:
    """True while `patch_memory_api` is in effect."""
    return bool(_patched)


_CUDNN_BENCHMARK_WHY = (
    "torch.backends.cudnn.benchmark is switched off under model_opt's allocator: cuDNN's benchmark "
    "search sizes its workspace from the allocator's largest free block (cacheInfo), which PyTorch's "
    "CUDAPluggableAllocator refuses ('CUDAPluggableAllocator does not yet support cacheInfo') at the "
    "first convolution. cuDNN picks algorithms by its heuristics instead (benchmark=False)"
)
# (ContextProp of torch.backends.cudnn.benchmark, its setter, torch._C._set_cudnn_benchmark) while
# guarded.
_cudnn_guard: list[tuple[Any, Any, Any]] = []


def guard_cudnn_benchmark() -> bool:
    """Keep ``torch.backends.cudnn.benchmark`` False: switch it off now if it is on, and turn every
    later ``benchmark = True`` (or ``torch.backends.cudnn.flags(benchmark=True)``) into False, each
    time with an `AllocatorSettingWarning` saying why. `unguard_cudnn_benchmark` undoes it.

    Returns:
        True when it was on and has been switched off.
    """
    import torch
    import torch.backends.cudnn

    if _cudnn_guard:
        return False
    prop = type(torch.backends.cudnn).__dict__.get("benchmark")
    set_flag = torch._C._set_cudnn_benchmark

    def guarded(value: bool) -> None:
        if value:
            warnings.warn(_CUDNN_BENCHMARK_WHY, AllocatorSettingWarning, stacklevel=3)
        set_flag(False)

    _cudnn_guard.append((prop, getattr(prop, "setter", None), set_flag))
    if prop is not None and hasattr(prop, "setter"):
        prop.setter = guarded
    torch._C._set_cudnn_benchmark = guarded
    if torch._C._get_cudnn_benchmark():
        warnings.warn(_CUDNN_BENCHMARK_WHY, AllocatorSettingWarning, stacklevel=4)
        set_flag(False)
        return True
    return False


def unguard_cudnn_benchmark() -> bool:
    """Undo `guard_cudnn_benchmark` (the flag stays as it is). Returns False when it was not guarded."""
    import torch

    if not _cudnn_guard:
        return False
    prop, setter, set_flag = _cudnn_guard.pop()
    if prop is not None and setter is not None:
        prop.setter = setter
    torch._C._set_cudnn_benchmark = set_flag
    return True


_ALLOC_CONF_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
# The variable and its deprecated name, both read by ProcessGroupNCCL (c10d's getCvarBool).
_NCCL_HOOK_VARIABLES = (
    "TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK",
    "NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK",
)
_TRUE = ("y", "yes", "1", "t", "true")
_environment_checked = False


def check_allocator_environment(
    environ: MutableMapping[str, str] | None = None, *, force: bool = False
) -> list[str]:
    """Warn about environment variables a pluggable CUDA allocator does not honour (once a process).

    * ``PYTORCH_CUDA_ALLOC_CONF`` / ``PYTORCH_ALLOC_CONF``: their options (``expandable_segments``,
      ``max_split_size_mb``, ``garbage_collection_threshold``, ``backend`` ...) configure PyTorch's own
      caching allocator, which model_opt replaces: they are ignored. An `AllocatorSettingWarning`.
    * ``TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK`` (or its old name without ``TORCH_``) set true:
      ``init_process_group("nccl")`` would fail ("CUDAPluggableAllocator does not support
      attachAllocatorTraceTracker"; the communicator would then ask for a ``snapshot``, refused too),
      because the hook registers the caching allocator's segments with NCCL. It is set to ``0`` here
      (NCCL then copies through its own buffers, as by default), with an `AllocatorSettingWarning`.

    Args:
        environ: the environment (``os.environ``, whose changes C code sees, when None).
        force: check again even if a check already ran in this process.

    Returns:
        The names of the variables warned about.
    """
    global _environment_checked
    if _environment_checked and not force:
        return []
    _environment_checked = True
    env = os.environ if environ is None else environ
    found: list[str] = []
    conf = [name for name in _ALLOC_CONF_VARIABLES if env.get(name)]
    if conf:
        found += conf
        settings = "; ".join(f"{name}={env[name]!r}" for name in conf)
        warnings.warn(
            f"{settings}: these options configure PyTorch's own CUDA caching allocator, which "
            "model_opt's allocator replaces, so they are ignored (a CUDAPluggableAllocator reads none "
            "of them). Unset the variable to silence this warning; model_opt's own limits are "
            "model_opt.set_memory_limit and model_opt.runtime.set_max_plans",
            AllocatorSettingWarning,
            stacklevel=4,  # the caller of model_opt.allocator()
        )
    hook = [name for name in _NCCL_HOOK_VARIABLES if env.get(name, "").strip().lower() in _TRUE]
    if hook:
        found += hook
        settings = ", ".join(f"{name}={env[name]}" for name in hook)
        for name in _NCCL_HOOK_VARIABLES:
            if name in env:
                env[name] = "0"
        warnings.warn(
            f"{settings}: model_opt set it to 0. With it, "
            "torch.distributed.init_process_group('nccl') fails under a pluggable allocator "
            "('CUDAPluggableAllocator does not support attachAllocatorTraceTracker'), because the hook "
            "registers the caching allocator's segments with NCCL. Unset it (or set it to 0) when "
            "using model_opt's allocator to silence this warning",
            AllocatorSettingWarning,
            stacklevel=4,  # the caller of model_opt.allocator()
        )
    return found


GRAPH_TREES_WHY = (
    "torch.compile(mode='reduce-overhead') records CUDA graphs as CUDA graph trees, which checkpoint the "
    "caching allocator's pool state after each recording (torch._C._cuda_getCheckpointState); PyTorch's "
    "CUDAPluggableAllocator, which model_opt's allocator is, does not provide it. Capture graphs with "
    "torch.cuda.graph or torch.cuda.make_graphed_callables (model_opt serves them from the graph's private "
    "pool), or compile with mode='max-autotune-no-cudagraphs'"
)


def guard_cuda_graph_trees() -> bool:
    """Make the call CUDA graph trees fail on under a pluggable allocator
    (``torch._C._cuda_getCheckpointState``) raise `ModelOptError` with `GRAPH_TREES_WHY`, instead of
    PyTorch's "does not yet support getCheckpointState". Returns False when already guarded or absent."""
    import torch

    original = getattr(torch._C, "_cuda_getCheckpointState", None)
    if original is None or getattr(original, "_model_opt_guard", False):
        return False

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise ModelOptError(GRAPH_TREES_WHY)

    refused._model_opt_guard = True  # type: ignore[attr-defined]
    torch._C._cuda_getCheckpointState = refused
    return True


def prepare_allocator(patch_api: bool = True) -> None:
    """What ``model_opt.allocator()`` does besides building the allocator: `check_allocator_environment`,
    `guard_cudnn_benchmark`, `guard_cuda_graph_trees`, and, when `patch_api`, `patch_memory_api`."""
    check_allocator_environment()
    guard_cudnn_benchmark()
    guard_cuda_graph_trees()
    if patch_api:
        patch_memory_api()
