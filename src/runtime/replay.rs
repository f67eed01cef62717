//! Following the plan during a step: which plan entry a request corresponds to.
//!
//! The k-th allocation of a step normally matches the k-th entry. Programs drift a little (an extra
//! allocation, one that disappeared, a one-off allocation of the profiled step), so the cursor only
//! moves on a match, and a request that does not fit the entry under the cursor is compared with the
//! next few entries, by exact size and stream. Whatever entry is chosen, the arena still checks that
//! its range is free before handing it out (see `arena.rs`): matching decides *which* address to try,
//! never whether it is safe.

use super::planning::{DevicePlan, PlanEntry};

#[derive(Debug)]
pub struct Replay {
    pub plan: DevicePlan,
    cursor: usize,
    /// Entries whose buffer was passed to `record_stream`: served by the fallback from then on.
    poisoned: Vec<bool>,
    pub step_divergences: u64,
    pub abandoned: bool,
}

impl Replay {
    pub fn new(plan: DevicePlan) -> Replay {
        let n = plan.entries.len();
        Replay {
            plan,
            cursor: 0,
            poisoned: vec![false; n],
            step_divergences: 0,
            abandoned: false,
        }
    }

    /// Back to the first entry, for a new step.
    pub fn start_step(&mut self) {
        self.cursor = 0;
        self.step_divergences = 0;
        self.abandoned = false;
    }

    /// Takes over a step that followed another plan exactly for its first `k` requests (which this
    /// plan begins with too).
    pub fn resume_at(&mut self, k: usize, step_divergences: u64) {
        self.cursor = k;
        self.step_divergences = step_divergences;
        self.abandoned = false;
    }

    #[inline]
    pub fn entry(&self, index: usize) -> PlanEntry {
        self.plan.entries[index]
    }

    pub fn poison(&mut self, index: usize) {
        if let Some(p) = self.poisoned.get_mut(index) {
            *p = true;
        }
    }

    #[inline]
    pub fn is_poisoned(&self, index: usize) -> bool {
        self.poisoned.get(index).copied().unwrap_or(false)
    }

    /// The entry a request of `size` bytes on `stream` corresponds to, and moves the cursor past it.
    ///
    /// Exact match under the cursor, else exact match among the next `lookahead` transient entries
    /// (persistent entries in between are skipped for free: state created in the profiled step, such
    /// as optimizer buffers, is not allocated again), else a smaller request under the cursor.
    #[inline]
    pub fn choose(&mut self, size: usize, stream: usize, lookahead: usize) -> Option<usize> {
        let entries = &self.plan.entries;
        let exact = |e: &PlanEntry| e.size == size && e.stream == stream;
        let mut transient_seen = 0;
        let mut k = self.cursor;
        while k < entries.len() && transient_seen <= lookahead {
            let e = &entries[k];
            if exact(e) {
                self.cursor = k + 1;
                return Some(k);
            }
            if e.offset.is_some() {
                transient_seen += 1;
            }
            k += 1;
        }
        let e = entries.get(self.cursor)?;
        if e.offset.is_some() && e.stream == stream && size <= e.slot {
            let k = self.cursor;
            self.cursor += 1;
            return Some(k);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: usize, offset: Option<usize>) -> PlanEntry {
        PlanEntry {
            size,
            slot: size.div_ceil(512) * 512,
            stream: 0,
            offset,
        }
    }

    fn replay(entries: Vec<PlanEntry>) -> Replay {
        Replay::new(DevicePlan {
            entries,
            ..DevicePlan::default()
        })
    }

    #[test]
    fn follows_order_and_resynchronises() {
        let mut r = replay(vec![
            entry(100, Some(0)),
            entry(200, None),
            entry(300, Some(512)),
            entry(400, Some(0)),
        ]);
        assert_eq!(r.choose(100, 0, 4), Some(0));
        // The persistent 200 is gone this step: 300 still matches by looking ahead.
        assert_eq!(r.choose(300, 0, 4), Some(2));
        // An extra allocation that fits nothing exactly but is smaller than the cursor's entry.
        assert_eq!(r.choose(50, 0, 4), Some(3));
        assert_eq!(r.choose(50, 0, 4), None, "past the end");
        r.start_step();
        assert_eq!(r.choose(100, 1, 4), None, "another stream never matches");
        assert_eq!(r.choose(5000, 0, 4), None, "larger than planned");
    }

    #[test]
    fn lookahead_counts_transient_entries_only() {
        let t = |size| entry(size, Some(0));
        let p = |size| entry(size, None);
        // Three transient entries before the one asked for: found with a lookahead of 3, not 2.
        let plan = vec![t(100), t(200), t(300), t(9000)];
        let mut r = replay(plan.clone());
        assert_eq!(r.choose(9000, 0, 2), None);
        let mut r2 = replay(plan);
        assert_eq!(r2.choose(9000, 0, 3), Some(3));
        // Persistent entries in between cost nothing.
        let mut r = replay(vec![p(1), p(2), p(3), p(4), t(9000)]);
        assert_eq!(r.choose(9000, 0, 0), Some(4));
    }

    #[test]
    fn resume_at_moves_the_cursor_and_carries_the_count() {
        let mut r = replay(vec![
            entry(100, Some(0)),
            entry(100, Some(512)),
            entry(100, Some(1024)),
        ]);
        r.start_step();
        r.resume_at(2, 5);
        assert_eq!(r.step_divergences, 5);
        assert_eq!(
            r.choose(100, 0, 4),
            Some(2),
            "from the third entry, not the first"
        );
    }
}
