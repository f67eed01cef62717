//! The C ABI exported by the extension library (declared in `cpp/model_opt.h`).
//!
//! `model_opt_alloc` / `model_opt_free` have the exact signatures PyTorch's CUDAPluggableAllocator
//! calls; the hooks match its `set_*_fn` setters; `model_opt_host_*` serve the CPU shim; the rest is
//! control and statistics for C and C++ callers. Every entry point catches panics (one crossing
//! `extern "C"` would abort the process) and reports failures as values: a NULL pointer or a non-zero
//! status, with the message readable through `model_opt_last_error`.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::placement::PlanOptions;
use crate::report;
use crate::runtime::global::{
    clear_last_error, global, last_error, set_last_error, set_memory_fraction, set_memory_limit,
};
use crate::runtime::graph_pools::PoolId;
use crate::runtime::HOST_DEVICE;

/// Runs `f`, turning a panic into `on_panic` and a recorded error.
fn guarded<T>(what: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last_error(format!(
                "internal error in {what}: {detail}; please report this"
            ));
            on_panic
        }
    }
}

fn status(r: Result<(), crate::runtime::RuntimeError>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => {
            set_last_error(e.to_string());
            1
        }
    }
}

/// Allocates `size` bytes on CUDA `device` for `stream`. NULL when the device is out of memory, has
/// no driver, or `stream` is capturing a CUDA graph; the reason is recorded. PyTorch does not check a
/// pluggable allocator's NULL: `model_opt.allocator()` installs the CUDA front, which calls
/// `model_opt_try_alloc` and raises instead.
#[no_mangle]
pub extern "C" fn model_opt_alloc(size: usize, device: c_int, stream: *mut c_void) -> *mut c_void {
    guarded("model_opt_alloc", std::ptr::null_mut(), || {
        match global().alloc(device, size, stream as usize) {
            Ok(addr) => addr as *mut c_void,
            Err(e) => {
                set_last_error(e.to_string());
                std::ptr::null_mut()
            }
        }
    })
}

/// `model_opt_try_alloc`'s statuses: served, out of memory (PyTorch's out-of-memory error, which
/// callers such as cuDNN's workspace retry catch), and any other refusal (no driver, a driver error, a
/// stream capturing a CUDA graph).
pub const ALLOC_OK: c_int = 0;
pub const ALLOC_OUT_OF_MEMORY: c_int = 1;
pub const ALLOC_REFUSED: c_int = 2;

/// `model_opt_alloc` for callers that raise: the address goes to `*out` (NULL on failure) and the
/// status says which error to raise; the message is the last error. The CUDA front
/// (`cpp/cuda_front.cpp`) calls this.
///
/// # Safety
/// `out` must be NULL or point to a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn model_opt_try_alloc(
    size: usize,
    device: c_int,
    stream: *mut c_void,
    out: *mut *mut c_void,
) -> c_int {
    guarded("model_opt_try_alloc", ALLOC_REFUSED, || {
        let result = global().alloc(device, size, stream as usize);
        // SAFETY: the caller passes a writable pointer or NULL.
        unsafe { alloc_status(result, out) }
    })
}

/// Writes an allocation's address to `*out` (NULL on failure) and returns its status; a failure's
/// message becomes the last error.
///
/// # Safety
/// `out` must be NULL or point to a writable pointer.
unsafe fn alloc_status(
    result: Result<usize, crate::runtime::RuntimeError>,
    out: *mut *mut c_void,
) -> c_int {
    let (addr, status) = match result {
        Ok(addr) => (addr, ALLOC_OK),
        Err(e) => {
            set_last_error(e.to_string());
            let status = if e.is_out_of_memory() {
                ALLOC_OUT_OF_MEMORY
            } else {
                ALLOC_REFUSED
            };
            (0, status)
        }
    };
    if !out.is_null() {
        // SAFETY: the caller passes a writable pointer or NULL.
        unsafe { *out = addr as *mut c_void };
    }
    status
}

