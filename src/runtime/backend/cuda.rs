//! CUDA device memory through the driver API (the library loaded by [`driver`]).
//!
//! Each call makes the device's primary context current for its duration only ([`Current`]), so
//! the caller's thread keeps its current device. Before serving a request, the request's stream is
//! asked whether a CUDA graph is being captured on it: that is refused (see
//! [`BackendError::Capturing`]) rather than served from memory a replay would later share; before a
//! free, the same question decides whether the memory may ever be reused
//! ([`Backend::frees_into_capture`]).

use std::collections::HashMap;

use once_cell::sync::OnceCell;
use parking_lot::Mutex;

use super::context::Current;
use super::driver::{
    self, Api, CuContext, CuDevice, CuDevicePtr, CuEvent, CuStream, CAPTURE_MODE_RELAXED,
    CAPTURE_STATUS_NONE, CUDA_ERROR_NOT_READY, CUDA_ERROR_OUT_OF_MEMORY,
    CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, CU_EVENT_DISABLE_TIMING,
};
use super::{Backend, BackendError, Event};

pub use driver::{preload_driver, LIBCUDA_ENV};

/// Bytes the preflight allocates: the smallest allocation PyTorch makes.
const PREFLIGHT_BYTES: usize = 512;

#[derive(Debug, Default)]
pub struct CudaBackend {
    /// The result of loading the driver and `cuInit`, computed once.
    loaded: OnceCell<Result<DriverInfo, BackendError>>,
    /// Primary context of each device used so far (as an address, to keep the struct `Send`).
    contexts: Mutex<HashMap<i32, usize>>,
}

#[derive(Debug, Clone, Copy)]
struct DriverInfo {
    api: &'static Api,
    device_count: i32,
}

fn init_driver() -> Result<DriverInfo, BackendError> {
    let api = driver::api()?;
    let mut count = 0;
    // SAFETY: symbols checked at load; a valid out-pointer.
    unsafe {
        api.check("cuInit", -1, (api.init)(0))?;
        api.check("cuDeviceGetCount", -1, (api.device_get_count)(&mut count))?;
    }
    Ok(DriverInfo {
        api,
        device_count: count,
    })
}

impl CudaBackend {
    pub fn new() -> CudaBackend {
        CudaBackend::default()
    }

    fn driver(&self) -> Result<DriverInfo, BackendError> {
        self.loaded.get_or_init(init_driver).clone()
    }

    /// Number of devices the driver reports (an error when there is no driver).
    pub fn device_count(&self) -> Result<i32, BackendError> {
        Ok(self.driver()?.device_count)
    }

    fn checked_device(&self, device: i32) -> Result<DriverInfo, BackendError> {
        let info = self.driver()?;
        if device < 0 || device >= info.device_count {
            return Err(BackendError::InvalidDevice {
                backend: "cuda",
                device,
            });
        }
        Ok(info)
    }

    /// The primary context of `device`, retained the first time (and kept while the process runs).
    fn context(&self, device: i32) -> Result<(&'static Api, CuContext), BackendError> {
        let info = self.checked_device(device)?;
        let api = info.api;
        let mut contexts = self.contexts.lock();
        if let Some(&ctx) = contexts.get(&device) {
            return Ok((api, ctx as CuContext));
        }
        let ctx = retain(api, device)?;
        contexts.insert(device, ctx as usize);
        Ok((api, ctx))
    }

    /// `device`'s context, current on this thread until the guard drops.
    fn enter(&self, device: i32) -> Result<(&'static Api, Current), BackendError> {
        let (api, ctx) = self.context(device)?;
        Ok((api, Current::enter(api, device, ctx)?))
    }

    /// Whether a call on `device` from this thread had to switch contexts (and switched back): for
    /// the tests that the caller's current context is left alone.
    pub fn switches_context(&self, device: i32) -> Result<bool, BackendError> {
        Ok(self.enter(device)?.1.pushed())
    }

