//! The planner's front door: run a method within a time limit, validate what it found, and report.
//!
//! Two modes. Without a capacity the planner minimizes the arena. With `problem.capacity` set it
//! decides whether the buffers fit: it returns the first plan that fits, or an error that says
//! whether no plan can fit (proven) or none was found in time.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::auto;
use super::decompose;
use super::incumbent::{Anytime, ProgressFn};
use super::lower_bound::max_load;
use super::problem::{Bytes, Problem, Solution};
use super::validate::{validate, InvalidPlan};

/// A placement method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Method {
    /// Greedy portfolio, then the exact search, then the ILP, within one time limit; anytime.
    #[default]
    Auto,
    /// The greedy portfolio: every order × fit rule, best kept.
    Greedy,
    /// Branch and bound over canonical placements (MiniMalloc-style), seeded by the greedy answer.
    Search,
    /// The mixed-integer program on HiGHS, seeded by the greedy answer as its MIP start.
    Ilp,
}

impl Method {
    /// Every method's name; the first is the default.
    pub const NAMES: [&'static str; 4] = ["auto", "greedy", "search", "ilp"];

    pub fn name(self) -> &'static str {
        match self {
            Method::Auto => "auto",
            Method::Greedy => "greedy",
            Method::Search => "search",
            Method::Ilp => "ilp",
        }
    }
}

impl FromStr for Method {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Method, PlanError> {
        match s {
            "auto" => Ok(Method::Auto),
            "greedy" => Ok(Method::Greedy),
            "search" => Ok(Method::Search),
            "ilp" => Ok(Method::Ilp),
            other => Err(PlanError::UnknownMethod {
                name: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone)]
pub struct PlanOptions {
    pub method: Method,
    /// Wall-clock budget. `auto` always returns a plan: if the limit passes before the first greedy
    /// rule ends, it returns that rule's plan as soon as it is ready. The single methods run the whole
    /// greedy portfolio first, whatever the limit.
    pub time_limit: Duration,
    /// Threads HiGHS may use (the search runs on the calling thread).
    pub threads: u32,
    /// Relative gap at which the ILP may stop; 0 asks HiGHS to prove optimality.
    pub ilp_gap: f64,
    /// Told the incumbent, the bound and the elapsed time whenever one of them improves.
    pub progress: Option<ProgressFn>,
    /// The most branch-and-bound nodes the exact search (`search`, and the search inside `auto`)
    /// may visit in one plan, over all its capacity probes and pinnings; `None` (the default) for no
    /// limit. Reaching it stops the search as the time limit does: the best plan so far is kept,
    /// and the status is `time_limit` unless something proved the plan optimal. Unlike the time limit
    /// it does not depend on how fast or busy the machine is: with a time limit that does not
    /// bind, a search stopped by it ends the same way everywhere (the tests use it so). It does not
    /// limit the ILP, which `auto` runs after an unfinished search.
    pub max_search_nodes: Option<u64>,
    /// The most greedy runs the iterated greedy (`improve`, inside `auto`) may try in one plan;
    /// `None` (the default) for no limit. Reaching it stops the improvement as the time limit
    /// does. Tries run one per core (up to 4 at a time), so the plan it reaches depends on the
    /// number of cores, not on the machine's speed.
    pub max_improve_tries: Option<u64>,
    /// With a capacity: once a plan fits, keep looking for a smaller one until the time limit or
    /// the optimum, instead of returning the first that fits. An error still means that nothing
    /// fits the capacity. Without a capacity the planner always minimizes.
    pub minimize_below_capacity: bool,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            method: Method::Auto,
            time_limit: Duration::from_secs(5),
            threads: 1,
            ilp_gap: 0.0,
            progress: None,
            max_search_nodes: None,
            max_improve_tries: None,
            minimize_below_capacity: false,
        }
    }
}

impl fmt::Debug for PlanOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanOptions")
            .field("method", &self.method)
            .field("time_limit", &self.time_limit)
            .field("threads", &self.threads)
            .field("ilp_gap", &self.ilp_gap)
            .field("progress", &self.progress.as_ref().map(|_| "callback"))
            .field("max_search_nodes", &self.max_search_nodes)
            .field("max_improve_tries", &self.max_improve_tries)
            .field("minimize_below_capacity", &self.minimize_below_capacity)
            .finish()
    }
}

pub use crate::status::Status;

