//! [`Runtime`]: the allocator PyTorch calls, one per process (see `global.rs`) or one per test.
//! All state sits behind one lock: allocation and free can come from several threads at once (on
//! GPU, backward runs on autograd worker threads), and the lock is held for a few map operations.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::arena::Arena;
use super::backend::{Backend, BackendError, HOST_DEVICE};
use super::device::{DeviceState, ReplayLimits, Route};
use super::error::RuntimeError;
use super::fallback::MAX_REQUEST;
use super::global;
use super::mode::Mode;
use super::planning::{plan_trace, DevicePlan};
use super::replay::Replay;
use super::stats::{Counters, Stats, StepStats};
use super::trace::Trace;
use crate::placement::PlanOptions;

/// Tunables of a runtime.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeConfig {
    /// Divergences allowed in one step before the rest of the step stops using the plan.
    pub max_divergences: u64,
    /// How many plan entries past the cursor a request may match (see `replay.rs`).
    pub lookahead: usize,
    /// Arena offsets and slot sizes are multiples of this (512 like CUDA's caching allocator; it
    /// also covers the 64 bytes PyTorch's CPU kernels expect).
    pub alignment: usize,
    /// After a step with divergences, record the next step too, and when it diverges as well, plan
    /// again from it (so profiling an unrepresentative step, such as the first of training, heals
    /// itself after two steps).
    pub auto_replan: bool,
    /// Time limit of those automatic re-plans, which run at the end of a step.
    pub auto_replan_time_limit: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            max_divergences: 100,
            lookahead: 8,
            alignment: 512,
            auto_replan: true,
            auto_replan_time_limit: Duration::from_secs(1),
        }
    }
}

/// What `plan()` did, over all devices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanSummary {
    pub buffers: usize,
    pub persistent_buffers: usize,
    pub persistent_bytes: u64,
    pub lower_bound_bytes: u64,
    pub arena_bytes: u64,
    pub method: String,
    pub elapsed: Duration,
    pub devices: Vec<i32>,
}

struct Inner {
    mode: Mode,
    in_step: bool,
    /// The open step is also being recorded (automatic re-plan).
    step_recording: bool,
    /// The last step diverged: record the next one.
    record_next_step: bool,
    has_trace: bool,
    devices: Vec<DeviceState>,
    counters: Counters,
    config: RuntimeConfig,
    last_step: StepStats,
    last_plan: Option<PlanSummary>,
}

impl Inner {
    fn device(&mut self, device: i32) -> &mut DeviceState {
        let i = match self.devices.iter().position(|d| d.device == device) {
            Some(i) => i,
            None => {
                self.devices.push(DeviceState::new(device));
                self.devices.len() - 1
            }
        };
        &mut self.devices[i]
    }

    fn route(&self) -> Route {
        match (self.mode, self.in_step) {
            (Mode::Recording, _) => Route::Record,
            (Mode::Planned, true) if self.step_recording => Route::ReplayRecord,
            (Mode::Planned, true) => Route::Replay,
            _ => Route::Fallback,
        }
    }
}

pub struct Runtime {
    backend: Arc<dyn Backend>,
    inner: Mutex<Inner>,
}

