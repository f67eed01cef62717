//! A set of byte offsets kept as sorted, disjoint, non-touching half-open spans. Greedy placement
//! only ever asks whether an offset range is free, so the buffers behind the bytes can be forgotten:
//! spans that overlap or touch merge into one, and the list stays short where the bytes are dense.

/// `(start, end)` of a half-open byte range.
pub type Span = (u64, u64);

/// Up to this many spans, an insertion scans instead of bisecting.
const LINEAR_BELOW: usize = 16;

#[derive(Clone, Debug, Default)]
pub struct MergedSpans {
    /// Ascending; each span ends strictly before the next one starts.
    spans: Vec<Span>,
}

impl MergedSpans {
    /// Adds `[start, end)`, merging it with every span it overlaps or touches. Empty spans hold no
    /// byte and are ignored.
    pub fn insert(&mut self, (start, end): Span) {
        if start >= end {
            return;
        }
        // Spans from `lo` to `hi` (exclusive) overlap or touch the new one.
        let lo = if self.spans.len() <= LINEAR_BELOW {
            // Short lists (most of them): a scan beats a binary search's dependent loads.
            self.spans
                .iter()
                .position(|&(_, e)| e >= start)
                .unwrap_or(self.spans.len())
        } else {
            self.spans.partition_point(|&(_, e)| e < start)
        };
        // Usually no span or one follows within reach: walk instead of a second binary search.
        let mut hi = lo;
        while self.spans.get(hi).is_some_and(|&(s, _)| s <= end) {
            hi += 1;
        }
        if lo == hi {
            self.spans.insert(lo, (start, end));
        } else {
            let merged = (start.min(self.spans[lo].0), end.max(self.spans[hi - 1].1));
            self.spans[lo] = merged;
            self.spans.drain(lo + 1..hi);
        }
    }

    pub fn as_slice(&self) -> &[Span] {
        &self.spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::random::XorShift;

    #[test]
    fn overlapping_and_touching_spans_merge() {
        let mut m = MergedSpans::default();
        for span in [
            (10, 20),
            (30, 40),
            (0, 5),
            (5, 6),
            (19, 30),
            (50, 50),
            (45, 47),
        ] {
            m.insert(span);
        }
        assert_eq!(m.as_slice(), &[(0, 6), (10, 40), (45, 47)]);
        m.insert((1, 46));
        assert_eq!(m.as_slice(), &[(0, 47)]);
    }

    #[test]
    fn matches_a_bitmap() {
        // Deterministic pseudo-random spans over 200 bytes, checked byte by byte.
        let mut rng = XorShift(0x2545_f491_4f6c_dd1du64);
        let mut next = move |m: u64| rng.next_u64() % m;
        let mut m = MergedSpans::default();
        let mut bytes = [false; 200];
        for _ in 0..60 {
            let start = next(190);
            let end = start + next(10);
            m.insert((start, end));
            bytes[start as usize..end as usize].fill(true);
            let mut from_spans = [false; 200];
            for &(s, e) in m.as_slice() {
                from_spans[s as usize..e as usize].fill(true);
            }
            assert_eq!(from_spans, bytes);
            assert!(m.as_slice().windows(2).all(|w| w[0].1 < w[1].0));
        }
    }
}
