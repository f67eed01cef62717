"""`model_opt.optimize` trains exactly as eager PyTorch, or refuses with a clear error.

Every case builds two identical copies (same seed), runs the user's step function eagerly on one and
through ``optimize`` on the other, interleaved, with the same data and the same RNG seed before each
call, for 4+ calls, and asserts bit-identical losses, parameters, ``.grad`` and optimizer state: the
optimizer runs as its own ``step()`` (one parameter at a time for ``torch.optim``'s), so no case needs
a tolerance. The refusals assert the message and that nothing ran.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model_opt import optimize
from model_opt.capture.dataflow import CaptureError

torch.set_num_threads(1)

StepFactory = Callable[[nn.Module, torch.optim.Optimizer], Callable[..., Any]]


class Mlp(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 32), nn.ReLU()
        )
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CheckpointedMlp(Mlp):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(checkpoint(self.body, x, use_reentrant=False))


def _batches(n: int = 5, batch: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [
        (torch.randn(batch, 8, generator=g), torch.randint(0, 4, (batch,), generator=g)) for _ in range(n)
    ]


def _plain_step(model: nn.Module, opt: torch.optim.Optimizer) -> Callable[..., torch.Tensor]:
    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return train_step


def _assert_same(a: Any, b: Any, what: str) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{what}: {a!r} vs {b!r}"
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0, msg=lambda m: f"{what}: {m}")
    else:
        assert a == b, f"{what}: {a!r} vs {b!r}"


def _assert_models_equal(
    eager: nn.Module, opt_eager: torch.optim.Optimizer, ours: nn.Module, opt_ours: torch.optim.Optimizer
) -> None:
    for (name, a), b in zip(eager.state_dict().items(), ours.state_dict().values()):
        _assert_same(a, b, name)
    for (name, p), q in zip(eager.named_parameters(), ours.parameters()):
        assert (p.grad is None) == (q.grad is None), f"{name}.grad: {p.grad} vs {q.grad}"
        if p.grad is not None:
            _assert_same(p.grad, q.grad, f"{name}.grad")
        state_a, state_b = opt_eager.state[p], opt_ours.state[q]
        assert state_a.keys() == state_b.keys(), name
        for key in state_a:
            _assert_same(state_a[key], state_b[key], f"optimizer state {name}[{key}]")


def run_faithful(
    make_model: Callable[[], nn.Module],
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    make_step: StepFactory = _plain_step,
    batches: list[tuple[Any, ...]] | None = None,
    make_schedule: Callable[[torch.optim.Optimizer], Any] | None = None,
    around_call: Callable[[], Any] | None = None,
    between: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
    method: str = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Runs both copies (see the module doc) and returns the optimized step's report; ``options`` go to
    ``optimize`` (``allow``, ``memory_budget``...)."""
    torch.manual_seed(0)
    eager_model = make_model()
    our_model = copy.deepcopy(eager_model)
    eager_opt, our_opt = make_opt(eager_model), make_opt(our_model)
    schedules = [make_schedule(o) for o in (eager_opt, our_opt)] if make_schedule else []
    batches = batches or _batches()
    eager_step = make_step(eager_model, eager_opt)
    step = optimize(
        make_step(our_model, our_opt),
        *batches[0],
        method=options.pop("method", method),
        time_limit=options.pop("time_limit", 0.5),
        **options,
    )
    for i, batch in enumerate(batches):
        results = []
        for fn, model, opt in ((eager_step, eager_model, eager_opt), (step, our_model, our_opt)):
            torch.manual_seed(100 + i)
            if around_call is None:
                results.append(fn(*batch))
            else:
                with around_call():
                    results.append(fn(*batch))
            if between is not None:
                between(i, model, opt)
        for schedule in schedules:
            schedule.step()
        _assert_same(results[0], results[1], f"call {i}: result")
    _assert_models_equal(eager_model, eager_opt, our_model, our_opt)
    report = step.report
    assert report["calls"] == len(batches) and report["eager_calls"] == 0, report
    return report


# --------------------------------------------------------------------------------------------------
# Optimizers: every torch.optim optimizer, foreach and fused variants included.

OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
    "sgd-momentum-wd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True),
    "sgd-foreach": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, foreach=True),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
    "adam-amsgrad": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, amsgrad=True),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1),
    "adamw-foreach": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, foreach=True),
    "adamw-fused": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True),
    "adagrad": lambda m: torch.optim.Adagrad(m.parameters(), lr=1e-2),
    "rmsprop": lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-2, momentum=0.5),
    "adadelta": lambda m: torch.optim.Adadelta(m.parameters()),
    "adamax": lambda m: torch.optim.Adamax(m.parameters(), lr=1e-2),
    "asgd": lambda m: torch.optim.ASGD(m.parameters(), lr=1e-2),
    "nadam": lambda m: torch.optim.NAdam(m.parameters(), lr=1e-2),
    "radam": lambda m: torch.optim.RAdam(m.parameters(), lr=1e-2),
    "rprop": lambda m: torch.optim.Rprop(m.parameters(), lr=1e-2),
    "two-param-groups": lambda m: torch.optim.AdamW(
        [{"params": m.body.parameters(), "lr": 1e-2}, {"params": m.head.parameters(), "weight_decay": 0.0}],
        lr=1e-3,
    ),
}
if hasattr(torch.optim, "Adafactor"):
    OPTIMIZERS["adafactor"] = lambda m: torch.optim.Adafactor(m.parameters(), lr=1e-2)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_torch_optim_optimizer_is_bit_identical(name: str):
    report = run_faithful(Mlp, OPTIMIZERS[name])
    assert report["captures"] == 1


class CountingAdam(torch.optim.Adam):
    """Not one of torch.optim's own: stepped as one operator, whatever it does."""

    calls = 0

    def step(self, closure: Any = None) -> Any:
        CountingAdam.calls += 1
        return super().step(closure)


def test_a_custom_optimizer_runs_its_own_step_once_per_call():
    CountingAdam.calls = 0
    run_faithful(Mlp, lambda m: CountingAdam(m.parameters(), lr=1e-2))
    assert CountingAdam.calls == 2 * 5  # eager's 5 calls and ours, not one per parameter


def test_an_optimizer_with_a_step_hook_is_stepped_once_per_call():
    counts: list[int] = []

    def make_opt(m: nn.Module) -> torch.optim.Optimizer:
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        k = len(counts)
        counts.append(0)
        opt.register_step_post_hook(lambda *_: counts.__setitem__(k, counts[k] + 1))
        return opt

    run_faithful(Mlp, make_opt)
    assert counts == [5, 5]  # eager's copy, then ours


# --------------------------------------------------------------------------------------------------
# Schedules, clipping, accumulation.


@pytest.mark.parametrize(
    "make_schedule",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 / (1 + k) ** 2),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=10),
    ],
    ids=["steplr", "lambda", "onecycle-momentum"],
)
def test_lr_schedules_take_effect_at_every_call(make_schedule: Callable[[torch.optim.Optimizer], Any]):
    report = run_faithful(
        Mlp, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), make_schedule=make_schedule
    )
    assert report["captures"] == 1  # the learning rate is read by the optimizer's step at each call


def _clipping_step(model: nn.Module, opt: torch.optim.Optimizer) -> Callable[..., torch.Tensor]:
    def train_step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        opt.step()
        opt.zero_grad()
        return loss, norm

    return train_step


def test_gradient_clipping_between_backward_and_step():
    run_faithful(Mlp, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2), _clipping_step)


def _micro_step(model: nn.Module, opt: torch.optim.Optimizer) -> Callable[..., torch.Tensor]:
    def micro_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(x), y) / 4
        loss.backward()
        return loss

    return micro_step


def test_gradient_accumulation_over_four_calls():
    def update_every_fourth(i: int, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        if i % 4 == 3:
            opt.step()
            opt.zero_grad()

    report = run_faithful(
        Mlp,
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
        _micro_step,
        batches=_batches(10),
        between=update_every_fourth,
    )
    # Without gradients and with them: two contexts, each captured once.
    assert report["captures"] == 2
    assert report["recaptures"][0]["reason"] == "gradients present"


def test_gradients_are_left_as_eager_leaves_them():
    """A step that does not zero its gradients leaves them on the parameters (then the next call
    accumulates into them), exactly as eagerly."""

    def make_step(model: nn.Module, opt: torch.optim.Optimizer) -> Callable[..., torch.Tensor]:
        def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return train_step

    run_faithful(Mlp, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), make_step)


