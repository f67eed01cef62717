"""Rematerialization (`model_opt.remat`, ``optimize(..., allow=("reorder", "remat"))``): the rewritten
step trains bit for bit as eager, its simulated peak is lower than the order alone reaches, a budget is
met or refused with the least peak found, and operators that cannot be recomputed faithfully are never
chosen."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_faithful import _hf_batches, _hf_model, _hf_step, _plain_step, run_faithful
from torch import fx, nn

from model_opt import MemoryBudgetError, optimize
from model_opt.errors import ArgumentError
from model_opt.remat.recompute import recompute_call
from model_opt.remat.rewrite import META
from model_opt.reorder import measure_peak_bytes

torch.set_num_threads(1)

#: Recomputation without an allowance, ordered by the heuristics (no ILP), with time to converge on a
#: loaded machine: the searches end with "no candidate", the same at every run.
REMAT: dict[str, Any] = {
    "allow": ("reorder", "remat"),
    "max_recompute": None,
    "method": "heuristic",
    "time_limit": 60.0,
}
ORDER: dict[str, Any] = {"method": "heuristic", "time_limit": 60.0}


class GeluMlp(nn.Module):
    """GELU saves its input for the backward and the next layer saves its output: recomputing the
    output from the input frees a whole activation per layer."""

    def __init__(self, width: int = 128, depth: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _batches(n: int = 4, batch: int = 1024, width: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    return [
        (torch.randn(batch, width, generator=g), torch.randint(0, 4, (batch,), generator=g)) for _ in range(n)
    ]


def _copies(step: Any) -> list[fx.Node]:
    return [n for n in step.graph_module.graph.nodes if META in n.meta]


def _assert_lowered(report: dict[str, Any]) -> None:
    remat = report["remat"]
    assert remat is not None and remat["recomputed"], report
    assert report["peak_bytes"] < remat["start_peak_bytes"], remat
    assert 0 < remat["extra_compute"] < 1


def test_an_mlp_recomputes_activations_bit_identically_with_a_lower_peak():
    report = run_faithful(
        GeluMlp, lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), batches=_batches(), **REMAT
    )
    _assert_lowered(report)
    # Segments: a linear layer's output recomputed from its input, and the GELU from that copy.
    assert report["remat"]["chained"], report["remat"]


def test_resnet_recomputes_batch_norm_and_in_place_relu_bit_identically():
    torchvision = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(3)
    ]
    report = run_faithful(
        lambda: torchvision.models.resnet18(num_classes=10),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
        batches=batches,
        **REMAT,
    )
    _assert_lowered(report)
    # Batch norm's running statistics are updated once per step (compared bit for bit above, with
    # num_batches_tracked): the recomputed batch norms did not update them again.
    assert any("batch_norm" in name for name in report["remat"]["recomputed"]), report["remat"]


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_hugging_face_models_recompute_bit_identically(kind: str):
    report = run_faithful(
        lambda: _hf_model(kind),
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
        _hf_step,
        batches=_hf_batches(n=3, length=16),
        **REMAT,
    )
    _assert_lowered(report)  # layer norms, GELUs, products; GPT-2's dropouts (p=0.1) draw as eager


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_the_simulated_peak_is_what_the_rewritten_step_allocates(kind: str):
    torch.manual_seed(0)
    model = _hf_model(kind)
    batch = _hf_batches(n=1, length=16)[0]
    step = optimize(_hf_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3)), *batch, **REMAT)
    step(*batch)  # the optimizer's state exists (outside the peak, as in the simulation)
    assert step.report["remat"]["recomputed"]
    assert measure_peak_bytes(step.graph_module, step.captured, *batch) == step.report["peak_bytes"]


def test_dropout_masks_are_redrawn_from_the_saved_generator_state_as_eager_drew_them():
    def make() -> nn.Module:
        return GeluMlp(dropout=0.3)

    torch.manual_seed(0)
    step = optimize(_plain(make()), *_batches()[0], **REMAT)
    nodes = list(step.graph_module.graph.nodes)
    fills = [i for i, n in enumerate(nodes) if META in n.meta and "bernoulli" in str(n.target)]
    assert fills, "no dropout mask was recomputed"
    for i in fills:
        # get the state now, set the one saved before the original draw, draw, put the state back.
        around = [str(n.target) for n in (nodes[i - 2], nodes[i - 1], nodes[i + 1])]
        assert around == [
            "model_opt.get_rng_state.default",
            "model_opt.set_rng_state.default",
            "model_opt.set_rng_state.default",
        ], around
        saved = nodes[i - 1].args[1]
        assert META not in saved.meta and saved.next.target is torch.ops.aten.bernoulli_.float
    for node in _copies(step):  # nothing random is recomputed but the fills
        if isinstance(node.target, torch._ops.OpOverload) and "bernoulli" not in str(node.target):
            assert torch.Tag.nondeterministic_seeded not in node.target.tags or "rng" in str(node.target)
    # Bit-identical to eager over five steps, every later draw included.
    report = run_faithful(
        make, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), batches=_batches(), **REMAT
    )
    _assert_lowered(report)


def _plain(model: nn.Module) -> Any:
    return _plain_step(model, torch.optim.SGD(model.parameters(), lr=0.1))


def _peaks() -> tuple[int, int]:
    """The order-only peak of the GELU MLP's step, and the least peak remat reaches."""
    torch.manual_seed(0)
    order_only = optimize(_plain(GeluMlp()), *_batches()[0], **ORDER).report["peak_bytes"]
    torch.manual_seed(0)
    least = optimize(_plain(GeluMlp()), *_batches()[0], **REMAT).report["peak_bytes"]
    assert least < order_only
    return order_only, least


