"""`model-opt plan`, `validate` and `bench-placement`: results, summary lines, and every bad-input case."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

import model_opt


def write(tmp_path: Path, text: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_plan_writes_a_valid_solution_and_one_summary_line(minimalloc: Path, tmp_path: Path) -> None:
    src = minimalloc / "challenging" / "A.1048576.csv"
    out = tmp_path / "A.out.csv"
    r = run_cli("plan", src, "--method", "greedy", "--output", out)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    fields = dict(kv.split("=", 1) for kv in lines[0].split())
    assert fields["buffers"] == "154"
    assert fields["lower_bound"] == "1048576"
    assert int(fields["peak"]) >= 1048576
    assert fields["method"].startswith("greedy")
    rows = read_rows(out)
    assert list(rows[0]) == ["id", "lower", "upper", "size", "offset"]
    assert len(rows) == 154
    # The output repeats the input columns.
    assert [r["id"] for r in rows] == [r["id"] for r in read_rows(src)]
    v = run_cli("validate", out)
    assert v.returncode == 0, v.stderr
    assert f"peak={fields['peak']}" in v.stdout


def test_python_api_matches_the_cli(minimalloc: Path, tmp_path: Path) -> None:
    src = minimalloc / "examples" / "small_c.8.csv"
    cli_out, api_out = tmp_path / "cli.csv", tmp_path / "api.csv"
    r = run_cli("plan", src, "--method", "greedy", "--output", cli_out)
    assert r.returncode == 0, r.stderr
    fields = dict(kv.split("=", 1) for kv in r.stdout.split())
    report = model_opt.plan_csv(src, output=api_out, method="greedy")
    # The same plan (greedy is deterministic), reported the same way: every summary field but the time.
    assert fields == {
        "buffers": str(report["buffers"]),
        "lower_bound": str(report["lower_bound_bytes"]),
        "proven_bound": str(report["proven_bound_bytes"]),
        "peak": str(report["peak_bytes"]),
        "peak/lower_bound": f"{report['ratio']:.4f}",
        "method": report["method"],
        "status": report["status"],
        "time": fields["time"],
    }
    assert cli_out.read_bytes() == api_out.read_bytes()
    # small_c's optimum is 8; no greedy rule finds it, and greedy proves nothing above the bound.
    assert report["lower_bound_bytes"] == report["proven_bound_bytes"] == 8
    assert report["peak_bytes"] > 8 and report["status"] == "feasible"
    assert report["ratio"] == pytest.approx(report["peak_bytes"] / 8)
    assert fields["time"].endswith("s") and float(fields["time"][:-1]) >= 0


def test_validate_catches_an_overlap(tmp_path: Path) -> None:
    path = write(tmp_path, "id,lower,upper,size,offset\na,0,4,8,0\nb,2,6,8,4\n")
    r = run_cli("validate", path)
    assert r.returncode == 2
    assert "buffers a and b" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_placement_prints_a_table(minimalloc: Path) -> None:
    r = run_cli("bench-placement", minimalloc / "examples", "--method", "greedy")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(list((minimalloc / "examples").glob("*.csv")))
    assert any(row.startswith("| input.12 | 5 | 12 | 12 |") for row in rows), rows


#: Each bad input and the exact message after the file name (`PATH` or `PATH:LINE`).
BAD_INPUTS = [
    ("", ": empty file: expected a header `id,lower,upper,size`"),
    ("id,lower,size\na,0,1\n", ":1: missing column(s) upper in header (expected id,lower,upper,size)"),
    (
        "a,0,1,2\n",
        ":1: the first line must be a header naming the columns (id,lower,upper,size), found a data row",
    ),
    ("id,lower,upper,size\na,0,1\n", ":2: expected 4 columns (id,lower,upper,size), found 3"),
    ("id,lower,upper,size\na,0,1,big\n", ":2: size 'big' is not an integer"),
    ("id,lower,upper,size\na,0,1.5,2\n", ":2: upper '1.5' is not an integer"),
    ("id,lower,upper,size\na,0,1,-3\n", ":2: size -3 is negative"),
    ("id,lower,upper,size\na,-1,1,3\n", ":2: lower -1 is negative"),
    (
        "id,lower,upper,size\na,5,5,3\n",
        ":2: buffer 'a': upper 5 must be greater than lower 5 (lifetimes are [lower, upper))",
    ),
    ("id,lower,upper,size\na,0,1,3\nb,0,1,3\na,1,2,3\n", ":4: duplicate id 'a' (first on line 2)"),
]


@pytest.mark.parametrize("text,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_gets_one_clear_message_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    r = run_cli("plan", path)
    assert r.returncode == 2, r
    assert r.stderr == f"model-opt plan: {path}{message}\n"
    assert r.stdout == ""
    # The Python API raises the same message (without the command's prefix), as an InputError.
    with pytest.raises(model_opt.InputError) as raised:
        model_opt.plan_csv(path)
    assert str(raised.value) == f"{path}{message}"
    assert not isinstance(raised.value, model_opt.CapacityError)


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    r = run_cli("plan", tmp_path / "nope.csv")
    assert r.returncode == 2
    assert "nope.csv: cannot read" in r.stderr


def test_capacity_below_the_lower_bound_exits_1(minimalloc: Path) -> None:
    r = run_cli("plan", minimalloc / "examples" / "input.12.csv", "--capacity", "11")
    assert r.returncode == 1
    assert "capacity 11 is below the lower bound 12" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_arguments_exit_2(minimalloc: Path) -> None:
    src = minimalloc / "examples" / "input.12.csv"
    for args in (["--capacity", "-5"], ["--capacity", "lots"], ["--method", "magic"], ["--time-limit", "-1"]):
        r = run_cli("plan", src, *args)
        assert r.returncode == 2, args
        assert "Traceback" not in r.stderr


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command writes on stderr (and no traceback)."""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_a_byte_order_mark_and_cr_line_endings_are_accepted(tmp_path: Path) -> None:
    for name, text in [
        ("bom.csv", "\ufeffid,lower,upper,size\na,0,2,4\nb,1,3,4\n"),
        ("cr.csv", "id,lower,upper,size\ra,0,2,4\rb,1,3,4\r"),
        ("crlf.csv", "id,lower,upper,size\r\na,0,2,4\r\nb,1,3,4\r\n"),
    ]:
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8"))
        r = run_cli("plan", path, "--method", "greedy")
        assert r.returncode == 0, (name, r.stderr)
        assert r.stdout.startswith("buffers=2 lower_bound=8 "), (name, r.stdout)


