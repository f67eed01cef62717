//! model_opt: a memory optimizer for deep-learning training.
//!
//! Data flows one way: a step is traced, its buffers are planned ([`placement`]), and the plan is
//! replayed by the runtime. The PyO3 bindings live in `python` and are built only with the `python`
//! feature (maturin turns it on).

pub mod caching_model;
pub mod ffi;
pub mod placement;
pub mod remat;
pub mod report;
pub mod runtime;
pub mod schedule;
pub mod status;

#[cfg(feature = "python")]
mod python;
