//! Replaying a recorded step through the caching allocator model, and what it measures.
//!
//! A trace gives every buffer a half-open lifetime `[start, end)` in event time. Events are applied
//! in time order; at equal times frees come before allocations (the lifetimes are half-open), and
//! ties among allocations, or among frees, follow the order of the buffers in the trace.

use std::path::Path;

use super::policy::ROUND_LARGE;
use super::pool::{CachingAllocator, Stream};
use crate::placement::csv::{read_csv_file, CsvError};
use crate::placement::{Interval, Problem};

/// One buffer of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub size: u64,
    pub lifetime: Interval,
    pub stream: Stream,
}

/// What happened at one step of a replay (the actions of a PyTorch memory snapshot's trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new segment (`cudaMalloc`), made for the allocation that follows it.
    SegmentAlloc,
    Alloc,
    Free,
}

/// One event of a replay, with the allocator's counters just after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayEvent {
    pub time: u64,
    pub action: Action,
    /// The request (index into the replayed slice) the event belongs to.
    pub buffer: usize,
    /// The block's address, or the segment's.
    pub addr: u64,
    /// The requested size for `Alloc` and `Free`; the segment's size for `SegmentAlloc`.
    pub size: u64,
    pub stream: Stream,
    pub allocated: u64,
    pub reserved: u64,
}

/// The numbers a replay reports.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayReport {
    /// Requests served (requests of 0 bytes are skipped, as PyTorch never allocates them).
    pub allocations: usize,
    /// The most bytes held in segments (`max_memory_reserved`). Segments are never released, so
    /// this is also the reserved total at the end.
    pub reserved_peak: u64,
    /// Allocated bytes (block sizes) at the moment reserved memory reached its peak, that is just
    /// after the allocation that made the last segment.
    pub allocated_at_reserved_peak: u64,
    /// Requested bytes (before rounding) live at that same moment.
    pub requested_at_reserved_peak: u64,
    /// `(reserved_peak - allocated_at_reserved_peak) / reserved_peak`, 0 with nothing reserved:
    /// the share of reserved memory that was cached but unusable when the allocator had to grow.
    pub fragmentation: f64,
    /// The most bytes allocated at once (block sizes, `max_memory_allocated`).
    pub peak_allocated: u64,
    /// The most requested bytes live at once: the trace's max load, a lower bound on any arena.
    pub peak_requested: u64,
    pub segments: usize,
    pub small_segments: usize,
    pub large_segments: usize,
    /// Times memory ran short and the wholly free segments were given back (only on a limited
    /// device: [`replay_within`]).
    pub cache_flushes: u64,
}

/// A request that did not fit a limited device, even after the cache was given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "out of memory: buffer {buffer} of {size} bytes does not fit a device of {limit} bytes \
     ({reserved} bytes reserved, {allocated} allocated, after giving back the free cached segments)"
)]
pub struct OutOfMemory {
    /// The request (index into the replayed slice).
    pub buffer: usize,
    pub size: u64,
    pub limit: u64,
    pub reserved: u64,
    pub allocated: u64,
}

/// A finished replay: the report, every event, each request's address and the final allocator.
#[derive(Clone, Debug)]
pub struct SimulatedStep {
    pub report: ReplayReport,
    pub events: Vec<ReplayEvent>,
    /// The address each request was served at (`None` for a request of 0 bytes).
    pub addresses: Vec<Option<u64>>,
    /// The allocator at the end of the trace: every segment still reserved, its blocks free.
    pub allocator: CachingAllocator,
}

/// Replays `requests` through a fresh allocator with unlimited memory.
pub fn replay(requests: &[Request]) -> SimulatedStep {
    replay_within(requests, None).expect("with unlimited memory every request is served")
}

