//! Branch and bound over canonical placements, after MiniMalloc (Moffitt, ASPLOS 2023); written from
//! the paper's ideas.
//!
//! Canonical placements: sort any valid placement by (offset, rank) and drop each buffer, in that
//! order, to the lowest aligned offset above the buffers already dropped (its *floor*) that does not
//! collide with a fixed buffer still to come. Repeating this only lowers offsets, so it reaches a
//! placement where every buffer already sits at its floor. The search enumerates exactly such
//! sequences: it places one buffer at a time at its floor, and the sequence of (offset, rank) must
//! increase, which gives every placement one position in canonical order (symmetry breaking).
//!
//! Pruning:
//! - *sections*: time is cut at every lifetime endpoint; all buffers alive in a section overlap each
//!   other, so the bytes still unplaced there stack above the section's floor, above the last offset
//!   placed, and above the lowest offset any of them can take now. More than the capacity: no
//!   completion.
//! - *dominance*: when the next buffer goes to offset `o` while another unplaced buffer `x` could sit
//!   wholly below `o` (its floor + size <= o), every completion can be improved by moving `x` down (all
//!   later buffers are at >= o); a completion with the smallest sum of offsets is never cut this way.
//! - *twins*: identical buffers are placed in rank order.
//! - *splitting*: when the unplaced buffers fall into groups that no lifetime connects, each group is
//!   solved alone, as a problem of its own above the current floors; a failure in one does not make
//!   the search retry the others.
//!
//! Branching: on which buffer comes next in canonical order; under the restarts' shuffled orders,
//! where the lowest base of a group is in a section with no room to spare, on which buffer fills
//! that gap instead ([`Dfs::fill_gap`]).

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Instant;

use super::instance::{Heuristic, Instance, Item, Ordering};
use super::sections::{Floors, FloorsMark, MinOffsets, Trailed};
use crate::placement::problem::Bytes;

/// Why the search stopped before an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    Deadline,
    NodeLimit,
}

/// The answer of one decision search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Offsets in the instance's units, one per buffer, all tops within the capacity.
    Fits(Vec<u64>),
    /// Proven: no placement fits the capacity.
    Infeasible,
    Stopped(Stopped),
}

pub(crate) struct Dfs<'a> {
    inst: &'a Instance,
    ord: &'a Ordering,
    /// Position of each buffer in the branching order; re-sorted inside each split-off group.
    rank: Vec<u32>,
    cap: u64,
    deadline: Option<Instant>,
    node_limit: u64,
    /// Set by another search of the same question that has answered it: stop as at the deadline.
    cancel: Option<&'a AtomicBool>,
    /// Scratch, per section: the lowest offset an unplaced buffer spanning it can take.
    min_off: MinOffsets,
    /// Scratch, per buffer of the current group: its canonical offset now.
    off: Vec<u64>,
    floor: Floors,
    /// Per buffer: the highest floor across its lifetime, raised as buffers that overlap it are
    /// placed (see [`Dfs::place`]), so that a node reads each buffer's floor instead of scanning
    /// its lifetime: that scan was a third of the search's time on perfect packings.
    span_floor: Trailed,
    /// Scratch of [`Dfs::recompute_min_offsets`]: (start, end, offset) of the buffers it reads.
    lifetimes: Vec<(usize, usize, u64)>,
    load: Vec<u64>,
    count: Vec<u32>,
    offset: Vec<u64>,
    placed: Vec<bool>,
    fixed: Vec<u32>,
    placed_trail: Vec<u32>,
    /// Scratch of the tiling cut: lifetimes in sections, and which sections a tiling reaches.
    spans: Vec<(u32, u32)>,
    reach: Vec<bool>,
    /// Whether to branch on gaps ([`Dfs::fill_gap`]): under the shuffled orders of the restarts
    /// only. It settles perfect packings the canonical branching does not, and thrashes on some
    /// instances it settles (challenging F: 10 s against 0.35 s), so the two run side by side.
    gaps: bool,
    /// Scratch of the gap branching: per section, the buffers that can fill it.
    fillers: Vec<u32>,
    pub nodes: u64,
}