def test_quoted_ids_are_read_as_csv_and_written_back_quoted(tmp_path: Path) -> None:
    path = write(tmp_path, 'id,lower,upper,size\n"a,b",0,2,4\n"c",1,3,4\n"multi\nline",0,1,1\n')
    out = tmp_path / "out.csv"
    r = run_cli("plan", path, "--method", "greedy", "--output", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("buffers=3 ")
    assert [row["id"] for row in read_rows(out)] == ["a,b", "c", "multi\nline"]
    assert run_cli("validate", out).returncode == 0


def test_a_number_too_large_says_so_with_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "id,lower,upper,size\na,0,1," + "1" + "0" * 40 + "\n")
    r = run_cli("plan", path)
    assert r.returncode == 2
    assert one_error_line(r) == (
        f"model-opt plan: {path}:2: size 1{'0' * 40} is too large (at most 9007199254740992 = 2^53)"
    )


@pytest.mark.parametrize(
    "alignment,message",
    [
        (2**53, "alignment 9007199254740992 is too large (at most 1073741824, 1 GiB)"),
        (24, "alignment 24 is not a power of two (1, 2, 4, ..., 1073741824)"),
    ],
)
def test_alignments_are_powers_of_two_up_to_one_gib(tmp_path: Path, alignment: int, message: str) -> None:
    path = write(tmp_path, f"id,lower,upper,size,alignment\na,0,2,4,1\nb,1,3,4,{alignment}\n")
    for method in ("greedy", "auto"):
        r = run_cli("plan", path, "--method", method)
        assert r.returncode == 2, r
        assert one_error_line(r) == f"model-opt plan: {path}:3: buffer 'b': {message}"


def test_the_largest_alignment_plans(tmp_path: Path) -> None:
    path = write(tmp_path, "id,lower,upper,size,alignment\na,0,2,4,1073741824\nb,1,3,4,1073741824\n")
    r = run_cli("plan", path, "--time-limit", "0.5")
    assert r.returncode == 0, r.stderr
    assert " peak=1073741828 " in r.stdout


def test_conflicting_fixed_offsets_name_the_file_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "id,lower,upper,size,fixed_offset\na,0,4,8,0\nc,0,9,1,\nb,2,6,8,4\n")
    r = run_cli("plan", path)
    assert r.returncode == 2
    assert one_error_line(r) == (
        f"model-opt plan: {path}:4: buffer 'b': its fixed_offset shares bytes [4, 8) with buffer 'a' "
        "(line 2, also fixed) while both are live (in [2, 4))"
    )