impl Runtime {
    pub fn new(backend: Arc<dyn Backend>, config: RuntimeConfig) -> Runtime {
        Runtime {
            backend,
            inner: Mutex::new(Inner {
                mode: Mode::Passthrough,
                in_step: false,
                step_recording: false,
                record_next_step: false,
                has_trace: false,
                devices: Vec::new(),
                counters: Counters::default(),
                config,
                last_step: StepStats::default(),
                last_plan: None,
            }),
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn mode(&self) -> Mode {
        self.inner.lock().mode
    }

    pub fn set_max_divergences(&self, n: u64) {
        self.inner.lock().config.max_divergences = n;
    }

    /// Turns the automatic re-plan after diverging steps on or off (see [`RuntimeConfig`]).
    pub fn set_auto_replan(&self, on: bool) {
        let mut inner = self.inner.lock();
        inner.config.auto_replan = on;
        if !on {
            inner.record_next_step = false;
        }
    }

    /// `size` bytes on `device` for `stream` (0 for a size of 0). Fails only when the backend cannot
    /// provide the memory.
    pub fn alloc(&self, device: i32, size: usize, stream: usize) -> Result<usize, RuntimeError> {
        if size == 0 {
            return Ok(0);
        }
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if size > MAX_REQUEST {
            // Refused before any size arithmetic: no rounding of it can be trusted not to wrap.
            inner.counters.out_of_memory += 1;
            let kind = if device == HOST_DEVICE {
                "host"
            } else {
                "cuda"
            };
            return Err(BackendError::too_large(kind, device, size).into());
        }
        let route = inner.route();
        let limits = ReplayLimits {
            max_divergences: inner.config.max_divergences,
            lookahead: inner.config.lookahead,
        };
        let i = match inner.devices.iter().position(|d| d.device == device) {
            Some(i) => i,
            None => {
                inner.device(device);
                inner.devices.len() - 1
            }
        };
        let ds = &mut inner.devices[i];
        match ds.alloc(
            &*self.backend,
            route,
            size,
            stream,
            limits,
            &mut inner.counters,
        ) {
            Ok(addr) => Ok(addr),
            Err(e) => {
                if e.is_out_of_memory() {
                    inner.counters.out_of_memory += 1;
                }
                Err(e.into())
            }
        }
    }

    /// Takes back `addr` (0 is ignored). An address the runtime did not hand out is counted and
    /// reported, never passed on.
    pub fn free(&self, device: i32, addr: usize) -> Result<(), RuntimeError> {
        if addr == 0 {
            return Ok(());
        }
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let recording = inner.mode == Mode::Recording || inner.step_recording;
        // The device PyTorch names first; any other one if it is wrong.
        let named = inner.devices.iter().position(|d| d.device == device);
        if let Some(i) = named {
            if inner.devices[i].free(&*self.backend, addr, recording, &mut inner.counters) {
                return Ok(());
            }
        }
        for i in 0..inner.devices.len() {
            if Some(i) != named
                && inner.devices[i].free(&*self.backend, addr, recording, &mut inner.counters)
            {
                return Ok(());
            }
        }
        inner.counters.unknown_frees += 1;
        Err(RuntimeError::Usage(format!(
            "free of {addr:#x} on device {device}, which model_opt did not allocate (or already freed); ignored. \
             Memory allocated before model_opt's allocator was installed must be freed by the allocator that made it"
        )))
    }

    /// `addr` is used on `stream` too: it goes to the fallback from now on, and its memory waits for
    /// that stream's work when it is freed (see `device.rs`). False for an address not live here.
    pub fn record_stream(&self, addr: usize, stream: usize) -> bool {
        let mut inner = self.inner.lock();
        inner
            .devices
            .iter_mut()
            .any(|d| d.record_stream(addr, stream))
    }

    /// Returns cached memory that nothing uses to the backend (PyTorch's `empty_cache`); the plan's
    /// arena stays reserved. Returns the bytes released.
    pub fn empty_cache(&self) -> Result<usize, RuntimeError> {
        let mut inner = self.inner.lock();
        let mut released = 0;
        for d in inner.devices.iter_mut() {
            d.flush_quarantine(&*self.backend)?;
            released += d.pool.release_cached(&*self.backend, d.device);
        }
        Ok(released)
    }

    /// Starts recording a step (`profile()`).
    pub fn begin_profile(&self) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock();
        match (inner.mode, inner.in_step) {
            (Mode::Recording, _) => Err(RuntimeError::WrongMode {
                action: "start profiling",
                mode: Mode::Recording,
                hint: "profile() blocks cannot be nested",
            }),
            (_, true) => Err(RuntimeError::WrongMode {
                action: "start profiling",
                mode: inner.mode,
                hint: "a step() block is open; profile outside of step()",
            }),
            _ => {
                inner.mode = Mode::Recording;
                inner.record_next_step = false;
                for d in inner.devices.iter_mut() {
                    d.trace = Trace::new();
                }
                Ok(())
            }
        }
    }

    /// Ends the recording. With a plan from before, the runtime stays planned (the old plan keeps
    /// serving steps until `plan()` replaces it).
    pub fn end_profile(&self) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock();
        if inner.mode != Mode::Recording {
            return Err(RuntimeError::WrongMode {
                action: "end profiling",
                mode: inner.mode,
                hint: "no profile() block is open",
            });
        }
        for d in inner.devices.iter_mut() {
            d.trace.finish();
        }
        inner.has_trace = true;
        inner.mode = if inner.devices.iter().any(|d| d.replay.is_some()) {
            Mode::Planned
        } else {
            Mode::Passthrough
        };
        Ok(())
    }

