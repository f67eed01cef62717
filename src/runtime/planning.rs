//! From a recorded trace to the table the replay follows: plan the transient buffers of each stream
//! with the placement planner and lay the streams' regions one after another, so buffers of different
//! streams never share bytes (a stream may still be using memory that the host has already freed).

use std::time::{Duration, Instant};

use crate::placement::{
    plan, validate, Buffer, Bytes, Interval, PlanError, PlanOptions, Problem, Solution,
};

use super::trace::{buffer_name, Trace};

/// What the replay knows about the k-th allocation of the recorded step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanEntry {
    /// Bytes requested when recorded.
    pub size: usize,
    /// Bytes reserved for it in the arena (size rounded up to the alignment).
    pub slot: usize,
    pub stream: usize,
    /// Offset in the arena; `None` for a persistent allocation, which the fallback serves.
    pub offset: Option<usize>,
}

/// The plan of one device.
#[derive(Debug, Clone, Default)]
pub struct DevicePlan {
    pub entries: Vec<PlanEntry>,
    /// Per entry, its lifetime in the recorded step's events, `[alloc, free)`; `None` when it
    /// outlived the step (persistent). Kept for [`DevicePlan::solution_csv`].
    pub lifetimes: Vec<Option<(u64, u64)>>,
    pub arena_bytes: usize,
    /// Sum over streams of the largest number of (aligned) bytes live at once.
    pub lower_bound: u64,
    pub transient_buffers: usize,
    pub persistent_buffers: usize,
    pub persistent_bytes: u64,
    pub methods: Vec<String>,
    pub elapsed: Duration,
}

/// Plans `trace`; every placement returned by the planner has passed its validator.
pub fn plan_trace(
    trace: &Trace,
    device: i32,
    alignment: usize,
    options: &PlanOptions,
) -> Result<DevicePlan, PlanError> {
    plan_trace_like(trace, device, alignment, options, None)
}

/// [`plan_trace`], placing the first `common` buffers where `like` places them when both are plans
/// of one stream (`like` began with the same requests): a step can then move from one plan to the
/// other at any request of that common beginning and find what it holds where the new plan wants
/// it. When those positions conflict in this trace, it plans without them.
pub fn plan_trace_like(
    trace: &Trace,
    device: i32,
    alignment: usize,
    options: &PlanOptions,
    like: Option<(&DevicePlan, usize)>,
) -> Result<DevicePlan, PlanError> {
    if let Some((plan, common)) = like {
        let fixed = fixed_beginning(trace, plan, common);
        if !fixed.is_empty() {
            if let Ok(p) = plan_with_fixed(trace, device, alignment, options, &fixed) {
                return Ok(p);
            }
        }
    }
    plan_with_fixed(trace, device, alignment, options, &[])
}

