//! Anytime improvement of a greedy plan, for instances too large for the exact methods: iterated
//! greedy around the peak.
//!
//! The peak is set by a few critical buffers (those whose `offset + size` is the peak): when the
//! greedy rule reached them, the addresses below were already fragmented. A try moves a critical
//! buffer, a few buffers live at the same time as it and a few of the next-highest buffers to random
//! earlier places in the order, places everything again, and keeps the new order unless its plan is
//! worse: a lower peak, or the same peak reached by no more buffers, is kept. Keeping equal plans
//! lets it walk plateaus; once the last critical buffer goes down, the peak drops.
//!
//! Every try is a whole greedy run, so a try costs what one rule costs (about 30 ms at 10k buffers,
//! 0.4 s with first fit and 1.6–2 s with best fit at 100k); tries run one per core at a time.
//! Re-placing only a few buffers around a critical one, the rest held in place, costs far less per
//! try but did no better on the random instances (no gain at 1k, less at 10k, 1.0595 to 1.0593 of
//! the bound in 10 s at 100k), probably because the space under a critical buffer is mostly taken
//! by long-lived buffers, which cannot move without moving all along their lifetimes.
//!
//! Decisions use a seeded xorshift generator; the clock only decides when to stop, so two runs with
//! the same number of tries (on machines with as many cores) give the same plan. The plan's
//! `max_improve_tries` stops it after a number of tries instead, whatever the machine's speed.

use std::time::{Duration, Instant};

use super::greedy::{place_in_order, Fit};
use super::incumbent::Anytime;
use super::problem::{BufferId, Bytes, Problem, Solution};
use super::random::XorShift;
use super::validate::InvalidPlan;

/// The most buffers live with the critical one that a try moves along with it.
const MAX_NEIGHBOURS: usize = 4;
/// The most of the next-highest buffers a try moves too, fixing several near-peaks per greedy run:
/// this many, or one per `HIGH_PER` buffers on larger instances, which have more places near the
/// peak and fewer tries per second. On the random instances, up to 7 beat none at 1k and tied at
/// 10k; at 100k, up to 60 beat up to 7 over 20 s.
const MAX_HIGH: usize = 7;
const HIGH_PER: usize = 2000;
/// The most tries placed at once, one per core.
const MAX_WIDTH: usize = 4;

/// Improves `state`'s best plan until `deadline`, until the state's budget of tries is spent, until
/// it is proven optimal, or (with a capacity) until it fits. `start` and `fit` are the greedy order
/// and fit that produced the best plan.
///
/// Each try is a full greedy run; the clock is read between tries, and a try that the previous one
/// says would end past `deadline` is not started, so only the first try can overrun it.
pub(crate) fn improve(
    state: &mut Anytime,
    start: &[BufferId],
    fit: Fit,
    deadline: Instant,
) -> Result<(), InvalidPlan> {
    run(state, start, fit, deadline).map(|_| ())
}

/// [`improve`], returning how many greedy runs it tried (also added to the state's count).
fn run(
    state: &mut Anytime,
    start: &[BufferId],
    fit: Fit,
    deadline: Instant,
) -> Result<u64, InvalidPlan> {
    let tries = iterate(state, start, fit, deadline)?;
    state.spend_improve_tries(tries);
    Ok(tries)
}

