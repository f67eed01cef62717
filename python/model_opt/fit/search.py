"""The largest size that fits: doubling from the smallest size, then bisection (as MODel's
``max_batch_size.py`` searches on a real GPU, here on estimates). Assumes that a size fits whenever a
larger one does, which holds for memory that grows with the size."""

from __future__ import annotations

from collections.abc import Callable


def largest_fitting(fits: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The largest size in ``lo..=hi`` for which `fits` holds, or None when `lo` does not fit.

    `fits` is called at most about ``2 * log2(hi / lo)`` times: the doubling sizes ``lo, 2 lo, 4 lo ...``,
    then a bisection between the last that fit and the first that did not."""
    if lo < 1 or hi < lo:
        raise ValueError(f"the sizes {lo}..{hi} are not a range of positive sizes")
    if not fits(lo):
        return None
    good = lo
    while good < hi:
        bad = min(2 * good, hi)
        if not fits(bad):
            break
        good = bad
    else:
        return good
    # good fits, bad does not.
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good
