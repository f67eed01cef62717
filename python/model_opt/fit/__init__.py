"""How much more fits: the largest batch size (or sequence length) whose training step fits a memory
budget under plain PyTorch, under the model_opt arena, and under the arena with the reordered step; with
``remat=True``, also with recomputation (`model_opt.remat`) before the reordering.

The step is captured with fake tensors, so nothing of the step's size is allocated: a GPU's budget is
answered on a machine without that memory. `family` makes the step a function of its size from four
small captures, `estimate` gives the three memory figures of one size, `search` finds the largest size
under the budget (doubling, then bisection).

    report = model_opt.fit(train_step, lambda b: (torch.randn(b, 3, 224, 224), torch.randint(0, 10, (b,))),
                           memory="16GiB")
    report["largest"]   # the largest batch each way: {'pytorch': ..., 'arena': ..., 'reordered': ...}

`fit_model` does the same for a model of the benchmark registry (``model-opt fit --model NAME``);
`Fitting` (`prepare_model` for the registry) answers several budgets from one set of captures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from model_opt.capture.dataflow import DataflowGraph, build_dataflow, storage_bytes, storage_sizes
from model_opt.capture.discover import state_of
from model_opt.capture.step import CapturedStep, StepState, capture_step
from model_opt.errors import ArgumentError
from model_opt.fit import optimizer
from model_opt.fit.estimate import Residents, estimate
from model_opt.fit.family import StepFamily
from model_opt.fit.search import largest_fitting
from model_opt.reports import FIT_WAYS, FitEstimate, FitReport
from model_opt.sizes import parse_memory

#: The ways a step's memory is estimated (see `estimate`); ``remat`` only with ``remat=True``.
WAYS = FIT_WAYS

#: The recomputation allowance of the ``remat`` way: recomputed operations, as a fraction of the step's
#: (`model_opt.optimize`'s default).
REMAT_MAX_RECOMPUTE = 0.2


class Fitting:
    """A training step prepared for `fit`: captured once (`StepFamily`), every size's estimate kept, so
    that several budgets are answered from the same captures and estimates (`report`).

    Args:
        step: the training-step function, as `model_opt.optimize` takes it (forward, backward,
            ``optimizer.step()``...).
        make_args: ``make_args(size)`` returns the positional arguments of one call at that size
            (e.g. a batch of ``size`` examples). Only their shapes matter: the step is traced with fake
            tensors.
        sizes: the smallest and largest size tried.
        variable: what the size is, for the report (``"batch_size"`` or ``"seq_len"``).
        modules, optimizers: what the step uses; found from the function by default, as `optimize` does.
        time_limit: seconds for the scheduler and for each placement, per size tried.
        method: the scheduler's method (`model_opt.SCHEDULE_METHODS`).
        progress: called with each size's estimate as it is computed.
        remat: also estimate the step with recomputation (the ``remat`` way): what
            ``model_opt.optimize(allow=("reorder", "remat"))`` recomputes within `REMAT_MAX_RECOMPUTE`
            of the step's operations, chosen once on the capture at the largest size tried, where the
            activations weigh the most against the weights and the optimizer's state (the search of
            `model_opt.remat`, no budget: as low as the allowance goes) and made again on every capture
            (`model_opt.remat.replay`), then reordered and planned like the ``reordered`` way. A
            capture the choice does not apply to (another structure at that size, such as a size-1
            special case) gets a choice of its own, as `optimize` would make it
            (``remat["chosen_again_at"]`` lists those sizes).

    Raises:
        ArgumentError: a bad range. CaptureError: the step cannot be captured.
    """

    def __init__(
        self,
        step: Callable[..., Any],
        make_args: Callable[[int], tuple[Any, ...]],
        *,
        sizes: tuple[int, int] = (1, 4096),
        variable: str = "batch_size",
        modules: Sequence[nn.Module] | None = None,
        optimizers: Sequence[torch.optim.Optimizer] | None = None,
        time_limit: float = 1.0,
        method: str = "auto",
        progress: Callable[[FitEstimate], None] | None = None,
        remat: bool = False,
    ) -> None:
        lo, hi = sizes
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ArgumentError(f"sizes {sizes} must be two integers with 1 <= smallest <= largest")
        self.modules, self.optimizers = state_of(step, modules, optimizers)
        self.sizes, self.variable = (lo, hi), variable
        self.time_limit, self.method, self.progress = time_limit, method, progress
        self.model: str | None = None
        self.dtype: str | None = None
        self.amp: bool | None = None
        started = time.perf_counter()
        probes = [optimizer.probe(o) for o in self.optimizers]
        per_byte = max((temporaries for _, temporaries in probes), default=0.0)

        state = tuple(optimizer.state_sizes(self.optimizers, probes))
        state_per_byte = optimizer.state_per_byte(self.optimizers, probes, state)
        state_at: list[tuple[int, int]] = []

        def captured(size: int) -> CapturedStep:
            return capture_step(step, make_args(size), {}, StepState.of(self.modules, self.optimizers))

        def with_state(df: DataflowGraph, made_at: list[tuple[int, int]]) -> DataflowGraph:
            """`df` with the optimizer's step temporaries; `made_at` filled on the first call with where
            its state is made (the operators are the same at every size a family fits)."""
            if not made_at:
                made_at.extend(optimizer.state_made_by(df, state_per_byte))
            return optimizer.add_step_temporaries(df, per_byte)

        def capture(size: int) -> DataflowGraph:
            return with_state(captured(size).dataflow, state_at)

        self.family = StepFamily.of(capture)
        self.remat: dict[str, Any] | None = None
        self.remat_family: StepFamily | None = None
        remat_state_at: list[tuple[int, int]] = []
        if remat:
            from model_opt.fit.family import CHECK_SIZE, structure_of
            from model_opt.remat import RematReplayError, RematResult, rematerialize, replay

            # The largest size whose capture has the structure the family fitted (some operators are
            # chosen by shape: a choice made on another structure names nodes the others lack).
            at = hi
            choice = captured(at)
            fitted = self.family.structure
            while (
                at > CHECK_SIZE
                and fitted is not None
                and structure_of(with_state(choice.dataflow, state_at)) != fitted
            ):
                at = max(CHECK_SIZE, at // 2)
                choice = captured(at)

            def choose(gm: fx.GraphModule) -> RematResult:
                return rematerialize(gm, max_recompute=REMAT_MAX_RECOMPUTE, time_limit=10 * time_limit)

            chosen = choose(choice.graph_module)
            self.remat = {
                "recomputed": chosen.recomputed,
                "chained": chosen.chained,
                "extra_compute": chosen.extra_compute,
                "chosen_at": at,
                "stopped": chosen.stopped,
                "chosen_again_at": [],
            }
            chosen_again: list[int] = self.remat["chosen_again_at"]

            def capture_remat(size: int) -> DataflowGraph:
                step_at = captured(size)
                try:
                    replayed = replay(step_at.graph_module, chosen.steps)
                except RematReplayError:
                    # Another structure at this size (a size-1 special case, an operator chosen by
                    # shape): the choice names nodes it lacks, so it is made afresh on this capture,
                    # as `optimize` would make it.
                    replayed = choose(step_at.graph_module).graph_module
                    chosen_again.append(size)
                return with_state(build_dataflow(replayed), remat_state_at)

            self.remat_family = StepFamily.of(capture_remat)
        params = [p for m in self.modules for p in m.parameters()]
        buffers = [b for m in self.modules for b in m.buffers()]
        self.residents = Residents(
            tuple(n for n in storage_sizes([*params, *buffers]) if n > 0),
            state,
            tuple(state_at),
        )
        self.remat_residents = Residents(self.residents.tensors, state, tuple(remat_state_at))
        self.state_bytes = sum(self.residents.optimizer_state)
        self.weights_bytes = storage_bytes(params)
        largest = max((p.numel() * p.element_size() for p in params if p.requires_grad), default=0)
        self.step_temporaries_bytes = int(per_byte * largest)
        self.estimates: dict[int, FitEstimate] = {}
        self.seconds = time.perf_counter() - started

    @property
    def ways(self) -> list[str]:
        """The ways this fitting estimates (`WAYS`; ``remat`` only when asked for)."""
        return [w for w in WAYS if w != "remat" or self.remat_family is not None]

    def at(self, size: int) -> FitEstimate:
        """The step's estimate at `size` (computed once)."""
        if size not in self.estimates:
            started = time.perf_counter()
            graph = self.family.at(size)
            e = estimate(graph, size, self.residents, self.time_limit, self.method)
            if self.remat_family is not None:
                graph = self.remat_family.at(size)
                r = estimate(graph, size, self.remat_residents, self.time_limit, self.method)
                e["remat_bytes"] = min(r["arena_bytes"], r["reordered_bytes"])
            self.estimates[size] = e
            self.seconds += time.perf_counter() - started
            if self.progress is not None:
                self.progress(self.estimates[size])
        return self.estimates[size]

    def report(self, memory: int | str) -> FitReport:
        """The largest size under `memory` each way, and what it needs (see `fit`)."""
        budget = parse_memory(memory)
        lo, hi = self.sizes

        def fits(size: int, way: str) -> bool:
            needs = self.at(size)[f"{way}_bytes"]  # type: ignore[literal-required]
            # None: a way dropped part-way (remat, see `_drop_remat`) fits nothing more.
            return needs is not None and needs <= budget

        largest = {way: largest_fitting(lambda s, w=way: fits(s, w), lo, hi) for way in self.ways}
        pytorch = largest["pytorch"]

        def ratio(way: str) -> float | None:
            n = largest[way]
            return None if n is None or not pytorch else n / pytorch

        return {
            "model": self.model,
            "dtype": self.dtype,
            "amp": self.amp,
            "variable": self.variable,
            "memory_bytes": budget,
            "sizes": [lo, hi],
            "largest": largest,
            "ratio_arena": ratio("arena"),
            "ratio_reordered": ratio("reordered"),
            "ratio_remat": ratio("remat") if "remat" in largest else None,
            "remat": self.remat,
            "weights_bytes": self.weights_bytes,
            "optimizer_state_bytes": self.state_bytes,
            "optimizer_step_temporaries_bytes": self.step_temporaries_bytes,
            # Hugging Face accelerate's estimate-memory for training with Adam: weights, gradients and
            # the two Adam states, 4x the weights; it leaves activations out.
            "accelerate_adam_bytes": 4 * self.weights_bytes,
            "at_largest": {w: None if n is None else self.estimates[n] for w, n in largest.items()},
            "evaluations": [self.estimates[s] for s in sorted(self.estimates)],
            "fitted": self.family.exact,
            "captures": self.family.captures + (self.remat_family.captures + 1 if self.remat_family else 0),
            "seconds": self.seconds,
        }


