//! Counters and the statistics snapshot returned by `stats()`. PyTorch's own memory statistics do not
//! work with a pluggable allocator, so these are the numbers to look at.

/// Running counters of the runtime (all devices together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub allocations: u64,
    pub frees: u64,
    pub allocated_bytes: u64,
    pub peak_allocated_bytes: u64,
    pub planned_hits: u64,
    pub fallback_allocations: u64,
    pub fallback_bytes: u64,
    /// Requests inside a step that the plan could not serve safely (or did not cover).
    pub divergences: u64,
    /// Allocations inside steps that matched a persistent entry of the plan (served by the fallback).
    pub persistent_allocations: u64,
    /// Allocations inside steps served by the fallback though not persistent (divergences, buffers
    /// passed to `record_stream`, and everything after a step stopped using its plan).
    pub transient_fallbacks: u64,
    pub record_stream_fallbacks: u64,
    pub steps: u64,
    /// Steps that passed the divergence limit and stopped using the plan.
    pub abandoned_steps: u64,
    /// Frees of addresses the runtime did not hand out (ignored).
    pub unknown_frees: u64,
    /// Requests that failed because the device was out of memory.
    pub out_of_memory: u64,
    /// Plans made automatically from a recorded step after steps diverged.
    pub auto_replans: u64,
    /// Signatures planned automatically at the end of the first step that showed them.
    pub new_signatures: u64,
    /// Steps that moved to another planned signature part-way (their beginnings were alike).
    pub signature_switches: u64,
    /// Allocations of steps served without a plan's offsets: steps that followed no planned
    /// signature (recorded to plan a new one), and steps served first-fit because memory an earlier
    /// step kept sat where their plan would put them.
    pub unplanned_allocations: u64,
    /// Of those, the ones served first-fit from the arena's free space (the rest: the pool).
    pub unplanned_arena_allocations: u64,
    /// Times an idle arena was returned to the device because the pool could not get memory
    /// otherwise (reserved again at the next step).
    pub arenas_returned: u64,
    /// Frees that came while a CUDA graph was being captured on the allocation's stream (or the
    /// driver could not say it was not): their memory is never handed out again, since the graph's
    /// replays may still use it.
    pub graph_held_frees: u64,
    /// Their requested bytes, held for good (still part of `reserved_bytes`).
    pub graph_held_bytes: u64,
    /// Requests of CUDA graph captures, served from the graphs' private pools.
    pub graph_pool_allocations: u64,
}

impl Counters {
    #[inline]
    pub fn on_alloc(&mut self, bytes: usize) {
        self.allocations += 1;
        self.allocated_bytes += bytes as u64;
        self.peak_allocated_bytes = self.peak_allocated_bytes.max(self.allocated_bytes);
    }

    #[inline]
    pub fn on_free(&mut self, bytes: usize) {
        self.frees += 1;
        self.allocated_bytes = self.allocated_bytes.saturating_sub(bytes as u64);
    }
}

/// What happened in one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepStats {
    pub allocations: u64,
    pub planned_hits: u64,
    pub persistent_allocations: u64,
    pub transient_fallbacks: u64,
    pub divergences: u64,
    pub abandoned: bool,
    /// The step followed no planned signature: it was recorded, to be planned at its end.
    pub new_signature: bool,
    pub unplanned_allocations: u64,
    /// The step was served first-fit from the arena, not at its plan's offsets: memory an earlier
    /// step kept (one that showed new lifetimes) sat where the plan would put this one's.
    pub first_fit: bool,
}

impl StepStats {
    /// Adds another device's step.
    pub fn add(&mut self, o: &StepStats) {
        self.allocations += o.allocations;
        self.planned_hits += o.planned_hits;
        self.persistent_allocations += o.persistent_allocations;
        self.transient_fallbacks += o.transient_fallbacks;
        self.divergences += o.divergences;
        self.abandoned |= o.abandoned;
        self.new_signature |= o.new_signature;
        self.unplanned_allocations += o.unplanned_allocations;
        self.first_fit |= o.first_fit;
    }
}

/// A snapshot of the runtime.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub mode: &'static str,
    pub in_step: bool,
    /// True when a plan is loaded and the open step (if any) still follows it; false in passthrough
    /// and recording, and inside a step that passed the divergence limit.
    pub plan_active: bool,
    pub counters: Counters,
    /// Arena bytes plus the fallback pool's and the CUDA graphs' pools' segments.
    pub reserved_bytes: u64,
    /// The most `reserved_bytes` held at once since the start or `reset_peak_stats` (per device,
    /// summed over devices).
    pub peak_reserved_bytes: u64,
    pub arena_bytes: u64,
    pub fallback_reserved_bytes: u64,
    /// Segments of CUDA graphs' private pools (part of `reserved_bytes`).
    pub graph_pool_bytes: u64,
    pub lower_bound_bytes: u64,
    pub persistent_bytes: u64,
    pub plan_buffers: u64,
    /// Planned step signatures, over all devices.
    pub plans: u64,
    pub max_plans: u64,
    pub max_divergences: u64,
    pub last_step: StepStats,
    pub devices: Vec<i32>,
    /// The most recent error a C hook recorded (hooks cannot raise); filled in by the caller that
    /// reads the process-wide record (`runtime::global::latest_error`).
    pub last_error: Option<String>,
}
