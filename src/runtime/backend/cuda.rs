//! CUDA device memory through the driver API (cudarc, loaded at run time).
//!
//! cudarc opens `libcuda.so` with `dlopen` on first use and panics when it is missing or lacks a
//! symbol, so before any driver call this backend checks that the library loads and exports every
//! function it uses, and turns a failure into [`BackendError::NoDriver`]. `dlopen` of a bare name
//! returns an already-loaded library whose SONAME matches, which is how `MODEL_OPT_LIBCUDA` (or
//! [`preload_driver`]) points cudarc at a specific file, e.g. the stub driver of the tests.

use std::collections::HashMap;
use std::ffi::CString;

use cudarc::driver::sys;
use once_cell::sync::OnceCell;
use parking_lot::Mutex;

use super::{Backend, BackendError, Event};

/// The driver functions this backend calls; all are checked before the first call.
const REQUIRED_SYMBOLS: [&str; 12] = [
    "cuInit",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDevicePrimaryCtxRetain",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventDestroy_v2",
];
/// Checked too, but optional: without it `mem_info` reports nothing.
const MEM_INFO_SYMBOL: &str = "cuMemGetInfo_v2";

/// Environment variable naming a driver library file to load instead of the system's `libcuda.so`.
pub const LIBCUDA_ENV: &str = "MODEL_OPT_LIBCUDA";

/// Loads the library at `path` globally so that cudarc's later `dlopen("libcuda.so")` finds it by its
/// SONAME. Must run before the first driver call of the process; the library stays loaded.
pub fn preload_driver(path: &str) -> Result<(), BackendError> {
    let c_path = CString::new(path)
        .map_err(|_| BackendError::NoDriver(format!("{path:?} contains a NUL byte")))?;
    // SAFETY: dlopen with a valid C string; the handle is deliberately leaked so the library stays.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or NULL.
        let reason = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown dlopen error".to_string()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(BackendError::NoDriver(format!(
            "cannot load {path}: {reason}"
        )));
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct CudaBackend {
    /// The result of loading the driver and `cuInit`, computed once.
    loaded: OnceCell<Result<DriverInfo, BackendError>>,
    /// Primary context of each device used so far (as an address, to keep the struct `Send`).
    contexts: Mutex<HashMap<i32, usize>>,
}

#[derive(Debug, Clone, Copy)]
struct DriverInfo {
    device_count: i32,
    has_mem_info: bool,
}

fn check(call: &'static str, device: i32, r: sys::CUresult) -> Result<(), BackendError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(BackendError::Driver {
            call,
            code: format!("{r:?}"),
            device,
        })
    }
}

fn load_driver() -> Result<DriverInfo, BackendError> {
    if let Ok(path) = std::env::var(LIBCUDA_ENV) {
        if !path.is_empty() {
            preload_driver(&path)?;
        }
    }
    // SAFETY: only opens (and closes) the library to see whether it loads.
    if !unsafe { sys::is_culib_present() } {
        return Err(BackendError::NoDriver(
            "libcuda.so could not be loaded (not installed, or not on the library path)"
                .to_string(),
        ));
    }
    // SAFETY: the library is present, so culib() returns it instead of panicking.
    let lib = unsafe { sys::culib() };
    for name in REQUIRED_SYMBOLS {
        // SAFETY: looking a symbol up does not call it.
        if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
            return Err(BackendError::NoDriver(format!(
                "the CUDA driver library lacks {name}"
            )));
        }
    }
    // SAFETY: as above.
    let has_mem_info =
        unsafe { lib.get::<unsafe extern "C" fn()>(MEM_INFO_SYMBOL.as_bytes()) }.is_ok();
    // SAFETY: every symbol used below was checked to exist.
    unsafe {
        check("cuInit", -1, sys::cuInit(0))?;
        let mut count: libc::c_int = 0;
        check("cuDeviceGetCount", -1, sys::cuDeviceGetCount(&mut count))?;
        Ok(DriverInfo {
            device_count: count,
            has_mem_info,
        })
    }
}

impl CudaBackend {
    pub fn new() -> CudaBackend {
        CudaBackend::default()
    }

    fn driver(&self) -> Result<DriverInfo, BackendError> {
        self.loaded.get_or_init(load_driver).clone()
    }

    /// Number of devices the driver reports (an error when there is no driver).
    pub fn device_count(&self) -> Result<i32, BackendError> {
        Ok(self.driver()?.device_count)
    }

