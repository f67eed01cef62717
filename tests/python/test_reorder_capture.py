"""Capture: views share their base's storage, in-place ops are ordered, buffers are resident and updated."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree

from model_opt import InputError, optimize
from model_opt._native import simulate_order
from model_opt.capture.dataflow import CaptureError
from model_opt.capture.step import capture_training_step
from model_opt.reorder import peak_of_order, reorder_graph, schedule_captured

torch.set_num_threads(1)


class ViewsAndInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.bn = nn.BatchNorm1d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        v = h.view(-1, 4, 4).transpose(1, 2)  # views of h: no new storage
        h = torch.relu_(v.reshape(-1, 16) * 1.0)  # in-place on a fresh tensor
        h = self.bn(h)  # running stats updated in place (buffers)
        return h.sum(dim=1)


def _capture(batch: int = 8):
    torch.manual_seed(0)
    model = ViewsAndInPlace()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(batch, 16), torch.randn(batch)
    return model, opt, capture_training_step(model, opt, nn.functional.mse_loss, x, y)


def test_views_share_storage_and_sizes_come_from_shape_and_dtype():
    _, _, cap = _capture()
    df = cap.dataflow

    def is_view(node: torch.fx.Node) -> bool:
        schema = getattr(node.target, "_schema", None)
        returns = schema.returns if schema is not None else []
        return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)

    view_ops = [i for i, n in enumerate(df.ops) if is_view(n)]
    assert view_ops, "the graph should contain view ops"
    producers = {producer for _, producer, _, _ in df.tensors}
    for i in view_ops:
        assert i not in producers, f"{df.ops[i].name} is a view and must not allocate"
    # Every allocated size is a whole number of float32 elements (shape x dtype).
    assert all(size % 4 == 0 for size, *_ in df.tensors)


def test_parameters_buffers_and_inputs_are_resident():
    model, opt, cap = _capture()
    # The optimizer's state is the optimizer's own (its step runs as one operator): not in the graph.
    expected = sum(p.numel() * 4 for p in model.parameters())
    expected += sum(b.numel() * b.element_size() for b in model.buffers())
    expected += 8 * 16 * 4 + 8 * 4  # inputs and targets
    assert cap.dataflow.resident_bytes == expected


def _storages_of(node: torch.fx.Node) -> set[StorageWeakRef]:
    return {
        StorageWeakRef(t.untyped_storage())
        for t in pytree.tree_leaves(node.meta.get("val"))
        if isinstance(t, torch.Tensor)
    }


def _written_storages(node: torch.fx.Node) -> set[StorageWeakRef]:
    """Storages an operator overwrites: the arguments its schema marks ``(a!)``."""
    schema = getattr(node.target, "_schema", None)
    written: set[StorageWeakRef] = set()
    for i, arg in enumerate(schema.arguments if schema is not None else []):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.kwargs.get(arg.name) if (arg.kwarg_only or i >= len(node.args)) else node.args[i]
        for n in pytree.tree_leaves(value):
            if isinstance(n, torch.fx.Node):
                written |= _storages_of(n)
    return written


def _read_write_pairs(df) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """From the captured order, independently of the capture's own edges: (reader, writer) pairs
    where an operator reads a storage that a later operator overwrites in place, and (writer,
    reader) pairs where an operator reads what an earlier in-place update wrote."""
    before, after = [], []
    readers: dict[StorageWeakRef, list[int]] = {}
    last_write: dict[StorageWeakRef, int] = {}
    for i, node in enumerate(df.ops):
        written = _written_storages(node)
        read = set().union(*(_storages_of(n) for n in node.all_input_nodes)) - written
        for key in read:
            if key in last_write:
                after.append((last_write[key], i))
            readers.setdefault(key, []).append(i)
        for key in written:
            before += [(r, i) for r in readers.get(key, []) if r != i]
            readers[key] = []
            last_write[key] = i
    return before, after


def _capture_in_place_on_view():
    torch.manual_seed(0)
    model = InPlaceOnView()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return capture_training_step(model, opt, nn.functional.mse_loss, torch.randn(4, 8), torch.randn(4))


@pytest.mark.parametrize("method", ["eager", "greedy", "dfs", "bfs", "auto"])
@pytest.mark.parametrize("model", ["views_and_in_place", "in_place_on_view"])
def test_in_place_updates_are_ordered_after_every_reader(model: str, method: str):
    cap = _capture()[2] if model == "views_and_in_place" else _capture_in_place_on_view()
    df = cap.dataflow
    before, after = _read_write_pairs(df)
    # The step does overwrite storages that other operators read before (the forward and backward
    # read the weights that the optimizer's step then updates in place) and after (what relu_ or mul_
    # wrote).
    updated = {df.ops[w].name for _, w in before}
    assert len(before) >= 3 and len(after) >= 3, (before, after)
    assert any(name.startswith("optimizer_step") for name in updated), updated
    # The order the scheduler returns keeps every reader of a storage before its in-place update,
    # and every reader of the updated value after it.
    _, report = schedule_captured(cap, method=method, time_limit=1.0)
    position = {op: k for k, op in enumerate(report["order"])}
    assert sorted(position) == list(range(len(df.ops)))
    late = [(df.ops[r].name, df.ops[w].name) for r, w in before if position[r] > position[w]]
    assert not late, f"readers run after the in-place update of what they read: {late}"
    early = [(df.ops[w].name, df.ops[r].name) for w, r in after if position[r] < position[w]]
    assert not early, f"readers run before the in-place update they should see: {early}"
    # Reversing the captured order is never valid: the Rust side must reject it rather than run it.
    with pytest.raises(InputError):
        simulate_order(*df.native_args()[:3], list(reversed(range(len(df.ops)))), df.resident_bytes)


def test_batch_norm_buffers_are_updated_by_the_reordered_graph():
    model, opt, cap = _capture()
    df = cap.dataflow
    # Any valid order works; the heuristic one below is checked by simulate, then run.
    order = list(range(len(df.ops)))
    gm = reorder_graph(cap.graph_module, df, order)
    before = model.bn.running_mean.clone()
    batches = model.bn.num_batches_tracked.item()
    cap.run(gm, torch.randn(8, 16), torch.randn(8))
    assert not torch.equal(before, model.bn.running_mean)
    assert model.bn.num_batches_tracked.item() == batches + 1
    assert peak_of_order(cap, order) >= df.resident_bytes


class InPlaceOnView(nn.Module):
    """Reads a tensor, then updates a view of it in place, then reads it again: every order must keep
    the first read before the update and the second after it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        before = h.sum(1, keepdim=True)  # sum saves nothing for backward, so the update is legal
        h[:, :4].mul_(0.5)
        return (before * h).sum(1)


@pytest.mark.parametrize("method", ["eager", "greedy", "dfs", "bfs", "auto"])
def test_in_place_update_of_a_view_keeps_its_order_under_every_method(method: str):
    torch.manual_seed(0)
    model = InPlaceOnView()
    reference = InPlaceOnView()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    x, y = torch.randn(4, 8), torch.randn(4)
    step = optimize(model, opt, nn.functional.mse_loss, x, y, method=method, time_limit=1.0)
    for _ in range(2):
        got = step(x, y)
        ref_opt.zero_grad()
        want = nn.functional.mse_loss(reference(x), y)
        want.backward()
        ref_opt.step()
        torch.testing.assert_close(got, want.detach(), rtol=0, atol=0)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_an_optimizer_step_with_a_closure_is_refused_before_anything_runs():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1)
    x, y = torch.randn(3, 4), torch.randn(3, 2)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        return opt.step(closure)

    with pytest.raises(CaptureError, match=r"LBFGS\.step\(\) was called with arguments \(a closure\?\)"):
        optimize(train_step, x, y, time_limit=0.5)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert all(p.grad is None for p in model.parameters())
