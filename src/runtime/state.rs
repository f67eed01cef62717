//! [`Runtime`]: the allocator PyTorch calls, one per process (see `global.rs`) or one per test.
//! All state sits behind one lock: allocation and free can come from several threads at once (on
//! GPU, backward runs on autograd worker threads), and the lock is held for a few map operations.

use std::sync::Arc;
use std::time::Duration;

use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard};

use super::arena::Arena;
use super::backend::{Backend, BackendError, HOST_DEVICE};
use super::device::{AfterStep, DeviceState, Recording, ReplayLimits, Route};
use super::error::RuntimeError;
use super::fallback::MAX_REQUEST;
use super::global;
use super::graph_pools::{GraphPoolError, PoolId};
use super::mode::{Mode, Phase};
use super::planning::{plan_trace_like, DevicePlan};
use super::signatures::{Start, DEFAULT_MAX_PLANS};
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
    /// Automatic planning: a step that follows no planned signature (a new sequence length, the
    /// accumulation step that runs the optimizer, a short last batch) is recorded and planned at its
    /// end; a signature whose steps diverge twice in a row is planned again from the second.
    pub auto_replan: bool,
    /// Planned signatures kept per device; the least recently used is dropped past it.
    pub max_plans: usize,
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
            max_plans: DEFAULT_MAX_PLANS,
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

/// A recorded step to plan as a signature of one device.
struct PlanJob {
    device: i32,
    trace: Trace,
    key: Option<String>,
    /// The planned signature that begins most like this step, and for how many requests.
    like: Option<(DevicePlan, usize)>,
    /// What the device held when the step began.
    start: Start,
}

impl PlanJob {
    /// The profiled step of `d`.
    fn profiled(d: &DeviceState) -> PlanJob {
        PlanJob::new(d, d.trace.clone(), None, d.profile_start)
    }

    /// The step `d` just ran.
    fn last_step(d: &DeviceState, key: Option<String>, start: Start) -> PlanJob {
        PlanJob::new(d, d.step_trace.clone(), key, start)
    }

    fn new(d: &DeviceState, trace: Trace, key: Option<String>, start: Start) -> PlanJob {
        let like = d.signatures.prefix_hint(&trace.requests());
        PlanJob {
            device: d.device,
            trace,
            key,
            like,
            start,
        }
    }
}

struct Inner {
    /// Where the runtime is (`mode.rs`): passthrough, recording, planned, or in a step.
    phase: Phase,
    /// A recorded step exists (what `plan()` and `save_trace` need).
    has_trace: bool,
    devices: Vec<DeviceState>,
    counters: Counters,
    config: RuntimeConfig,
    last_step: StepStats,
    last_plan: Option<PlanSummary>,
}

impl Inner {
    fn device(&mut self, device: i32) -> &mut DeviceState {
        let i = self.device_index(device);
        &mut self.devices[i]
    }

    /// Whether a CUDA graph capture is under way on any device (PyTorch's pool hooks said so).
    fn capturing(&self) -> bool {
        self.devices.iter().any(DeviceState::capturing)
    }

    /// The index of `device`'s state, made on first use.
    fn device_index(&mut self, device: i32) -> usize {
        match self.devices.iter().position(|d| d.device == device) {
            Some(i) => i,
            None => {
                self.devices.push(DeviceState::new(device));
                self.devices.len() - 1
            }
        }
    }

    fn route(&self) -> Route {
        self.phase.route(self.config.auto_replan)
    }

    fn recording(&self) -> Recording {
        self.phase.recording(self.config.auto_replan)
    }
}

pub struct Runtime {
    backend: Arc<dyn Backend>,
    inner: Mutex<Inner>,
}

thread_local! {
    /// The lock held across a `fork()` by the forking thread (see `global.rs`).
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, Inner>>> = const { RefCell::new(None) };
}

impl Runtime {
    pub fn new(backend: Arc<dyn Backend>, config: RuntimeConfig) -> Runtime {
        Runtime {
            backend,
            inner: Mutex::new(Inner {
                phase: Phase::Passthrough,
                has_trace: false,
                devices: Vec::new(),
                counters: Counters::default(),
                config,
                last_step: StepStats::default(),
                last_plan: None,
            }),
        }
    }

