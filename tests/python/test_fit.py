"""`model_opt.fit` and `model-opt fit`: the search, the step as a function of its size, the three
estimates, and the caching allocator model on a device of limited size."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import model_opt
from model_opt import _native
from model_opt.apps.models import ALL_MODELS
from model_opt.capture.step import StepState, capture_step
from model_opt.errors import ArgumentError
from model_opt.fit import Fitting, fit, optimizer, parse_memory
from model_opt.fit.estimate import buffers_of_order, kept_segments
from model_opt.fit.family import StepFamily
from model_opt.fit.optimizer import add_step_temporaries
from model_opt.fit.search import largest_fitting

torch.set_num_threads(1)
MIB = 2**20


# --- the search ------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 2, 3, 37, 64, 65, 1000, 4095, 4096])
def test_the_search_finds_the_threshold_in_few_tries(threshold: int) -> None:
    tried: list[int] = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= threshold

    assert largest_fitting(fits, 1, 4096) == threshold
    assert len(tried) <= 2 * 12 + 2, tried


def test_the_search_says_when_nothing_fits_and_refuses_bad_ranges() -> None:
    assert largest_fitting(lambda n: False, 1, 4096) is None
    assert largest_fitting(lambda n: True, 3, 5) == 5
    with pytest.raises(ValueError):
        largest_fitting(lambda n: True, 0, 4)
    with pytest.raises(ValueError):
        largest_fitting(lambda n: True, 5, 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GiB", 16 * 2**30),
        ("80GB", 80 * 10**9),
        ("1.5TiB", 3 * 2**39),
        ("4096", 4096),
        (" 2 mib ", 2 * MIB),
    ],
)
def test_memory_sizes_are_read_with_their_units(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "16 GiBs", "lots", "-1GiB", "0", "1e9"])
def test_bad_memory_sizes_are_refused(text: str) -> None:
    with pytest.raises(ArgumentError, match="memory"):
        parse_memory(text)


# --- a small step ---------------------------------------------------------------------------------


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> object:
    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return train_step


def _mlp_step() -> tuple[nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt, _train_step(model, opt)


def _batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, 32), torch.randint(0, 10, (b,))


def _capture(model: nn.Module, opt: torch.optim.Optimizer, step: object, b: int) -> object:
    return capture_step(step, _batch(b), {}, StepState.of([model], [opt])).dataflow  # type: ignore[arg-type]


def test_the_step_at_any_size_is_the_step_captured_at_that_size() -> None:
    model, opt, step = _mlp_step()
    family = StepFamily.of(lambda b: _capture(model, opt, step, b))  # type: ignore[arg-type, return-value]
    assert family.exact and family.captures == 4
    for b in (12, 100, 999):
        assert family.at(b) == _capture(model, opt, step, b).native_args()  # type: ignore[attr-defined]
    assert family.captures == 4, "fitted sizes are not captured"
    family.at(1)  # below the fitted sizes: captured for real
    assert family.captures == 5


def test_a_step_whose_graph_changes_with_the_size_is_captured_at_every_size() -> None:
    model, opt, _ = _mlp_step()

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model(x)
        if x.shape[0] > 7:  # a size-dependent branch: one more operator from batch 8 on
            out = out * 2
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    family = StepFamily.of(lambda b: _capture(model, opt, train_step, b))  # type: ignore[arg-type, return-value]
    assert not family.exact
    assert family.at(20) == _capture(model, opt, train_step, 20).native_args()  # type: ignore[attr-defined]
    assert family.captures == 5


def test_buffer_lifetimes_give_the_simulators_live_bytes() -> None:
    model, opt, step = _mlp_step()
    num_ops, tensors, edges, resident = _capture(model, opt, step, 16).native_args()  # type: ignore[attr-defined]
    order = list(range(num_ops))
    live = [resident] * num_ops
    for lower, upper, size in buffers_of_order(tensors, order):
        for t in range(lower, upper):
            live[t] += size
    assert live == list(_native.simulate_order(num_ops, tensors, edges, order, resident))


def test_the_largest_batch_is_the_one_the_budget_was_made_for() -> None:
    # Known by construction: a budget equal to what the arena needs at the first batch from 37 on
    # whose next batch needs more fits that batch, not the next (the arena grows in 512-byte slots, so
    # neighbouring batches may need the same).
    model, opt, step = _mlp_step()
    fitting = Fitting(step, _batch, sizes=(1, 4096), modules=[model], optimizers=[opt])
    b = 37
    while fitting.at(b + 1)["arena_bytes"] == fitting.at(b)["arena_bytes"]:
        b += 1
    at_b = fitting.at(b)
    assert b < 60, "the arena grows with the batch"
    report = fitting.report(at_b["arena_bytes"])
    assert report["largest"]["arena"] == b
    # AdamW before its first step: its state probed on a small copy, 2 floats per parameter; the
    # user's optimizer is left as it was.
    assert report["optimizer_state_bytes"] == 2 * sum(p.numel() * 4 for p in model.parameters())
    assert not opt.state
    # The step's temporaries (Adam on CPU: 2 floats per element of the parameter it updates).
    assert report["optimizer_step_temporaries_bytes"] == 2 * 64 * 64 * 4
    # With a budget made for PyTorch at batch b, its answer is at least b (its needs grow in 2 MiB
    # segments, so several batches may need the same), and the next batch needs more than the budget.
    budget = at_b["pytorch_bytes"]
    report = fitting.report(budget)
    n = report["largest"]["pytorch"]
    evaluated = {e["size"]: e for e in report["evaluations"]}
    assert n is not None and n >= b and evaluated[n]["pytorch_bytes"] <= budget
    assert n < 4096 and evaluated[n + 1]["pytorch_bytes"] > budget
    # No way needs less than the live bytes of its order; the arena holds them exactly or more.
    for e in report["evaluations"]:
        assert e["arena_bytes"] >= e["eager_live_peak_bytes"]
        assert e["pytorch_reserved_bytes"] >= e["pytorch_bytes"] >= e["eager_live_peak_bytes"]
    assert report["fitted"] and report["model"] is None
    arena = report["largest"]["arena"]
    # A step this small fits PyTorch's segments beside the weights, where the arena is apart from them.
    assert report["ratio_arena"] == (None if arena is None else pytest.approx(arena / n))
    # fit() is the same in one call.
    assert (
        fit(step, _batch, memory=budget, sizes=(1, 4096), modules=[model], optimizers=[opt])["largest"]
        == (report["largest"])
    )


def test_the_optimizer_step_temporaries_are_live_while_their_operator_runs() -> None:
    model, opt, step = _mlp_step()
    df = _capture(model, opt, step, 16)
    with_temps = add_step_temporaries(df, 2.0)  # type: ignore[arg-type]
    added = with_temps.tensors[len(df.tensors) :]  # type: ignore[attr-defined]
    assert len(added) == sum(1 for p in model.parameters())  # one optimizer operator per parameter
    assert sorted(size for size, *_ in added) == sorted(2 * p.numel() * 4 for p in model.parameters())
    assert all(consumers == [] and not output for _, _, consumers, output in added)


def test_a_budget_below_the_smallest_size_fits_nothing() -> None:
    model, opt, step = _mlp_step()
    report = fit(step, _batch, memory=1024, sizes=(1, 64), modules=[model], optimizers=[opt])
    assert report["largest"] == {"pytorch": None, "arena": None, "reordered": None}
    assert report["ratio_arena"] is None and report["at_largest"]["arena"] is None


# --- the caching allocator model on a limited device -----------------------------------------------


def test_the_caching_model_runs_out_of_memory_below_its_smallest_device(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(f"id,lower,upper,size\na,0,1,{12 * MIB}\nb,1,2,{14 * MIB}\nc,0,2,1000\n")
    smallest = model_opt._native.caching_allocator_smallest_device(trace)
    assert smallest == 16 * MIB
    fitted = model_opt.caching_allocator_peak(trace, capacity=smallest)
    assert fitted["cache_flushes"] == 1 and fitted["reserved_peak_bytes"] == 16 * MIB
    assert model_opt.caching_allocator_peak(trace)["reserved_peak_bytes"] == 28 * MIB
    with pytest.raises(model_opt.CapacityError, match=r"out of memory: buffer 1 of 14680064 bytes"):
        model_opt.caching_allocator_peak(trace, capacity=smallest - 1)


# --- the command ----------------------------------------------------------------------------------

SCRIPT = """
import torch
from torch import nn

