//! The scheduler's front door: pick a method, respect the time limit, report what was achieved.

use std::str::FromStr;
use std::time::{Duration, Instant};

use super::graph::{Graph, OpId};
use super::heuristics::{best_heuristic, bfs, dfs, eager, greedy, GreedyKey};
use super::ilp::{self, IlpOptions};
use super::simulate::{lower_bound, peak_unchecked};
use super::{window, ScheduleError};
use crate::placement::Bytes;

/// `Method::Ilp` on a graph whose formulation has more variables than this uses windows instead.
const WHOLE_ILP_HARD_LIMIT: usize = 1_000_000;

/// How to schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Heuristics, then the ILP (whole graph when small enough, windows otherwise) until the time limit.
    Auto,
    /// The captured order, unchanged.
    Eager,
    Greedy,
    Dfs,
    Bfs,
    /// The best of all heuristics.
    Heuristic,
    /// The ILP on the whole graph (warm-started from the best heuristic), no windows — unless the
    /// formulation would exceed a million variables, then windows.
    Ilp,
    /// The window decomposition only (warm-started from the best heuristic).
    Window,
}

impl Method {
    pub const NAMES: &'static [&'static str] = &[
        "auto",
        "eager",
        "greedy",
        "dfs",
        "bfs",
        "heuristic",
        "ilp",
        "window",
    ];
}

impl FromStr for Method {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Method, ScheduleError> {
        Ok(match s {
            "auto" => Method::Auto,
            "eager" => Method::Eager,
            "greedy" => Method::Greedy,
            "dfs" => Method::Dfs,
            "bfs" => Method::Bfs,
            "heuristic" => Method::Heuristic,
            "ilp" => Method::Ilp,
            "window" => Method::Window,
            other => return Err(ScheduleError::UnknownMethod(other.to_string())),
        })
    }
}

pub use crate::status::Status;

#[derive(Clone, Copy, Debug)]
pub struct ScheduleOptions {
    pub method: Method,
    pub time_limit: Duration,
    /// Relative MIP gap at which an ILP may stop.
    pub gap: f64,
    /// Operators per window in the decomposition.
    pub window: usize,
    /// The largest whole-graph ILP (run plus keep variables) `Auto` attempts before using windows.
    pub max_ilp_variables: usize,
    /// The most windows the decomposition solves (one ILP each); `None` (the default) for no limit.
    /// Reaching it stops the decomposition as the time limit does (status `time_limit`). Unlike the
    /// time limit it does not depend on how fast or busy the machine is: when each window's ILP
    /// ends within its share of the time limit, the order is the same everywhere (tests use it).
    pub max_windows: Option<usize>,
}

impl Default for ScheduleOptions {
    fn default() -> Self {
        ScheduleOptions {
            method: Method::Auto,
            time_limit: Duration::from_secs(10),
            gap: 0.0,
            window: 48,
            max_ilp_variables: 40_000,
            max_windows: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScheduleReport {
    pub order: Vec<OpId>,
    pub peak: Bytes,
    /// The peak of the captured order.
    pub eager_peak: Bytes,
    /// No order can have a lower peak.
    pub lower_bound: Bytes,
    pub status: Status,
    pub method: String,
    pub elapsed: Duration,
    /// Windows the decomposition solved (0 when it did not run).
    pub windows: usize,
}

/// Schedules `graph` with `options`; the returned order is always valid and never worse than eager.
pub fn schedule(graph: &Graph, options: &ScheduleOptions) -> Result<ScheduleReport, ScheduleError> {
    if !(options.gap.is_finite() && options.gap >= 0.0) {
        return Err(ScheduleError::BadOption(format!(
            "gap {} must be a non-negative number",
            options.gap
        )));
    }
    let started = Instant::now();
    let deadline = started + options.time_limit;
    let bound = lower_bound(graph);
    let eager_order = eager(graph);
    let eager_peak = peak_unchecked(graph, &eager_order);
    let mut status = Status::Feasible;
    let mut windows = 0;
    let (mut order, mut method): (Vec<OpId>, String) = match options.method {
        Method::Eager => (eager_order.clone(), "eager".into()),
        Method::Greedy => (greedy(graph, GreedyKey::Delta), "greedy".into()),
        Method::Dfs => (dfs(graph), "dfs".into()),
        Method::Bfs => (bfs(graph), "bfs".into()),
        Method::Heuristic | Method::Auto | Method::Ilp | Method::Window => {
            let (o, _, name) = best_heuristic(graph);
            (o, name.into())
        }
    };
    let mut peak = peak_unchecked(graph, &order);
    let wants_ilp = matches!(options.method, Method::Auto | Method::Ilp | Method::Window);
    if peak <= bound {
        status = Status::Optimal;
    } else if wants_ilp && graph.num_ops() > 1 {
        let size = ilp::model_size(graph);
        let whole = match options.method {
            // Even when asked for, a model this large would take longer to build than to give up on.
            Method::Ilp => size <= WHOLE_ILP_HARD_LIMIT,
            Method::Window => false,
            _ => size <= options.max_ilp_variables,
        };
        if whole {
            // Auto keeps some time for windows in case the whole ILP stops on its time limit.
            let share = if options.method == Method::Auto {
                0.6
            } else {
                1.0
            };
            let limit = deadline
                .saturating_duration_since(Instant::now())
                .mul_f64(share);
            let solved = ilp::solve(
                graph,
                &order,
                IlpOptions {
                    time_limit: limit,
                    gap: options.gap,
                    lower_bound: bound,
                },
            )
            // Anytime: a solver failure leaves the heuristic order, reported as not proven.
            .unwrap_or(None);
            match solved {
                Some(r) => {
                    if r.peak < peak {
                        order = r.order;
                        peak = r.peak;
                        method = "ilp".into();
                    }
                    // Proven: the best order (the ILP's, or the heuristic's it could not beat) is optimal.
                    status = if r.proven {
                        Status::Optimal
                    } else {
                        Status::TimeLimit
                    };
                }
                None => status = Status::TimeLimit,
            }
        }
        if status != Status::Optimal && (options.method != Method::Ilp || !whole) {
            let w = window::improve_limited(
                graph,
                order.clone(),
                options.window,
                deadline,
                options.max_windows.unwrap_or(usize::MAX),
                options.gap,
            )?;
            windows = w.solved;
            let p = peak_unchecked(graph, &w.order);
            if p < peak {
                order = w.order;
                peak = p;
                method = "ilp-window".into();
            }
            status = if w.proven {
                Status::Feasible
            } else {
                Status::TimeLimit
            };
        }
        if peak <= bound {
            status = Status::Optimal;
        }
    }
    // Never hand back something worse than what the user already runs.
    if eager_peak < peak {
        order = eager_order;
        peak = eager_peak;
        method = "eager".into();
    }
    Ok(ScheduleReport {
        order,
        peak,
        eager_peak,
        lower_bound: bound,
        status,
        method,
        elapsed: started.elapsed(),
        windows,
    })
}
