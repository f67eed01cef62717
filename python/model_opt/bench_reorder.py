"""Operator-reordering benchmark over the MODel model set (Steiner et al., ICML 2023).

For each model, mode (train: forward + loss + backward + SGD step; eval: forward without gradients) and
batch size, the step is captured under fake tensors (no real compute, random weights, no download),
scheduled, and the simulated peaks are reported: eager (captured) order, reordered, the saving, the
order-independent lower bound, solve time, method and status.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from model_opt.reorder import measure_peak_bytes, optimizer_state_bytes, schedule_captured
from model_opt.step_capture import CapturedStep, capture_inference_step, capture_training_step

#: The MODel set, in its paper's order, and a Llama-style decoder (BERT/GPT-2/Llama need `transformers`;
#: see `_hf_model`).
MODELS = [
    "alexnet",
    "resnet18",
    "resnet50",
    "vgg11",
    "mobilenet_v2",
    "efficientnet_b0",
    "googlenet",
    "squeezenet",
    "vit_b_16",
    "transformer",
    "bert",
    "gpt2",
    "llama",
]

#: Optimizers a training row can use (``--optimizer``).
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-4),
}


def resolve_models(names: list[str]) -> list[str]:
    """The models named on a command line (``all`` = every one); raises ValueError naming unknown ones."""
    models = list(MODELS) if names == ["all"] else names
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; use {list(MODELS)} or 'all'")
    return models


GB = 1e9


@dataclass
class Row:
    model: str
    mode: str
    batch: int
    ops: int
    eager_peak_gb: float
    peak_gb: float
    saved_pct: float
    lower_bound_gb: float
    solve_s: float
    method: str
    status: str
    capture_s: float
    #: Peaks measured by running each order for real (only with ``measure``; 0 otherwise).
    measured_eager_gb: float = 0.0
    measured_peak_gb: float = 0.0
    error: str = ""


def _vision(name: str) -> Callable[[int], tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]]:
    import torchvision

    def make(batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]:
        ctor = {"squeezenet": "squeezenet1_0"}.get(name, name)
        kwargs: dict[str, Any] = {"weights": None}
        if name == "googlenet":
            kwargs.update(aux_logits=False, init_weights=False)
        model = getattr(torchvision.models, ctor)(**kwargs)
        return model, (torch.randn(batch, 3, 224, 224),), torch.randint(0, 1000, (batch,))

    return make


class _Seq2Seq(nn.Module):
    """`nn.Transformer` with its default size (d_model 512, 6+6 layers), sequences of 64 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Transformer()

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.body(src, tgt)


def _transformer(batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]:
    seq = 64
    return (
        _Seq2Seq(),
        (torch.randn(seq, batch, 512), torch.randn(seq, batch, 512)),
        torch.randn(seq, batch, 512),
    )


def _hf_model(name: str) -> Callable[[int], tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]]:
    def make(batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]:
        import transformers  # optional: random weights from a config, no download

        class LogitsOnly(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, ids: torch.Tensor) -> torch.Tensor:
                return self.inner(input_ids=ids).logits

        seq = 128
        if name == "bert":
            config = transformers.BertConfig()
            inner = transformers.BertForMaskedLM(config)
        elif name == "gpt2":
            config = transformers.GPT2Config()
            inner = transformers.GPT2LMHeadModel(config)
        else:  # Llama's architecture (RMSNorm, rotary, SwiGLU, untied head) at GPT-2-small's size
            config = transformers.LlamaConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                num_key_value_heads=12,
                vocab_size=32000,
                max_position_embeddings=512,
            )
            inner = transformers.LlamaForCausalLM(config)
        ids = torch.randint(0, config.vocab_size, (batch, seq))
        return LogitsOnly(inner), (ids,), ids

    return make


def _factory(name: str) -> Callable[[int], tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]]:
    if name == "transformer":
        return _transformer
    if name in ("bert", "gpt2", "llama"):
        return _hf_model(name)
    return _vision(name)


