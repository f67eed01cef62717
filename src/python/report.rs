//! Reports (`crate::report`) as Python dicts, and `REPORT_KEYS`: every report's keys, which the
//! typed dicts of `model_opt/reports.py` are tested against.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::report::{Field, Report, Value, ALL};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let keys = PyDict::new(m.py());
    for (name, report_keys) in ALL {
        keys.set_item(*name, PyList::new(m.py(), report_keys.iter())?)?;
    }
    m.add("REPORT_KEYS", keys)?;
    Ok(())
}

/// The report as a dict, its keys in order.
pub(crate) fn to_dict<'py, R: Report>(py: Python<'py>, report: &R) -> PyResult<Bound<'py, PyDict>> {
    fields_dict(py, report.fields())
}

fn fields_dict(py: Python<'_>, fields: Vec<Field>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for (key, value) in fields {
        match value {
            Value::Int(v) => d.set_item(key, v)?,
            Value::Float(v) => d.set_item(key, v)?,
            Value::Bool(v) => d.set_item(key, v)?,
            Value::Text(v) => d.set_item(key, v)?,
            Value::MaybeText(v) => d.set_item(key, v)?,
            Value::Ints(v) => d.set_item(key, v)?,
            Value::Report(inner) => d.set_item(key, fields_dict(py, inner)?)?,
        }
    }
    Ok(d)
}
