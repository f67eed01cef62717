//! The state of one device: its fallback pool, its arena and planned signatures, its recording, and
//! the requests routed between them. The runtime calls these with its lock held.

use std::collections::{HashMap, VecDeque};

use super::arena::{Arena, NO_ENTRY};
use super::backend::{Backend, BackendError, Event, HOST_DEVICE};
use super::fallback::FallbackPool;
use super::graph_pools::{GraphPoolError, GraphPools, PoolId};
use super::planning::DevicePlan;
use super::signatures::{Signature, SignatureSet, Start};
use super::stats::{Counters, StepStats};
use super::trace::Trace;

/// Where a request is served, as decided by the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Fallback,
    Record,
    Replay,
    /// Replay, and record the step too: a step of a new signature is planned from its recording.
    ReplayRecord,
}

/// Knobs of the replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    pub max_divergences: u64,
    pub lookahead: usize,
    /// A step that follows no planned signature is recorded and planned at its end (else it follows
    /// the most recent plan as best it can, counting divergences).
    pub automatic: bool,
    /// Arena slots are multiples of this (`RuntimeConfig::alignment`).
    pub alignment: usize,
}

/// Which recording a free belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    No,
    /// Inside `profile()`.
    Profile,
    /// Inside a step under automatic planning.
    Step,
}

/// What the end of a step asks of the runtime for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterStep {
    Nothing,
    /// The step followed no planned signature, or followed one's requests from a start it was
    /// never seen from and showed other lifetimes: plan its recording as a new signature.
    PlanNew {
        key: Option<String>,
        start: Start,
    },
    /// The step followed a signature (named `key`, if it has one) but diverged twice in a row: plan
    /// it again from this step.
    Replan {
        key: Option<String>,
        start: Start,
    },
}

/// A freed allocation whose memory other streams may still use.
#[derive(Debug)]
struct Quarantined {
    /// Tells this quarantine of the address from a later one: while `empty_cache` waits outside the
    /// lock, the memory may be released, handed out and quarantined again.
    id: u64,
    /// Its events (one per stream that used it, recorded at the free) not known to be done yet.
    pending: usize,
    /// An event could not be recorded: only a device synchronization releases it.
    needs_sync: bool,
}

/// An event recorded on a stream at the free of a quarantined allocation.
#[derive(Debug, Clone, Copy)]
struct PendingEvent {
    event: Event,
    addr: usize,
    id: u64,
}

/// The quarantine's events taken out of a device for a wait outside the runtime's lock
/// ([`DeviceState::take_for_flush`], [`Flush::wait`], [`DeviceState::finish_flush`]). While taken,
/// only the flush holds them (nobody else can query or destroy them), and the memory they guard stays
/// quarantined.
#[derive(Debug, Default)]
pub struct Flush {
    device: i32,
    /// Per stream, its events oldest first.
    events: Vec<(usize, Vec<PendingEvent>)>,
    /// Events known to be done.
    done: Vec<PendingEvent>,
    /// Quarantines that only a device synchronization releases, and whether it happened.
    needs_sync: Vec<(usize, u64)>,
    synced: bool,
}

