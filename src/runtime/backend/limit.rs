//! A memory limit per device, in front of another backend: the device is as large as the limit says.
//! `torch.cuda.set_per_process_memory_fraction` (the C ABI's `model_opt_set_memory_fraction`) and
//! `model_opt.set_memory_limit` set it. A request that would take the device's memory past its limit
//! is out of memory, exactly as when the device itself runs out: the fallback pool gives back its
//! cache and retries, an idle arena is returned, and only then does the caller get NULL (PyTorch's
//! out-of-memory error). Nothing is lost: the runtime stays usable.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::{Backend, BackendError, Event};

/// What one device holds from the inner backend, and how much it may hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub reserved: u64,
    pub limit: Option<u64>,
}

/// `inner` with a limit per device (none until one is set).
#[derive(Debug)]
pub struct Limited<B> {
    inner: B,
    devices: Mutex<HashMap<i32, Usage>>,
}

impl<B: Backend> Limited<B> {
    pub fn new(inner: B) -> Limited<B> {
        Limited {
            inner,
            devices: Mutex::new(HashMap::new()),
        }
    }

    fn devices(&self) -> MutexGuard<'_, HashMap<i32, Usage>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backend behind the limits.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Sets (or with `None` lifts) the limit of `device`, in bytes. Memory already held above a new
    /// limit stays; only new requests are refused until enough is given back.
    pub fn set_limit(&self, device: i32, limit: Option<u64>) {
        self.devices().entry(device).or_default().limit = limit;
    }

    /// What `device` holds and may hold.
    pub fn usage(&self, device: i32) -> Usage {
        self.devices().get(&device).copied().unwrap_or_default()
    }
}

impl<B: Backend> Backend for Limited<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn name_of(&self, device: i32) -> &'static str {
        self.inner.name_of(device)
    }

    fn alloc(&self, device: i32, size: usize) -> Result<usize, BackendError> {
        // Held across the inner allocation, so that two threads cannot both pass the check.
        let mut devices = self.devices();
        let usage = devices.entry(device).or_default();
        if let Some(limit) = usage.limit {
            if usage.reserved.saturating_add(size as u64) > limit {
                return Err(BackendError::OutOfMemory {
                    backend: self.inner.name_of(device),
                    device,
                    size,
                    detail: format!(
                        "the device's memory limit is {limit} bytes and {} are held",
                        usage.reserved
                    ),
                });
            }
        }
        let addr = self.inner.alloc(device, size)?;
        usage.reserved += size as u64;
        Ok(addr)
    }

    fn free(&self, device: i32, addr: usize, size: usize) -> Result<(), BackendError> {
        self.inner.free(device, addr, size)?;
        let mut devices = self.devices();
        let usage = devices.entry(device).or_default();
        usage.reserved = usage.reserved.saturating_sub(size as u64);
        Ok(())
    }

    fn synchronize(&self, device: i32) -> Result<(), BackendError> {
        self.inner.synchronize(device)
    }

    fn mem_info(&self, device: i32) -> Result<Option<(u64, u64)>, BackendError> {
        self.inner.mem_info(device)
    }

    fn check_stream(&self, device: i32, stream: usize) -> Result<(), BackendError> {
        self.inner.check_stream(device, stream)
    }

    fn frees_into_capture(&self, device: i32, stream: usize) -> bool {
        self.inner.frees_into_capture(device, stream)
    }

    fn record_event(&self, device: i32, stream: usize) -> Result<Option<Event>, BackendError> {
        self.inner.record_event(device, stream)
    }

    fn event_done(&self, device: i32, event: Event) -> Result<bool, BackendError> {
        self.inner.event_done(device, event)
    }

    fn wait_event(&self, device: i32, event: Event) -> Result<(), BackendError> {
        self.inner.wait_event(device, event)
    }

    fn destroy_event(&self, device: i32, event: Event) {
        self.inner.destroy_event(device, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{HostBackend, HOST_DEVICE};

    #[test]
    fn requests_past_the_limit_are_out_of_memory_and_frees_make_room() {
        let b = Limited::new(HostBackend::new());
        let a = b.alloc(HOST_DEVICE, 4096).unwrap();
        b.set_limit(HOST_DEVICE, Some(8192));
        let c = b.alloc(HOST_DEVICE, 4096).unwrap();
        let e = b.alloc(HOST_DEVICE, 512).unwrap_err();
        assert!(e.is_out_of_memory(), "{e}");
        assert!(
            e.to_string()
                .contains("limit is 8192 bytes and 8192 are held"),
            "{e}"
        );
        b.free(HOST_DEVICE, a, 4096).unwrap();
        let d = b.alloc(HOST_DEVICE, 4096).unwrap();
        assert_eq!(
            b.usage(HOST_DEVICE),
            Usage {
                reserved: 8192,
                limit: Some(8192)
            }
        );
        // Other devices have no limit; lifting it lets the device grow again.
        b.set_limit(HOST_DEVICE, None);
        let f = b.alloc(HOST_DEVICE, 4096).unwrap();
        for x in [c, d, f] {
            b.free(HOST_DEVICE, x, 4096).unwrap();
        }
        assert_eq!(b.usage(HOST_DEVICE).reserved, 0);
    }
}
