//! Greedy placement: take buffers in some order and put each at a gap among the buffers already placed
//! that live at the same time. A rule is an order plus a fit; the portfolio runs every rule and keeps
//! the lowest peak.
//!
//! Greedy-by-size with first fit is TFLite-Micro's GreedyMemoryPlanner; with best fit (smallest gap
//! that fits) it is TFLite GPU's GreedyBySizeAssignment. The other orders are the ones the MiniMalloc
//! and TelaMalloc papers compare against.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::occupancy::Occupancy;
use super::problem::{BufferId, Bytes, Problem, Solution};

/// The order in which buffers are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// Largest size first.
    Size,
    /// Longest lifetime first.
    Lifetime,
    /// Largest size × lifetime first.
    Area,
    /// Most buffers live at the same time first.
    Conflicts,
}

/// Which gap a buffer takes among those it fits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fit {
    /// The lowest gap that fits.
    First,
    /// The smallest gap that fits; above everything when none does.
    Best,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub order: Order,
    pub fit: Fit,
}

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule {
            order: Order::Size,
            fit: Fit::First,
        },
        Rule {
            order: Order::Size,
            fit: Fit::Best,
        },
        Rule {
            order: Order::Lifetime,
            fit: Fit::First,
        },
        Rule {
            order: Order::Lifetime,
            fit: Fit::Best,
        },
        Rule {
            order: Order::Area,
            fit: Fit::First,
        },
        Rule {
            order: Order::Area,
            fit: Fit::Best,
        },
        Rule {
            order: Order::Conflicts,
            fit: Fit::First,
        },
        Rule {
            order: Order::Conflicts,
            fit: Fit::Best,
        },
    ];
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = match self.order {
            Order::Size => "size",
            Order::Lifetime => "lifetime",
            Order::Area => "area",
            Order::Conflicts => "conflicts",
        };
        let fit = match self.fit {
            Fit::First => "first-fit",
            Fit::Best => "best-fit",
        };
        write!(f, "{order}/{fit}")
    }
}

/// Runs every rule and returns the best plan with the rule that found it. The rules are independent,
/// so they are spread over the available cores; ties go to the earlier rule in [`Rule::ALL`].
pub fn greedy(problem: &Problem) -> (Solution, Rule) {
    let mut results: Vec<(Solution, Rule)> = Vec::with_capacity(Rule::ALL.len());
    portfolio(problem, None, |solution, rule| {
        results.push((solution, rule));
        ControlFlow::Continue(())
    });
    let rank = |rule: &Rule| Rule::ALL.iter().position(|r| r == rule);
    results
        .into_iter()
        .min_by_key(|(solution, rule)| (solution.peak, rank(rule)))
        // Nothing stops this portfolio early, so every rule has given a plan.
        .unwrap_or_else(|| (place(problem, Rule::ALL[0]), Rule::ALL[0]))
}

/// Runs the rules of [`Rule::ALL`], first fit before best fit, on every core (the first rule
/// alone) and hands each plan to `found` on the calling thread as soon as it is ready, so a caller
/// holds an answer after one rule instead of eight. First fit goes first because it is several
/// times faster at 100k buffers and wins most often on random instances. Once `found` breaks, or
/// `deadline` has passed and at least one plan was handed over, the rules still running stop
/// unfinished and the others never start. Returns true when every rule ran to its end.
pub fn portfolio(
    problem: &Problem,
    deadline: Option<Instant>,
    mut found: impl FnMut(Solution, Rule) -> ControlFlow<()>,
) -> bool {
    // Computed once for all workers; only the conflicts order reads them.
    let conflicts = conflict_counts(problem);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(Rule::ALL.len());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (send, receive) = mpsc::channel::<(Solution, Rule)>();
    std::thread::scope(|scope| {
        // The first rule runs alone: on large instances two rules at once slow each other down
        // (each one's free-space tree is tens of megabytes), and the first plan is what a caller
        // with a short time limit waits for. Its worker starts the others once that plan is sent.
        let work = Work {
            problem,
            conflicts: &conflicts,
            next: &next,
            stop: &stop,
        };
        scope.spawn(move || {
            work.run(send, |send| {
                for _ in 1..threads {
                    let send = send.clone();
                    scope.spawn(move || work.run(send, |_| {}));
                }
            })
        });
        // However this thread leaves the scope (a panic in `found` included), the workers it
        // then joins must stop first.
        let _stop_on_leave = StopOnDrop(&stop);
        let mut any = false;
        loop {
            let wait = match deadline {
                Some(d) if any => d.saturating_duration_since(Instant::now()),
                _ => Duration::MAX,
            };
            match receive.recv_timeout(wait) {
                Ok((solution, rule)) => {
                    any = true;
                    if found(solution, rule).is_break() {
                        break false;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break false,
                Err(RecvTimeoutError::Disconnected) => break true,
            }
        }
    })
}

/// One portfolio worker's view: it takes the next rule of [`SCHEDULE`] until none is left or it
/// is told to stop.
#[derive(Clone, Copy)]
struct Work<'a> {
    problem: &'a Problem,
    conflicts: &'a [usize],
    next: &'a AtomicUsize,
    stop: &'a AtomicBool,
}

impl Work<'_> {
    /// Runs rules and sends their plans; `after_first` is called once, after the first plan is
    /// sent. Returns when no rule is left, when stopped, or when nobody listens.
    fn run(
        self,
        send: mpsc::Sender<(Solution, Rule)>,
        after_first: impl FnOnce(&mpsc::Sender<(Solution, Rule)>),
    ) {
        let mut after_first = Some(after_first);
        while let Some(&rule) = SCHEDULE.get(self.next.fetch_add(1, Ordering::Relaxed)) {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let ids = order(self.problem, rule.order, self.conflicts);
            let Some(solution) = place_ordered(self.problem, &ids, rule.fit, self.stop) else {
                return;
            };
            // The receiver only goes away once every plan is unwanted.
            if send.send((solution, rule)).is_err() {
                return;
            }
            if let Some(f) = after_first.take() {
                f(&send);
            }
        }
    }
}

