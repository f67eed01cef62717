//! The CUDA driver library, loaded at run time: the few functions the CUDA backend calls, looked up
//! once, with every result read as the raw integer the driver returns.
//!
//! Own loading rather than a bindings crate, for two reasons. A driver result is a C enum that newer
//! drivers extend: read into a Rust enum, a code the bindings do not list is undefined behaviour, so
//! results here are plain `c_int` and unknown codes are named by the driver's own `cuGetErrorName`
//! (or printed as numbers). And the library is chosen as the CUDA runtime chooses it: `libcuda.so.1`
//! (the driver's SONAME) before `libcuda.so` (often the toolkit's link-time stub, which fails every
//! call), so the runtime and PyTorch share one driver. `MODEL_OPT_LIBCUDA` (or [`preload_driver`])
//! names a file that wins over both; it is loaded `RTLD_GLOBAL`, so a later `dlopen("libcuda.so.1")`
//! elsewhere in the process finds it by its SONAME.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

use once_cell::sync::OnceCell;
use parking_lot::Mutex;

use super::BackendError;

/// A driver result (`CUresult`), as the integer the driver returned.
pub type CuResult = c_int;
pub type CuDevice = c_int;
pub type CuContext = *mut c_void;
pub type CuStream = *mut c_void;
pub type CuEvent = *mut c_void;
pub type CuDevicePtr = u64;

pub const CUDA_SUCCESS: CuResult = 0;
pub const CUDA_ERROR_OUT_OF_MEMORY: CuResult = 2;
pub const CUDA_ERROR_NOT_READY: CuResult = 600;
/// `cuStreamIsCapturing` on the legacy default stream while another stream of the device captures:
/// the legacy stream itself is never captured.
pub const CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: CuResult = 906;
/// `CU_STREAM_CAPTURE_STATUS_NONE`; ACTIVE is 1, INVALIDATED 2.
pub const CAPTURE_STATUS_NONE: c_int = 0;
pub const CU_EVENT_DISABLE_TIMING: c_uint = 2;
/// `CU_STREAM_CAPTURE_MODE_RELAXED`: the calling thread may make calls a capture in the default
/// (global) mode refuses, `cuMemAlloc` among them.
pub const CAPTURE_MODE_RELAXED: c_int = 2;

/// Environment variable naming a driver library file to load instead of the system's driver.
pub const LIBCUDA_ENV: &str = "MODEL_OPT_LIBCUDA";
/// Names tried in order when no file is named: the driver's SONAME first (see the module comment).
pub const DEFAULT_NAMES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// The driver functions the backend calls. All are required except those in `Option`.
#[derive(Debug, Clone, Copy)]
pub struct Api {
    pub init: unsafe extern "C" fn(c_uint) -> CuResult,
    pub device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    pub primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    pub primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    pub ctx_get_current: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    pub ctx_push_current: unsafe extern "C" fn(CuContext) -> CuResult,
    pub ctx_pop_current: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    pub ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    pub mem_alloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    pub mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    pub event_create: unsafe extern "C" fn(*mut CuEvent, c_uint) -> CuResult,
    pub event_record: unsafe extern "C" fn(CuEvent, CuStream) -> CuResult,
    pub event_query: unsafe extern "C" fn(CuEvent) -> CuResult,
    pub event_synchronize: unsafe extern "C" fn(CuEvent) -> CuResult,
    pub event_destroy: unsafe extern "C" fn(CuEvent) -> CuResult,
    pub stream_is_capturing: unsafe extern "C" fn(CuStream, *mut c_int) -> CuResult,
    /// `cuThreadExchangeStreamCaptureMode`; without it a segment cannot be allocated while a graph is
    /// captured in the global mode.
    pub thread_exchange_capture_mode: Option<unsafe extern "C" fn(*mut c_int) -> CuResult>,
    /// Without it `mem_info` reports nothing.
    pub mem_get_info: Option<unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult>,
    /// Without it errors are named by their number only.
    pub get_error_name: Option<unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult>,
    /// The library that was loaded (a path or one of [`DEFAULT_NAMES`]), for messages.
    pub library: &'static str,
    handle: usize,
}

/// A file set by [`preload_driver`]: wins over the environment and the default names.
static PRELOADED: Mutex<Option<String>> = Mutex::new(None);
static API: OnceCell<Result<Api, BackendError>> = OnceCell::new();

/// Uses the driver library at `path` for this process (the tests' stub driver), loading it now so a
/// missing file is reported here. Must run before the first driver call of the process.
pub fn preload_driver(path: &str) -> Result<(), BackendError> {
    open(path).map_err(BackendError::NoDriver)?;
    *PRELOADED.lock() = Some(path.to_string());
    Ok(())
}

/// The driver, loaded on first use (the result, failure included, is kept for the process).
pub fn api() -> Result<&'static Api, BackendError> {
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// A symbol of the loaded driver by name (for the tests that copy memory on a real GPU).
pub fn symbol(name: &str) -> Option<*mut c_void> {
    let api = api().ok()?;
    let c = CString::new(name).ok()?;
    // SAFETY: looking a symbol up in a library that stays loaded does not call it.
    let p = unsafe { libc::dlsym(api.handle as *mut c_void, c.as_ptr()) };
    (!p.is_null()).then_some(p)
}

