//! The scheduling ILP after MODel (Steiner, Elhoushi, Kahn, Hegarty: "MODel: Memory Optimizations for
//! Deep Learning", ICML 2023), solved with HiGHS through good_lp.
//!
//! MODel's formulation has, per tensor and time step, binaries for "created" and "kept", restricted to
//! ASAP/ALAP windows, memory per step, and minimises the peak. This is an equivalent reformulation of
//! it (one operator per step, `T = n`): "created" is expressed through cumulative "has run by step t"
//! binaries per operator, and "kept" is implied by them, so it can be continuous. That leaves one binary
//! per operator and step (instead of two per tensor and step), turns every precedence into two-variable
//! rows, and keeps the windows:
//! - `done[v][t]` = operator `v` has run at or before step `t`; 0 before its ASAP step (its number of
//!   ancestors), 1 from its ALAP step (`n - 1 -` its number of descendants), monotone in between;
//!   `v` runs ("creates" its outputs) at `t` exactly when `done[v][t] - done[v][t-1] = 1`;
//! - `sum_v done[v][t] = t + 1` (one operator per step); `done[v][t] <= done[u][t-1]` per edge `u -> v`;
//! - `keep[e][t] >= done[p][t-1] - done[c][t-1]` for each consumer `c` of tensor `e` produced by `p`
//!   (created before `t` and still needed at `t`); outputs: `keep[e][t] >= done[p][t-1]`;
//!   `keep` is continuous in `[0, 1]`: the objective pushes it down to exactly that bound;
//! - per step, created + kept bytes `<= peak`; `peak >=` the combinatorial lower bound; minimise peak.
//!
//! Warm-started from the best heuristic order, with a time limit and a relative gap. The window
//! decomposition in `window.rs` applies the same ILP to slices of large graphs.

use std::time::Duration;

use good_lp::solvers::highs::highs;
use good_lp::{
    variable, Expression, ProblemVariables, ResolutionError, Solution, SolutionStatus, SolverModel,
    Variable,
};

use super::graph::{Graph, OpId};
use super::simulate::{peak_unchecked, profile_unchecked};
use crate::placement::Bytes;

/// Solver settings for one ILP.
#[derive(Clone, Copy, Debug)]
pub struct IlpOptions {
    pub time_limit: Duration,
    /// Relative MIP gap at which HiGHS may stop (0 = prove optimality).
    pub gap: f64,
    /// A known lower bound on the peak (resident bytes included); tightens the relaxation.
    pub lower_bound: Bytes,
}

/// What one ILP solve produced.
#[derive(Clone, Debug)]
pub struct IlpResult {
    pub order: Vec<OpId>,
    pub peak: Bytes,
    /// HiGHS proved the order optimal (within `gap`) for this graph.
    pub proven: bool,
}

/// Step windows: operator `v` can only run in `asap[v]..=alap[v]`.
struct Windows {
    asap: Vec<usize>,
    alap: Vec<usize>,
}

impl Windows {
    fn new(graph: &Graph) -> Windows {
        let n = graph.num_ops();
        let (anc, desc) = graph.ancestor_descendant_counts();
        Windows {
            asap: anc,
            alap: (0..n).map(|v| n - 1 - desc[v]).collect(),
        }
    }

    /// Steps at which tensor-of-producer `p` may have to be kept for consumer range ending `last`.
    fn keep_range(&self, p: OpId, last: usize) -> std::ops::Range<usize> {
        (self.asap[p] + 1)..(last + 1).max(self.asap[p] + 1)
    }
}

/// Number of `done` plus `keep` variables the formulation would create; used to decide whether the
/// whole graph is small enough for one ILP.
pub fn model_size(graph: &Graph) -> usize {
    let w = Windows::new(graph);
    let n = graph.num_ops();
    let dones: usize = (0..n).map(|v| w.alap[v] - w.asap[v]).sum();
    let keeps: usize = graph
        .tensors()
        .iter()
        .map(|t| {
            let last = if t.output {
                n - 1
            } else {
                t.consumers.iter().map(|&c| w.alap[c]).max().unwrap_or(0)
            };
            w.keep_range(t.producer, last).len()
        })
        .sum();
    dones + keeps
}