/// Places the problem's buffers with one rule.
pub fn place(problem: &Problem, rule: Rule) -> Solution {
    let ids = order(problem, rule.order, &conflict_counts(problem));
    place_in_order(problem, &ids, rule.fit)
}

/// Places the buffers in the given order (each buffer once; buffers with a fixed offset go first
/// wherever they appear) with one fit. Improvement heuristics call this with orders of their own.
pub fn place_in_order(problem: &Problem, order: &[BufferId], fit: Fit) -> Solution {
    place_ordered(problem, order, fit, &AtomicBool::new(false))
        .unwrap_or_else(|| unreachable!("nothing sets this stop flag"))
}

/// The order in which [`portfolio`] starts the rules.
const SCHEDULE: [Rule; 8] = [
    Rule::ALL[0],
    Rule::ALL[4],
    Rule::ALL[6],
    Rule::ALL[2],
    Rule::ALL[1],
    Rule::ALL[5],
    Rule::ALL[7],
    Rule::ALL[3],
];

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How many buffers a rule places between two looks at its stop flag.
const STOP_CHECK_EVERY: usize = 1024;

/// The order of a rule; ties broken by the other keys, then by id, so every run is deterministic.
pub fn order(problem: &Problem, order: Order, conflicts: &[usize]) -> Vec<BufferId> {
    let b = &problem.buffers;
    let mut ids: Vec<BufferId> = problem.ids().collect();
    let size = |i: &BufferId| std::cmp::Reverse(b[i.0].size);
    let life = |i: &BufferId| std::cmp::Reverse(b[i.0].lifetime.len());
    let start = |i: &BufferId| b[i.0].lifetime.start;
    match order {
        Order::Size => ids.sort_by_key(|i| (size(i), life(i), start(i), *i)),
        Order::Lifetime => ids.sort_by_key(|i| (life(i), size(i), start(i), *i)),
        Order::Area => {
            ids.sort_by_key(|i| (std::cmp::Reverse(b[i.0].area()), size(i), start(i), *i))
        }
        Order::Conflicts => {
            ids.sort_by_key(|i| (std::cmp::Reverse(conflicts[i.0]), size(i), start(i), *i))
        }
    }
    ids
}

/// For each buffer, how many others are live at the same time: all others, less those that end by its
/// start and those that start at or after its end. Two binary searches per buffer.
pub fn conflict_counts(problem: &Problem) -> Vec<usize> {
    let mut starts: Vec<u64> = problem.buffers.iter().map(|b| b.lifetime.start).collect();
    let mut ends: Vec<u64> = problem.buffers.iter().map(|b| b.lifetime.end).collect();
    starts.sort_unstable();
    ends.sort_unstable();
    let n = problem.len();
    problem
        .buffers
        .iter()
        .map(|b| {
            let ended_before = ends.partition_point(|&e| e <= b.lifetime.start);
            let start_after = n - starts.partition_point(|&s| s < b.lifetime.end);
            n - ended_before - start_after - 1
        })
        .collect()
}

