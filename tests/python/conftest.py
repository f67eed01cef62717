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