def test_time_limit_must_be_finite(minimalloc: Path) -> None:
    r = run_cli("plan", minimalloc / "examples" / "input.12.csv", "--time-limit", "inf")
    assert r.returncode == 2
    assert one_error_line(r) == (
        "model-opt plan: error: argument --time-limit: inf must be a finite number of seconds "
        "(see model-opt plan --help)"
    )
    with pytest.raises(model_opt.InputError, match="^time limit inf must be a finite number of seconds$"):
        model_opt.plan_csv(minimalloc / "examples" / "input.12.csv", time_limit=float("inf"))


@pytest.mark.parametrize("capacity", [2**63, 2**64, 2**53 + 1])
def test_a_capacity_too_large_is_bad_input(minimalloc: Path, capacity: int) -> None:
    src = minimalloc / "examples" / "input.12.csv"
    for command in ("plan", "validate"):
        r = run_cli(command, src, "--capacity", str(capacity))
        assert r.returncode == 2
        assert one_error_line(r) == (
            f"model-opt {command}: error: argument --capacity: {capacity} is too large "
            f"(at most 9007199254740992 = 2^53) (see model-opt {command} --help)"
        )
    with pytest.raises(model_opt.InputError, match=rf"^capacity {capacity} is too large \(at most"):
        model_opt.plan_csv(src, capacity=capacity)
    with pytest.raises(model_opt.InputError, match=r"^capacity -1 is negative$"):
        model_opt.plan_csv(src, capacity=-1)
    assert model_opt.plan_csv(src, capacity=2**53)["peak_bytes"] == 12