/// `(index, offset)` of the first `common` buffers of `trace` as `like` places them, when both are
/// plans of the same single stream; empty otherwise.
fn fixed_beginning(trace: &Trace, like: &DevicePlan, common: usize) -> Vec<(usize, usize)> {
    let streams_of = |it: &mut dyn Iterator<Item = usize>| {
        let mut v: Vec<usize> = it.collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let ours = streams_of(&mut trace.transient().map(|b| b.stream));
    let theirs = streams_of(
        &mut like
            .entries
            .iter()
            .filter(|e| e.offset.is_some())
            .map(|e| e.stream),
    );
    if ours.len() != 1 || ours != theirs {
        return Vec::new();
    }
    trace
        .buffers
        .iter()
        .take(common.min(like.entries.len()))
        .filter(|b| !b.is_persistent())
        .filter_map(|b| like.entries[b.index].offset.map(|o| (b.index, o)))
        .collect()
}

fn plan_with_fixed(
    trace: &Trace,
    device: i32,
    alignment: usize,
    options: &PlanOptions,
    fixed: &[(usize, usize)],
) -> Result<DevicePlan, PlanError> {
    let started = Instant::now();
    let fixed: std::collections::HashMap<usize, usize> = fixed.iter().copied().collect();
    let alignment = alignment.max(1);
    let slot_of = |size: usize| size.max(1).div_ceil(alignment) * alignment;
    let mut entries: Vec<PlanEntry> = trace
        .buffers
        .iter()
        .map(|b| PlanEntry {
            size: b.size,
            slot: slot_of(b.size),
            stream: b.stream,
            offset: None,
        })
        .collect();
    let mut streams: Vec<usize> = trace.transient().map(|b| b.stream).collect();
    streams.sort_unstable();
    streams.dedup();

    let mut result = DevicePlan::default();
    let mut base = 0usize;
    for stream in streams {
        let members: Vec<usize> = trace
            .transient()
            .filter(|b| b.stream == stream)
            .map(|b| b.index)
            .collect();
        let buffers = members
            .iter()
            .filter_map(|&i| {
                let b = &trace.buffers[i];
                let lifetime = Interval::new(b.alloc_event, b.free_event?)?;
                let mut buffer = Buffer::new(
                    buffer_name(device, i),
                    lifetime,
                    Bytes(slot_of(b.size) as u64),
                );
                buffer.alignment = Bytes(alignment as u64);
                if let Some(&o) = fixed.get(&i) {
                    buffer.fixed_offset = Some(Bytes(o as u64));
                }
                Some(buffer)
            })
            .collect();
        let problem = Problem::new(buffers);
        let report = plan(&problem, options)?;
        for (&i, offset) in members.iter().zip(&report.solution.offsets) {
            entries[i].offset = Some(base + offset.0 as usize);
        }
        result.lower_bound += report.lower_bound.0;
        if !result.methods.contains(&report.method) {
            result.methods.push(report.method.clone());
        }
        base += (report.solution.peak.0 as usize).div_ceil(alignment) * alignment;
    }
    check_combined(trace, device, &entries, alignment)?;
    result.transient_buffers = trace.transient().count();
    result.persistent_buffers = trace.persistent().count();
    result.persistent_bytes = trace.persistent().map(|b| b.size as u64).sum();
    result.arena_bytes = base;
    result.lifetimes = trace
        .buffers
        .iter()
        .map(|b| b.free_event.map(|end| (b.alloc_event, end)))
        .collect();
    result.entries = entries;
    result.elapsed = started.elapsed();
    Ok(result)
}

impl DevicePlan {
    /// The plan as served, as a MiniMalloc solution CSV (`id,lower,upper,size,offset`): each buffer
    /// the arena serves, with its slot (the size rounded to the alignment, what the arena reserves for
    /// it) at its offset in the arena, every stream's region included. Its peak is `arena_bytes`.
    pub fn solution_csv(&self, device: i32) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("id,lower,upper,size,offset\n");
        for (i, (e, life)) in self.entries.iter().zip(&self.lifetimes).enumerate() {
            if let (Some(offset), Some((lower, upper))) = (e.offset, life) {
                let _ = writeln!(
                    out,
                    "{},{lower},{upper},{},{offset}",
                    buffer_name(device, i),
                    e.slot
                );
            }
        }
        out
    }
}