/// Where to undo to.
#[derive(Clone, Copy)]
struct Mark(usize, FloorsMark, usize, usize);

impl<'a> Dfs<'a> {
    pub fn new(
        inst: &'a Instance,
        ord: &'a Ordering,
        cap: u64,
        deadline: Option<Instant>,
        node_limit: u64,
    ) -> Dfs<'a> {
        let mut load = vec![0u64; inst.sections];
        let mut count = vec![0u32; inst.sections];
        for it in &inst.items {
            for s in it.lo..it.hi {
                load[s as usize] += it.size;
                count[s as usize] += 1;
            }
        }
        let fixed = (0..inst.len() as u32)
            .filter(|&i| inst.items[i as usize].fixed.is_some())
            .collect();
        Dfs {
            inst,
            ord,
            rank: ord.rank.clone(),
            cap,
            deadline,
            node_limit,
            cancel: None,
            min_off: MinOffsets::new(inst.sections),
            off: vec![0; inst.len()],
            floor: Floors::new(inst.sections),
            span_floor: Trailed::new(inst.len(), 0),
            lifetimes: Vec::new(),
            load,
            count,
            offset: vec![0; inst.len()],
            placed: vec![false; inst.len()],
            fixed,
            placed_trail: Vec::new(),
            spans: Vec::new(),
            reach: Vec::new(),
            gaps: matches!(ord.heuristic, Heuristic::Shuffled(_)),
            fillers: Vec::new(),
            nodes: 0,
        }
    }

    /// Decides whether every buffer fits under the capacity.
    pub fn run(&mut self) -> Decision {
        self.reset_min_offsets();
        let mut all: Vec<u32> = (0..self.inst.len() as u32).collect();
        all.sort_by_key(|&i| self.inst.items[i as usize].lo);
        match self.solve(all, (0, -1)) {
            Ok(true) => Decision::Fits(self.offset.clone()),
            Ok(false) => Decision::Infeasible,
            Err(why) => Decision::Stopped(why),
        }
    }

    /// Places `pinned`, in that order, each at its canonical offset (so each sits on top of the
    /// pinned buffers it overlaps that came before it), then searches the other buffers around
    /// them. With the long-lived buffers pinned, the short-lived rest splits into small independent
    /// windows. A pinning is a guess, not a choice the search may undo: `Infeasible` here only says
    /// that nothing fits around this pinning.
    pub fn run_pinned(&mut self, pinned: &[u32]) -> Decision {
        // The pinned buffers go one by one on a fresh search and are never undone: each one's
        // floor is read from the floors, and what the search keeps per buffer and per section is
        // set once before it starts (keeping it up to date through hundreds of long-lived pinned
        // buffers cost a pass over every lifetime for each).
        // Fixed buffers first, where they must be: once pinned buffers raise the floors across
        // them, the search could no longer put them there. (The space below a fixed buffer is
        // then lost to the search: one more way in which a pinning is a guess.)
        let mut fixed = self.fixed.clone();
        // Lowest first: one above another never finds its place covered.
        fixed.sort_by_key(|&b| self.inst.items[b as usize].fixed);
        for b in fixed {
            let it = self.inst.items[b as usize];
            self.reset_span_floor(b);
            match (it.fixed, self.offset_of(b)) {
                (Some(f), Some(o)) if o == f && f + it.size <= self.cap => self.place(b, f, &[]),
                _ => return Decision::Infeasible,
            }
        }
        for &b in pinned {
            let size = self.inst.items[b as usize].size;
            self.reset_span_floor(b);
            match self.offset_of(b) {
                Some(o) if o + size <= self.cap => self.place(b, o, &[]),
                _ => return Decision::Infeasible,
            }
        }
        let mut rest: Vec<u32> = (0..self.inst.len() as u32)
            .filter(|&i| !self.placed[i as usize])
            .collect();
        rest.sort_by_key(|&i| self.inst.items[i as usize].lo);
        for &x in &rest {
            self.reset_span_floor(x);
        }
        self.reset_min_offsets();
        match self.solve(rest, (0, -1)) {
            Ok(true) => Decision::Fits(self.offset.clone()),
            Ok(false) => Decision::Infeasible,
            Err(why) => Decision::Stopped(why),
        }
    }

    /// Reads `b`'s floor from the floors, off the trail (for buffers of no search yet).
    fn reset_span_floor(&mut self, b: u32) {
        let it = self.inst.items[b as usize];
        let floor = self.floor.max(it.lo as usize, it.hi as usize);
        self.span_floor.set(b as usize, floor);
    }

    /// Stops (as at the deadline) once `cancel` is set.
    pub fn cancelled_by(mut self, cancel: Option<&'a AtomicBool>) -> Self {
        self.cancel = cancel;
        self
    }

    fn tick(&mut self) -> Result<(), Stopped> {
        self.nodes += 1;
        if self.nodes >= self.node_limit {
            return Err(Stopped::NodeLimit);
        }
        if self.cancel.is_some_and(|c| c.load(AtomicOrdering::Relaxed)) {
            return Err(Stopped::Deadline);
        }
        // Nodes of big groups cost milliseconds: check the clock at each of them.
        if self.nodes.is_multiple_of(256) || self.inst.len() > 2000 {
            if let Some(d) = self.deadline {
                if Instant::now() >= d {
                    return Err(Stopped::Deadline);
                }
            }
        }
        Ok(())
    }

    fn mark(&self) -> Mark {
        Mark(
            self.placed_trail.len(),
            self.floor.mark(),
            self.span_floor.mark(),
            self.min_off.mark(),
        )
    }

    /// Places `b` at `o`, and keeps the span floors and the lowest offsets per section up to date:
    /// `near` must hold every unplaced buffer that overlaps `b` (the current group does: what lies
    /// outside it lives apart in time). With `near` empty nothing is kept, and the caller resets
    /// both before it searches ([`Dfs::run_pinned`]).
    fn place(&mut self, b: u32, o: u64, near: &[u32]) {
        let it = self.inst.items[b as usize];
        self.placed[b as usize] = true;
        self.offset[b as usize] = o;
        self.placed_trail.push(b);
        self.floor
            .raise(it.lo as usize, it.hi as usize, o + it.size);
        for s in it.lo..it.hi {
            let s = s as usize;
            self.load[s] -= it.size;
            self.count[s] -= 1;
        }
        let top = o + it.size;
        let overlaps = |x: u32, lo: u32, hi: u32| {
            let xi = self.inst.items[x as usize];
            !self.placed[x as usize] && xi.lo.max(lo) < xi.hi.min(hi)
        };
        // The sections whose lowest offset may change: `b`'s, and those of every buffer whose
        // floor (so whose offset) rose.
        let (mut lo, mut hi) = (it.lo, it.hi);
        for &x in near {
            if overlaps(x, it.lo, it.hi) && self.span_floor.get(x as usize) < top {
                self.span_floor.set(x as usize, top);
                let xi = self.inst.items[x as usize];
                (lo, hi) = (lo.min(xi.lo), hi.max(xi.hi));
            }
        }
        self.recompute_min_offsets(lo, hi, near.iter().copied());
    }

    /// Sets the lowest offsets of every section from scratch, from the unplaced buffers.
    fn reset_min_offsets(&mut self) {
        let (n, sections) = (self.inst.len() as u32, self.inst.sections as u32);
        self.recompute_min_offsets(0, sections, 0..n);
    }

    /// Recomputes the lowest offsets of sections `lo..hi` from the unplaced buffers of `near`
    /// across them (their canonical offsets now).
    fn recompute_min_offsets(&mut self, lo: u32, hi: u32, near: impl Iterator<Item = u32>) {
        let mut lifetimes = std::mem::take(&mut self.lifetimes);
        lifetimes.clear();
        lifetimes.extend(near.filter_map(|x| {
            let xi = self.inst.items[x as usize];
            let across = !self.placed[x as usize] && xi.lo.max(lo) < xi.hi.min(hi);
            across.then(|| Some((xi.lo as usize, xi.hi as usize, self.offset_of(x)?)))?
        }));
        self.min_off
            .recompute(lo as usize, hi as usize, lifetimes.iter().copied());
        self.lifetimes = lifetimes;
    }

    fn undo(&mut self, mark: Mark) {
        while self.placed_trail.len() > mark.0 {
            let Some(b) = self.placed_trail.pop() else {
                break;
            };
            let it = self.inst.items[b as usize];
            self.placed[b as usize] = false;
            for s in it.lo..it.hi {
                self.load[s as usize] += it.size;
                self.count[s as usize] += 1;
            }
        }
        self.floor.undo(mark.1);
        self.span_floor.undo(mark.2);
        self.min_off.undo(mark.3);
    }

    /// The canonical offset of `b` now: its floor, aligned, moved above any fixed buffer still to
    /// come that it would collide with. `None` for a fixed buffer whose place is already covered.
    fn offset_of(&self, b: u32) -> Option<u64> {
        let it = self.inst.items[b as usize];
        let floor = self.span_floor.get(b as usize);
        #[cfg(any(test, debug_assertions))]
        assert_eq!(floor, self.floor.max(it.lo as usize, it.hi as usize));
        if let Some(f) = it.fixed {
            return (floor <= f).then_some(f);
        }
        // Checked: an offset that cannot be aligned within a u64 panics rather than wraps (the
        // problem's limits, checked before planning, keep it far below).
        let align = |x: u64| Bytes(x).align_up(Bytes(it.align)).0;
        let mut o = align(floor);
        let mut moved = true;
        while moved {
            moved = false;
            for &f in &self.fixed {
                let fx = self.inst.items[f as usize];
                let Some(fo) = fx.fixed else { continue };
                if self.placed[f as usize] || fx.hi <= it.lo || it.hi <= fx.lo {
                    continue;
                }
                if o < fo + fx.size && fo < o + it.size {
                    o = align(fo + fx.size);
                    moved = true;
                }
            }
        }
        Some(o)
    }

    /// Ranks the buffers of a group by the order's heuristic with the current section totals. The
    /// group keeps its order by first section, which `solve` relies on.
    fn rerank(&mut self, group: &[u32]) {
        let inst = self.inst;
        let heuristic = self.ord.heuristic;
        let load = &self.load;
        let mut keyed: Vec<_> = group
            .iter()
            .map(|&b| {
                let it = inst.items[b as usize];
                let total = (it.lo..it.hi).map(|s| load[s as usize]).max().unwrap_or(0);
                (inst.sort_key(heuristic, b as usize, total), b)
            })
            .collect();
        keyed.sort();
        for (r, (_, b)) in keyed.into_iter().enumerate() {
            self.rank[b as usize] = r as u32;
        }
    }

    /// Places every buffer of `group` (sorted by first section) after `prev` = (offset, rank) in
    /// canonical order. On failure the caller undoes what was placed.
    fn solve(&mut self, group: Vec<u32>, prev: (u64, i64)) -> Result<bool, Stopped> {
        let Some(&first) = group.first() else {
            return Ok(true);
        };
        self.tick()?;
        let items = &self.inst.items;
        let span_lo = items[first as usize].lo as usize;
        let span_hi = group
            .iter()
            .map(|&b| items[b as usize].hi)
            .max()
            .unwrap_or(0) as usize;

        // Canonical offsets now (the lowest per section is kept by `place`).
        for &b in &group {
            let it = items[b as usize];
            let Some(o) = self.offset_of(b) else {
                return Ok(false);
            };
            if o + it.size > self.cap {
                return Ok(false);
            }
            self.off[b as usize] = o;
        }
        #[cfg(any(test, debug_assertions))]
        self.check_min_offsets(&group, span_lo, span_hi);

        // Section bound; `crowded` is the heaviest section that keeps unplaced bytes whatever goes
        // next, which caps the next offset.
        let mut crowded = 0u64;
        // The lowest base (leftmost on ties): where [`Dfs::fill_gap`] may branch.
        let mut lowest: Option<(u64, usize)> = None;
        for s in span_lo..span_hi {
            if self.count[s] == 0 {
                continue;
            }
            let base = self.floor.get(s).max(prev.0).max(self.min_off.get(s));
            if base + self.load[s] > self.cap {
                return Ok(false);
            }
            if lowest.is_none_or(|(m, _)| base < m) {
                lowest = Some((base, s));
            }
            if self.count[s] >= 2 {
                crowded = crowded.max(self.load[s]);
            }
        }

        if !self.tight_bottom_covered(&group, span_lo, span_hi, prev.0) {
            return Ok(false);
        }

        if let Some(groups) = split(&group, items) {
            // Each group is a problem of its own above the current floors, so its canonical order
            // starts afresh: more of its placements qualify than under the order inherited from
            // here, which lets branches off the canonical path still succeed.
            // Its order is re-sorted by the bytes still unplaced in each section (MiniMalloc does
            // the same), and restored for the caller's remaining candidates.
            for g in groups {
                let saved: Vec<u32> = g.iter().map(|&b| self.rank[b as usize]).collect();
                self.rerank(&g);
                let ok = self.solve(g.clone(), (0, -1));
                for (&b, &r) in g.iter().zip(&saved) {
                    self.rank[b as usize] = r;
                }
                if !ok? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }

        if let Some((m, s)) = lowest.filter(|_| self.gaps) {
            if self.load[s] > 0 && m + self.load[s] == self.cap {
                let s = self.fewest_fillers(&group, span_lo, span_hi, prev.0, m);
                return self.fill_gap(&group, s, m);
            }
        }

        // Candidates, and the two lowest tops of unplaced buffers for the dominance cut.
        let mut cands: Vec<(u64, i64, u32)> = Vec::with_capacity(group.len());
        let mut low_tops = [(u64::MAX, u32::MAX); 2];
        for &b in &group {
            let it = items[b as usize];
            let o = self.off[b as usize];
            let key = (o, i64::from(self.rank[b as usize]));
            if it.fixed.is_some() {
                if key <= prev {
                    return Ok(false);
                }
            } else {
                let top = (o + it.size, b);
                if top < low_tops[0] {
                    low_tops = [top, low_tops[0]];
                } else if top < low_tops[1] {
                    low_tops[1] = top;
                }
            }
            if key <= prev || o + crowded > self.cap {
                continue;
            }
            if let Some(t) = self.ord.twin_before[b as usize] {
                if !self.placed[t as usize] {
                    continue;
                }
            }
            cands.push((key.0, key.1, b));
        }
        cands.sort_unstable();

        for (o, r, b) in cands {
            let lowest_other_top = if low_tops[0].1 == b {
                low_tops[1].0
            } else {
                low_tops[0].0
            };
            if lowest_other_top <= o {
                // Dominated: another buffer fits wholly below `o`.
                continue;
            }
            let mark = self.mark();
            self.place(b, o, &group);
            let child: Vec<u32> = group.iter().copied().filter(|&x| x != b).collect();
            if self.solve(child, (o, r))? {
                return Ok(true);
            }
            self.undo(mark);
        }
        Ok(false)
    }
}

