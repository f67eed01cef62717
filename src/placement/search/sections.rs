//! Per-section arrays of the search, each with a trail to undo to a mark: the floors, and the
//! lowest offset any unplaced buffer across each section can take. Both change, when a buffer is
//! placed, over a few lifetimes only, so a node pays for those and not for a pass over every
//! lifetime (long-lived buffers of big traces span thousands of sections).

/// Values that can be set and put back: each change records the old value on a trail, and
/// [`Trailed::undo`] restores everything changed since a mark. The search's per-section and
/// per-buffer state is kept this way.
#[derive(Clone, Debug)]
pub(super) struct Trailed {
    values: Vec<u64>,
    trail: Vec<(u32, u64)>,
}

impl Trailed {
    pub fn new(len: usize, value: u64) -> Trailed {
        Trailed {
            values: vec![value; len],
            trail: Vec::new(),
        }
    }

    pub fn get(&self, i: usize) -> u64 {
        self.values[i]
    }

    pub fn set(&mut self, i: usize, value: u64) {
        self.trail.push((i as u32, self.values[i]));
        self.values[i] = value;
    }

    /// Sets `lo..hi` to `value` and hands them out to be changed further (the old values are on
    /// the trail).
    pub fn reset(&mut self, lo: usize, hi: usize, value: u64) -> &mut [u64] {
        self.trail
            .extend((lo..hi).map(|i| (i as u32, self.values[i])));
        let range = &mut self.values[lo..hi];
        range.fill(value);
        range
    }

    pub fn range(&self, lo: usize, hi: usize) -> &[u64] {
        &self.values[lo..hi]
    }

    pub fn mark(&self) -> usize {
        self.trail.len()
    }

    /// Undoes every change since `mark`.
    pub fn undo(&mut self, mark: usize) {
        for (i, old) in self.trail.drain(mark..).rev() {
            self.values[i as usize] = old;
        }
    }
}

/// The floors: per section, the top of the highest buffer placed across it. Floors only rise
/// while placing and fall back only by [`Floors::undo`].
#[derive(Clone, Debug)]
pub(super) struct Floors(Trailed);

/// Where [`Floors::undo`] returns to.
#[derive(Clone, Copy, Debug)]
pub(super) struct FloorsMark(usize);

impl Floors {
    pub fn new(sections: usize) -> Floors {
        Floors(Trailed::new(sections, 0))
    }

    pub fn get(&self, s: usize) -> u64 {
        self.0.get(s)
    }

    /// The highest floor over sections `lo..hi` (0 when empty). The search keeps each buffer's
    /// own as it places (`Dfs::place`), and reads this only to start, and to check.
    pub fn max(&self, lo: usize, hi: usize) -> u64 {
        self.0.range(lo, hi).iter().copied().max().unwrap_or(0)
    }

    /// Sets the floor of sections `lo..hi` to `top`, which must not be below any of them (a buffer
    /// goes at or above its floor).
    pub fn raise(&mut self, lo: usize, hi: usize, top: u64) {
        debug_assert!(self.max(lo, hi) <= top, "floors only rise");
        self.0.reset(lo, hi, top);
    }

    pub fn mark(&self) -> FloorsMark {
        FloorsMark(self.0.mark())
    }

    /// Undoes every [`Floors::raise`] since `mark`.
    pub fn undo(&mut self, mark: FloorsMark) {
        self.0.undo(mark.0);
    }
}

/// Per section, the lowest offset any unplaced buffer across it can take now. Placing a buffer
/// changes the offsets of the buffers that overlap it and no other, so only the sections of those
/// lifetimes are recomputed ([`MinOffsets::recompute`]); a pass over every lifetime at each node
/// was a third of the search's time on perfect packings. [`MinOffsets::undo`] returns to a mark.
#[derive(Clone, Debug)]
pub(super) struct MinOffsets(Trailed);

impl MinOffsets {
    pub fn new(sections: usize) -> MinOffsets {
        MinOffsets(Trailed::new(sections, u64::MAX))
    }

    pub fn get(&self, s: usize) -> u64 {
        self.0.get(s)
    }

    /// Sets sections `lo..hi` to the lowest offset of `lifetimes` (start, end, offset) across
    /// each, `u64::MAX` where none is; parts of lifetimes outside `lo..hi` are ignored.
    pub fn recompute(
        &mut self,
        lo: usize,
        hi: usize,
        lifetimes: impl Iterator<Item = (usize, usize, u64)>,
    ) {
        let min = self.0.reset(lo, hi, u64::MAX);
        for (start, end, o) in lifetimes {
            let (a, b) = (start.max(lo), end.min(hi));
            if a < b {
                min[a - lo..b - lo]
                    .iter_mut()
                    .for_each(|m| *m = (*m).min(o));
            }
        }
    }

    pub fn mark(&self) -> usize {
        self.0.mark()
    }

    /// Undoes every [`MinOffsets::recompute`] since `mark`.
    pub fn undo(&mut self, mark: usize) {
        self.0.undo(mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The floors agree with a plain array under any sequence of raises, undos and queries.
        #[test]
        fn floors_agree_with_a_plain_array(
            ops in proptest::collection::vec((0usize..400, 1usize..300, 0u64..50, any::<bool>()), 1..60)
        ) {
            let n = 500;
            let mut floors = Floors::new(n);
            let mut plain = vec![0u64; n];
            let mut marks = Vec::new();
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
            }
        }

        /// Recomputing a window agrees with minima over a plain array, and undo restores them.
        #[test]
        fn min_offsets_agree_with_plain_minima(
            windows in proptest::collection::vec(
                (0usize..300, 1usize..200, proptest::collection::vec((0usize..400, 0usize..120, 0u64..50), 0..12)),
                1..8,
            ),
        ) {
            let n = 400;
            let mut mins = MinOffsets::new(n);
            let mut history = Vec::new();
            let mut plain = vec![u64::MAX; n];
            for (lo, len, lifetimes) in windows {
                let hi = (lo + len).min(n);
                history.push((mins.mark(), plain.clone()));
                let lifetimes: Vec<(usize, usize, u64)> =
                    lifetimes.into_iter().map(|(s, l, o)| (s, (s + l).min(n), o)).collect();
                mins.recompute(lo, hi, lifetimes.iter().copied());
                plain[lo..hi].fill(u64::MAX);
                for &(s, e, o) in &lifetimes {
                    for m in plain.iter_mut().take(e.min(hi)).skip(s.max(lo)) {
                        *m = (*m).min(o);
                    }
                }
                prop_assert!((0..n).all(|s| mins.get(s) == plain[s]));
            }
            while let Some((mark, saved)) = history.pop() {
                mins.undo(mark);
                prop_assert!((0..n).all(|s| mins.get(s) == saved[s]));
            }
        }
    }
}
