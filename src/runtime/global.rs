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
use std::sync::{Mutex, MutexGuard};

use super::backend::DispatchBackend;
use super::state::{Runtime, RuntimeConfig};

static RUNTIME: Lazy<Runtime> = Lazy::new(|| {
    let rt = Runtime::new(Arc::new(DispatchBackend::new()), RuntimeConfig::default());
    register_fork_handlers();
    rt
});
static LATEST_ERROR: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// The process-wide error slot's lock, held across a `fork()` by the forking thread.
    static FORK_ERROR_GUARD: RefCell<Option<MutexGuard<'static, Option<String>>>> =
        const { RefCell::new(None) };
    static THREAD_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The runtime PyTorch's hooks and the Python API share.
pub fn global() -> &'static Runtime {
    &RUNTIME
}

fn latest() -> MutexGuard<'static, Option<String>> {
    LATEST_ERROR.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records an error for this thread (and as the latest of the process).
pub fn set_last_error(message: impl Into<String>) {
    let message = message.into();
    *latest() = Some(message.clone());
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
    latest().clone()
}

/// Forgets the most recent error of any thread, and this thread's.
pub fn clear_latest_error() {
    *latest() = None;
    clear_last_error();
}

/// `fork()` copies the process with only the calling thread, so a lock that another thread held at
/// that moment stays held in the child for ever (a DataLoader with workers forks while autograd
/// threads may allocate). Around every fork the runtime's locks are taken first (so its state is
/// consistent when copied) and released on both sides; in the child, the runtime then serves new
/// requests from its fallback pool only (see [`Runtime::after_fork_in_child`]).
fn register_fork_handlers() {
    extern "C" fn prepare() {
        RUNTIME.lock_for_fork();
        FORK_ERROR_GUARD.with(|g| *g.borrow_mut() = Some(latest()));
    }
    extern "C" fn parent() {
        FORK_ERROR_GUARD.with(|g| drop(g.borrow_mut().take()));
        RUNTIME.unlock_after_fork();
    }
    extern "C" fn child() {
        FORK_ERROR_GUARD.with(|g| drop(g.borrow_mut().take()));
        RUNTIME.unlock_after_fork();
        RUNTIME.after_fork_in_child();
    }
    // SAFETY: the handlers are plain functions that only take and release locks (and, in the child,
    // reset state under the lock). A failure to register (ENOMEM) leaves fork as it was.
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    }
}
