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

use super::backend::{Backend, BackendError, DispatchBackend, Limited};
use super::state::{Runtime, RuntimeConfig};

/// The backend of the process-wide runtime: host and CUDA memory, each device under its limit.
static BACKEND: Lazy<Arc<Limited<DispatchBackend>>> =
    Lazy::new(|| Arc::new(Limited::new(DispatchBackend::new())));
static RUNTIME: Lazy<Runtime> = Lazy::new(|| {
    let rt = Runtime::new(BACKEND.clone(), RuntimeConfig::default());
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

/// Limits the memory the runtime takes from `device` (arena and fallback pool together) to `limit`
/// bytes, or lifts the limit with `None` (see `backend::limit`). A request past the limit is out of
/// memory: the CPU shim and the CUDA front (`cpp/cuda_front.cpp`, which `model_opt.allocator()`
/// installs) raise PyTorch's out-of-memory error for it. A caller of `model_opt_alloc` itself gets
/// NULL and must check it (PyTorch's pluggable allocator does not).
pub fn set_memory_limit(device: i32, limit: Option<u64>) {
    BACKEND.set_limit(device, limit);
}

/// Checks that CUDA `device` works end to end (see [`CudaBackend::preflight`]); the device count.
///
/// [`CudaBackend::preflight`]: super::backend::CudaBackend::preflight
pub fn cuda_preflight(device: i32) -> Result<i32, BackendError> {
    BACKEND.inner().cuda().preflight(device)
}

/// `(held, limit)`: the bytes the runtime holds from `device`, and its limit.
pub fn memory_limit(device: i32) -> (u64, Option<u64>) {
    let u = BACKEND.usage(device);
    (u.reserved, u.limit)
}

/// Limits `device` to `fraction` of its memory (`torch.cuda.set_per_process_memory_fraction`); an
/// error when the backend does not know the device's size (host memory) or the fraction is not in
/// `[0, 1]`.
pub fn set_memory_fraction(device: i32, fraction: f64) -> Result<u64, String> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(format!("memory fraction {fraction} is not between 0 and 1"));
    }
    let total = match BACKEND.mem_info(device) {
        Ok(Some((_, total))) => total,
        Ok(None) => {
            return Err(format!(
                "device {device} does not report its size; set a limit in bytes"
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    let limit = (total as f64 * fraction) as u64;
    set_memory_limit(device, Some(limit));
    Ok(limit)
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
