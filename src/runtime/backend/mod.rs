//! Where the runtime's memory comes from: a backend hands out raw device (or host) memory, in large
//! pieces; the arena and the fallback pool carve it up. Addresses are plain `usize` so the runtime's
//! state is `Send` without wrapping raw pointers.

mod context;
pub mod cuda;
pub mod dispatch;
pub mod driver;
pub mod host;
pub mod limit;

use thiserror::Error;

pub use cuda::CudaBackend;
pub use dispatch::DispatchBackend;
pub use host::HostBackend;
pub use limit::Limited;

/// Device index the runtime uses for host memory (the CPU shim); CUDA devices are `0..`.
pub const HOST_DEVICE: i32 = -1;

/// A source of raw memory. Implementations must be callable from any thread.
pub trait Backend: Send + Sync {
    /// A short name for messages and statistics (`host`, `cuda`).
    fn name(&self) -> &'static str;

    /// The name of the backend that serves `device`, for messages (differs from [`Backend::name`]
    /// only for a backend that dispatches devices to others).
    fn name_of(&self, _device: i32) -> &'static str {
        self.name()
    }

    /// `size` bytes (never 0) on `device`, aligned to at least 512 bytes.
    fn alloc(&self, device: i32, size: usize) -> Result<usize, BackendError>;

    /// Returns memory obtained from [`Backend::alloc`] with the same `device` and `size`.
    fn free(&self, device: i32, addr: usize, size: usize) -> Result<(), BackendError>;

    /// Waits until work queued on `device` is done, so memory a stream used can be reused safely.
    fn synchronize(&self, device: i32) -> Result<(), BackendError>;

    /// `(free, total)` bytes of the device, when the backend knows them.
    fn mem_info(&self, device: i32) -> Result<Option<(u64, u64)>, BackendError>;

    /// Refuses a request for `stream` that must not be served now: on CUDA, a stream that is capturing
    /// a CUDA graph ([`BackendError::Capturing`]). Called before every request.
    fn check_stream(&self, _device: i32, _stream: usize) -> Result<(), BackendError> {
        Ok(())
    }

    /// Whether memory freed now on `stream` may belong to a CUDA graph being captured: the stream
    /// captures, or (the legacy stream) a blocking stream of its device does, or the driver could not
    /// tell. Such memory must never be handed out again, since the graph's replays still use it.
    /// Never an error: when in doubt, the answer is yes. Host memory: never.
    fn frees_into_capture(&self, _device: i32, _stream: usize) -> bool {
        false
    }

    /// Marks the point that the work queued so far on `stream` has reached, so memory that stream
    /// used can be reused once that work is done, without waiting for the whole device. `None` when
    /// the backend runs nothing asynchronously (host memory): there is nothing to wait for.
    fn record_event(&self, _device: i32, _stream: usize) -> Result<Option<Event>, BackendError> {
        Ok(None)
    }

    /// Whether the work before `event` is done; never blocks.
    fn event_done(&self, _device: i32, _event: Event) -> Result<bool, BackendError> {
        Ok(true)
    }

    /// Waits until the work before `event` is done (only that stream's work, not the device's).
    fn wait_event(&self, _device: i32, _event: Event) -> Result<(), BackendError> {
        Ok(())
    }

    /// Releases an event from [`Backend::record_event`].
    fn destroy_event(&self, _device: i32, _event: Event) {}
}

/// A backend's handle to a recorded event (a `CUevent` for CUDA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event(pub usize);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendError {
    #[error(
        "out of memory on {backend} device {device}: could not allocate {size} bytes ({detail}). Free tensors \
         that are no longer needed, call empty_cache() to return cached memory, or reduce the batch size"
    )]
    OutOfMemory {
        backend: &'static str,
        device: i32,
        size: usize,
        detail: String,
    },
    #[error(
        "no CUDA driver: {0}. Install the NVIDIA driver (libcuda.so.1) or point MODEL_OPT_LIBCUDA at it; \
         on a machine without a GPU use model_opt.install_cpu_allocator() instead"
    )]
    NoDriver(String),
    #[error(
        "CUDA driver call {call} failed with {code} on device {device}: check that the device is visible \
         (CUDA_VISIBLE_DEVICES) and healthy (nvidia-smi)"
    )]
    Driver {
        call: &'static str,
        code: String,
        device: i32,
    },
    #[error(
        "stream {stream:#x} of CUDA device {device} is capturing a CUDA graph (capture status {status}) \
         that no pool hook announced: model_opt serves a capture (torch.cuda.graph, torch.compile \
         mode=\"reduce-overhead\") from the graph's private pool only when PyTorch tells it which stream \
         captures, through the pool hooks model_opt.allocator() sets when its CUDA front is built with \
         the CUDA runtime headers (see its warning). Served from the shared memory instead, a capture's \
         memory would be handed out again while the graph's replays still use it. Install the CUDA \
         runtime headers (or set CUDA_HOME), capture graphs with PyTorch's own CUDA allocator, or compile \
         without CUDA graphs (mode=\"max-autotune-no-cudagraphs\")"
    )]
    Capturing {
        device: i32,
        stream: usize,
        status: i32,
    },
    #[error("{backend} backend has no device {device}: use a device index the driver reports")]
    InvalidDevice { backend: &'static str, device: i32 },
}

impl BackendError {
    /// A request no device can serve: larger than any allocation can be (`isize::MAX` bytes).
    pub fn too_large(backend: &'static str, device: i32, size: usize) -> BackendError {
        BackendError::OutOfMemory {
            backend,
            device,
            size,
            detail: format!(
                "larger than the largest possible allocation, {} bytes",
                isize::MAX
            ),
        }
    }

    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, BackendError::OutOfMemory { .. })
    }
}