/// A limit that stopped planning before its question was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`PlanOptions::time_limit`].
    Time,
    /// [`PlanOptions::max_search_nodes`]: the exact search visited all the nodes it may.
    SearchNodes,
    /// [`PlanOptions::max_improve_tries`]: the iterated greedy tried all the greedy runs it may.
    ImproveTries,
}

/// A validated plan and what it took to find it.
#[derive(Clone, Debug)]
pub struct PlanReport {
    pub solution: Solution,
    /// The max-load bound (bytes live at the busiest moment).
    pub lower_bound: Bytes,
    /// The best lower bound proven during planning: at least `lower_bound`, higher when the search
    /// or the ILP proved that smaller arenas are impossible.
    pub proven_bound: Bytes,
    pub status: Status,
    /// The method, and what found the plan, e.g. `greedy(size/best-fit)` or `auto/search`.
    pub method: String,
    pub elapsed: Duration,
    /// With status `time_limit`, the limit that stopped the last method; `None` otherwise.
    pub stopped_by: Option<Limit>,
    /// Branch-and-bound nodes the exact search visited (0 when it did not run).
    pub search_nodes: u64,
    /// Greedy runs the iterated greedy tried (0 when it did not run).
    pub improve_tries: u64,
}

impl PlanReport {
    /// Peak over lower bound (1.0 when both are zero).
    pub fn ratio(&self) -> f64 {
        peak_ratio(self.solution.peak, self.lower_bound)
    }
}

/// `peak / lower_bound`: how far a plan is from the bound (1 for an empty problem).
pub fn peak_ratio(peak: Bytes, lower_bound: Bytes) -> f64 {
    if lower_bound.0 == 0 {
        1.0
    } else {
        peak.0 as f64 / lower_bound.0 as f64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("unknown method '{name}' (known: {})", Method::NAMES.join(", "))]
    UnknownMethod { name: String },
    #[error("capacity {capacity} is below the lower bound {lower_bound}: no plan can fit")]
    CapacityBelowBound { capacity: Bytes, lower_bound: Bytes },
    #[error("no plan fits capacity {capacity}: proven that every plan needs at least {bound} bytes; raise the capacity to {bound} or more")]
    Infeasible { capacity: Bytes, bound: Bytes },
    #[error("no plan found within capacity {capacity}: the best needs {best_peak} (lower bound {lower_bound}); raise the capacity or use --method auto")]
    NoPlanWithinCapacity {
        capacity: Bytes,
        best_peak: Bytes,
        lower_bound: Bytes,
    },
    #[error("no plan within capacity {capacity} found in the time limit, and none proven impossible: the best needs {best_peak} (proven bound {bound}); give it more time")]
    Timeout {
        capacity: Bytes,
        best_peak: Bytes,
        bound: Bytes,
    },
    #[error("{0}")]
    InvalidProblem(String),
    #[error("buffers with fixed offsets conflict: {0}")]
    FixedOffsetsConflict(InvalidPlan),
    #[error("internal error: the planner produced an invalid plan ({0}); please report this")]
    InvalidPlan(InvalidPlan),
}

impl PlanError {
    /// True when the failure is about capacity (the CLI exits 1), not about the input (exit 2).
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            PlanError::CapacityBelowBound { .. }
                | PlanError::Infeasible { .. }
                | PlanError::NoPlanWithinCapacity { .. }
                | PlanError::Timeout { .. }
        )
    }

    /// The status of a capacity question this error answers: `infeasible` when proven, `time_limit`
    /// when time ran out first, `feasible` for a greedy plan that does not fit (nothing proven).
    pub fn status(&self) -> Option<Status> {
        match self {
            PlanError::CapacityBelowBound { .. } | PlanError::Infeasible { .. } => {
                Some(Status::Infeasible)
            }
            PlanError::Timeout { .. } => Some(Status::TimeLimit),
            PlanError::NoPlanWithinCapacity { .. } => Some(Status::Feasible),
            _ => None,
        }
    }
}

/// Plans `problem` with the chosen method; every plan returned has passed the validator.
///
/// A problem that falls apart in time (no lifetime crosses some moment) into parts of at least
/// [`decompose::MIN_PART_BUFFERS`] buffers is planned part by part, whatever its size (see
/// [`decompose`]); the others whole.
pub fn plan(problem: &Problem, options: &PlanOptions) -> Result<PlanReport, PlanError> {
    let started = Instant::now();
    problem.check_limits().map_err(PlanError::InvalidProblem)?;
    check_fixed_offsets(problem)?;
    let lower_bound = max_load(problem);
    if let Some(capacity) = problem.capacity {
        if capacity < lower_bound {
            return Err(PlanError::CapacityBelowBound {
                capacity,
                lower_bound,
            });
        }
    }
    let parts = decompose::pieces(problem, decompose::MIN_PART_BUFFERS);
    if parts.len() > 1 {
        return decompose::plan_parts(problem, parts, lower_bound, options, started);
    }
    if let Some((spine, pieces)) = decompose::spine(problem, decompose::MIN_PART_BUFFERS) {
        return plan_spine_then_whole(problem, &spine, pieces, lower_bound, options, started);
    }
    plan_whole(problem, options, lower_bound, started)
}

