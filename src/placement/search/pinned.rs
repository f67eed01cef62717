//! Pinning for recorded training traces. Their long-lived buffers (activations saved for the
//! backward pass, gradients) cross almost every moment of the step, so the plain search never
//! splits a trace into independent parts and each of its nodes walks thousands of long lifetimes:
//! on a 3,252-buffer 12+12-layer transformer trace it finds nothing better than greedy in 10 s.
//! Here the long-lived buffers are placed first, stack-like (each on top of the pinned buffers it
//! overlaps that came before it: what a LIFO allocator does, and training frees activations
//! roughly in the reverse order it made them), in order of birth, or of death from the last
//! backwards. The search then places the short-lived rest around them, which falls apart into
//! small windows between the long lifetimes.
//!
//! A pinning is a guess, so nothing is proven either way: when nothing fits around one, the next
//! is tried, and the plain search runs after them as before.

use std::time::Instant;

use super::dfs::{Decision, Dfs, Stopped};
use super::instance::{Heuristic, Instance};

/// A buffer is pinned when it lives longer than this fraction of the whole time span. Tried from
/// the smallest: the fewer buffers left to the search, the faster it goes, and most pinnings that
/// do not fit are refused by [`leaves_room`] before any search. Which threshold fits depends on
/// the trace (resnet152 from 0.03; the 12+12-layer transformer from 0.25 stacked by birth;
/// resnet18 at 0.5 by birth, from 0.08 by death), so they span the range geometrically.
const FRACTIONS: [f64; 5] = [0.03, 0.06, 0.12, 0.25, 0.5];

/// The order pinned buffers are stacked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stack {
    /// By birth: no holes before the step's peak (the forward pass).
    Births,
    /// By death, the last first: no holes after it (the backward pass).
    Deaths,
}

/// The buffers to pin, in the order they are placed.
fn pin_order(inst: &Instance, fraction: f64, stack: Stack) -> Vec<u32> {
    let min_len = fraction * inst.time_span() as f64;
    let mut pinned: Vec<u32> = (0..inst.len() as u32)
        .filter(|&i| {
            let it = &inst.items[i as usize];
            it.fixed.is_none() && it.len as f64 > min_len
        })
        .collect();
    pinned.sort_by_key(|&i| {
        let it = &inst.items[i as usize];
        match stack {
            // Of two born together, the longer-lived goes lower, where it leaves no hole.
            Stack::Births => (it.lo, u32::MAX - it.hi, i),
            Stack::Deaths => (u32::MAX - it.hi, it.lo, i),
        }
    });
    pinned
}

/// The section bound of the search's first node, checked on plain arrays: stacked as the search
/// would stack them, do the pinned buffers leave room in every section for the bytes still to
/// place there? Most pinnings that fail, fail here, in a fraction of what setting up a search costs.
fn leaves_room(inst: &Instance, pinned: &[u32], cap: u64) -> bool {
    let mut floor = vec![0u64; inst.sections];
    let mut is_pinned = vec![false; inst.len()];
    for &b in pinned {
        let it = &inst.items[b as usize];
        let (lo, hi) = (it.lo as usize, it.hi as usize);
        // Fixed buffers can only push it higher, so this is a lower estimate of its offset.
        let under = floor[lo..hi].iter().copied().max().unwrap_or(0);
        let top = under.div_ceil(it.align) * it.align + it.size;
        if top > cap {
            return false;
        }
        floor[lo..hi].fill(top);
        is_pinned[b as usize] = true;
    }
    // The bytes still to place, per section, from a difference array.
    let mut delta = vec![0i128; inst.sections + 1];
    for (it, _) in inst.items.iter().zip(&is_pinned).filter(|(_, &p)| !p) {
        delta[it.lo as usize] += i128::from(it.size);
        delta[it.hi as usize] -= i128::from(it.size);
    }
    let mut rest = 0i128;
    floor.iter().zip(&delta).all(|(&f, &d)| {
        rest += d;
        i128::from(f) + rest <= i128::from(cap)
    })
}

/// What the pinnings ended with.
pub(crate) enum Pinned {
    /// Offsets in the instance's units, all tops within the capacity.
    Fits(Vec<u64>),
    /// No pinning worked (which proves nothing about the problem).
    NotFound,
    /// The deadline came, or the node budget ran out, first.
    Stopped,
}

