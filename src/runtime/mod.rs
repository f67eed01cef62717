//! The allocator runtime: record one training step, plan it, and replay it from one arena.
//!
//! Requests come through the C ABI (`crate::ffi`) from PyTorch's CUDA allocator hooks or the CPU shim.
//! Each device has a fallback caching pool ([`fallback`]), a recording of the profiled step
//! ([`trace`]), the plan made from it ([`planning`]), the arena that holds it ([`arena`]), and the
//! replay that maps the step's k-th allocation to its planned address ([`replay`]) after the safety
//! check. Memory comes from a [`backend`]: CUDA through the driver API, or host memory.

pub mod arena;
pub mod backend;
pub mod device;
pub mod error;
pub mod fallback;
pub mod global;
pub mod graph_pools;
pub mod mode;
pub mod planning;
pub mod replay;
pub mod signatures;
pub mod state;
pub mod stats;
pub mod trace;

pub use backend::{Backend, BackendError, CudaBackend, HostBackend, HOST_DEVICE};
pub use error::RuntimeError;
pub use mode::Mode;
pub use state::{PlanSummary, Runtime, RuntimeConfig};
pub use stats::{Counters, Stats, StepStats};
