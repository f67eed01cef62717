//! Exceptions raised by the extension. `InputError` is bad input (the CLI exits 2); `CapacityError`
//! means no plan fits the capacity (exit 1); a bare `ModelOptError` is an internal failure (exit 3).
//! Which one a failure raises is decided by `placement::files::FileError::exit_status`.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::placement::csv::CsvError;
use crate::placement::files::{FileError, EXIT_INTERNAL, EXIT_NO_FIT};
use crate::placement::PlanError;

create_exception!(
    _native,
    ModelOptError,
    PyException,
    "Base class of model_opt's errors."
);
create_exception!(
    _native,
    InputError,
    ModelOptError,
    "The input is malformed or impossible."
);
create_exception!(
    _native,
    CapacityError,
    ModelOptError,
    "No plan fits within the capacity."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ModelOptError", py.get_type::<ModelOptError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("CapacityError", py.get_type::<CapacityError>())?;
    Ok(())
}

pub(crate) fn csv_error(e: CsvError) -> PyErr {
    InputError::new_err(e.to_string())
}

pub(crate) fn plan_error(e: PlanError) -> PyErr {
    file_error(FileError::Plan(e))
}

/// The exception of a failed file pipeline, by its exit status (decided in `placement::files`):
/// `CapacityError` (1), `InputError` (2), `ModelOptError` (3, internal). The status is also the
/// exception's `exit_status` attribute, which the command line returns as is.
pub(crate) fn file_error(e: FileError) -> PyErr {
    let status = e.exit_status();
    let message = e.to_string();
    let err = match status {
        EXIT_NO_FIT => CapacityError::new_err(message),
        EXIT_INTERNAL => ModelOptError::new_err(message),
        _ => InputError::new_err(message),
    };
    Python::attach(|py| {
        // Best effort: an exception object always accepts a new attribute.
        let _ = err.value(py).setattr("exit_status", status);
    });
    err
}
