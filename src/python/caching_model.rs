//! Bindings for the model of PyTorch's caching allocator: replay a MiniMalloc CSV trace.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyList};

use super::errors::{csv_error, CapacityError};
use super::placement::capacity_arg;
use super::report::to_dict;
use crate::caching_model::{
    replay_csv, replay_within, requests_csv, smallest_device, Action, PoolKind, SimulatedStep,
};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(caching_allocator_peak, m)?)?;
    m.add_function(wrap_pyfunction!(caching_allocator_replay, m)?)?;
    m.add_function(wrap_pyfunction!(caching_allocator_smallest_device, m)?)?;
    Ok(())
}

fn run(py: Python<'_>, path: PathBuf) -> PyResult<SimulatedStep> {
    py.detach(|| replay_csv(&path)).map_err(csv_error)
}

/// Replays a MiniMalloc CSV trace through a model of PyTorch's CUDA caching allocator.
///
/// Returns a `CachingAllocatorPeak` dict: buffers, allocations, reserved_peak_bytes, allocated_at_peak_bytes,
/// requested_at_peak_bytes, fragmentation ((reserved - allocated) / reserved when reserved memory
/// peaks), peak_allocated_bytes, peak_requested_bytes (the trace's max load), segments,
/// small_segments, large_segments, cache_flushes. Raises `InputError` for a malformed file.
///
/// With `capacity` (bytes), the trace runs on a device of that size, as PyTorch would: when a new
/// segment would pass it, the wholly free cached segments are given back first (`cache_flushes`
/// counts the times), and a request that still does not fit raises `CapacityError` (PyTorch's
/// out-of-memory error) naming it.
#[pyfunction]
#[pyo3(signature = (path, capacity=None))]
fn caching_allocator_peak<'py>(
    py: Python<'py>,
    path: PathBuf,
    capacity: Option<Bound<'py, PyInt>>,
) -> PyResult<Bound<'py, PyDict>> {
    let limit = capacity_arg(capacity.as_ref())?.map(|b| b.0);
    let requests = py.detach(|| requests_csv(&path)).map_err(csv_error)?;
    let out = py
        .detach(|| replay_within(&requests, limit))
        .map_err(|e| CapacityError::new_err(format!("{}: {e}", path.display())))?;
    to_dict(py, &out)
}

/// The smallest device (bytes) on which PyTorch's caching allocator runs the trace: the least
/// `capacity` for which `caching_allocator_peak` raises no `CapacityError` (a multiple of 2 MiB,
/// found by bisection). Raises `InputError` for a malformed file.
#[pyfunction]
fn caching_allocator_smallest_device(py: Python<'_>, path: PathBuf) -> PyResult<u64> {
    let requests = py.detach(|| requests_csv(&path)).map_err(csv_error)?;
    Ok(py.detach(|| smallest_device(&requests)))
}

/// Like `caching_allocator_peak`, plus the replay itself: `events`, a list of
/// `(action, buffer, addr, size, stream, time)` with action one of `segment_alloc`, `alloc`,
/// `free` (buffer is the row index in the CSV; size is the requested size, or the segment's);
/// `addresses`, each buffer's address (None for 0 bytes); and `segment_layout`, the final segments
/// as dicts (address, total_size, stream, segment_type, blocks: [(address, size, requested,
/// allocated)]).
#[pyfunction]
fn caching_allocator_replay<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let out = run(py, path)?;
    let d = to_dict(py, &out)?;
    let events = PyList::empty(py);
    for e in &out.events {
        let action = match e.action {
            Action::SegmentAlloc => "segment_alloc",
            Action::Alloc => "alloc",
            Action::Free => "free",
        };
        events.append((action, e.buffer, e.addr, e.size, e.stream, e.time))?;
    }
    d.set_item("events", events)?;
    d.set_item("addresses", out.addresses.clone())?;
    let layout = PyList::empty(py);
    for (i, s) in out.allocator.segments().iter().enumerate() {
        let seg = PyDict::new(py);
        seg.set_item("address", s.addr)?;
        seg.set_item("total_size", s.size)?;
        seg.set_item("stream", s.stream)?;
        let kind = match s.pool {
            PoolKind::Small => "small",
            PoolKind::Large => "large",
        };
        seg.set_item("segment_type", kind)?;
        let blocks: Vec<(u64, u64, u64, bool)> = out
            .allocator
            .segment_blocks(i)
            .iter()
            .map(|b| (b.addr, b.size, b.requested, b.allocated))
            .collect();
        seg.set_item("blocks", blocks)?;
        layout.append(seg)?;
    }
    d.set_item("segment_layout", layout)?;
    Ok(d)
}