/// Plans around the long-lived spine (half the time at most), then, unless that settled the
/// question, the whole problem with the time left; returns the better plan, the bound from both.
fn plan_spine_then_whole(
    problem: &Problem,
    spine: &[usize],
    pieces: Vec<Vec<usize>>,
    lower_bound: Bytes,
    options: &PlanOptions,
    started: Instant,
) -> Result<PlanReport, PlanError> {
    let half = PlanOptions {
        time_limit: options.time_limit / 2,
        ..options.clone()
    };
    let around = decompose::plan_around_spine(problem, spine, pieces, lower_bound, &half, started);
    let decide = problem.capacity.is_some() && !options.minimize_below_capacity;
    match &around {
        // At the max load, or (deciding) within the capacity: nothing left to do.
        Ok(r) if r.status == Status::Optimal || decide => return around,
        Err(PlanError::InvalidPlan(_)) => return around,
        _ => {}
    }
    let best_so_far = around.as_ref().ok().map(|r| r.solution.peak);
    let rest = PlanOptions {
        time_limit: options.time_limit.saturating_sub(started.elapsed()),
        progress: options
            .progress
            .clone()
            .map(|user| decompose::only_improvements(user, best_so_far, lower_bound, started)),
        ..options.clone()
    };
    let whole = plan_whole(problem, &rest, lower_bound, Instant::now());
    match (around, whole) {
        (Ok(a), Ok(w)) => {
            let bound = w.proven_bound.max(a.proven_bound);
            let search_nodes = a.search_nodes + w.search_nodes;
            let improve_tries = a.improve_tries + w.improve_tries;
            // The whole's run is what could have improved either plan last.
            let stopped_by = w.stopped_by;
            let mut best = if a.solution.peak < w.solution.peak {
                a
            } else {
                w
            };
            best.proven_bound = bound.min(best.solution.peak);
            let closed = best.solution.peak <= best.proven_bound;
            best.stopped_by = stopped_by.filter(|_| !closed);
            best.status = status_of(closed, best.stopped_by);
            best.elapsed = started.elapsed();
            best.search_nodes = search_nodes;
            best.improve_tries = improve_tries;
            Ok(best)
        }
        (Ok(a), Err(e)) => match e {
            // A plan around the spine stands whatever stopped the whole, unless that was a bug.
            PlanError::InvalidPlan(_) => Err(e),
            _ => Ok(a),
        },
        (Err(_), whole) => whole,
    }
}

/// Plans `problem` as one piece, its checks done and its max load known.
pub(crate) fn plan_whole(
    problem: &Problem,
    options: &PlanOptions,
    lower_bound: Bytes,
    started: Instant,
) -> Result<PlanReport, PlanError> {
    let mut state = Anytime::new(
        problem,
        lower_bound,
        options.time_limit,
        options.progress.clone(),
    );
    if options.minimize_below_capacity {
        state.keep_minimizing();
    }
    let ran = auto::run(&mut state, options).map_err(PlanError::InvalidPlan)?;
    let bound = state.bound();
    let closed = state.closed();
    let (search_nodes, improve_tries) = (state.search_nodes(), state.improve_tries());
    let Some((solution, found_by)) = state.into_best() else {
        // Every method starts from the greedy portfolio, so there is always a plan; if not, say so.
        return Err(PlanError::InvalidPlan(InvalidPlan::WrongLength {
            expected: problem.len(),
            found: 0,
        }));
    };
    let method = match options.method {
        Method::Greedy => found_by,
        m => format!("{m}/{found_by}"),
    };
    if let Some(capacity) = problem.capacity {
        if solution.peak > capacity {
            return Err(if bound > capacity {
                PlanError::Infeasible { capacity, bound }
            } else if options.method == Method::Greedy {
                PlanError::NoPlanWithinCapacity {
                    capacity,
                    best_peak: solution.peak,
                    lower_bound,
                }
            } else {
                PlanError::Timeout {
                    capacity,
                    best_peak: solution.peak,
                    bound,
                }
            });
        }
    }
    validate(problem, &solution).map_err(PlanError::InvalidPlan)?;
    let stopped_by = ran.stopped_by.filter(|_| !closed);
    Ok(PlanReport {
        solution,
        lower_bound,
        proven_bound: bound,
        status: status_of(closed, stopped_by),
        method,
        elapsed: started.elapsed(),
        stopped_by,
        search_nodes,
        improve_tries,
    })
}

