//! Per-section arrays of the search with a summary per block of 64 sections, so that the max or
//! min over a lifetime costs O(span / 64) instead of O(span). Long-lived buffers of big traces
//! span thousands of sections, and the search asks for every unplaced buffer's floor at each node.

/// Sections per block (a power of two).
const BLOCK: usize = 64;

/// Below this span a plain scan is as fast as going through the blocks.
const SCAN: usize = 2 * BLOCK;

/// The floors: per section, the top of the highest buffer placed across it. Floors only rise
/// while placing and fall back only by [`Floors::undo`], which lets each block keep its max.
#[derive(Clone, Debug)]
pub(super) struct Floors {
    floor: Vec<u64>,
    block_max: Vec<u64>,
    trail: Vec<(u32, u64)>,
    block_trail: Vec<(u32, u64)>,
}

/// Where [`Floors::undo`] returns to.
#[derive(Clone, Copy, Debug)]
pub(super) struct FloorsMark(usize, usize);

impl Floors {
    pub fn new(sections: usize) -> Floors {
        Floors {
            floor: vec![0; sections],
            block_max: vec![0; sections.div_ceil(BLOCK)],
            trail: Vec::new(),
            block_trail: Vec::new(),
        }
    }

    pub fn get(&self, s: usize) -> u64 {
        self.floor[s]
    }

    /// The highest floor over sections `lo..hi` (0 when empty).
    pub fn max(&self, lo: usize, hi: usize) -> u64 {
        if hi <= lo + SCAN {
            return self.floor[lo..hi].iter().copied().max().unwrap_or(0);
        }
        let (bl, bh) = (lo.div_ceil(BLOCK), hi / BLOCK);
        let head = self.floor[lo..bl * BLOCK].iter();
        let tail = self.floor[bh * BLOCK..hi].iter();
        let blocks = self.block_max[bl..bh].iter();
        head.chain(blocks).chain(tail).copied().max().unwrap_or(0)
    }

    /// Sets the floor of sections `lo..hi` to `top`, which must not be below any of them (a buffer
    /// goes at or above its floor).
    pub fn raise(&mut self, lo: usize, hi: usize, top: u64) {
        for s in lo..hi {
            debug_assert!(self.floor[s] <= top, "floors only rise");
            self.trail.push((s as u32, self.floor[s]));
            self.floor[s] = top;
        }
        if hi > lo {
            for b in lo / BLOCK..=(hi - 1) / BLOCK {
                if self.block_max[b] < top {
                    self.block_trail.push((b as u32, self.block_max[b]));
                    self.block_max[b] = top;
                }
            }
        }
    }

    pub fn mark(&self) -> FloorsMark {
        FloorsMark(self.trail.len(), self.block_trail.len())
    }

    /// Undoes every [`Floors::raise`] since `mark`.
    pub fn undo(&mut self, mark: FloorsMark) {
        for (s, old) in self.trail.drain(mark.0..).rev() {
            self.floor[s as usize] = old;
        }
        for (b, old) in self.block_trail.drain(mark.1..).rev() {
            self.block_max[b as usize] = old;
        }
    }
}

/// Scratch for the lowest offset any unplaced buffer across each section can take now: lowered
/// over whole lifetimes, read per section.
#[derive(Clone, Debug)]
pub(super) struct MinOffsets {
    min: Vec<u64>,
    block_min: Vec<u64>,
}

impl MinOffsets {
    pub fn new(sections: usize) -> MinOffsets {
        MinOffsets {
            min: vec![u64::MAX; sections],
            block_min: vec![u64::MAX; sections.div_ceil(BLOCK)],
        }
    }

    /// Forgets everything over sections `lo..hi` (and the rest of their blocks).
    pub fn clear(&mut self, lo: usize, hi: usize) {
        self.min[lo..hi].fill(u64::MAX);
        if hi > lo {
            self.block_min[lo / BLOCK..=(hi - 1) / BLOCK].fill(u64::MAX);
        }
    }

    /// Lowers sections `lo..hi` to at most `o`.
    pub fn lower(&mut self, lo: usize, hi: usize, o: u64) {
        if hi <= lo + SCAN {
            self.min[lo..hi].iter_mut().for_each(|m| *m = (*m).min(o));
            return;
        }
        let (bl, bh) = (lo.div_ceil(BLOCK), hi / BLOCK);
        let cells = self.min[lo..bl * BLOCK].iter_mut();
        cells
            .chain(self.block_min[bl..bh].iter_mut())
            .for_each(|m| *m = (*m).min(o));
        self.min[bh * BLOCK..hi]
            .iter_mut()
            .for_each(|m| *m = (*m).min(o));
    }

    pub fn get(&self, s: usize) -> u64 {
        self.min[s].min(self.block_min[s / BLOCK])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Both agree with plain arrays under any sequence of raises, undos and queries.
        #[test]
        fn blocks_agree_with_plain_arrays(
            ops in proptest::collection::vec((0usize..400, 1usize..300, 0u64..50, any::<bool>()), 1..60)
        ) {
            let n = 500;
            let mut floors = Floors::new(n);
            let mut plain = vec![0u64; n];
            let mut marks = Vec::new();
            let mut mins = MinOffsets::new(n);
            let mut plain_min = vec![u64::MAX; n];
            for (lo, len, dz, undo) in ops {
                let hi = (lo + len).min(n);
                if undo {
                    if let Some((m, saved)) = marks.pop() {
                        floors.undo(m);
                        plain = saved;
                    }
                } else {
                    let top = plain[lo..hi].iter().copied().max().unwrap_or(0) + dz;
                    marks.push((floors.mark(), plain.clone()));
                    floors.raise(lo, hi, top);
                    plain[lo..hi].fill(top);
                }
                prop_assert_eq!(floors.max(lo, hi), plain[lo..hi].iter().copied().max().unwrap_or(0));
                prop_assert_eq!(floors.max(0, n), plain.iter().copied().max().unwrap_or(0));
                mins.lower(lo, hi, dz);
                plain_min[lo..hi].iter_mut().for_each(|m| *m = (*m).min(dz));
                for s in (0..n).step_by(7) {
                    prop_assert_eq!(mins.get(s), plain_min[s]);
                }
            }
            mins.clear(0, n);
            prop_assert!((0..n).all(|s| mins.get(s) == u64::MAX));
        }
    }
}
