"""Installing model_opt as PyTorch's allocator: the CUDA pluggable allocator (`allocator`) and the CPU
shim compiled against the installed PyTorch (`install_cpu_allocator`)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from model_opt import _native
from model_opt._native import ModelOptError

_allocator_created = False
_cpu_shim: Any = None
_cuda_front: Any = None
# The functions of the CUDA front (cpp/cuda_front.cpp) that PyTorch's pluggable allocator loads by name.
CUDA_ALLOC_NAME = "model_opt_cuda_alloc"
CUDA_FREE_NAME = "model_opt_cuda_free"
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
    """The extension library's file: the Python module and the C ABI (`cpp/model_opt.h`)."""
    path = _native.__file__
    if path is None:
        raise ModelOptError("model_opt._native has no file path; reinstall model_opt")
    return str(path)


def allocator(patch_memory_api: bool = True) -> Any:
    """Return model_opt's CUDA allocator as a ``torch.cuda.memory.CUDAPluggableAllocator``.

    It is built from the extension's own library file, so the allocator PyTorch calls and this Python
    API share one runtime. Install it once, before CUDA is initialized::

        torch.cuda.memory.change_current_allocator(model_opt.allocator())

    PyTorch calls a small C++ front (``cpp/cuda_front.cpp``, compiled on first use like the CPU shim and
    cached) that raises ``torch.OutOfMemoryError`` when the runtime is out of memory (a memory limit
    included) and ``RuntimeError`` for any other refusal (a driver error, a stream capturing a CUDA
    graph), instead of returning NULL, which PyTorch does not check. The optional hooks (init,
    ``empty_cache``, memory fraction, ``record_stream``) call the runtime directly; they are set when the
    PyTorch build exposes their setters to Python.

    Before anything is installed, device 0 is checked end to end (driver loaded, ``cuInit``, its
    context, a 512-byte allocation and free), so a broken driver is an error here rather than a failed
    allocation later. The driver is ``$MODEL_OPT_LIBCUDA`` when set, else ``libcuda.so.1``.

    It also warns about settings a pluggable allocator ignores (``PYTORCH_CUDA_ALLOC_CONF``), switches
    off those that would fail under it (``torch.backends.cudnn.benchmark``,
    ``TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK``) and, with ``patch_memory_api`` (the default),
    makes ``torch.cuda.memory_allocated``, ``memory_stats`` and the other memory statistics functions,
    which raise under a pluggable allocator, answer from the runtime: see
    `model_opt.runtime.memory_api`.

    Raises:
        ModelOptError: when CUDA is already initialized, when called a second time in the process, or
            when the driver or device 0 does not work (the check's result is kept for the process).
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
    _native.runtime_cuda_preflight(0)
    front = _load_cuda_front()
    symbols = _native.runtime_symbols()
    front.install(symbols["model_opt_try_alloc"], symbols["model_opt_free"], symbols["model_opt_last_error"])
    alloc = torch.cuda.memory.CUDAPluggableAllocator(str(front.__file__), CUDA_ALLOC_NAME, CUDA_FREE_NAME)
    native = alloc.allocator()
    for setter, symbol in _HOOKS.items():
        set_fn = getattr(native, setter, None)
        if callable(set_fn):
            set_fn(symbols[symbol])
            hooks_installed.append(setter)
    if hasattr(front, "install_graph_hooks"):
        front.install_graph_hooks(
            native,
            symbols["model_opt_graph_capture_begin"],
            symbols["model_opt_graph_capture_end"],
            symbols["model_opt_graph_pool_release"],
            symbols["model_opt_try_alloc_for_graph"],
        )
        hooks_installed.append("graph_pools")
    from model_opt.runtime.memory_api import prepare_allocator

    prepare_allocator(patch_memory_api)
    _allocator_created = True
    return alloc


def _load_cuda_front(verbose: bool = False) -> Any:
    """The CUDA front, compiled on first use (cached like the CPU shim) and loaded.

    Built with CUDA graph pool hooks when the CUDA runtime headers are found (PyTorch's CUDA wheels
    bring them); otherwise, or when that build fails, without them, with a warning: requests of a
    stream capturing a CUDA graph are then refused."""
    global _cuda_front
    if _cuda_front is None:
        source = _cpp_source("cuda_front.cpp")
        include = cuda_include_dir()
        failure = "the CUDA runtime headers (cuda_runtime_api.h) were not found"
        if include is not None:
            try:
                _cuda_front = _build_cpp(
                    "model_opt_cuda_front_graphs",
                    source,
                    verbose,
                    variant="graphs",
                    extra_include_paths=[str(include)],
                    extra_cflags=["-DMODEL_OPT_GRAPH_HOOKS"],
                    extra_ldflags=["-ltorch_cuda", "-lc10_cuda"],
                )
                return _cuda_front
            except Exception as e:  # noqa: BLE001 - any build failure falls back to the plain front
                # The compiler's last lines say why (the first ones repeat the command).
                failure = f"building it failed ({type(e).__name__}: ...{str(e).strip()[-400:]})"
        import warnings

        warnings.warn(
            f"model_opt's CUDA front is built without CUDA graph support: {failure}. Requests of a "
            "stream capturing a CUDA graph (torch.cuda.graph, torch.compile mode='reduce-overhead') will be "
            "refused. Install the CUDA runtime headers (pip install nvidia-cuda-runtime) or set CUDA_HOME",
            stacklevel=3,
        )
        _cuda_front = _build_cpp("model_opt_cuda_front", source, verbose)
    return _cuda_front


def cuda_include_dir() -> Path | None:
    """A directory holding the CUDA runtime headers: ``$CUDA_HOME/include``, else the headers of the
    NVIDIA pip packages PyTorch's CUDA wheels depend on, else triton's copy; None when none has them."""
    candidates: list[Path] = []
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            candidates.append(Path(os.environ[env]) / "include")
    try:
        import nvidia  # type: ignore[import-not-found, unused-ignore]

        for root in nvidia.__path__:
            candidates.extend(sorted(Path(root).glob("*/include")))
    except ImportError:
        pass
    try:
        import triton  # type: ignore[import-not-found, unused-ignore]

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "include")
    except ImportError:
        pass
    candidates.append(Path("/usr/local/cuda/include"))
    for c in candidates:
        # The whole set a C++ compiler needs: some packages ship cuda_runtime_api.h without crt/.
        if (c / "cuda_runtime_api.h").is_file() and (c / "crt" / "host_defines.h").is_file():
            return c
    return None


def _build_cpp(name: str, source: Path, verbose: bool, variant: str = "", **options: Any) -> Any:
    """Compiles (or loads from the cache) one of model_opt's C++ extensions; ``options`` go to
    ``torch.utils.cpp_extension.load`` (``extra_cflags`` after ``-O2``)."""
    from torch.utils.cpp_extension import load

    _ensure_ninja()
    cflags = ["-O2", *options.pop("extra_cflags", [])]
    return load(
        name=name,
        sources=[str(source)],
        build_directory=str(_shim_build_dir(source, variant)),
        extra_cflags=cflags,
        verbose=verbose,
        **options,
    )


def _cpp_source(file_name: str) -> Path:
    """A C++ source of model_opt: shipped in the wheel as model_opt/_cpp/ (in a source tree that is a
    link to cpp/, resolved so the compiled extension's cache does not depend on the way in)."""
    package = Path(__file__).resolve().parents[1]  # model_opt/
    for candidate in (package / "_cpp" / file_name, package.parents[1] / "cpp" / file_name):
        if candidate.is_file():
            return candidate.resolve()
    raise ModelOptError(
        f"{file_name} not found (looked in model_opt/_cpp/ and the repository's cpp/); reinstall model_opt "
        "from a wheel built by maturin or from a source tree"
    )


def _shim_source() -> Path:
    """The CPU shim's C++ source."""
    return _cpp_source("cpu_shim.cpp")


def _shim_build_dir(source: Path, variant: str = "") -> Path:
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
    suffix = f"-{variant}" if variant else ""
    path = Path(root) / f"{source.stem}{suffix}-torch{version}-{digest}"
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
        "building model_opt's C++ extensions (the CPU shim, the CUDA front) needs ninja, which was not "
        "found: install it with `pip install ninja`"
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
        _cpu_shim = _build_cpp("model_opt_cpu_shim", _shim_source(), verbose)
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