fn dl_error() -> String {
    // SAFETY: dlerror returns a thread-local C string or NULL.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".to_string()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// `dlopen`s `name`; the handle is never closed (the driver stays loaded for the process). The error
/// is the reason alone, for [`BackendError::NoDriver`].
fn open(name: &str) -> Result<usize, String> {
    let c = CString::new(name).map_err(|_| format!("{name:?} contains a NUL byte"))?;
    // SAFETY: dlopen with a valid C string.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return Err(format!("cannot load {name}: {}", dl_error()));
    }
    Ok(handle as usize)
}

/// The library to load: a preloaded file, else `MODEL_OPT_LIBCUDA`, else the first default name that
/// loads.
fn open_driver() -> Result<(usize, String), BackendError> {
    let named = PRELOADED
        .lock()
        .clone()
        .or_else(|| std::env::var(LIBCUDA_ENV).ok().filter(|p| !p.is_empty()));
    if let Some(path) = named {
        return open(&path)
            .map(|h| (h, path))
            .map_err(BackendError::NoDriver);
    }
    let mut reasons = Vec::new();
    for name in DEFAULT_NAMES {
        match open(name) {
            Ok(h) => return Ok((h, name.to_string())),
            Err(e) => reasons.push(e),
        }
    }
    Err(BackendError::NoDriver(reasons.join("; ")))
}

/// Looks `name` up in `handle` as a function of type `F`.
///
/// # Safety
/// `F` must be the `unsafe extern "C" fn` type of the driver function `name`.
unsafe fn lookup<F: Copy>(handle: usize, name: &str, library: &str) -> Result<F, BackendError> {
    debug_assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
    let c = CString::new(name).map_err(|_| BackendError::NoDriver(name.to_string()))?;
    // SAFETY: dlsym on a handle that stays loaded.
    let p = unsafe { libc::dlsym(handle as *mut c_void, c.as_ptr()) };
    if p.is_null() {
        return Err(BackendError::NoDriver(format!(
            "the CUDA driver library {library} lacks {name}"
        )));
    }
    // SAFETY: a non-null function address, and F is its function pointer type (caller's contract).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

fn load() -> Result<Api, BackendError> {
    let (handle, library) = open_driver()?;
    // Leaked once per process, so messages can borrow it for ever.
    let library: &'static str = Box::leak(library.into_boxed_str());
    // SAFETY: every type below is the driver's documented signature of that symbol (CUDA 12 driver
    // API, the `_v2` entry points where the plain name is the old ABI).
    unsafe {
        Ok(Api {
            init: lookup(handle, "cuInit", library)?,
            device_get_count: lookup(handle, "cuDeviceGetCount", library)?,
            device_get: lookup(handle, "cuDeviceGet", library)?,
            primary_ctx_retain: lookup(handle, "cuDevicePrimaryCtxRetain", library)?,
            primary_ctx_release: lookup(handle, "cuDevicePrimaryCtxRelease_v2", library)?,
            ctx_get_current: lookup(handle, "cuCtxGetCurrent", library)?,
            ctx_push_current: lookup(handle, "cuCtxPushCurrent_v2", library)?,
            ctx_pop_current: lookup(handle, "cuCtxPopCurrent_v2", library)?,
            ctx_synchronize: lookup(handle, "cuCtxSynchronize", library)?,
            mem_alloc: lookup(handle, "cuMemAlloc_v2", library)?,
            mem_free: lookup(handle, "cuMemFree_v2", library)?,
            event_create: lookup(handle, "cuEventCreate", library)?,
            event_record: lookup(handle, "cuEventRecord", library)?,
            event_query: lookup(handle, "cuEventQuery", library)?,
            event_synchronize: lookup(handle, "cuEventSynchronize", library)?,
            event_destroy: lookup(handle, "cuEventDestroy_v2", library)?,
            stream_is_capturing: lookup(handle, "cuStreamIsCapturing", library)?,
            thread_exchange_capture_mode: lookup(
                handle,
                "cuThreadExchangeStreamCaptureMode",
                library,
            )
            .ok(),
            mem_get_info: lookup(handle, "cuMemGetInfo_v2", library).ok(),
            get_error_name: lookup(handle, "cuGetErrorName", library).ok(),
            library,
            handle,
        })
    }
}

impl Api {
    /// The driver's name for `code` (`CUDA_ERROR_OUT_OF_MEMORY (2)`), or the number alone for a code
    /// this driver does not name.
    pub fn error_name(&self, code: CuResult) -> String {
        if let Some(f) = self.get_error_name {
            let mut name: *const c_char = std::ptr::null();
            // SAFETY: a valid out-pointer; the driver answers unknown codes with an error and NULL.
            if unsafe { f(code, &mut name) } == CUDA_SUCCESS && !name.is_null() {
                // SAFETY: the driver returns a static NUL-terminated string.
                let s = unsafe { CStr::from_ptr(name) }.to_string_lossy();
                return format!("{s} ({code})");
            }
        }
        format!("unknown CUDA error {code}")
    }

    /// `Ok` for success, else a driver error naming `call`.
    pub fn check(&self, call: &'static str, device: i32, r: CuResult) -> Result<(), BackendError> {
        if r == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(BackendError::Driver {
                call,
                code: self.error_name(r),
                device,
            })
        }
    }
}