/// Replays `requests` through a fresh allocator on a device of `limit` bytes (none: unlimited), as
/// PyTorch runs them there: when a new segment would pass the limit, the wholly free cached segments
/// are given back first ([`CachingAllocator::malloc_within`]). An error names the first request that
/// did not fit.
pub fn replay_within(
    requests: &[Request],
    limit: Option<u64>,
) -> Result<SimulatedStep, OutOfMemory> {
    // (time, 0 = free / 1 = alloc, index): frees first at equal times, then trace order.
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * requests.len());
    for (i, r) in requests.iter().enumerate() {
        if r.size > 0 {
            order.push((r.lifetime.start, 1, i));
            order.push((r.lifetime.end, 0, i));
        }
    }
    order.sort_unstable();

    let mut alloc = CachingAllocator::default();
    let mut blocks = vec![None; requests.len()];
    let mut addresses = vec![None; requests.len()];
    let mut events = Vec::with_capacity(order.len() + 16);
    let mut report = ReplayReport {
        allocations: 0,
        reserved_peak: 0,
        allocated_at_reserved_peak: 0,
        requested_at_reserved_peak: 0,
        fragmentation: 0.0,
        peak_allocated: 0,
        peak_requested: 0,
        segments: 0,
        small_segments: 0,
        large_segments: 0,
        cache_flushes: 0,
    };
    for (time, kind, i) in order {
        let r = &requests[i];
        let event = |action, addr, size, a: &CachingAllocator| ReplayEvent {
            time,
            action,
            buffer: i,
            addr,
            size,
            stream: r.stream,
            allocated: a.allocated_bytes(),
            reserved: a.reserved_bytes(),
        };
        if kind == 0 {
            let id = blocks[i]
                .take()
                .expect("a buffer is freed after its allocation");
            let addr = alloc.info(id).addr;
            alloc.free(id);
            events.push(event(Action::Free, addr, r.size, &alloc));
            continue;
        }
        let Some(a) = alloc.malloc_within(r.size, r.stream, limit) else {
            return Err(OutOfMemory {
                buffer: i,
                size: r.size,
                limit: limit.unwrap_or(u64::MAX),
                reserved: alloc.reserved_bytes(),
                allocated: alloc.allocated_bytes(),
            });
        };
        blocks[i] = Some(a.block);
        addresses[i] = Some(a.addr);
        report.allocations += 1;
        if let Some(s) = a.new_segment {
            let seg = &alloc.segments()[s];
            // The counters as they were between the cudaMalloc and the allocation.
            let mut e = event(Action::SegmentAlloc, seg.addr, seg.size, &alloc);
            e.allocated -= a.size;
            events.push(e);
        }
        events.push(event(Action::Alloc, a.addr, r.size, &alloc));
        if alloc.reserved_bytes() > report.reserved_peak {
            report.reserved_peak = alloc.reserved_bytes();
            report.allocated_at_reserved_peak = alloc.allocated_bytes();
            report.requested_at_reserved_peak = alloc.requested_bytes();
        }
        report.peak_allocated = report.peak_allocated.max(alloc.allocated_bytes());
        report.peak_requested = report.peak_requested.max(alloc.requested_bytes());
    }
    if report.reserved_peak > 0 {
        let unused = report.reserved_peak - report.allocated_at_reserved_peak;
        report.fragmentation = unused as f64 / report.reserved_peak as f64;
    }
    report.cache_flushes = alloc.cache_flushes();
    report.segments = alloc.segments().len();
    report.small_segments = alloc
        .segments()
        .iter()
        .filter(|s| s.pool == super::PoolKind::Small)
        .count();
    report.large_segments = report.segments - report.small_segments;
    Ok(SimulatedStep {
        report,
        events,
        addresses,
        allocator: alloc,
    })
}

/// The smallest device, in bytes, on which PyTorch runs `requests` ([`replay_within`] succeeds):
/// between the most bytes allocated at once and what an unlimited device reserves, found by
/// bisection over multiples of 2 MiB (every segment is one, so reserved memory always is).
pub fn smallest_device(requests: &[Request]) -> u64 {
    let unlimited = replay(requests).report;
    let unit = ROUND_LARGE;
    let (mut lo, mut hi) = (
        unlimited.peak_allocated.div_ceil(unit),
        unlimited.reserved_peak / unit,
    );
    // hi fits; find the least k in lo..=hi with k units fitting.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if replay_within(requests, Some(mid * unit)).is_ok() {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi * unit
}

