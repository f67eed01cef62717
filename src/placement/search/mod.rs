//! Exact placement by branch and bound over canonical placements (see [`dfs`]): decide whether a
//! capacity fits, or minimize the arena by probing capacities while keeping every incumbent. Both
//! first try the pinnings of [`pinned`], which settle recorded training traces at their bound.
//!
//! Two budgets stop a search: a deadline, and a number of nodes (the plan's `max_search_nodes`,
//! counted over every run of one plan). The node budget depends on nothing but the instance, so a
//! search stopped by it ends the same way on any machine.

mod dfs;
mod instance;
mod pinned;
mod sections;

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use super::incumbent::Anytime;
use super::problem::{Bytes, Problem, Solution};
use super::validate::InvalidPlan;
use dfs::{Decision, Dfs, Stopped};
pub(crate) use instance::{Heuristic, Instance, Item};

/// The answer of one decision search (does the problem fit the capacity?).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Fits(Solution),
    /// Proven: nothing fits the capacity.
    Infeasible,
    /// The deadline, or the node budget, came first.
    Unknown,
}

/// Decides whether `problem` fits in `capacity` bytes before `deadline`.
pub fn decide(problem: &Problem, capacity: Bytes, deadline: Option<Instant>) -> Answer {
    let inst = Instance::new(problem);
    let mut unlimited = u64::MAX;
    decide_units(
        problem,
        &inst,
        inst.units(capacity),
        deadline,
        &mut unlimited,
    )
}

/// Shuffled orders run in each round of the restarts.
const RESTARTS: u64 = 8;

/// The orders a search runs in each round, the node limit doubling from round to round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schedule {
    /// MiniMalloc's round robin over the fixed orders: on hard instances one often finishes where
    /// the others thrash.
    Fixed,
    /// [`RESTARTS`] fresh shuffled orders a round. Instances with no room to spare are
    /// heavy-tailed: a 160-buffer perfect packing is settled in a millisecond under one order and
    /// not in 10 s under the fixed three; with restarts, all six 200-buffer packings of a trial
    /// were settled within 2 s (three of six under the Luby schedule, whose runs are mostly too
    /// short for these).
    Restarts,
    /// Both, the fixed orders first in each round: one core, or a node budget to keep exact.
    Both,
}

/// A node budget this large is no budget: what is left of `u64::MAX` once a plan's other
/// searches took their nodes off it.
const UNLIMITED: u64 = 1 << 62;

/// Decides whether the instance fits `cap` units. With no node budget and a second core, the
/// fixed orders and the restarts run side by side and the first answer stops the other (a
/// portfolio: the restarts cost the instances the fixed orders settle nothing but the second
/// core). With a node budget they take turns on one thread, so the answer depends on the budget
/// alone. Visits at most `*nodes` nodes in all, and takes those it visited off `*nodes`.
fn decide_units(
    problem: &Problem,
    inst: &Instance,
    cap: u64,
    deadline: Option<Instant>,
    nodes: &mut u64,
) -> Answer {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if *nodes < UNLIMITED || cores < 2 {
        return run_schedule(problem, inst, cap, deadline, nodes, Schedule::Both, None);
    }
    let cancel = AtomicBool::new(false);
    let run = |schedule| {
        let mut budget = u64::MAX;
        let answer = run_schedule(
            problem,
            inst,
            cap,
            deadline,
            &mut budget,
            schedule,
            Some(&cancel),
        );
        if answer != Answer::Unknown {
            cancel.store(true, AtomicOrdering::Relaxed);
        }
        (answer, u64::MAX - budget)
    };
    let ((a, visited_a), (b, visited_b)) = std::thread::scope(|scope| {
        let restarts = std::thread::Builder::new()
            .name("model_opt-restarts".into())
            .spawn_scoped(scope, || run(Schedule::Restarts));
        let fixed = run(Schedule::Fixed);
        let restarts = match restarts {
            Ok(handle) => handle.join().unwrap_or((Answer::Unknown, 0)),
            Err(_) => (Answer::Unknown, 0),
        };
        (fixed, restarts)
    });
    *nodes = nodes.saturating_sub(visited_a.saturating_add(visited_b));
    match (a, b) {
        (Answer::Unknown, other) | (other, _) => other,
    }
}