def setup():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def train_step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return train_step, lambda b: (torch.randn(b, 32), torch.randint(0, 10, (b,)))
"""


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_opt.cli", "fit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_fit_on_a_script_prints_json_and_draws_the_plot(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    script.write_text(SCRIPT)
    png = tmp_path / "fit.png"
    r = _cli("--script", f"{script}:setup", "--memory", "8MiB", "--batch-size-range", "1:100000", "--json",
             "--plot", png)  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["memory_bytes"] == 8 * MIB and report["variable"] == "batch_size"
    n = report["largest"]["arena"]
    assert isinstance(n, int) and 1 < n < 100000
    assert report["optimizer_state_bytes"] == 4 * (32 * 64 + 64 + 64 * 10 + 10)  # one momentum buffer
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_remat_prints_the_remat_way_and_what_it_recomputes(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    script.write_text(SCRIPT)
    r = _cli("--script", f"{script}:setup", "--memory", "8MiB", "--batch-size-range", "1:1000", "--remat")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^  model_opt remat \+ reordered \+ arena +\d+", r.stdout, re.M), r.stdout
    line = re.search(
        r"^  remat: (\d+) operators recomputed \(\+(\d+\.\d)% of the step's operations\), "
        r"chosen at size 1000 ",
        r.stdout,
        re.M,
    )
    assert line is not None, r.stdout
    assert float(line[2]) <= 20.0


def test_fit_refuses_bad_arguments_with_one_line() -> None:
    r = _cli("--model", "resnet18", "--memory", "lots")
    assert r.returncode == 2 and r.stderr.startswith("model-opt fit: memory 'lots' is not a size"), r.stderr
    r = _cli("--model", "all", "--memory", "1GiB")
    assert r.returncode == 2 and "one model" in r.stderr, r.stderr
    r = _cli("--script", "nowhere.py:setup", "--memory", "1GiB")
    assert r.returncode == 2 and "cannot read nowhere.py" in r.stderr, r.stderr
    r = _cli("--model", "resnet18", "--memory", "1GiB", "--batch-size-range", "8:2")
    assert r.returncode == 2 and "8 is above 2" in r.stderr, r.stderr


# --- registry models: built with fake tensors, in a training precision -----------------------------


def test_registry_models_are_built_with_fake_tensors_in_their_dtype() -> None:
    from torch._subclasses.fake_tensor import FakeTensor

    from model_opt.fit.registry import build_fake

    model, opt = build_fake("gpt2", "adamw", torch.bfloat16)
    params = list(model.parameters())
    assert params and all(isinstance(p, FakeTensor) and p.dtype == torch.bfloat16 for p in params)
    # The optimizer's state is created as its first step would, fake too, in the parameters' type.
    state = opt.state[params[0]]
    assert isinstance(state["exp_avg"], FakeTensor) and state["exp_avg"].dtype == torch.bfloat16
    assert state["exp_avg"].shape == params[0].shape


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_registry_model_builds_with_fake_tensors(name: str) -> None:
    from torch._subclasses.fake_tensor import FakeTensor

    from model_opt.fit.registry import build_fake

    model, opt = build_fake(name, "sgd", torch.float32)
    params = list(model.parameters())
    assert params and all(isinstance(p, FakeTensor) for p in params)
    # One fake mode for all (a trace takes one; nn.Transformer deep-copies its layers).
    assert len({id(t.fake_mode) for t in [*params, *model.buffers()]}) == 1
    assert torch.nn.init.trunc_normal_.__name__ == "trunc_normal_", "the initialisers are given back"


def test_precision_changes_what_the_step_holds() -> None:
    # resnet18 at batch 8 three ways: float32, bfloat16 parameters, float32 parameters under autocast.
    from model_opt.fit import prepare_model

    def at(**precision: object) -> tuple[int, dict[str, int]]:
        fitting = prepare_model("resnet18", sizes=(1, 64), time_limit=0.5, **precision)  # type: ignore[arg-type]
        # AdamW's state: two tensors like each parameter, and a float32 step count per parameter tensor.
        counts = 4 * len(list(fitting.modules[0].parameters()))
        assert fitting.state_bytes == 2 * fitting.weights_bytes + counts
        return fitting.weights_bytes, dict(fitting.at(8))

    (w32, fp32), (w16, bf16), (w_amp, amp) = at(), at(dtype="bf16"), at(amp=True)
    assert w16 * 2 == w32 == w_amp
    # Activations: bfloat16 halves them (within the float32 statistics batch norm keeps); autocast
    # keeps float32 copies of what it casts, so it lands between the two.
    act = {k: e["eager_live_peak_bytes"] - e["resident_bytes"] - e["optimizer_state_bytes"] for k, e in
           (("fp32", fp32), ("bf16", bf16), ("amp", amp))}  # fmt: skip
    assert 0.45 < act["bf16"] / act["fp32"] < 0.6
    assert act["bf16"] < act["amp"] < act["fp32"]


def test_fit_refuses_precision_options_with_a_script(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    script.write_text(SCRIPT)
    for option in (["--dtype", "bf16"], ["--amp"], ["--optimizer", "sgd"]):
        r = _cli("--script", f"{script}:setup", "--memory", "1GiB", *option)
        assert r.returncode == 2 and "--optimizer, --dtype and --amp go with --model" in r.stderr, r.stderr


def _llama_1b_params() -> int:
    # TinyLlama's shape (`model_opt.apps.models`), counted from its config by hand: embeddings and an
    # untied head, 22 layers of attention with 4 key/value heads of 64, SwiGLU, two RMSNorms a layer.
    hidden, inter, layers, vocab, kv = 2048, 5632, 22, 32000, 4 * 64
    attention = hidden * hidden * 2 + hidden * kv * 2
    layer = attention + 3 * hidden * inter + 2 * hidden
    return 2 * vocab * hidden + layers * layer + hidden


def test_a_billion_parameter_model_fits_without_its_memory() -> None:
    # The command in a process of its own that reports its own peak resident memory when it is done.
    argv = ["fit", "--model", "llama_1b", "--memory", "24GiB", "--batch-size-range", "1:64", "--dtype",
            "bf16", "--json", "--time-limit", "0.5"]  # fmt: skip
    code = (
        "import resource, sys; from model_opt.cli.main import main; rc = main(sys.argv[1:]); "
        "print('peak_rss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr); "
        "sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    n = _llama_1b_params()
    assert n > 1_000_000_000
    assert report["weights_bytes"] == 2 * n and report["dtype"] == "bf16" and report["amp"] is False
    # AdamW: two bfloat16 tensors a parameter, and a 4-byte step count per parameter tensor.
    assert report["optimizer_state_bytes"] == 2 * 2 * n + 4 * (22 * 9 + 3)
    assert report["largest"]["arena"] is not None and report["largest"]["arena"] >= 1
    # Built for real, its bfloat16 weights and state alone would be 6.6 GB; the run stayed far below.
    peak_rss = int(r.stderr.split("peak_rss ")[1].split()[0])
    assert peak_rss < 3 * 2**30, peak_rss


def test_the_optimizer_state_is_made_at_the_first_optimizer_operator() -> None:
    # torch.optim makes a step's missing state for every parameter before it updates any.
    model, opt, step = _mlp_step()
    df = _capture(model, opt, step, 16)
    made = optimizer.state_made_by(df, 2.0)  # type: ignore[arg-type]
    first = min(i for i, node in enumerate(df.ops) if "optimizer_step" in str(node.target))  # type: ignore[attr-defined]
    assert {i for i, _ in made} == {first}
    assert sorted(n for _, n in made) == sorted(2 * [p.numel() * 4 for p in model.parameters()])


def test_kept_segments_are_those_holding_an_allocation_at_the_end(tmp_path: Path) -> None:
    # A 12 MiB buffer kept (a segment of its own, 12 MiB), then a 3 MiB one (a 20 MiB segment) freed:
    # only the kept one's segment stays once the cache is given back, with the 2 MiB segment of a small
    # buffer kept beside them.
    trace = tmp_path / "t.csv"
    trace.write_text(f"id,lower,upper,size\nb,0,9,{12 * MIB}\na,1,2,{3 * MIB}\nc,1,9,100\n")
    events = _native.caching_allocator_replay(trace)["events"]
    assert kept_segments(events, 9) == 12 * MIB + 2 * MIB
    assert kept_segments(events, 2) == 12 * MIB + 20 * MIB + 2 * MIB


def test_resident_tensors_are_allocations_of_their_own() -> None:
    # Known by construction: one 3 MiB weight, plain SGD (no state), a tiny batch. The caching
    # allocator puts a 1-10 MiB tensor in a 20 MiB segment; PyTorch's step then takes the 3 MiB
    # gradient from the same segment's free 17 MiB, and the small tensors (the input, the output,
    # the loss) from one 2 MiB segment: 22 MiB in all. Under model_opt the weight and the input sit in
    # the pool (the same 20 + 2 MiB) and the step in the arena beside it, the gradient included.
    model = nn.Linear(1024, 768, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train_step(x: torch.Tensor) -> torch.Tensor:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    fitting = Fitting(
        train_step, lambda b: (torch.randn(b, 1024),), sizes=(1, 8), modules=[model], optimizers=[opt]
    )
    e = fitting.at(2)
    assert fitting.residents.tensors == (3 * MIB,) and fitting.residents.optimizer_state == ()
    assert e["pytorch_bytes"] == 22 * MIB
    assert 25 * MIB <= e["arena_bytes"] < 26 * MIB


def _deep_mlp_step() -> tuple[nn.Module, torch.optim.Optimizer, object]:
    """Activations dominate: what recomputation lowers."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(128, 128), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, _train_step(model, opt)