/// The buffers of a placement problem as requests, all on stream 0 (MiniMalloc CSV has no streams).
pub fn requests_of(problem: &Problem) -> Vec<Request> {
    problem
        .buffers
        .iter()
        .map(|b| Request {
            size: b.size.0,
            lifetime: b.lifetime,
            stream: 0,
        })
        .collect()
}

/// The buffers of a MiniMalloc CSV trace (`id,lower,upper,size`) as requests; any `offset` column
/// is ignored.
pub fn requests_csv(path: &Path) -> Result<Vec<Request>, CsvError> {
    Ok(requests_of(&read_csv_file(path)?.problem))
}

/// Replays a MiniMalloc CSV trace ([`requests_csv`]) with unlimited memory.
pub fn replay_csv(path: &Path) -> Result<SimulatedStep, CsvError> {
    Ok(replay(&requests_csv(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn r(size: u64, start: u64, end: u64) -> Request {
        Request {
            size,
            lifetime: Interval::new(start, end).unwrap(),
            stream: 0,
        }
    }

    #[test]
    fn one_small_buffer() {
        // 1000 bytes → 1024 allocated in a 2 MiB segment: (2 MiB - 1024) / 2 MiB unused.
        let out = replay(&[r(1000, 0, 1)]);
        let rep = &out.report;
        assert_eq!(rep.reserved_peak, 2 * MIB);
        assert_eq!(rep.allocated_at_reserved_peak, 1024);
        assert_eq!(rep.requested_at_reserved_peak, 1000);
        assert_eq!(rep.peak_allocated, 1024);
        assert_eq!(rep.peak_requested, 1000);
        assert!((rep.fragmentation - (2 * MIB - 1024) as f64 / (2 * MIB) as f64).abs() < 1e-12);
        assert_eq!(
            (rep.segments, rep.small_segments, rep.large_segments),
            (1, 1, 0)
        );
        let actions: Vec<_> = out.events.iter().map(|e| e.action).collect();
        assert_eq!(actions, [Action::SegmentAlloc, Action::Alloc, Action::Free]);
        // The segment event shows the counters between cudaMalloc and the allocation.
        assert_eq!(
            (out.events[0].allocated, out.events[0].reserved),
            (0, 2 * MIB)
        );
        assert_eq!(out.events[2].allocated, 0);
    }

    #[test]
    fn frees_come_before_allocations_at_equal_times() {
        // A = 12 MiB on [0, 2), B = 12 MiB on [2, 4): B starts when A ends, so B reuses A's segment.
        let out = replay(&[r(12 * MIB, 0, 2), r(12 * MIB, 2, 4)]);
        assert_eq!(out.report.reserved_peak, 12 * MIB);
        assert_eq!(out.addresses[0], out.addresses[1]);
        // Overlapping by one tick: two segments.
        let out = replay(&[r(12 * MIB, 0, 3), r(12 * MIB, 2, 4)]);
        assert_eq!(out.report.reserved_peak, 24 * MIB);
        assert_eq!(out.report.segments, 2);
    }

    #[test]
    fn reserved_peak_is_measured_when_the_last_segment_is_made() {
        // A = 5 MiB [0, 10): 20 MiB segment. B = 15 MiB [1, 3): the free 15 MiB remainder fits
        // exactly, no new segment. C = 1000 bytes [2, 4): a 2 MiB small segment; reserved peaks at
        // 22 MiB with A, B and C live: allocated 5 MiB + 15 MiB + 1024.
        // D = 512 bytes [5, 6) comes later and changes neither peak.
        let out = replay(&[
            r(5 * MIB, 0, 10),
            r(15 * MIB, 1, 3),
            r(1000, 2, 4),
            r(512, 5, 6),
        ]);
        let rep = &out.report;
        assert_eq!(rep.reserved_peak, 22 * MIB);
        assert_eq!(rep.allocated_at_reserved_peak, 20 * MIB + 1024);
        assert_eq!(rep.peak_allocated, 20 * MIB + 1024);
        let frag = (2 * MIB - 1024) as f64 / (22 * MIB) as f64;
        assert!((rep.fragmentation - frag).abs() < 1e-12);
        assert_eq!(rep.allocations, 4);
    }

    #[test]
    fn zero_byte_buffers_are_skipped() {
        let out = replay(&[r(0, 0, 1), r(8, 0, 1)]);
        assert_eq!(out.report.allocations, 1);
        assert_eq!(out.addresses[0], None);
        assert_eq!(out.report.reserved_peak, 2 * MIB);
    }

    #[test]
    fn empty_trace() {
        let out = replay(&[]);
        assert_eq!(out.report.reserved_peak, 0);
        assert_eq!(out.report.fragmentation, 0.0);
        assert!(out.events.is_empty());
    }

    #[test]
    fn on_a_limited_device_free_segments_are_given_back_before_running_out() {
        // Unlimited, 12 MiB then 14 MiB one after the other reserve both segments: 26 MiB.
        let reqs = [r(12 * MIB, 0, 1), r(14 * MIB, 1, 2)];
        let unlimited = replay(&reqs);
        assert_eq!(unlimited.report.reserved_peak, 26 * MIB);
        assert_eq!(unlimited.report.cache_flushes, 0);
        // On 20 MiB, the free 12 MiB segment is given back first and the step runs.
        let limited = replay_within(&reqs, Some(20 * MIB)).unwrap();
        assert_eq!(limited.report.cache_flushes, 1);
        assert_eq!(limited.report.reserved_peak, 14 * MIB);
        assert!(limited.allocator.segments()[0].released);
        assert!(limited.allocator.segment_blocks(0).is_empty());
        limited.allocator.check().unwrap();
        // Exactly the live bytes' segments fit; one byte less does not.
        assert!(replay_within(&reqs, Some(14 * MIB)).is_ok());
        let oom = replay_within(&reqs, Some(14 * MIB - 1)).unwrap_err();
        assert_eq!((oom.buffer, oom.size), (1, 14 * MIB));
    }

    #[test]
    fn a_request_that_does_not_fit_beside_live_memory_is_out_of_memory() {
        // The 12 MiB buffer is still live when 14 MiB are asked for: nothing can be given back.
        let reqs = [r(12 * MIB, 0, 3), r(14 * MIB, 1, 2)];
        let oom = replay_within(&reqs, Some(20 * MIB)).unwrap_err();
        assert_eq!(oom.buffer, 1);
        assert_eq!((oom.reserved, oom.allocated), (12 * MIB, 12 * MIB));
        assert!(
            oom.to_string()
                .contains("does not fit a device of 20971520 bytes"),
            "{oom}"
        );
        assert_eq!(
            replay_within(&reqs, Some(26 * MIB))
                .unwrap()
                .report
                .cache_flushes,
            0
        );
    }

    #[test]
    fn segments_in_use_are_never_given_back() {
        // A 5 MiB block lives in a 20 MiB segment, whose free 15 MiB rest then serves 12 MiB.
        let reqs = [r(5 * MIB, 0, 4), r(12 * MIB, 1, 2), r(16 * MIB, 2, 3)];
        let out = replay_within(&reqs, Some(40 * MIB)).unwrap();
        // 16 MiB needs its own segment (20 + 16 = 36 <= 40): no flush, and the shared segment stays.
        assert_eq!(out.report.cache_flushes, 0);
        assert!(out.allocator.segments().iter().all(|s| !s.released));
        // On 30 MiB the flush finds nothing wholly free (the 20 MiB segment holds the 5 MiB block).
        let oom = replay_within(&reqs, Some(30 * MIB)).unwrap_err();
        assert_eq!(oom.buffer, 2);
    }

    #[test]
    fn the_smallest_device_is_the_least_that_runs_the_step() {
        let reqs = [r(12 * MIB, 0, 1), r(14 * MIB, 1, 2), r(1000, 0, 2)];
        let smallest = smallest_device(&reqs);
        assert!(replay_within(&reqs, Some(smallest)).is_ok());
        assert!(replay_within(&reqs, Some(smallest - 1)).is_err());
        // 14 MiB and the 2 MiB small segment are live together; the 12 MiB segment is given back.
        assert_eq!(smallest, 16 * MIB);
        assert_eq!(smallest_device(&[]), 0);
    }
}
