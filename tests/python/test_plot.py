"""Plots: `plot_plan`, `plot_live_bytes` and `model-opt plot` write non-empty PNG files."""

from __future__ import annotations

import subprocess
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


MIB = 2**20

#: Three buffers: a (4 MiB at 0, times [0, 10)), b (2 MiB at 0, [10, 20)), c (2 MiB at 4 MiB, [0, 20)).
#: Peak and lower bound 6 MiB; nothing lives at addresses 2-4 MiB during [10, 20).
LAYOUT = f"id,lower,upper,size,offset\na,0,10,{4 * MIB},0\nb,10,20,{2 * MIB},0\nc,0,20,{2 * MIB},{4 * MIB}\n"

#: Points (time, address in MiB) inside each buffer's rectangle, and one where no buffer is.
POINTS = {"a": (5, 2.0), "b": (15, 1.0), "c": (10, 5.0), "empty": (15, 3.0)}

Pixel = tuple[int, int]


def _pixels_of(
    monkeypatch: pytest.MonkeyPatch, points: dict[str, tuple[float, float]]
) -> list[dict[str, Pixel]]:
    """Makes every later plot report where `points` (data coordinates) land in its PNG, as (row,
    column): one dict per plot written, in order."""
    import model_opt.plot as plot_module

    found: list[dict[str, Pixel]] = []
    save = plot_module._save

    def spy(fig, plt, path):  # type: ignore[no-untyped-def]
        ax, height = fig.axes[0], fig.bbox.height
        pixels = {}
        for name, xy in points.items():
            x, y = ax.transData.transform(xy)
            pixels[name] = (int(round(height - y)), int(round(x)))
        found.append(pixels)
        return save(fig, plt, path)

    monkeypatch.setattr(plot_module, "_save", spy)
    return found


def _colour(png: Path, pixel: Pixel) -> tuple[float, ...]:
    from matplotlib.image import imread

    row, col = pixel
    return tuple(float(v) for v in imread(png)[row, col, :3])


def _close(a: tuple[float, ...], b: tuple[float, ...], tol: float = 0.02) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def _near(png: Path, pixel: Pixel, colour: tuple[float, ...], rows: int = 3) -> bool:
    """True when a pixel within `rows` rows of `pixel` (same column) has about `colour` (lines are
    anti-aliased)."""
    row, col = pixel
    return any(_close(_colour(png, (r, col)), colour, tol=0.08) for r in range(row - rows, row + rows + 1))


WHITE = (1.0, 1.0, 1.0)


def _check_layout_plot(png: Path, pixels: dict[str, Pixel]) -> None:
    """One rectangle per buffer, in the colours of the buffers' order; white where no buffer lives."""
    import matplotlib.pyplot as plt

    tab20 = plt.get_cmap("tab20")
    for i, name in enumerate("abc"):
        assert _close(_colour(png, pixels[name]), tab20(i)[:3]), (name, _colour(png, pixels[name]))
    assert _close(_colour(png, pixels["empty"]), WHITE), _colour(png, pixels["empty"])


def test_plot_plan_draws_each_buffer_where_it_is_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = tmp_path / "layout.csv"
    layout.write_text(LAYOUT)
    pixels = _pixels_of(monkeypatch, POINTS)
    out = model_opt.plot_plan(layout, tmp_path / "plan.png")
    assert out == tmp_path / "plan.png" and _is_png(out)
    _check_layout_plot(out, pixels[0])


def test_plot_plan_rejects_a_file_without_offsets(minimalloc: Path, tmp_path: Path) -> None:
    with pytest.raises(model_opt.InputError, match="not a solution"):
        model_opt.plot_plan(minimalloc / "examples" / "input.12.csv", tmp_path / "x.png")