/// Runs the orders of `schedule` round after round, each run's node limit doubling every round,
/// until an answer, the deadline, `cancel`, or the end of `*nodes`.
fn run_schedule(
    problem: &Problem,
    inst: &Instance,
    cap: u64,
    deadline: Option<Instant>,
    nodes: &mut u64,
    schedule: Schedule,
    cancel: Option<&AtomicBool>,
) -> Answer {
    let fixed: Vec<_> = match schedule {
        Schedule::Restarts => Vec::new(),
        Schedule::Fixed | Schedule::Both => {
            Heuristic::ALL.iter().map(|&h| inst.ordering(h)).collect()
        }
    };
    let restarts = if schedule == Schedule::Fixed {
        0
    } else {
        RESTARTS
    };
    let base = 2 * (inst.len() as u64).max(64);
    for round in 0u64.. {
        let limit = base.saturating_mul(1 << round.min(40));
        let shuffled: Vec<_> = (0..restarts)
            .map(|k| inst.ordering(Heuristic::Shuffled(round * RESTARTS + k)))
            .collect();
        for ord in fixed.iter().chain(&shuffled) {
            if *nodes == 0 || cancel.is_some_and(|c| c.load(AtomicOrdering::Relaxed)) {
                return Answer::Unknown;
            }
            let (decision, visited) =
                run_with_stack(inst, ord, cap, deadline, limit.min(*nodes), cancel);
            *nodes = nodes.saturating_sub(visited);
            match decision {
                Decision::Fits(units) => {
                    let offsets = units.into_iter().map(|o| Bytes(o * inst.unit)).collect();
                    return Answer::Fits(Solution::from_offsets(problem, offsets));
                }
                Decision::Infeasible => return Answer::Infeasible,
                Decision::Stopped(Stopped::Deadline) => return Answer::Unknown,
                // This run is over, or the budget is (checked above).
                Decision::Stopped(Stopped::NodeLimit) => {}
            }
        }
    }
    Answer::Unknown
}

/// Above this many buffers the search is not tried: it recurses once per buffer placed and keeps
/// each level's list of unplaced buffers, so depth and memory grow with n and n².
pub const MAX_BUFFERS: usize = 10_000;

/// Runs one search on a thread of its own whose stack fits one frame per buffer: the caller's
/// thread may have a small stack (test threads, Python threads, the runtime's threads). Returns its
/// decision and the nodes it visited.
fn run_with_stack(
    inst: &Instance,
    ord: &instance::Ordering,
    cap: u64,
    deadline: Option<Instant>,
    node_limit: u64,
    cancel: Option<&AtomicBool>,
) -> (Decision, u64) {
    on_search_stack(inst, &|| {
        let mut dfs = Dfs::new(inst, ord, cap, deadline, node_limit).cancelled_by(cancel);
        let decision = dfs.run();
        (decision, dfs.nodes)
    })
}

/// Runs `search` (which returns its decision and the nodes it visited) on a thread with a stack
/// deep enough for `inst`.
fn on_search_stack(
    inst: &Instance,
    search: &(dyn Fn() -> (Decision, u64) + Sync),
) -> (Decision, u64) {
    let stack = (16 << 20) + inst.len() * 1024;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("model_opt-search".into())
            .stack_size(stack)
            .spawn_scoped(scope, search);
        match worker {
            // The search does not panic on any input; if it ever did, report "no answer".
            Ok(handle) => handle
                .join()
                .unwrap_or((Decision::Stopped(Stopped::Deadline), 0)),
            // No thread to be had: search on this one; small instances need little stack.
            Err(_) => search(),
        }
    })
}

