"""Capture one training (or inference) step as an aten-level FX graph and its dataflow graph.

The step is written functionally — parameters, buffers, optimizer state, inputs and targets are all
arguments — and traced with ``make_fx`` under fake tensors, so capturing a batch-32 step costs no real
compute. Forward, loss, backward (``torch.autograd.grad``) and the optimizer update end up in one graph.
The optimizer update mutates parameters and state in place (as ``optimizer.step()`` does), so running the
graph on the real tensors updates the model and the optimizer exactly like an eager step would.

The dataflow graph handed to the scheduler is built at the storage level:

* a *tensor* is one storage; views and aliases (``view``, ``t``, ``alias``, ``getitem`` ...) produce no
  tensor of their own, they are consumers of their base's storage;
* an operator that writes an argument in place (schema ``Tensor(a!)``) is ordered after every earlier
  reader and writer of that storage, and before every later one;
* storages that exist before the step (parameters, buffers, optimizer state, inputs, constants) are
  resident: counted for the whole step and never freed;
* sizes are storage bytes (``untyped_storage().nbytes()``: shape x dtype of the base).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
from torch import fx, nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]
LossFn = Callable[[Any, Any], torch.Tensor]

#: (size in bytes, producer op, consumer ops, kept to the end of the step) — the tuple `schedule_graph` takes.
TensorTuple = tuple[int, int, list[int], bool]


class CaptureError(RuntimeError):
    """The step could not be captured (unsupported optimizer, untraceable model, ...)."""


@dataclass
class DataflowGraph:
    """The storage-level dataflow graph of a captured FX graph, in the form the Rust scheduler takes."""

    ops: list[fx.Node]
    tensors: list[TensorTuple]
    edges: list[tuple[int, int]]
    resident_bytes: int
    #: Bytes of each resident storage's kind, for reports: "input" (placeholders) or "constant".
    resident_detail: dict[str, int] = field(default_factory=dict)
    #: ``getitem`` nodes that unpack an operator's tuple output, per operator index. They are not
    #: scheduled on their own: they run right after their operator, so the tuple (which keeps every
    #: element alive) is dropped at once and each element lives exactly as long as simulated.
    unpacks: dict[int, list[fx.Node]] = field(default_factory=dict)

    def native_args(self) -> tuple[int, list[TensorTuple], list[tuple[int, int]], int]:
        """``(num_ops, tensors, edges, resident)`` for `schedule_graph` / `simulate_order`."""
        return len(self.ops), self.tensors, self.edges, self.resident_bytes


@dataclass
class CapturedStep:
    """A traced step: the FX graph, its dataflow graph, and how to call it on real tensors."""

    graph_module: fx.GraphModule
    dataflow: DataflowGraph
    #: Real tensors the graph takes first, in order: parameters, buffers, optimizer state.
    state_args: list[torch.Tensor]
    #: How many example inputs and targets follow the state arguments.
    num_inputs: int
    num_targets: int


def _as_tuple(x: Tensors) -> tuple[torch.Tensor, ...]:
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def _storages(value: Any) -> list[tuple[StorageWeakRef, int]]:
    out = []
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided:
            storage = leaf.untyped_storage()
            out.append((StorageWeakRef(storage), int(storage.nbytes())))
    return out


def _written_args(node: fx.Node) -> list[fx.Node]:
    """The argument nodes an operator writes in place (schema alias info ``(a!)``)."""
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is None:
        return []
    written: list[fx.Node] = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.kwargs.get(arg.name) if (arg.kwarg_only or i >= len(node.args)) else node.args[i]
        written.extend(n for n in pytree.tree_leaves(value) if isinstance(n, fx.Node))
    return written


def build_dataflow(gm: fx.GraphModule) -> DataflowGraph:
    """Builds the storage-level dataflow graph of a graph traced with fake tensors (``meta['val']``)."""
    ops: list[fx.Node] = []
    index: dict[fx.Node, int] = {}
    # Per storage: [size, producer or None (resident), consumers, output].
    info: dict[StorageWeakRef, list[Any]] = {}
    order: list[StorageWeakRef] = []
    last_write: dict[StorageWeakRef, int] = {}
    reads_since: dict[StorageWeakRef, list[int]] = {}
    edges: set[tuple[int, int]] = set()
    resident_detail = {"input": 0, "constant": 0}
    last_random: int | None = None
    unpacks: dict[int, list[fx.Node]] = {}

    def node_storages(n: fx.Node) -> list[tuple[StorageWeakRef, int]]:
        return _storages(n.meta.get("val"))

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            for key, size in node_storages(node):
                if key not in info:
                    info[key] = [size, None, [], False]
                    order.append(key)
                    resident_detail["input" if node.op == "placeholder" else "constant"] += size
            continue
        if node.op == "output":
            for arg in pytree.tree_leaves(node.args):
                if isinstance(arg, fx.Node):
                    for key, _ in node_storages(arg):
                        if key in info and info[key][1] is not None:
                            info[key][3] = True
            continue
        if node.target is operator.getitem and node.args and node.args[0] in index:
            # Part of its producer (see `DataflowGraph.unpacks`): reads of its value are reads of
            # the producer's output storage, which the producer already owns.
            owner = index[node.args[0]]
            index[node] = owner
            unpacks.setdefault(owner, []).append(node)
            continue
        i = len(ops)
        ops.append(node)
        index[node] = i
        # Random ops draw from one generator: keep their relative order so results stay identical.
        if (
            isinstance(node.target, torch._ops.OpOverload)
            and torch.Tag.nondeterministic_seeded in node.target.tags
        ):
            if last_random is not None:
                edges.add((last_random, i))
            last_random = i
        # Data dependencies between operators are FX's own: every input node must run first.
        for inp in node.all_input_nodes:
            if inp in index:
                edges.add((index[inp], i))
        read = [s for inp in node.all_input_nodes for s in node_storages(inp)]
        written = {key for w in _written_args(node) for key, _ in node_storages(w)}
        for key, size in node_storages(node):
            if key not in info:
                info[key] = [size, i, [], False]
                order.append(key)
        for key, _ in read:
            if key not in info:
                continue
            consumers = info[key][2]
            if not consumers or consumers[-1] != i:
                consumers.append(i)
            if key in written:
                continue
            w = last_write.get(key)
            if w is not None and w != i:
                edges.add((w, i))
            reads_since.setdefault(key, []).append(i)
        for key in written:
            # Write after read and write after write: everything that touched the old value goes first.
            w = last_write.get(key)
            if w is not None and w != i:
                edges.add((w, i))
            for r in reads_since.get(key, []):
                if r != i:
                    edges.add((r, i))
            last_write[key] = i
            reads_since[key] = []

    tensors: list[TensorTuple] = []
    resident = 0
    for key in order:
        size, producer, consumers, output = info[key]
        if producer is None:
            resident += size
        else:
            tensors.append((size, producer, consumers, output))
    return DataflowGraph(ops, tensors, sorted(edges), resident, resident_detail, unpacks)


# --------------------------------------------------------------------------------------------------
# Optimizers, written functionally over flat lists so that make_fx records their in-place updates.


def _optimizer_state(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Creates the optimizer's per-parameter state if it does not exist yet (as its first step would)
    and returns the state tensors in the order `_optimizer_update` consumes them."""
    out: list[torch.Tensor] = []
    kind = _optimizer_kind(optimizer)
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if kind == "sgd":
                if group["momentum"] != 0:
                    if state.get("momentum_buffer") is None:
                        # Zeros instead of eager's clone(grad) on the first step: identical when
                        # dampening is 0 (0 * m + 1 * g == g exactly), and the same graph every step.
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    out.append(state["momentum_buffer"])
            else:
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                out.extend([state["step"], state["exp_avg"], state["exp_avg_sq"]])
                if group["amsgrad"]:
                    out.append(state["max_exp_avg_sq"])
    return out