def test_remat_is_chosen_once_and_fits_a_larger_batch_at_every_size() -> None:
    model, opt, step = _deep_mlp_step()

    def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(b, 128), torch.randint(0, 10, (b,))

    fitting = Fitting(step, batch, sizes=(1, 4096), modules=[model], optimizers=[opt], remat=True)
    assert fitting.remat is not None and fitting.remat["chosen_at"] == 4096
    assert fitting.remat is not None and fitting.remat["recomputed"], fitting.remat
    assert 0 < fitting.remat["extra_compute"] <= 0.2
    # The choice made at one size is made again at every capture: one structure, fitted exactly.
    assert fitting.remat_family is not None and fitting.remat_family.exact
    big = fitting.at(2048)
    assert big["remat_bytes"] is not None and big["remat_bytes"] < big["reordered_bytes"]
    report = fitting.report(big["reordered_bytes"])
    assert report["largest"]["reordered"] is not None
    assert report["largest"]["remat"] > report["largest"]["reordered"]
    assert report["ratio_remat"] == pytest.approx(report["largest"]["remat"] / report["largest"]["pytorch"])
    # Without remat there is no such way, and the estimate says so.
    plain = Fitting(step, batch, sizes=(1, 4096), modules=[model], optimizers=[opt])
    assert "remat" not in plain.report(big["reordered_bytes"])["largest"]
    assert plain.at(64)["remat_bytes"] is None


