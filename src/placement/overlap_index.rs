//! A static index answering "which buffers live at some moment of `[start, end)`?" in time
//! proportional to the answer, so placement work follows the number of real conflicts, not n².
//!
//! A buffer overlaps `[s, e)` when it is live at `s` (a stabbing query) or starts inside `(s, e)`
//! (a range of the buffers sorted by start). Queries always start at a buffer's own start, so the
//! segment tree for stabbing only needs the distinct start times as leaves.

use super::problem::{BufferId, Problem};

pub struct OverlapIndex {
    /// Distinct start times, sorted: the segment tree's leaves.
    points: Vec<u64>,
    /// Bottom-up segment tree over `points`: node k holds the buffers covering all of its leaves.
    nodes: Vec<Vec<u32>>,
    /// Buffer indices sorted by start time, and those start times.
    by_start: Vec<u32>,
    starts: Vec<u64>,
}

impl OverlapIndex {
    pub fn new(problem: &Problem) -> OverlapIndex {
        let mut by_start: Vec<u32> = (0..problem.len() as u32).collect();
        by_start.sort_unstable_by_key(|&i| problem.buffers[i as usize].lifetime.start);
        let starts: Vec<u64> = by_start
            .iter()
            .map(|&i| problem.buffers[i as usize].lifetime.start)
            .collect();
        let mut points = starts.clone();
        points.dedup();
        let m = points.len();
        let mut nodes = vec![Vec::new(); 2 * m];
        for (i, b) in problem.buffers.iter().enumerate() {
            // Leaves (start times) inside the lifetime: [lo, hi), never empty since its start is one.
            let mut lo = points.partition_point(|&p| p < b.lifetime.start) + m;
            let mut hi = points.partition_point(|&p| p < b.lifetime.end) + m;
            while lo < hi {
                if lo & 1 == 1 {
                    nodes[lo].push(i as u32);
                    lo += 1;
                }
                if hi & 1 == 1 {
                    hi -= 1;
                    nodes[hi].push(i as u32);
                }
                lo >>= 1;
                hi >>= 1;
            }
        }
        OverlapIndex {
            points,
            nodes,
            by_start,
            starts,
        }
    }

    /// Calls `visit` once for every buffer whose lifetime meets `[start, end)`, including the queried
    /// buffer itself. `start` must be the start time of some buffer of the problem.
    pub fn for_each_overlapping(&self, start: u64, end: u64, mut visit: impl FnMut(BufferId)) {
        let m = self.points.len();
        let leaf = self.points.partition_point(|&p| p < start);
        debug_assert!(
            leaf < m && self.points[leaf] == start,
            "query must start at a buffer's start"
        );
        let mut node = leaf + m;
        while node >= 1 {
            for &i in &self.nodes[node] {
                visit(BufferId(i as usize));
            }
            node >>= 1;
        }
        let from = self.starts.partition_point(|&s| s <= start);
        let to = self.starts.partition_point(|&s| s < end);
        for &i in &self.by_start[from..to.max(from)] {
            visit(BufferId(i as usize));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::{Buffer, Bytes, Interval};

    #[test]
    fn finds_exactly_the_overlapping_buffers() {
        let spans = [
            (0, 10),
            (2, 3),
            (3, 7),
            (5, 6),
            (7, 9),
            (9, 12),
            (3, 4),
            (11, 12),
        ];
        let p = Problem::new(
            spans
                .iter()
                .map(|&(s, e)| Buffer::new("b", Interval::new(s, e).unwrap(), Bytes(1)))
                .collect(),
        );
        let index = OverlapIndex::new(&p);
        for b in &p.buffers {
            let mut got = Vec::new();
            index.for_each_overlapping(b.lifetime.start, b.lifetime.end, |id| got.push(id.0));
            got.sort();
            let want: Vec<usize> = (0..p.len())
                .filter(|&j| p.buffers[j].lifetime.intersects(&b.lifetime))
                .collect();
            assert_eq!(got, want, "query {:?}", b.lifetime);
        }
    }
}