/// Tries the pinnings of [`pinned`] at `cap` (in units) and offers what fits. True when a plan
/// within `cap` was found.
fn try_pinned(
    state: &mut Anytime,
    inst: &Instance,
    cap: u64,
    deadline: Instant,
) -> Result<bool, InvalidPlan> {
    let given = state.search_nodes_left();
    let mut nodes = given;
    let found = pinned::first_fit(inst, cap, deadline, &mut nodes, |search| {
        on_search_stack(inst, search)
    });
    state.spend_search_nodes(given - nodes);
    match found {
        pinned::Pinned::Fits(units) => {
            let offsets = units.into_iter().map(|o| Bytes(o * inst.unit)).collect();
            state.offer(
                Solution::from_offsets(state.problem, offsets),
                "search(pinned)",
            )?;
            Ok(true)
        }
        pinned::Pinned::NotFound | pinned::Pinned::Stopped => Ok(false),
    }
}

/// Decision mode inside a plan: looks for a placement within `capacity` before `deadline` (the
/// pinnings first, then the plain search, which alone can prove anything); proves
/// the bound `capacity + 1` (rounded up to the unit) when none exists. `None` when time or the
/// plan's node budget ran out.
pub(crate) fn fit_capacity(
    state: &mut Anytime,
    capacity: Bytes,
    deadline: Instant,
) -> Result<Option<bool>, InvalidPlan> {
    state.set_phase("search");
    let inst = Instance::new(state.problem);
    let cap = inst.units(capacity);
    if try_pinned(state, &inst, cap, deadline)? {
        return Ok(Some(true));
    }
    let given = state.search_nodes_left();
    let mut nodes = given;
    let fit = decide_units(state.problem, &inst, cap, Some(deadline), &mut nodes);
    state.spend_search_nodes(given - nodes);
    match fit {
        Answer::Fits(s) => {
            state.offer(s, "search")?;
            Ok(Some(true))
        }
        Answer::Infeasible => {
            state.prove(Bytes((cap + 1) * inst.unit));
            Ok(Some(false))
        }
        Answer::Unknown => Ok(None),
    }
}

