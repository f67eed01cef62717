//! The process-wide runtime behind the C ABI and the Python API (one library, one state), and the
//! last error, which the C ABI cannot return as a value.
//!
//! The last error is kept per thread, like `errno`: a caller reading it right after its own call
//! failed must see that failure, not another thread's. The most recent error of any thread is kept
//! too, for diagnostics from another thread (Python's `last_error()` and `stats()`: a hook that failed
//! ran on whichever thread allocated, often an autograd worker).

use std::cell::RefCell;
use std::sync::Arc;

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::backend::DispatchBackend;
use super::state::{Runtime, RuntimeConfig};

static RUNTIME: Lazy<Runtime> =
    Lazy::new(|| Runtime::new(Arc::new(DispatchBackend::new()), RuntimeConfig::default()));
static LATEST_ERROR: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    static THREAD_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The runtime PyTorch's hooks and the Python API share.
pub fn global() -> &'static Runtime {
    &RUNTIME
}

/// Records an error for this thread (and as the latest of the process).
pub fn set_last_error(message: impl Into<String>) {
    let message = message.into();
    *LATEST_ERROR.lock() = Some(message.clone());
    // A thread being torn down has no slot any more; the process-wide one still has the message.
    let _ = THREAD_ERROR.try_with(|e| *e.borrow_mut() = Some(message));
}

/// The last error recorded on this thread.
pub fn last_error() -> Option<String> {
    THREAD_ERROR.try_with(|e| e.borrow().clone()).ok().flatten()
}

/// Forgets this thread's last error.
pub fn clear_last_error() {
    let _ = THREAD_ERROR.try_with(|e| *e.borrow_mut() = None);
}

/// The most recent error of any thread.
pub fn latest_error() -> Option<String> {
    LATEST_ERROR.lock().clone()
}

/// Forgets the most recent error of any thread, and this thread's.
pub fn clear_latest_error() {
    *LATEST_ERROR.lock() = None;
    clear_last_error();
}
