//! The reports model_opt returns, each defined once, here: its name, its keys in order, and where
//! each value comes from. The Python bindings turn a report into a dict (PyTorch's
//! `memory_stats()` users expect dict access), the C ABI's `model_opt_stat` reads the numbers of
//! [`Stats`] by the same keys, and `model_opt._native.REPORT_KEYS` lists every report's keys so that
//! the typed dicts of `model_opt/reports.py` are checked against them.
//!
//! One naming scheme: a number of bytes ends in `_bytes`, a duration is `seconds`, a status is one
//! of [`Status::NAMES`](crate::status::Status::NAMES).

use crate::caching_model::replay::SimulatedStep;
use crate::placement::files::{PlannedFile, ValidatedFile};
use crate::placement::plan::peak_ratio;
use crate::placement::Bytes;
use crate::runtime::{PlanSummary, Stats, StepStats};
use crate::schedule::ScheduleReport;

/// One value of a report.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
    Bool(bool),
    Text(String),
    /// Text or nothing (Python's None).
    MaybeText(Option<String>),
    Ints(Vec<i64>),
    /// A report inside a report.
    Report(Vec<Field>),
}

/// A key and its value.
pub type Field = (&'static str, Value);

/// A report: a name, its keys, and its fields in the order of its keys.
pub trait Report {
    /// The report's name (the typed dict's name in `model_opt/reports.py`).
    const NAME: &'static str;
    /// Its keys, in order.
    const KEYS: &'static [&'static str];
    /// Its fields, one per key, in the order of `KEYS`.
    fn fields(&self) -> Vec<Field>;
}

/// Every report's name and keys, for `model_opt._native.REPORT_KEYS`.
pub const ALL: &[(&str, &[&str])] = &[
    (PlannedFile::NAME, PlannedFile::KEYS),
    (ValidatedFile::NAME, ValidatedFile::KEYS),
    (PlanSummary::NAME, PlanSummary::KEYS),
    (StepStats::NAME, StepStats::KEYS),
    (Stats::NAME, Stats::KEYS),
    (ScheduleReport::NAME, ScheduleReport::KEYS),
    (SimulatedStep::NAME, SimulatedStep::KEYS),
];

/// A report's number by key (booleans as 0 or 1); `None` for an unknown key or a value that is not
/// a number. What the C ABI's `model_opt_stat` answers.
pub fn number<R: Report>(report: &R, key: &str) -> Option<u64> {
    report
        .fields()
        .into_iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| match v {
            Value::Int(n) => Some(n),
            Value::Bool(b) => Some(u64::from(b)),
            _ => None,
        })
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as u64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        Value::MaybeText(v)
    }
}

impl From<Vec<i64>> for Value {
    fn from(v: Vec<i64>) -> Self {
        Value::Ints(v)
    }
}

/// Defines a report: `report!(Type as "Name", |r| { key: value, ... })`. The keys are written
/// once; `KEYS` and `fields` both come from them.
macro_rules! report {
    ($ty:ty as $name:literal, |$r:ident| { $($key:ident : $value:expr),* $(,)? }) => {
        impl Report for $ty {
            const NAME: &'static str = $name;
            const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];
            fn fields(&self) -> Vec<Field> {
                let $r = self;
                vec![$((stringify!($key), Value::from($value))),*]
            }
        }
    };
}

// Placement of a CSV file (`plan_csv`, `model-opt plan`).
report!(PlannedFile as "PlacementSummary", |r| {
    buffers: r.buffers,
    lower_bound_bytes: r.report.lower_bound.0,
    proven_bound_bytes: r.report.proven_bound.0,
    peak_bytes: r.report.solution.peak.0,
    ratio: r.report.ratio(),
    method: r.report.method.as_str(),
    status: r.report.status.name(),
    seconds: r.report.elapsed.as_secs_f64(),
});

// A solution file checked (`validate_csv`, `model-opt validate`).
report!(ValidatedFile as "ValidationSummary", |r| {
    buffers: r.buffers,
    lower_bound_bytes: r.lower_bound.0,
    peak_bytes: r.peak.0,
});

// The runtime's plan of the profiled step (`model_opt.plan()`).
report!(PlanSummary as "PlanSummary", |r| {
    buffers: r.buffers,
    persistent_buffers: r.persistent_buffers,
    persistent_bytes: r.persistent_bytes,
    lower_bound_bytes: r.lower_bound_bytes,
    arena_bytes: r.arena_bytes,
    ratio: peak_ratio(Bytes(r.arena_bytes), Bytes(r.lower_bound_bytes)),
    method: r.method.as_str(),
    seconds: r.elapsed.as_secs_f64(),
    devices: r.devices.iter().map(|&d| i64::from(d)).collect::<Vec<_>>(),
});

// One step of the runtime (`stats()["last_step"]`).
report!(StepStats as "StepStats", |r| {
    allocations: r.allocations,
    planned_hits: r.planned_hits,
    persistent_allocations: r.persistent_allocations,
    transient_fallbacks: r.transient_fallbacks,
    divergences: r.divergences,
    abandoned: r.abandoned,
    new_signature: r.new_signature,
    unplanned_allocations: r.unplanned_allocations,
    first_fit: r.first_fit,
});

