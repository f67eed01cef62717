"""The main-job demo: train a real torchvision model end to end with model_opt and report what it saves.

``run_demo`` builds the model (random weights, no download), keeps an identical copy for an eager
reference run (plain PyTorch, same weights, same data), then:

1. captures and reorders the training step, a plain function (``model_opt.optimize(train_step, x, y)``);
2. installs model_opt's allocator (CPU: the C++ shim; CUDA: the pluggable allocator, before CUDA starts),
   runs one warm-up step, profiles one step and plans it (``model_opt.plan``);
3. runs the planned steps inside ``model_opt.step()`` and checks their losses against the eager run;
4. saves the recorded trace and, when this build has it, replays it through the model of PyTorch's
   caching allocator (``model_opt.caching_allocator_peak``);
5. times the same reordered step on PyTorch's default allocator (CPU only: CUDA cannot switch back).

The report is a dict (see `DemoReport`); `format_report` prints it. Progress goes to stderr.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model_opt._native import ModelOptError
from model_opt.apps import models


class DemoError(ModelOptError, RuntimeError):
    """The demo could not run (bad argument, missing dependency, no GPU for --device cuda)."""


@dataclass
class DemoReport:
    """Everything the demo measured. Byte counts are bytes; times are seconds."""

    model: str
    device: str
    batch_size: int
    image_size: int
    steps: int
    #: Simulated live-bytes peak of the captured step in eager order and in the reordered order
    #: (resident state included), and the order-independent lower bound.
    eager_live_peak_bytes: int = 0
    reordered_live_peak_bytes: int = 0
    schedule_lower_bound_bytes: int = 0
    #: Bytes resident for the whole step in the captured graph (weights, optimizer state, inputs).
    resident_bytes: int = 0
    reorder_method: str = ""
    reorder_status: str = ""
    capture_seconds: float = 0.0
    reorder_solve_seconds: float = 0.0
    #: The plan of the profiled step's transient buffers.
    plan_buffers: int = 0
    arena_bytes: int = 0
    plan_lower_bound_bytes: int = 0
    persistent_bytes: int = 0
    plan_method: str = ""
    plan_seconds: float = 0.0
    #: PyTorch's caching allocator on the same trace (None when this build has no model of it).
    caching_reserved_bytes: int | None = None
    caching_fragmentation: float | None = None
    caching_detail: dict[str, Any] | None = None
    caching_error: str = ""
    #: Median step times: the reordered step on model_opt's arena, the same step on PyTorch's default
    #: allocator (None on CUDA: the allocator cannot be switched back), and plain eager PyTorch.
    step_seconds_model_opt: float = 0.0
    step_seconds_default: float | None = None
    step_seconds_eager: float = 0.0
    divergences: int = 0
    planned_hits: int = 0
    fallback_allocations: int = 0
    losses: list[float] = field(default_factory=list)
    eager_losses: list[float] = field(default_factory=list)
    losses_match: bool = False
    trace_csv: str = ""
    plots: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


class _Progress:
    """One line per phase on stderr with the elapsed time (no dependency on tqdm)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[demo {time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)


def _check_losses(got: list[float], want: list[float], exact: bool) -> bool:
    if len(got) != len(want):
        return False
    if exact:
        return got == want
    return all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5) for a, b in zip(got, want))


def _caching_allocator(trace: Path, report: DemoReport) -> None:
    """Fills the caching-allocator columns: what PyTorch's CUDA caching allocator would reserve."""
    import model_opt

    detail = dict(model_opt.caching_allocator_peak(str(trace)))
    report.caching_detail = {k: v for k, v in detail.items() if isinstance(v, (int, float, str, bool))}
    report.caching_reserved_bytes = int(detail["reserved_peak_bytes"])
    report.caching_fragmentation = float(detail["fragmentation"])


def _plots(folder: Path, step: Any, report: DemoReport) -> list[str]:
    """Writes the plan and live-bytes plots of the demo; returns their paths. The plan drawn is the
    one the runtime installed and served (``plan.csv`` beside the plots), not a new plan of the trace."""
    import model_opt
    from model_opt.plot import live_bytes_of_step, plot_live_bytes, plot_plan

    folder.mkdir(parents=True, exist_ok=True)
    solution = model_opt.save_plan(folder / "plan.csv")[0]
    out = [plot_plan(solution, folder / "plan.png", title=f"{report.model} training step: planned arena")]
    lines = {"resident + arena (measured step)": report.resident_bytes + report.arena_bytes}
    if report.caching_reserved_bytes is not None:
        lines["resident + caching allocator"] = report.resident_bytes + report.caching_reserved_bytes
    out.append(
        plot_live_bytes(
            live_bytes_of_step(step),
            folder / "live_bytes.png",
            lines,
            title=f"{report.model}: simulated live bytes (resident state included)",
        )
    )
    return [str(p) for p in out]


