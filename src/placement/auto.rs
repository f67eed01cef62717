//! The method runner behind [`plan`](super::plan::plan): the greedy portfolio always runs first (it
//! is fast and gives every later method an incumbent; `auto` holds a plan as soon as its first rule
//! ends); then, for `auto`, the exact search and the ILP share what is left of the time limit, and
//! the iterated greedy of [`improve`] takes over where they find nothing (or the problem is too
//! large for them). Everything found or proven lands in the [`Anytime`] state, so running out of
//! time never loses an incumbent. The work budgets of [`PlanOptions`] (search nodes, improvement
//! tries) are spent over the whole plan; the time shares below do not apply to them.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::greedy::{self, Rule};
use super::ilp::{self, IlpEnd, IlpOptions};
use super::improve::improve;
use super::incumbent::Anytime;
use super::plan::{Limit, Method, PlanOptions};
use super::search;
use super::validate::InvalidPlan;

/// The share of the time left that `auto` gives the search before the ILP starts: the search
/// settles most instances in well under a second, and the ILP is the better tool for what the
/// search cannot close (proving bounds). Up to [`FULL_SHARE_UP_TO`] buffers, the size of the
/// recorded training traces the search is there for (the pinned search needs 0.2 s of its share on
/// a 3,252-buffer transformer step), it gets the full share. Above, on random instances, it either
/// succeeds fast or not at all (10,000 buffers: nothing in 3 s) while the iterated greedy that runs
/// after it keeps finding better plans, so it gets less.
const SEARCH_SHARE: f64 = 0.6;
const SEARCH_SHARE_LARGE: f64 = 0.2;
const FULL_SHARE_UP_TO: usize = 5000;

/// How the methods ended.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ran {
    /// Set when the question is still open and the last method stopped on a limit: which one.
    pub stopped_by: Option<Limit>,
}

/// True when nothing is left to do: the incumbent is optimal, fits the capacity (unless asked to
/// keep minimizing), or the capacity is proven too small.
fn settled(state: &Anytime) -> bool {
    state.problem.capacity.is_some_and(|c| state.bound() > c)
        || state.closed()
        || state
            .decide_at()
            .is_some_and(|c| state.best_peak().is_some_and(|p| p <= c))
}

/// Which limit stopped the search: its node budget once spent, else the clock.
fn search_limit(state: &Anytime) -> Limit {
    if state.search_nodes_left() == 0 {
        Limit::SearchNodes
    } else {
        Limit::Time
    }
}

pub(crate) fn run(state: &mut Anytime, options: &PlanOptions) -> Result<Ran, InvalidPlan> {
    state.limit_work(options.max_search_nodes, options.max_improve_tries);
    let (complete, best_rule) = greedy_phase(state, options)?;
    if options.method == Method::Greedy || settled(state) || state.expired() {
        return Ok(Ran {
            stopped_by: (!complete && !settled(state)).then_some(Limit::Time),
        });
    }
    let mut stopped = None;
    match options.method {
        Method::Greedy => {}
        Method::Search => {
            stopped = search_phase(state, state.deadline())?.then(|| search_limit(state));
        }
        Method::Ilp => {
            stopped = ilp_phase(state, options, state.deadline())?.then_some(Limit::Time);
        }
        Method::Auto => {
            let greedy_peak = state.best_peak();
            let exact = state.problem.len() <= search::MAX_BUFFERS;
            if exact {
                let share = if state.problem.len() <= FULL_SHARE_UP_TO {
                    SEARCH_SHARE
                } else {
                    SEARCH_SHARE_LARGE
                };
                let share = state.remaining().mul_f64(share);
                stopped = search_phase(state, Instant::now() + share)?.then(|| search_limit(state));
                if !settled(state) && !state.expired() {
                    stopped = ilp_phase(state, options, state.deadline())?.then_some(Limit::Time);
                }
            }
            // What is left goes to the search if it has been finding better plans (the ILP may
            // stop early: a gap, a model too large), else to the iterated greedy, which is what
            // improves plans too large or too loose for the search.
            if !settled(state) && state.remaining() > Duration::from_millis(10) {
                if exact && state.best_peak() < greedy_peak {
                    stopped = search_phase(state, state.deadline())?.then(|| search_limit(state));
                } else if let Some(rule) = best_rule {
                    let conflicts = greedy::conflict_counts(state.problem);
                    let start = greedy::order(state.problem, rule.order, &conflicts);
                    improve(state, &start, rule.fit, state.deadline())?;
                    stopped = Some(if state.improve_tries_left() == 0 {
                        Limit::ImproveTries
                    } else {
                        Limit::Time
                    });
                }
            }
        }
    }
    Ok(Ran {
        stopped_by: stopped.filter(|_| !settled(state)),
    })
}

/// The greedy portfolio, every plan offered as soon as its rule ends. `auto` stops the portfolio at
/// the time limit once it holds a plan (the first rule's, at worst); the single methods run it
/// whole, as the start every later method builds on. Either way it stops when nothing is left to
/// improve. Returns whether every rule ran (or nothing was left to improve), and the rule of the
/// best plan.
fn greedy_phase(
    state: &mut Anytime,
    options: &PlanOptions,
) -> Result<(bool, Option<Rule>), InvalidPlan> {
    state.set_phase("greedy");
    let problem = state.problem;
    let deadline = (options.method == Method::Auto).then(|| state.deadline());
    let mut invalid = None;
    let mut best = None;
    let complete = greedy::portfolio(problem, deadline, |solution, rule| {
        match state.offer(solution, format!("greedy({rule})")) {
            Ok(true) => best = Some(rule),
            Ok(false) => {}
            Err(e) => {
                invalid = Some(e);
                return ControlFlow::Break(());
            }
        }
        if settled(state) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    invalid.map_or(Ok((complete || settled(state), best)), Err)
}

/// Returns true when the search stopped for time or for its node budget.
fn search_phase(state: &mut Anytime, deadline: Instant) -> Result<bool, InvalidPlan> {
    if state.problem.len() > search::MAX_BUFFERS {
        return Ok(false);
    }
    if let Some(capacity) = state.problem.capacity {
        if state.best_peak().is_none_or(|p| p > capacity) {
            let found = search::fit_capacity(state, capacity, deadline)?;
            // Asked to keep minimizing, a plan within the capacity is where the minimizing starts.
            if state.decide_at().is_some() || found != Some(true) {
                return Ok(found.is_none());
            }
        }
    }
    search::minimize(state, deadline)
}

/// Returns true when the ILP stopped for time.
fn ilp_phase(
    state: &mut Anytime,
    options: &PlanOptions,
    deadline: Instant,
) -> Result<bool, InvalidPlan> {
    let incumbent = state.best_peak();
    let (horizon, decide) = match (state.decide_at(), state.problem.capacity, incumbent) {
        (Some(c), _, _) => (c, true),
        (None, capacity, Some(p)) => (capacity.map_or(p, |c| c.min(p)), false),
        (None, Some(c), None) => (c, false),
        (None, None, None) => return Ok(false),
    };
    let opts = IlpOptions {
        deadline,
        threads: options.threads,
        gap: options.ilp_gap,
        decide,
        max_pairs: if options.method == Method::Auto {
            ilp::AUTO_MAX_PAIRS
        } else {
            ilp::MAX_PAIRS
        },
    };
    let end = ilp::solve(state, horizon, opts)?;
    Ok(end == IlpEnd::Stopped)
}