def _optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    if type(optimizer) is torch.optim.SGD:
        return "sgd"
    if type(optimizer) is torch.optim.Adam:
        return "adam"
    if type(optimizer) is torch.optim.AdamW:
        return "adamw"
    raise CaptureError(
        f"optimizer {type(optimizer).__name__} is not supported; use torch.optim.SGD, Adam or AdamW"
    )


def _optimizer_update(
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    state: list[torch.Tensor],
) -> None:
    """One optimizer step over (traced) tensors, following torch's single-tensor implementations.
    Adam uses torch's ``capturable`` formulation (bias corrections as tensor ops) because the step count
    is a tensor inside the graph; results match eager to float rounding."""
    kind = _optimizer_kind(optimizer)
    it = iter(state)
    k = 0
    for group in optimizer.param_groups:
        if group.get("maximize") or group.get("differentiable"):
            raise CaptureError("maximize=True and differentiable=True are not supported")
        lr = float(group["lr"])
        wd = float(group["weight_decay"])
        for _ in group["params"]:
            param, grad = params[k], grads[k]
            k += 1
            if kind == "sgd":
                momentum = float(group["momentum"])
                buf = next(it) if momentum != 0 else None
                if grad is None:
                    continue
                if wd != 0:
                    grad = grad.add(param, alpha=wd)
                if buf is not None:
                    buf.mul_(momentum).add_(grad, alpha=1 - float(group["dampening"]))
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                param.add_(grad, alpha=-lr)
                continue
            step_t, exp_avg, exp_avg_sq = next(it), next(it), next(it)
            max_sq = next(it) if group["amsgrad"] else None
            if grad is None:
                continue
            beta1, beta2 = (float(b) for b in group["betas"])
            eps = float(group["eps"])
            step_t.add_(1)
            if wd != 0:
                if kind == "adamw":
                    param.mul_(1 - lr * wd)
                else:
                    grad = grad.add(param, alpha=wd)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - torch.pow(beta1, step_t)
            bias_correction2 = 1 - torch.pow(beta2, step_t)
            step_size_neg = (lr / bias_correction1).neg()
            bias_correction2_sqrt = bias_correction2.sqrt()
            second = exp_avg_sq
            if max_sq is not None:
                max_sq.copy_(torch.maximum(max_sq, exp_avg_sq))
                second = max_sq
            denom = (second.sqrt() / (bias_correction2_sqrt * step_size_neg)).add_(eps / step_size_neg)
            param.addcdiv_(exp_avg, denom)


