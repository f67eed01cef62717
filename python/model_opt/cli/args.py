"""Argument types shared by the `model-opt` subcommands: each parses one value or raises
`argparse.ArgumentTypeError` with a one-line reason (argparse then exits 2)."""

from __future__ import annotations

import argparse
import math

#: The largest number of bytes accepted (the planner's limit on sizes and their sum: 2^53).
MAX_BYTES = 2**53


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None


def nonnegative_bytes(text: str) -> int:
    """A number of bytes, 0 to `MAX_BYTES`."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    if value > MAX_BYTES:
        raise argparse.ArgumentTypeError(f"{value} is too large (at most {MAX_BYTES} = 2^53)")
    return value


def positive_int(text: str) -> int:
    """An integer, 1 or more."""
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def nonnegative_float(text: str, unit: str = "") -> float:
    """A finite number, 0 or more (NaN and infinity refused)."""
    what = f"a number of {unit}" if unit else "a number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(
            f"{text} must be a non-negative number" + (f" of {unit}" if unit else "")
        )
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number" + (f" of {unit}" if unit else ""))
    return value


def seconds(text: str) -> float:
    """A non-negative number of seconds."""
    return nonnegative_float(text, "seconds")


def size_range(text: str) -> tuple[int, int]:
    """``LO:HI``, two positive integers with LO <= HI."""
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"'{text}' is not a range LO:HI such as 1:4096")
    lo, hi = (positive_int(p) for p in parts)
    if lo > hi:
        raise argparse.ArgumentTypeError(f"'{text}': {lo} is above {hi}")
    return lo, hi
