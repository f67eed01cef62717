//! Exceptions raised by the extension. `InputError` is bad input (the CLI exits 2); `CapacityError`
//! means no plan fits the capacity (exit 1). Both derive from `ModelOptError`.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::placement::csv::CsvError;
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
    if e.is_capacity() {
        CapacityError::new_err(e.to_string())
    } else if matches!(e, PlanError::InvalidPlan(_)) {
        ModelOptError::new_err(e.to_string())
    } else {
        InputError::new_err(e.to_string())
    }
}
