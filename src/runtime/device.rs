//! The state of one device: its fallback pool, its arena and planned signatures, its recording, and
//! the requests routed between them. The runtime calls these with its lock held.

use std::collections::HashMap;

use super::arena::{Arena, NO_ENTRY};
use super::backend::{Backend, BackendError, Event, HOST_DEVICE};
use super::fallback::FallbackPool;
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

/// What a quarantined allocation waits for before its memory is reused.
#[derive(Debug, Default)]
pub struct Quarantined {
    /// One event per stream that used it, recorded when it was freed.
    events: Vec<Event>,
    /// An event could not be recorded or queried: only a device synchronization releases it.
    needs_sync: bool,
}

impl Quarantined {
    /// Gives its events back to the backend (the memory is being released, or forgotten).
    fn destroy_events(self, backend: &dyn Backend, device: i32) {
        for event in self.events {
            backend.destroy_event(device, event);
        }
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
    pub quarantine: HashMap<usize, Quarantined>,
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
            step: StepStats::default(),
            peak_reserved: 0,
        }
    }

    /// Bytes reserved now: arenas and pool segments.
    pub fn reserved_bytes(&self) -> usize {
        self.arena_bytes() + self.pool.reserved_bytes()
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
        let addr = match self.pool.alloc(backend, self.device, size, stream) {
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
        match arena.try_claim(offset, entry.slot, index, size) {
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
        self.arena.as_mut()?.claim_first_fit(slot, align, size)
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

    /// Whether `addr` is an allocation this device handed out and has not taken back.
    pub fn owns(&self, addr: usize) -> bool {
        self.pool.owns(addr)
            || self.arena.as_ref().is_some_and(|a| a.get(addr).is_some())
            || self.retired.iter().any(|a| a.get(addr).is_some())
    }

    /// Takes back `addr`; false when this device did not hand it out (or it was freed already).
    #[inline]
    pub fn free(
        &mut self,
        backend: &dyn Backend,
        addr: usize,
        recording: Recording,
        c: &mut Counters,
    ) -> bool {
        // Checked for emptiness first: hashing on every free would cost more than the rest of it.
        if !self.quarantine.is_empty() && self.quarantine.contains_key(&addr) {
            return false; // freed already; its memory is still held for another stream
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

    /// Holds the memory at `addr` until the work queued so far on `streams` is done.
    fn quarantine_until_streams_finish(
        &mut self,
        backend: &dyn Backend,
        addr: usize,
        streams: &[usize],
    ) {
        let mut q = Quarantined::default();
        for &stream in streams {
            match backend.record_event(self.device, stream) {
                Ok(Some(event)) => q.events.push(event),
                Ok(None) => {}
                Err(_) => q.needs_sync = true,
            }
        }
        if q.events.is_empty() && !q.needs_sync {
            self.release(backend, addr); // nothing runs asynchronously: reusable now
        } else {
            self.quarantine.insert(addr, q);
        }
    }

    /// Releases the quarantined memory whose streams have finished with it; never blocks.
    pub fn release_completed(&mut self, backend: &dyn Backend) {
        let device = self.device;
        let done: Vec<usize> = self
            .quarantine
            .iter_mut()
            .filter_map(|(&addr, q)| {
                if q.needs_sync {
                    return None;
                }
                let mut pending = Vec::new();
                for &event in &q.events {
                    match backend.event_done(device, event) {
                        Ok(true) => backend.destroy_event(device, event),
                        Ok(false) => pending.push(event),
                        Err(_) => {
                            q.needs_sync = true;
                            pending.push(event);
                        }
                    }
                }
                q.events = pending;
                (q.events.is_empty() && !q.needs_sync).then_some(addr)
            })
            .collect();
        for addr in done {
            self.quarantine.remove(&addr);
            self.release(backend, addr);
        }
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
        if !self.owns(addr) || self.quarantine.contains_key(&addr) {
            return false;
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

    /// Waits for the device and releases all quarantined memory (`empty_cache`).
    pub fn flush_quarantine(&mut self, backend: &dyn Backend) -> Result<(), BackendError> {
        if self.quarantine.is_empty() {
            return Ok(());
        }
        backend.synchronize(self.device)?;
        for (addr, q) in std::mem::take(&mut self.quarantine) {
            q.destroy_events(backend, self.device);
            self.release(backend, addr);
        }
        Ok(())
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
        for (_, q) in std::mem::take(&mut self.quarantine) {
            q.destroy_events(backend, self.device);
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
