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
    /// Each buffer's position in `by_start`.
    position: Vec<u32>,
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
            for_each_cover_node(&points, b.lifetime.start, b.lifetime.end, |k| {
                nodes[k].push(i as u32)
            });
        }
        let mut position = vec![0u32; by_start.len()];
        for (p, &i) in by_start.iter().enumerate() {
            position[i as usize] = p as u32;
        }
        OverlapIndex {
            points,
            nodes,
            by_start,
            starts,
            position,
        }
    }

    /// Number of segment-tree nodes; node ids passed to callers are below this.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Calls `visit` with every node that holds a buffer living `[start, end)`; `start` must be the
    /// start time of some buffer of the problem. Those nodes are fixed; only which of their buffers
    /// are placed changes, which is what lets a caller keep per-node state across placements.
    pub fn for_each_node_holding(&self, start: u64, end: u64, visit: impl FnMut(usize)) {
        for_each_cover_node(&self.points, start, end, visit);
    }

    /// Calls `visit` with every node whose buffers are live at `start` (the leaf-to-root path), which
    /// must be the start time of some buffer of the problem.
    pub fn for_each_stab_node(&self, start: u64, mut visit: impl FnMut(usize)) {
        let m = self.points.len();
        let leaf = self.points.partition_point(|&p| p < start);
        debug_assert!(
            leaf < m && self.points[leaf] == start,
            "query must start at a buffer's start"
        );
        let mut node = leaf + m;
        while node >= 1 {
            visit(node);
            node >>= 1;
        }
    }

    /// The positions, in start order, of the buffers that start inside `(start, end)`: the
    /// overlapping buffers the stab at `start` misses.
    pub fn starting_inside(&self, start: u64, end: u64) -> std::ops::Range<usize> {
        let from = self.starts.partition_point(|&s| s <= start);
        let to = self.starts.partition_point(|&s| s < end);
        from..to.max(from)
    }

    /// The buffer at a position in start order.
    pub fn at_position(&self, position: usize) -> BufferId {
        BufferId(self.by_start[position] as usize)
    }

    /// A buffer's position in start order.
    pub fn position(&self, id: BufferId) -> usize {
        self.position[id.0] as usize
    }

    /// Number of buffers (positions in start order).
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// The buffers held by one node.
    pub fn node(&self, node: usize) -> impl Iterator<Item = BufferId> + '_ {
        self.nodes[node].iter().map(|&i| BufferId(i as usize))
    }

    /// Calls `visit` once for every buffer whose lifetime meets `[start, end)`, including the queried
    /// buffer itself. `start` must be the start time of some buffer of the problem.
    pub fn for_each_overlapping(&self, start: u64, end: u64, mut visit: impl FnMut(BufferId)) {
        self.for_each_stab_node(start, |node| self.node(node).for_each(&mut visit));
        for p in self.starting_inside(start, end) {
            visit(self.at_position(p));
        }
    }
}

/// The canonical nodes of the bottom-up segment tree over `points` that together cover the leaves
/// (start times) inside `[start, end)`; never empty when `start` is one of the points.
fn for_each_cover_node(points: &[u64], start: u64, end: u64, mut visit: impl FnMut(usize)) {
    let m = points.len();
    let mut lo = points.partition_point(|&p| p < start) + m;
    let mut hi = points.partition_point(|&p| p < end) + m;
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
