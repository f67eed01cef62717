//! Bindings for the allocator runtime: the control calls behind `model_opt.profile()`, `plan()`,
//! `step()`, `stats()`, and the addresses of the C ABI functions (for PyTorch's pluggable allocator and
//! the CPU shim), all on the one process-wide runtime the C hooks use.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::{plan_error, InputError, ModelOptError};
use crate::ffi;
use crate::placement::PlanOptions;
use crate::runtime::global::{clear_latest_error, global, latest_error};
use crate::runtime::{RuntimeError, StepStats};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(runtime_begin_profile, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_end_profile, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_plan, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_begin_step, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_set_max_plans, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_end_step, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_stats, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_reset_peak_stats, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_trace_csv, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_plan_csvs, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_last_error, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_empty_cache, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_set_max_divergences, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_set_auto_replan, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_symbols, m)?)?;
    Ok(())
}

fn runtime_error(e: RuntimeError) -> PyErr {
    match e {
        RuntimeError::Plan(p) => plan_error(p),
        other => ModelOptError::new_err(other.to_string()),
    }
}

fn step_dict<'py>(py: Python<'py>, s: &StepStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("allocations", s.allocations)?;
    d.set_item("planned_hits", s.planned_hits)?;
    d.set_item("persistent_allocations", s.persistent_allocations)?;
    d.set_item("transient_fallbacks", s.transient_fallbacks)?;
    d.set_item("divergences", s.divergences)?;
    d.set_item("abandoned", s.abandoned)?;
    d.set_item("new_signature", s.new_signature)?;
    d.set_item("unplanned_allocations", s.unplanned_allocations)?;
    d.set_item("first_fit", s.first_fit)?;
    Ok(d)
}

/// Starts recording a step (behind `model_opt.profile()`).
#[pyfunction]
fn runtime_begin_profile() -> PyResult<()> {
    global().begin_profile().map_err(runtime_error)
}

/// Ends the recording.
#[pyfunction]
fn runtime_end_profile() -> PyResult<()> {
    global().end_profile().map_err(runtime_error)
}

/// Plans the recorded step and reserves the arena; returns the plan report as a dict.
#[pyfunction]
#[pyo3(signature = (time_limit=5.0))]
fn runtime_plan(py: Python<'_>, time_limit: f64) -> PyResult<Bound<'_, PyDict>> {
    let time_limit = Duration::try_from_secs_f64(time_limit).map_err(|_| {
        InputError::new_err(format!(
            "time limit {time_limit} must be a non-negative number of seconds"
        ))
    })?;
    let options = PlanOptions {
        time_limit,
        ..Default::default()
    };
    let s = py
        .detach(|| global().plan(&options))
        .map_err(runtime_error)?;
    let d = PyDict::new(py);
    d.set_item("buffers", s.buffers)?;
    d.set_item("persistent_buffers", s.persistent_buffers)?;
    d.set_item("persistent_bytes", s.persistent_bytes)?;
    d.set_item("lower_bound_bytes", s.lower_bound_bytes)?;
    d.set_item("arena_bytes", s.arena_bytes)?;
    let ratio = if s.lower_bound_bytes == 0 {
        1.0
    } else {
        s.arena_bytes as f64 / s.lower_bound_bytes as f64
    };
    d.set_item("ratio", ratio)?;
    d.set_item("method", s.method)?;
    d.set_item("seconds", s.elapsed.as_secs_f64())?;
    d.set_item("devices", s.devices)?;
    Ok(d)
}

/// Starts a planned step (behind `model_opt.step(key)`); `key` names its signature.
#[pyfunction]
#[pyo3(signature = (key=None))]
fn runtime_begin_step(key: Option<String>) -> PyResult<()> {
    global().begin_step(key.as_deref()).map_err(runtime_error)
}

/// Ends the step; what happened in it as a dict.
#[pyfunction]
fn runtime_end_step(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = global().end_step().map_err(runtime_error)?;
    step_dict(py, &s)
}

/// A snapshot of the runtime's statistics.
#[pyfunction]
fn runtime_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = global().stats();
    let c = &s.counters;
    let d = PyDict::new(py);
    d.set_item("mode", s.mode)?;
    d.set_item("in_step", s.in_step)?;
    d.set_item("plan_active", s.plan_active)?;
    d.set_item("allocated_bytes", c.allocated_bytes)?;
    d.set_item("peak_allocated_bytes", c.peak_allocated_bytes)?;
    d.set_item("reserved_bytes", s.reserved_bytes)?;
    d.set_item("peak_reserved_bytes", s.peak_reserved_bytes)?;
    d.set_item("arena_bytes", s.arena_bytes)?;
    d.set_item("fallback_reserved_bytes", s.fallback_reserved_bytes)?;
    d.set_item("lower_bound_bytes", s.lower_bound_bytes)?;
    d.set_item("persistent_bytes", s.persistent_bytes)?;
    d.set_item("plan_buffers", s.plan_buffers)?;
    d.set_item("allocations", c.allocations)?;
    d.set_item("frees", c.frees)?;
    d.set_item("planned_hits", c.planned_hits)?;
    d.set_item("fallback_allocations", c.fallback_allocations)?;
    d.set_item("fallback_bytes", c.fallback_bytes)?;
    d.set_item("divergences", c.divergences)?;
    d.set_item("persistent_allocations", c.persistent_allocations)?;
    d.set_item("transient_fallbacks", c.transient_fallbacks)?;
    d.set_item("record_stream_fallbacks", c.record_stream_fallbacks)?;
    d.set_item("steps", c.steps)?;
    d.set_item("abandoned_steps", c.abandoned_steps)?;
    d.set_item("unknown_frees", c.unknown_frees)?;
    d.set_item("out_of_memory", c.out_of_memory)?;
    d.set_item("auto_replans", c.auto_replans)?;
    d.set_item("new_signatures", c.new_signatures)?;
    d.set_item("signature_switches", c.signature_switches)?;
    d.set_item("unplanned_allocations", c.unplanned_allocations)?;
    d.set_item("unplanned_arena_allocations", c.unplanned_arena_allocations)?;
    d.set_item("arenas_returned", c.arenas_returned)?;
    d.set_item("plans", s.plans)?;
    d.set_item("max_plans", s.max_plans)?;
    d.set_item("max_divergences", s.max_divergences)?;
    d.set_item("devices", s.devices)?;
    d.set_item("last_step", step_dict(py, &s.last_step)?)?;
    d.set_item("last_error", latest_error())?;
    Ok(d)
}

