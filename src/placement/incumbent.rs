//! The anytime state shared by the methods of one plan: the best valid plan so far, the best proven
//! lower bound, the clock, and the progress callback told whenever either improves.

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

pub(crate) struct Anytime<'p> {
    pub problem: &'p Problem,
    started: Instant,
    deadline: Instant,
    best: Option<(Solution, String)>,
    bound: Bytes,
    progress: Option<ProgressFn>,
    phase: &'static str,
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
            // A limit too large for the clock means no limit.
            deadline: started
                .checked_add(time_limit)
                .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600)),
            best: None,
            bound,
            progress,
            phase: "start",
        }
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
