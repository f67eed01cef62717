//! Operator scheduling for a lower peak: the order in which a step's operators run decides how many
//! bytes are live at once. A [`Graph`] holds operators, tensors and resident bytes; [`schedule`] is
//! the front door and returns an order with its peak, a lower bound, a status and the method used.

pub mod graph;
pub mod heuristics;
pub mod ilp;
pub mod simulate;
pub mod window;

mod front;

pub use front::{schedule, Method, ScheduleOptions, ScheduleReport, Status};
pub use graph::{Graph, OpId, Tensor};
pub use simulate::{lower_bound, memory_profile, peak};

use thiserror::Error;

/// Why a graph could not be built or scheduled.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error(
        "{context} is operator {op}, but the graph has only {num_ops} operators (ids 0..{num_ops})"
    )]
    UnknownOp {
        op: usize,
        num_ops: usize,
        context: String,
    },
    #[error("the dependencies form a cycle through operator {op}; a step's dataflow graph must be acyclic")]
    Cycle { op: usize },
    #[error("invalid order: {0}")]
    BadOrder(String),
    #[error("unknown scheduling method '{0}'; use one of {names}", names = Method::NAMES.join(", "))]
    UnknownMethod(String),
    #[error("{0}")]
    BadOption(String),
}
