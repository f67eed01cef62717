//! The process-wide runtime behind the C ABI and the Python API (one library, one state), and the
//! last error, which the C ABI cannot return as a value.

use std::sync::Arc;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::backend::DispatchBackend;
use super::state::{Runtime, RuntimeConfig};

static RUNTIME: Lazy<Runtime> =
    Lazy::new(|| Runtime::new(Arc::new(DispatchBackend::new()), RuntimeConfig::default()));
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// The runtime PyTorch's hooks and the Python API share.
pub fn global() -> &'static Runtime {
    &RUNTIME
}

pub fn set_last_error(message: impl Into<String>) {
    *LAST_ERROR.lock() = Some(message.into());
}

pub fn last_error() -> Option<String> {
    LAST_ERROR.lock().clone()
}

pub fn clear_last_error() {
    *LAST_ERROR.lock() = None;
}