    /// The lock; a panic while it was held (caught at the C ABI) does not make it unusable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn mode(&self) -> Mode {
        self.lock().phase.mode()
    }

    pub fn set_max_divergences(&self, n: u64) {
        self.lock().config.max_divergences = n;
    }

    /// Turns the automatic re-plan after diverging steps on or off (see [`RuntimeConfig`]).
    pub fn set_auto_replan(&self, on: bool) {
        self.lock().config.auto_replan = on;
    }

    /// Planned signatures kept per device (at least 1); the least recently used beyond it are
    /// dropped when the next one is planned.
    pub fn set_max_plans(&self, n: usize) {
        self.lock().config.max_plans = n.max(1);
    }

    /// `size` bytes on `device` for `stream` (0 for a size of 0). Fails only when the backend cannot
    /// provide the memory or refuses the stream (one capturing a CUDA graph).
    pub fn alloc(&self, device: i32, size: usize, stream: usize) -> Result<usize, RuntimeError> {
        if size == 0 {
            return Ok(0);
        }
        if size > MAX_REQUEST {
            // Refused before any size arithmetic: no rounding of it can be trusted not to wrap.
            self.lock().counters.out_of_memory += 1;
            let kind = if device == HOST_DEVICE {
                "host"
            } else {
                "cuda"
            };
            return Err(BackendError::too_large(kind, device, size).into());
        }
        // Outside the runtime's lock: a driver query, and nothing of the runtime's state changes.
        self.backend.check_stream(device, stream)?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let route = inner.route();
        let limits = ReplayLimits {
            max_divergences: inner.config.max_divergences,
            lookahead: inner.config.lookahead,
            automatic: inner.config.auto_replan,
            alignment: inner.config.alignment,
        };
        let i = match inner.devices.iter().position(|d| d.device == device) {
            Some(i) => i,
            None => {
                inner.device(device);
                if inner.phase.in_step() {
                    // A device first used inside a step: its step follows no plan yet.
                    let key = inner.phase.step_key().map(str::to_string);
                    let automatic = inner.config.auto_replan;
                    if let Some(d) = inner.devices.last_mut() {
                        d.begin_step(&*self.backend, key.as_deref(), automatic);
                    }
                }
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

    /// A CUDA graph capture into pool `id` begins on `device` (PyTorch's `beginAllocateToPool`, through
    /// the CUDA front, which keeps the capture's filter and sends the requests it selects to
    /// [`Runtime::alloc_for_graph`]).
    pub fn begin_graph_capture(&self, device: i32, id: PoolId) {
        self.lock().device(device).begin_graph_capture(id);
    }

    /// The capture into `id` ended (`endAllocateToPool`). An end with no capture under way is
    /// refused and changes nothing.
    pub fn end_graph_capture(&self, device: i32, id: PoolId) -> Result<(), RuntimeError> {
        if self
            .lock()
            .device(device)
            .end_graph_capture(&*self.backend, id)
        {
            Ok(())
        } else {
            Err(RuntimeError::Usage(format!(
                "end of a CUDA graph capture into pool {id} on device {device}, which had none under way; ignored"
            )))
        }
    }

    /// PyTorch released pool `id` (`releasePool`: its graphs are gone): its memory goes back once
    /// nothing in it is in use.
    pub fn release_graph_pool(&self, device: i32, id: PoolId) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        if inner.device(device).release_graph_pool(&*self.backend, id) {
            Ok(())
        } else {
            Err(RuntimeError::Usage(format!(
                "release of CUDA graph pool {id} on device {device}, which model_opt does not know; ignored"
            )))
        }
    }

    /// `size` bytes on `device` for a request of a CUDA graph capture into pool `id`: served from that
    /// pool, whatever the runtime's mode (a graph's memory is never planned).
    pub fn alloc_for_graph(
        &self,
        device: i32,
        id: PoolId,
        size: usize,
        stream: usize,
    ) -> Result<usize, RuntimeError> {
        if size == 0 {
            return Ok(0);
        }
        let mut guard = self.lock();
        let inner = &mut *guard;
        let i = inner.device_index(device);
        let result =
            inner.devices[i].alloc_for_graph(&*self.backend, id, size, stream, &mut inner.counters);
        match result {
            Ok(addr) => Ok(addr),
            Err(GraphPoolError::Backend(e)) => {
                if e.is_out_of_memory() {
                    inner.counters.out_of_memory += 1;
                }
                Err(e.into())
            }
            Err(e @ GraphPoolError::UnknownPool(_)) => Err(RuntimeError::Usage(e.to_string())),
        }
    }

    /// Takes back `addr` (0 is ignored) without asking whether a CUDA graph is being captured:
    /// for host memory and callers that know no capture runs. PyTorch's CUDA frees come through
    /// [`Runtime::free_on`]. An address the runtime did not hand out is counted and reported, never
    /// passed on.
    pub fn free(&self, device: i32, addr: usize) -> Result<(), RuntimeError> {
        self.free_as(device, addr, false)
    }

    /// Takes back `addr`, allocated on `stream` of `device` (PyTorch's free hook passes both). When
    /// the backend says a CUDA graph may be capturing there ([`Backend::frees_into_capture`]), the
    /// memory is freed for its user but held for good, never handed out again: the graph's replays
    /// may write to it.
    pub fn free_on(&self, device: i32, addr: usize, stream: usize) -> Result<(), RuntimeError> {
        // Host memory is never captured: its frees skip the query (and stay as fast as before).
        let graph = addr != 0
            && device != HOST_DEVICE
            // Outside the runtime's lock: a driver query.
            && self.backend.frees_into_capture(device, stream);
        self.free_as(device, addr, graph)
    }

    fn free_as(&self, device: i32, addr: usize, graph: bool) -> Result<(), RuntimeError> {
        if addr == 0 {
            return Ok(());
        }
        let mut guard = self.lock();
        let inner = &mut *guard;
        let recording = inner.recording();
        let held = inner.counters.graph_held_frees;
        // The device PyTorch names first; any other one if it is wrong.
        let named = inner.devices.iter().position(|d| d.device == device);
        let backend = &*self.backend;
        let counters = &mut inner.counters;
        let devices = &mut inner.devices;
        let freed = named
            .is_some_and(|i| devices[i].free(backend, addr, recording, graph, counters))
            || (0..devices.len()).any(|i| {
                Some(i) != named && devices[i].free(backend, addr, recording, graph, counters)
            });
        if freed {
            if held == 0 && inner.counters.graph_held_frees > 0 {
                drop(guard);
                // Said once per runtime: the counters tell how much it grows.
                global::set_last_error(format!(
                    "memory freed on device {device} while a CUDA graph was being captured (or while \
                     the driver could not tell) is held for good, never reused, because the graph's \
                     replays may still write to it; stats() counts it in graph_held_bytes"
                ));
            }
            return Ok(());
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
        let mut inner = self.lock();
        inner
            .devices
            .iter_mut()
            .any(|d| d.record_stream(addr, stream))
    }

    /// Returns cached memory that nothing uses to the backend (PyTorch's `empty_cache`); the plan's
    /// arena stays reserved. Returns the bytes released.
    ///
    /// Memory other streams still use (`record_stream`) is waited for first, with the lock released:
    /// a wait under it would stall every thread that allocates (autograd's workers, the NCCL
    /// watchdog) until those streams are done.
    pub fn empty_cache(&self) -> Result<usize, RuntimeError> {
        let mut flushes: Vec<_> = {
            let mut inner = self.lock();
            // While a CUDA graph is being captured, on any device (the driver's default capture
            // mode forbids these calls to every thread), nothing is given back: waiting on streams
            // or freeing device memory would break the capture.
            if inner.capturing() {
                drop(inner);
                return Ok(self.gave_nothing_back());
            }
            inner
                .devices
                .iter_mut()
                .map(|d| d.take_for_flush())
                .collect()
        };
        let mut waited = Ok(());
        for f in flushes.iter_mut() {
            if waited.is_ok() {
                waited = f.wait(&*self.backend);
            }
        }
        let mut inner = self.lock();
        // Devices are never removed, so each flush goes back to the device it came from.
        for (d, f) in inner.devices.iter_mut().zip(flushes) {
            d.finish_flush(&*self.backend, f);
        }
        waited?;
        if inner.capturing() {
            // Began while the streams were waited for.
            drop(inner);
            return Ok(self.gave_nothing_back());
        }
        let mut released = 0;
        for d in inner.devices.iter_mut() {
            released += d.pool.release_cached(&*self.backend, d.device);
        }
        Ok(released)
    }

    /// `empty_cache` during a capture: says why in the last error; 0 bytes released.
    fn gave_nothing_back(&self) -> usize {
        global::set_last_error(
            "empty_cache() gave nothing back: a CUDA graph is being captured, and waiting on streams or \
             freeing device memory during a capture would break it"
                .to_string(),
        );
        0
    }

    /// Starts recording a step (`profile()`).
    pub fn begin_profile(&self) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.phase = inner.phase.begin_profile()?;
        for d in inner.devices.iter_mut() {
            d.trace = Trace::new();
            d.profile_start = d.holding();
        }
        Ok(())
    }

    /// Ends the recording. With a plan from before, the runtime stays planned (the old plan keeps
    /// serving steps until `plan()` replaces it).
    pub fn end_profile(&self) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        let has_plans = inner.devices.iter().any(|d| !d.signatures.is_empty());
        inner.phase = inner.phase.end_profile(has_plans)?;
        for d in inner.devices.iter_mut() {
            d.trace.finish();
        }
        inner.has_trace = true;
        Ok(())
    }

    /// Plans the recorded step of every device as a step signature (replacing the one with the same
    /// requests, if any), reserves what the arenas lack and switches to planned mode. Planning runs
    /// without the lock, so other threads keep allocating meanwhile.
    pub fn plan(&self, options: &PlanOptions) -> Result<PlanSummary, RuntimeError> {
        let jobs = {
            let inner = self.lock();
            inner.phase.check_plan("plan")?;
            if !inner.has_trace {
                return Err(RuntimeError::Usage(
                    "no recorded step to plan: run one training step inside `with model_opt.profile():` first"
                        .to_string(),
                ));
            }
            inner.devices.iter().map(PlanJob::profiled).collect()
        };
        self.plan_and_install(jobs, options)
    }

    /// Plans each job's trace (without the lock), then reserves the arenas that must grow and adds
    /// the signatures. A failure leaves the runtime as it was.
    fn plan_and_install(
        &self,
        jobs: Vec<PlanJob>,
        options: &PlanOptions,
    ) -> Result<PlanSummary, RuntimeError> {
        let alignment = self.lock().config.alignment;
        let mut plans: Vec<DevicePlan> = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let like = job.like.as_ref().map(|(p, n)| (p, *n));
            plans.push(plan_trace_like(
                &job.trace, job.device, alignment, options, like,
            )?);
        }

        let mut guard = self.lock();
        let inner = &mut *guard;
        // profile() or step() may have started while planning ran without the lock.
        inner.phase.check_plan("finish planning")?;
        // Reserve every arena that must grow first, so a failure leaves the runtime as it was.
        let mut arenas: Vec<Option<Arena>> = Vec::with_capacity(plans.len());
        for (job, p) in jobs.iter().zip(&plans) {
            let d = inner.device(job.device);
            // What the pool caches is what the new plan will serve (the warm-up's and the recorded
            // step's temporaries): returned before any arena is reserved, so that the two are never
            // held together.
            d.pool.release_cached(&*self.backend, job.device);
            let Some(size) = d.arena_needed(p) else {
                arenas.push(None);
                continue;
            };
            match d.reserve_arena(&*self.backend, size) {
                Ok(a) => arenas.push(Some(a)),
                Err(e) => {
                    for (job, a) in jobs.iter().zip(arenas) {
                        let Some(a) = a else { continue };
                        let d = inner.device(job.device);
                        if d.arena.is_none() && !d.signatures.is_empty() {
                            // Its old arena was returned to make room: the new one, larger, serves
                            // its old plans as well.
                            d.install_arena(&*self.backend, a);
                        } else {
                            let _ = a.free(&*self.backend, job.device);
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        let mut summary = PlanSummary::default();
        let max_plans = inner.config.max_plans;
        for ((job, p), arena) in jobs.into_iter().zip(plans).zip(arenas) {
            summary.buffers += p.transient_buffers;
            summary.persistent_buffers += p.persistent_buffers;
            summary.persistent_bytes += p.persistent_bytes;
            summary.lower_bound_bytes += p.lower_bound;
            summary.elapsed += p.elapsed;
            for m in &p.methods {
                if !summary.method.split(", ").any(|x| x == m) {
                    if !summary.method.is_empty() {
                        summary.method.push_str(", ");
                    }
                    summary.method.push_str(m);
                }
            }
            summary.devices.push(job.device);
            // What this plan needs; the arena itself is sized for the largest plan (stats()).
            summary.arena_bytes += p.arena_bytes as u64;
            let d = inner.device(job.device);
            if let Some(arena) = arena {
                d.install_arena(&*self.backend, arena);
            }
            d.add_signature(job.key, job.start, p, max_plans);
            d.trace = job.trace;
        }
        inner.phase = Phase::Planned;
        inner.last_plan = Some(summary.clone());
        Ok(summary)
    }

    /// Starts a step (`step()`). With `key`, the step follows the signature of that name (and a step
    /// of a new name is recorded and planned as one); without, it is recognised by its requests.
    pub fn begin_step(&self, key: Option<&str>) -> Result<(), RuntimeError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.phase = inner.phase.begin_step(key)?;
        let automatic = inner.config.auto_replan;
        for d in inner.devices.iter_mut() {
            d.begin_step(&*self.backend, key, automatic);
        }
        Ok(())
    }

    /// Ends the step; what happened in it, over all devices. A step that followed no planned
    /// signature is planned now (automatic planning), as is a signature whose steps diverged twice
    /// in a row; a failure there keeps the plans as they were, and the reason is kept for stats().
    pub fn end_step(&self) -> Result<StepStats, RuntimeError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let key = inner.phase.step_key().map(str::to_string);
        inner.phase = inner.phase.end_step()?;
        inner.counters.steps += 1;
        let automatic = inner.config.auto_replan;
        let mut total = StepStats::default();
        let mut jobs = Vec::new();
        let mut replans = 0;
        for d in inner.devices.iter_mut() {
            d.release_completed(&*self.backend);
            if automatic {
                d.step_trace.finish();
            }
            match d.end_step(automatic, key.as_deref()) {
                AfterStep::Nothing => {}
                AfterStep::PlanNew { key, start } => jobs.push(PlanJob::last_step(d, key, start)),
                AfterStep::Replan { key, start } => {
                    jobs.push(PlanJob::last_step(d, key, start));
                    replans += 1;
                }
            }
            total.add(&d.step);
        }
        inner.last_step = total.clone();
        let options = PlanOptions {
            time_limit: inner.config.auto_replan_time_limit,
            ..Default::default()
        };
        drop(guard);
        if !jobs.is_empty() {
            let new = jobs.len() - replans;
            match self.plan_and_install(jobs, &options) {
                Ok(_) => {
                    let mut inner = self.lock();
                    inner.counters.new_signatures += new as u64;
                    inner.counters.auto_replans += replans as u64;
                }
                Err(e) => global::set_last_error(format!(
                    "automatic planning at the end of a step failed, keeping the plans as they were: {e}"
                )),
            }
        }
        Ok(total)
    }

    /// Takes the lock and keeps its guard (on this thread) until [`Runtime::unlock_after_fork`].
    pub(crate) fn lock_for_fork(&'static self) {
        let guard = self.lock();
        FORK_GUARD.with(|g| *g.borrow_mut() = Some(guard));
    }

    /// Releases the lock [`Runtime::lock_for_fork`] took, in the parent or in the child. The lock is
    /// a futex (`std::sync::Mutex`): releasing it in the child is one atomic store and at most one
    /// wake-up syscall, with no user-space queue of waiters that other threads could have left
    /// locked at the fork.
    pub(crate) fn unlock_after_fork(&self) {
        FORK_GUARD.with(|g| drop(g.borrow_mut().take()));
    }

    /// In a forked child: no plan is followed and nothing is recorded any more (the parent's steps
    /// and plans are not the child's, and a GPU cannot be used across fork); live allocations copied
    /// from the parent can still be freed, and new requests come from the fallback pool.
    pub(crate) fn after_fork_in_child(&self) {
        let mut inner = self.lock();
        inner.phase = Phase::Passthrough;
        inner.has_trace = false;
        for d in inner.devices.iter_mut() {
            d.forget_plans();
        }
    }

    pub fn reset_peak_stats(&self) {
        let mut inner = self.lock();
        inner.counters.peak_allocated_bytes = inner.counters.allocated_bytes;
        for d in inner.devices.iter_mut() {
            d.peak_reserved = d.reserved_bytes();
        }
    }

    pub fn last_plan(&self) -> Option<PlanSummary> {
        self.lock().last_plan.clone()
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        let arena: u64 = inner.devices.iter().map(|d| d.arena_bytes() as u64).sum();
        let pool: u64 = inner
            .devices
            .iter()
            .map(|d| d.pool.reserved_bytes() as u64)
            .sum();
        let graphs: u64 = inner
            .devices
            .iter()
            .map(|d| d.graph_pool_bytes() as u64)
            .sum();
        // A loaded plan is active unless the open step has given up on it on every device.
        let in_step = inner.phase.in_step();
        let plan_active = inner.phase.mode() == Mode::Planned
            && (!in_step
                || inner.devices.iter().any(|d| {
                    d.active
                        .is_some_and(|a| !d.signatures.get(a).replay.abandoned)
                }));
        let plan = inner.last_plan.clone().unwrap_or_default();
        let mut last_step = inner.last_step.clone();
        if in_step {
            last_step = StepStats::default();
            for d in &inner.devices {
                last_step.add(&d.step);
            }
        }
        Stats {
            mode: inner.phase.mode().as_str(),
            in_step,
            plan_active,
            counters: inner.counters.clone(),
            reserved_bytes: arena + pool + graphs,
            peak_reserved_bytes: inner.devices.iter().map(|d| d.peak_reserved as u64).sum(),
            arena_bytes: arena,
            fallback_reserved_bytes: pool,
            graph_pool_bytes: graphs,
            // Every plan is a signature: the largest lower bound of each device's plans.
            lower_bound_bytes: inner
                .devices
                .iter()
                .map(|d| d.signatures.lower_bound())
                .sum(),
            persistent_bytes: plan.persistent_bytes,
            plan_buffers: plan.buffers as u64,
            plans: inner
                .devices
                .iter()
                .map(|d| d.signatures.len() as u64)
                .sum(),
            max_plans: inner.config.max_plans as u64,
            max_divergences: inner.config.max_divergences,
            last_step,
            devices: inner.devices.iter().map(|d| d.device).collect(),
            last_error: None,
        }
    }

    /// Every planned signature's plan as served (see [`DevicePlan::solution_csv`]), per device, the
    /// most recently used signature first: `(device, key, csv)`.
    pub fn plan_csvs(&self) -> Result<Vec<(i32, Option<String>, String)>, RuntimeError> {
        let inner = self.lock();
        let mut out = Vec::new();
        for d in &inner.devices {
            let mut sigs: Vec<_> = d.signatures.iter().collect();
            sigs.sort_by_key(|s| std::cmp::Reverse(s.last_used));
            for s in sigs {
                out.push((
                    d.device,
                    s.key.clone(),
                    s.replay.plan.solution_csv(d.device),
                ));
            }
        }
        if out.is_empty() {
            return Err(RuntimeError::Usage(
                "no plan installed: profile a step and call model_opt.plan() first".to_string(),
            ));
        }
        Ok(out)
    }

    /// The recorded step as MiniMalloc CSV: `(transient, persistent)`. Transient rows are
    /// `id,lower,upper,size`; persistent rows are `id,lower,size,stream` (they never end in the step).
    pub fn trace_csv(&self) -> Result<(String, String), RuntimeError> {
        let inner = self.lock();
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
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for d in inner.devices.iter_mut() {
            d.release_all(&*self.backend);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::HostBackend;

    fn runtime() -> Runtime {
        Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default())
    }

    /// One step's requests: `sizes` allocated in order, then freed in reverse.
    fn run(rt: &Runtime, sizes: &[usize]) {
        let addrs: Vec<usize> = sizes
            .iter()
            .map(|&s| rt.alloc(HOST_DEVICE, s, 0).unwrap())
            .collect();
        for a in addrs.into_iter().rev() {
            rt.free(HOST_DEVICE, a).unwrap();
        }
    }

    fn profiled(sizes: &[usize]) -> Runtime {
        let rt = runtime();
        rt.begin_profile().unwrap();
        run(&rt, sizes);
        rt.end_profile().unwrap();
        rt.plan(&PlanOptions::default()).unwrap();
        rt
    }

    #[test]
    fn steps_before_a_plan_are_refused_and_change_nothing() {
        let rt = runtime();
        let before = rt.stats();
        assert!(rt.begin_step(None).is_err());
        assert!(rt.end_step().is_err(), "no step is open");
        assert!(
            rt.plan(&PlanOptions::default()).is_err(),
            "nothing recorded"
        );
        assert_eq!(rt.stats(), before);
        assert_eq!(rt.mode(), Mode::Passthrough);
    }

    #[test]
    fn what_end_step_returns_is_what_stats_reports_and_adds_up_to_the_counters() {
        let rt = profiled(&[4096, 1024, 512]);
        assert_eq!(rt.mode(), Mode::Planned);
        let before = rt.stats().counters;
        let mut hits = 0;
        for _ in 0..3 {
            rt.begin_step(None).unwrap();
            run(&rt, &[4096, 1024, 512]);
            let step = rt.end_step().unwrap();
            assert_eq!(
                step,
                rt.stats().last_step,
                "computed once, reported as returned"
            );
            assert_eq!((step.planned_hits, step.divergences), (3, 0));
            assert!(!step.new_signature && !step.abandoned);
            hits += step.planned_hits;
        }
        let after = rt.stats().counters;
        assert_eq!(after.planned_hits - before.planned_hits, hits);
        assert_eq!(after.steps - before.steps, 3);
        assert_eq!(after.allocated_bytes, 0);
    }

    #[test]
    fn a_step_of_new_requests_is_recorded_and_planned_at_its_end() {
        let rt = profiled(&[4096, 1024]);
        assert_eq!(rt.stats().plans, 1);
        rt.begin_step(None).unwrap();
        run(&rt, &[8192, 2048, 512]);
        let step = rt.end_step().unwrap();
        assert!(step.new_signature, "{step:?}");
        let stats = rt.stats();
        assert_eq!((stats.plans, stats.counters.new_signatures), (2, 1));
        // The next step like it follows its new plan.
        rt.begin_step(None).unwrap();
        run(&rt, &[8192, 2048, 512]);
        let step = rt.end_step().unwrap();
        assert_eq!((step.planned_hits, step.divergences), (3, 0), "{step:?}");
        assert!(!step.new_signature);
    }

    #[test]
    fn without_automatic_planning_a_new_step_follows_the_old_plan_and_diverges() {
        let rt = profiled(&[4096, 1024]);
        rt.set_auto_replan(false);
        rt.begin_step(None).unwrap();
        run(&rt, &[8192, 2048, 512]);
        let step = rt.end_step().unwrap();
        // What the plan could not serve safely went to the fallback, counted as divergences.
        assert!(step.divergences > 0 && !step.new_signature, "{step:?}");
        assert_eq!(
            step.planned_hits + step.transient_fallbacks,
            step.allocations
        );
        assert_eq!(rt.stats().plans, 1);
        assert_eq!(rt.stats().counters.new_signatures, 0);
    }
}
