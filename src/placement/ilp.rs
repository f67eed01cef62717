//! Placement as a mixed-integer program, solved by HiGHS through good_lp.
//!
//! An integer offset per buffer (a multiple of its alignment), one binary per pair of buffers whose
//! lifetimes intersect ("i below j" or "j below i"), and the peak `z` to minimize. The big-M of each
//! disjunction is the horizon: the incumbent's peak (or the capacity), the largest offset + size any
//! improving plan can use. Sizes are divided by their common unit (the search's [`Instance`]), and
//! lifetimes only enter through which pairs intersect, so their scale does not matter. The
//! incumbent is the MIP start; HiGHS's dual bound is the proven lower bound it reports.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use good_lp::solvers::highs::highs;
use good_lp::{variable, Expression, ProblemVariables, SolverModel, Variable};
use highs::{HighsModelStatus, HighsSolutionStatus};

use super::incumbent::Anytime;
use super::problem::{Bytes, Solution};
use super::search::{Instance, Item};
use super::validate::InvalidPlan;

/// Above this many intersecting pairs the model is too large to help within seconds.
pub const MAX_PAIRS: usize = 200_000;

/// The limit `auto` uses. HiGHS checks its time limit between root cut rounds, and one round on a
/// model of ~29,000 pairs (challenging J) takes 8 s on this machine: beyond this size the ILP would
/// keep a core busy past the plan's end (see `Model::solve`) for nothing it is likely to find.
pub const AUTO_MAX_PAIRS: usize = 20_000;

#[derive(Clone, Copy, Debug)]
pub(crate) struct IlpOptions {
    pub deadline: Instant,
    pub threads: u32,
    /// Relative gap at which HiGHS may stop (0 proves optimality).
    pub gap: f64,
    /// Decide only whether a plan fits the horizon (no objective), as in capacity mode.
    pub decide: bool,
    /// Skip models with more intersecting pairs than this.
    pub max_pairs: usize,
}

/// How an ILP run ended.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum IlpEnd {
    /// The horizon question is settled: optimal (minimize) or fits / does not fit (decide).
    Proven,
    /// Time ran out; whatever was found and proven has been recorded.
    Stopped,
    /// Not attempted, or HiGHS failed; the reason.
    Skipped(String),
}

