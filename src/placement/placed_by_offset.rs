//! For one greedy run: the placed buffers of every overlap-index group, kept sorted by offset, so
//! the placed neighbours of a buffer come out as a few already-sorted lists to merge.
//!
//! Both halves of an overlap query ask about fixed sets of buffers: the segment-tree nodes on the
//! stab path, and a range of positions in start order. Placement only flips buffers to placed, so
//! each group can keep its placed buffers sorted as they are placed, instead of every query
//! collecting and sorting them again (on dense instances each short buffer meets thousands of
//! long-lived ones, and each long one thousands of short ones).

use std::ops::Range;

use super::overlap_index::OverlapIndex;

/// `(offset, offset + size)` of a placed buffer.
pub type Span = (u64, u64);

/// Positions in start order are grouped in aligned blocks of 2^L positions for every L in
/// `FIRST_LEVEL..=LAST_LEVEL`. A range takes whole blocks, larger ones where it can, and scans the
/// ragged ends (under 2^FIRST_LEVEL positions each) itself: short buffers' ranges stay a plain scan,
/// and capping the block size bounds what one insertion shifts.
const FIRST_LEVEL: u32 = 5;
const LAST_LEVEL: u32 = 10;

pub struct PlacedByOffset {
    /// For each segment-tree node, its placed buffers, ascending.
    nodes: Vec<Vec<Span>>,
    /// `blocks[L - FIRST_LEVEL][k]`: the placed buffers at positions `[k << L, (k + 1) << L)`,
    /// ascending.
    blocks: Vec<Vec<Vec<Span>>>,
}

impl PlacedByOffset {
    pub fn new(index: &OverlapIndex) -> PlacedByOffset {
        let n = index.len();
        PlacedByOffset {
            nodes: vec![Vec::new(); index.node_count()],
            blocks: (FIRST_LEVEL..=LAST_LEVEL)
                .map(|level| vec![Vec::new(); n.div_ceil(1 << level)])
                .collect(),
        }
    }

    /// Records a buffer living `[start, end)` at start-order `position`, placed at `span`.
    pub fn insert(
        &mut self,
        index: &OverlapIndex,
        (start, end): (u64, u64),
        position: usize,
        span: Span,
    ) {
        index.for_each_node_holding(start, end, |node| {
            insert_sorted(&mut self.nodes[node], span)
        });
        for (k, level) in (FIRST_LEVEL..=LAST_LEVEL).enumerate() {
            insert_sorted(&mut self.blocks[k][position >> level], span);
        }
    }

    /// The placed buffers of one segment-tree node, ascending.
    pub fn node(&self, node: usize) -> &[Span] {
        &self.nodes[node]
    }

    /// Splits a range of start-order positions into sorted blocks (passed to `block`) and the
    /// positions left over at its ends (passed to `loose`, placed or not); together they cover each
    /// position exactly once.
    pub fn for_each_in_range<'a>(
        &'a self,
        range: Range<usize>,
        mut loose: impl FnMut(usize),
        mut block: impl FnMut(&'a [Span]),
    ) {
        let unit = 1usize << FIRST_LEVEL;
        let aligned_lo = range.start.div_ceil(unit) * unit;
        let aligned_hi = range.end / unit * unit;
        if aligned_lo >= aligned_hi {
            range.for_each(loose);
            return;
        }
        (range.start..aligned_lo).for_each(&mut loose);
        (aligned_hi..range.end).for_each(&mut loose);
        // Bottom-up segment-tree walk over block indices, stopping at the largest level.
        let mut lo = aligned_lo >> FIRST_LEVEL;
        let mut hi = aligned_hi >> FIRST_LEVEL;
        for k in 0..(LAST_LEVEL - FIRST_LEVEL) as usize {
            if lo >= hi {
                return;
            }
            if lo & 1 == 1 {
                block(&self.blocks[k][lo]);
                lo += 1;
            }
            if hi & 1 == 1 {
                hi -= 1;
                block(&self.blocks[k][hi]);
            }
            lo >>= 1;
            hi >>= 1;
        }
        let top = &self.blocks[(LAST_LEVEL - FIRST_LEVEL) as usize];
        for list in &top[lo.min(hi)..hi] {
            block(list);
        }
    }
}

fn insert_sorted(list: &mut Vec<Span>, span: Span) {
    let at = list.partition_point(|&x| x <= span);
    list.insert(at, span);
}
