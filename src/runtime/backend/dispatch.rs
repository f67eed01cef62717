//! The backend of the process-wide runtime: host memory for [`HOST_DEVICE`], CUDA for devices `0..`.
//! One runtime (one state machine, one set of statistics) serves both the CPU shim and PyTorch's
//! CUDA allocator hooks.

use super::{Backend, BackendError, CudaBackend, Event, HostBackend, HOST_DEVICE};

#[derive(Debug, Default)]
pub struct DispatchBackend {
    host: HostBackend,
    cuda: CudaBackend,
}

impl DispatchBackend {
    pub fn new() -> DispatchBackend {
        DispatchBackend::default()
    }

    /// The CUDA half (for the preflight of `model_opt.allocator()`).
    pub fn cuda(&self) -> &CudaBackend {
        &self.cuda
    }

    fn pick(&self, device: i32) -> &dyn Backend {
        if device == HOST_DEVICE {
            &self.host
        } else {
            &self.cuda
        }
    }
}

impl Backend for DispatchBackend {
    fn name(&self) -> &'static str {
        "host+cuda"
    }

    fn name_of(&self, device: i32) -> &'static str {
        self.pick(device).name()
    }

    fn alloc(&self, device: i32, size: usize) -> Result<usize, BackendError> {
        self.pick(device).alloc(device, size)
    }

    fn free(&self, device: i32, addr: usize, size: usize) -> Result<(), BackendError> {
        self.pick(device).free(device, addr, size)
    }

    fn synchronize(&self, device: i32) -> Result<(), BackendError> {
        self.pick(device).synchronize(device)
    }

    fn mem_info(&self, device: i32) -> Result<Option<(u64, u64)>, BackendError> {
        self.pick(device).mem_info(device)
    }

    fn check_stream(&self, device: i32, stream: usize) -> Result<(), BackendError> {
        self.pick(device).check_stream(device, stream)
    }

    fn frees_into_capture(&self, device: i32, stream: usize) -> bool {
        self.pick(device).frees_into_capture(device, stream)
    }

    fn record_event(&self, device: i32, stream: usize) -> Result<Option<Event>, BackendError> {
        self.pick(device).record_event(device, stream)
    }

    fn event_done(&self, device: i32, event: Event) -> Result<bool, BackendError> {
        self.pick(device).event_done(device, event)
    }

    fn wait_event(&self, device: i32, event: Event) -> Result<(), BackendError> {
        self.pick(device).wait_event(device, event)
    }

    fn destroy_event(&self, device: i32, event: Event) {
        self.pick(device).destroy_event(device, event)
    }
}
