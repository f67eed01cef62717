//! Host memory, page aligned: the backend of the CPU shim and of the tests.

use super::{Backend, BackendError};

/// Pages, so that every piece the runtime hands out is aligned like the device allocator's (512)
/// and like PyTorch's CPU allocator (64) at once.
pub const HOST_ALIGNMENT: usize = 4096;

#[derive(Debug, Default)]
pub struct HostBackend;

impl HostBackend {
    pub fn new() -> HostBackend {
        HostBackend
    }
}

impl Backend for HostBackend {
    fn name(&self) -> &'static str {
        "host"
    }

    fn alloc(&self, device: i32, size: usize) -> Result<usize, BackendError> {
        let mut ptr: *mut libc::c_void = std::ptr::null_mut();
        // SAFETY: posix_memalign writes a pointer or returns an error code; the alignment is a power of
        // two multiple of sizeof(void*).
        let rc = unsafe { libc::posix_memalign(&mut ptr, HOST_ALIGNMENT, size.max(1)) };
        if rc != 0 || ptr.is_null() {
            return Err(BackendError::OutOfMemory {
                backend: "host",
                device,
                size,
                detail: format!("posix_memalign returned {rc}"),
            });
        }
        Ok(ptr as usize)
    }

    fn free(&self, _device: i32, addr: usize, _size: usize) -> Result<(), BackendError> {
        // SAFETY: the runtime frees only addresses this backend returned, once each.
        unsafe { libc::free(addr as *mut libc::c_void) };
        Ok(())
    }

    fn synchronize(&self, _device: i32) -> Result<(), BackendError> {
        Ok(())
    }

    fn mem_info(&self, _device: i32) -> Result<Option<(u64, u64)>, BackendError> {
        Ok(None)
    }
}