    /// Plans the recorded step of every device, reserves the arenas and switches to planned mode.
    /// Planning runs without the lock, so other threads keep allocating meanwhile.
    pub fn plan(&self, options: &PlanOptions) -> Result<PlanSummary, RuntimeError> {
        let (traces, alignment) = {
            let inner = self.inner.lock();
            if inner.mode == Mode::Recording || inner.in_step {
                return Err(RuntimeError::WrongMode {
                    action: "plan",
                    mode: inner.mode,
                    hint: "call plan() after the profile() block and outside step()",
                });
            }
            if !inner.has_trace {
                return Err(RuntimeError::Usage(
                    "no recorded step to plan: run one training step inside `with model_opt.profile():` first"
                        .to_string(),
                ));
            }
            let traces: Vec<(i32, Trace)> = inner
                .devices
                .iter()
                .map(|d| (d.device, d.trace.clone()))
                .collect();
            (traces, inner.config.alignment)
        };
        let mut plans: Vec<(i32, DevicePlan)> = Vec::with_capacity(traces.len());
        for (device, trace) in &traces {
            plans.push((*device, plan_trace(trace, *device, alignment, options)?));
        }

        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.mode == Mode::Recording || inner.in_step {
            return Err(RuntimeError::WrongMode {
                action: "finish planning",
                mode: inner.mode,
                hint: "profile() or step() started while plan() was running",
            });
        }
        // Reserve every arena first, so a failure leaves the runtime as it was.
        let mut arenas = Vec::with_capacity(plans.len());
        for (device, p) in &plans {
            let reserved = match Arena::reserve(&*self.backend, *device, p.arena_bytes) {
                Ok(a) => Ok(a),
                Err(e) if e.is_out_of_memory() => {
                    // Cached fallback memory may be what stands in the way.
                    let d = inner.device(*device);
                    d.pool.release_cached(&*self.backend, *device);
                    Arena::reserve(&*self.backend, *device, p.arena_bytes)
                }
                Err(e) => Err(e),
            };
            match reserved {
                Ok(a) => arenas.push(a),
                Err(e) => {
                    for ((d, _), a) in plans.iter().zip(arenas) {
                        let _ = a.free(&*self.backend, *d);
                    }
                    return Err(e.into());
                }
            }
        }
        let mut summary = PlanSummary::default();
        for ((device, p), arena) in plans.into_iter().zip(arenas) {
            summary.buffers += p.transient_buffers;
            summary.persistent_buffers += p.persistent_buffers;
            summary.persistent_bytes += p.persistent_bytes;
            summary.lower_bound_bytes += p.lower_bound;
            summary.arena_bytes += p.arena_bytes as u64;
            summary.elapsed += p.elapsed;
            for m in &p.methods {
                if !summary.method.split(", ").any(|x| x == m) {
                    if !summary.method.is_empty() {
                        summary.method.push_str(", ");
                    }
                    summary.method.push_str(m);
                }
            }
            summary.devices.push(device);
            inner
                .device(device)
                .install_plan(&*self.backend, arena, Replay::new(p));
        }
        inner.mode = Mode::Planned;
        inner.last_plan = Some(summary.clone());
        Ok(summary)
    }

    /// Starts a step that follows the plan (`step()`).
    pub fn begin_step(&self) -> Result<(), RuntimeError> {
        let mut inner = self.inner.lock();
        if inner.mode != Mode::Planned {
            return Err(RuntimeError::WrongMode {
                action: "start a planned step",
                mode: inner.mode,
                hint: "record a step inside `with model_opt.profile():` and call model_opt.plan() first",
            });
        }
        if inner.in_step {
            return Err(RuntimeError::WrongMode {
                action: "start a planned step",
                mode: inner.mode,
                hint: "step() blocks cannot be nested",
            });
        }
        inner.in_step = true;
        inner.step_recording = inner.config.auto_replan && inner.record_next_step;
        inner.record_next_step = false;
        let recording = inner.step_recording;
        for d in inner.devices.iter_mut() {
            d.step = StepStats::default();
            if recording {
                d.trace = Trace::new();
            }
            if let Some(r) = d.replay.as_mut() {
                r.start_step();
            }
        }
        Ok(())
    }