/// Validates the device's whole plan, every stream together: each stream's plan passed the validator,
/// and this proves that laying them side by side kept them apart (invariant 2 for what the runtime
/// actually serves).
fn check_combined(
    trace: &Trace,
    device: i32,
    entries: &[PlanEntry],
    alignment: usize,
) -> Result<(), PlanError> {
    let mut buffers = Vec::new();
    let mut offsets = Vec::new();
    for b in trace.transient() {
        let (Some(end), Some(offset)) = (b.free_event, entries[b.index].offset) else {
            continue;
        };
        let Some(lifetime) = Interval::new(b.alloc_event, end) else {
            continue;
        };
        let mut buffer = Buffer::new(
            buffer_name(device, b.index),
            lifetime,
            Bytes(entries[b.index].slot as u64),
        );
        buffer.alignment = Bytes(alignment as u64);
        buffers.push(buffer);
        offsets.push(Bytes(offset as u64));
    }
    let problem = Problem::new(buffers);
    let solution = Solution::from_offsets(&problem, offsets);
    validate(&problem, &solution).map_err(PlanError::InvalidPlan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_get_disjoint_regions() {
        let mut t = Trace::new();
        t.record_alloc(1, 100, 0);
        t.record_alloc(2, 100, 7);
        t.record_free(1);
        t.record_free(2);
        t.record_alloc(3, 600, 0);
        t.record_free(3);
        t.record_alloc(4, 8, 0); // persistent
        t.finish();
        let p = plan_trace(&t, 0, 512, &PlanOptions::default()).unwrap();
        assert_eq!(p.entries.len(), 4);
        assert_eq!(p.entries[3].offset, None);
        let s0 = p.entries[0].offset.unwrap();
        let s7 = p.entries[1].offset.unwrap();
        // Stream 0 needs 1024 (the 600-byte buffer); stream 7's 512 comes after it.
        assert_eq!(p.arena_bytes, 1536);
        assert!(s7 >= s0 + 1024 || s0 >= s7 + 512);
        assert_eq!(p.lower_bound, 1536);
        assert_eq!(p.persistent_bytes, 8);
    }

    #[test]
    fn the_combined_check_refuses_streams_laid_over_each_other() {
        // The last check before a plan is served: the streams' plans side by side keep every buffer
        // apart. The plan built here passes; moved over each other, the two streams' buffers (live at
        // the same time) are refused.
        let t = two_stream_step();
        let mut p = plan_trace(&t, 0, 512, &PlanOptions::default()).unwrap();
        assert!(check_combined(&t, 0, &p.entries, 512).is_ok());
        p.entries[1].offset = p.entries[0].offset;
        assert!(matches!(
            check_combined(&t, 0, &p.entries, 512),
            Err(PlanError::InvalidPlan(_))
        ));
    }

    /// Two 100-byte requests on streams 0 and 7, live together.
    fn two_stream_step() -> Trace {
        let mut t = Trace::new();
        t.record_alloc(1, 100, 0);
        t.record_alloc(2, 100, 7);
        t.record_free(1);
        t.record_free(2);
        t.finish();
        t
    }

    /// A step of one stream's requests on `stream`: 100 and 200 bytes, both freed.
    fn one_stream_step(stream: usize) -> Trace {
        let mut t = Trace::new();
        t.record_alloc(1, 100, stream);
        t.record_alloc(2, 200, stream);
        t.record_free(1);
        t.record_free(2);
        t.finish();
        t
    }

    #[test]
    fn a_beginning_is_kept_only_between_plans_of_the_same_single_stream() {
        // Offsets of a plan with several streams include each stream's base in the arena, and a
        // plan of another stream lays out other requests: neither is a beginning to keep.
        let options = PlanOptions::default();
        let same = one_stream_step(0);
        let like = plan_trace(&same, 0, 512, &options).unwrap();
        assert_eq!(fixed_beginning(&same, &like, 2).len(), 2);
        assert_eq!(fixed_beginning(&same, &like, 1).len(), 1);

        let other = plan_trace(&one_stream_step(5), 0, 512, &options).unwrap();
        assert!(fixed_beginning(&same, &other, 2).is_empty());

        let two = two_stream_step();
        let two_plan = plan_trace(&two, 0, 512, &options).unwrap();
        assert!(fixed_beginning(&two, &two_plan, 2).is_empty());
    }

    #[test]
    fn the_plan_names_each_method_it_used_once() {
        let t = two_stream_step();
        let p = plan_trace(&t, 0, 512, &PlanOptions::default()).unwrap();
        assert!(!p.methods.is_empty());
        let mut unique = p.methods.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), p.methods.len(), "methods {:?}", p.methods);
    }

    #[test]
    fn the_served_plan_reads_back_as_a_valid_solution_of_its_arena() {
        let mut t = Trace::new();
        t.record_alloc(1, 100, 0);
        t.record_alloc(2, 700, 7);
        t.record_free(1);
        t.record_alloc(3, 1000, 0);
        t.record_free(2);
        t.record_free(3);
        t.record_alloc(4, 8, 0); // persistent: not in the arena
        t.finish();
        let p = plan_trace(&t, 0, 512, &PlanOptions::default()).unwrap();
        let csv = p.solution_csv(0);
        let parsed = crate::placement::csv::parse_csv(&csv, "served").unwrap();
        assert_eq!(parsed.problem.len(), 3);
        let offsets = parsed.offsets.unwrap();
        let solution = Solution::from_offsets(&parsed.problem, offsets);
        validate(&parsed.problem, &solution).unwrap();
        assert_eq!(solution.peak.0 as usize, p.arena_bytes);
        // Slots, not requests: 100 -> 512, 700 -> 1024, 1000 -> 1024.
        let sizes: Vec<u64> = parsed.problem.buffers.iter().map(|b| b.size.0).collect();
        assert_eq!(sizes, vec![512, 1024, 1024]);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]
        /// A recorded step of random sizes, streams and lifetimes, planned: checked pair by pair,
        /// independently of the validator: two transient buffers alive at the same event never share
        /// a byte (and never when they are on different streams, whatever their lifetimes), every
        /// slot is aligned and inside the arena, persistent buffers have no offset.
        #[test]
        fn planned_offsets_keep_live_buffers_apart(
            ops in proptest::collection::vec((1usize..5000, 0usize..3, 0u8..3), 1..60),
        ) {
            let mut t = Trace::new();
            let mut live: Vec<usize> = Vec::new();
            for (addr, (size, stream, frees)) in (1usize..).zip(ops) {
                t.record_alloc(addr, size, stream);
                live.push(addr);
                for _ in 0..frees {
                    if live.len() > 1 {
                        let addr = live.remove(size % live.len());
                        t.record_free(addr);
                    }
                }
            }
            t.finish();
            let p = plan_trace(&t, 0, 512, &PlanOptions::default()).unwrap();
            for b in &t.buffers {
                let e = p.entries[b.index];
                prop_assert_eq!(e.offset.is_none(), b.is_persistent());
                prop_assert_eq!(e.slot % 512, 0);
                prop_assert!(e.slot >= b.size);
                if let Some(o) = e.offset {
                    prop_assert_eq!(o % 512, 0);
                    prop_assert!(o + e.slot <= p.arena_bytes);
                }
            }
            for x in t.transient() {
                for y in t.transient() {
                    if x.index >= y.index {
                        continue;
                    }
                    let together = x.alloc_event < y.free_event.unwrap() && y.alloc_event < x.free_event.unwrap();
                    if !together && x.stream == y.stream {
                        continue;
                    }
                    let (ex, ey) = (p.entries[x.index], p.entries[y.index]);
                    let (ox, oy) = (ex.offset.unwrap(), ey.offset.unwrap());
                    prop_assert!(ox + ex.slot <= oy || oy + ey.slot <= ox,
                        "buffers {} and {} share bytes", x.index, y.index);
                }
            }
        }

        /// The recorded lifetimes against a direct count of events.
        #[test]
        fn trace_lifetimes_count_allocations_and_frees(
            ops in proptest::collection::vec((any::<bool>(), 0usize..8), 1..80),
        ) {
            let mut t = Trace::new();
            let mut live: Vec<(usize, usize)> = Vec::new(); // (addr, index)
            let mut expected: Vec<(u64, Option<u64>)> = Vec::new();
            let mut event = 0u64;
            for (alloc, pick) in ops {
                if alloc || live.is_empty() {
                    let addr = 1000 + expected.len();
                    t.record_alloc(addr, 8, 0);
                    live.push((addr, expected.len()));
                    expected.push((event, None));
                    event += 1;
                } else {
                    let (addr, index) = live.remove(pick % live.len());
                    t.record_free(addr);
                    t.record_free(addr); // a second free is not an event
                    expected[index].1 = Some(event);
                    event += 1;
                }
            }
            t.finish();
            prop_assert_eq!(t.events, event);
            for (b, &(start, end)) in t.buffers.iter().zip(&expected) {
                prop_assert_eq!((b.alloc_event, b.free_event), (start, end));
            }
        }
    }
}