    /// Checks that `device` works end to end: the driver loads, `cuInit` succeeds, the device
    /// exists, its primary context can be retained and made current, and 512 bytes can be allocated
    /// and freed. Leaves no context current and none retained that the runtime did not already hold
    /// (a process that will use another GPU keeps no context on this one). Returns the device count.
    pub fn preflight(&self, device: i32) -> Result<i32, BackendError> {
        let info = self.checked_device(device)?;
        let api = info.api;
        let ctx = retain(api, device)?;
        let result = (|| {
            let _current = Current::enter(api, device, ctx)?;
            let mut ptr: CuDevicePtr = 0;
            // SAFETY: a context is current; a valid out-pointer; ptr freed once below.
            unsafe {
                api.check(
                    "cuMemAlloc",
                    device,
                    (api.mem_alloc)(&mut ptr, PREFLIGHT_BYTES),
                )?;
                api.check("cuMemFree", device, (api.mem_free)(ptr))
            }
        })();
        // SAFETY: balances the retain above; the runtime holds its own reference when it uses the
        // device, so a context only the preflight made is destroyed here.
        unsafe { (api.primary_ctx_release)(device) };
        result.map(|()| info.device_count)
    }
}

/// Retains the primary context of `device`.
fn retain(api: &'static Api, device: i32) -> Result<CuContext, BackendError> {
    let mut dev: CuDevice = 0;
    let mut ctx: CuContext = std::ptr::null_mut();
    // SAFETY: the driver is initialised; out-pointers are valid.
    unsafe {
        api.check("cuDeviceGet", device, (api.device_get)(&mut dev, device))?;
        api.check(
            "cuDevicePrimaryCtxRetain",
            device,
            (api.primary_ctx_retain)(&mut ctx, dev),
        )?;
    }
    Ok(ctx)
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, device: i32, size: usize) -> Result<usize, BackendError> {
        let (api, _current) = self.enter(device)?;
        let mut ptr: CuDevicePtr = 0;
        // In the relaxed capture mode for this call, as PyTorch's allocator does: a CUDA graph being
        // captured (in the default, global mode) would otherwise refuse the allocation, and the
        // graph's private pool grows this way. Allocating is safe during a capture; the segments of a
        // graph's pool are never freed before the graph is gone (`graph_pools.rs`).
        let mut mode = CAPTURE_MODE_RELAXED;
        let exchange = api.thread_exchange_capture_mode.filter(|exchange| {
            // SAFETY: mode is a valid in/out pointer; the mode is the calling thread's own.
            unsafe { exchange(&mut mode) == driver::CUDA_SUCCESS }
        });
        // SAFETY: a context is current; ptr is a valid out-pointer.
        let r = unsafe { (api.mem_alloc)(&mut ptr, size) };
        if let Some(exchange) = exchange {
            // SAFETY: as above; puts the thread's previous mode back.
            unsafe { exchange(&mut mode) };
        }
        if r == CUDA_ERROR_OUT_OF_MEMORY {
            return Err(BackendError::OutOfMemory {
                backend: "cuda",
                device,
                size,
                detail: "cuMemAlloc returned CUDA_ERROR_OUT_OF_MEMORY".to_string(),
            });
        }
        api.check("cuMemAlloc", device, r)?;
        Ok(ptr as usize)
    }

    fn free(&self, device: i32, addr: usize, _size: usize) -> Result<(), BackendError> {
        let (api, _current) = self.enter(device)?;
        // SAFETY: addr came from cuMemAlloc on this device and is freed once.
        api.check("cuMemFree", device, unsafe {
            (api.mem_free)(addr as CuDevicePtr)
        })
    }

    fn synchronize(&self, device: i32) -> Result<(), BackendError> {
        let (api, _current) = self.enter(device)?;
        // SAFETY: a context is current.
        api.check("cuCtxSynchronize", device, unsafe {
            (api.ctx_synchronize)()
        })
    }

    fn mem_info(&self, device: i32) -> Result<Option<(u64, u64)>, BackendError> {
        let (api, _current) = self.enter(device)?;
        let Some(get_info) = api.mem_get_info else {
            return Ok(None);
        };
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: a context is current; out-pointers are valid.
        api.check("cuMemGetInfo", device, unsafe {
            get_info(&mut free, &mut total)
        })?;
        Ok(Some((free as u64, total as u64)))
    }

    fn check_stream(&self, device: i32, stream: usize) -> Result<(), BackendError> {
        let (api, _current) = self.enter(device)?;
        let mut status = CAPTURE_STATUS_NONE;
        // SAFETY: a context is current (the legacy stream, 0, means its stream); `stream` is the
        // cudaStream_t PyTorch passed (the same handle as a CUstream); a valid out-pointer.
        let r = unsafe { (api.stream_is_capturing)(stream as CuStream, &mut status) };
        if r == CUDA_ERROR_STREAM_CAPTURE_IMPLICIT {
            // The legacy stream while another stream captures: it is not part of that capture.
            return Ok(());
        }
        api.check("cuStreamIsCapturing", device, r)?;
        if status != CAPTURE_STATUS_NONE {
            return Err(BackendError::Capturing {
                device,
                stream,
                status,
            });
        }
        Ok(())
    }

    fn frees_into_capture(&self, device: i32, stream: usize) -> bool {
        // Every failure answers yes: memory wrongly held is only memory, memory wrongly reused is
        // a replay writing into someone else's tensor.
        let Ok((api, _current)) = self.enter(device) else {
            return true;
        };
        let mut status = CAPTURE_STATUS_NONE;
        // SAFETY: as in check_stream.
        let r = unsafe { (api.stream_is_capturing)(stream as CuStream, &mut status) };
        // CUDA_ERROR_STREAM_CAPTURE_IMPLICIT counts as capturing here, unlike in check_stream: a
        // blocking stream of the device is capturing, and the legacy stream's tensor freed now may
        // be one that capture reads. (PyTorch's own streams are non-blocking: a capture on one of
        // them leaves the legacy stream answering "not capturing".)
        r != driver::CUDA_SUCCESS || status != CAPTURE_STATUS_NONE
    }

    fn record_event(&self, device: i32, stream: usize) -> Result<Option<Event>, BackendError> {
        let (api, _current) = self.enter(device)?;
        let mut event: CuEvent = std::ptr::null_mut();
        // SAFETY: a context is current; `event` is a valid out-pointer; `stream` is the CUstream
        // PyTorch passed to record_stream.
        unsafe {
            api.check(
                "cuEventCreate",
                device,
                (api.event_create)(&mut event, CU_EVENT_DISABLE_TIMING),
            )?;
            if let Err(e) = api.check(
                "cuEventRecord",
                device,
                (api.event_record)(event, stream as CuStream),
            ) {
                (api.event_destroy)(event);
                return Err(e);
            }
        }
        Ok(Some(Event(event as usize)))
    }

    fn event_done(&self, device: i32, event: Event) -> Result<bool, BackendError> {
        let (api, _current) = self.enter(device)?;
        // SAFETY: the event came from record_event and has not been destroyed.
        let r = unsafe { (api.event_query)(event.0 as CuEvent) };
        if r == CUDA_ERROR_NOT_READY {
            return Ok(false);
        }
        api.check("cuEventQuery", device, r)?;
        Ok(true)
    }

    fn wait_event(&self, device: i32, event: Event) -> Result<(), BackendError> {
        let (api, _current) = self.enter(device)?;
        // SAFETY: the event came from record_event and has not been destroyed.
        api.check("cuEventSynchronize", device, unsafe {
            (api.event_synchronize)(event.0 as CuEvent)
        })
    }

    fn destroy_event(&self, device: i32, event: Event) {
        if let Ok((api, _current)) = self.enter(device) {
            // SAFETY: the event came from record_event and is destroyed once.
            unsafe { (api.event_destroy)(event.0 as CuEvent) };
        }
    }
}
