"""The runtime's memory limit (`model_opt.set_memory_limit`; `set_per_process_memory_fraction` on
CUDA): a training step past it raises PyTorch's out-of-memory error, nothing is lost, and the runtime
goes on serving steps, planned ones included."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import model_opt
from model_opt.errors import ArgumentError

PRELUDE = """
import json, torch, model_opt
from torch import nn
torch.set_num_threads(1)
model_opt.install_cpu_allocator()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1)

def step(b):
    x, y = torch.randn(b, 512), torch.randint(0, 10, (b,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()

def oom(f):
    try:
        f()
    except torch.OutOfMemoryError as e:
        return str(e)
    return None
"""


def _run(code: str) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_step_past_the_limit_is_out_of_memory_and_the_runtime_goes_on() -> None:
    r = _run(
        """
        step(8)
        held, _ = model_opt.memory_limit()
        model_opt.set_memory_limit(held + (4 << 20))
        out = {"limit": model_opt.memory_limit()[1], "held": held}
        out["big"] = oom(lambda: step(4096))  # 4096 x 2048 floats: 32 MiB of activations alone
        out["held_after"] = model_opt.memory_limit()[0]
        out["small"] = step(8)
        out["out_of_memory"] = model_opt.stats()["out_of_memory"]
        model_opt.set_memory_limit(None)
        out["big_unlimited"] = step(4096)
        out["limit_after"] = model_opt.memory_limit()[1]
        print(json.dumps(out))
        """
    )
    assert r["limit"] == r["held"] + (4 << 20)  # type: ignore[operator]
    big = r["big"]
    assert isinstance(big, str) and "model_opt could not allocate" in big and "memory limit" in big, big
    assert r["held_after"] <= r["limit"]  # type: ignore[operator]
    assert isinstance(r["small"], float) and isinstance(r["big_unlimited"], float)
    assert r["out_of_memory"] >= 1  # type: ignore[operator]
    assert r["limit_after"] is None


def test_planned_steps_run_under_a_limit_that_holds_their_arena() -> None:
    r = _run(
        """
        step(64)
        with model_opt.profile():
            step(64)
        plan = model_opt.plan(time_limit=1.0)
        held, _ = model_opt.memory_limit()
        model_opt.set_memory_limit(held + (1 << 20))
        hits = []
        for _ in range(3):
            with model_opt.step():
                step(64)
            hits.append(model_opt.stats()["last_step"])
        out = {"steps": hits, "held": held, "held_after": model_opt.memory_limit()[0]}
        # A step of another size needs more than the limit leaves: out of memory, plans intact.
        out["big"] = oom(lambda: step(4096))
        with model_opt.step():
            step(64)
        out["after"] = model_opt.stats()["last_step"]
        print(json.dumps(out))
        """
    )
    for s in r["steps"]:  # type: ignore[attr-defined]
        assert s["divergences"] == 0 and s["planned_hits"] > 0, s
    assert r["held_after"] <= r["held"] + (1 << 20)  # type: ignore[operator]
    assert isinstance(r["big"], str)
    assert r["after"]["divergences"] == 0 and r["after"]["planned_hits"] > 0  # type: ignore[index]


@pytest.mark.parametrize(
    ("limit", "device", "message"),
    [
        ("lots", "cpu", "not a size"),
        ("1GiB", "tpu", "not 'cpu'"),
        ("1GiB", -2, "not -1"),
        (0, "cpu", "more than 0"),
    ],
)
def test_bad_limits_are_refused(limit: object, device: object, message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        model_opt.set_memory_limit(limit, device)  # type: ignore[arg-type]


def test_cuda_devices_take_limits_too() -> None:
    # Enforced through the CUDA front, which raises torch.OutOfMemoryError past the limit
    # (tests/python/test_cuda_front.py); here only set and lifted (nothing allocates on a GPU here).
    model_opt.set_memory_limit("1GiB", "cuda:1")
    assert model_opt.memory_limit("cuda:1") == (0, 1 << 30)
    model_opt.set_memory_limit(None, "cuda:1")
    assert model_opt.memory_limit(1) == (0, None)