def test_plot_live_bytes_draws_each_curve_at_its_height(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.colors import to_rgb

    # Steps that hold from one position to the next: from 2 to 3 the curves are at 9 and 6 MiB.
    eager, reordered = [1, 5, 9, 4, 2], [1, 4, 6, 4, 2]
    points = {"eager": (2.5, 9.0), "reordered": (2.5, 6.0), "arena": (1.0, 7.0), "arena_end": (3.0, 7.0)}
    pixels = _pixels_of(monkeypatch, points)
    out = model_opt.plot_live_bytes(
        {"eager order": [v * MIB for v in eager], "reordered": [v * MIB for v in reordered]},
        tmp_path / "live.png",
        {"arena": 7 * MIB},
    )
    assert _is_png(out)
    at = pixels[0]
    blue, orange = to_rgb("C0"), to_rgb("C1")
    assert _near(out, at["eager"], blue) and not _near(out, at["eager"], orange)
    assert _near(out, at["reordered"], orange) and not _near(out, at["reordered"], blue)
    # The arena line: black (grey once anti-aliased over two rows of pixels) and dashed: dark on a
    # good part of its row, not all of it, and nowhere 4 px above or below.
    from matplotlib.image import imread

    image = imread(out)
    row, (start, end) = at["arena"][0], (at["arena"][1], at["arena_end"][1])

    def dark(r: int) -> list[bool]:
        return [any(max(image[r + d, c, :3]) < 0.4 for d in (-1, 0, 1)) for c in range(start, end)]

    on_line = dark(row)
    assert 0.3 < sum(on_line) / len(on_line) < 0.95, sum(on_line) / len(on_line)
    assert not any(dark(row - 4)) and not any(dark(row + 4))


def test_live_bytes_of_buffers_is_the_load_step_function(tmp_path: Path) -> None:
    csv = tmp_path / "b.csv"
    csv.write_text("id,lower,upper,size\na,0,2,10\nb,1,3,5\nc,3,4,1\n")
    times, loads = live_bytes_of_buffers(read_buffers(csv))
    assert times == [0, 1, 2, 3, 4] and loads == [10, 15, 5, 1, 0]


def test_cli_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.colors import to_rgb

    from model_opt.plot import plot_trace_live_bytes

    layout = tmp_path / "layout.csv"
    layout.write_text(LAYOUT)
    # Where the points land, from the same plots drawn in this process (the command draws them alike).
    live_points = {"drop": (10, 5.0), "after": (15, 4.0), "above": (15, 5.0), "below": (5, 4.0)}
    pixels = _pixels_of(monkeypatch, {**POINTS, **live_points})
    model_opt.plot_plan(layout, tmp_path / "ref.png")
    plot_trace_live_bytes(layout, tmp_path / "ref_live.png")
    out, live = tmp_path / "out.png", tmp_path / "live.png"
    proc = run_cli("plot", layout, "--output", out, "--live", live)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out}\n{live}\n"
    _check_layout_plot(out, pixels[0])
    # Live bytes over time: 6 MiB while a and c live (under the dashed plan-peak line there), then
    # 4 MiB (b and c): the curve drops at t=10, and runs at 4 MiB after it, not before.
    at, blue = pixels[1], to_rgb("C0")
    assert _near(live, at["after"], blue)
    assert not _near(live, at["above"], blue) and not _near(live, at["below"], blue)
    row, col = at["drop"]
    assert any(_close(_colour(live, (row, c)), blue, tol=0.08) for c in range(col - 3, col + 4))


def test_cli_plot_bad_input(minimalloc: Path, tmp_path: Path) -> None:
    proc = run_cli("plot", minimalloc / "examples" / "input.12.csv", "--output", tmp_path / "x.png")
    assert proc.returncode == 2 and "not a solution" in proc.stderr
    proc = run_cli("plot", tmp_path / "missing.csv")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command writes on stderr (and no traceback)."""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_read_buffers_is_the_native_csv_reader(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('\ufeffid,lower,upper,size,offset\r"a",0,2,10,0\r"b,\nc",1,3,5,10\r')
    assert read_buffers(path) == [("a", 0, 2, 10, 0), ("b,\nc", 1, 3, 5, 10)]
    path.write_text('id,lower,upper,size\n"a,0,2,10\n')
    with pytest.raises(model_opt.InputError, match=r"q.csv:2: a quoted field is never closed"):
        read_buffers(path)


def test_live_plot_of_a_long_lived_buffer_costs_no_memory_per_tick(tmp_path: Path) -> None:
    # One buffer living 2^53 ticks: the old curve had one value per tick (MemoryError); now 2 points.
    solution = tmp_path / "long.csv"
    solution.write_text("id,lower,upper,size,offset\na,0,9007199254740992,4096,0\nb,5,50000000,8,4096\n")
    out, live = tmp_path / "out.png", tmp_path / "live.png"
    r = run_cli("plot", solution, "--output", out, "--live", live, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _is_png(out) and _is_png(live)


def test_plot_of_no_buffers_is_bad_input(tmp_path: Path) -> None:
    empty, header_only = tmp_path / "empty.csv", tmp_path / "header.csv"
    empty.write_text("")
    header_only.write_text("id,lower,upper,size,offset\n")
    r = run_cli("plot", empty, "--output", tmp_path / "e.png")
    assert r.returncode == 2
    assert one_error_line(r) == (
        f"model-opt plot: {empty}: empty file: expected a header `id,lower,upper,size`"
    )
    r = run_cli("plot", header_only, "--output", tmp_path / "h.png")
    assert r.returncode == 2
    assert one_error_line(r) == (
        f"model-opt plot: {header_only}: no buffers to plot (the file has a header and no rows)"
    )
    assert not (tmp_path / "e.png").exists() and not (tmp_path / "h.png").exists()


@pytest.mark.parametrize(
    "output,reason",
    [("missing-dir/x.png", "No such file or directory"), ("/dev/full", "No space left on device")],
)
def test_plot_to_an_output_that_cannot_be_written_is_bad_input(
    solution: Path, tmp_path: Path, output: str, reason: str
) -> None:
    out = output if output.startswith("/") else tmp_path / output
    if output.startswith("/") and not Path(output).exists():
        pytest.skip(f"no {output} here")
    for args in (["--output", out], ["--output", tmp_path / "ok.png", "--live", out]):
        r = run_cli("plot", solution, *args)
        assert r.returncode == 2
        assert one_error_line(r) == f"model-opt plot: {out}: cannot write: {reason}"


def test_plot_of_an_unreadable_input_is_bad_input(tmp_path: Path) -> None:
    r = run_cli("plot", tmp_path, "--output", tmp_path / "x.png")
    assert r.returncode == 2
    assert one_error_line(r).startswith(f"model-opt plot: {tmp_path}: cannot read: Is a directory")