def test_a_zero_size_buffer_fits_any_capacity(tmp_path: Path) -> None:
    path = write(tmp_path, "id,lower,upper,size,offset\nz,0,4,0,5\n")
    r = run_cli("validate", path, "--capacity", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "valid: buffers=1 lower_bound=0 peak=0"


def test_a_closed_stdout_ends_quietly_with_0(minimalloc: Path, tmp_path: Path) -> None:
    # Several instances that each take the whole time limit: rows keep coming after the reader left.
    for i in range(3):
        (tmp_path / f"A{i}.csv").write_bytes((minimalloc / "challenging" / "A.1048576.csv").read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_opt.cli", "bench-placement", str(tmp_path), "--time-limit", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert first.startswith(b"| instance |")
    assert stderr == b""


@pytest.mark.parametrize(
    "instance,args,status,proven_bound",
    [
        # Greedy reaches the lower bound: optimal, the bound proven is the lower bound.
        ("examples/input.12.csv", [], "optimal", 12),
        # A greedy plan above the bound, nothing run to prove more: feasible.
        ("examples/small_c.8.csv", ["--method", "greedy"], "feasible", 8),
        # D has no known plan at its lower bound: half a second ends in a timeout, best plan kept.
        ("challenging/D.1048576.csv", ["--time-limit", "0.5"], "time_limit", 986112),
        # With a capacity, the first plan that fits ends the run; A's capacity is its lower bound.
        ("challenging/A.1048576.csv", ["--capacity", "1048576"], "optimal", 1048576),
        ("challenging/D.1048576.csv", ["--capacity", "1300000"], "feasible", 986112),
    ],
)
def test_the_summary_reports_status_and_proven_bound(
    minimalloc: Path, instance: str, args: list[str], status: str, proven_bound: int
) -> None:
    r = run_cli("plan", minimalloc / instance, *args)
    assert r.returncode == 0, r.stderr
    fields = dict(kv.split("=", 1) for kv in r.stdout.split())
    assert list(fields) == [
        "buffers", "lower_bound", "proven_bound", "peak", "peak/lower_bound", "method", "status", "time",
    ]  # fmt: skip
    assert fields["status"] == status
    assert int(fields["proven_bound"]) == proven_bound
    peak = int(fields["peak"])
    if status == "optimal":
        assert peak == proven_bound
    else:
        assert peak > proven_bound >= int(fields["lower_bound"])
    if "--capacity" in args:
        assert peak <= int(args[args.index("--capacity") + 1])


def run_with_a_terminal_on_stderr(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Runs `model-opt ARGS...` with stderr on a pseudo-terminal; returns the run and what it wrote there."""
    import os
    import pty

    master, slave = pty.openpty()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "model_opt.cli", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=120,
        )
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: everything written has been read
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return r, b"".join(chunks).decode().replace("\r\n", "\n")


def test_progress_is_on_for_a_terminal_and_no_progress_turns_it_off(minimalloc: Path) -> None:
    src = minimalloc / "examples" / "input.12.csv"
    # stderr a terminal: progress by default, one line per improvement.
    r, terminal = run_with_a_terminal_on_stderr("plan", src)
    assert r.returncode == 0
    assert r.stdout.startswith("buffers=5 lower_bound=12 proven_bound=12 peak=12 ")
    lines = terminal.splitlines()
    assert lines and all(
        re.fullmatch(r"\[\w+\] incumbent=\d+ bound=\d+ elapsed=\d+\.\d{3}s", x) for x in lines
    )
    assert lines[-1].startswith("[greedy] incumbent=12 bound=12 ")
    # --no-progress: nothing at all on the terminal, the same summary on stdout.
    r, terminal = run_with_a_terminal_on_stderr("plan", src, "--no-progress")
    assert r.returncode == 0
    assert r.stdout.startswith("buffers=5 lower_bound=12 proven_bound=12 peak=12 ")
    assert len(r.stdout.splitlines()) == 1
    assert terminal == ""
    # Not a terminal (a pipe): off by default, on with --progress.
    assert run_cli("plan", src).stderr == ""
    assert "[greedy] incumbent=12 bound=12 " in run_cli("plan", src, "--progress").stderr


def test_validate_checks_the_peak_against_the_capacity(minimalloc: Path, tmp_path: Path) -> None:
    solution = tmp_path / "s.csv"
    assert run_cli("plan", minimalloc / "examples" / "input.12.csv", "--output", solution).returncode == 0
    r = run_cli("validate", solution, "--capacity", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "valid: buffers=5 lower_bound=12 peak=12\n"
    message = f"{solution}: the plan needs 12 bytes, more than the capacity 11"
    r = run_cli("validate", solution, "--capacity", "11")
    assert r.returncode == 2
    assert r.stdout == ""
    assert one_error_line(r) == f"model-opt validate: {message}"
    assert model_opt.validate_csv(solution, capacity=12)["peak_bytes"] == 12
    with pytest.raises(model_opt.InputError) as raised:
        model_opt.validate_csv(solution, capacity=11)
    assert str(raised.value) == message


def test_no_plan_within_the_capacity_is_a_capacity_error_in_python(minimalloc: Path) -> None:
    src = minimalloc / "examples" / "input.12.csv"
    # Proven: below the lower bound.
    with pytest.raises(model_opt.CapacityError) as raised:
        model_opt.plan_csv(src, capacity=11)
    assert str(raised.value) == "capacity 11 is below the lower bound 12: no plan can fit"
    assert isinstance(raised.value, model_opt.ModelOptError)
    assert not isinstance(raised.value, model_opt.InputError)
    assert model_opt.plan_csv(src, capacity=12)["peak_bytes"] == 12
    # Not found in the time limit (D has no known plan this small): the message says which.
    d = minimalloc / "challenging" / "D.1048576.csv"
    with pytest.raises(model_opt.CapacityError) as raised:
        model_opt.plan_csv(d, capacity=1_000_000, time_limit=0.3)
    assert re.fullmatch(
        r"no plan within capacity 1000000 found in the time limit, and none proven impossible: "
        r"the best needs (\d+) \(proven bound (\d+)\); give it more time",
        str(raised.value),
    ), raised.value


def test_a_failed_pipeline_carries_its_exit_status(tmp_path: Path) -> None:
    """The exit status of a failed plan or validation is decided once, in Rust
    (`placement::files::FileError::exit_status`), and carried by the exception the CLI returns."""
    from model_opt import CapacityError, InputError, plan_csv, validate_csv

    src = tmp_path / "three.csv"
    src.write_text("id,lower,upper,size\na,0,2,4\nb,1,3,4\nc,2,4,4\n")
    with pytest.raises(CapacityError) as no_fit:
        plan_csv(src, capacity=4)
    assert no_fit.value.exit_status == 1
    with pytest.raises(InputError) as no_offsets:
        validate_csv(src)
    assert no_offsets.value.exit_status == 2
    assert str(no_offsets.value) == f"{src}: no offset column to validate"
    with pytest.raises(InputError) as unwritable:
        plan_csv(src, output=tmp_path / "missing_dir" / "out.csv")
    assert unwritable.value.exit_status == 2 and "cannot write" in str(unwritable.value)
