//! The bytes in use over time while greedy placement runs, so that placing a buffer reads a few
//! dozen short lists of merged spans instead of every placed buffer it meets.
//!
//! A segment tree over the distinct start times. A buffer covers the leaves (start times) inside its
//! lifetime, never none since its own start is one, and two buffers are live at the same time
//! exactly when they share a leaf. The leaves a buffer covers are the disjoint union of a few
//! canonical nodes, and two such nodes share a leaf only when one is an ancestor of the other. So a
//! placed buffer meets a query when one of its canonical nodes is at or below one of the query's
//! (kept in the node's `sub` set), or strictly above one (kept in the ancestor's `own` set). Both
//! sets keep only the union of the spans, merged; on dense instances, where a long-lived buffer
//! meets thousands of others, a node's union is a handful of spans.

use super::merged_spans::{MergedSpans, Span};
use super::problem::{BufferId, Bytes, Problem};

pub struct Occupancy {
    /// For each buffer, the leaves `[lo, hi)` its lifetime covers (leaf i is the i-th distinct
    /// start time); never empty.
    leaves: Vec<(u32, u32)>,
    /// Leaves of the complete tree (a power of two); node k has children 2k and 2k + 1, leaf i is
    /// node `width + i`.
    width: usize,
    /// Two sets per node, side by side since they are read together: `sets[own(k)]` holds the
    /// spans of placed buffers that have k as a canonical node (they cover every leaf below k),
    /// `sets[sub(k)]` those of placed buffers with a canonical node at or below k.
    sets: Vec<MergedSpans>,
    /// Reused by every query: the sets it reads.
    scratch: Vec<Cursor>,
    /// Whether some buffer's query reads a set: the queries are known up front (one per buffer),
    /// and about a fifth of the insertions land in sets no query reads.
    read: Vec<bool>,
}

/// How far the leapfrog has got in one set.
struct Cursor {
    set: u32,
    /// Index of the set's first span that ends above the candidate.
    cursor: u32,
    /// That span's start: a candidate whose end stays at or below it is free in this set.
    free_below: u64,
}

fn own(node: usize) -> usize {
    2 * node
}

fn sub(node: usize) -> usize {
    2 * node + 1
}

impl Occupancy {
    pub fn new(problem: &Problem) -> Occupancy {
        let mut points: Vec<u64> = problem.buffers.iter().map(|b| b.lifetime.start).collect();
        points.sort_unstable();
        points.dedup();
        let width = points.len().max(1).next_power_of_two();
        let leaves: Vec<(u32, u32)> = problem
            .buffers
            .iter()
            .map(|b| {
                let lo = points.partition_point(|&p| p < b.lifetime.start);
                let hi = points.partition_point(|&p| p < b.lifetime.end).max(lo + 1);
                (lo as u32, hi as u32)
            })
            .collect();
        let mut read = vec![false; 4 * width];
        for &(lo, hi) in &leaves {
            let (lo, hi) = (lo as usize, hi as usize);
            for_each_cover_node(width, lo, hi, |node| read[sub(node)] = true);
            for_each_node_above(width, lo, hi, |node| read[own(node)] = true);
        }
        Occupancy {
            leaves,
            width,
            sets: vec![MergedSpans::default(); 4 * width],
            scratch: Vec::new(),
            read,
        }
    }

    /// Marks `span` in use for the lifetime of buffer `id`.
    pub fn insert(&mut self, id: BufferId, span: Span) {
        let (lo, hi) = self.leaves(id);
        let Occupancy { sets, read, .. } = self;
        let mut add = |set: usize| {
            if read[set] {
                sets[set].insert(span);
            }
        };
        for_each_cover_node(self.width, lo, hi, |node| {
            add(own(node));
            add(sub(node));
        });
        for_each_node_above(self.width, lo, hi, |node| add(sub(node)));
    }

    /// First fit: the lowest multiple of `alignment` where `size` bytes are free during all of buffer
    /// `id`'s lifetime.
    pub fn lowest_free(&mut self, id: BufferId, size: u64, alignment: u64) -> u64 {
        if size == 0 {
            return 0;
        }
        self.collect_sets(id);
        self.free_from(0, size, alignment).0
    }

