"""Spilling (``optimize(..., allow=("reorder", "spill"))``): activations live at the peak are copied to
host memory and fetched back before their late uses. The spilled step trains bit for bit as eager
(dropout included, alone and together with recomputation), its simulated peak is what it allocates,
the copies are the ones the plan names (the CPU stand-in counts them), a choice replays on another
capture, and the runtime serves the spilled step with a smaller arena.

CPU has no second memory: the stand-in keeps the host copies in memory numpy allocates, outside the
arena (`model_opt.remat.host`). The CUDA path (pinned memory, a copy stream, events) runs only on a
GPU (`scripts/gpu_check.sh`)."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import pytest
import torch
from test_faithful import run_faithful
from test_remat import REMAT, GeluMlp, _batches, _plain, _served, sgd_step
from torch import fx, nn

from model_opt import MemoryBudgetError, optimize
from model_opt.errors import ArgumentError
from model_opt.remat import host
from model_opt.remat.host import FETCH, SPILL
from model_opt.reorder import measure_peak_bytes

torch.set_num_threads(1)

#: Spilling only, with a bandwidth at which every spill is cheap (the search ends with "no candidate").
SPILLING: dict[str, Any] = {**REMAT, "allow": ("reorder", "spill"), "host_bandwidth": 1e15}


def _adam(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(m.parameters(), lr=1e-3)


def _moves(graph: fx.Graph) -> tuple[int, int]:
    nodes = list(graph.nodes)
    return sum(n.target is SPILL for n in nodes), sum(n.target is FETCH for n in nodes)


def test_a_spilled_step_trains_bit_identically_and_the_copies_are_counted():
    host.reset_counts()
    batches = _batches()
    report = run_faithful(lambda: GeluMlp(dropout=0.3), _adam, batches=batches, **SPILLING)
    spill = report["remat"]
    assert spill["spilled"] and not spill["recomputed"], spill
    assert report["peak_bytes"] < spill["start_peak_bytes"], spill
    assert spill["extra_compute"] == 0 < spill["extra_cost"]
    # Every step of run_faithful ran the same spills: each value out once and back once.
    moved = host.counts()
    n = len(spill["spilled"]) * len(batches)
    assert (moved.spills, moved.fetches) == (n, n), moved
    assert moved.spilled_bytes == moved.fetched_bytes == spill["spilled_bytes"] * len(batches)


def test_spills_and_recomputations_together_with_dropout_train_bit_identically():
    # A bandwidth at which some spills cost less than some recomputations: the search takes both.
    options = {**REMAT, "allow": ("reorder", "remat", "spill"), "host_bandwidth": 1e13}
    report = run_faithful(lambda: GeluMlp(dropout=0.3), _adam, batches=_batches(), **options)
    both = report["remat"]
    assert both["spilled"] and both["recomputed"], both
    only_remat = run_faithful(lambda: GeluMlp(dropout=0.3), _adam, batches=_batches(n=1), **REMAT)
    assert report["peak_bytes"] < only_remat["peak_bytes"], (report["peak_bytes"], only_remat["peak_bytes"])


def test_the_simulated_peak_is_what_the_spilled_step_allocates():
    torch.manual_seed(0)
    model = GeluMlp()
    batch = _batches(n=1)[0]
    step = optimize(_plain(model), *batch, **SPILLING)
    step(*batch)  # the optimizer's state exists (outside the peak, as in the simulation)
    assert step.report["remat"]["spilled"]
    spills, fetches = _moves(step.graph_module.graph)
    assert spills == fetches == len(step.report["remat"]["spilled"])
    assert measure_peak_bytes(step.graph_module, step.captured, *batch) == step.report["peak_bytes"]


def test_a_spill_choice_replays_on_another_batch_size_bit_identically():
    from model_opt.capture.step import StepState, capture_step
    from model_opt.remat import rematerialize, replay

    torch.manual_seed(0)
    model = GeluMlp(dropout=0.1)
    twin = deepcopy(model)

    step, opt = sgd_step(model)
    eager, _ = sgd_step(twin)
    state = StepState.of([model], [opt])
    choice = capture_step(step, _batches(1, 1024)[0], {}, state)
    chosen = rematerialize(
        choice.graph_module, max_recompute=None, recompute=False, spill=True, host_bandwidth=1e15
    )
    assert chosen.spilled and not chosen.recomputed
    assert all(s.kind == "spill" for s in chosen.steps)
    small = _batches(2, 256)
    captured = capture_step(step, small[0], {}, state)
    gm = replay(captured.graph_module, chosen.steps)
    assert _moves(gm.graph) == (len(chosen.spilled), len(chosen.spilled))
    for x, y in small:
        torch.manual_seed(5)
        got = captured.run(gm, x, y)
        torch.manual_seed(5)
        assert torch.equal(got, eager(x, y))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_values_that_are_views_or_outputs_are_never_spilled():
    from model_opt.remat.rewrite import spillable

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x.relu()
        return y[:, 1:], y.t().sum()

    gm = fx.experimental.proxy_tensor.make_fx(fn, tracing_mode="fake")(torch.randn(4, 4))
    by_target = {str(n.target): n for n in gm.graph.nodes}
    assert spillable(by_target["aten.relu.default"])
    assert not spillable(by_target["aten.slice.Tensor"])  # a view: not the whole storage
    assert not spillable(by_target["aten.t.default"])
    assert not any(spillable(n) for n in gm.graph.nodes if n.op in ("placeholder", "output"))


def test_a_budget_that_spilling_cannot_meet_names_spill_in_the_message():
    step = optimize(_plain(GeluMlp()), *_batches()[0], **SPILLING)
    least = step.report["peak_bytes"]
    with pytest.raises(MemoryBudgetError, match=r"no faithful recomputation or spill frees more of them"):
        optimize(_plain(GeluMlp()), *_batches()[0], **{**SPILLING, "memory_budget": least // 2})


def test_a_bad_host_bandwidth_is_refused_before_capturing():
    for bad in (0, -1.0, float("inf"), "25GB/s", True):
        with pytest.raises(ArgumentError, match="host_bandwidth must be a positive number"):
            optimize(_plain(GeluMlp()), *_batches(n=1)[0], allow=("reorder", "spill"), host_bandwidth=bad)


def test_a_spilled_step_runs_on_the_planned_arena_with_a_smaller_arena() -> None:
    pytest.importorskip("torchvision")
    searched = {"method": "heuristic", "time_limit": 60.0}
    order = _served(searched)
    spilled = _served(
        {**searched, "allow": ["reorder", "spill"], "max_recompute": None, "host_bandwidth": 1e15}
    )
    assert spilled["spilled"] > 0 and spilled["recomputed"] == 0
    assert spilled["losses"] == order["losses"] and spilled["params"] == order["params"]
    assert order["divergences"] == 0 and spilled["divergences"] == 0
    # Four steps ran (one as is, one profiled, two planned): each moved every spilled value out and
    # back once.
    assert spilled["host"]["spills"] == spilled["host"]["fetches"] == 4 * spilled["spilled"], spilled["host"]
    simulated_saving = order["simulated_peak"] - spilled["simulated_peak"]
    assert simulated_saving > 0
    # As for recomputation (test_remat): the arena also holds the convolutions' own buffers, which
    # spilling does not change; what it saves is the simulated saving within 20%.
    arena_saving = order["arena"] - spilled["arena"]
    assert 0.8 * simulated_saving <= arena_saving <= 1.2 * simulated_saving, (order, spilled)