class _SizeOneSwitches(nn.Module):
    """A deep MLP whose activation depends on the batch: ReLU for one example, Tanh for more (a size-1
    special case, as vit_b_16 has one): at batch 1 the step has other operators."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(128, 128) for _ in range(6))
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.relu if x.shape[0] == 1 else torch.tanh
        for layer in self.layers:
            x = act(layer(x))
        return self.head(x)


def test_a_size_whose_step_differs_gets_a_remat_choice_of_its_own() -> None:
    torch.manual_seed(0)
    model = _SizeOneSwitches()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(b, 128), torch.randint(0, 10, (b,))

    fitting = Fitting(
        _train_step(model, opt), batch, sizes=(1, 4096), modules=[model], optimizers=[opt], remat=True
    )
    assert fitting.remat is not None and fitting.remat["chosen_again_at"] == []
    one, two = fitting.at(1), fitting.at(2)
    # The choice names tanh nodes batch 1 lacks: that size was chosen for afresh, and still recomputes.
    assert fitting.remat["chosen_again_at"] == [1]
    assert "remat" in fitting.ways
    assert one["remat_bytes"] is not None and two["remat_bytes"] is not None
    assert fitting.remat_family is not None
    # More operators than the plain step at that size: some are recomputed.
    assert fitting.remat_family.at(1)[0] > fitting.family.at(1)[0]