    /// Best fit: among the free gaps of buffer `id`'s lifetime that hold `size` bytes at a multiple
    /// of `alignment`, the one with the least room, at its lowest such offset (ties go to the
    /// lowest gap); above everything when no gap is bounded. The gaps are visited bottom up, each
    /// found by the first-fit leapfrog from the end of the one before, and an exact fit ends the
    /// walk.
    pub fn tightest_free(&mut self, id: BufferId, size: u64, alignment: u64) -> u64 {
        if size == 0 {
            return 0;
        }
        self.collect_sets(id);
        let mut best: Option<(u64, u64)> = None; // (room, offset)
        let mut candidate = 0;
        loop {
            let (free, gap_end) = self.free_from(candidate, size, alignment);
            if gap_end == u64::MAX {
                return best.map_or(free, |(_, offset)| offset);
            }
            let room = gap_end - free;
            if room == size {
                return free;
            }
            if best.is_none_or(|(r, _)| room < r) {
                best = Some((room, free));
            }
            candidate = gap_end;
        }
    }

    /// The lowest multiple of `alignment` at or above `candidate` (or the end of a span blocking
    /// it) where `size` bytes are free in every set of `scratch`, and where that free gap ends (the
    /// lowest span start above it, `u64::MAX` if none). Leapfrog: each set in turn
    /// pushes the candidate above the spans that block it, until a pass over all sets moves it no
    /// more. The candidate only grows, so each set keeps a cursor at its first span ending above
    /// the candidate, and that span's start: below it the set cannot block, so most checks after
    /// a move never read the set.
    fn free_from(&mut self, mut candidate: u64, size: u64, alignment: u64) -> (u64, u64) {
        let Occupancy { sets, scratch, .. } = self;
        loop {
            let before = candidate;
            // Every set's next span starts at or above `candidate + size` once the candidate
            // stays put: the first of them ends the gap.
            let mut gap_end = u64::MAX;
            for entry in scratch.iter_mut() {
                if candidate + size <= entry.free_below {
                    gap_end = gap_end.min(entry.free_below);
                    continue;
                }
                let spans = sets[entry.set as usize].as_slice();
                let mut k = entry.cursor as usize;
                loop {
                    k = first_ending_above(spans, k, candidate);
                    match spans.get(k) {
                        // Blocked: the span ends above the candidate and starts below its end.
                        Some(&(start, end)) if start < candidate + size => {
                            candidate = Bytes(end).align_up(Bytes(alignment)).0
                        }
                        next => {
                            entry.free_below = next.map_or(u64::MAX, |&(start, _)| start);
                            gap_end = gap_end.min(entry.free_below);
                            break;
                        }
                    }
                }
                entry.cursor = k as u32;
            }
            if candidate == before {
                return (candidate, gap_end);
            }
        }
    }

    /// Fills `scratch` with the non-empty sets that together hold every span in use during buffer
    /// `id`'s lifetime, cursors at their first span (where a candidate of 0 stands).
    fn collect_sets(&mut self, id: BufferId) {
        let (lo, hi) = self.leaves(id);
        let Occupancy { sets, scratch, .. } = self;
        scratch.clear();
        let mut take = |set: usize| {
            // The candidate starts at 0, below which every span ends: the first span is where it
            // may be blocked. Reading it here, where no load waits on another, lets the memory
            // reads of all sets overlap instead of queueing behind the leapfrog.
            if let Some(&(first, _)) = sets[set].as_slice().first() {
                scratch.push(Cursor {
                    set: set as u32,
                    cursor: 0,
                    free_below: first,
                })
            }
        };
        for_each_cover_node(self.width, lo, hi, |node| take(sub(node)));
        for_each_node_above(self.width, lo, hi, |node| take(own(node)));
    }

    fn leaves(&self, id: BufferId) -> (usize, usize) {
        let (lo, hi) = self.leaves[id.0];
        (lo as usize, hi as usize)
    }
}