def _loss_for(name: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    if name == "transformer":
        return nn.functional.mse_loss
    if name in ("bert", "gpt2", "llama"):
        return lambda logits, ids: nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
    return nn.functional.cross_entropy


def _create_state(optimizer: torch.optim.Optimizer) -> None:
    """Creates the optimizer's state as its first step would, without changing a parameter: one step on
    zero gradients at learning rate 0 (the state's values do not matter to a memory benchmark)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    for p in params:
        p.grad = None


def capture_with_inputs(
    name: str, mode: str, batch: int, optimizer: str = "sgd"
) -> tuple[CapturedStep, tuple[Any, ...], int]:
    """Captures one step of `name` in `mode` ("train" or "eval") at `batch` with ``optimizer`` (a key
    of `OPTIMIZERS`, its state created first); returns it with the real arguments of a call
    (``captured.run(gm, *args)``: ``(inputs, targets)``, or ``(inputs,)`` in eval mode) and the bytes of
    the optimizer's state (resident, outside the graph)."""
    torch.manual_seed(0)
    model, inputs, targets = _factory(name)(batch)
    if mode == "eval":
        model.eval()
        return capture_inference_step(model, inputs), (inputs,), 0
    model.train()
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {sorted(OPTIMIZERS)}")
    opt = OPTIMIZERS[optimizer](model.parameters())
    _create_state(opt)
    captured = capture_training_step(model, opt, _loss_for(name), inputs, targets)
    return captured, (inputs, targets), optimizer_state_bytes([opt])


def capture(name: str, mode: str, batch: int) -> CapturedStep:
    """Captures one step of `name` in `mode` ("train" or "eval") at `batch`."""
    return capture_with_inputs(name, mode, batch)[0]


def run_one(
    name: str,
    mode: str,
    batch: int,
    time_limit: float,
    method: str = "auto",
    measure: bool = False,
    optimizer: str = "sgd",
) -> Row:
    """Captures and schedules one configuration; errors become a row with `error` set. With `measure`,
    both orders also run once for real and their peaks are measured (see `measure_peak_bytes`). Peaks
    include the optimizer's state (resident, outside the graph)."""
    started = time.perf_counter()
    try:
        captured, args, state_bytes = capture_with_inputs(name, mode, batch, optimizer)
    except Exception as e:  # a model that cannot be built or traced is reported, not fatal
        return Row(
            name, mode, batch, 0, 0, 0, 0, 0, 0, "", "error", 0, error=f"{type(e).__name__}: {e}"[:200]
        )
    capture_s = time.perf_counter() - started
    gm, r = schedule_captured(captured, method=method, time_limit=time_limit)
    eager, peak = r["eager_peak_bytes"] + state_bytes, r["peak_bytes"] + state_bytes
    row = Row(
        model=name,
        mode=mode if mode == "eval" or optimizer == "sgd" else f"{mode} ({optimizer})",
        batch=batch,
        ops=r["num_ops"],
        eager_peak_gb=eager / GB,
        peak_gb=peak / GB,
        saved_pct=100.0 * (eager - peak) / eager if eager else 0.0,
        lower_bound_gb=(r["lower_bound_bytes"] + state_bytes) / GB,
        solve_s=r["solve_seconds"],
        method=r["method"],
        status=r["status"],
        capture_s=capture_s,
    )
    if measure:
        row.measured_eager_gb = (
            measure_peak_bytes(captured.graph_module, captured, *args) + state_bytes
        ) / GB
        row.measured_peak_gb = (measure_peak_bytes(gm, captured, *args) + state_bytes) / GB
    return row


HEADER = [
    "model",
    "mode",
    "batch",
    "ops",
    "eager peak (GB)",
    "reordered peak (GB)",
    "saved",
    "lower bound (GB)",
    "solve (s)",
    "method",
    "status",
    "capture (s)",
    "measured eager / reordered (GB)",
]


def markdown_row(r: Row) -> str:
    if r.error:
        cells = [r.model, r.mode, str(r.batch), "", "", "", "", "", "", "", f"error: {r.error}", "", ""]
    else:
        cells = [
            r.model,
            r.mode,
            str(r.batch),
            str(r.ops),
            f"{r.eager_peak_gb:.4f}",
            f"{r.peak_gb:.4f}",
            f"{-r.saved_pct:.1f}%",
            f"{r.lower_bound_gb:.4f}",
            f"{r.solve_s:.2f}",
            r.method,
            r.status,
            f"{r.capture_s:.1f}",
            f"{r.measured_eager_gb:.4f} / {r.measured_peak_gb:.4f}" if r.measured_eager_gb else "",
        ]
    return "| " + " | ".join(cells) + " |"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += [markdown_row(r) for r in rows]
    ok = [r for r in rows if not r.error]
    if ok:
        solves = sorted(r.solve_s for r in ok)
        median = (
            solves[len(solves) // 2]
            if len(solves) % 2
            else (solves[len(solves) // 2 - 1] + solves[len(solves) // 2]) / 2
        )
        mean_saved = sum(r.saved_pct for r in ok) / len(ok)
        lines.append("")
        lines.append(f"{len(ok)} configurations: mean saving {mean_saved:.1f}%, median solve {median:.2f} s.")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()) if rows else ["model"])
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