// The runtime (`model_opt.stats()`, and `model_opt_stat` for its numbers).
report!(Stats as "RuntimeStats", |r| {
    mode: r.mode,
    in_step: r.in_step,
    plan_active: r.plan_active,
    allocated_bytes: r.counters.allocated_bytes,
    peak_allocated_bytes: r.counters.peak_allocated_bytes,
    reserved_bytes: r.reserved_bytes,
    peak_reserved_bytes: r.peak_reserved_bytes,
    arena_bytes: r.arena_bytes,
    fallback_reserved_bytes: r.fallback_reserved_bytes,
    lower_bound_bytes: r.lower_bound_bytes,
    persistent_bytes: r.persistent_bytes,
    plan_buffers: r.plan_buffers,
    allocations: r.counters.allocations,
    frees: r.counters.frees,
    planned_hits: r.counters.planned_hits,
    fallback_allocations: r.counters.fallback_allocations,
    fallback_bytes: r.counters.fallback_bytes,
    divergences: r.counters.divergences,
    persistent_allocations: r.counters.persistent_allocations,
    transient_fallbacks: r.counters.transient_fallbacks,
    record_stream_fallbacks: r.counters.record_stream_fallbacks,
    steps: r.counters.steps,
    abandoned_steps: r.counters.abandoned_steps,
    unknown_frees: r.counters.unknown_frees,
    out_of_memory: r.counters.out_of_memory,
    auto_replans: r.counters.auto_replans,
    new_signatures: r.counters.new_signatures,
    signature_switches: r.counters.signature_switches,
    unplanned_allocations: r.counters.unplanned_allocations,
    unplanned_arena_allocations: r.counters.unplanned_arena_allocations,
    arenas_returned: r.counters.arenas_returned,
    graph_held_frees: r.counters.graph_held_frees,
    graph_held_bytes: r.counters.graph_held_bytes,
    graph_pool_allocations: r.counters.graph_pool_allocations,
    graph_pool_bytes: r.graph_pool_bytes,
    plans: r.plans,
    max_plans: r.max_plans,
    max_divergences: r.max_divergences,
    devices: r.devices.iter().map(|&d| i64::from(d)).collect::<Vec<_>>(),
    last_step: Value::Report(r.last_step.fields()),
    last_error: r.last_error.clone(),
});

// An operator order (`schedule_graph`, behind `model_opt.reorder`).
report!(ScheduleReport as "ScheduleResult", |r| {
    order: r.order.iter().map(|&op| op as i64).collect::<Vec<_>>(),
    peak_bytes: r.peak.0,
    eager_peak_bytes: r.eager_peak.0,
    lower_bound_bytes: r.lower_bound.0,
    status: r.status.name(),
    method: r.method.as_str(),
    seconds: r.elapsed.as_secs_f64(),
    windows: r.windows,
});

// A recorded step replayed through the model of PyTorch's caching allocator.
report!(SimulatedStep as "CachingAllocatorPeak", |r| {
    buffers: r.addresses.len(),
    allocations: r.report.allocations,
    reserved_peak_bytes: r.report.reserved_peak,
    allocated_at_peak_bytes: r.report.allocated_at_reserved_peak,
    requested_at_peak_bytes: r.report.requested_at_reserved_peak,
    fragmentation: r.report.fragmentation,
    peak_allocated_bytes: r.report.peak_allocated,
    peak_requested_bytes: r.report.peak_requested,
    segments: r.report.segments,
    small_segments: r.report.small_segments,
    large_segments: r.report.large_segments,
    cache_flushes: r.report.cache_flushes,
});

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_report_has_its_own_name_and_unique_keys() {
        let names: HashSet<&str> = ALL.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), ALL.len());
        for (name, keys) in ALL {
            let unique: HashSet<&&str> = keys.iter().collect();
            assert_eq!(unique.len(), keys.len(), "{name} repeats a key");
        }
    }

    #[test]
    fn fields_follow_the_keys() {
        let stats = Stats::default();
        let names: Vec<&str> = stats.fields().iter().map(|(k, _)| *k).collect();
        assert_eq!(names, Stats::KEYS);
        let step: Vec<&str> = StepStats::default()
            .fields()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(step, StepStats::KEYS);
    }

    #[test]
    fn numbers_are_read_by_key() {
        let mut stats = Stats::default();
        stats.counters.divergences = 7;
        stats.plan_active = true;
        stats.arena_bytes = 4096;
        assert_eq!(number(&stats, "divergences"), Some(7));
        assert_eq!(number(&stats, "plan_active"), Some(1));
        assert_eq!(number(&stats, "in_step"), Some(0));
        assert_eq!(number(&stats, "arena_bytes"), Some(4096));
        // Text, lists and nested reports are not numbers; unknown keys are nothing.
        assert_eq!(number(&stats, "mode"), None);
        assert_eq!(number(&stats, "devices"), None);
        assert_eq!(number(&stats, "last_step"), None);
        assert_eq!(number(&stats, "no_such_key"), None);
    }

    #[test]
    fn bytes_are_named_as_bytes() {
        // The keys that count bytes under other names before the one naming scheme.
        for (name, keys) in ALL {
            for old in [
                "peak",
                "lower_bound",
                "proven_bound",
                "eager_peak",
                "reserved_peak",
            ] {
                assert!(
                    !keys.contains(&old),
                    "{name} has a key {old:?} without _bytes"
                );
            }
        }
    }
}