def remat_summary(remat: dict[str, Any]) -> str:
    """One line on a report's ``remat`` (`FitReport`): how many operators are recomputed, for how much
    more compute, chosen on which capture, and the sizes it was chosen afresh at."""
    again = remat.get("chosen_again_at") or []
    return (
        f"{len(remat['recomputed']) + len(remat['chained'])} operators recomputed "
        f"(+{remat['extra_compute']:.1%} of the step's operations), chosen at size {remat['chosen_at']} "
        f"({remat['stopped']})"
        + (f"; chosen afresh at size {', '.join(map(str, again))} (another structure)" if again else "")
    )


def fit(
    step: Callable[..., Any],
    make_args: Callable[[int], tuple[Any, ...]],
    *,
    memory: int | str,
    **options: Any,
) -> FitReport:
    """The largest size whose training step fits `memory` (bytes, or a size such as ``"24GiB"``), three
    ways (`WAYS`; four with ``remat=True``). `step` and `make_args`, and the keyword `options` (``sizes``,
    ``variable``, ``modules``, ``optimizers``, ``time_limit``, ``method``, ``progress``, ``remat``), are
    those of `Fitting`.

    Returns:
        A `model_opt.reports.FitReport`.

    Raises:
        ArgumentError: a bad budget or range. CaptureError: the step cannot be captured.
    """
    parse_memory(memory)  # a bad budget fails before the captures
    return Fitting(step, make_args, **options).report(memory)


