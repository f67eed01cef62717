//! The PyO3 extension `model_opt._native`. One submodule of bindings per part of the crate; each
//! registers its functions here. Errors become the exceptions defined in `errors`.

use pyo3::prelude::*;

mod caching_model;
mod errors;
mod placement;
mod remat;
mod report;
mod runtime;
mod schedule;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    caching_model::register(m)?;
    placement::register(m)?;
    remat::register(m)?;
    report::register(m)?;
    runtime::register(m)?;
    schedule::register(m)?;
    Ok(())
}
