"""Host memory for spilled activations: the ``model_opt::spill`` and ``model_opt::fetch`` operators.

``spill(t)`` copies a tensor out of device memory and returns the host copy; the device tensor can die
right after (FX drops it after its last use). ``fetch(h, device)`` copies it back into a new device
tensor before its late uses. Both are exact copies, so a spilled step computes bit for bit what eager
computes.

* **CUDA**: the host copy is pinned memory (PyTorch's caching host allocator), written on a copy stream
  of the device that first waits for the compute stream (the tensor's last write is done); the device
  tensor is marked as used by that stream (``record_stream``), so its memory is not handed out again
  before the copy is done, and an event recorded after the copy makes the fetch's stream wait for it.
  The fetch copies back on the compute stream, asynchronously from pinned memory.
* **CPU** has no second memory. The stand-in keeps the copy in memory that numpy allocates, outside
  PyTorch's CPU allocator (and so outside the arena that model_opt serves): what the arena holds is
  what a device would hold. The copies are counted (`counts`), so tests can check what moved.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from model_opt.capture.ops import LIB

LIB.define("spill(Tensor t) -> Tensor")
LIB.define("fetch(Tensor host, str device) -> Tensor")

SPILL = torch.ops.model_opt.spill.default
FETCH = torch.ops.model_opt.fetch.default


@dataclass
class HostCounts:
    """What the spill and fetch operators moved in this process."""

    spills: int = 0
    spilled_bytes: int = 0
    fetches: int = 0
    fetched_bytes: int = 0


_COUNTS = HostCounts()
_LOCK = threading.Lock()
#: Per CUDA device: the stream spills copy on.
_COPY_STREAMS: dict[int, torch.cuda.Stream] = {}
#: Per host copy (its data pointer): the event after its copy on the copy stream.
_PENDING: dict[int, torch.cuda.Event] = {}


def counts() -> HostCounts:
    """A copy of the process's spill and fetch counts."""
    with _LOCK:
        return HostCounts(**vars(_COUNTS))


def reset_counts() -> None:
    with _LOCK:
        global _COUNTS
        _COUNTS = HostCounts()


def _count(spilled: int = 0, fetched: int = 0) -> None:
    with _LOCK:
        if spilled:
            _COUNTS.spills += 1
            _COUNTS.spilled_bytes += spilled
        if fetched:
            _COUNTS.fetches += 1
            _COUNTS.fetched_bytes += fetched


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _spill_cuda(t: torch.Tensor) -> torch.Tensor:
    device = t.device
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _COPY_STREAMS.get(index)
    if stream is None:
        stream = _COPY_STREAMS[index] = torch.cuda.Stream(device=index)
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    stream.wait_stream(torch.cuda.current_stream(index))
    with torch.cuda.stream(stream):
        host.copy_(t, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    t.record_stream(stream)
    with _LOCK:
        _PENDING[host.data_ptr()] = done
    return host


def _spill(t: torch.Tensor) -> torch.Tensor:
    _count(spilled=_nbytes(t))
    if t.device.type == "cuda":
        return _spill_cuda(t)
    # Bytes through numpy (which has no bfloat16): a flat byte view, copied, viewed back.
    flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return torch.from_numpy(flat.numpy().copy()).view(t.dtype).view(t.shape)


def _fetch(host: torch.Tensor, device: str) -> torch.Tensor:
    _count(fetched=_nbytes(host))
    out = torch.empty(host.shape, dtype=host.dtype, device=device)
    if out.device.type == "cuda":
        with _LOCK:
            done = _PENDING.pop(host.data_ptr(), None)
        if done is not None:
            torch.cuda.current_stream(out.device).wait_event(done)
        out.copy_(host, non_blocking=True)
    else:
        out.copy_(host)
    return out


def _spill_fake(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="cpu")


def _fetch_fake(host: torch.Tensor, device: str) -> torch.Tensor:
    return torch.empty(host.shape, dtype=host.dtype, device=device)


LIB.impl("spill", _spill, "CompositeExplicitAutograd")
LIB.impl("fetch", _fetch, "CompositeExplicitAutograd")
torch.library.register_fake("model_opt::spill", _spill_fake, lib=LIB)
torch.library.register_fake("model_opt::fetch", _fetch_fake, lib=LIB)