    /// Ends the step; what happened in it, over all devices.
    pub fn end_step(&self) -> Result<StepStats, RuntimeError> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if !inner.in_step {
            return Err(RuntimeError::WrongMode {
                action: "end a step",
                mode: inner.mode,
                hint: "no step() block is open",
            });
        }
        inner.in_step = false;
        inner.counters.steps += 1;
        let mut total = StepStats::default();
        for d in inner.devices.iter_mut() {
            total.allocations += d.step.allocations;
            total.planned_hits += d.step.planned_hits;
            total.persistent_allocations += d.step.persistent_allocations;
            total.transient_fallbacks += d.step.transient_fallbacks;
            total.divergences += d.step.divergences;
            total.abandoned |= d.step.abandoned;
            d.release_completed(&*self.backend);
        }
        inner.last_step = total.clone();
        let diverged = total.divergences > 0;
        let replan = inner.step_recording && diverged;
        if inner.step_recording {
            for d in inner.devices.iter_mut() {
                d.trace.finish();
            }
            inner.step_recording = false;
            inner.has_trace = true;
        }
        inner.record_next_step = inner.config.auto_replan && diverged && !replan;
        let options = PlanOptions {
            time_limit: inner.config.auto_replan_time_limit,
            ..Default::default()
        };
        drop(guard);
        if replan {
            // Two diverging steps in a row: the recorded step is the better plan. A failure (say, no
            // memory for the new arena) keeps the old plan; the reason is kept for stats().
            match self.plan(&options) {
                Ok(_) => self.inner.lock().counters.auto_replans += 1,
                Err(e) => global::set_last_error(format!(
                    "automatic re-plan failed, keeping the old plan: {e}"
                )),
            }
        }
        Ok(total)
    }

    pub fn reset_peak_stats(&self) {
        let mut inner = self.inner.lock();
        inner.counters.peak_allocated_bytes = inner.counters.allocated_bytes;
    }

    pub fn last_plan(&self) -> Option<PlanSummary> {
        self.inner.lock().last_plan.clone()
    }

    pub fn stats(&self) -> Stats {
        let inner = self.inner.lock();
        let arena: u64 = inner.devices.iter().map(|d| d.arena_bytes() as u64).sum();
        let pool: u64 = inner
            .devices
            .iter()
            .map(|d| d.pool.reserved_bytes() as u64)
            .sum();
        // A loaded plan is active unless the open step has given up on it on every device.
        let plan_active = inner.mode == Mode::Planned
            && (!inner.in_step
                || inner
                    .devices
                    .iter()
                    .any(|d| d.replay.as_ref().is_some_and(|r| !r.abandoned)));
        let plan = inner.last_plan.clone().unwrap_or_default();
        let mut last_step = inner.last_step.clone();
        if inner.in_step {
            last_step = StepStats::default();
            for d in &inner.devices {
                last_step.allocations += d.step.allocations;
                last_step.planned_hits += d.step.planned_hits;
                last_step.persistent_allocations += d.step.persistent_allocations;
                last_step.transient_fallbacks += d.step.transient_fallbacks;
                last_step.divergences += d.step.divergences;
                last_step.abandoned |= d.step.abandoned;
            }
        }
        Stats {
            mode: inner.mode.as_str(),
            in_step: inner.in_step,
            plan_active,
            counters: inner.counters.clone(),
            reserved_bytes: arena + pool,
            arena_bytes: arena,
            fallback_reserved_bytes: pool,
            lower_bound_bytes: plan.lower_bound_bytes,
            persistent_bytes: plan.persistent_bytes,
            plan_buffers: plan.buffers as u64,
            max_divergences: inner.config.max_divergences,
            last_step,
            devices: inner.devices.iter().map(|d| d.device).collect(),
        }
    }

    /// The recorded step as MiniMalloc CSV: `(transient, persistent)`. Transient rows are
    /// `id,lower,upper,size`; persistent rows are `id,lower,size,stream` (they never end in the step).
    pub fn trace_csv(&self) -> Result<(String, String), RuntimeError> {
        let inner = self.inner.lock();
        if !inner.has_trace {
            return Err(RuntimeError::Usage(
                "no recorded step: run one training step inside `with model_opt.profile():` first"
                    .to_string(),
            ));
        }
        let mut transient = String::from("id,lower,upper,size\n");
        let mut persistent = String::from("id,lower,size,stream\n");
        for d in &inner.devices {
            d.trace.transient_csv(d.device, &mut transient);
            d.trace.persistent_csv(d.device, &mut persistent);
        }
        Ok((transient, persistent))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        for d in inner.devices.iter_mut() {
            d.release_all(&*self.backend);
        }
    }
}