/// Runs the ILP for plans with peak <= `horizon` bytes, offering what it finds to `state` and
/// recording HiGHS's dual bound.
pub(crate) fn solve(
    state: &mut Anytime,
    horizon: Bytes,
    opts: IlpOptions,
) -> Result<IlpEnd, InvalidPlan> {
    state.set_phase("ilp");
    let inst = Instance::new(state.problem);
    let h = inst.units(horizon);
    let n = inst.len();
    let items = &inst.items;
    if n == 0 {
        return Ok(IlpEnd::Skipped("no buffers".into()));
    }
    if let Some(i) = items
        .iter()
        .position(|it| it.size > h || it.fixed.is_some_and(|f| f + it.size > h))
    {
        // Nothing fits: the bound is at least this buffer's extent.
        let it = items[i];
        state.prove(Bytes((it.fixed.unwrap_or(0) + it.size) * inst.unit));
        return Ok(IlpEnd::Proven);
    }
    let limit = opts.max_pairs.min(MAX_PAIRS);
    let pairs = intersecting_pairs(&inst, limit);
    if pairs.len() > limit {
        return Ok(IlpEnd::Skipped(format!(
            "more than {limit} intersecting pairs"
        )));
    }
    let seconds = opts
        .deadline
        .saturating_duration_since(Instant::now())
        .as_secs_f64();
    if seconds < 0.01 {
        return Ok(IlpEnd::Stopped);
    }

    let model = Model {
        items: items.as_slice().into(),
        pairs: pairs.as_slice().into(),
        h,
        low: state.bound().0.div_ceil(inst.unit).min(h) as f64,
        decide: opts.decide,
    };
    let start = state.best().filter(|s| s.peak.0 <= h * inst.unit).map(|s| {
        let units: Vec<u64> = s.offsets.iter().map(|o| o.0 / inst.unit).collect();
        let mut cols: Vec<f64> = Vec::with_capacity(n + 1 + pairs.len());
        cols.extend(items.iter().zip(&units).map(|(it, &o)| match it.fixed {
            Some(f) => f as f64,
            None => (o / it.align) as f64,
        }));
        cols.push((s.peak.0 / inst.unit) as f64);
        cols.extend(pairs.iter().map(|&(i, j)| {
            if units[i] + items[i].size <= units[j] {
                1.0
            } else {
                0.0
            }
        }));
        cols
    });
    let had_start = start.is_some();
    let mut solved = match model.solve(start, seconds, opts) {
        Ok(s) => s,
        Err(Unsolved::Late) => return Ok(IlpEnd::Stopped),
        Err(Unsolved::Failed(reason)) => return Ok(IlpEnd::Skipped(reason)),
    };
    if had_start && !opts.decide && solved.feasible {
        // HiGHS (1.16) can report a better objective than the columns it returns, which are then
        // the MIP start's: solved again without the start, in the time left.
        let z = solved.columns.get(n).copied().unwrap_or(f64::NAN);
        if (z - solved.objective).abs() > 0.5 {
            let left = opts
                .deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
            if left >= 0.01 {
                if let Ok(again) = model.solve(None, left, opts) {
                    solved = again;
                }
            }
        }
    }

    let status = solved.status;
    if status == HighsModelStatus::Infeasible {
        if !opts.decide {
            // The horizon is a valid plan's peak: "infeasible" can only be numerical trouble.
            return Ok(IlpEnd::Skipped(
                "HiGHS found the incumbent's horizon infeasible".into(),
            ));
        }
        state.prove(Bytes((h + 1) * inst.unit));
        return Ok(IlpEnd::Proven);
    }
    if solved.feasible {
        let cols = &solved.columns;
        let offsets: Vec<Bytes> = items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let v = cols[i].round().max(0.0) as u64;
                Bytes(
                    match it.fixed {
                        Some(f) => f,
                        None => v * it.align,
                    } * inst.unit,
                )
            })
            .collect();
        let solution = Solution::from_offsets(state.problem, offsets);
        // Integrality tolerances can leave a plan HiGHS accepts and the validator does not: such a
        // plan is dropped, not reported.
        let _ = state.offer(solution, "ilp");
    }
    if !opts.decide {
        if let Some(dual) = solved.dual_bound {
            if dual.is_finite() {
                // Peaks are whole units; a tolerance keeps 2029.9999999 from rounding to 2029.
                state.prove(Bytes((dual - 1e-6).ceil().max(0.0) as u64 * inst.unit));
            }
        }
    }
    match status {
        HighsModelStatus::Optimal => {
            if opts.decide {
                Ok(IlpEnd::Proven)
            } else {
                // Optimal within the gap; with gap 0 the dual bound equals the incumbent.
                Ok(if state.closed() {
                    IlpEnd::Proven
                } else {
                    IlpEnd::Stopped
                })
            }
        }
        _ => Ok(IlpEnd::Stopped),
    }
}

/// The program of one horizon: what [`Model::solve`] builds afresh for each HiGHS run. It owns
/// its data: HiGHS runs on a thread that may outlive the plan (see [`Model::solve`]).
#[derive(Clone)]
struct Model {
    items: Arc<[Item]>,
    pairs: Arc<[(usize, usize)]>,
    /// The horizon, in units.
    h: u64,
    /// A proven lower bound on the peak, in units.
    low: f64,
    decide: bool,
}

/// What a HiGHS run ended with: the parts of its answer that [`solve`] reads.
struct Solved {
    status: HighsModelStatus,
    /// Whether `columns` hold a feasible point.
    feasible: bool,
    columns: Vec<f64>,
    objective: f64,
    dual_bound: Option<f64>,
}

/// Why a HiGHS run gave no answer.
enum Unsolved {
    /// Still running [`LATE`] past the deadline: left to finish on its own thread, unread.
    Late,
    /// HiGHS refused the model or failed; the reason.
    Failed(String),
}

/// How long past the deadline the plan waits for HiGHS.
const LATE: Duration = Duration::from_millis(200);

impl Model {
    /// Builds the program (columns: offsets, the peak, one binary per pair, in that order, which
    /// `start` follows) and solves it within `seconds`, on a thread of its own. HiGHS checks its
    /// time limit only between some of its steps, and one step at the root of a model of some
    /// 15,000 pairs ran 2-3 s past it (perfect packing 400/2: 3.4-4.4 s for limits of 1.2-3 s;
    /// upstream: ERGO-Code/HiGHS#885, #1278). A run still going [`LATE`] past the deadline is
    /// left to finish on its thread (it stops at its next check of the clock) and its answer is
    /// dropped, so the plan keeps its time limit.
    fn solve(
        &self,
        start: Option<Vec<f64>>,
        seconds: f64,
        opts: IlpOptions,
    ) -> Result<Solved, Unsolved> {
        let (tx, rx) = mpsc::channel();
        let model = self.clone();
        let run = move || {
            // The receiver is gone when the plan stopped waiting: nothing to tell.
            let _ = tx.send(model.run_highs(start.as_deref(), seconds, opts));
        };
        let spawned = std::thread::Builder::new()
            .name("model_opt-highs".into())
            .stack_size(16 << 20)
            .spawn(run);
        if spawned.is_err() {
            return Err(Unsolved::Failed("no thread to run HiGHS on".into()));
        }
        let wait = opts.deadline.saturating_duration_since(Instant::now()) + LATE;
        match rx.recv_timeout(wait) {
            Ok(answer) => answer.map_err(Unsolved::Failed),
            Err(RecvTimeoutError::Timeout) => Err(Unsolved::Late),
            Err(RecvTimeoutError::Disconnected) => Err(Unsolved::Failed(
                "HiGHS's thread ended without an answer".into(),
            )),
        }
    }

