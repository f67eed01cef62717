"""Shared fixtures: the data sets beside the repository and a way to run the CLI as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def minimalloc() -> Path:
    """The MiniMalloc-format instances shipped in ../shared/data/minimalloc."""
    path = DATA / "minimalloc"
    assert path.is_dir(), f"missing data set {path}"
    return path


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs `model-opt ARGS...` in a fresh interpreter and captures its output."""
    return subprocess.run(
        [sys.executable, "-m", "model_opt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def stub_libcuda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The strict stub CUDA driver (tests/runtime_support/stub_libcuda.c) built as a file to point
    MODEL_OPT_LIBCUDA at; its SONAME is the real driver's, libcuda.so.1."""
    import os
    import shutil

    cc = os.environ.get("CC") or shutil.which("cc")
    if cc is None:
        pytest.skip("a C compiler (cc) is needed to build the stub CUDA driver")
    out = tmp_path_factory.mktemp("stub_libcuda") / "stub_libcuda.so"
    src = REPO / "tests" / "runtime_support" / "stub_libcuda.c"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-pthread", "-Wl,-soname,libcuda.so.1", "-o", str(out), str(src)],
        check=True,
    )
    return out
