//! The anytime state shared by the methods of one plan: the best valid plan so far, the best proven
//! lower bound, the clock and the work budgets, and the progress callback told whenever either
//! improves.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::problem::{Bytes, Problem, Solution};
use super::validate::{validate, InvalidPlan};

/// A snapshot of a running plan, handed to the progress callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The peak of the best valid plan so far, if any.
    pub incumbent: Option<Bytes>,
    /// The best proven lower bound on any plan's peak.
    pub bound: Bytes,
    pub elapsed: Duration,
    /// What is running: `greedy`, `search`, `ilp`.
    pub phase: &'static str,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.incumbent {
            Some(peak) => write!(f, "[{}] incumbent={peak}", self.phase)?,
            None => write!(f, "[{}] incumbent=none", self.phase)?,
        }
        write!(
            f,
            " bound={} elapsed={:.3}s",
            self.bound,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Called from the planning thread whenever the incumbent or the bound improves.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// `started + time_limit`; a limit too large for the clock means no limit (a year).
pub(crate) fn deadline_after(started: Instant, time_limit: Duration) -> Instant {
    started
        .checked_add(time_limit)
        .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600))
}

pub(crate) struct Anytime<'p> {
    pub problem: &'p Problem,
    started: Instant,
    deadline: Instant,
    best: Option<(Solution, String)>,
    bound: Bytes,
    progress: Option<ProgressFn>,
    phase: &'static str,
    /// Branch-and-bound nodes the exact search has visited, and the most it may (`u64::MAX`: no
    /// limit).
    search_nodes: u64,
    max_search_nodes: u64,
    /// Greedy runs the iterated greedy has tried, and the most it may (`u64::MAX`: no limit).
    improve_tries: u64,
    max_improve_tries: u64,
    /// The capacity at which planning stops as soon as a plan fits it; `None` to minimize.
    decide_at: Option<Bytes>,
}

impl<'p> Anytime<'p> {
    pub fn new(
        problem: &'p Problem,
        bound: Bytes,
        time_limit: Duration,
        progress: Option<ProgressFn>,
    ) -> Self {
        let started = Instant::now();
        Anytime {
            problem,
            started,
            deadline: deadline_after(started, time_limit),
            best: None,
            bound,
            progress,
            phase: "start",
            search_nodes: 0,
            max_search_nodes: u64::MAX,
            improve_tries: 0,
            max_improve_tries: u64::MAX,
            decide_at: problem.capacity,
        }
    }

    /// With a capacity, keep minimizing once a plan fits it (the capacity still bounds every plan
    /// returned).
    pub fn keep_minimizing(&mut self) {
        self.decide_at = None;
    }

    /// The capacity at which planning stops as soon as a plan fits it: the problem's, unless asked
    /// to keep minimizing; `None` when minimizing.
    pub fn decide_at(&self) -> Option<Bytes> {
        self.decide_at
    }

    /// Sets the work budgets of [`PlanOptions`](super::plan::PlanOptions): `None` is no limit.
    pub fn limit_work(&mut self, max_search_nodes: Option<u64>, max_improve_tries: Option<u64>) {
        self.max_search_nodes = max_search_nodes.unwrap_or(u64::MAX);
        self.max_improve_tries = max_improve_tries.unwrap_or(u64::MAX);
    }

    /// Branch-and-bound nodes the search has visited so far.
    pub fn search_nodes(&self) -> u64 {
        self.search_nodes
    }

    /// Nodes the search may still visit (`u64::MAX` or close to it when there is no limit).
    pub fn search_nodes_left(&self) -> u64 {
        self.max_search_nodes.saturating_sub(self.search_nodes)
    }

    pub fn spend_search_nodes(&mut self, nodes: u64) {
        self.search_nodes = self.search_nodes.saturating_add(nodes);
    }

    /// Greedy runs the iterated greedy has tried so far.
    pub fn improve_tries(&self) -> u64 {
        self.improve_tries
    }

    /// Greedy runs the iterated greedy may still try.
    pub fn improve_tries_left(&self) -> u64 {
        self.max_improve_tries.saturating_sub(self.improve_tries)
    }

    pub fn spend_improve_tries(&mut self, tries: u64) {
        self.improve_tries = self.improve_tries.saturating_add(tries);
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn set_phase(&mut self, phase: &'static str) {
        self.phase = phase;
    }

    pub fn bound(&self) -> Bytes {
        self.bound
    }

    pub fn best_peak(&self) -> Option<Bytes> {
        self.best.as_ref().map(|(s, _)| s.peak)
    }

    pub fn best(&self) -> Option<&Solution> {
        self.best.as_ref().map(|(s, _)| s)
    }

    /// True when the incumbent is proven optimal.
    pub fn closed(&self) -> bool {
        self.best_peak().is_some_and(|p| p <= self.bound)
    }

    /// Keeps `solution` if it is valid (capacity aside) and better than the incumbent. An invalid
    /// solution is a planner bug: it is returned as an error and never kept.
    pub fn offer(
        &mut self,
        solution: Solution,
        method: impl Into<String>,
    ) -> Result<bool, InvalidPlan> {
        if self.best_peak().is_some_and(|p| p <= solution.peak) {
            return Ok(false);
        }
        match validate(self.problem, &solution) {
            Ok(()) | Err(InvalidPlan::OverCapacity { .. }) => {}
            Err(e) => return Err(e),
        }
        self.best = Some((solution, method.into()));
        self.notify();
        Ok(true)
    }

    /// Records a proven lower bound (kept if it beats the current one).
    pub fn prove(&mut self, bound: Bytes) {
        // No bound can exceed a valid plan's peak; one that does comes from solver tolerances.
        let bound = self.best_peak().map_or(bound, |p| bound.min(p));
        if bound > self.bound {
            self.bound = bound;
            self.notify();
        }
    }

    pub fn notify(&self) {
        if let Some(f) = &self.progress {
            f(&Progress {
                incumbent: self.best_peak(),
                bound: self.bound,
                elapsed: self.elapsed(),
                phase: self.phase,
            });
        }
    }

    pub fn into_best(self) -> Option<(Solution, String)> {
        self.best
    }
}
