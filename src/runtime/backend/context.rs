//! Making a device's context current for one driver call, and putting the caller's back afterwards.
//!
//! The runtime runs on the caller's thread (PyTorch's main thread, autograd workers, the NCCL
//! watchdog), which has its own current context: PyTorch's current device. Setting ours and leaving
//! it would move the caller to another GPU, so a later `device='cuda'` allocation would land there.
//! The guard pushes the context only when another one is current, and pops it when dropped.

use super::driver::{Api, CuContext};
use super::BackendError;

/// `ctx` is current on this thread while the guard lives.
#[must_use = "the context is only current while the guard lives"]
pub struct Current {
    api: &'static Api,
    pushed: bool,
}

impl Current {
    /// Makes `ctx` (the primary context of `device`) current, unless it already is.
    pub fn enter(api: &'static Api, device: i32, ctx: CuContext) -> Result<Current, BackendError> {
        let mut now: CuContext = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        api.check("cuCtxGetCurrent", device, unsafe {
            (api.ctx_get_current)(&mut now)
        })?;
        if now == ctx {
            return Ok(Current { api, pushed: false });
        }
        // SAFETY: ctx is a retained primary context, never released while the backend lives.
        api.check("cuCtxPushCurrent", device, unsafe {
            (api.ctx_push_current)(ctx)
        })?;
        Ok(Current { api, pushed: true })
    }

    /// Whether entering changed the current context (for the tests of the guard's callers).
    pub fn pushed(&self) -> bool {
        self.pushed
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        if self.pushed {
            let mut popped: CuContext = std::ptr::null_mut();
            // SAFETY: pops what `enter` pushed on this thread. A failure (a context already broken by
            // a sticky error) leaves nothing better to do: the call that broke it reported it.
            unsafe { (self.api.ctx_pop_current)(&mut popped) };
        }
    }
}