/// Minimize mode: probes capacities between the proven bound and the incumbent's peak until
/// `deadline` or the end of the plan's node budget. The first probe is at the bound (often the
/// optimum); then bisection. A probe that runs out of its share of time (or of nodes) sends the
/// next one higher, where a plan is easier to find, and nothing found is ever lost (unlike
/// MiniMalloc's minimize mode). Returns true when it stopped for time or nodes rather than
/// closing the gap.
pub(crate) fn minimize(state: &mut Anytime, deadline: Instant) -> Result<bool, InvalidPlan> {
    state.set_phase("search");
    let inst = Instance::new(state.problem);
    let mut lo = state.bound().0.div_ceil(inst.unit);
    // Recorded traces usually fit their bound around long-lived buffers pinned first; when they
    // do, that is the optimum, and the plain search may find nothing in seconds on them.
    if state.best_peak().is_some_and(|p| p.0 > lo * inst.unit) {
        try_pinned(state, &inst, lo, deadline)?;
    }
    let mut probe_lo = lo;
    let mut first = true;
    let mut share = 2u32;
    loop {
        let Some(peak) = state.best_peak() else {
            return Ok(false);
        };
        // Peaks of canonical plans are multiples of the unit: beat the incumbent by one at least.
        let hi = peak.0.div_ceil(inst.unit);
        if lo >= hi {
            return Ok(false);
        }
        let now = Instant::now();
        let nodes_left = state.search_nodes_left();
        if now >= deadline || nodes_left == 0 {
            return Ok(true);
        }
        if probe_lo >= hi {
            // Every capacity above the bound timed out: go back down with all the time left.
            probe_lo = lo;
            share = 1;
        }
        let cap = if first {
            lo
        } else {
            probe_lo + (hi - 1 - probe_lo) / 2
        };
        first = false;
        let budget = (deadline - now) / share;
        let probe_deadline = now + budget.max(Duration::from_millis(1));
        let given = (nodes_left / u64::from(share)).max(1);
        let mut nodes = given;
        let fit = decide_units(state.problem, &inst, cap, Some(probe_deadline), &mut nodes);
        state.spend_search_nodes(given - nodes);
        match fit {
            Answer::Fits(s) => {
                state.offer(s, "search")?;
            }
            Answer::Infeasible => {
                lo = cap + 1;
                probe_lo = probe_lo.max(lo);
                state.prove(Bytes(lo * inst.unit));
            }
            Answer::Unknown => probe_lo = cap + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::{Buffer, Interval};
    use crate::placement::validate::validate;

    fn buf(start: u64, end: u64, size: u64) -> Buffer {
        Buffer::new("b", Interval::new(start, end).unwrap(), Bytes(size))
    }

    #[test]
    fn packs_at_the_max_load_when_it_can() {
        // A long buffer with two short ones side by side in time, and one across them.
        let p = Problem::new(vec![buf(0, 2, 2), buf(2, 4, 3), buf(1, 3, 2), buf(0, 4, 1)]);
        match decide(&p, Bytes(6), None) {
            Answer::Fits(s) => validate(&p.clone().with_capacity(Some(Bytes(6))), &s).unwrap(),
            other => panic!("expected a fit, got {other:?}"),
        }
    }

    #[test]
    fn proves_infeasible_above_the_max_load() {
        // The optimum is one above the max load: the shapes cannot interlock without a gap.
        let p = Problem::new(
            [
                (4, 7, 5),
                (7, 9, 6),
                (1, 4, 6),
                (6, 8, 6),
                (1, 2, 6),
                (3, 5, 4),
                (2, 7, 3),
            ]
            .iter()
            .map(|&(s, e, z)| buf(s, e, z))
            .collect(),
        );
        let lb = crate::placement::max_load(&p);
        assert_eq!(decide(&p, lb, None), Answer::Infeasible);
        assert!(matches!(decide(&p, Bytes(lb.0 + 1), None), Answer::Fits(_)));
    }

    #[test]
    fn perfect_packings_fit_their_width_and_not_one_unit_less() {
        for seed in 1..=6 {
            let p = crate::placement::instances::perfect_packing(80, 1 << 16, 64, seed);
            match decide(&p, Bytes(1 << 16), None) {
                Answer::Fits(s) => validate(&p.clone().with_capacity(Some(Bytes(1 << 16))), &s)
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}")),
                other => panic!("seed {seed}: expected a fit, got {other:?}"),
            }
            // Below the max load the section bound answers at the root.
            assert_eq!(decide(&p, Bytes((1 << 16) - 64), None), Answer::Infeasible);
        }
    }

    #[test]
    fn with_a_node_budget_the_answer_does_not_depend_on_the_clock() {
        let p = crate::placement::instances::perfect_packing(150, 1 << 16, 64, 4);
        let inst = Instance::new(&p);
        let cap = inst.units(Bytes(1 << 16));
        let run = || {
            let mut nodes = 5_000;
            let answer = decide_units(&p, &inst, cap, None, &mut nodes);
            (answer, nodes)
        };
        let first = run();
        assert!(first.1 < 5_000, "the budget is spent from");
        for _ in 0..3 {
            assert_eq!(run(), first);
        }
    }

    #[test]
    fn respects_alignment_and_fixed_offsets() {
        let mut a = buf(0, 4, 4);
        a.fixed_offset = Some(Bytes(8));
        let mut b = buf(0, 4, 8);
        b.alignment = Bytes(8);
        let c = buf(1, 3, 8);
        let p = Problem::new(vec![a, b, c]);
        match decide(&p, Bytes(24), None) {
            Answer::Fits(s) => validate(&p, &s).unwrap(),
            other => panic!("expected a fit, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod brute {
    use super::*;
    use crate::placement::problem::{Buffer, Interval};
    use proptest::prelude::*;

    /// Above any optimum: everything stacked above the highest pinned buffer.
    fn brute_limit(p: &Problem) -> u64 {
        let stacked: u64 = p.buffers.iter().map(|b| b.size.0 + b.alignment.0).sum();
        let pinned = p
            .buffers
            .iter()
            .filter_map(|b| b.fixed_offset.map(|f| f.0 + b.size.0))
            .max()
            .unwrap_or(0);
        stacked + pinned + 1
    }

    /// The smallest peak over every assignment of offsets (tiny instances only).
    pub(crate) fn brute_force_peak(p: &Problem) -> u64 {
        let n = p.len();
        let mut best = brute_limit(p);
        let mut offsets = vec![0u64; n];
        fn rec(p: &Problem, k: usize, offsets: &mut Vec<u64>, best: &mut u64) {
            if k == p.len() {
                let peak = (0..k)
                    .map(|i| offsets[i] + p.buffers[i].size.0)
                    .max()
                    .unwrap_or(0);
                *best = (*best).min(peak);
                return;
            }
            let b = &p.buffers[k];
            let mut o = 0;
            while o + b.size.0 < *best {
                let ok = (0..k).all(|j| {
                    let c = &p.buffers[j];
                    !b.lifetime.intersects(&c.lifetime)
                        || o + b.size.0 <= offsets[j]
                        || offsets[j] + c.size.0 <= o
                });
                if ok && o % b.alignment.0.max(1) == 0 && b.fixed_offset.is_none_or(|f| f.0 == o) {
                    offsets[k] = o;
                    rec(p, k + 1, offsets, best);
                }
                o += 1;
            }
        }
        rec(p, 0, &mut offsets, &mut best);
        best
    }

    pub(crate) fn tiny_problem() -> impl Strategy<Value = Problem> {
        proptest::collection::vec((0u64..6, 1u64..4, 1u64..5, 0u64..3, 0u64..12), 1..7).prop_map(
            |v| {
                Problem::new(
                    v.into_iter()
                        .enumerate()
                        .map(|(i, (s, l, size, a, f))| {
                            let mut b = Buffer::new(
                                format!("b{i}"),
                                Interval {
                                    start: s,
                                    end: s + l,
                                },
                                Bytes(size),
                            );
                            b.alignment = Bytes([1, 1, 2][a as usize]);
                            // One buffer in four is pinned, at an aligned offset.
                            if f < 6 && f % 2 == 0 {
                                b.fixed_offset = Some(Bytes(f));
                            }
                            b
                        })
                        .collect(),
                )
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn search_agrees_with_brute_force(p in tiny_problem()) {
            let best = brute_force_peak(&p);
            let limit = brute_limit(&p);
            if best >= limit {
                // Pinned buffers that collide: nothing fits anywhere.
                prop_assert_eq!(decide(&p, Bytes(limit + 16), None), Answer::Infeasible);
                return Ok(());
            }
            match decide(&p, Bytes(best), None) {
                Answer::Fits(s) => {
                    prop_assert!(crate::placement::validate(&p, &s).is_ok());
                    prop_assert!(s.peak.0 <= best);
                }
                other => prop_assert!(false, "optimum {} not found: {:?}", best, other),
            }
            if best > 0 {
                prop_assert_eq!(decide(&p, Bytes(best - 1), None), Answer::Infeasible);
            }
        }

        /// The restarts alone, whose shuffled orders branch on gaps where no room is to spare
        /// (`decide` may be answered by the fixed orders first).
        #[test]
        fn gap_branching_agrees_with_brute_force(p in tiny_problem()) {
            let best = brute_force_peak(&p);
            prop_assume!(best < brute_limit(&p));
            let inst = Instance::new(&p);
            let restarts = |cap: u64| {
                let mut nodes = u64::MAX;
                run_schedule(&p, &inst, inst.units(Bytes(cap)), None, &mut nodes, Schedule::Restarts, None)
            };
            match restarts(best) {
                Answer::Fits(s) => {
                    prop_assert!(crate::placement::validate(&p, &s).is_ok());
                    prop_assert!(s.peak.0 <= best);
                }
                other => prop_assert!(false, "optimum {} not found: {:?}", best, other),
            }
            if best > 0 {
                prop_assert_eq!(restarts(best - 1), Answer::Infeasible);
            }
        }
    }
}
