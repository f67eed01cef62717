"""The wheel: built by maturin, installed (not editable) into a fresh virtual environment, it installs
the CPU allocator from the shim source it ships and trains planned steps, without the repository.

The build reuses the repository's cargo target directory and the features and profile of
`maturin develop --release` (scripts/setup.sh), so only this crate is compiled again, not HiGHS. The
fresh environment reaches PyTorch through a `.pth` file naming the development environment's
site-packages, and ninja through PATH (nothing is downloaded). The `.pth` files of that directory are
not read from there, so the editable install of model_opt stays invisible; the test checks that every
file of model_opt it used came from the fresh environment, and runs from a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("maturin")

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("cargo") is None, reason="building the wheel needs cargo (Rust)")

# Runs inside the fresh environment, from a temporary working directory.
WORKER = textwrap.dedent(
    """
    import json
    import torch
    from torch import nn
    import model_opt
    from model_opt import runtime

    torch.set_num_threads(1)
    shim = str(runtime._shim_source())
    assert model_opt.install_cpu_allocator() is True
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))) for _ in range(5)]

    def train_step(i):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(batches[i][0]), batches[i][1])
        loss.backward()
        opt.step()
        return float(loss.item())

    train_step(0)
    with model_opt.profile():
        train_step(1)
    report = model_opt.plan(time_limit=1.0)
    for i in range(2, 5):
        with model_opt.step():
            train_step(i)
    stats = model_opt.stats()
    print(json.dumps({
        "model_opt": model_opt.__file__,
        "native": runtime.library_path(),
        "shim": shim,
        "plan": report,
        "stats": {k: stats[k] for k in ("mode", "planned_hits", "divergences", "steps")},
    }))
    """
)


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_the_wheel_trains_a_planned_step_in_a_fresh_environment(tmp_path: Path) -> None:
    times: dict[str, float] = {}
    t = time.perf_counter()
    wheels = tmp_path / "wheels"
    # Same interpreter, profile and features (pyproject's) as `maturin develop --release`.
    _run(
        [sys.executable, "-m", "maturin", "build", "--release", "-i", sys.executable, "--out", str(wheels)],
        timeout=900,
        cwd=REPO,
    )
    times["build"] = time.perf_counter() - t
    (wheel,) = wheels.glob("model_opt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"model_opt/_cpp/cpu_shim.cpp", "model_opt/_cpp/model_opt.h"} <= names, sorted(names)

    t = time.perf_counter()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    py = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index"]
    _run([*pip, str(wheel)], timeout=300)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run([str(py), "-c", purelib], timeout=60).stdout.strip())
    (site / "dev_site_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    times["install"] = time.perf_counter() - t
    installed = site / "model_opt"
    assert (installed / "_cpp" / "model_opt.h").is_file() and (installed / "_cpp" / "cpu_shim.cpp").is_file()

    t = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["MODEL_OPT_CACHE_DIR"] = str(tmp_path / "cache")  # the shim is compiled from the wheel's source
    # ninja's executable is a script of the development environment: only it goes on PATH.
    ninja = shutil.which("ninja", path=str(Path(sys.executable).parent)) or shutil.which("ninja")
    assert ninja, "ninja is needed to build the CPU shim (pip install ninja)"
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "ninja").symlink_to(ninja)
    env["PATH"] = str(tools) + os.pathsep + env.get("PATH", "")
    work = tmp_path / "cwd"
    work.mkdir()
    out = _run([str(py), "-c", WORKER], timeout=600, cwd=work, env=env)
    times["train"] = time.perf_counter() - t
    r = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("model_opt", "native", "shim"):
        path = Path(r[key]).resolve()
        assert path.is_relative_to(installed.resolve()), f"{key} {path} is not the installed wheel's"
        assert not path.is_relative_to(REPO), f"{key} {path} comes from the repository"
    assert Path(r["shim"]) == (installed / "_cpp" / "cpu_shim.cpp").resolve()
    assert list((tmp_path / "cache").glob("cpu_shim-torch*/model_opt_cpu_shim*.so"))
    s = r["stats"]
    assert s["mode"] == "planned" and s["divergences"] == 0 and s["planned_hits"] > 0, r
    assert s["planned_hits"] >= 3 * r["plan"]["buffers"] > 0, r

    cli = _run([str(venv / "bin" / "model-opt"), "--help"], timeout=120, cwd=work, env=env)
    assert "demo" in cli.stdout
    print("wheel test seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