/// Sets the peak to the bytes allocated now.
#[pyfunction]
fn runtime_reset_peak_stats() {
    global().reset_peak_stats();
}

/// Every signature's plan as served, as solution CSV text: `[(device, key, csv)]`.
#[pyfunction]
fn runtime_plan_csvs() -> PyResult<Vec<(i32, Option<String>, String)>> {
    global().plan_csvs().map_err(runtime_error)
}

/// The recorded step as CSV text: `(transient, persistent)`.
#[pyfunction]
fn runtime_trace_csv() -> PyResult<(String, String)> {
    global().trace_csv().map_err(runtime_error)
}

/// The most recent error a C hook recorded on any thread (hooks cannot raise), or None;
/// `clear=True` forgets it.
#[pyfunction]
#[pyo3(signature = (clear=false))]
fn runtime_last_error(clear: bool) -> Option<String> {
    let e = latest_error();
    if clear {
        clear_latest_error();
    }
    e
}

/// Returns unused cached memory to the backend; the bytes released.
#[pyfunction]
fn runtime_empty_cache() -> PyResult<usize> {
    global().empty_cache().map_err(runtime_error)
}

/// Divergences allowed in one step before the rest of it stops using the plan.
#[pyfunction]
fn runtime_set_max_divergences(n: u64) {
    global().set_max_divergences(n);
}

/// Automatic planning: steps of new signatures, and signatures that diverge twice in a row.
#[pyfunction]
fn runtime_set_auto_replan(on: bool) {
    global().set_auto_replan(on);
}

/// Planned signatures kept per device.
#[pyfunction]
fn runtime_set_max_plans(n: usize) {
    global().set_max_plans(n);
}

/// Addresses of the C ABI functions, for PyTorch's allocator hooks and the CPU shim.
#[pyfunction]
fn runtime_symbols(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(
        "model_opt_alloc",
        ffi::model_opt_alloc as *const () as usize,
    )?;
    d.set_item("model_opt_free", ffi::model_opt_free as *const () as usize)?;
    d.set_item("model_opt_init", ffi::model_opt_init as *const () as usize)?;
    d.set_item(
        "model_opt_empty_cache",
        ffi::model_opt_empty_cache as *const () as usize,
    )?;
    d.set_item(
        "model_opt_set_memory_fraction",
        ffi::model_opt_set_memory_fraction as *const () as usize,
    )?;
    d.set_item(
        "model_opt_record_stream",
        ffi::model_opt_record_stream as *const () as usize,
    )?;
    d.set_item(
        "model_opt_host_alloc",
        ffi::model_opt_host_alloc as *const () as usize,
    )?;
    d.set_item(
        "model_opt_host_free",
        ffi::model_opt_host_free as *const () as usize,
    )?;
    d.set_item(
        "model_opt_last_error",
        ffi::model_opt_last_error as *const () as usize,
    )?;
    Ok(d)
}