/// Calls `visit` once with every strict ancestor of the canonical nodes of leaves `[lo, hi)`
/// in a complete tree of `width` leaves.
/// Each of them holds a leaf inside the range and one outside, so it lies on the path from leaf
/// `lo` or from leaf `hi - 1` to the root; the nodes of those paths that hold only leaves inside
/// the range are at or below a canonical node and are skipped.
fn for_each_node_above(width: usize, lo: usize, hi: usize, mut visit: impl FnMut(usize)) {
    let inside = |node: usize, level: u32| {
        let first = (node << level) - width;
        let last = ((node + 1) << level) - width;
        lo <= first && last <= hi
    };
    let (mut left, mut right) = (width + lo, width + hi - 1);
    let mut level = 0;
    while left >= 1 {
        if !inside(left, level) {
            visit(left);
        }
        if right != left && !inside(right, level) {
            visit(right);
        }
        left >>= 1;
        right >>= 1;
        level += 1;
    }
}

/// The index of the first span at or after `from` that ends above `x`. Galloping from `from`: the
/// answer is usually `from` itself or close to it, and a plain binary search would read a cache
/// line per step of the whole list.
fn first_ending_above(spans: &[Span], from: usize, x: u64) -> usize {
    let below = |i: usize| spans.get(i).is_some_and(|&(_, end)| end <= x);
    if !below(from) {
        return from;
    }
    // Invariant: spans[lo] ends at or below x.
    let (mut lo, mut step) = (from, 1);
    while below(lo + step) {
        lo += step;
        step *= 2;
    }
    let hi = (lo + step).min(spans.len());
    lo + 1 + spans[lo + 1..hi].partition_point(|&(_, end)| end <= x)
}

/// The canonical nodes of leaves `[lo, hi)` in a complete bottom-up segment tree of `width` leaves:
/// the largest subtrees inside the range, which together hold each of its leaves once.
fn for_each_cover_node(width: usize, lo: usize, hi: usize, mut visit: impl FnMut(usize)) {
    let (mut lo, mut hi) = (lo + width, hi + width);
    while lo < hi {
        if lo & 1 == 1 {
            visit(lo);
            lo += 1;
        }
        if hi & 1 == 1 {
            hi -= 1;
            visit(hi);
        }
        lo >>= 1;
        hi >>= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::{Buffer, Bytes, Interval};
    use crate::placement::random::XorShift;

    /// Every span in use during a lifetime is reported (as itself or inside a merged span), and
    /// nothing reported is free at every moment of it.
    #[test]
    fn reports_exactly_the_bytes_in_use() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15u64);
        let mut next = move |m: u64| rng.next_u64() % m;
        let buffers: Vec<Buffer> = (0..300)
            .map(|i| {
                let start = next(100);
                let len = 1 + if i % 7 == 0 { next(60) } else { next(5) };
                Buffer::new("b", Interval::new(start, start + len).unwrap(), Bytes(1))
            })
            .collect();
        let problem = Problem::new(buffers.clone());
        let mut occupancy = Occupancy::new(&problem);
        let mut placed: Vec<(Interval, Span)> = Vec::new();
        for (i, b) in buffers.iter().enumerate() {
            // Bytes in use per the placed buffers, and per the occupancy, over 0..256.
            let mut want = [false; 256];
            for (l, (s, e)) in &placed {
                if l.intersects(&b.lifetime) {
                    want[*s as usize..*e as usize].fill(true);
                }
            }
            let mut got = [false; 256];
            occupancy.collect_sets(BufferId(i));
            for cursor in &occupancy.scratch {
                for &(s, e) in occupancy.sets[cursor.set as usize].as_slice() {
                    got[s as usize..e as usize].fill(true);
                }
            }
            assert_eq!(got, want, "query {:?}", b.lifetime);
            let start = next(240);
            let span = (start, start + 1 + next(15));
            occupancy.insert(BufferId(i), span);
            placed.push((b.lifetime, span));
        }
    }
}