/// `done[v][t]` as an expression: a constant outside the operator's window, a variable inside.
struct Done {
    asap: usize,
    alap: usize,
    vars: Vec<Variable>, // steps asap..alap (exclusive of alap, where it is fixed to 1)
}

impl Done {
    fn at(&self, t: isize) -> Term {
        if t < self.asap as isize {
            Term::Const(0.0)
        } else if t >= self.alap as isize {
            Term::Const(1.0)
        } else {
            Term::Var(self.vars[t as usize - self.asap])
        }
    }
}

#[derive(Clone, Copy)]
enum Term {
    Const(f64),
    Var(Variable),
}

impl Term {
    fn add_to(self, e: &mut Expression, coef: f64) {
        match self {
            Term::Const(c) => *e += coef * c,
            Term::Var(v) => e.add_mul(coef, v),
        }
    }

    fn is_var(self) -> bool {
        matches!(self, Term::Var(_))
    }
}

/// Solves the ILP for `graph`, warm-started from `warm` (a valid order). Returns `None` when HiGHS
/// finds no usable order; the caller keeps the warm start.
pub fn solve(
    graph: &Graph,
    warm: &[OpId],
    options: IlpOptions,
) -> Result<Option<IlpResult>, ResolutionError> {
    let n = graph.num_ops();
    if n <= 1 {
        return Ok(None);
    }
    let tensors = graph.tensors();
    // Scale bytes so the largest coefficient is about 1e6: HiGHS is happier with moderate numbers,
    // and the exact peak of the result is recomputed by the simulator anyway.
    let max_size = tensors.iter().map(|t| t.size.0).max().unwrap_or(1).max(1) as f64;
    let unit = (max_size / 1e6).max(1.0);
    let scaled = |b: u64| b as f64 / unit;
    let w = Windows::new(graph);
    let mut pos = vec![0usize; n];
    for (i, &v) in warm.iter().enumerate() {
        pos[v] = i;
    }
    let resident = graph.resident().0;
    let warm_peak = profile_unchecked(graph, warm)
        .into_iter()
        .max()
        .unwrap_or(resident);

    let mut vars = ProblemVariables::new();
    let done: Vec<Done> = (0..n)
        .map(|v| Done {
            asap: w.asap[v],
            alap: w.alap[v],
            vars: (w.asap[v]..w.alap[v])
                .map(|t| {
                    vars.add(
                        variable()
                            .binary()
                            .initial(if pos[v] <= t { 1.0 } else { 0.0 }),
                    )
                })
                .collect(),
        })
        .collect();
    // keep[e]: (first step, variables), with the warm start's liveness as the initial value.
    let keep: Vec<(usize, Vec<Variable>)> = tensors
        .iter()
        .map(|t| {
            let consumers = t.consumers.iter().filter(|&&c| c != t.producer);
            let last_alap = if t.output {
                n - 1
            } else {
                consumers.clone().map(|&c| w.alap[c]).max().unwrap_or(0)
            };
            let range = w.keep_range(t.producer, last_alap);
            let created = pos[t.producer];
            let last_use = if t.output {
                n - 1
            } else {
                consumers.map(|&c| pos[c]).max().unwrap_or(created)
            };
            let vs = range
                .clone()
                .map(|s| {
                    let live = created < s && s <= last_use;
                    vars.add(
                        variable()
                            .min(0.0)
                            .max(1.0)
                            .initial(if live { 1.0 } else { 0.0 }),
                    )
                })
                .collect();
            (range.start, vs)
        })
        .collect();
    let bound = scaled(options.lower_bound.0.saturating_sub(resident));
    let peak_var = vars.add(
        variable()
            .min(bound)
            .initial(scaled(warm_peak.saturating_sub(resident)).max(bound)),
    );

    let mut model = highs(vars.minimise(peak_var))
        .set_time_limit(options.time_limit.as_secs_f64().max(0.01))
        .set_threads(1);
    if options.gap.is_finite() && options.gap > 0.0 {
        model = model.set_option("mip_rel_gap", options.gap);
    }
    // HiGHS's own log, for diagnosing slow solves.
    if std::env::var_os("MODEL_OPT_ILP_LOG").is_some() {
        model.set_verbose(true);
    }

    // Monotone "done", and one operator per step.
    let mut count: Vec<Expression> = vec![Expression::default(); n];
    for d in &done {
        for i in 1..d.vars.len() {
            model.add_constraint(Expression::from(d.vars[i - 1]).leq(d.vars[i]));
        }
        for (t, c) in count.iter_mut().enumerate() {
            d.at(t as isize).add_to(c, 1.0);
        }
    }
    for (t, c) in count.into_iter().enumerate() {
        model.add_constraint(c.eq((t + 1) as f64));
    }
    // Precedence: v done by t only if u done by t - 1; trivial outside both windows.
    for v in 0..n {
        for u in graph.preds(v) {
            for t in w.asap[v]..=w.alap[u].min(n - 1) {
                let (dv, du) = (done[v].at(t as isize), done[u].at(t as isize - 1));
                if dv.is_var() || du.is_var() {
                    let mut e = Expression::default();
                    dv.add_to(&mut e, 1.0);
                    du.add_to(&mut e, -1.0);
                    model.add_constraint(e.leq(0.0));
                }
            }
        }
    }
    // Keep: created before t and some consumer not done before t.
    for (e, t) in tensors.iter().enumerate() {
        let (first, vs) = &keep[e];
        for (i, &k) in vs.iter().enumerate() {
            let s = (first + i) as isize;
            let dp = done[t.producer].at(s - 1);
            if t.output {
                let mut ex = Expression::from(k);
                dp.add_to(&mut ex, -1.0);
                model.add_constraint(ex.geq(0.0));
                continue;
            }
            for &c in t.consumers.iter().filter(|&&c| c != t.producer) {
                let dc = done[c].at(s - 1);
                match (dp, dc) {
                    // Producer surely not done, or consumer surely done, before s: nothing to keep.
                    (Term::Const(p), _) if p < 0.5 => continue,
                    (_, Term::Const(c)) if c > 0.5 => continue,
                    _ => {}
                }
                let mut ex = Expression::from(k);
                dp.add_to(&mut ex, -1.0);
                dc.add_to(&mut ex, 1.0);
                model.add_constraint(ex.geq(0.0));
            }
        }
    }
    // Memory per step: created (done[v][t] - done[v][t-1]) plus kept bytes.
    let mut mem: Vec<Expression> = vec![Expression::default(); n];
    for (v, d) in done.iter().enumerate() {
        let alloc: f64 = graph
            .produces(v)
            .iter()
            .map(|&t| scaled(tensors[t].size.0))
            .sum();
        if alloc > 0.0 {
            for (t, m) in mem.iter_mut().enumerate().take(d.alap + 1).skip(d.asap) {
                d.at(t as isize).add_to(m, alloc);
                d.at(t as isize - 1).add_to(m, -alloc);
            }
        }
    }
    for (e, (first, vs)) in keep.iter().enumerate() {
        let size = scaled(tensors[e].size.0);
        for (i, &k) in vs.iter().enumerate() {
            mem[first + i].add_mul(size, k);
        }
    }
    for m in mem {
        model.add_constraint(m.leq(peak_var));
    }

    let solution = match model.solve() {
        Ok(s) => s,
        Err(ResolutionError::Other("NoSolutionFound")) => return Ok(None),
        Err(e) => return Err(e),
    };
    let proven = matches!(
        solution.status(),
        SolutionStatus::Optimal | SolutionStatus::GapLimit
    );
    // Each operator runs at the first step where it is done.
    let mut at: Vec<(usize, OpId)> = done
        .iter()
        .enumerate()
        .map(|(v, d)| {
            let first = d
                .vars
                .iter()
                .position(|&x| solution.value(x) > 0.5)
                .map_or(d.alap, |i| d.asap + i);
            (first, v)
        })
        .collect();
    at.sort_unstable();
    let order: Vec<OpId> = at.into_iter().map(|(_, v)| v).collect();
    if graph.check_order(&order).is_err() {
        return Ok(None);
    }
    let peak = peak_unchecked(graph, &order);
    Ok(Some(IlpResult {
        order,
        peak,
        proven,
    }))
}
