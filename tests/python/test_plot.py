"""Plots: `plot_plan`, `plot_live_bytes` and `model-opt plot` write non-empty PNG files."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

import model_opt
from model_opt.plot import live_bytes_of_buffers, read_buffers

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


@pytest.fixture
def solution(minimalloc: Path, tmp_path: Path) -> Path:
    out = tmp_path / "solution.csv"
    model_opt.plan_csv(minimalloc / "examples" / "input.12.csv", output=out, time_limit=1.0)
    return out


def test_plot_plan_writes_a_png(solution: Path, tmp_path: Path) -> None:
    out = model_opt.plot_plan(solution, tmp_path / "plan.png")
    assert out == tmp_path / "plan.png" and _is_png(out)


def test_plot_plan_rejects_a_file_without_offsets(minimalloc: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a solution"):
        model_opt.plot_plan(minimalloc / "examples" / "input.12.csv", tmp_path / "x.png")


def test_plot_live_bytes_writes_a_png(tmp_path: Path) -> None:
    out = model_opt.plot_live_bytes(
        {"eager order": [1, 5, 9, 4, 2], "reordered": [1, 4, 6, 4, 2]}, tmp_path / "live.png", {"arena": 7}
    )
    assert _is_png(out)


def test_live_bytes_of_buffers_is_the_load_step_function(tmp_path: Path) -> None:
    csv = tmp_path / "b.csv"
    csv.write_text("id,lower,upper,size\na,0,2,10\nb,1,3,5\nc,3,4,1\n")
    times, loads = live_bytes_of_buffers(read_buffers(csv))
    assert times == [0, 1, 2, 3, 4] and loads == [10, 15, 5, 1, 0]


def test_cli_plot(solution: Path, tmp_path: Path) -> None:
    out, live = tmp_path / "out.png", tmp_path / "live.png"
    proc = run_cli("plot", solution, "--output", out, "--live", live)
    assert proc.returncode == 0, proc.stderr
    assert _is_png(out) and _is_png(live)


def test_cli_plot_bad_input(minimalloc: Path, tmp_path: Path) -> None:
    proc = run_cli("plot", minimalloc / "examples" / "input.12.csv", "--output", tmp_path / "x.png")
    assert proc.returncode == 2 and "not a solution" in proc.stderr
    proc = run_cli("plot", tmp_path / "missing.csv")
    assert proc.returncode == 2 and "no such file" in proc.stderr