def test_a_budget_between_the_order_and_remat_peaks_is_met_with_fewer_recomputations():
    order_only, least = _peaks()
    budget = (order_only + least) // 2
    torch.manual_seed(0)
    report = optimize(_plain(GeluMlp()), *_batches()[0], memory_budget=budget, **REMAT).report
    assert report["peak_bytes"] <= budget
    assert report["memory_budget"] == budget
    assert report["remat"]["stopped"] == "budget met"
    # A budget the order alone meets recomputes nothing.
    report = optimize(_plain(GeluMlp()), *_batches()[0], memory_budget=order_only, **REMAT).report
    assert report["remat"] is None and report["peak_bytes"] <= order_only


def test_a_budget_that_cannot_be_met_says_the_least_peak_and_what_to_allow():
    order_only, least = _peaks()
    with pytest.raises(MemoryBudgetError, match=r"by reordering alone.*allow=\('reorder', 'remat'\)"):
        optimize(_plain(GeluMlp()), *_batches()[0], memory_budget=least, **ORDER)
    with pytest.raises(MemoryBudgetError, match=rf"least found is {least} bytes.*the peak is at") as info:
        optimize(_plain(GeluMlp()), *_batches()[0], memory_budget=least - 1, **REMAT)
    # The breakdown describes the peak reported: its parts add up to it.
    parts = re.search(
        r"(\d+) bytes resident .*?, (\d+) bytes it reads .*?, (\d+) bytes of other", str(info.value)
    )
    assert parts is not None and sum(int(p) for p in parts.groups()) == least, str(info.value)
    with pytest.raises(MemoryBudgetError, match="max_recompute=0.0"):
        optimize(
            _plain(GeluMlp()),
            *_batches()[0],
            memory_budget=least,
            allow=("reorder", "remat"),
            max_recompute=0.0,
            **ORDER,
        )


def test_bad_options_are_refused_before_capturing():
    args = _batches()[0]
    with pytest.raises(ArgumentError, match="unknown transformation 'rematerialize'"):
        optimize(_plain(GeluMlp()), *args, allow=("rematerialize",))
    with pytest.raises(ArgumentError, match="not a size"):
        optimize(_plain(GeluMlp()), *args, memory_budget="12 potatoes")
    with pytest.raises(ArgumentError, match="max_recompute"):
        optimize(_plain(GeluMlp()), *args, allow="remat", max_recompute=-1.0)
    with pytest.raises(ArgumentError, match="max_recompute .*got '20%'"):
        optimize(_plain(GeluMlp()), *args, allow="remat", max_recompute="20%")


