//! Placement: given buffers with lifetimes and sizes, an offset for each so that buffers live at the
//! same time never share a byte, in the smallest arena.

pub mod auto;
pub mod csv;
pub mod decompose;
pub mod files;
pub mod greedy;
pub mod ilp;
pub mod improve;
pub mod incumbent;
pub mod instances;
pub mod lower_bound;
mod merged_spans;
mod occupancy;
pub mod plan;
pub mod problem;
pub mod random;
pub mod search;
pub mod validate;

pub use incumbent::{Progress, ProgressFn};
pub use lower_bound::max_load;
pub use plan::{plan, Limit, Method, PlanError, PlanOptions, PlanReport, Status};
pub use problem::{Buffer, BufferId, Bytes, Interval, Problem, Solution};
pub use validate::{validate, InvalidPlan};