impl Dfs<'_> {
    /// Checks the lowest offsets that `place` keeps against a pass over the group (at every node of
    /// the tests, and of debug builds).
    #[cfg(any(test, debug_assertions))]
    fn check_min_offsets(&self, group: &[u32], lo: usize, hi: usize) {
        let mut min = vec![u64::MAX; hi - lo];
        for &b in group {
            let it = self.inst.items[b as usize];
            for m in &mut min[it.lo as usize - lo..it.hi as usize - lo] {
                *m = (*m).min(self.off[b as usize]);
            }
        }
        for (s, &m) in (lo..hi).zip(&min) {
            assert_eq!(self.min_off.get(s), m, "lowest offset of section {s}");
        }
    }

    /// Branches on which buffer fills the lowest point left, `m` in section `s`, when `s` is tight
    /// (its bytes still to place fill it from `m` to the capacity exactly, so one of them sits at
    /// `m`) and `m` is the lowest base of the group. Every unplaced buffer then ends at `m` or
    /// above, so the one placed at `m` loses no room below it, and the rest of a completion stays
    /// canonical above it, after `(m, -1)`. Instances with no room to spare are solved gap by gap
    /// this way, as perfect rectangle packings are: a gap that nothing can fill fails at once,
    /// where the canonical order would first try every other buffer that can go to `m`, anywhere
    /// in time.
    fn fill_gap(&mut self, group: &[u32], s: usize, m: u64) -> Result<bool, Stopped> {
        let items = &self.inst.items;
        let mut cands: Vec<(u32, u32)> = group
            .iter()
            .filter_map(|&b| {
                let it = items[b as usize];
                let covers = it.lo as usize <= s && s < it.hi as usize;
                (covers && self.can_fill(b, m)).then_some((self.rank[b as usize], b))
            })
            .collect();
        cands.sort_unstable();
        for (_, b) in cands {
            let mark = self.mark();
            self.place(b, m, group);
            let child: Vec<u32> = group.iter().copied().filter(|&x| x != b).collect();
            if self.solve(child, (m, -1))? {
                return Ok(true);
            }
            self.undo(mark);
        }
        Ok(false)
    }

    /// Whether `b` can sit at `m` now (see [`Dfs::fill_gap`]).
    fn can_fill(&self, b: u32, m: u64) -> bool {
        let it = self.inst.items[b as usize];
        let off = self.off[b as usize];
        // Above its canonical offset only where no fixed buffer can be in the way.
        let fits = match it.fixed {
            Some(f) => f == m,
            None => (off == m || (off < m && self.fixed.is_empty())) && m.is_multiple_of(it.align),
        };
        let twin_waits = self.ord.twin_before[b as usize].is_some_and(|t| !self.placed[t as usize]);
        it.size > 0 && fits && !twin_waits && m + it.size <= self.cap
    }

    /// Of the tight sections whose base is the group's lowest, `m`, the one that the fewest
    /// buffers can fill (leftmost on ties): each is a complete branching point, and the most
    /// constrained fails or settles soonest.
    fn fewest_fillers(&mut self, group: &[u32], lo: usize, hi: usize, prev: u64, m: u64) -> usize {
        self.fillers.clear();
        self.fillers.resize(hi - lo, 0);
        for &b in group {
            if self.can_fill(b, m) {
                let it = self.inst.items[b as usize];
                for s in it.lo as usize..it.hi as usize {
                    self.fillers[s - lo] += 1;
                }
            }
        }
        (lo..hi)
            .filter(|&s| self.tight_at(s, prev, m))
            .min_by_key(|&s| (self.fillers[s - lo], s))
            .unwrap_or(lo)
    }

    /// The bottom of each section: above its floor, the last offset placed, and the lowest offset
    /// any unplaced buffer across it can take.
    fn base(&self, s: usize, prev: u64) -> u64 {
        self.floor.get(s).max(prev).max(self.min_off.get(s))
    }

    /// Whether section `s` is tight (see [`Dfs::tight_bottom_covered`]) with its base at `m`.
    fn tight_at(&self, s: usize, prev: u64, m: u64) -> bool {
        self.count[s] > 0 && self.base(s, prev) == m && m + self.load[s] == self.cap
    }

    /// The tiling cut, for instances with no room to spare (perfect packings, and instances whose
    /// capacity is their max load). A section is *tight* when the bytes still to place across it
    /// exactly fill it from its base to the capacity: the lowest of them must then sit exactly at
    /// the base. Take the lowest base `m` of a tight section: the buffers that end up at offset `m` have
    /// disjoint lifetimes (they share offsets), so the lifetimes of the unplaced buffers that can
    /// still sit at `m` must tile every tight section at level `m` without overlapping. The
    /// section bound sees each section alone and misses a tight stretch that no such set of
    /// lifetimes covers (one that sticks out into a section already filled higher, a gap too short
    /// for any of them); this checks it with one left-to-right pass over the sections. Needed
    /// for a completion, so cutting where it fails loses nothing.
    fn tight_bottom_covered(&mut self, group: &[u32], lo: usize, hi: usize, prev: u64) -> bool {
        // Only the lowest tight level: checking the next three as well gained nothing measurable.
        let lowest = (lo..hi)
            .filter(|&s| self.count[s] > 0)
            .map(|s| (self.base(s, prev), s))
            .filter(|&(base, s)| base + self.load[s] == self.cap)
            .map(|(base, _)| base)
            .min();
        lowest.is_none_or(|m| self.tiled_at(group, lo, hi, prev, m))
    }

    /// Whether the buffers that can still sit at offset `m` can tile, without overlapping in
    /// time, every tight section whose base is `m` (see [`Dfs::tight_bottom_covered`]).
    fn tiled_at(&mut self, group: &[u32], lo: usize, hi: usize, prev: u64, m: u64) -> bool {
        // The lifetimes (in sections) of the buffers that can sit at `m`: not yet pushed above it,
        // aligned to it, and fixed ones only when fixed there.
        let items = &self.inst.items;
        self.spans.clear();
        for &b in group {
            let it = items[b as usize];
            // A buffer of no bytes covers nothing.
            let can = it.size > 0
                && match it.fixed {
                    Some(f) => f == m,
                    None => self.off[b as usize] <= m && m.is_multiple_of(it.align),
                };
            if can {
                self.spans.push((it.lo, it.hi));
            }
        }
        self.spans.sort_unstable();
        // reach[p - lo]: the tight sections before p can be tiled, the last tile ending at p.
        self.reach.clear();
        self.reach.resize(hi - lo + 1, false);
        self.reach[0] = true;
        let mut k = 0;
        for p in lo..hi {
            while k < self.spans.len() && (self.spans[k].0 as usize) < p {
                k += 1;
            }
            if !self.reach[p - lo] {
                continue;
            }
            if !self.tight_at(p, prev, m) {
                self.reach[p + 1 - lo] = true;
            }
            let mut j = k;
            while j < self.spans.len() && self.spans[j].0 as usize == p {
                let end = self.spans[j].1 as usize;
                if end <= hi {
                    self.reach[end - lo] = true;
                }
                j += 1;
            }
        }
        self.reach[hi - lo]
    }
}

/// Splits a group (sorted by first section) where no lifetime crosses; `None` when it is one piece.
fn split(group: &[u32], items: &[Item]) -> Option<Vec<Vec<u32>>> {
    let mut cuts = Vec::new();
    let mut reach = 0u32;
    for (k, &b) in group.iter().enumerate() {
        let it = items[b as usize];
        if k > 0 && it.lo >= reach {
            cuts.push(k);
        }
        reach = reach.max(it.hi);
    }
    if cuts.is_empty() {
        return None;
    }
    let mut groups = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for c in cuts.into_iter().chain(std::iter::once(group.len())) {
        groups.push(group[from..c].to_vec());
        from = c;
    }
    Some(groups)
}
