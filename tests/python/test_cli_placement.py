"""`model-opt plan`, `validate` and `bench-placement`: results, summary lines, and every bad-input case."""

from __future__ import annotations

import csv
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


def test_python_api_matches_the_cli(minimalloc: Path) -> None:
    report = model_opt.plan_csv(minimalloc / "examples" / "input.12.csv", method="greedy")
    assert report["peak"] == report["lower_bound"] == 12
    assert report["status"] == "optimal"
    assert report["ratio"] == pytest.approx(1.0)


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


BAD_INPUTS = [
    ("", "empty file"),
    ("id,lower,size\na,0,1\n", "missing column(s) upper"),
    ("a,0,1,2\n", "header"),
    ("id,lower,upper,size\na,0,1\n", ":2: expected 4 columns"),
    ("id,lower,upper,size\na,0,1,big\n", ":2: size 'big' is not an integer"),
    ("id,lower,upper,size\na,0,1.5,2\n", ":2: upper '1.5' is not an integer"),
    ("id,lower,upper,size\na,0,1,-3\n", ":2: size -3 is negative"),
    ("id,lower,upper,size\na,-1,1,3\n", ":2: lower -1 is negative"),
    ("id,lower,upper,size\na,5,5,3\n", ":2: buffer 'a': upper 5 must be greater than lower 5"),
    ("id,lower,upper,size\na,0,1,3\nb,0,1,3\na,1,2,3\n", ":4: duplicate id 'a' (first on line 2)"),
]


@pytest.mark.parametrize("text,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_gets_one_clear_message_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    r = run_cli("plan", path)
    assert r.returncode == 2, r
    assert message in r.stderr
    assert str(path) in r.stderr, "the message names the file"
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(model_opt.InputError, match="is|missing|empty|expected|duplicate|must|header"):
        model_opt.plan_csv(path)


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
