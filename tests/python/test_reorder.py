"""Reordered training steps compute what eager computes: losses and updated parameters, over a few steps.

Small models and sizes, one thread: the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from model_opt import optimize
from model_opt.reorder import measure_peak_bytes, peak_of_order

torchvision = pytest.importorskip("torchvision")

torch.set_num_threads(1)


def _eager_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable, x, y) -> torch.Tensor:
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def _compare(
    make_model: Callable[[], nn.Module],
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    make_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable = nn.functional.cross_entropy,
    steps: int = 3,
    **optimize_kwargs,
) -> dict:
    torch.manual_seed(0)
    model = make_model()
    reference = copy.deepcopy(model)
    opt, ref_opt = make_opt(model), make_opt(reference)
    x, y = make_batch()
    step = optimize(model, opt, loss_fn, x, y, **optimize_kwargs)
    report = step.report
    # The reported peaks are the simulated peaks of the returned order and of the captured order.
    assert report["peak_bytes"] == peak_of_order(step.captured, report["order"])
    assert report["eager_peak_bytes"] == peak_of_order(step.captured, range(report["num_ops"]))
    # Every model here has independent operators to move: reordering gains (not guaranteed by
    # construction, which only promises "never worse than eager").
    assert report["lower_bound_bytes"] <= report["peak_bytes"] < report["eager_peak_bytes"]
    tol = {"rtol": 0.0, "atol": 0.0}
    for _ in range(steps):
        x, y = make_batch()
        rng = torch.get_rng_state()  # dropout draws from the generator: give both the same stream
        got = step(x, y)
        torch.set_rng_state(rng)
        want = _eager_step(reference, ref_opt, loss_fn, x, y)
        torch.testing.assert_close(got, want, **tol)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}", **tol)
    for p, q in zip(model.parameters(), reference.parameters()):
        for key, value in opt.state[p].items():
            if torch.is_tensor(value) and key != "step":
                torch.testing.assert_close(value, ref_opt.state[q][key], **tol)
    return report


def _images(batch: int = 2, size: int = 32, classes: int = 10):
    return lambda: (torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,)))


def test_resnet18_sgd_momentum_is_bit_identical():
    report = _compare(
        lambda: torchvision.models.resnet18(num_classes=10),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
        _images(),
        time_limit=2.0,
    )
    assert {
        "eager_peak_bytes",
        "peak_bytes",
        "lower_bound_bytes",
        "solve_seconds",
        "method",
        "status",
    } <= set(report)


def test_alexnet_with_dropout_sgd_is_bit_identical():
    _compare(
        lambda: torchvision.models.alexnet(num_classes=10),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.01),
        _images(batch=2, size=64),
        time_limit=2.0,
    )


def test_squeezenet_adam_is_bit_identical():
    # Adam runs as itself, one parameter at a time (model_opt::optimizer_step): bit-identical.
    _compare(
        lambda: torchvision.models.squeezenet1_1(num_classes=10),
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
        _images(batch=2, size=48),
        time_limit=2.0,
    )


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.body = nn.Transformer(
            d_model=d,
            nhead=4,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=64,
            dropout=0.1,
            batch_first=True,
        )
        self.head = nn.Linear(d, vocab)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        h = self.embed(src)
        return self.head(self.body(h, h)).flatten(0, 1)


def _transformer_batch():
    return torch.randint(0, 50, (2, 6)), torch.randint(0, 50, (12,))


def test_small_transformer_sgd_is_bit_identical():
    _compare(
        TinyTransformer,
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
        _transformer_batch,
        time_limit=2.0,
    )


def test_reordering_changes_nothing_numerically_transformer_adamw():
    """The reordered graph and the captured-order graph of the same capture give bit-identical results
    (against eager: `test_faithful.py`)."""
    results = []
    for method in ("eager", "auto"):
        torch.manual_seed(0)
        model = TinyTransformer()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        torch.manual_seed(1)
        x, y = _transformer_batch()
        step = optimize(model, opt, nn.functional.cross_entropy, x, y, method=method, time_limit=2.0)
        losses = []
        for _ in range(3):
            x, y = _transformer_batch()
            losses.append(step(x, y))
        results.append((step.report, losses, [p.detach().clone() for p in model.parameters()]))
    (eager_report, eager_losses, eager_params), (report, losses, params) = results
    assert eager_report["method"] == "eager"
    # Both captured the same graph; the eager method keeps its order, auto finds a lower peak.
    assert eager_report["peak_bytes"] == eager_report["eager_peak_bytes"] == report["eager_peak_bytes"]
    assert report["peak_bytes"] < eager_report["peak_bytes"]
    torch.testing.assert_close(losses, eager_losses, rtol=0, atol=0)
    torch.testing.assert_close(params, eager_params, rtol=0, atol=0)


def test_a_new_shape_is_captured_on_first_sight_and_the_old_one_is_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, reference))
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    step = optimize(model, opt, nn.functional.cross_entropy, x, y, method="greedy", time_limit=1.0)
    for batch in (4, 5, 4, 5):
        x, y = torch.randn(batch, 8), torch.randint(0, 4, (batch,))
        torch.testing.assert_close(
            step(x, y), _eager_step(reference, ref_opt, nn.functional.cross_entropy, x, y), rtol=0, atol=0
        )
    report = step.report
    assert (report["calls"], report["captures"], report["eager_calls"]) == (4, 2, 0)
    [recapture] = report["recaptures"]
    assert recapture["reason"] == "argument shapes, dtypes and values"
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize(
    "make_model,method,time_limit,status,reported_method",
    [
        # One linear layer: the greedy order meets the lower bound, which proves it optimal.
        (lambda: nn.Linear(8, 4), "auto", 1.0, "optimal", "greedy"),
        # The MLP's best heuristic stays above the bound: without the ILP nothing is proven.
        (_mlp, "eager", 1.0, "feasible", "eager"),
        (_mlp, "greedy", 1.0, "feasible", "greedy"),
        # No time for the ILP (nor the windows): the heuristic order, stopped by the time limit.
        (_mlp, "auto", 0.0, "time_limit", "greedy"),
    ],
    ids=["linear-auto-optimal", "mlp-eager-feasible", "mlp-greedy-feasible", "mlp-auto-no-time"],
)
def test_report_status_per_case(
    make_model: Callable[[], nn.Module], method: str, time_limit: float, status: str, reported_method: str
):
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    r = optimize(model, opt, nn.functional.cross_entropy, x, y, method=method, time_limit=time_limit).report
    assert (r["status"], r["method"]) == (status, reported_method), r
    if status == "optimal":
        assert r["peak_bytes"] == r["lower_bound_bytes"] and r["gap"] == 0.0
    else:
        assert r["peak_bytes"] > r["lower_bound_bytes"] and r["gap"] > 0.0
    if method == "eager":
        assert r["peak_bytes"] == r["eager_peak_bytes"]
    else:
        assert r["peak_bytes"] < r["eager_peak_bytes"]


def test_measured_peak_of_the_reordered_step_matches_the_simulation():
    """Run both orders for real, tracking every storage the step allocates: the simulated peaks are what
    actually happens, and the reordered step really needs less memory."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    step = optimize(model, opt, nn.functional.cross_entropy, x, y, time_limit=2.0)
    eager = measure_peak_bytes(step.captured.graph_module, step.captured, x, y)
    reordered = measure_peak_bytes(step.graph_module, step.captured, x, y)
    assert eager == pytest.approx(step.report["eager_peak_bytes"], rel=0.01)
    assert reordered == pytest.approx(step.report["peak_bytes"], rel=0.01)
    assert reordered < eager
