//! Past the order's bound: choosing which values to free (recompute, or spill to host memory) for an
//! order of operators. The candidates, their costs and their effects come from the captured graph
//! (Python, `model_opt.remat`); this part solves the choice.

mod select;

pub use select::{apply, select, Candidate, Effect, Goal, SelectError, Selection};
