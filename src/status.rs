//! What is known about a result of planning (placement) or scheduling (operator order): one status
//! set for both, with one spelling in every report.

use std::fmt;

/// What is known about a plan or an order, or about the absence of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Proven optimal: the result meets a proven lower bound (or the ILP closed its gap).
    Optimal,
    /// Valid, not proven optimal: the method ran to its end without such a proof.
    Feasible,
    /// Proven: no plan fits the capacity. Never carried by a report of a result (placement's
    /// `PlanError::status` gives it).
    Infeasible,
    /// The time limit (or a work limit of the options) came before a proof: the result is the best
    /// found, with the best bound proven.
    TimeLimit,
}

impl Status {
    /// Every status, in the spelling reports use.
    pub const NAMES: [&'static str; 4] = ["optimal", "feasible", "infeasible", "time_limit"];

    pub fn name(self) -> &'static str {
        match self {
            Status::Optimal => Self::NAMES[0],
            Status::Feasible => Self::NAMES[1],
            Status::Infeasible => Self::NAMES[2],
            Status::TimeLimit => Self::NAMES[3],
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    #[test]
    fn each_status_has_its_own_name() {
        let all = [
            Status::Optimal,
            Status::Feasible,
            Status::Infeasible,
            Status::TimeLimit,
        ];
        let names: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        assert_eq!(names, Status::NAMES);
    }
}