/// A plan's status: `optimal` when proven, else `time_limit` when a limit stopped the method that
/// could have improved it, else `feasible`.
pub(crate) fn status_of(closed: bool, stopped_by: Option<Limit>) -> Status {
    if closed {
        Status::Optimal
    } else if stopped_by.is_some() {
        Status::TimeLimit
    } else {
        Status::Feasible
    }
}

/// Buffers pinned at fixed offsets must not collide with each other, whatever the planner does.
fn check_fixed_offsets(problem: &Problem) -> Result<(), PlanError> {
    let fixed: Vec<_> = problem
        .buffers
        .iter()
        .filter(|b| b.fixed_offset.is_some())
        .cloned()
        .collect();
    if fixed.is_empty() {
        return Ok(());
    }
    let offsets = fixed.iter().filter_map(|b| b.fixed_offset).collect();
    let sub = Problem::new(fixed);
    let solution = Solution::from_offsets(&sub, offsets);
    validate(&sub, &solution).map_err(PlanError::FixedOffsetsConflict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::{Buffer, Interval};

    fn buf(name: &str, start: u64, end: u64, size: u64) -> Buffer {
        Buffer::new(name, Interval::new(start, end).unwrap(), Bytes(size))
    }

    #[test]
    fn capacity_below_the_bound_is_refused_before_planning() {
        let p =
            Problem::new(vec![buf("a", 0, 2, 4), buf("b", 1, 3, 4)]).with_capacity(Some(Bytes(7)));
        let err = plan(&p, &PlanOptions::default()).unwrap_err();
        assert_eq!(
            err,
            PlanError::CapacityBelowBound {
                capacity: Bytes(7),
                lower_bound: Bytes(8)
            }
        );
        assert!(err.is_capacity());
    }

    #[test]
    fn optimal_status_when_the_peak_meets_the_bound() {
        let p =
            Problem::new(vec![buf("a", 0, 2, 4), buf("b", 1, 3, 4)]).with_capacity(Some(Bytes(8)));
        let report = plan(&p, &PlanOptions::default()).unwrap();
        assert_eq!(report.solution.peak, Bytes(8));
        assert_eq!(report.status, Status::Optimal);
        assert!(report.method.contains("greedy("), "{}", report.method);
    }

    #[test]
    fn alignments_that_could_overflow_are_refused_before_planning() {
        let mut a = buf("a", 0, 2, 1 << 52);
        a.alignment = Bytes(1 << 53);
        let b = buf("b", 1, 3, 3);
        let err = plan(&Problem::new(vec![a, b]), &PlanOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "buffer 'a': alignment 9007199254740992 is too large (at most 1073741824, 1 GiB)"
        );
        assert!(!err.is_capacity());
    }

    #[test]
    fn the_largest_alignment_plans_without_overflow() {
        let mut bufs: Vec<Buffer> = (0..4).map(|i| buf(&format!("b{i}"), 0, 2, 3)).collect();
        for b in &mut bufs {
            b.alignment = Bytes(crate::placement::problem::MAX_ALIGNMENT);
        }
        let p = Problem::new(bufs);
        for method in [Method::Greedy, Method::Search, Method::Auto] {
            let options = PlanOptions {
                method,
                time_limit: Duration::from_millis(200),
                ..Default::default()
            };
            let report = plan(&p, &options).unwrap();
            assert_eq!(report.solution.peak, Bytes(3 * (1 << 30) + 3), "{method}");
        }
    }

    #[test]
    fn colliding_fixed_offsets_are_reported() {
        let mut a = buf("a", 0, 2, 4);
        a.fixed_offset = Some(Bytes(0));
        let mut b = buf("b", 1, 3, 4);
        b.fixed_offset = Some(Bytes(2));
        let err = plan(&Problem::new(vec![a, b]), &PlanOptions::default()).unwrap_err();
        assert!(matches!(err, PlanError::FixedOffsetsConflict(_)));
        assert!(err.to_string().contains("a and b"), "{err}");
    }
}
