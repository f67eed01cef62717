//! Bindings for the allocator runtime: the control calls behind `model_opt.profile()`, `plan()`,
//! `step()`, `stats()`, and the addresses of the C ABI functions (for PyTorch's pluggable allocator and
//! the CPU shim), all on the one process-wide runtime the C hooks use.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::{plan_error, InputError, ModelOptError};
use super::report::to_dict;
use crate::ffi;
use crate::placement::PlanOptions;
use crate::runtime::global::{
    clear_latest_error, cuda_preflight, global, latest_error, memory_limit, set_memory_limit,
};
use crate::runtime::RuntimeError;

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
    m.add_function(wrap_pyfunction!(runtime_set_memory_limit, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_memory_limit, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_cuda_preflight, m)?)?;
    Ok(())
}

fn runtime_error(e: RuntimeError) -> PyErr {
    match e {
        RuntimeError::Plan(p) => plan_error(p),
        other => ModelOptError::new_err(other.to_string()),
    }
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

/// Plans the recorded step and reserves the arena; returns a `PlanSummary` dict.
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
    to_dict(py, &s)
}

/// Starts a planned step (behind `model_opt.step(key)`); `key` names its signature.
#[pyfunction]
#[pyo3(signature = (key=None))]
fn runtime_begin_step(key: Option<String>) -> PyResult<()> {
    global().begin_step(key.as_deref()).map_err(runtime_error)
}

/// Ends the step; what happened in it as a `StepStats` dict.
#[pyfunction]
fn runtime_end_step(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = global().end_step().map_err(runtime_error)?;
    to_dict(py, &s)
}

/// A snapshot of the runtime's statistics, as a `RuntimeStats` dict.
#[pyfunction]
fn runtime_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let mut s = global().stats();
    s.last_error = latest_error();
    to_dict(py, &s)
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

/// Returns unused cached memory to the backend; the bytes released. Without the GIL: it may wait
/// for other streams' work (`record_stream`), and other Python threads need not wait with it.
#[pyfunction]
fn runtime_empty_cache(py: Python<'_>) -> PyResult<usize> {
    py.detach(|| global().empty_cache()).map_err(runtime_error)
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

/// Limits the memory the runtime takes from `device` (-1: host) to `limit` bytes; None lifts it.
#[pyfunction]
#[pyo3(signature = (device, limit=None))]
fn runtime_set_memory_limit(device: i32, limit: Option<u64>) {
    set_memory_limit(device, limit);
}

/// Checks that CUDA `device` works end to end (driver, `cuInit`, its context, a 512-byte allocation);
/// the device count. Behind `model_opt.allocator()`, so a broken driver is an error there and not a
/// failed allocation later.
#[pyfunction]
#[pyo3(signature = (device=0))]
fn runtime_cuda_preflight(device: i32) -> PyResult<i32> {
    cuda_preflight(device).map_err(|e| ModelOptError::new_err(e.to_string()))
}

/// `(held, limit)`: the bytes the runtime holds from `device`, and its limit (None: none).
#[pyfunction]
fn runtime_memory_limit(device: i32) -> (u64, Option<u64>) {
    memory_limit(device)
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
    d.set_item(
        "model_opt_try_alloc",
        ffi::model_opt_try_alloc as *const () as usize,
    )?;
    d.set_item(
        "model_opt_try_alloc_for_graph",
        ffi::model_opt_try_alloc_for_graph as *const () as usize,
    )?;
    d.set_item(
        "model_opt_graph_capture_begin",
        ffi::model_opt_graph_capture_begin as *const () as usize,
    )?;
    d.set_item(
        "model_opt_graph_capture_end",
        ffi::model_opt_graph_capture_end as *const () as usize,
    )?;
    d.set_item(
        "model_opt_graph_pool_release",
        ffi::model_opt_graph_pool_release as *const () as usize,
    )?;
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