# --------------------------------------------------------------------------------------------------
# Capture.


def _fake_trace(fn: Callable[..., Any], args: list[torch.Tensor]) -> fx.GraphModule:
    try:
        return make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*args)
    except CaptureError:
        raise
    except Exception as e:  # make_fx raises many kinds; say which step failed and why
        raise CaptureError(f"tracing the step with make_fx failed: {type(e).__name__}: {e}") from e


def capture_training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    example_inputs: Tensors,
    example_targets: Tensors,
) -> CapturedStep:
    """Traces forward, loss, backward and the optimizer update of one step into one FX graph.

    The graph's arguments are ``state_args`` (parameters, buffers, optimizer state — real tensors whose
    storage the graph updates in place), then the inputs, then the targets; it returns the loss.
    Creates the optimizer state if the optimizer has not stepped yet. Raises `CaptureError`.
    """
    named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    named_buffers = list(model.named_buffers())
    by_id = {id(p): i for i, (_, p) in enumerate(named_params)}
    opt_params: list[nn.Parameter] = [p for g in optimizer.param_groups for p in g["params"]]
    for p in opt_params:
        if id(p) not in by_id:
            raise CaptureError("the optimizer holds a tensor that is not a trainable parameter of the model")
    opt_index = [by_id[id(p)] for p in opt_params]
    state = _optimizer_state(optimizer, opt_params)
    inputs, targets = _as_tuple(example_inputs), _as_tuple(example_targets)
    n_p, n_f, n_b, n_s, n_i = len(named_params), len(frozen), len(named_buffers), len(state), len(inputs)
    names = [n for n, _ in named_params] + [n for n, _ in frozen] + [n for n, _ in named_buffers]

    def step(*flat: torch.Tensor) -> torch.Tensor:
        ps = list(flat[:n_p])
        tensors = dict(zip(names, flat[: n_p + n_f + n_b]))
        st = list(flat[n_p + n_f + n_b : n_p + n_f + n_b + n_s])
        xs = flat[n_p + n_f + n_b + n_s : n_p + n_f + n_b + n_s + n_i]
        ys = flat[n_p + n_f + n_b + n_s + n_i :]
        with torch.enable_grad():
            out = torch.func.functional_call(model, tensors, xs, strict=False, tie_weights=True)
            loss = loss_fn(out, ys[0] if len(ys) == 1 else ys)
            grads = torch.autograd.grad(loss, ps, allow_unused=True)
        with torch.no_grad():
            _optimizer_update(optimizer, [ps[i] for i in opt_index], [grads[i] for i in opt_index], st)
        return loss.detach()

    state_args: list[torch.Tensor] = (
        [p.detach() for _, p in named_params]
        + [p.detach() for _, p in frozen]
        + [b for _, b in named_buffers]
        + state
    )
    trace_args = (
        [p.detach().requires_grad_(True) for _, p in named_params]
        + state_args[n_p:]
        + list(inputs)
        + list(targets)
    )
    gm = _fake_trace(step, trace_args)
    return CapturedStep(gm, build_dataflow(gm), state_args, len(inputs), len(targets))


def capture_inference_step(model: nn.Module, example_inputs: Tensors) -> CapturedStep:
    """Traces a forward pass without gradients (the "eval" graph of the benchmarks)."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    names = [n for n, _ in named]
    inputs = _as_tuple(example_inputs)

    def forward(*flat: torch.Tensor) -> Any:
        with torch.no_grad():
            return torch.func.functional_call(model, dict(zip(names, flat[: len(names)])), flat[len(names) :])

    state_args = [t.detach() for _, t in named]
    gm = _fake_trace(forward, state_args + list(inputs))
    return CapturedStep(gm, build_dataflow(gm), state_args, len(inputs), 0)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's elements (shape x dtype), for reports."""
    return math.prod(t.shape) * t.element_size()