def fit_model(name: str, *, memory: int | str, **options: Any) -> FitReport:
    """`fit` for a model of the benchmark registry; `options` are those of `prepare_model`."""
    parse_memory(memory)
    return prepare_model(name, **options).report(memory)


def prepare_model(
    name: str,
    *,
    sizes: tuple[int, int] = (1, 4096),
    optimizer: str = "adamw",
    dtype: str = "fp32",
    amp: bool = False,
    variable: str = "batch_size",
    batch_size: int = 1,
    seq_len: int | None = None,
    time_limit: float = 1.0,
    method: str = "auto",
    progress: Callable[[FitEstimate], None] | None = None,
    remat: bool = False,
) -> Fitting:
    """A `Fitting` of a model of the benchmark registry (`model_opt.apps.models.ALL_MODELS`, among
    them ``gpt2_medium`` and the 1.1B-parameter ``llama_1b``): its training step with `optimizer`
    (``sgd``, ``adam`` or ``adamw``). The model is built with fake tensors (random initialisation, no
    memory of its size), its optimizer's state created as its first step would (`fit.registry`).

    `dtype` is the parameters' type (``fp32``, ``bf16``, ``fp16``), which the floating-point inputs
    follow; `amp` runs the forward pass and the loss under autocast to bfloat16.

    ``variable="batch_size"`` searches the batch size (token models at `seq_len` tokens, 128 by
    default); ``variable="seq_len"`` searches the sequence length of a token model at `batch_size`
    (`sizes` is clipped to the model's longest sequence)."""
    from model_opt.apps import models
    from model_opt.capture.step import model_step
    from model_opt.fit.registry import AMP_DTYPE, build_fake, cast_floats, parse_dtype

    models.check_name(name)
    param_dtype = parse_dtype(dtype)
    if variable == "seq_len":
        if name not in models.MAX_SEQ_LEN:
            token_models = sorted(models.MAX_SEQ_LEN)
            raise ArgumentError(f"{name} has no sequence length to search; token models do: {token_models}")
        sizes = (min(sizes[0], models.MAX_SEQ_LEN[name]), min(sizes[1], models.MAX_SEQ_LEN[name]))

        def make_args(n: int) -> tuple[Any, ...]:
            return cast_floats(models.batch_of(name, batch_size, n), param_dtype)
    elif variable == "batch_size":
        models.batch_of(name, 1, seq_len)  # a bad sequence length fails here, before the model is built

        def make_args(n: int) -> tuple[Any, ...]:
            return cast_floats(models.batch_of(name, n, seq_len), param_dtype)
    else:
        raise ArgumentError(f"variable must be 'batch_size' or 'seq_len', not {variable!r}")
    model, opt = build_fake(name, optimizer, param_dtype)
    loss_fn = models.loss_for(name)
    step = model_step(model, opt, loss_fn, autocast=AMP_DTYPE if amp else None)

    fitting = Fitting(
        step,
        make_args,
        sizes=sizes,
        modules=[model, *([loss_fn] if isinstance(loss_fn, nn.Module) else [])],
        optimizers=[opt],
        variable=variable,
        time_limit=time_limit,
        method=method,
        progress=progress,
        remat=remat,
    )
    fitting.model, fitting.dtype, fitting.amp = name, dtype, amp
    return fitting