fn iterate(
    state: &mut Anytime,
    start: &[BufferId],
    fit: Fit,
    deadline: Instant,
) -> Result<u64, InvalidPlan> {
    state.set_phase("improve");
    let budget = state.improve_tries_left();
    let problem = state.problem;
    let Some(best) = state.best() else {
        return Ok(0);
    };
    // `start` must be a permutation of the buffers; anything else is not ours to improve.
    let mut seen = vec![false; problem.len()];
    let permutation = start.len() == problem.len()
        && start
            .iter()
            .all(|id| id.0 < seen.len() && !std::mem::replace(&mut seen[id.0], true));
    if problem.is_empty() || best.offsets.len() != problem.len() || !permutation {
        return Ok(0);
    }
    let mut walk = Walk::new(problem, best, start, fit);
    // Stop once the peak meets the proven bound, or fits the capacity when one is asked for.
    let target = state
        .decide_at()
        .unwrap_or(Bytes::ZERO)
        .max(state.bound())
        .0;
    // Offering validates the whole plan (~35 ms at 100k buffers), so offers are spaced to keep
    // validation under about a tenth of the time; the last improvement is always offered before
    // returning.
    let mut offered = walk.peak;
    let mut next_offer = Instant::now();
    // A try is one greedy run, which takes about as long every time: no try starts that the last
    // one says would end past the deadline (the first one always runs).
    let mut last_try = Duration::ZERO;
    loop {
        let began = Instant::now();
        let tries_left = budget.saturating_sub(walk.tries);
        if walk.peak <= target || tries_left == 0 || began + last_try >= deadline {
            break;
        }
        if !walk.try_order(tries_left) {
            break; // every critical buffer is fixed: nothing can lower the peak
        }
        last_try = began.elapsed();
        if walk.peak < offered && Instant::now() >= next_offer {
            let began = Instant::now();
            state.offer(walk.solution(), walk.method())?;
            offered = walk.peak;
            next_offer = Instant::now() + began.elapsed().mul_f64(9.0).min(Duration::from_secs(1));
        }
    }
    if walk.peak < offered {
        state.offer(walk.solution(), walk.method())?;
    }
    Ok(walk.tries)
}

/// The best order found so far and its plan.
struct Walk<'p> {
    problem: &'p Problem,
    order: Vec<BufferId>,
    fit: Fit,
    plan: Solution,
    /// `plan.peak`, and how many buffers reach it.
    peak: u64,
    at_peak: usize,
    tries: u64,
    rng: XorShift,
}