impl Flush {
    /// Blocks until the streams are done with the memory: the newest event of each stream (a stream
    /// runs its work in order, so the older ones are done then too), and the device only when some
    /// event could not be recorded. Stops at the first failure; what was not waited for goes back.
    pub fn wait(&mut self, backend: &dyn Backend) -> Result<(), BackendError> {
        while let Some((stream, events)) = self.events.pop() {
            let Some(last) = events.last() else {
                continue;
            };
            if let Err(e) = backend.wait_event(self.device, last.event) {
                self.events.push((stream, events));
                return Err(e);
            }
            self.done.extend(events);
        }
        if !self.needs_sync.is_empty() {
            backend.synchronize(self.device)?;
            self.synced = true;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct DeviceState {
    pub device: i32,
    pub pool: FallbackPool,
    pub arena: Option<Arena>,
    /// Arenas of earlier plans that still hold live allocations; freed when they empty.
    pub retired: Vec<Arena>,
    pub signatures: SignatureSet,
    /// The signature the open step follows.
    pub active: Option<usize>,
    /// The open step's requests so far, `(size, stream)`: matched against the plans' beginnings.
    observed: Vec<(usize, usize)>,
    /// The open step may move to another signature (no user key named one).
    switchable: bool,
    /// The open step follows no planned signature: served without a plan (temporaries first-fit in
    /// the arena, the rest by the pool), recorded, and planned at its end.
    unmatched: bool,
    /// Allocations of this device live now, and their requested bytes (a step's [`Start`]).
    live: Start,
    /// What the device held when the open step began.
    pub step_start: Start,
    /// What it held when the recording (`profile()`) began.
    pub profile_start: Start,
    /// Arena ranges `(offset, end)` live when the open step began: memory an earlier step kept
    /// where its plan had a temporary (a step that showed new lifetimes).
    stale: Vec<(usize, usize)>,
    /// The open step is served first-fit from the arena's free space, not at its plan's offsets:
    /// its plan puts buffers where `stale` memory still is.
    first_fit: bool,
    /// The signature whose plan tells an unplanned step which of its requests outlive it (by
    /// position): the one the step followed until it matched none.
    hint: Option<usize>,
    /// The profiled step, or the last step planned as a signature (what `save_trace` exports).
    pub trace: Trace,
    /// The open step's recording (automatic planning plans a new signature from it).
    pub step_trace: Trace,
    /// Live addresses passed to `record_stream`, with the streams that use them.
    pub record_streamed: HashMap<usize, Vec<usize>>,
    /// Freed addresses that other streams may still use: still held (so nothing else gets them and a
    /// second free is refused) until the events recorded on those streams at the free have completed.
    quarantine: HashMap<usize, Quarantined>,
    /// Per stream, the quarantine's events in the order they were recorded: the stream runs its work
    /// in that order, so only the oldest one needs asking (as PyTorch's allocator does).
    stream_events: Vec<(usize, VecDeque<PendingEvent>)>,
    /// Quarantines so far (their ids).
    quarantines: u64,
    /// Freed addresses held for CUDA graphs, with their requested bytes: freed while a graph was
    /// being captured, so its replays may still use them. They stay allocated in their arena or
    /// pool block for as long as the runtime lives: never handed out again, never returned by
    /// `empty_cache`, and an arena holding one is never idle (a new plan retires it, its plans'
    /// slots there diverge to the pool). Kept to refuse a second free.
    graph_held: HashMap<usize, usize>,
    /// CUDA graphs' private pools (PyTorch's pool hooks): what captures allocate.
    graphs: GraphPools,
    pub step: StepStats,
    /// The most bytes reserved at once (arenas and pool) since the start or `reset_peak_stats`.
    pub peak_reserved: usize,
}

impl DeviceState {
    pub fn new(device: i32) -> DeviceState {
        DeviceState {
            device,
            pool: FallbackPool::new(),
            arena: None,
            retired: Vec::new(),
            signatures: SignatureSet::default(),
            active: None,
            observed: Vec::new(),
            switchable: false,
            unmatched: false,
            live: Start::default(),
            step_start: Start::default(),
            profile_start: Start::default(),
            stale: Vec::new(),
            first_fit: false,
            hint: None,
            trace: Trace::new(),
            step_trace: Trace::new(),
            record_streamed: HashMap::new(),
            quarantine: HashMap::new(),
            stream_events: Vec::new(),
            quarantines: 0,
            graph_held: HashMap::new(),
            graphs: GraphPools::default(),
            step: StepStats::default(),
            peak_reserved: 0,
        }
    }

    /// Bytes reserved now: arenas, pool segments and CUDA graphs' pools.
    pub fn reserved_bytes(&self) -> usize {
        self.arena_bytes() + self.pool.reserved_bytes() + self.graphs.reserved_bytes()
    }

    /// Bytes reserved by CUDA graphs' private pools.
    pub fn graph_pool_bytes(&self) -> usize {
        self.graphs.reserved_bytes()
    }

    /// Whether a CUDA graph capture is under way on this device (PyTorch's pool hooks said so).
    pub fn capturing(&self) -> bool {
        self.graphs.capturing()
    }

    /// A CUDA graph capture into pool `id` begins: until it ends, its requests come through
    /// [`DeviceState::alloc_for_graph`], every other free is held for good (the graph may use that
    /// memory), and no device memory is given back (freeing it would break the capture).
    pub fn begin_graph_capture(&mut self, id: PoolId) {
        self.graphs.begin(id);
        self.pool.keep_segments(true);
    }

    /// The capture into `id` ended; false when none was under way.
    pub fn end_graph_capture(&mut self, backend: &dyn Backend, id: PoolId) -> bool {
        let ended = self.graphs.end(backend, self.device, id);
        self.pool.keep_segments(self.graphs.capturing());
        ended
    }

    /// PyTorch released pool `id`; false for a pool this device never had.
    pub fn release_graph_pool(&mut self, backend: &dyn Backend, id: PoolId) -> bool {
        self.graphs.release(backend, self.device, id)
    }

    /// A request of a CUDA graph capture, served from the graph's private pool: never planned, never
    /// recorded (a graph's memory is its own, for as long as the graph lives).
    pub fn alloc_for_graph(
        &mut self,
        backend: &dyn Backend,
        id: PoolId,
        size: usize,
        stream: usize,
        c: &mut Counters,
    ) -> Result<usize, GraphPoolError> {
        let addr = self.graphs.alloc(backend, self.device, id, size, stream)?;
        self.note_reserved();
        c.on_alloc(size);
        c.graph_pool_allocations += 1;
        Ok(addr)
    }

    fn note_reserved(&mut self) {
        self.peak_reserved = self.peak_reserved.max(self.reserved_bytes());
    }

    pub fn arena_bytes(&self) -> usize {
        self.arena.as_ref().map_or(0, Arena::size)
            + self.retired.iter().map(Arena::size).sum::<usize>()
    }

    #[inline]
    fn fallback(
        &mut self,
        backend: &dyn Backend,
        size: usize,
        stream: usize,
        c: &mut Counters,
    ) -> Result<usize, BackendError> {
        let reserved = self.pool.reserved_bytes();
        let mut result = self.pool.alloc(backend, self.device, size, stream);
        if matches!(&result, Err(e) if e.is_out_of_memory()) && !self.quarantine.is_empty() {
            // Memory other streams still use is waited for before the request fails, as PyTorch
            // does: this blocks the other threads, but only where the request would fail otherwise.
            if self.wait_for_quarantine(backend).is_ok() {
                result = self.pool.alloc(backend, self.device, size, stream);
            }
        }
        let addr = match result {
            Ok(addr) => addr,
            Err(e) if e.is_out_of_memory() && self.arena.as_ref().is_some_and(Arena::is_idle) => {
                // The idle arena stands in the way (a step longer than any planned one, on a full
                // GPU): it is returned, as PyTorch returns its cache, and reserved again for the next
                // step that has a plan (`begin_step`).
                let addr = self.without_idle_arena(backend, |d| {
                    d.pool.alloc(backend, d.device, size, stream)
                })?;
                c.arenas_returned += 1;
                addr
            }
            Err(e) => return Err(e),
        };
        if self.pool.reserved_bytes() > reserved {
            self.note_reserved();
        }
        c.fallback_allocations += 1;
        c.fallback_bytes += size as u64;
        Ok(addr)
    }

    /// Serves a request of `size > 0` bytes.
    #[inline]
    pub fn alloc(
        &mut self,
        backend: &dyn Backend,
        route: Route,
        size: usize,
        stream: usize,
        limits: ReplayLimits,
        c: &mut Counters,
    ) -> Result<usize, BackendError> {
        if !self.quarantine.is_empty() {
            self.release_completed(backend);
        }
        let addr = match route {
            Route::Fallback => self.fallback(backend, size, stream, c)?,
            Route::Record => {
                let addr = self.fallback(backend, size, stream, c)?;
                self.trace.record_alloc(addr, size, stream);
                addr
            }
            Route::Replay => self.replay_alloc(backend, size, stream, limits, c)?,
            Route::ReplayRecord => {
                let addr = self.replay_alloc(backend, size, stream, limits, c)?;
                self.step_trace.record_alloc(addr, size, stream);
                addr
            }
        };
        c.on_alloc(size);
        self.live.allocations += 1;
        self.live.bytes += size;
        Ok(addr)
    }

    /// What the device holds now.
    pub fn holding(&self) -> Start {
        self.live
    }

    #[inline]
    fn on_free(&mut self, bytes: usize, c: &mut Counters) {
        c.on_free(bytes);
        self.live.allocations = self.live.allocations.saturating_sub(1);
        self.live.bytes = self.live.bytes.saturating_sub(bytes);
    }

    /// Opens a step: follows the signature named by `key`, else the one most recently seen from
    /// what the device holds now, else the most recently used one.
    pub fn begin_step(&mut self, backend: &dyn Backend, key: Option<&str>, automatic: bool) {
        if self.arena.is_none() && !self.signatures.is_empty() {
            // Returned under memory pressure (`fallback`): reserved again when memory allows; until
            // then, steps are served as unplanned ones would be.
            if let Ok(arena) = Arena::reserve(backend, self.device, self.signatures.arena_bytes()) {
                self.install_arena(backend, arena);
            }
        }
        self.step = StepStats::default();
        self.observed.clear();
        self.unmatched = false;
        self.hint = None;
        self.first_fit = false;
        self.step_start = self.live;
        if automatic {
            self.step_trace = Trace::new();
        }
        self.stale.clear();
        if let Some(arena) = self.arena.as_ref() {
            self.stale.extend(arena.live_ranges());
        }
        let (active, switchable) = match key {
            Some(k) => (self.signatures.by_key(k), false),
            None => (self.signatures.for_start(self.step_start), true),
        };
        self.active = active;
        self.switchable = switchable;
        match active {
            Some(i) => {
                self.signatures.touch(i);
                self.signatures.get_mut(i).replay.start_step();
                self.check_stale(i);
            }
            None if automatic => self.mark_unmatched(),
            None => {}
        }
    }

    /// Serves the rest of the step first-fit when signature `i` places a temporary where memory kept
    /// from an earlier step still is (else its requests would diverge one by one).
    fn check_stale(&mut self, i: usize) {
        if self.stale.is_empty() || self.first_fit {
            return;
        }
        let stale = &self.stale;
        let collides = self.signatures.get(i).replay.plan.entries.iter().any(|e| {
            e.offset.is_some_and(|o| {
                let i = stale.partition_point(|&(_, end)| end <= o);
                stale.get(i).is_some_and(|&(start, _)| start < o + e.slot)
            })
        });
        if collides {
            self.first_fit = true;
            self.step.first_fit = true;
        }
    }

    fn mark_unmatched(&mut self) {
        self.unmatched = true;
        self.step.new_signature = true;
        // A new key, or requests no plan began with: the plan it followed, else the one a step from
        // this start would follow, tells which requests are temporaries.
        self.hint = self
            .active
            .or_else(|| self.signatures.for_start(self.step_start));
    }

    /// Closes the step opened with the user's `key`; what the runtime should plan for this device.
    /// `step_trace` is the step's finished recording (under automatic planning).
    pub fn end_step(&mut self, automatic: bool, key: Option<&str>) -> AfterStep {
        let active = self.active.take();
        if !automatic {
            return AfterStep::Nothing;
        }
        let start = self.step_start;
        if self.unmatched {
            return AfterStep::PlanNew {
                key: key.map(str::to_string),
                start,
            };
        }
        let Some(i) = active else {
            return AfterStep::Nothing;
        };
        let diverged = self.step.divergences > 0;
        let sig = self.signatures.get_mut(i);
        if sig.key.is_none() && !sig.starts.contains(&start) {
            // Its requests from a start this signature was never seen from. The same requests with
            // other lifetimes make a signature of its own (the first micro-batch of gradient
            // accumulation keeps the gradients the others free); a step that followed the plan
            // cleanly adds the start to it; any other divergence is the plan's own business below.
            if sig.lifetimes_differ(&self.step_trace) {
                self.step.new_signature = true;
                return AfterStep::PlanNew { key: None, start };
            }
            if !diverged {
                sig.add_start(start);
                return AfterStep::Nothing;
            }
        }
        let twice = diverged && sig.diverged;
        sig.diverged = diverged && !twice;
        if twice {
            AfterStep::Replan {
                key: sig.key.clone(),
                start,
            }
        } else {
            AfterStep::Nothing
        }
    }

    #[inline]
    fn replay_alloc(
        &mut self,
        backend: &dyn Backend,
        size: usize,
        stream: usize,
        limits: ReplayLimits,
        c: &mut Counters,
    ) -> Result<usize, BackendError> {
        self.step.allocations += 1;
        let k = self.observed.len();
        self.observed.push((size, stream));
        if self.unmatched {
            return self.unplanned(backend, size, stream, k, limits, c);
        }
        let Some(mut a) = self.active else {
            // No plan for this device: nothing recorded here in the profiled step.
            return self.divergent(backend, size, stream, limits, c);
        };
        if self.switchable && !self.signatures.get(a).expects(k, size, stream) {
            // The step leaves its signature: another one that began the same way, or a new one.
            match self.signatures.with_prefix(&self.observed, self.step_start) {
                Some(b) => {
                    self.switch_signature(backend, a, b, k, c)?;
                    a = b;
                }
                None if limits.automatic => {
                    self.mark_unmatched();
                    return self.unplanned(backend, size, stream, k, limits, c);
                }
                None => self.switchable = false,
            }
        }
        let Some(arena) = self.arena.as_mut() else {
            return self.divergent(backend, size, stream, limits, c);
        };
        let replay = &mut self.signatures.get_mut(a).replay;
        if replay.abandoned {
            return self.transient_fallback(backend, size, stream, c);
        }
        let Some(index) = replay.choose(size, stream, limits.lookahead) else {
            if self.first_fit {
                return self.unplanned_transient(backend, size, stream, limits, c);
            }
            return self.divergent(backend, size, stream, limits, c);
        };
        let entry = replay.entry(index);
        let Some(offset) = entry.offset else {
            self.step.persistent_allocations += 1;
            c.persistent_allocations += 1;
            return self.fallback(backend, size, stream, c);
        };
        if replay.is_poisoned(index) {
            c.record_stream_fallbacks += 1;
            return self.transient_fallback(backend, size, stream, c);
        }
        if self.first_fit {
            return self.unplanned_transient(backend, size, stream, limits, c);
        }
        // The safety check (invariant 1): size fits the slot (guaranteed by `choose`), the stream
        // matches (ditto), and the range overlaps nothing live, from this step or an earlier one.
        match arena.try_claim(offset, entry.slot, index, size, stream) {
            Some(addr) => {
                self.step.planned_hits += 1;
                c.planned_hits += 1;
                Ok(addr)
            }
            None => self.divergent(backend, size, stream, limits, c),
        }
    }

    /// Moves the open step from signature `from` to `to` at its `k`-th request. Plans that begin alike
    /// place that beginning alike, so what the step holds is where `to` wants it; on a GPU, when the
    /// two plans lay streams out differently, the device is synchronized first, since memory one
    /// stream used under `from` may belong to another under `to`.
    fn switch_signature(
        &mut self,
        backend: &dyn Backend,
        from: usize,
        to: usize,
        k: usize,
        c: &mut Counters,
    ) -> Result<(), BackendError> {
        if self.device != HOST_DEVICE {
            let (a, b) = (
                &self.signatures.get(from).streams,
                &self.signatures.get(to).streams,
            );
            if a != b || a.len() > 1 {
                backend.synchronize(self.device)?;
            }
        }
        let divergences = self.signatures.get(from).replay.step_divergences;
        self.signatures.touch(to);
        self.signatures.get_mut(to).replay.resume_at(k, divergences);
        self.active = Some(to);
        c.signature_switches += 1;
        self.check_stale(to);
        Ok(())
    }

    /// The `k`-th request of a step that follows no plan. What the step keeps past its end would sit
    /// in the arena and collide with the next steps' planned slots, so only a request that the plan
    /// it followed last (`hint`) has at that position as a temporary goes to the arena's free space,
    /// first-fit; the rest goes to the pool, as while profiling. (Serving it all from the pool while
    /// the arena sits idle would hold both: more than plain PyTorch.)
    fn unplanned(
        &mut self,
        backend: &dyn Backend,
        size: usize,
        stream: usize,
        k: usize,
        limits: ReplayLimits,
        c: &mut Counters,
    ) -> Result<usize, BackendError> {
        let temporary = self.hint.is_some_and(|h| {
            self.signatures
                .get(h)
                .replay
                .plan
                .entries
                .get(k)
                .is_some_and(|e| e.offset.is_some() && e.stream == stream)
        });
        if temporary {
            return self.unplanned_transient(backend, size, stream, limits, c);
        }
        self.step.unplanned_allocations += 1;
        c.unplanned_allocations += 1;
        self.fallback(backend, size, stream, c)
    }

    /// A request of a step served without its plan's offsets, expected to be freed in the step:
    /// first-fit in the arena's free space, else the pool.
    fn unplanned_transient(
        &mut self,
        backend: &dyn Backend,
        size: usize,
        stream: usize,
        limits: ReplayLimits,
        c: &mut Counters,
    ) -> Result<usize, BackendError> {
        self.step.unplanned_allocations += 1;
        c.unplanned_allocations += 1;
        if let Some(addr) = self.arena_first_fit(size, stream, limits) {
            c.unplanned_arena_allocations += 1;
            return Ok(addr);
        }
        self.fallback(backend, size, stream, c)
    }

    /// `size` bytes first-fit in the arena's free space, for a temporary that no plan entry serves.
    /// On a GPU only while every plan of the device runs on this one stream (memory another stream
    /// used would need that stream's work done first).
    fn arena_first_fit(
        &mut self,
        size: usize,
        stream: usize,
        limits: ReplayLimits,
    ) -> Option<usize> {
        let one_stream = self.device == HOST_DEVICE
            || self
                .signatures
                .iter()
                .all(|s| s.streams.as_slice() == [stream]);
        if !one_stream {
            return None;
        }
        let align = limits.alignment.max(1);
        let slot = size.checked_next_multiple_of(align)?;
        self.arena
            .as_mut()?
            .claim_first_fit(slot, align, size, stream)
    }

    fn divergent(
        &mut self,
        backend: &dyn Backend,
        size: usize,
        stream: usize,
        limits: ReplayLimits,
        c: &mut Counters,
    ) -> Result<usize, BackendError> {
        self.count_divergence(limits, c);
        self.transient_fallback(backend, size, stream, c)
    }

    /// Counts a request the plan could not serve; past the limit the rest of the step stops using it.
    fn count_divergence(&mut self, limits: ReplayLimits, c: &mut Counters) {
        c.divergences += 1;
        self.step.divergences += 1;
        if let Some(a) = self.active {
            let replay = &mut self.signatures.get_mut(a).replay;
            replay.step_divergences += 1;
            if replay.step_divergences > limits.max_divergences && !replay.abandoned {
                replay.abandoned = true;
                self.step.abandoned = true;
                c.abandoned_steps += 1;
            }
        }
    }

    /// A transient (planned-for) request served by the fallback pool instead, counted as such.
    fn transient_fallback(
        &mut self,
        backend: &dyn Backend,
        size: usize,
        stream: usize,
        c: &mut Counters,
    ) -> Result<usize, BackendError> {
        self.step.transient_fallbacks += 1;
        c.transient_fallbacks += 1;
        self.fallback(backend, size, stream, c)
    }

    /// Takes back `addr`; false when this device did not hand it out (or it was freed already).
    /// With `graph`, the free came while a CUDA graph was being captured: the memory is held for
    /// good instead (see `graph_held`).
    #[inline]
    pub fn free(
        &mut self,
        backend: &dyn Backend,
        addr: usize,
        recording: Recording,
        graph: bool,
        c: &mut Counters,
    ) -> bool {
        // Checked for emptiness first: hashing on every free would cost more than the rest of it.
        if !self.quarantine.is_empty() && self.quarantine.contains_key(&addr) {
            return false; // freed already; its memory is still held for another stream
        }
        if !self.graph_held.is_empty() && self.graph_held.contains_key(&addr) {
            return false; // freed already; its memory is held for a CUDA graph
        }
        if self.graphs.active() {
            if let Some(bytes) = self.graphs.free(backend, self.device, addr) {
                c.on_free(bytes);
                return true;
            }
        }
        // While a capture is under way (the pool hooks said so), memory of any stream freed now may
        // be what the graph reads: held, like a free on a capturing stream.
        if graph || self.graphs.capturing() {
            return self.hold_for_graph(addr, recording, c);
        }
        match recording {
            Recording::Profile => self.trace.record_free(addr),
            Recording::Step => self.step_trace.record_free(addr),
            Recording::No => {}
        }
        if !self.record_streamed.is_empty() {
            if let Some(streams) = self.record_streamed.remove(&addr) {
                let Some(bytes) = self.requested_at(addr) else {
                    return false;
                };
                self.on_free(bytes, c);
                self.quarantine_until_streams_finish(backend, addr, &streams);
                return true;
            }
        }
        match self.release(backend, addr) {
            Some(bytes) => {
                self.on_free(bytes, c);
                true
            }
            None => false,
        }
    }

    /// Frees `addr` for its user but keeps its memory allocated for good: a CUDA graph captured
    /// while it was freed may use it in every replay.
    fn hold_for_graph(&mut self, addr: usize, recording: Recording, c: &mut Counters) -> bool {
        let Some(bytes) = self.requested_at(addr) else {
            return false;
        };
        match recording {
            Recording::Profile => self.trace.record_free(addr),
            Recording::Step => self.step_trace.record_free(addr),
            Recording::No => {}
        }
        // No quarantine for the streams it was recorded on: it is never reused, and an event
        // recorded on a capturing stream would become part of the graph.
        self.record_streamed.remove(&addr);
        self.on_free(bytes, c);
        self.graph_held.insert(addr, bytes);
        c.graph_held_frees += 1;
        c.graph_held_bytes += bytes as u64;
        true
    }

    /// Holds the memory at `addr` until the work queued so far on `streams` is done.
    fn quarantine_until_streams_finish(
        &mut self,
        backend: &dyn Backend,
        addr: usize,
        streams: &[usize],
    ) {
        self.quarantines += 1;
        let id = self.quarantines;
        let mut q = Quarantined {
            id,
            pending: 0,
            needs_sync: false,
        };
        for &stream in streams {
            match backend.record_event(self.device, stream) {
                Ok(Some(event)) => {
                    q.pending += 1;
                    self.stream_queue(stream)
                        .push_back(PendingEvent { event, addr, id });
                }
                Ok(None) => {}
                Err(_) => q.needs_sync = true,
            }
        }
        if q.pending == 0 && !q.needs_sync {
            self.release(backend, addr); // nothing runs asynchronously: reusable now
        } else {
            self.quarantine.insert(addr, q);
        }
    }

    fn stream_queue(&mut self, stream: usize) -> &mut VecDeque<PendingEvent> {
        let i = match self.stream_events.iter().position(|(s, _)| *s == stream) {
            Some(i) => i,
            None => {
                self.stream_events.push((stream, VecDeque::new()));
                self.stream_events.len() - 1
            }
        };
        &mut self.stream_events[i].1
    }

    /// Releases the quarantined memory whose streams have finished with it; never blocks. Asks each
    /// stream only about its oldest events, up to the first one still pending: one query per stream
    /// when nothing is done, however much is quarantined.
    pub fn release_completed(&mut self, backend: &dyn Backend) {
        let device = self.device;
        let mut done = Vec::new();
        for (_, queue) in self.stream_events.iter_mut() {
            while let Some(&p) = queue.front() {
                match backend.event_done(device, p.event) {
                    Ok(true) => {
                        queue.pop_front();
                        backend.destroy_event(device, p.event);
                        done.push(p);
                    }
                    // A failed query is asked again at the next request; `empty_cache` waits.
                    Ok(false) | Err(_) => break,
                }
            }
        }
        self.stream_events.retain(|(_, q)| !q.is_empty());
        for p in done {
            self.settle(backend, p);
        }
    }

    /// `p`'s event is done (and destroyed): its memory is released when it was the last one.
    fn settle(&mut self, backend: &dyn Backend, p: PendingEvent) {
        let Some(q) = self.quarantine.get_mut(&p.addr).filter(|q| q.id == p.id) else {
            return; // released by a device synchronization already
        };
        q.pending = q.pending.saturating_sub(1);
        if q.pending == 0 && !q.needs_sync {
            self.quarantine.remove(&p.addr);
            self.release(backend, p.addr);
        }
    }

    /// Takes the quarantine's events out for a wait outside the lock ([`Flush::wait`]); the memory
    /// stays quarantined until [`DeviceState::finish_flush`].
    pub fn take_for_flush(&mut self) -> Flush {
        Flush {
            device: self.device,
            events: self
                .stream_events
                .drain(..)
                .map(|(s, q)| (s, Vec::from(q)))
                .collect(),
            needs_sync: self
                .quarantine
                .iter()
                .filter(|(_, q)| q.needs_sync)
                .map(|(&addr, q)| (addr, q.id))
                .collect(),
            ..Flush::default()
        }
    }

    /// Releases what `flush` waited for; what it did not wait for (it failed) is quarantined again,
    /// before the events recorded since (they are newer).
    pub fn finish_flush(&mut self, backend: &dyn Backend, flush: Flush) {
        for (stream, events) in flush.events {
            let queue = self.stream_queue(stream);
            for p in events.into_iter().rev() {
                queue.push_front(p);
            }
        }
        for p in flush.done {
            backend.destroy_event(self.device, p.event);
            self.settle(backend, p);
        }
        if flush.synced {
            for (addr, id) in flush.needs_sync {
                if self.quarantine.get(&addr).is_some_and(|q| q.id == id) {
                    // Its events, if any, are done too: `settle` skips them when they come up.
                    self.quarantine.remove(&addr);
                    self.release(backend, addr);
                }
            }
        }
    }

    /// Waits for all quarantined memory and releases it, holding the lock (a request that would
    /// fail otherwise).
    fn wait_for_quarantine(&mut self, backend: &dyn Backend) -> Result<(), BackendError> {
        let mut flush = self.take_for_flush();
        let result = flush.wait(backend);
        self.finish_flush(backend, flush);
        result
    }

    fn requested_at(&self, addr: usize) -> Option<usize> {
        if let Some(l) = self.arena.as_ref().and_then(|a| a.get(addr)) {
            return Some(l.requested);
        }
        if let Some(l) = self.retired.iter().find_map(|a| a.get(addr)) {
            return Some(l.requested);
        }
        self.pool.requested(addr)
    }

    /// Returns the memory at `addr` to the arena or pool it came from; the requested bytes.
    #[inline]
    fn release(&mut self, backend: &dyn Backend, addr: usize) -> Option<usize> {
        if let Some(arena) = self.arena.as_mut() {
            if arena.contains(addr) {
                return arena.release(addr).map(|l| l.requested);
            }
        }
        if let Some(i) = self.retired.iter().position(|a| a.contains(addr)) {
            let live = self.retired[i].release(addr)?;
            if self.retired[i].is_idle() {
                let arena = self.retired.swap_remove(i);
                let _ = arena.free(backend, self.device);
            }
            return Some(live.requested);
        }
        self.pool.free(addr).map(|f| f.requested)
    }

    /// Marks a live allocation as used by `stream` too: its plan entry goes to the fallback from now
    /// on, and once freed its memory is reused only after the work queued on `stream` is done.
    pub fn record_stream(&mut self, addr: usize, stream: usize) -> bool {
        if self.quarantine.contains_key(&addr) || self.graph_held.contains_key(&addr) {
            return false;
        }
        if self.graphs.active() && self.graphs.record_stream(addr) {
            // A CUDA graph's memory: held once freed, for as long as its pool lives.
            return true;
        }
        let Some(own) = self.stream_of(addr) else {
            return false;
        };
        if own == stream {
            // Its own stream orders every use already (PyTorch's allocator ignores it too).
            return true;
        }
        if let (Some(arena), Some(a)) = (self.arena.as_ref(), self.active) {
            if let Some(live) = arena.get(addr).filter(|l| l.entry != NO_ENTRY) {
                self.signatures.get_mut(a).replay.poison(live.entry);
            }
        }
        let streams = self.record_streamed.entry(addr).or_default();
        if !streams.contains(&stream) {
            streams.push(stream);
        }
        true
    }

    /// The stream the live allocation at `addr` was made on.
    fn stream_of(&self, addr: usize) -> Option<usize> {
        if let Some(l) = self.arena.as_ref().and_then(|a| a.get(addr)) {
            return Some(l.stream);
        }
        if let Some(l) = self.retired.iter().find_map(|a| a.get(addr)) {
            return Some(l.stream);
        }
        self.pool.stream_of(addr)
    }

    /// Arena bytes the signatures need with `plan` added, when more than the arena has: an arena is
    /// reserved anew only when it must grow.
    pub fn arena_needed(&self, plan: &DevicePlan) -> Option<usize> {
        let needed = plan.arena_bytes.max(self.signatures.arena_bytes());
        (needed > self.arena.as_ref().map_or(0, Arena::size)).then_some(needed)
    }

    /// Reserves an arena of `size` bytes to replace the current one. An idle current arena is
    /// returned first (on a GPU the two would otherwise be held at once, however briefly), see
    /// [`DeviceState::without_idle_arena`]; an arena with live allocations stays until they are
    /// freed (`install_arena`).
    pub fn reserve_arena(
        &mut self,
        backend: &dyn Backend,
        size: usize,
    ) -> Result<Arena, BackendError> {
        self.without_idle_arena(backend, |d| Arena::reserve(backend, d.device, size))
    }

    /// Runs `attempt` with the arena returned to the device first when it is idle. When `attempt`
    /// fails, the old size is reserved back; when even that fails the device has no arena until
    /// `begin_step` can reserve one for its plans again.
    fn without_idle_arena<T>(
        &mut self,
        backend: &dyn Backend,
        attempt: impl FnOnce(&mut Self) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let Some(old) = self.arena.take_if(|a| a.is_idle()) else {
            return attempt(self);
        };
        let old_size = old.size();
        old.free(backend, self.device)?;
        let result = attempt(self);
        if result.is_err() {
            self.arena = Arena::reserve(backend, self.device, old_size).ok();
        }
        result
    }

    /// Makes `arena` the device's arena; the old one is freed now if idle, else when its last
    /// allocation is.
    pub fn install_arena(&mut self, backend: &dyn Backend, arena: Arena) {
        if let Some(old) = self.arena.replace(arena) {
            // Both were reserved at once, however briefly.
            self.peak_reserved = self.peak_reserved.max(self.reserved_bytes() + old.size());
            if old.is_idle() {
                let _ = old.free(backend, self.device);
            } else {
                self.retired.push(old);
            }
        }
        self.note_reserved();
    }

    /// Adds a planned signature (replacing the one with the same key, or with the same requests
    /// from the same start), keeping at most `max_plans`; the arena must already be large enough.
    pub fn add_signature(
        &mut self,
        key: Option<String>,
        start: Start,
        plan: DevicePlan,
        max_plans: usize,
    ) {
        self.signatures
            .insert(Signature::new(key, plan, start), max_plans);
    }

    /// Drops every plan and recording (in a forked child); arenas stay until their allocations are
    /// freed, and no new request is served from them.
    pub fn forget_plans(&mut self) {
        self.signatures = SignatureSet::default();
        self.active = None;
        self.unmatched = false;
        self.trace = Trace::new();
        self.step_trace = Trace::new();
        if let Some(arena) = self.arena.take() {
            self.retired.push(arena);
        }
    }

    /// Frees everything this device reserved (the runtime is going away).
    pub fn release_all(&mut self, backend: &dyn Backend) {
        self.quarantine.clear();
        self.graph_held.clear();
        self.graphs.release_all(backend, self.device);
        for (_, queue) in self.stream_events.drain(..) {
            for p in queue {
                backend.destroy_event(self.device, p.event);
            }
        }
        self.pool.release_all(backend, self.device);
        if let Some(a) = self.arena.take() {
            let _ = a.free(backend, self.device);
        }
        for a in self.retired.drain(..) {
            let _ = a.free(backend, self.device);
        }
    }
}