    /// Builds the program and runs HiGHS on this thread; the reason when HiGHS refuses or fails.
    fn run_highs(
        &self,
        start: Option<&[f64]>,
        seconds: f64,
        opts: IlpOptions,
    ) -> Result<Solved, String> {
        let items = &self.items;
        let (h, hf) = (self.h, self.h as f64);
        let mut vars = ProblemVariables::new();
        let k: Vec<Variable> = items
            .iter()
            .map(|it| match it.fixed {
                Some(f) => vars.add(variable().min(f as f64).max(f as f64)),
                None => vars.add(
                    variable()
                        .integer()
                        .min(0)
                        .max(((h - it.size) / it.align) as f64),
                ),
            })
            .collect();
        let offset = |i: usize| -> Expression {
            match items[i].fixed {
                Some(_) => k[i].into(),
                None => (items[i].align as f64) * k[i],
            }
        };
        let z = vars.add(variable().min(self.low).max(hf));
        let y: Vec<Variable> = self
            .pairs
            .iter()
            .map(|_| vars.add(variable().binary()))
            .collect();
        let objective: Expression = if self.decide {
            Expression::from(0.0)
        } else {
            z.into()
        };
        let mut model = vars.minimise(objective).using(highs);
        for (i, it) in items.iter().enumerate() {
            model.add_constraint((offset(i) + it.size as f64).leq(z));
        }
        for (p, &(i, j)) in self.pairs.iter().enumerate() {
            // y = 1: i below j; y = 0: j below i. M = h suffices since every top is <= h.
            let (si, sj) = (items[i].size as f64, items[j].size as f64);
            model.add_constraint((offset(i) + si - offset(j) + hf * y[p]).leq(hf));
            model.add_constraint((offset(j) + sj - offset(i) - hf * y[p]).leq(0.0));
        }
        let mut hm = model
            .try_into_inner()
            .map_err(|e| format!("HiGHS rejected the model: {e}"))?;
        let options: [(&str, f64); 2] =
            [("time_limit", seconds), ("mip_rel_gap", opts.gap.max(0.0))];
        for (name, value) in options {
            hm.try_set_option(name, value)
                .map_err(|_| format!("HiGHS refused option {name}"))?;
        }
        hm.try_set_option("threads", opts.threads.max(1) as i32)
            .map_err(|_| "HiGHS refused option threads".to_string())?;
        if let Some(cols) = start {
            // A start HiGHS cannot use is only a lost hint.
            let _ = hm.try_set_solution(Some(cols), None, None, None);
        }
        let solved = hm.try_solve().map_err(|e| format!("HiGHS failed: {e:?}"))?;
        let feasible = solved.primal_solution_status() == HighsSolutionStatus::Feasible;
        Ok(Solved {
            status: solved.status(),
            feasible,
            columns: if feasible {
                solved.get_solution().columns().to_vec()
            } else {
                Vec::new()
            },
            objective: solved.objective_value(),
            dual_bound: solved.double_info_value(c"mip_dual_bound").ok(),
        })
    }
}

/// Pairs (i, j), i < j, whose lifetimes intersect and that are not both fixed, by a sweep over
/// first sections; stops once there are more than `limit`.
fn intersecting_pairs(inst: &Instance, limit: usize) -> Vec<(usize, usize)> {
    let items = &inst.items;
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].lo);
    let mut live: Vec<usize> = Vec::new();
    let mut pairs = Vec::new();
    for &i in &order {
        live.retain(|&j| items[j].hi > items[i].lo);
        for &j in &live {
            if items[i].fixed.is_none() || items[j].fixed.is_none() {
                pairs.push((i.min(j), i.max(j)));
            }
        }
        if pairs.len() > limit {
            break;
        }
        live.push(i);
    }
    pairs
}
