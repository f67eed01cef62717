"""A training step as a function of its size (batch size or sequence length), captured four times.

A step's operators and the tensors between them do not depend on the batch size, and each tensor's
bytes are a polynomial of it of degree at most 2 (linear in the batch; attention scores are quadratic
in the sequence length). So the step is captured at three sizes, each tensor's bytes fitted through
them exactly, and the fit checked against a fourth capture: where the four agree, the step at any size
is known without capturing it (or holding its memory). Where they do not (an operator chosen by shape,
a size-1 special case), every size is captured for real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from model_opt.capture.dataflow import DataflowGraph

#: The sizes fitted through, and the size the fit is checked at.
FIT_SIZES = (2, 4, 6)
CHECK_SIZE = 8

#: ``(num_ops, tensors, edges, resident)``, the arguments of `schedule_graph` / `simulate_order`.
NativeGraph = tuple[int, list[tuple[int, int, list[int], bool]], list[tuple[int, int]], int]


def structure_of(df: DataflowGraph) -> tuple[object, ...]:
    """Everything of a dataflow graph but its sizes."""
    num_ops, tensors, edges, _ = df.native_args()
    return (num_ops, [(p, tuple(c), out) for _, p, c, out in tensors], sorted(edges))


def _sizes(df: DataflowGraph) -> list[int]:
    """Each tensor's bytes, then the resident bytes (the inputs among them grow with the size)."""
    return [size for size, *_ in df.tensors] + [df.resident_bytes]


def _interpolate(xs: tuple[int, ...], ys: tuple[int, ...], x: int) -> Fraction:
    """The value at `x` of the polynomial of degree < len(xs) through the points (Lagrange)."""
    total = Fraction(0)
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        term = Fraction(yi)
        for j, xj in enumerate(xs):
            if j != i:
                term *= Fraction(x - xj, xi - xj)
        total += term
    return total


@dataclass
class StepFamily:
    """The step at every size: `at(size)` gives its graph. ``exact`` tells how: True when the fit through
    three captures matched a fourth (then only sizes below the fitted ones are captured again), False
    when every size is captured."""

    capture: Callable[[int], DataflowGraph]
    exact: bool
    captures: int
    _structure: tuple[object, ...] | None
    _points: list[tuple[int, ...]]
    _cache: dict[int, NativeGraph]

    @classmethod
    def of(cls, capture: Callable[[int], DataflowGraph]) -> StepFamily:
        """Captures the step at `FIT_SIZES` and `CHECK_SIZE` and decides whether the fit holds."""
        graphs = {s: capture(s) for s in (*FIT_SIZES, CHECK_SIZE)}
        cache = {s: g.native_args() for s, g in graphs.items()}
        structures = {s: structure_of(g) for s, g in graphs.items()}
        same = all(structures[s] == structures[FIT_SIZES[0]] for s in structures)
        family = cls(capture, False, len(graphs), structures[FIT_SIZES[0]] if same else None, [], cache)
        if same:
            columns = list(zip(*(_sizes(graphs[s]) for s in FIT_SIZES)))
            family._points = columns
            family.exact = family._fitted(CHECK_SIZE) == _sizes(graphs[CHECK_SIZE])
        return family

    @property
    def structure(self) -> tuple[object, ...] | None:
        """The structure (`structure_of`) of every capture it fitted; None when they differ."""
        return self._structure

    def _fitted(self, size: int) -> list[int] | None:
        """Every tensor's bytes and the resident bytes at `size` from the fit; None where one is not a
        whole non-negative number (the fit does not describe the step there)."""
        out = []
        for ys in self._points:
            v = _interpolate(FIT_SIZES, ys, size)
            if v.denominator != 1 or v < 0:
                return None
            out.append(int(v))
        return out

    def at(self, size: int) -> NativeGraph:
        """The step's graph at `size` (fitted, or captured and kept)."""
        if size in self._cache:
            return self._cache[size]
        if self.exact and size >= FIT_SIZES[0]:
            fitted = self._fitted(size)
            if fitted is not None:
                num_ops, tensors, edges, _ = self._cache[FIT_SIZES[0]]
                sized = [(b, p, c, out) for b, (_, p, c, out) in zip(fitted, tensors)]
                self._cache[size] = (num_ops, sized, edges, fitted[-1])
                return self._cache[size]
        graph = self.capture(size).native_args()
        self.captures += 1
        self._cache[size] = graph
        return graph
