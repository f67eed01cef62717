//! Bindings for the operator scheduler: schedule a captured dataflow graph, or measure an order.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::InputError;
use super::report::to_dict;
use crate::placement::Bytes;
use crate::schedule::{self, Graph, Method, ScheduleError, ScheduleOptions, Tensor};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(schedule_graph, m)?)?;
    m.add_function(wrap_pyfunction!(simulate_order, m)?)?;
    m.add("SCHEDULE_METHODS", Method::NAMES.to_vec())?;
    Ok(())
}

fn schedule_error(e: ScheduleError) -> PyErr {
    // Every scheduler error is about its input (graph, order or option); solver failures are not
    // errors, they leave the heuristic order.
    InputError::new_err(e.to_string())
}

/// (size in bytes, producer op, consumer ops, kept to the end of the step)
type TensorTuple = (u64, usize, Vec<usize>, bool);

fn build(
    num_ops: usize,
    tensors: Vec<TensorTuple>,
    edges: Vec<(usize, usize)>,
    resident: u64,
) -> PyResult<Graph> {
    let tensors = tensors
        .into_iter()
        .map(|(size, producer, consumers, output)| Tensor {
            size: Bytes(size),
            producer,
            consumers,
            output,
        })
        .collect();
    Graph::new(num_ops, tensors, &edges, Bytes(resident)).map_err(schedule_error)
}

/// Schedules a dataflow graph for the lowest peak of live bytes.
///
/// `tensors` are `(size, producer, consumers, output)` tuples over operators `0..num_ops` (the captured
/// order); `edges` are extra `(before, after)` constraints; `resident` bytes are live throughout.
/// Returns a `ScheduleResult` dict: order, peak_bytes, eager_peak_bytes, lower_bound_bytes, status,
/// method, seconds, windows. Raises `InputError` for a malformed graph or option.
#[pyfunction]
#[pyo3(signature = (num_ops, tensors, edges, resident=0, method="auto", time_limit=10.0, gap=0.0, window=48))]
#[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments one to one
fn schedule_graph<'py>(
    py: Python<'py>,
    num_ops: usize,
    tensors: Vec<TensorTuple>,
    edges: Vec<(usize, usize)>,
    resident: u64,
    method: &str,
    time_limit: f64,
    gap: f64,
    window: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let graph = build(num_ops, tensors, edges, resident)?;
    let time_limit = Duration::try_from_secs_f64(time_limit).map_err(|_| {
        InputError::new_err(format!(
            "time limit {time_limit} must be a non-negative number of seconds"
        ))
    })?;
    let options = ScheduleOptions {
        method: method.parse().map_err(schedule_error)?,
        time_limit,
        gap,
        window,
        ..ScheduleOptions::default()
    };
    let report = py
        .detach(|| schedule::schedule(&graph, &options))
        .map_err(schedule_error)?;
    to_dict(py, &report)
}

/// Live bytes at each step of `order` over the same graph description as `schedule_graph`.
/// Raises `InputError` when the order is not a valid topological order.
#[pyfunction]
#[pyo3(signature = (num_ops, tensors, edges, order, resident=0))]
fn simulate_order(
    num_ops: usize,
    tensors: Vec<TensorTuple>,
    edges: Vec<(usize, usize)>,
    order: Vec<usize>,
    resident: u64,
) -> PyResult<Vec<u64>> {
    let graph = build(num_ops, tensors, edges, resident)?;
    schedule::memory_profile(&graph, &order).map_err(schedule_error)
}
