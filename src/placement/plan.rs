//! The planner's front door: run a method within a time limit, validate what it found, and report.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::greedy::greedy;
use super::lower_bound::max_load;
use super::problem::{Bytes, Problem, Solution};
use super::validate::{validate, InvalidPlan};

/// A placement method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// The greedy portfolio: every order × fit rule, best kept.
    Greedy,
}

impl Method {
    pub const NAMES: [&'static str; 1] = ["greedy"];
}

impl FromStr for Method {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Method, PlanError> {
        match s {
            "greedy" => Ok(Method::Greedy),
            other => Err(PlanError::UnknownMethod {
                name: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Greedy => write!(f, "greedy"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub method: Method,
    /// Wall-clock budget for methods that search; the greedy portfolio always runs to completion.
    pub time_limit: Duration,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            method: Method::Greedy,
            time_limit: Duration::from_secs(5),
        }
    }
}

/// What is known about a returned plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The peak equals a proven lower bound.
    Optimal,
    /// A valid plan; no proof that a smaller one does not exist.
    Feasible,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Optimal => "optimal",
            Status::Feasible => "feasible",
        })
    }
}

/// A validated plan and what it took to find it.
#[derive(Clone, Debug)]
pub struct PlanReport {
    pub solution: Solution,
    pub lower_bound: Bytes,
    pub status: Status,
    /// The method, and for the portfolio the rule that won, e.g. `greedy(size/best-fit)`.
    pub method: String,
    pub elapsed: Duration,
}

impl PlanReport {
    /// Peak over lower bound (1.0 when both are zero).
    pub fn ratio(&self) -> f64 {
        if self.lower_bound.0 == 0 {
            1.0
        } else {
            self.solution.peak.0 as f64 / self.lower_bound.0 as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("unknown method '{name}' (known: {})", Method::NAMES.join(", "))]
    UnknownMethod { name: String },
    #[error("capacity {capacity} is below the lower bound {lower_bound}: no plan can fit")]
    CapacityBelowBound { capacity: Bytes, lower_bound: Bytes },
    #[error("no plan found within capacity {capacity}: the best needs {best_peak} (lower bound {lower_bound})")]
    NoPlanWithinCapacity {
        capacity: Bytes,
        best_peak: Bytes,
        lower_bound: Bytes,
    },
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
            PlanError::CapacityBelowBound { .. } | PlanError::NoPlanWithinCapacity { .. }
        )
    }
}

/// Plans `problem` with the chosen method; every plan returned has passed the validator.
pub fn plan(problem: &Problem, options: &PlanOptions) -> Result<PlanReport, PlanError> {
    let started = Instant::now();
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
    let (solution, method) = match options.method {
        Method::Greedy => {
            let (solution, rule) = greedy(problem);
            (solution, format!("greedy({rule})"))
        }
    };
    if let Some(capacity) = problem.capacity {
        if solution.peak > capacity {
            return Err(PlanError::NoPlanWithinCapacity {
                capacity,
                best_peak: solution.peak,
                lower_bound,
            });
        }
    }
    validate(problem, &solution).map_err(PlanError::InvalidPlan)?;
    let status = if solution.peak == lower_bound {
        Status::Optimal
    } else {
        Status::Feasible
    };
    Ok(PlanReport {
        solution,
        lower_bound,
        status,
        method,
        elapsed: started.elapsed(),
    })
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
        assert!(report.method.starts_with("greedy("));
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