/// Tries each pinning in turn at capacity `cap` (in units) and returns the first placement found,
/// visiting at most `*nodes` nodes in all (those visited are taken off `*nodes`). `run` runs one
/// search and returns its decision and the nodes it visited (the caller gives it a deep enough
/// stack).
pub(crate) fn first_fit(
    inst: &Instance,
    cap: u64,
    deadline: Instant,
    nodes: &mut u64,
    run: impl Fn(&(dyn Fn() -> (Decision, u64) + Sync)) -> (Decision, u64),
) -> Pinned {
    // Built on the first pinning that passes `leaves_room`: most instances that are not traces
    // pass none.
    let mut ord = None;
    // Enough for a descent with little backtracking (a trace that fits its pinning takes about
    // one node per buffer); a pinning that needs more is likely a bad guess, and a node of a big
    // trace costs up to a fraction of a millisecond.
    let node_limit = 2 * inst.len() as u64 + 1024;
    let mut tried: Vec<Vec<u32>> = Vec::new();
    for fraction in FRACTIONS {
        for stack in [Stack::Births, Stack::Deaths] {
            let pinned = pin_order(inst, fraction, stack);
            // Nothing pinned is the plain search, which runs next anyway.
            if pinned.is_empty() || tried.contains(&pinned) {
                continue;
            }
            if !leaves_room(inst, &pinned, cap) {
                tried.push(pinned);
                continue;
            }
            if *nodes == 0 {
                return Pinned::Stopped;
            }
            let ord = &*ord.get_or_insert_with(|| inst.ordering(Heuristic::Twa));
            let limit = node_limit.min(*nodes);
            let search = || {
                let mut dfs = Dfs::new(inst, ord, cap, Some(deadline), limit);
                let decision = dfs.run_pinned(&pinned);
                (decision, dfs.nodes)
            };
            let (decision, visited) = run(&search);
            *nodes = nodes.saturating_sub(visited);
            match decision {
                Decision::Fits(units) => return Pinned::Fits(units),
                Decision::Stopped(Stopped::Deadline) => return Pinned::Stopped,
                // A bad guess, or the budget ran out (checked before the next search).
                Decision::Infeasible | Decision::Stopped(Stopped::NodeLimit) => {}
            }
            tried.push(pinned);
        }
    }
    Pinned::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::{Buffer, Bytes, Interval, Problem};

    fn buf(start: u64, end: u64, size: u64) -> Buffer {
        Buffer::new("b", Interval::new(start, end).unwrap(), Bytes(size))
    }

    /// A toy training step: activations made in order, freed in reverse, with short temporaries.
    fn toy_step() -> Problem {
        let mut buffers = Vec::new();
        for k in 0..20u64 {
            buffers.push(buf(2 * k, 100 - 2 * k, 1 + k % 3));
            buffers.push(buf(2 * k + 1, 2 * k + 2, 2));
            buffers.push(buf(99 - 2 * k, 100 - 2 * k, 3));
        }
        Problem::new(buffers)
    }

    #[test]
    fn long_lived_buffers_are_stacked_by_birth_or_by_death() {
        let inst = Instance::new(&toy_step());
        let births = pin_order(&inst, 0.25, Stack::Births);
        let deaths = pin_order(&inst, 0.25, Stack::Deaths);
        // Lifetimes 100 - 4k > 25: k = 0..=18.
        assert_eq!(births.len(), 19);
        assert!(births.iter().all(|&i| i % 3 == 0));
        assert!(births
            .windows(2)
            .all(|w| inst.items[w[0] as usize].lo <= inst.items[w[1] as usize].lo));
        // Nested lifetimes: both orders agree.
        assert_eq!(births, deaths);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Whatever the pinnings find, at the brute-force optimum or a little above, is a valid
        /// plan within the capacity, alignment and fixed offsets included.
        #[test]
        fn pinned_plans_are_valid(p in super::super::brute::tiny_problem(), slack in 0u64..3) {
            let best = super::super::brute::brute_force_peak(&p);
            let inst = Instance::new(&p);
            let cap = inst.units(Bytes(best + slack));
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            if let Pinned::Fits(units) = first_fit(&inst, cap, deadline, &mut { u64::MAX }, |f| f()) {
                let offsets = units.into_iter().map(|o| Bytes(o * inst.unit)).collect();
                let s = crate::placement::problem::Solution::from_offsets(&p, offsets);
                let capped = p.clone().with_capacity(Some(Bytes(best + slack)));
                proptest::prop_assert!(crate::placement::validate(&capped, &s).is_ok());
            }
        }
    }

    #[test]
    fn a_nested_step_fits_its_max_load() {
        let p = toy_step();
        let inst = Instance::new(&p);
        let cap = inst.units(crate::placement::max_load(&p));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        match first_fit(&inst, cap, deadline, &mut { u64::MAX }, |f| f()) {
            Pinned::Fits(units) => {
                let offsets = units.into_iter().map(|o| Bytes(o * inst.unit)).collect();
                let s = crate::placement::problem::Solution::from_offsets(&p, offsets);
                crate::placement::validate(&p.clone().with_capacity(Some(Bytes(cap))), &s).unwrap();
            }
            _ => panic!("a nested step should fit its max load"),
        }
    }
}