    /// Makes the primary context of `device` current on this thread, retaining it the first time.
    fn make_current(&self, device: i32) -> Result<DriverInfo, BackendError> {
        let info = self.driver()?;
        if device < 0 || device >= info.device_count {
            return Err(BackendError::InvalidDevice {
                backend: "cuda",
                device,
            });
        }
        let mut contexts = self.contexts.lock();
        let ctx = match contexts.get(&device) {
            Some(&ctx) => ctx,
            None => {
                let mut dev: sys::CUdevice = 0;
                let mut ctx: sys::CUcontext = std::ptr::null_mut();
                // SAFETY: the driver is loaded and initialised; out-pointers are valid.
                unsafe {
                    check("cuDeviceGet", device, sys::cuDeviceGet(&mut dev, device))?;
                    check(
                        "cuDevicePrimaryCtxRetain",
                        device,
                        sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
                    )?;
                }
                contexts.insert(device, ctx as usize);
                ctx as usize
            }
        };
        // SAFETY: ctx is a retained primary context (never released while the process runs).
        check("cuCtxSetCurrent", device, unsafe {
            sys::cuCtxSetCurrent(ctx as sys::CUcontext)
        })?;
        Ok(info)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, device: i32, size: usize) -> Result<usize, BackendError> {
        self.make_current(device)?;
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: a context is current; ptr is a valid out-pointer.
        let r = unsafe { sys::cuMemAlloc_v2(&mut ptr, size) };
        if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return Err(BackendError::OutOfMemory {
                backend: "cuda",
                device,
                size,
                detail: "cuMemAlloc returned CUDA_ERROR_OUT_OF_MEMORY".to_string(),
            });
        }
        check("cuMemAlloc", device, r)?;
        Ok(ptr as usize)
    }

    fn free(&self, device: i32, addr: usize, _size: usize) -> Result<(), BackendError> {
        self.make_current(device)?;
        // SAFETY: addr came from cuMemAlloc on this device and is freed once.
        check("cuMemFree", device, unsafe {
            sys::cuMemFree_v2(addr as sys::CUdeviceptr)
        })
    }

    fn synchronize(&self, device: i32) -> Result<(), BackendError> {
        self.make_current(device)?;
        // SAFETY: a context is current.
        check("cuCtxSynchronize", device, unsafe {
            sys::cuCtxSynchronize()
        })
    }

    fn mem_info(&self, device: i32) -> Result<Option<(u64, u64)>, BackendError> {
        let info = self.make_current(device)?;
        if !info.has_mem_info {
            return Ok(None);
        }
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: a context is current; the symbol was checked; out-pointers are valid.
        check("cuMemGetInfo", device, unsafe {
            sys::cuMemGetInfo_v2(&mut free, &mut total)
        })?;
        Ok(Some((free as u64, total as u64)))
    }

    fn record_event(&self, device: i32, stream: usize) -> Result<Option<Event>, BackendError> {
        self.make_current(device)?;
        let mut event: sys::CUevent = std::ptr::null_mut();
        // SAFETY: a context is current; `event` is a valid out-pointer; `stream` is the CUstream
        // PyTorch passed to record_stream (cudaStream_t and CUstream are the same handle).
        unsafe {
            check(
                "cuEventCreate",
                device,
                sys::cuEventCreate(
                    &mut event,
                    sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as libc::c_uint,
                ),
            )?;
            if let Err(e) = check(
                "cuEventRecord",
                device,
                sys::cuEventRecord(event, stream as sys::CUstream),
            ) {
                sys::cuEventDestroy_v2(event);
                return Err(e);
            }
        }
        Ok(Some(Event(event as usize)))
    }

    fn event_done(&self, device: i32, event: Event) -> Result<bool, BackendError> {
        self.make_current(device)?;
        // SAFETY: the event came from record_event and has not been destroyed.
        let r = unsafe { sys::cuEventQuery(event.0 as sys::CUevent) };
        if r == sys::CUresult::CUDA_ERROR_NOT_READY {
            return Ok(false);
        }
        check("cuEventQuery", device, r)?;
        Ok(true)
    }

    fn destroy_event(&self, device: i32, event: Event) {
        if self.make_current(device).is_ok() {
            // SAFETY: the event came from record_event and is destroyed once.
            unsafe { sys::cuEventDestroy_v2(event.0 as sys::CUevent) };
        }
    }
}