/// A CUDA graph capture into pool `(pool_a, pool_b)` (PyTorch's `MempoolId_t`) begins on `device`:
/// `beginAllocateToPool`, called by the CUDA front, which keeps the capture's stream filter and sends
/// the requests it selects to `model_opt_try_alloc_for_graph`. Until the capture ends, memory freed on
/// the device outside graph pools is held for good and no device memory is given back.
#[no_mangle]
pub extern "C" fn model_opt_graph_capture_begin(device: c_int, pool_a: u64, pool_b: u64) {
    guarded("model_opt_graph_capture_begin", (), || {
        global().begin_graph_capture(device, PoolId(pool_a, pool_b));
    })
}

/// The capture into the pool ended (`endAllocateToPool`). 0, or non-zero when none was under way.
#[no_mangle]
pub extern "C" fn model_opt_graph_capture_end(device: c_int, pool_a: u64, pool_b: u64) -> c_int {
    guarded("model_opt_graph_capture_end", -1, || {
        status(global().end_graph_capture(device, PoolId(pool_a, pool_b)))
    })
}

/// PyTorch released the pool (`releasePool`): its memory goes back once nothing in it is in use.
/// 0, or non-zero for a pool the runtime does not know.
#[no_mangle]
pub extern "C" fn model_opt_graph_pool_release(device: c_int, pool_a: u64, pool_b: u64) -> c_int {
    guarded("model_opt_graph_pool_release", -1, || {
        status(global().release_graph_pool(device, PoolId(pool_a, pool_b)))
    })
}

/// `model_opt_try_alloc` for a request of a CUDA graph capture into the pool: served from that pool.
///
/// # Safety
/// `out` must be NULL or point to a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn model_opt_try_alloc_for_graph(
    size: usize,
    device: c_int,
    stream: *mut c_void,
    pool_a: u64,
    pool_b: u64,
    out: *mut *mut c_void,
) -> c_int {
    guarded("model_opt_try_alloc_for_graph", ALLOC_REFUSED, || {
        let result =
            global().alloc_for_graph(device, PoolId(pool_a, pool_b), size, stream as usize);
        // SAFETY: the caller passes a writable pointer or NULL.
        unsafe { alloc_status(result, out) }
    })
}

/// Frees memory from `model_opt_alloc`. `size` and `stream` are those of the allocation (the
/// runtime knows the size already). When `stream` is capturing a CUDA graph (or the driver cannot
/// tell), the memory is held for good instead of reused: the graph's replays may still use it.
#[no_mangle]
pub extern "C" fn model_opt_free(
    ptr: *mut c_void,
    _size: usize,
    device: c_int,
    stream: *mut c_void,
) {
    guarded("model_opt_free", (), || {
        if let Err(e) = global().free_on(device, ptr as usize, stream as usize) {
            set_last_error(e.to_string());
        }
    })
}

/// Init hook (`set_init_fn`): called once with the number of devices. Nothing to prepare: devices
/// are set up on first use.
#[no_mangle]
pub extern "C" fn model_opt_init(_device_count: c_int) {}

/// Reset hook (`set_reset_fn`, PyTorch's `empty_cache`): returns unused cached memory.
#[no_mangle]
pub extern "C" fn model_opt_empty_cache() {
    guarded("model_opt_empty_cache", (), || {
        if let Err(e) = global().empty_cache() {
            set_last_error(e.to_string());
        }
    })
}

/// Memory fraction hook (`set_memory_fraction_fn`, behind
/// `torch.cuda.set_per_process_memory_fraction`): the runtime takes at most `fraction` of the device's
/// memory; past it a request is out of memory (PyTorch's error, through the CUDA front). A fraction
/// outside `[0, 1]` or a device that does not report its size changes nothing, and the reason is
/// recorded as the last error (the hook cannot raise).
#[no_mangle]
pub extern "C" fn model_opt_set_memory_fraction(fraction: f64, device: c_int) {
    guarded("model_opt_set_memory_fraction", (), || {
        if let Err(e) = set_memory_fraction(device, fraction) {
            set_last_error(format!("set_memory_fraction: {e}"));
        }
    })
}

/// Limits the memory the runtime takes from `device` (-1: host memory) to `limit` bytes; a negative
/// `limit` lifts the limit. Returns 0 (-1 only after an internal error, with the reason as the last
/// error).
#[no_mangle]
pub extern "C" fn model_opt_set_memory_limit(device: c_int, limit: i64) -> c_int {
    guarded("model_opt_set_memory_limit", -1, || {
        set_memory_limit(device, u64::try_from(limit).ok());
        0
    })
}

