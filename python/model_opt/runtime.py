"""The allocator runtime's Python API: record one training step, plan it, replay it from one arena.

Typical use::

    import torch, model_opt
    torch.cuda.memory.change_current_allocator(model_opt.allocator())  # GPU: before any CUDA tensor
    # or, on CPU: model_opt.install_cpu_allocator()
    train_step()                     # first step: optimizer state is created
    with model_opt.profile():        # one representative step, recorded
        train_step()
    report = model_opt.plan()        # offsets for the step's buffers; the arena is reserved
    for batch in loader:
        with model_opt.step():       # served at planned addresses
            train_step()
    print(model_opt.stats())

Inside ``step()`` the k-th allocation of the step is served at its planned address when the safety
check passes (size not larger than planned, same stream, and the planned bytes overlap nothing still
live); anything else is served by the fallback pool and counted in ``stats()["divergences"]``. Past
``max_divergences`` in one step, the rest of that step stops using the plan (``plan_active`` is False
and ``abandoned_steps`` counts it). When the step changes for good (new batch size, new model), record
it again: ``with model_opt.profile(): train_step()`` then ``model_opt.plan()``; the old arena is freed
once nothing lives in it. The runtime also does this by itself when two steps in a row diverge (see
``set_auto_replan``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model_opt import _native
from model_opt._native import ModelOptError

__all__ = [
    "allocator",
    "empty_cache",
    "install_cpu_allocator",
    "last_error",
    "plan",
    "profile",
    "reset_peak_stats",
    "restore_default_cpu_allocator",
    "save_plan",
    "save_trace",
    "set_auto_replan",
    "set_max_divergences",
    "set_max_plans",
    "stats",
    "step",
]

_allocator_created = False
_cpu_shim: Any = None
# Setters of the optional hooks that allocator() found and called (for diagnostics and tests).
hooks_installed: list[str] = []

# Optional hooks of PyTorch's pluggable allocator, by setter name: the C function each one gets.
_HOOKS = {
    "set_init_fn": "model_opt_init",
    "set_reset_fn": "model_opt_empty_cache",
    "set_memory_fraction_fn": "model_opt_set_memory_fraction",
    "set_record_stream_fn": "model_opt_record_stream",
}


def library_path() -> str:
    """The extension library's file: both the Python module and the allocator PyTorch loads."""
    path = _native.__file__
    if path is None:
        raise ModelOptError("model_opt._native has no file path; reinstall model_opt")
    return str(path)


def allocator() -> Any:
    """Return model_opt's CUDA allocator as a ``torch.cuda.memory.CUDAPluggableAllocator``.

    It is built from the extension's own library file, so the allocator PyTorch calls and this Python
    API share one runtime. Install it once, before CUDA is initialized::

        torch.cuda.memory.change_current_allocator(model_opt.allocator())

    The optional hooks (init, ``empty_cache``, memory fraction, ``record_stream``) are set when the
    PyTorch build exposes their setters to Python.

    Raises:
        ModelOptError: when CUDA is already initialized, or when called a second time in the process.
    """
    global _allocator_created
    import torch

    if _allocator_created:
        raise ModelOptError(
            "model_opt.allocator() was already called in this process. PyTorch accepts one allocator per "
            "process, set once: call torch.cuda.memory.change_current_allocator(model_opt.allocator()) a "
            "single time, at the start of the program, before any CUDA tensor exists"
        )
    if torch.cuda.is_initialized():
        raise ModelOptError(
            "CUDA is already initialized, so PyTorch can no longer change its allocator. Call "
            "torch.cuda.memory.change_current_allocator(model_opt.allocator()) first, before creating any "
            "CUDA tensor or calling torch.cuda functions that initialize CUDA"
        )
    alloc = torch.cuda.memory.CUDAPluggableAllocator(library_path(), "model_opt_alloc", "model_opt_free")
    symbols = _native.runtime_symbols()
    native = alloc.allocator()
    for setter, symbol in _HOOKS.items():
        set_fn = getattr(native, setter, None)
        if callable(set_fn):
            set_fn(symbols[symbol])
            hooks_installed.append(setter)
    _allocator_created = True
    return alloc


