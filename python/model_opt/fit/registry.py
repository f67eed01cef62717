"""The benchmark registry's models as `fit` builds them: under fake tensors, so that a model costs no
memory of its size (a 1.1B-parameter decoder with AdamW would need 18 GB to build for real), in the
training precision asked for.

* ``dtype``: the parameters' type (``fp32``, ``bf16``, ``fp16``: pure low-precision training); the
  floating-point inputs follow it.
* ``amp``: the forward pass and the loss under ``torch.autocast`` to bfloat16, the parameters as they
  are (mixed precision). The step is captured on the CPU, so the casts are CPU autocast's: the
  matrix products and convolutions run in bfloat16 as on CUDA, but a few operators that CUDA's
  autocast runs in float32 (softmax, layer norm) keep their input's type on the CPU. float16
  autocast is not offered: its training step needs a ``GradScaler``, whose ``step`` reads a tensor
  in Python (``.item()``), which a captured step cannot replay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from model_opt.errors import ArgumentError

#: ``--dtype`` names and the parameters' type each gives.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The type ``amp`` computes in (`model_opt.capture.step.model_step`'s ``autocast``).
AMP_DTYPE = torch.bfloat16


def parse_dtype(name: str) -> torch.dtype:
    """The parameters' type named `name` (a key of `DTYPES`); raises `ArgumentError`."""
    if name not in DTYPES:
        raise ArgumentError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def cast_floats(tree: Any, dtype: torch.dtype) -> Any:
    """`tree` (tensors in tuples) with its floating-point tensors in `dtype`; integer tensors (token
    ids, class labels) are left as they are."""
    if isinstance(tree, torch.Tensor):
        return tree.to(dtype) if tree.is_floating_point() else tree
    if isinstance(tree, (tuple, list)):
        return type(tree)(cast_floats(x, dtype) for x in tree)
    return tree


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """``torch.nn.init``'s in-place initialisers made to leave their tensor as it is: a fake tensor
    has no values to initialise, and some initialisers read one (``trunc_normal_`` on a fake
    tensor raises)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def _into(mode: FakeTensorMode, model: nn.Module) -> None:
    """Every parameter and buffer of `model` a fake tensor of `mode`: ``copy.deepcopy`` of a fake
    tensor (``nn.Transformer`` clones its layers so) makes it one of a mode of its own, and a trace
    takes one mode. Shared tensors (tied weights) stay shared."""
    moved: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table, as_param in ((module._parameters, True), (module._buffers, False)):
            for name, t in list(table.items()):
                if t is None or getattr(t, "fake_mode", None) is mode:
                    continue
                if id(t) not in moved:
                    with mode:
                        new = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
                    moved[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) if as_param else new
                table[name] = moved[id(t)]


def build_fake(name: str, optimizer: str, dtype: torch.dtype) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Model `name` (`model_opt.apps.models.ALL_MODELS`) in train mode, its parameters fake tensors of
    `dtype`, and `optimizer` over them with its state created as its first step would (fake too)."""
    from model_opt.apps import models
    from model_opt.apps.bench_reorder import OPTIMIZERS, create_state

    if optimizer not in OPTIMIZERS:  # checked before the model is built
        raise ArgumentError(f"unknown optimizer {optimizer!r}; use one of {sorted(OPTIMIZERS)}")
    # Non-fake inputs (the batches of `make_args`) are taken into the same fake mode when traced. The
    # model is built in `dtype` (the default type while it is built): a fake parameter cannot be
    # converted in place by ``model.to``.
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with mode, _no_init():
            model, _, _ = models.example(name, 1)
    finally:
        torch.set_default_dtype(default)
    _into(mode, model)
    with mode:
        model.train()
        opt = OPTIMIZERS[optimizer](model.parameters())
        create_state(opt)
    return model, opt
