//! The runtime's errors. Each says what went wrong and what to do; they cross the C ABI as values
//! (a NULL pointer plus a message readable with `model_opt_last_error`), never as panics.

use thiserror::Error;

use super::backend::BackendError;
use super::mode::Mode;
use crate::placement::PlanError;

#[derive(Debug, Clone, Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("planning the recorded step failed: {0}")]
    Plan(#[from] PlanError),
    #[error("cannot {action} while the runtime is {mode}: {hint}")]
    WrongMode {
        action: &'static str,
        mode: Mode,
        hint: &'static str,
    },
    #[error("{0}")]
    Usage(String),
}

impl RuntimeError {
    /// Whether the memory was not there (as opposed to a request that cannot be served at all).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, RuntimeError::Backend(e) if e.is_out_of_memory())
    }
}