def test_remat_without_reorder_keeps_the_captured_order():
    torch.manual_seed(0)
    report = optimize(_plain(GeluMlp()), *_batches()[0], allow=("remat",), max_recompute=None).report
    assert report["method"] == "none" and report["lower_bound_bytes"] is None
    _assert_lowered(report)


# --------------------------------------------------------------------------------------------------
# What is recomputed, operator by operator.


def _graph_with(fn: Any, *args: torch.Tensor) -> fx.Graph:
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn)(*args).graph


def _node(graph: fx.Graph, name_part: str) -> fx.Node:
    return next(n for n in graph.nodes if n.op == "call_function" and name_part in str(n.target))


def test_random_uninitialised_and_in_place_operators_are_never_recomputed():
    x = torch.randn(4, 4)
    graph = _graph_with(
        lambda t: (nn.functional.dropout(t, 0.5, True), torch.rand_like(t), torch.empty_like(t)), x
    )
    # Dropout is traced as an uninitialised mask, drawn in place, then a product: the draw is never
    # repeated (the mask is kept); the product may be recomputed from the kept mask.
    assert recompute_call(_node(graph, "bernoulli")) is None
    assert recompute_call(_node(graph, "mul")) is not None
    assert recompute_call(_node(graph, "rand")) is None
    assert recompute_call(_node(graph, "empty")) is None
    graph = _graph_with(lambda t: t.clone().add_(1.0).relu(), x)
    assert recompute_call(_node(graph, "add_")) is None
    assert recompute_call(_node(graph, "relu")) is not None


