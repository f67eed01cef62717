//! The state of one device: its fallback pool, its arena and plan, its recording, and the requests
//! routed between them. The runtime calls these with its lock held.

use std::collections::HashMap;

use super::arena::Arena;
use super::backend::{Backend, BackendError, Event};
use super::fallback::FallbackPool;
use super::replay::Replay;
use super::stats::{Counters, StepStats};
use super::trace::Trace;

/// Where a request is served, as decided by the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Fallback,
    Record,
    Replay,
    /// Replay, and record the step too (after a diverging step, to re-plan from it; see `state.rs`).
    ReplayRecord,
}

/// Knobs of the replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    pub max_divergences: u64,
    pub lookahead: usize,
}

/// What a quarantined allocation waits for before its memory is reused.
#[derive(Debug, Default)]
pub struct Quarantined {
    /// One event per stream that used it, recorded when it was freed.
    events: Vec<Event>,
    /// An event could not be recorded or queried: only a device synchronization releases it.
    needs_sync: bool,
}

#[derive(Debug)]
pub struct DeviceState {
    pub device: i32,
    pub pool: FallbackPool,
    pub arena: Option<Arena>,
    /// Arenas of earlier plans that still hold live allocations; freed when they empty.
    pub retired: Vec<Arena>,
    pub replay: Option<Replay>,
    pub trace: Trace,
    /// Live addresses passed to `record_stream`, with the streams that use them.
    pub record_streamed: HashMap<usize, Vec<usize>>,
    /// Freed addresses that other streams may still use: still held (so nothing else gets them and a
    /// second free is refused) until the events recorded on those streams at the free have completed.
    pub quarantine: HashMap<usize, Quarantined>,
    pub step: StepStats,
}

impl DeviceState {
    pub fn new(device: i32) -> DeviceState {
        DeviceState {
            device,
            pool: FallbackPool::new(),
            arena: None,
            retired: Vec::new(),
            replay: None,
            trace: Trace::new(),
            record_streamed: HashMap::new(),
            quarantine: HashMap::new(),
            step: StepStats::default(),
        }
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
        let addr = self.pool.alloc(backend, self.device, size, stream)?;
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
                self.trace.record_alloc(addr, size, stream);
                addr
            }
        };
        c.on_alloc(size);
        Ok(addr)
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
        let (Some(replay), Some(arena)) = (self.replay.as_mut(), self.arena.as_mut()) else {
            // No plan for this device: nothing recorded here in the profiled step.
            return self.divergent(backend, size, stream, limits, c);
        };
        if replay.abandoned {
            return self.transient_fallback(backend, size, stream, c);
        }
        let Some(index) = replay.choose(size, stream, limits.lookahead) else {
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

    fn divergent(
        &mut self,
        backend: &dyn Backend,
        size: usize,
        stream: usize,
        limits: ReplayLimits,
        c: &mut Counters,
    ) -> Result<usize, BackendError> {
        c.divergences += 1;
        self.step.divergences += 1;
        if let Some(replay) = self.replay.as_mut() {
            replay.step_divergences += 1;
            if replay.step_divergences > limits.max_divergences && !replay.abandoned {
                replay.abandoned = true;
                self.step.abandoned = true;
                c.abandoned_steps += 1;
            }
        }
        self.transient_fallback(backend, size, stream, c)
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
        recording: bool,
        c: &mut Counters,
    ) -> bool {
        // Checked for emptiness first: hashing on every free would cost more than the rest of it.
        if !self.quarantine.is_empty() && self.quarantine.contains_key(&addr) {
            return false; // freed already; its memory is still held for another stream
        }
        if recording {
            self.trace.record_free(addr);
        }
        if !self.record_streamed.is_empty() {
            if let Some(streams) = self.record_streamed.remove(&addr) {
                let Some(bytes) = self.requested_at(addr) else {
                    return false;
                };
                c.on_free(bytes);
                self.quarantine_until_streams_finish(backend, addr, &streams);
                return true;
            }
        }
        match self.release(backend, addr) {
            Some(bytes) => {
                c.on_free(bytes);
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
        if let (Some(arena), Some(replay)) = (self.arena.as_ref(), self.replay.as_mut()) {
            if let Some(live) = arena.get(addr) {
                replay.poison(live.entry);
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
            for event in q.events {
                backend.destroy_event(self.device, event);
            }
            self.release(backend, addr);
        }
        Ok(())
    }

    /// Replaces the plan; the old arena is freed now if idle, else when its last allocation is.
    pub fn install_plan(&mut self, backend: &dyn Backend, arena: Arena, replay: Replay) {
        if let Some(old) = self.arena.replace(arena) {
            if old.is_idle() {
                let _ = old.free(backend, self.device);
            } else {
                self.retired.push(old);
            }
        }
        self.replay = Some(replay);
    }

    /// Frees everything this device reserved (the runtime is going away).
    pub fn release_all(&mut self, backend: &dyn Backend) {
        for (_, q) in self.quarantine.drain() {
            for event in q.events {
                backend.destroy_event(self.device, event);
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
