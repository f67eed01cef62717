//! Bindings for the placement planner: plan or validate a MiniMalloc CSV file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt};

use super::errors::{csv_error, file_error, plan_error, InputError};
use super::report::to_dict;
use crate::placement::csv::read_csv_file;
use crate::placement::files::{plan_file, validate_file};
use crate::placement::problem::MAX_VALUE;
use crate::placement::{Bytes, Method, PlanOptions, Progress, ProgressFn};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(plan_csv, m)?)?;
    m.add_function(wrap_pyfunction!(validate_csv, m)?)?;
    m.add_function(wrap_pyfunction!(read_csv, m)?)?;
    m.add("PLACEMENT_METHODS", Method::NAMES.to_vec())?;
    m.add("MAX_VALUE", MAX_VALUE)?;
    Ok(())
}

/// A capacity in bytes: 0 to `MAX_VALUE` (2^53, the most a problem's sizes may add up to).
pub(crate) fn capacity_arg(capacity: Option<&Bound<'_, PyInt>>) -> PyResult<Option<Bytes>> {
    let Some(c) = capacity else {
        return Ok(None);
    };
    if c.lt(0)? {
        return Err(InputError::new_err(format!("capacity {c} is negative")));
    }
    match c.extract::<u64>() {
        Ok(v) if v <= MAX_VALUE => Ok(Some(Bytes(v))),
        _ => Err(InputError::new_err(format!(
            "capacity {c} is too large (at most {MAX_VALUE} = 2^53)"
        ))),
    }
}

fn time_limit_arg(seconds: f64) -> PyResult<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(InputError::new_err(format!(
            "time limit {seconds} must be a non-negative number of seconds"
        )));
    }
    if seconds.is_infinite() {
        return Err(InputError::new_err(format!(
            "time limit {seconds} must be a finite number of seconds"
        )));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| InputError::new_err(format!("time limit {seconds} seconds is too large")))
}

/// Wraps a Python callable as the planner's progress callback. It runs on the planning thread,
/// which holds no GIL while it plans, so the callback takes it; an exception in it is reported as
/// unraisable and planning goes on.
fn progress_arg(callback: Option<Py<PyAny>>) -> Option<ProgressFn> {
    let callback = callback?;
    Some(Arc::new(move |p: &Progress| {
        Python::attach(|py| {
            let args = (
                p.incumbent.map(|b| b.0),
                p.bound.0,
                p.elapsed.as_secs_f64(),
                p.phase,
            );
            if let Err(e) = callback.call1(py, args) {
                e.write_unraisable(py, None);
            }
        })
    }))
}

/// Plans the buffers of a MiniMalloc CSV file; writes the solution CSV to `output` when given.
///
/// Returns a `PlacementSummary` dict (`model_opt.reports`): buffers, lower_bound_bytes,
/// proven_bound_bytes, peak_bytes, ratio, method, status, seconds. Raises
/// `InputError` for a malformed file and `CapacityError` when no plan fits `capacity` (proven, or
/// not found in time: the message says which). `progress`, if given, is called as
/// `progress(incumbent_or_None, bound, elapsed_seconds, phase)` whenever either improves. With a
/// capacity, the first plan that fits is returned unless `minimize_below_capacity` asks to keep
/// minimizing until the time limit or the optimum.
#[pyfunction]
#[pyo3(signature = (path, output=None, capacity=None, method="auto", time_limit=5.0, progress=None, minimize_below_capacity=false))]
#[allow(clippy::too_many_arguments)]
fn plan_csv<'py>(
    py: Python<'py>,
    path: PathBuf,
    output: Option<PathBuf>,
    capacity: Option<Bound<'py, PyInt>>,
    method: &str,
    time_limit: f64,
    progress: Option<Py<PyAny>>,
    minimize_below_capacity: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let capacity = capacity_arg(capacity.as_ref())?;
    let options = PlanOptions {
        method: method.parse().map_err(plan_error)?,
        time_limit: time_limit_arg(time_limit)?,
        progress: progress_arg(progress),
        minimize_below_capacity,
        ..Default::default()
    };
    let planned = py
        .detach(|| plan_file(&path, output.as_deref(), capacity, &options))
        .map_err(file_error)?;
    to_dict(py, &planned)
}

/// Checks the `offset` column of a solution CSV file against its buffers (and `capacity` if given).
///
/// Returns a `ValidationSummary` dict: buffers, lower_bound_bytes, peak_bytes. Raises `InputError`
/// naming the first problem found.
#[pyfunction]
#[pyo3(signature = (path, capacity=None))]
fn validate_csv<'py>(
    py: Python<'py>,
    path: PathBuf,
    capacity: Option<Bound<'py, PyInt>>,
) -> PyResult<Bound<'py, PyDict>> {
    let capacity = capacity_arg(capacity.as_ref())?;
    let checked = py
        .detach(|| validate_file(&path, capacity))
        .map_err(file_error)?;
    to_dict(py, &checked)
}

/// Reads a MiniMalloc CSV file with the project's one CSV reader (the one `plan_csv` uses): quoted
/// fields, any line ending, a byte-order mark, and every check of the format.
///
/// Returns a dict of columns, one item per buffer in file order: `ids` (str), `lines` (the line
/// each row starts on), `lower`, `upper`, `size`; `offset` and `alignment` (lists, or None when
/// the file has no such column) and `fixed_offset` (a list with None where the cell is empty, or
/// None). Raises `InputError` naming the file and line of the first problem.
#[pyfunction]
fn read_csv<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let parsed = py.detach(|| read_csv_file(&path)).map_err(csv_error)?;
    let buffers = &parsed.problem.buffers;
    let d = PyDict::new(py);
    d.set_item(
        "ids",
        buffers.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
    )?;
    d.set_item("lines", parsed.lines.clone())?;
    d.set_item(
        "lower",
        buffers.iter().map(|b| b.lifetime.start).collect::<Vec<_>>(),
    )?;
    d.set_item(
        "upper",
        buffers.iter().map(|b| b.lifetime.end).collect::<Vec<_>>(),
    )?;
    d.set_item("size", buffers.iter().map(|b| b.size.0).collect::<Vec<_>>())?;
    d.set_item(
        "offset",
        parsed
            .offsets
            .as_ref()
            .map(|o| o.iter().map(|b| b.0).collect::<Vec<_>>()),
    )?;
    d.set_item(
        "alignment",
        parsed
            .has_alignment
            .then(|| buffers.iter().map(|b| b.alignment.0).collect::<Vec<_>>()),
    )?;
    d.set_item(
        "fixed_offset",
        parsed.has_fixed_offset.then(|| {
            buffers
                .iter()
                .map(|b| b.fixed_offset.map(|f| f.0))
                .collect::<Vec<_>>()
        }),
    )?;
    Ok(d)
}
