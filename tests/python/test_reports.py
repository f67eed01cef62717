"""One vocabulary: the typed dicts of `model_opt.reports` match the reports Rust defines
(`_native.REPORT_KEYS`), and the dicts the functions return hold exactly those keys with values of
the declared types."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pytest

import model_opt
from model_opt import _native, reports

THREE = "id,lower,upper,size\na,0,2,4\nb,1,3,4\nc,2,4,4\n"


def _conforms(value: object, hint: Any) -> bool:
    """Whether `value` is of the type `hint` (the few forms the reports use)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_conforms(v, item) for v in value)
    if hint is type(None):
        return value is None
    if typing.is_typeddict(hint):
        return isinstance(value, dict) and _check(value, hint) is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, float)
    return isinstance(value, hint)


def _check(report: dict[str, object], typed: type) -> str | None:
    """None when `report` has exactly the keys of `typed`, in order, each of its declared type."""
    hints = typing.get_type_hints(typed)
    if list(report) != list(hints):
        return f"keys {list(report)} != {list(hints)}"
    for key, hint in hints.items():
        if not _conforms(report[key], hint):
            return f"{key}={report[key]!r} is not {hint}"
    return None


def test_every_typed_report_has_the_keys_rust_defines() -> None:
    assert set(reports.REPORTS) == set(_native.REPORT_KEYS)
    for name, typed in reports.REPORTS.items():
        assert typed.__name__ == name
        assert list(typing.get_type_hints(typed)) == _native.REPORT_KEYS[name], name


def test_byte_counts_end_in_bytes() -> None:
    for name, keys in _native.REPORT_KEYS.items():
        for key in keys:
            if any(word in key for word in ("peak", "bound", "reserved")):
                assert key.endswith("_bytes"), (name, key)


def test_placement_reports_are_what_they_declare(tmp_path: Path) -> None:
    src = tmp_path / "three.csv"
    src.write_text(THREE)
    out = tmp_path / "three.solution.csv"
    planned = model_opt.plan_csv(src, output=out, method="auto", time_limit=5.0)
    assert _check(planned, reports.PlacementSummary) is None
    assert planned["status"] == "optimal" and planned["peak_bytes"] == planned["proven_bound_bytes"] == 8
    validated = model_opt.validate_csv(out)
    assert _check(validated, reports.ValidationSummary) is None
    assert validated["peak_bytes"] == planned["peak_bytes"]


def test_one_status_set() -> None:
    # A stop on time is spelled the same by placement (the CLI test of challenging D under 0.5 s)
    # and by the scheduler (test_reorder); both come from one Rust enum.
    assert reports.STATUSES == typing.get_args(reports.Status)
    assert "time_limit" in reports.STATUSES and "timeout" not in reports.STATUSES


def test_the_schedule_and_caching_model_reports_are_what_they_declare(tmp_path: Path) -> None:
    # a -> b -> c, with one 8-byte tensor per edge.
    result = _native.schedule_graph(3, [(8, 0, [1], False), (8, 1, [2], False)], [], method="greedy")
    assert _check(result, reports.ScheduleResult) is None
    assert result["order"] == [0, 1, 2] and result["status"] in reports.STATUSES
    src = tmp_path / "three.csv"
    src.write_text(THREE)
    peak = _native.caching_allocator_peak(src)
    assert _check(peak, reports.CachingAllocatorPeak) is None
    assert peak["peak_requested_bytes"] == 8


def test_runtime_reports_are_what_they_declare() -> None:
    stats = model_opt.stats()
    error = _check(stats, reports.RuntimeStats)
    assert error is None, error
    assert _check(stats["last_step"], reports.StepStats) is None


@pytest.mark.parametrize("name", sorted(reports.REPORTS))
def test_each_report_is_documented_with_every_key(name: str) -> None:
    # The README's table of reports names each key, so that the docs match the code.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"README's table of reports has no row for {name}"
    documented = rows[0].rsplit("|", 2)[1]
    assert [k.strip().strip("`") for k in documented.split(",")] == _native.REPORT_KEYS[name]
