"""One training loop, written the way its tutorial writes it, run plain or under model_opt in a fresh
process; the result (exact losses, a digest of the final parameters, per-step runtime statistics, peak
RSS, step times) goes to a JSON file that tests/python/loops/test_loops.py and benches/loops/run.py
compare between the two modes.

    python loop_worker.py --loop gpt2|accum|dataloader|dataloader_workers|autocast_ckpt|ddp
                          --mode plain|model_opt --seed S --out RESULT.json [--scale test|bench]
                          [--use-key] [--warmup N]

Under model_opt the loop does what the README tells a new user to do on CPU:
``model_opt.install_cpu_allocator()`` first (before the model exists), the first iteration(s) plain, one
iteration under ``model_opt.profile()``, ``model_opt.plan()``, then every later iteration under
``model_opt.step()``. The only change to the tutorial's loop is the ``with harness.iteration(label):``
around the body of the iteration; ``label`` is what the loop knows about the step's shape (padded length,
batch size, accumulation phase), which the test uses to tell a step whose signature was seen before
from a new one.

The ddp loop is started by torchrun (``torchrun --standalone --nproc_per_node=2 loop_worker.py --loop ddp
...``); each rank writes ``RESULT.rank<R>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

import model_opt

# Sizes of each loop: "test" keeps the CI suite small, "bench" is the longer version (benches/loops/).
SCALES: dict[str, dict[str, dict[str, int]]] = {
    "test": {
        "gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 2, "samples": 64, "batch": 4, "epochs": 1,
                 "min_len": 6, "max_len": 20},
        "accum": {"width": 8, "batch": 8, "iterations": 24, "image": 16},
        "dataloader": {"samples": 70, "batch": 16, "epochs": 2, "hidden": 128},
        "autocast_ckpt": {"dim": 64, "layers": 3, "batch": 8, "seq": 16, "steps": 8},
        "ddp": {"dim": 128, "samples": 128, "batch": 8, "epochs": 1, "bucket_kib": 100},
    },
    "bench": {
        "gpt2": {"n_layer": 4, "n_embd": 256, "n_head": 4, "samples": 320, "batch": 8, "epochs": 2,
                 "min_len": 16, "max_len": 96},
        "accum": {"width": 32, "batch": 16, "iterations": 96, "image": 32},
        "dataloader": {"samples": 70 * 8 + 6, "batch": 16, "epochs": 3, "hidden": 512},
        "autocast_ckpt": {"dim": 256, "layers": 6, "batch": 16, "seq": 64, "steps": 40},
        "ddp": {"dim": 512, "samples": 1024, "batch": 16, "epochs": 1, "bucket_kib": 1024},
    },
}  # fmt: skip


def rss_kib() -> int:
    """Peak resident set size of this process so far (KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def current_rss_kib() -> int:
    """Resident set size now (KiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


class Harness:
    """The lines a user adds to their loop to run it under model_opt, plus the measurements."""

    def __init__(self, mode: str, warmup: int = 1, use_key: bool = False) -> None:
        self.mode = mode
        self.warmup = warmup
        self.use_key = use_key
        self.index = 0
        self.steps: list[dict[str, Any]] = []
        self.losses: list[str] = []
        self.plan_reports: list[dict[str, Any]] = []
        self.baseline_rss_kib = rss_kib()
        self.rss_before_loop_kib = 0
        self._step_takes_key = "key" in inspect.signature(model_opt.step).parameters

    def loss(self, value: float) -> None:
        """Keep a loss exactly (float.hex)."""
        self.losses.append(float(value).hex())

    @contextlib.contextmanager
    def iteration(self, label: str) -> Iterator[None]:
        i = self.index
        self.index += 1
        record: dict[str, Any] = {"index": i, "label": label}
        if i == 0:
            self.rss_before_loop_kib = current_rss_kib()  # model, data and optimizer exist
        start = time.perf_counter()
        if self.mode == "plain":
            record["phase"] = "plain"
            yield
            record["seconds"] = time.perf_counter() - start
        elif i < self.warmup:
            record["phase"] = "warmup"
            yield
            record["seconds"] = time.perf_counter() - start
        elif i == self.warmup:
            record["phase"] = "profile"
            with model_opt.profile():
                yield
            record["seconds"] = time.perf_counter() - start
            self.plan_reports.append(model_opt.plan(time_limit=5.0))
        else:
            record["phase"] = "step"
            ctx = model_opt.step(key=label) if self.use_key and self._step_takes_key else model_opt.step()
            with ctx:
                yield
            record["seconds"] = time.perf_counter() - start
        if self.mode == "model_opt":
            s = model_opt.stats()
            record["last_step"] = s.get("last_step")
            for key in ("plans", "divergences", "abandoned_steps", "auto_replans", "reserved_bytes",
                        "arena_bytes", "fallback_reserved_bytes", "allocated_bytes",
                        "lower_bound_bytes", "peak_reserved_bytes", "peak_allocated_bytes",
                        "mode"):  # fmt: skip
                record[key] = s.get(key)
        self.steps.append(record)

    def result(self, model: nn.Module, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "losses": self.losses,
            "params": digest(model),
            "steps": self.steps,
            "plan_reports": self.plan_reports,
            "baseline_rss_kib": self.baseline_rss_kib,
            "rss_before_loop_kib": self.rss_before_loop_kib,
            "peak_rss_kib": rss_kib(),
            "children_peak_rss_kib": int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
        }
        if self.mode == "model_opt":
            out["stats"] = model_opt.stats()
        out.update(extra)
        return out


def digest(model: nn.Module) -> dict[str, str]:
    """sha256 of every parameter's and buffer's bytes (with dtype and shape), by name."""
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().contiguous().cpu()
        h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


# --------------------------------------------------------------------------------------------------
# HF transformers causal LM fine-tuning with dynamic padding (the "Fine-tuning a pretrained model" /
# run_clm_no_trainer loop): AdamW, linear schedule with warm-up, clip_grad_norm_.


def loop_gpt2(h: Harness, cfg: dict[str, int], seed: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader
    from transformers import GPT2Config, GPT2LMHeadModel, get_linear_schedule_with_warmup

    config = GPT2Config(
        n_layer=cfg["n_layer"], n_embd=cfg["n_embd"], n_head=cfg["n_head"], vocab_size=1000,
        n_positions=128, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)  # random init from the config: nothing is downloaded
    # "Tokenized" samples of random lengths (no tokenizer can be downloaded).
    g = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint(cfg["min_len"], cfg["max_len"] + 1, (cfg["samples"],), generator=g).tolist()
    dataset = [{"input_ids": torch.randint(1, 1000, (n,), generator=g).tolist()} for n in lengths]

    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """DataCollatorWithPadding + labels: pad to the longest sequence of the batch."""
        longest = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), longest), config.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, f in enumerate(features):
            ids[row, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[row, : len(f["input_ids"])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    train_dataloader = DataLoader(
        dataset, shuffle=True, batch_size=cfg["batch"], collate_fn=collate,
        generator=torch.Generator().manual_seed(seed + 2),
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    num_training_steps = cfg["epochs"] * len(train_dataloader)
    lr_scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=num_training_steps // 10, num_training_steps=num_training_steps
    )

    model.train()
    for _epoch in range(cfg["epochs"]):
        for batch in train_dataloader:
            b, n = batch["input_ids"].shape
            padded = bool((batch["attention_mask"] == 0).any())
            with h.iteration(f"b{b}-len{n}-{'pad' if padded else 'full'}"):
                outputs = model(**batch)
                loss = outputs.loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                h.loss(loss.item())
    return h.result(model)


# --------------------------------------------------------------------------------------------------
# Gradient accumulation, the flat way tutorials write it: every iteration is one micro-batch, the
# optimizer steps on every 4th.


class SmallCNN(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.classifier = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def loop_accum(h: Harness, cfg: dict[str, int], seed: int) -> dict[str, Any]:
    model = SmallCNN(cfg["width"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed + 1)
    s = cfg["image"]
    data = [
        (torch.randn(cfg["batch"], 3, s, s, generator=g), torch.randint(0, 10, (cfg["batch"],), generator=g))
        for _ in range(cfg["iterations"])
    ]
    accumulation_steps = 4
    model.train()
    optimizer.zero_grad()
    for i, (inputs, labels) in enumerate(data):
        # What the loop knows of this iteration: its phase in the accumulation cycle, and whether the
        # optimizer steps for the first time (Adam creates its state then).
        phase = i % accumulation_steps
        first_update = phase == accumulation_steps - 1 and not optimizer.state
        with h.iteration(f"micro{phase}{'-first-update' if first_update else ''}"):
            outputs = model(inputs)
            loss = criterion(outputs, labels) / accumulation_steps
            loss.backward()
            if (i + 1) % accumulation_steps == 0:
                optimizer.step()
                optimizer.zero_grad()
            h.loss(loss.item())
    return h.result(model)


# --------------------------------------------------------------------------------------------------
# The PyTorch quickstart loop over a DataLoader whose last batch is short (70 samples, batch 16: 16,
# 16, 16, 16, 6), 2 epochs; with num_workers=2 the workers are forked and run a transform that
# allocates (through model_opt's allocator, inherited by the fork).


class Normalized(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return (x - x.mean()) / (x.std() + 1e-5), self.targets[i]  # like transforms.Normalize


class NeuralNetwork(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_relu_stack(self.flatten(x))


def loop_dataloader(h: Harness, cfg: dict[str, int], seed: int, num_workers: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed + 1)
    n = cfg["samples"]
    training_data = Normalized(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    train_dataloader = DataLoader(
        training_data, batch_size=cfg["batch"], shuffle=True, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed + 2),
    )  # fmt: skip
    model = NeuralNetwork(cfg["hidden"])
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    model.train()
    for _t in range(cfg["epochs"]):
        for X, y in train_dataloader:
            with h.iteration(f"batch{len(X)}"):
                pred = model(X)
                loss = loss_fn(pred, y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                h.loss(loss.item())
    return h.result(model)


# --------------------------------------------------------------------------------------------------
# bf16 autocast on CPU (forward and loss inside autocast, backward outside, as the AMP recipe says) with
# activation checkpointing (use_reentrant=False) of blocks that use dropout.


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.1), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.mlp(self.norm(x)))


class CheckpointedNet(nn.Module):
    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return self.head(x.mean(dim=1))


def loop_autocast_ckpt(h: Harness, cfg: dict[str, int], seed: int) -> dict[str, Any]:
    model = CheckpointedNet(cfg["dim"], cfg["layers"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed + 1)
    data = [
        (torch.randn(cfg["batch"], cfg["seq"], cfg["dim"], generator=g),
         torch.randint(0, 10, (cfg["batch"],), generator=g))
        for _ in range(cfg["steps"])
    ]  # fmt: skip
    model.train()
    for inputs, target in data:
        with h.iteration("train"):
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                output = model(inputs)
                loss = loss_fn(output, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            h.loss(loss.item())
    return h.result(model)


# --------------------------------------------------------------------------------------------------
# DDP under torchrun (the "Getting started with DDP" / torchrun tutorial): gloo, DistributedSampler,
# each rank its own process, its own runtime and its own plans.


class ToyModel(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net1 = nn.Linear(dim, 2 * dim)
        self.relu = nn.ReLU()
        self.net2 = nn.Linear(2 * dim, dim)
        self.net3 = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net3(self.relu(self.net2(self.relu(self.net1(x)))))


def loop_ddp(h: Harness, cfg: dict[str, int], seed: int) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(seed + 1)
    n, dim = cfg["samples"], cfg["dim"]
    dataset = TensorDataset(torch.randn(n, dim, generator=g), torch.randn(n, 5, generator=g))
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=cfg["batch"], sampler=sampler)
    model = ToyModel(dim)
    # Several gradient buckets, as a large model has with the default 25 MB cap: their allreduces run
    # on gloo's threads while backward goes on.
    ddp_model = DDP(model, bucket_cap_mb=cfg["bucket_kib"] / 1024)
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.001)
    iteration = 0
    for epoch in range(cfg["epochs"]):
        sampler.set_epoch(epoch)
        for inputs, labels in loader:
            # DDP rebuilds its gradient buckets in the order gradients became ready in the first
            # iteration: in the forward of the second one, which allocates new bucket buffers and frees
            # the old ones. That iteration is a one-off, and its label says so.
            rebuild = "-bucket-rebuild" if iteration == 1 else ""
            iteration += 1
            with h.iteration(f"batch{len(inputs)}{rebuild}"):
                optimizer.zero_grad()
                outputs = ddp_model(inputs)
                loss = loss_fn(outputs, labels)
                loss.backward()
                optimizer.step()
                h.loss(loss.item())
    result = h.result(model, rank=rank, world_size=dist.get_world_size())
    dist.destroy_process_group()
    return result


LOOPS = ("gpt2", "accum", "dataloader", "dataloader_workers", "autocast_ckpt", "ddp")


# --------------------------------------------------------------------------------------------------
# Comparing a plain run with a model_opt run (used by the tests and by benches/loops/run.py).


def analyse(plain: dict[str, Any], planned: dict[str, Any]) -> dict[str, Any]:
    """What the suite checks, computed from the two results.

    A step's signature counts as seen when an earlier profiled or planned step had the same label;
    divergences on such steps are the ones that must be zero.
    """
    seen: set[str] = set()
    labels: set[str] = set()
    repeat_divergences: list[tuple[int, str, int]] = []  # (index, label, divergences)
    repeat_new_signature: list[tuple[int, str]] = []  # seen label, but the runtime said new signature
    abandoned: list[tuple[int, str]] = []
    first_sight_divergences = 0
    for s in planned["steps"]:
        label = s["label"]
        if s["phase"] == "step":
            last = s.get("last_step") or {}
            if last.get("abandoned"):
                abandoned.append((s["index"], label))
            if label in seen:
                if last.get("divergences", 0):
                    repeat_divergences.append((s["index"], label, int(last["divergences"])))
                if last.get("new_signature"):
                    repeat_new_signature.append((s["index"], label))
            else:
                first_sight_divergences += int(last.get("divergences", 0))
        if s["phase"] in ("profile", "step"):
            seen.add(label)
            labels.add(label)
    stats = planned.get("stats", {})
    # What the runtime reserves beyond the largest plan's arena and what is live between steps (the
    # weights, optimizer state and outputs the pool holds): cached pool memory, worst step.
    pool_cache = [
        s["fallback_reserved_bytes"] - s["allocated_bytes"]
        for s in planned["steps"]
        if s["phase"] == "step" and s.get("allocated_bytes") is not None
    ]
    arena_over_bound = [
        s["arena_bytes"] / s["lower_bound_bytes"]
        for s in planned["steps"]
        if s["phase"] == "step" and s.get("lower_bound_bytes")
    ]
    plain_times = [s["seconds"] for s in plain["steps"] if s["index"] > planned["warmup"]]
    planned_times = [s["seconds"] for s in planned["steps"] if s["phase"] == "step"]
    return {
        "losses_identical": plain["losses"] == planned["losses"],
        "first_loss_difference": next(
            (i for i, (a, b) in enumerate(zip(plain["losses"], planned["losses"])) if a != b),
            None
            if len(plain["losses"]) == len(planned["losses"])
            else min(map(len, (plain["losses"], planned["losses"]))),
        ),
        "params_identical": plain["params"] == planned["params"],
        "params_differing": sorted(
            k for k in plain["params"] if plain["params"][k] != planned["params"].get(k)
        ),
        "labels": sorted(labels),
        "max_pool_cache_bytes": max(pool_cache, default=0),
        "max_arena_over_bound": max(arena_over_bound, default=0.0),
        # The most reserved at once (arena and pool) and the most allocated at once, whole run.
        "peak_reserved_bytes": stats.get("peak_reserved_bytes"),
        "peak_allocated_bytes": stats.get("peak_allocated_bytes"),
        "plans": stats.get("plans"),
        "repeat_divergences": repeat_divergences,
        "repeat_new_signature": repeat_new_signature,
        "first_sight_divergences": first_sight_divergences,
        "abandoned": abandoned,
        "abandoned_steps": stats.get("abandoned_steps"),
        "unknown_frees": stats.get("unknown_frees"),
        "last_error": stats.get("last_error"),
        "peak_rss_ratio": planned["peak_rss_kib"] / plain["peak_rss_kib"],
        # Growth of the resident set during the loop: peak minus what was resident before its first
        # iteration (imports, model, data, optimizer).
        "loop_rss_growth_ratio": (planned["peak_rss_kib"] - planned["rss_before_loop_kib"])
        / max(1, plain["peak_rss_kib"] - plain["rss_before_loop_kib"]),
        "plain_loop_rss_growth_kib": plain["peak_rss_kib"] - plain["rss_before_loop_kib"],
        "model_opt_loop_rss_growth_kib": planned["peak_rss_kib"] - planned["rss_before_loop_kib"],
        "plain_peak_rss_kib": plain["peak_rss_kib"],
        "model_opt_peak_rss_kib": planned["peak_rss_kib"],
        "plain_step_seconds": plain_times,
        "model_opt_step_seconds": planned_times,
    }


def step_table(planned: dict[str, Any]) -> str:
    """One line per step of a model_opt run: phase, label and what the runtime reported."""
    lines = []
    for s in planned["steps"]:
        last = s.get("last_step") or {}
        extra = ""
        if s["phase"] == "step":
            extra = " ".join(f"{k}={v}" for k, v in last.items())
            extra += f" plans={s.get('plans')} auto_replans={s.get('auto_replans')}"
        lines.append(f"  {s['index']:3d} {s['phase']:8s} {s['label']:24s} {extra}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", required=True, choices=LOOPS)
    p.add_argument("--mode", required=True, choices=("plain", "model_opt"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--scale", default="test", choices=tuple(SCALES))
    p.add_argument("--use-key", action="store_true", help="pass the loop's label as model_opt.step(key=...)")
    p.add_argument("--warmup", type=int, default=None, help="plain iterations before the profiled one")
    args = p.parse_args()

    # Bit-identical results across processes need the same seeds, the same thread count and
    # deterministic kernels.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.mode == "model_opt":
        model_opt.install_cpu_allocator()  # before the model (and anything it allocates) exists
    torch.manual_seed(args.seed)

    warmup = args.warmup if args.warmup is not None else 1
    h = Harness(args.mode, warmup=warmup, use_key=args.use_key)
    cfg = SCALES[args.scale]["dataloader" if args.loop.startswith("dataloader") else args.loop]
    start = time.perf_counter()
    if args.loop == "gpt2":
        result = loop_gpt2(h, cfg, args.seed)
    elif args.loop == "accum":
        result = loop_accum(h, cfg, args.seed)
    elif args.loop == "dataloader":
        result = loop_dataloader(h, cfg, args.seed, num_workers=0)
    elif args.loop == "dataloader_workers":
        result = loop_dataloader(h, cfg, args.seed, num_workers=2)
    elif args.loop == "autocast_ckpt":
        result = loop_autocast_ckpt(h, cfg, args.seed)
    else:
        result = loop_ddp(h, cfg, args.seed)
    result.update(loop=args.loop, seed=args.seed, scale=args.scale, warmup=warmup, use_key=args.use_key,
                  seconds=time.perf_counter() - start)  # fmt: skip
    out = args.out
    if args.loop == "ddp":
        root, ext = os.path.splitext(out)
        out = f"{root}.rank{result['rank']}{ext or '.json'}"
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    sys.exit(main())