def _shim_source() -> Path:
    """The CPU shim's C++ source: shipped in the wheel as model_opt/_cpp/ (in a source tree that is a
    link to cpp/, resolved so the compiled shim's cache does not depend on the way in)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_cpp" / "cpu_shim.cpp", here.parents[1] / "cpp" / "cpu_shim.cpp"):
        if candidate.is_file():
            return candidate.resolve()
    raise ModelOptError(
        "cpu_shim.cpp not found (looked in model_opt/_cpp/ and the repository's cpp/); reinstall model_opt "
        "from a wheel built by maturin or from a source tree"
    )


def _shim_build_dir(source: Path) -> Path:
    import hashlib

    import torch

    root = os.environ.get("MODEL_OPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "model_opt"
    )
    # One directory per torch version (a shim built against another torch's headers must not load)
    # and per shim source file: two installs (a wheel and a checkout, two checkouts) would otherwise
    # rebuild the one cached shim each time the other is used, since ninja's build file names the
    # source by its path.
    version = torch.__version__.replace("+", "_")
    digest = hashlib.sha256(str(source).encode() + source.read_bytes()).hexdigest()[:12]
    path = Path(root) / f"cpu_shim-torch{version}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ensure_ninja() -> None:
    """torch.utils.cpp_extension runs `ninja` from PATH; a virtual environment that is not activated has
    it installed but not on PATH."""
    if shutil.which("ninja"):
        return
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja  # type: ignore[import-not-found, unused-ignore]

        candidates.insert(0, str(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    for directory in candidates:
        if shutil.which("ninja", path=directory):
            os.environ["PATH"] = directory + os.pathsep + os.environ.get("PATH", "")
            return
    raise ModelOptError(
        "building the CPU shim needs ninja, which was not found: install it with `pip install ninja`"
    )


def install_cpu_allocator(verbose: bool = False) -> bool:
    """Route PyTorch's CPU tensors through model_opt's runtime (the way to use model_opt without a GPU).

    The C++ shim is compiled on first use with ``torch.utils.cpp_extension.load`` (needs a C++ compiler
    and ninja; about a minute) and cached under ``~/.cache/model_opt`` (or ``$MODEL_OPT_CACHE_DIR``).
    Tensors allocated before the call keep their own allocator and are freed by it.

    Returns:
        True when it was installed by this call, False when it already was.
    """
    global _cpu_shim
    if _cpu_shim is None:
        from torch.utils.cpp_extension import load

        _ensure_ninja()
        source = _shim_source()
        _cpu_shim = load(
            name="model_opt_cpu_shim",
            sources=[str(source)],
            build_directory=str(_shim_build_dir(source)),
            extra_cflags=["-O2"],
            verbose=verbose,
        )
    symbols = _native.runtime_symbols()
    return bool(
        _cpu_shim.install(
            symbols["model_opt_host_alloc"], symbols["model_opt_host_free"], symbols["model_opt_last_error"]
        )
    )


def restore_default_cpu_allocator() -> bool:
    """Put PyTorch's default CPU allocator back (``install_cpu_allocator()`` reinstalls model_opt's).

    Tensors keep the allocator that made them, so switching back and forth is safe; benchmarks use it
    to alternate the two allocators in one process. Returns False when model_opt's was not installed.
    """
    if _cpu_shim is None:
        return False
    return bool(_cpu_shim.restore_default())


@contextlib.contextmanager
def profile() -> Iterator[None]:
    """Record the allocations of the step run inside the block (served by the fallback meanwhile).

    Allocations still live when the block ends outlive the step: they are persistent and the plan
    leaves them to the fallback pool. Profile a representative step: the very first step of training
    usually differs from the later ones (the optimizer creates its state, and later steps take other
    code paths), so run one step before profiling, or expect divergences until you profile again.
    """
    _native.runtime_begin_profile()
    try:
        yield
    finally:
        _native.runtime_end_profile()


def plan(time_limit: float = 5.0) -> dict[str, Any]:
    """Plan the recorded step, validate the plan, reserve its arena, and switch to planned mode.

    Args:
        time_limit: seconds the placement planner may search (the best available method runs).

    Returns:
        A dict: ``buffers`` (transient buffers planned), ``persistent_buffers``, ``persistent_bytes``,
        ``lower_bound_bytes``, ``arena_bytes``, ``ratio`` (arena over lower bound), ``method``,
        ``seconds``, ``devices``.
    """
    return dict(_native.runtime_plan(time_limit))


@contextlib.contextmanager
def step(key: str | int | None = None) -> Iterator[None]:
    """Run one training step on a plan: its k-th allocation is served at its planned address.

    The runtime keeps a plan per *step signature* (``set_max_plans``, default 16), all in one arena.
    Without ``key`` a step is recognised by what the device holds when it begins (so the first
    micro-batch of gradient accumulation, which keeps its gradients, is told from the others) and by
    its allocations: it follows a plan while its requests are exactly that plan's, and moves to
    another plan that began the same way when they differ. A step that matches no plan (a new
    sequence length, the accumulation step that runs the optimizer, a short last batch) is recorded
    while it runs (its temporaries first-fit in the arena's free space) and planned at its end, so the
    next step like it is served with zero divergences. ``key`` (e.g. the padded sequence length) names the
    signature instead: steps with the same key follow the same plan, and a new key is recorded and
    planned. What happened in the step is in ``stats()["last_step"]`` afterwards (``new_signature``
    is True for a step that was recorded as a new signature; ``first_fit`` for one served first-fit
    because memory an earlier step kept sat where its plan would put it).

    Raises:
        ModelOptError: when no plan exists yet (profile a step and call ``plan()`` first).
    """
    _native.runtime_begin_step(None if key is None else str(key))
    try:
        yield
    finally:
        _native.runtime_end_step()


def stats() -> dict[str, Any]:
    """Statistics of the runtime (PyTorch's own memory statistics do not work with a custom allocator).

    Keys include ``mode``, ``allocated_bytes``, ``peak_allocated_bytes``, ``reserved_bytes``,
    ``peak_reserved_bytes`` (like ``torch.cuda.max_memory_reserved``),
    ``arena_bytes``, ``lower_bound_bytes``, ``planned_hits``, ``fallback_allocations``,
    ``fallback_bytes``, ``divergences``, ``plan_active``, ``transient_fallbacks``,
    ``persistent_allocations``, ``abandoned_steps``, ``auto_replans``, ``steps``, ``plans`` (step
    signatures planned), ``max_plans``, ``new_signatures``, ``signature_switches``,
    ``unplanned_allocations`` (of which ``unplanned_arena_allocations`` came from the arena's free
    space), ``last_step`` (a dict for the last step) and ``last_error`` (the last
    error a C hook recorded, or None). ``lower_bound_bytes`` is the largest lower bound of the plans.
    """
    return dict(_native.runtime_stats())


def reset_peak_stats() -> None:
    """Set ``peak_allocated_bytes`` and ``peak_reserved_bytes`` to the bytes allocated and reserved now."""
    _native.runtime_reset_peak_stats()


def save_trace(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the recorded step as MiniMalloc CSV (``id,lower,upper,size``), readable by ``model-opt plan``.

    Transient buffers go to ``path``; persistent ones (which outlive the step, so have no end) go to
    ``<stem>.persistent.csv`` beside it as ``id,lower,size,stream``.

    Returns:
        The two paths written.
    """
    transient, persistent = _native.runtime_trace_csv()
    out = Path(path)
    side = out.with_name(out.stem + ".persistent.csv")
    out.write_text(transient)
    side.write_text(persistent)
    return out, side


def save_plan(path: str | os.PathLike[str]) -> list[Path]:
    """Write the plans the runtime serves, as MiniMalloc solution CSV (``id,lower,upper,size,offset``).

    Each row is a buffer the arena serves: its lifetime in the recorded step's events, its slot (the
    size rounded up to 512 bytes: what the arena holds for it) and its offset in the arena, every
    stream's region included, so the largest ``offset + size`` is the plan's arena. This is the plan
    that was installed, not a new plan of the trace: ``model-opt validate``, ``plot_plan`` and
    ``save_snapshot`` read it. The most recently used signature goes to ``path``; every other
    signature (and device) to ``<stem>.<n><suffix>`` beside it, n = 1, 2, ...

    Returns:
        The paths written, the most recently used signature's first.

    Raises:
        ModelOptError: when no plan is installed.
    """
    out = Path(path)
    written = []
    for n, (_device, _key, text) in enumerate(_native.runtime_plan_csvs()):
        target = out if n == 0 else out.with_name(f"{out.stem}.{n}{out.suffix}")
        target.write_text(text)
        written.append(target)
    return written


def last_error(clear: bool = False) -> str | None:
    """The most recent error recorded by a C hook on any thread (hooks cannot raise), or None.

    ``clear=True`` forgets it. (C and C++ callers read their own thread's error with
    ``model_opt_last_error``.)
    """
    return _native.runtime_last_error(clear)


def empty_cache() -> int:
    """Return the fallback pool's unused memory to the device; the planned arena stays. Bytes freed."""
    return int(_native.runtime_empty_cache())


def set_auto_replan(enabled: bool) -> None:
    """Turn automatic planning on (the default) or off.

    On: a step that follows no plan is recorded and planned at its end as a new signature (time limit
    1 s; counted in ``stats()["new_signatures"]``), and a signature whose steps diverge twice in a row
    (say, outputs kept from earlier steps sit in its slots) is planned again from the second (counted
    in ``stats()["auto_replans"]``). If an arena cannot be reserved, the plans stay as they were and the
    reason is in ``stats()["last_error"]``. Off: steps follow the most recent plan (or the one named by
    their key) as best they can, and requests that do not fit it are divergences.
    """
    _native.runtime_set_auto_replan(enabled)


def set_max_plans(n: int) -> None:
    """Planned step signatures kept per device (default 16); past it the least recently used is dropped.

    All plans share one arena, sized for the largest, so more plans cost planning time, not memory.
    """
    if n < 1:
        raise ValueError(f"max plans {n} must be >= 1")
    _native.runtime_set_max_plans(n)


def set_max_divergences(n: int) -> None:
    """Divergences allowed in one step before the rest of that step stops using the plan (default 100)."""
    if n < 0:
        raise ValueError(f"max divergences {n} must be >= 0")
    _native.runtime_set_max_divergences(n)