impl<'p> Walk<'p> {
    fn new(problem: &'p Problem, best: &Solution, start: &[BufferId], fit: Fit) -> Walk<'p> {
        let (peak, at_peak) = measure(problem, best);
        Walk {
            problem,
            order: start.to_vec(),
            fit,
            plan: best.clone(),
            peak,
            at_peak,
            tries: 0,
            rng: XorShift(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn solution(&self) -> Solution {
        self.plan.clone()
    }

    fn method(&self) -> String {
        format!("improve({} tries)", self.tries)
    }

    /// One round: a new order from the current one per core (at most `max_tries`), each placed on
    /// its own thread; the best of them is kept unless its plan is worse than the current one.
    /// False when no critical buffer can move. The orders are drawn before any is placed, so a
    /// round depends on the seed and the number of cores, not on timing.
    fn try_order(&mut self, max_tries: u64) -> bool {
        let width = std::thread::available_parallelism()
            .map_or(1, |n| n.get().min(MAX_WIDTH))
            .min(usize::try_from(max_tries).unwrap_or(usize::MAX));
        let orders: Vec<(Vec<BufferId>, Fit)> = (0..width).map_while(|_| self.perturb()).collect();
        if orders.is_empty() {
            return false;
        }
        let problem = self.problem;
        let plans: Vec<Solution> = std::thread::scope(|scope| {
            let others: Vec<_> = orders[1..]
                .iter()
                .map(|(order, fit)| scope.spawn(move || place_in_order(problem, order, *fit)))
                .collect();
            let first = place_in_order(problem, &orders[0].0, orders[0].1);
            std::iter::once(first)
                .chain(
                    others
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))),
                )
                .collect()
        });
        self.tries += plans.len() as u64;
        // The best try of the round; ties go to the first drawn.
        let Some((k, (peak, at_peak))) = plans
            .iter()
            .map(|plan| measure(problem, plan))
            .enumerate()
            .min_by_key(|&(k, m)| (m, k))
        else {
            return false;
        };
        if (peak, at_peak) <= (self.peak, self.at_peak) {
            (self.peak, self.at_peak) = (peak, at_peak);
            let (order, fit) = orders.into_iter().nth(k).unwrap_or_else(|| unreachable!());
            self.plan = plans.into_iter().nth(k).unwrap_or_else(|| unreachable!());
            self.order = order;
            self.fit = fit;
        }
        true
    }

    /// A new order and fit to try; `None` when no critical buffer can move.
    fn perturb(&mut self) -> Option<(Vec<BufferId>, Fit)> {
        let bufs = &self.problem.buffers;
        let plan = &self.plan;
        let top = |i: usize| plan.offsets[i].0 + bufs[i].size.0;
        let movable = |i: usize| top(i) == self.peak && bufs[i].fixed_offset.is_none();
        // A random critical buffer (counting them is cheap next to a greedy run).
        let count = (0..bufs.len()).filter(|&i| movable(i)).count();
        if count == 0 {
            return None;
        }
        let k = self.rng.below(count);
        let critical = (0..bufs.len()).filter(|&i| movable(i)).nth(k)?;
        // It goes earlier, with a few buffers live at the same time: placed sooner, they take the low
        // gaps that the buffers placed before them left too fragmented for the critical one.
        let mut moved = vec![critical];
        // One pass over all buffers: a try costs a whole greedy run anyway.
        let life = bufs[critical].lifetime;
        let mut neighbours: Vec<usize> = (0..bufs.len())
            .filter(|&j| j != critical && bufs[j].fixed_offset.is_none())
            .filter(|&j| bufs[j].lifetime.intersects(&life))
            .collect();
        for _ in 0..self.rng.below(MAX_NEIGHBOURS.min(neighbours.len()) + 1) {
            let pick = self.rng.below(neighbours.len());
            moved.push(neighbours.swap_remove(pick));
        }
        // And a few of the next-highest buffers, wherever they are.
        let high = self.rng.below(MAX_HIGH.max(bufs.len() / HIGH_PER) + 1);
        if high > 0 {
            let mut others: Vec<usize> = (0..bufs.len())
                .filter(|&i| i != critical && bufs[i].fixed_offset.is_none())
                .collect();
            let high = high.min(others.len());
            if high > 0 && high < others.len() {
                others.select_nth_unstable_by_key(high - 1, |&i| std::cmp::Reverse(top(i)));
            }
            moved.extend_from_slice(&others[..high]);
        }
        let mut order = self.order.clone();
        for j in moved {
            if let Some(from) = order.iter().position(|id| id.0 == j) {
                order.remove(from);
                let to = self.rng.below(from + 1);
                order.insert(to, BufferId(j));
            }
        }
        // Mostly the fit that did best so far; sometimes the other one.
        let fit = match (self.rng.below(4), self.fit) {
            (0, Fit::First) => Fit::Best,
            (0, Fit::Best) => Fit::First,
            (_, fit) => fit,
        };
        Some((order, fit))
    }
}

/// The peak of a plan and how many buffers reach it.
fn measure(problem: &Problem, plan: &Solution) -> (u64, usize) {
    let peak = plan.peak.0;
    let at_peak = (problem.buffers.iter().zip(&plan.offsets))
        .filter(|(b, o)| o.0 + b.size.0 == peak)
        .count();
    (peak, at_peak)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::greedy::{conflict_counts, greedy, order};
    use crate::placement::lower_bound::max_load;
    use crate::placement::problem::{Buffer, Interval};
    use crate::placement::random::{self, Shape};
    use crate::placement::validate::validate;

    /// The random instances of `benches/placement.rs`.
    fn random_problem(n: usize, seed: u64) -> Problem {
        random::random_problem(n, seed, Shape::Sparse)
    }

    /// The greedy portfolio's plan offered to a fresh state that may try `max_tries` greedy runs,
    /// with the winning rule's order and fit.
    fn seeded(
        problem: &Problem,
        max_tries: Option<u64>,
    ) -> (Anytime<'_>, Vec<BufferId>, Fit, Bytes) {
        let (plan, rule) = greedy(problem);
        let ids = order(problem, rule.order, &conflict_counts(problem));
        let peak = plan.peak;
        let mut state = Anytime::new(problem, max_load(problem), Duration::from_secs(600), None);
        state.limit_work(None, max_tries);
        state.offer(plan, "greedy").unwrap();
        (state, ids, rule.fit, peak)
    }

    /// A deadline no test reaches: the tests stop on their budget of tries, which takes the same
    /// path on any machine (with as many cores), however slow or busy.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    /// With 200 tries each (about 1 s in all), it reaches the bound at 200 buffers and lowers the
    /// peak at 500 and 2000, whether the tries run 1, 2, 3 or 4 at a time (one per core).
    #[test]
    fn lowers_the_peak_on_random_instances_and_every_plan_is_valid() {
        const TRIES: u64 = 200;
        let mut improved = 0;
        for (k, n) in [200, 500, 1000, 2000].into_iter().enumerate() {
            let p = random_problem(n, 0x1234_5678 ^ (k as u64) << 20);
            let (mut state, ids, fit, greedy_peak) = seeded(&p, Some(TRIES));
            let tries = run(&mut state, &ids, fit, far()).unwrap();
            // Stopped by its budget, or on reaching the bound.
            assert!(tries == TRIES || state.closed(), "n={n}: {tries} tries");
            assert_eq!(state.improve_tries(), tries);
            let best = state.best().unwrap();
            validate(&p, best).unwrap();
            assert!(best.peak <= greedy_peak);
            assert!(best.peak >= max_load(&p));
            if best.peak < greedy_peak {
                improved += 1;
            }
        }
        assert!(improved >= 3, "improved only {improved} of 4");
    }

    #[test]
    fn respects_fixed_offsets_and_alignment() {
        let mut p = random_problem(400, 77);
        for (i, b) in p.buffers.iter_mut().enumerate() {
            if i % 7 == 0 {
                b.alignment = Bytes(4096);
            }
        }
        // Pin a few buffers where a first plan put them.
        let (state, _, _, _) = seeded(&p, None);
        let first = state.best().unwrap().clone();
        for i in (0..p.len()).step_by(13) {
            p.buffers[i].fixed_offset = Some(first.offsets[i]);
        }
        let (mut state, ids, fit, greedy_peak) = seeded(&p, Some(20));
        let tries = run(&mut state, &ids, fit, far()).unwrap();
        assert!(tries == 20 || state.closed(), "{tries} tries");
        let best = state.best().unwrap();
        validate(&p, best).unwrap();
        assert!(best.peak <= greedy_peak);
    }

    #[test]
    fn tries_nothing_past_the_deadline_without_tries_left_or_once_closed() {
        let p = random_problem(1000, 5);
        let (mut state, ids, fit, greedy_peak) = seeded(&p, None);
        assert_eq!(run(&mut state, &ids, fit, Instant::now()).unwrap(), 0);
        assert_eq!(state.best_peak(), Some(greedy_peak));

        // No tries left: nothing runs, whatever the deadline; a budget of one runs one.
        let (mut state, ids, fit, _) = seeded(&p, Some(0));
        assert_eq!(run(&mut state, &ids, fit, far()).unwrap(), 0);
        let (mut state, ids, fit, _) = seeded(&p, Some(1));
        assert_eq!(run(&mut state, &ids, fit, far()).unwrap(), 1);
        assert_eq!(run(&mut state, &ids, fit, far()).unwrap(), 0, "spent");

        // Two buffers one after the other: greedy meets the bound, nothing to do.
        let buf = |s, e| Buffer::new("b", Interval::new(s, e).unwrap(), Bytes(8));
        let p = Problem::new(vec![buf(0, 2), buf(2, 4)]);
        let (mut state, ids, fit, _) = seeded(&p, None);
        assert!(state.closed());
        assert_eq!(run(&mut state, &ids, fit, far()).unwrap(), 0);
    }

    /// Tries depend on the seed, not the clock, so with a deadline far enough both runs below end
    /// the same way on any machine.
    #[test]
    fn stops_at_the_bound_or_as_soon_as_the_plan_fits_the_capacity() {
        let n = 1000;
        let p = random_problem(n, 0x9e37_79b9_7f4a_7c15 ^ n as u64);
        let bound = max_load(&p);
        // Without a capacity it reaches the bound on this instance, and stops there.
        let (mut state, ids, fit, greedy_peak) = seeded(&p, None);
        assert!(greedy_peak > bound);
        let to_bound = run(&mut state, &ids, fit, far()).unwrap();
        assert!(state.closed(), "{:?} > {bound}", state.best_peak());
        // With any smaller arena as the capacity it stops at the first improvement, sooner.
        let c = Bytes(greedy_peak.0 - 1);
        let p = p.with_capacity(Some(c));
        let (mut state, ids, fit, _) = seeded(&p, None);
        let to_fit = run(&mut state, &ids, fit, far()).unwrap();
        let best = state.best().unwrap();
        assert!(best.peak <= c);
        validate(&p, best).unwrap();
        assert!(
            to_fit < to_bound,
            "{to_fit} tries to fit, {to_bound} to the bound"
        );
        // And with a capacity the greedy plan meets, it tries nothing.
        let p = p.with_capacity(Some(greedy_peak));
        let (mut state, ids, fit, _) = seeded(&p, None);
        assert_eq!(run(&mut state, &ids, fit, far()).unwrap(), 0);
    }
}
