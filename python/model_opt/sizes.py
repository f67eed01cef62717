"""Sizes of memory as people write them: ``24GiB``, ``80GB``, ``1.5TiB``, or bytes."""

from __future__ import annotations

import re

from model_opt.errors import ArgumentError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_memory(text: str | int) -> int:
    """Bytes from ``"24GiB"``, ``"80GB"``, ``"1.5TiB"`` or a plain number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ArgumentError(f"memory {text!r} is not a size such as 24GiB, 80GB or 1073741824")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ArgumentError(f"memory {text!r} must be more than 0 bytes")
    return value