/// Places the buffers in `ids` order; `None` when `stop` was set before it finished.
fn place_ordered(
    problem: &Problem,
    ids: &[BufferId],
    fit: Fit,
    stop: &AtomicBool,
) -> Option<Solution> {
    let bufs = &problem.buffers;
    let mut offsets = vec![Bytes::ZERO; problem.len()];
    let mut placed = vec![false; problem.len()];
    let mut occupancy = Occupancy::new(problem);
    // Buffers with fixed offsets go first, where they must be; the rest fit around them.
    for (i, b) in bufs.iter().enumerate() {
        if let Some(fixed) = b.fixed_offset {
            offsets[i] = fixed;
            placed[i] = true;
            occupancy.insert(BufferId(i), (fixed.0, fixed.0 + b.size.0));
        }
    }
    for (k, &id) in ids.iter().enumerate() {
        // Checked now and then: a rule at 100k buffers takes a good fraction of a second.
        if k % STOP_CHECK_EVERY == 0 && stop.load(Ordering::Relaxed) {
            return None;
        }
        let b = &bufs[id.0];
        if placed[id.0] {
            continue;
        }
        let offset = match fit {
            Fit::First => occupancy.lowest_free(id, b.size.0, b.alignment.0),
            Fit::Best => occupancy.tightest_free(id, b.size.0, b.alignment.0),
        };
        offsets[id.0] = Bytes(offset);
        placed[id.0] = true;
        occupancy.insert(id, (offset, offset + b.size.0));
    }
    Some(Solution::from_offsets(problem, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::lower_bound::max_load;
    use crate::placement::problem::{Buffer, Interval};
    use crate::placement::validate::validate;

    fn buf(name: &str, start: u64, end: u64, size: u64) -> Buffer {
        Buffer::new(name, Interval::new(start, end).unwrap(), Bytes(size))
    }

    #[test]
    fn conflict_counts_follow_half_open_lifetimes() {
        let p = Problem::new(vec![
            buf("a", 0, 2, 1),
            buf("b", 1, 3, 1),
            buf("c", 2, 4, 1),
            buf("d", 9, 10, 1),
        ]);
        assert_eq!(conflict_counts(&p), vec![1, 2, 1, 0]);
    }

    #[test]
    fn best_fit_takes_the_smallest_gap_first_fit_the_lowest() {
        // Fixed buffers leave gaps [0,10) of 10 bytes and [14,18) of 4 bytes while t in [0,4).
        let mut a = buf("a", 0, 4, 4);
        a.fixed_offset = Some(Bytes(10));
        let mut b = buf("b", 0, 4, 2);
        b.fixed_offset = Some(Bytes(18));
        let p = Problem::new(vec![a, b, buf("c", 1, 3, 4)]);
        let first = place(
            &p,
            Rule {
                order: Order::Size,
                fit: Fit::First,
            },
        );
        let best = place(
            &p,
            Rule {
                order: Order::Size,
                fit: Fit::Best,
            },
        );
        assert_eq!(first.offsets[2], Bytes(0));
        assert_eq!(best.offsets[2], Bytes(14));
        validate(&p, &first).unwrap();
        validate(&p, &best).unwrap();
    }

    #[test]
    fn alignment_is_respected() {
        let mut c = buf("c", 0, 4, 8);
        c.alignment = Bytes(16);
        let p = Problem::new(vec![buf("a", 0, 4, 3), c]);
        for rule in Rule::ALL {
            let s = place(&p, rule);
            validate(&p, &s).unwrap();
        }
    }

    #[test]
    fn the_schedule_runs_every_rule_once_first_fit_first() {
        let mut scheduled = SCHEDULE.to_vec();
        assert!(scheduled[..4].iter().all(|r| r.fit == Fit::First));
        scheduled.sort_by_key(|r| Rule::ALL.iter().position(|a| a == r));
        assert_eq!(scheduled, Rule::ALL);
    }

    #[test]
    fn the_portfolio_hands_over_every_plan_or_stops_when_told() {
        use crate::placement::random::{random_problem, Shape};
        let p = random_problem(3000, 11, Shape::Sparse);
        let mut rules = Vec::new();
        let complete = portfolio(&p, None, |s, rule| {
            validate(&p, &s).unwrap();
            rules.push(rule);
            ControlFlow::Continue(())
        });
        assert!(complete);
        rules.sort_by_key(|r| Rule::ALL.iter().position(|a| a == r));
        assert_eq!(rules, Rule::ALL);
        // Told to stop after the first plan: no other plan is handed over.
        let mut calls = 0;
        let complete = portfolio(&p, None, |_, _| {
            calls += 1;
            ControlFlow::Break(())
        });
        assert!(!complete);
        assert_eq!(calls, 1);
        // A deadline already past still lets the first plan through.
        let mut calls = 0;
        portfolio(&p, Some(Instant::now()), |_, _| {
            calls += 1;
            ControlFlow::Continue(())
        });
        assert!(calls >= 1);
    }

    #[test]
    fn portfolio_reaches_the_bound_on_a_staircase() {
        let p = Problem::new(vec![
            buf("a", 0, 10, 4),
            buf("b", 0, 5, 4),
            buf("c", 5, 10, 4),
        ]);
        let (s, _) = greedy(&p);
        validate(&p, &s).unwrap();
        assert_eq!(s.peak, max_load(&p));
    }
}