# --------------------------------------------------------------------------------------------------
# Randomness, autocast, modes, shapes.


def test_dropout_draws_what_eager_draws():
    run_faithful(lambda: Mlp(dropout=0.3), lambda m: torch.optim.SGD(m.parameters(), lr=0.1))


def test_activation_checkpointing_recomputes_the_same_dropout_masks():
    run_faithful(lambda: CheckpointedMlp(dropout=0.3), lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))


def test_autocast_around_the_call_is_captured_as_such():
    def bf16() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    report = run_faithful(
        lambda: CheckpointedMlp(dropout=0.1),
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2),
        around_call=bf16,
    )
    # Captured without autocast by optimize(), then with it at the first call.
    assert report["captures"] == 2
    assert report["recaptures"][0]["reason"] == "autocast"


def test_a_shape_change_is_captured_on_first_sight():
    batches = [_batches(1, batch=b)[0] for b in (6, 6, 3, 6, 3)]
    report = run_faithful(Mlp, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), batches=batches)
    assert report["captures"] == 2
    assert report["recaptures"][0]["reason"] == "argument shapes, dtypes and values"


def test_train_and_eval_mode_are_captured_apart():
    def flip(i: int, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        model.train(i % 2 == 1)  # eval for the next call, then train, ...

    report = run_faithful(
        lambda: Mlp(dropout=0.3), lambda m: torch.optim.SGD(m.parameters(), lr=0.1), between=flip
    )
    assert report["captures"] == 2
    assert report["recaptures"][0]["reason"] == "train/eval mode"


class Tempered(Mlp):
    def __init__(self) -> None:
        super().__init__()
        self.temperature = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.temperature


def test_a_plain_attribute_the_forward_reads_is_guarded():
    def cool(i: int, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        model.temperature = 1.0 + 0.5 * (i % 2)

    report = run_faithful(Tempered, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), between=cool)
    assert report["captures"] == 2
    assert report["recaptures"][0]["reason"] == "module attributes and hooks"


def test_freezing_a_parameter_between_calls_is_guarded():
    def freeze_head(i: int, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        if i == 1:
            model.head.requires_grad_(False)

    report = run_faithful(Mlp, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), between=freeze_head)
    assert report["captures"] == 2
    assert report["recaptures"][0]["reason"].startswith("parameters (identity, shape")


def test_contexts_beyond_max_captures_run_eagerly_with_a_warning():
    torch.manual_seed(0)
    model = Mlp()
    reference = copy.deepcopy(model)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, reference))
    step = optimize(_plain_step(model, opt), *_batches(1, batch=2)[0], max_captures=2, method="greedy")
    eager = _plain_step(reference, ref_opt)
    with pytest.warns(UserWarning, match="captured for 2 contexts"):
        for b in (2, 3, 4, 5, 2):
            x, y = _batches(1, batch=b)[0]
            _assert_same(eager(x, y), step(x, y), f"batch {b}")
    assert (step.report["captures"], step.report["eager_calls"]) == (2, 2)
    _assert_models_equal(reference, ref_opt, model, opt)


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers, called as model(**batch).


def _hf_model(kind: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    small = {"vocab_size": 97}
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, **small)
        return transformers.GPT2LMHeadModel(cfg)
    if kind == "bert":
        cfg = transformers.BertConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, **small
        )
        return transformers.BertForMaskedLM(cfg)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        **small,
    )
    return transformers.LlamaForCausalLM(cfg)


def _hf_batches(n: int = 4, length: int = 12) -> list[tuple[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 97, (2, length), generator=g)
        mask = torch.ones_like(ids)
        mask[1, -3:] = 0  # a padded row
        out.append(({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)},))
    return out


def _hf_step(model: nn.Module, opt: torch.optim.Optimizer) -> Callable[..., torch.Tensor]:
    def train_step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss

    return train_step


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_hugging_face_models_called_with_a_batch_dict(kind: str):
    report = run_faithful(
        lambda: _hf_model(kind),
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
        _hf_step,
        batches=_hf_batches(),
        make_schedule=lambda o: torch.optim.lr_scheduler.LinearLR(
            o, start_factor=1.0, end_factor=0.1, total_iters=4
        ),
    )
    assert report["captures"] == 1
    assert report["peak_bytes"] <= report["eager_peak_bytes"]


# --------------------------------------------------------------------------------------------------
# Refusals: clear, and before anything ran.