/// Record-stream hook (`set_record_stream_fn`): `ptr` is used on `stream` too.
#[no_mangle]
pub extern "C" fn model_opt_record_stream(ptr: *mut c_void, stream: *mut c_void) {
    guarded("model_opt_record_stream", (), || {
        if !global().record_stream(ptr as usize, stream as usize) {
            set_last_error(format!(
                "record_stream of {ptr:p}, which is not a live allocation of model_opt; ignored"
            ));
        }
    })
}

/// Host memory for the CPU shim (page-aligned, same runtime and plan as the device hooks).
#[no_mangle]
pub extern "C" fn model_opt_host_alloc(size: usize) -> *mut c_void {
    guarded(
        "model_opt_host_alloc",
        std::ptr::null_mut(),
        || match global().alloc(HOST_DEVICE, size, 0) {
            Ok(addr) => addr as *mut c_void,
            Err(e) => {
                set_last_error(e.to_string());
                std::ptr::null_mut()
            }
        },
    )
}

#[no_mangle]
pub extern "C" fn model_opt_host_free(ptr: *mut c_void) {
    guarded("model_opt_host_free", (), || {
        if let Err(e) = global().free(HOST_DEVICE, ptr as usize) {
            set_last_error(e.to_string());
        }
    })
}

/// Starts recording a step. 0 on success.
#[no_mangle]
pub extern "C" fn model_opt_begin_profile() -> c_int {
    guarded("model_opt_begin_profile", -1, || {
        status(global().begin_profile())
    })
}

#[no_mangle]
pub extern "C" fn model_opt_end_profile() -> c_int {
    guarded("model_opt_end_profile", -1, || {
        status(global().end_profile())
    })
}

/// Plans the recorded step within `time_limit_seconds` and reserves the arena. 0 on success.
#[no_mangle]
pub extern "C" fn model_opt_plan(time_limit_seconds: f64) -> c_int {
    guarded("model_opt_plan", -1, || {
        let Ok(time_limit) = Duration::try_from_secs_f64(time_limit_seconds) else {
            set_last_error(format!(
                "time limit {time_limit_seconds} must be a non-negative number of seconds"
            ));
            return 1;
        };
        let options = PlanOptions {
            time_limit,
            ..Default::default()
        };
        status(global().plan(&options).map(|_| ()))
    })
}

#[no_mangle]
pub extern "C" fn model_opt_begin_step() -> c_int {
    guarded("model_opt_begin_step", -1, || {
        status(global().begin_step(None))
    })
}

#[no_mangle]
pub extern "C" fn model_opt_end_step() -> c_int {
    guarded("model_opt_end_step", -1, || {
        status(global().end_step().map(|_| ()))
    })
}

/// One statistic by name: any key of Python's `stats()` whose value is a number (a boolean as 0 or
/// 1); -1 for an unknown name or one whose value is not a number.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn model_opt_stat(name: *const c_char) -> i64 {
    guarded("model_opt_stat", -1, || {
        if name.is_null() {
            return -1;
        }
        // SAFETY: the caller passes a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        // Every number of `stats()` by its key: the keys come from the one report definition.
        let Some(v) = report::number(&global().stats(), &name) else {
            return -1;
        };
        i64::try_from(v).unwrap_or(i64::MAX)
    })
}

/// Copies the last error message (NUL-terminated, truncated to `len`) into `buf`; returns the full
/// message length, 0 when there is none.
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn model_opt_last_error(buf: *mut c_char, len: usize) -> usize {
    guarded("model_opt_last_error", 0, || {
        let Some(msg) = last_error() else {
            return 0;
        };
        if !buf.is_null() && len > 0 {
            let n = msg.len().min(len - 1);
            // SAFETY: the caller provides `len` writable bytes; n + 1 <= len.
            unsafe {
                std::ptr::copy_nonoverlapping(msg.as_ptr(), buf as *mut u8, n);
                *buf.add(n) = 0;
            }
        }
        msg.len()
    })
}

#[no_mangle]
pub extern "C" fn model_opt_clear_last_error() {
    guarded("model_opt_clear_last_error", (), clear_last_error)
}