def test_batch_norm_is_recomputed_without_updating_its_running_statistics():
    bn = nn.BatchNorm1d(4)
    graph = _graph_with(
        lambda t, w, b, m, v: nn.functional.batch_norm(t, m, v, w, b, training=True),
        torch.randn(8, 4),
        bn.weight.detach(),
        bn.bias.detach(),
        torch.zeros(4),
        torch.ones(4),
    )
    target, args, _ = recompute_call(_node(graph, "native_batch_norm"))  # type: ignore[misc]
    assert target is torch.ops.aten.native_batch_norm.default
    assert args[3] is None and args[4] is None and args[5] is True
    # The recomputation computes what the original computed, and leaves the statistics alone.
    x = torch.randn(8, 4)
    mean, var = torch.zeros(4), torch.ones(4)
    first = torch.ops.aten.native_batch_norm(x, bn.weight, bn.bias, mean, var, True, 0.1, 1e-5)
    kept = (mean.clone(), var.clone())
    again = torch.ops.aten.native_batch_norm(x, bn.weight, bn.bias, None, None, True, 0.1, 1e-5)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(mean, kept[0], rtol=0, atol=0)
    torch.testing.assert_close(var, kept[1], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# The runtime serves a rematerialized step like any other.


def _served(options: dict[str, Any]) -> dict[str, Any]:
    """One process per step: an installed allocator keeps one arena for the whole process."""
    spec = {"batch": 16, "image": 64, "momentum": 0.0, "optimize": options}
    worker = Path(__file__).parent / "served_step_worker.py"
    proc = subprocess.run(
        [sys.executable, str(worker), json.dumps(spec)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_rematerialized_step_runs_on_the_planned_arena_with_a_smaller_arena() -> None:
    pytest.importorskip("torchvision")
    searched = {"method": "heuristic", "time_limit": 60.0}
    order = _served(searched)
    remat = _served({**searched, "allow": ["reorder", "remat"], "max_recompute": None})
    assert remat["recomputed"] > 0
    assert remat["losses"] == order["losses"] and remat["params"] == order["params"]
    assert order["divergences"] == 0 and remat["divergences"] == 0
    simulated_saving = order["simulated_peak"] - remat["simulated_peak"]
    assert simulated_saving > 0
    # The arena also holds what operators allocate inside themselves (CPU convolutions' column
    # buffers), which the simulation does not see and recomputation does not change: the saving the
    # simulation predicts is what the arena saves, within 20%.
    arena_saving = order["arena"] - remat["arena"]
    assert 0.8 * simulated_saving <= arena_saving <= 1.2 * simulated_saving, (order, remat)


def sgd_step(m: nn.Module) -> tuple[Any, torch.optim.Optimizer]:
    """A plain SGD training step of ``m`` written as a user writes it, and its optimizer."""
    opt = torch.optim.SGD(m.parameters(), lr=0.1)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return step, opt


def test_a_choice_replayed_on_another_batch_size_trains_bit_identically() -> None:
    """What `fit --remat` does: recomputations chosen on one capture made again, by name, on a capture
    at another batch size (dropout included: its saved generator state is found again too)."""
    from copy import deepcopy

    from model_opt._native import simulate_order
    from model_opt.capture.dataflow import build_dataflow
    from model_opt.capture.step import StepState, capture_step
    from model_opt.remat import RematReplayError, rematerialize, replay

    torch.manual_seed(0)
    model = GeluMlp(dropout=0.1)
    twin = deepcopy(model)

    step, opt = sgd_step(model)
    eager, _ = sgd_step(twin)
    state = StepState.of([model], [opt])
    choice = capture_step(step, _batches(1, 1024)[0], {}, state)
    chosen = rematerialize(choice.graph_module, max_recompute=None, time_limit=60.0)
    assert chosen.recomputed and chosen.steps
    # On the capture it was chosen on, a replay makes the very graph the search made.
    again = replay(choice.graph_module, chosen.steps)
    assert [(n.op, n.target, n.meta.get(META)) for n in again.graph.nodes] == [
        (n.op, n.target, n.meta.get(META)) for n in chosen.graph_module.graph.nodes
    ]
    small = _batches(2, 256)
    captured = capture_step(step, small[0], {}, state)
    gm = replay(captured.graph_module, chosen.steps)
    assert sum(META in n.meta for n in gm.graph.nodes) == sum(
        META in n.meta for n in chosen.graph_module.graph.nodes
    )

    def peak(graph: fx.GraphModule) -> int:
        n, tensors, edges, resident = build_dataflow(graph).native_args()
        return max(simulate_order(n, tensors, edges, list(range(n)), resident))

    assert peak(gm) < peak(captured.graph_module)
    for x, y in small:
        torch.manual_seed(5)
        got = captured.run(gm, x, y)
        torch.manual_seed(5)
        want = eager(x, y)
        assert torch.equal(got, want)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    # Another step's graph: refused, not rewritten at random.
    other = capture_step(lambda x, y: (x * 2).sum(), small[0], {}, StepState.of([], []))
    with pytest.raises(RematReplayError):
        replay(other.graph_module, chosen.steps)


def test_the_ilp_method_trains_bit_identically_and_reports_its_program():
    options = {**REMAT, "allow": ("reorder", "remat", "spill"), "remat_method": "ilp", "host_bandwidth": 1e13}
    report = run_faithful(
        lambda: GeluMlp(dropout=0.3),
        lambda m: torch.optim.Adam(m.parameters()),
        batches=_batches(),
        **options,
    )
    remat = report["remat"]
    assert remat["recomputed"] or remat["spilled"], remat
    assert report["peak_bytes"] < remat["start_peak_bytes"]
    program = remat["program"]
    assert program["goal"] == "least peak" and program["status"] == "optimal", program
    assert 0 < program["chosen"] <= program["candidates"] and program["applied"] > 0, program
    # The program's bound is on its own model of the peak, which its choice reaches (optimal).
    assert program["bound"] == program["modeled_peak"] < remat["start_peak_bytes"], program
    assert isinstance(program["kept"], bool)


def test_the_ilp_method_meets_a_budget_at_the_least_cost_it_finds():
    order, least = _peaks()
    budget = (order + least) // 2
    options = {**REMAT, "remat_method": "ilp", "memory_budget": budget}
    step = optimize(_plain(GeluMlp()), *_batches()[0], **options)
    assert step.report["peak_bytes"] <= budget
    program = step.report["remat"]["program"]
    assert program["goal"] == "budget" and program["status"] == "optimal", program
    assert (
        0 < program["bound"] <= step.report["remat"]["recompute_flops"] + step.report["remat"]["spill_flops"]
    )