def _refused(fn: Callable[..., Any], *args: Any, match: str, model: nn.Module) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(CaptureError, match=match):
        optimize(fn, *args, time_limit=0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_numbers_read_from_tensors_are_computed_at_every_call():
    def make_step(model: nn.Module, opt: torch.optim.Optimizer) -> Callable[..., dict[str, Any]]:
        def train_step(x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return {"loss": loss.item(), "batch": x.shape[0]}

        return train_step

    run_faithful(Mlp, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), make_step)


def test_python_that_branches_on_a_tensor_value_is_refused():
    model = Mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if loss.item() < 10.0:  # decided once at capture: refused
            opt.step()
        opt.zero_grad()
        return loss

    _refused(train_step, *_batches(1)[0], match="data-dependent", model=model)


def test_reseeding_inside_the_step_is_refused():
    model = Mlp(dropout=0.5)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        return nn.functional.cross_entropy(model(x), y)

    _refused(train_step, *_batches(1)[0], match="calls torch.manual_seed", model=model)


def test_a_module_the_function_does_not_reach_visibly_is_refused():
    model = Mlp()
    ref = weakref.ref(model)  # found only by calling it: discovery calls nothing

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(ref()(x), y)
        loss.backward()
        return loss

    _refused(train_step, *_batches(1)[0], match="pass the modules explicitly", model=model)
    # Passing it explicitly works.
    step = optimize(train_step, *_batches(1)[0], modules=[model], time_limit=0.5)
    step(*_batches(1)[0])
    assert all(p.grad is not None for p in model.parameters())


def test_ddp_two_ranks_under_torchrun_is_bit_identical(tmp_path: Path):
    """DDP (gloo, CPU, 2 ranks by torchrun) with batch-norm buffers, dropout, AdamW and accumulation
    under no_sync(): per rank, losses, parameters, buffers and gradients equal eager DDP's bit for bit;
    both ranks end with the same parameters."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found beside the interpreter")
    worker = Path(__file__).with_name("faithful_ddp_worker.py")
    prefix = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(worker), str(prefix)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        if any(
            s in tail for s in ("DistNetworkError", "RendezvousConnectionError", "Network is unreachable")
        ):
            pytest.skip(f"torchrun cannot start its rendezvous on this machine:\n{tail}")
        raise AssertionError(f"torchrun exited with {proc.returncode}:\n{tail}")
    ranks = [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["losses"] == r["eager_losses"], r
        assert r["state_equal"] and r["grads_equal"], r
        assert r["report"]["eager_calls"] == 0, r["report"]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]


def test_ddp_options_it_does_not_reproduce_and_data_parallel_are_refused(tmp_path: Path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(Mlp(), find_unused_parameters=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        _refused(
            _plain_step(model, opt),
            *_batches(1)[0],
            match="DistributedDataParallel with find_unused_parameters=True is not supported",
            model=model,
        )
    finally:
        dist.destroy_process_group()
    model = nn.DataParallel(Mlp())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _refused(_plain_step(model, opt), *_batches(1)[0], match="the step uses a DataParallel", model=model)


def test_the_step_does_not_touch_real_state_while_capturing():
    """optimize() only traces: parameters, gradients, optimizer state and the RNG are as they were."""
    model = CheckpointedMlp(dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = torch.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = optimize(_clipping_step(model, opt), *_batches(1)[0], time_limit=0.5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not opt.state and all(p.grad is None for p in model.parameters())
    assert step.report["captures"] == 1 and step.report["calls"] == 0


def test_the_shorthand_form_is_the_step_function_form():
    torch.manual_seed(0)
    model = Mlp(dropout=0.2)
    reference = copy.deepcopy(model)
    opt, ref_opt = (torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, reference))
    step = optimize(model, opt, nn.functional.cross_entropy, *_batches(1)[0], time_limit=0.5)
    for i, (x, y) in enumerate(_batches()):
        torch.manual_seed(i)
        got = step(x, y)
        torch.manual_seed(i)
        ref_opt.zero_grad()
        want = nn.functional.cross_entropy(reference(x), y)
        want.backward()
        ref_opt.step()
        _assert_same(got, want, f"call {i}")
    ref_opt.zero_grad(set_to_none=True)
    _assert_models_equal(reference, ref_opt, model, opt)