def run_demo(
    model: str = "resnet18",
    batch_size: int = 4,
    steps: int = 3,
    image_size: int = 64,
    device: str = "cpu",
    time_limit: float = 5.0,
    threads: int | None = None,
    progress: bool = True,
    trace_dir: str | Path | None = None,
    plot_dir: str | Path | None = None,
) -> DemoReport:
    """Trains ``model`` for ``steps`` planned steps with model_opt and checks it against eager PyTorch.

    Args:
        model: a torchvision classifier name from `models.DEMO_MODELS` (random weights, 10 classes).
        batch_size, image_size: the shape of the random batches (``batch x 3 x size x size``).
        steps: planned steps (after one warm-up and one profiled step; the eager run does all of them).
        device: "cpu" (the CPU shim) or "cuda" (the pluggable allocator; must run before CUDA starts).
        time_limit: seconds for each of the reorder solve and the placement plan.
        threads: torch CPU threads (None: leave PyTorch's default).
        progress: print one line per phase on stderr.
        trace_dir: where to write the recorded trace (default: a temporary directory, removed after).
        plot_dir: when given, write ``plan.png`` (the trace planned, address vs time) and
            ``live_bytes.png`` (simulated live bytes, eager order vs reordered, with the arena) there.

    Returns:
        A `DemoReport`; ``report.problems`` lists every failed check (empty when all passed).

    Raises:
        DemoError: on a bad argument or when the device is unavailable.
    """
    if steps < 1 or batch_size < 1 or image_size < 32:
        raise DemoError("--steps and --batch-size must be >= 1 and --image-size >= 32")
    if device not in ("cpu", "cuda"):
        raise DemoError(f"unknown device {device!r}; use cpu or cuda")
    if model not in models.DEMO_MODELS:
        raise DemoError(f"unknown model {model!r}; use one of {', '.join(models.DEMO_MODELS)}")
    say = _Progress(progress)
    import torch
    from torch import nn

    import model_opt
    from model_opt import runtime

    if device == "cuda":
        # PyTorch takes its allocator once, before CUDA is initialized: install it first of all.
        if not torch.cuda.is_available():
            raise DemoError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        torch.cuda.memory.change_current_allocator(model_opt.allocator())
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)

    say(f"building {model} (random weights), batch {batch_size}, {image_size}x{image_size} images")
    torch.manual_seed(0)
    net = models.classifier(model).to(dev)
    reference = copy.deepcopy(net)  # identical weights, before any step
    total = steps + 2  # warm-up, profiled, then the planned steps
    batches = [
        (
            torch.randn(batch_size, 3, image_size, image_size, device=dev),
            torch.randint(0, models.NUM_CLASSES, (batch_size,), device=dev),
        )
        for _ in range(total)
    ]
    loss_fn = nn.functional.cross_entropy

    def make_opt(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    report = DemoReport(model=model, device=device, batch_size=batch_size, image_size=image_size, steps=steps)

    # The eager reference: plain PyTorch on the identical copy. On CPU it runs on PyTorch's default
    # allocator (model_opt's is installed after it); on CUDA, on model_opt's fallback pool (outside any
    # step), since the allocator had to be installed before CUDA started.
    say(f"eager reference: {total} steps of plain PyTorch")
    ref_opt = make_opt(reference)
    eager_times = []
    # Dropout draws from the generator: each model_opt step gets the state its eager step started from.
    rng_states: list[Any] = []

    def get_rng() -> Any:
        return torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()

    def set_rng(i: int) -> None:
        if device == "cuda":
            torch.cuda.set_rng_state(rng_states[i])
        else:
            torch.set_rng_state(rng_states[i])

    def train_step_of(m: nn.Module, opt: torch.optim.Optimizer) -> Any:
        """The training step as a user writes it; the eager run calls it as is, model_opt optimizes it."""

        def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            loss = loss_fn(m(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        return train_step

    eager_step = train_step_of(reference, ref_opt)
    for x, y in batches:
        rng_states.append(get_rng())
        t = time.perf_counter()
        loss = eager_step(x, y)
        report.eager_losses.append(float(loss.item()))
        sync()
        eager_times.append(time.perf_counter() - t)
    report.step_seconds_eager = statistics.median(eager_times[2:] or eager_times)

    # 1. Capture and reorder.
    say(f"capturing and reordering the training step (time limit {time_limit:g} s)")
    optimizer = make_opt(net)
    step = model_opt.optimize(train_step_of(net, optimizer), *batches[0], time_limit=time_limit)
    r = step.report
    report.eager_live_peak_bytes = int(r["eager_peak_bytes"])
    report.reordered_live_peak_bytes = int(r["peak_bytes"])
    report.schedule_lower_bound_bytes = int(r["lower_bound_bytes"])
    report.resident_bytes = int(r.get("resident_bytes", 0))
    report.reorder_method, report.reorder_status = str(r["method"]), str(r["status"])
    report.capture_seconds = float(r.get("capture_seconds", 0.0))
    report.reorder_solve_seconds = float(r["solve_seconds"])
    say(
        f"reordered {r['num_ops']} operators: live peak {_mib(report.eager_live_peak_bytes)} -> "
        f"{_mib(report.reordered_live_peak_bytes)} ({r['method']}, {r['status']}, "
        f"{report.reorder_solve_seconds:.2f} s)"
    )

    # 2. The runtime: install, warm up, profile one step, plan.
    if device == "cpu":
        say("installing model_opt's CPU allocator (compiled once, then cached)")
        model_opt.install_cpu_allocator()
    losses: list[float] = []
    say("warm-up step, then one profiled step")
    set_rng(0)
    losses.append(float(step(*batches[0])))
    set_rng(1)
    with model_opt.profile():
        losses.append(float(step(*batches[1])))
    say(f"planning the recorded step (time limit {time_limit:g} s)")
    plan = model_opt.plan(time_limit=time_limit)
    report.plan_buffers = int(plan["buffers"])
    report.arena_bytes = int(plan["arena_bytes"])
    report.plan_lower_bound_bytes = int(plan["lower_bound_bytes"])
    report.persistent_bytes = int(plan.get("persistent_bytes", 0))
    report.plan_method = str(plan.get("method", ""))
    report.plan_seconds = float(plan.get("seconds", 0.0))

    # 3. The planned steps.
    before = model_opt.stats()
    planned_times = []
    for i, (x, y) in enumerate(batches[2:]):
        set_rng(i + 2)
        t = time.perf_counter()
        with model_opt.step():
            losses.append(float(step(x, y)))
            sync()
        planned_times.append(time.perf_counter() - t)
        say(f"planned step {i + 1}/{steps}: loss {losses[-1]:.4f}, {planned_times[-1] * 1e3:.1f} ms")
    after = model_opt.stats()
    report.divergences = int(after["divergences"]) - int(before["divergences"])
    report.planned_hits = int(after["planned_hits"]) - int(before["planned_hits"])
    report.fallback_allocations = int(after["fallback_allocations"]) - int(before["fallback_allocations"])
    # The optimizer's state (created by its first step, outside the captured graph) is resident in both
    # orders: the simulated peaks leave it out, the report adds it.
    state_bytes = int(step.report["optimizer_state_bytes"])
    report.eager_live_peak_bytes += state_bytes
    report.reordered_live_peak_bytes += state_bytes
    report.schedule_lower_bound_bytes += state_bytes
    report.resident_bytes += state_bytes
    report.losses = losses
    report.losses_match = _check_losses(losses, report.eager_losses, exact=(device == "cpu"))

    # 4. The trace, and PyTorch's caching allocator on it.
    with tempfile.TemporaryDirectory(prefix="model_opt_demo_") as tmp:
        folder = Path(trace_dir) if trace_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        trace, _ = model_opt.save_trace(folder / f"{model}_b{batch_size}_trace.csv")
        report.trace_csv = str(trace) if trace_dir is not None else ""
        try:
            _caching_allocator(trace, report)
        except Exception as e:  # the comparison is informative: its failure is shown, not a failed check
            report.caching_error = f"{type(e).__name__}: {e}"[:200]
        if plot_dir is not None:
            say(f"plotting into {plot_dir}")
            report.plots = _plots(Path(plot_dir), step, report)

    # 5. Step times: the reordered step on PyTorch's default allocator, then on model_opt's arena, in
    # blocks of `steps` timed steps, each block after one untimed step (the first step after a switch
    # frees the other allocator's tensors). CUDA cannot switch allocators: its time is the planned steps'.
    report.step_seconds_model_opt = statistics.median(planned_times)
    if device == "cpu":
        say(f"timing the reordered step: {steps} steps on PyTorch's default allocator, {steps} on the arena")
        runtime.restore_default_cpu_allocator()
        default_times = []
        for x, y in batches[1:]:
            t = time.perf_counter()
            step(x, y)
            default_times.append(time.perf_counter() - t)
        report.step_seconds_default = statistics.median(default_times[1:])
        model_opt.install_cpu_allocator()
        arena_times = []
        for x, y in batches[1:]:
            t = time.perf_counter()
            with model_opt.step():
                step(x, y)
            arena_times.append(time.perf_counter() - t)
        report.step_seconds_model_opt = statistics.median(arena_times[1:])

    # The checks.
    if not report.losses_match:
        report.problems.append(f"losses differ from eager: model_opt {losses} vs eager {report.eager_losses}")
    if report.reordered_live_peak_bytes > report.eager_live_peak_bytes:
        report.problems.append("the reordered live peak is above the eager order's")
    if report.arena_bytes < report.plan_lower_bound_bytes:
        report.problems.append("the arena is below the lower bound (the plan is invalid)")
    if report.divergences:
        report.problems.append(
            f"{report.divergences} allocations diverged from the plan (served by the fallback pool)"
        )
    if report.planned_hits == 0:
        report.problems.append("no allocation was served from the plan")
    say("done")
    return report


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.2f} MiB"


def _ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e3:.1f} ms"


def format_report(r: DemoReport) -> str:
    """The report as a short text block for the terminal."""

    def pct(a: int, b: int) -> str:
        return f"{100.0 * (a - b) / a:.1f}% less" if a else ""

    caching = _mib(r.caching_reserved_bytes)
    if r.caching_error:
        caching += f" (the caching-allocator model failed: {r.caching_error})"
    if r.caching_reserved_bytes is not None and r.caching_fragmentation is not None:
        caching += f" (fragmentation {100 * r.caching_fragmentation:.1f}%)"
    if r.caching_reserved_bytes is not None and r.arena_bytes:
        caching += f", {r.caching_reserved_bytes / r.arena_bytes:.2f}x the arena"
    ratio = r.arena_bytes / r.plan_lower_bound_bytes if r.plan_lower_bound_bytes else 1.0
    vs_default = ""
    if r.step_seconds_default:
        vs_default = f" ({r.step_seconds_model_opt / r.step_seconds_default:.2f}x)"
    lines = [
        f"model_opt demo: {r.model} on {r.device}, batch {r.batch_size}, {r.image_size}x{r.image_size} "
        f"images, SGD momentum, {r.steps} planned steps",
        "",
        f"  live peak, eager order        {_mib(r.eager_live_peak_bytes)}",
        f"  live peak, reordered          {_mib(r.reordered_live_peak_bytes)}  "
        f"({pct(r.eager_live_peak_bytes, r.reordered_live_peak_bytes)}; order lower bound "
        f"{_mib(r.schedule_lower_bound_bytes)}; {r.reorder_method}, {r.reorder_status})",
        f"  resident in both              {_mib(r.resident_bytes)}  (weights, optimizer state, batch)",
        f"  arena (planned step)          {_mib(r.arena_bytes)}  ({r.plan_buffers} buffers; lower bound "
        f"{_mib(r.plan_lower_bound_bytes)}, ratio {ratio:.4f}; {r.plan_method})",
        f"  PyTorch caching allocator     {caching}  (reserved for the same trace)",
        f"  persistent (outlive the step) {_mib(r.persistent_bytes)}  (fallback pool)",
        f"  solve times                   reorder {r.reorder_solve_seconds:.2f} s (capture "
        f"{r.capture_seconds:.2f} s), plan {r.plan_seconds:.2f} s",
        f"  step time (median)            model_opt {_ms(r.step_seconds_model_opt)}, default allocator "
        f"{_ms(r.step_seconds_default)}{vs_default}, eager PyTorch {_ms(r.step_seconds_eager)}",
        f"  runtime                       {r.planned_hits} planned hits, {r.divergences} divergences, "
        f"{r.fallback_allocations} fallback allocations",
        f"  losses vs eager               {'match' if r.losses_match else 'DIFFER'} "
        f"({', '.join(f'{v:.4f}' for v in r.losses)})",
    ]
    lines.append("")
    lines.append("OK" if r.ok else "FAILED: " + "; ".join(r.problems))
    return "\n".join(lines)
