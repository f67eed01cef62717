//! Which values to free for a fixed order of operators: a 0/1 program on HiGHS.
//!
//! The order comes first (the scheduler's); then each way of freeing a value over a gap between two
//! of its uses (recompute it, or spill it to host memory) is a candidate with a cost and its effect
//! on the live bytes: minus its bytes over the gap, plus the bytes of inputs a recomputation keeps
//! alive until it runs. Per step `t`, the live bytes are `profile[t] + sum_c x_c * delta_c(t)`. Two
//! goals:
//! - **budget**: every step at most `budget` bytes, at the least total cost;
//! - **least peak**: the least peak `P` with the total cost at most an allowance (ties: the cheaper).
//!
//! This is MODel's "preserve / generate / fetch" choice for the order it is given, not the joint
//! program over orders (which grows with steps x tensors and times out on training steps). Steps
//! between two consecutive interval ends have the same candidates active, so one row per such
//! segment (its largest profile value) suffices; rows that no choice can make binding are left out.
//! At most one candidate per group (a value freed over one of its gaps, one way) is chosen.

use std::time::{Duration, Instant};

use good_lp::solvers::highs::highs;
use good_lp::{variable, Expression, ProblemVariables, SolverModel, Variable};
use highs::{HighsModelStatus, HighsSolutionStatus};
use thiserror::Error;

use crate::status::Status;

/// A change of the live bytes over the half-open steps `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effect {
    pub start: usize,
    pub end: usize,
    /// Bytes added (positive) or freed (negative) at each of those steps.
    pub bytes: i64,
}

/// One way of freeing one value: its cost (operations), its effects, its group (at most one
/// candidate of a group is chosen), the candidates it cannot be chosen with, and the effects it has
/// only together with another (`joint`: a recomputation that runs while one of its inputs is freed
/// reads that input's copy, made earlier than it would be).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub cost: f64,
    pub group: usize,
    pub effects: Vec<Effect>,
    pub excludes: Vec<usize>,
    pub joint: Vec<(usize, Vec<Effect>)>,
}

/// The program's columns: one per candidate, then one per joint effect (chosen when both are).
struct Columns<'a> {
    effects: Vec<&'a [Effect]>,
    /// Per joint column (after the candidates'): the two candidates.
    pairs: Vec<(usize, usize)>,
}

impl<'a> Columns<'a> {
    fn of(candidates: &'a [Candidate]) -> Columns<'a> {
        let mut effects: Vec<&[Effect]> = candidates.iter().map(|c| c.effects.as_slice()).collect();
        let mut pairs = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            for (j, e) in &c.joint {
                effects.push(e);
                pairs.push((i, *j));
            }
        }
        Columns { effects, pairs }
    }

    /// Which columns are on when the candidates `chosen` (flags) are.
    fn on(&self, chosen: &[bool]) -> Vec<bool> {
        let mut on = chosen.to_vec();
        on.extend(self.pairs.iter().map(|&(i, j)| chosen[i] && chosen[j]));
        on
    }
}

/// What the choice must achieve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// Every step at most this many bytes, at the least cost.
    Budget(u64),
    /// The least peak with the total cost at most this (None: no limit).
    LeastPeak(Option<f64>),
}

/// The chosen candidates, and what the program knows about them.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Indices into the candidates, ascending.
    pub chosen: Vec<usize>,
    /// The peak of `profile` with the chosen effects applied (the program's own model).
    pub peak: u64,
    pub cost: f64,
    /// A proven lower bound on the objective (the cost for a budget, the peak for the least peak)
    /// over every choice among these candidates.
    pub bound: f64,
    /// `Optimal` (proven within the gap), `TimeLimit` (the best found), `Infeasible` (no choice meets
    /// the budget), or `Feasible` (HiGHS stopped otherwise).
    pub status: Status,
}

#[derive(Debug, Error, PartialEq)]
pub enum SelectError {
    #[error("candidate {index}: effect {start}..{end} is empty or past the {steps} steps")]
    BadEffect {
        index: usize,
        start: usize,
        end: usize,
        steps: usize,
    },
    #[error("candidate {index}: its cost {cost} is not a finite number at least 0")]
    BadCost { index: usize, cost: f64 },
    #[error("candidate {index}: it names candidate {other}, which does not exist")]
    BadExclusion { index: usize, other: usize },
    #[error("the allowance {0} is not a number at least 0")]
    BadAllowance(f64),
    #[error("HiGHS failed: {0}")]
    Solver(String),
}

/// The live bytes of each step with the candidates `chosen` applied (and their joint effects).
pub fn apply(profile: &[u64], candidates: &[Candidate], chosen: &[usize]) -> Vec<i64> {
    let columns = Columns::of(candidates);
    let mut flags = vec![false; candidates.len()];
    chosen.iter().for_each(|&c| flags[c] = true);
    let mut diff = vec![0i64; profile.len() + 1];
    for (effects, on) in columns.effects.iter().zip(columns.on(&flags)) {
        for e in effects.iter().filter(|_| on) {
            diff[e.start] += e.bytes;
            diff[e.end] -= e.bytes;
        }
    }
    let mut run = 0i64;
    profile
        .iter()
        .zip(&diff)
        .map(|(&p, &d)| {
            run += d;
            p as i64 + run
        })
        .collect()
}

/// One row per segment of steps with the same active effects: its largest profile value and the
/// coefficient of each candidate active there.
struct Row {
    value: f64,
    terms: Vec<(usize, f64)>,
}

fn rows(profile: &[u64], columns: &Columns) -> Vec<Row> {
    let n = profile.len();
    let mut cuts: Vec<usize> = vec![0, n];
    for effects in &columns.effects {
        for e in effects.iter() {
            cuts.push(e.start);
            cuts.push(e.end);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    // Per segment (between consecutive cuts), the coefficient per candidate, summed over effects.
    let mut out: Vec<Row> = cuts
        .windows(2)
        .map(|w| Row {
            value: profile[w[0]..w[1]].iter().copied().max().unwrap_or(0) as f64,
            terms: Vec::new(),
        })
        .collect();
    for (i, effects) in columns.effects.iter().enumerate() {
        for e in effects.iter() {
            let first = cuts.partition_point(|&x| x < e.start);
            let last = cuts.partition_point(|&x| x < e.end);
            for row in &mut out[first..last] {
                match row.terms.last_mut() {
                    Some((j, coef)) if *j == i => *coef += e.bytes as f64,
                    _ => row.terms.push((i, e.bytes as f64)),
                }
            }
        }
    }
    out
}

fn check(profile: &[u64], candidates: &[Candidate], goal: Goal) -> Result<(), SelectError> {
    for (index, c) in candidates.iter().enumerate() {
        if !(c.cost.is_finite() && c.cost >= 0.0) {
            return Err(SelectError::BadCost {
                index,
                cost: c.cost,
            });
        }
        if let Some(e) = c
            .effects
            .iter()
            .chain(c.joint.iter().flat_map(|j| &j.1))
            .find(|e| e.start >= e.end || e.end > profile.len())
        {
            return Err(SelectError::BadEffect {
                index,
                start: e.start,
                end: e.end,
                steps: profile.len(),
            });
        }
        let others = c.excludes.iter().chain(c.joint.iter().map(|j| &j.0));
        if let Some(&other) = others.clone().find(|&&o| o >= candidates.len()) {
            return Err(SelectError::BadExclusion { index, other });
        }
    }
    if let Goal::LeastPeak(Some(a)) = goal {
        if a.is_nan() || a < 0.0 {
            return Err(SelectError::BadAllowance(a));
        }
    }
    Ok(())
}

/// Rows solved first (the highest); the rest are added only where a solution exceeds them.
const FIRST_ROWS: usize = 256;

/// Chooses candidates for `goal` within `time_limit` (see the module doc). Rows are generated lazily:
/// the highest first, then every row a solution violates, until none is (each round a fresh solve;
/// a program with fewer rows has a lower optimum, so every round's dual bound is a valid bound).
pub fn select(
    profile: &[u64],
    candidates: &[Candidate],
    goal: Goal,
    time_limit: Duration,
) -> Result<Selection, SelectError> {
    select_rows(profile, candidates, goal, time_limit, FIRST_ROWS)
}

fn select_rows(
    profile: &[u64],
    candidates: &[Candidate],
    goal: Goal,
    time_limit: Duration,
    first_rows: usize,
) -> Result<Selection, SelectError> {
    check(profile, candidates, goal)?;
    let deadline = Instant::now() + time_limit;
    let columns = Columns::of(candidates);
    let all = rows(profile, &columns);
    // A row no choice can push above what some row must stay at (or above the budget) never binds.
    let floor = match goal {
        Goal::Budget(b) => b as f64,
        Goal::LeastPeak(_) => all
            .iter()
            .map(|r| r.value + r.terms.iter().map(|t| t.1.min(0.0)).sum::<f64>())
            .fold(0.0, f64::max),
    };
    let mut binding: Vec<&Row> = all
        .iter()
        .filter(|r| r.value + r.terms.iter().map(|t| t.1.max(0.0)).sum::<f64>() > floor)
        .collect();
    binding.sort_by(|a, b| b.value.total_cmp(&a.value));
    let mut active = vec![false; binding.len()];
    active.iter_mut().take(first_rows).for_each(|a| *a = true);
    let program = Program {
        profile,
        candidates,
        pairs: &columns.pairs,
        goal,
        floor,
    };
    loop {
        let rows: Vec<&Row> = binding
            .iter()
            .zip(&active)
            .filter(|(_, &a)| a)
            .map(|(r, _)| *r)
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let found = program.solve(&rows, left)?;
        let Some(mut solved) = found else {
            return Ok(program.nothing(Status::Infeasible));
        };
        // The rows left out, checked against the solution: over the budget, or over its peak.
        let target = match goal {
            Goal::Budget(b) => b as f64,
            Goal::LeastPeak(_) => solved.objective_peak,
        };
        let mut flags = vec![false; candidates.len()];
        solved
            .selection
            .chosen
            .iter()
            .for_each(|&c| flags[c] = true);
        let chosen = columns.on(&flags);
        let mut added = false;
        for (r, a) in binding.iter().zip(active.iter_mut()) {
            let live = r.value
                + r.terms
                    .iter()
                    .filter(|t| chosen[t.0])
                    .map(|t| t.1)
                    .sum::<f64>();
            if !*a && live > target + 0.5 {
                *a = true;
                added = true;
            }
        }
        if !added || Instant::now() >= deadline {
            if added {
                solved.selection.status = Status::TimeLimit;
            }
            return Ok(solved.selection);
        }
    }
}

/// One solve's answer, with the peak the program's objective holds (the least peak goal).
struct Solved {
    selection: Selection,
    objective_peak: f64,
}

struct Program<'a> {
    profile: &'a [u64],
    candidates: &'a [Candidate],
    pairs: &'a [(usize, usize)],
    goal: Goal,
    floor: f64,
}

impl Program<'_> {
    fn nothing(&self, status: Status) -> Selection {
        Selection {
            chosen: Vec::new(),
            peak: self.profile.iter().copied().max().unwrap_or(0),
            cost: 0.0,
            bound: if status == Status::Infeasible {
                f64::INFINITY
            } else {
                0.0
            },
            status,
        }
    }

    /// Solves the program over `rows`; None when it is infeasible.
    fn solve(&self, rows: &[&Row], time_limit: Duration) -> Result<Option<Solved>, SelectError> {
        let (candidates, goal, floor) = (self.candidates, self.goal, self.floor);
        let mut vars = ProblemVariables::new();
        let mut x: Vec<Variable> = candidates
            .iter()
            .map(|_| vars.add(variable().binary()))
            .collect();
        let total_cost: Expression = candidates.iter().zip(&x).map(|(c, &v)| c.cost * v).sum();
        // A joint column is the product of its two binaries (exact with the three rows below).
        let products: Vec<Variable> = self
            .pairs
            .iter()
            .map(|_| vars.add(variable().min(0.0).max(1.0)))
            .collect();
        let top = self.profile.iter().copied().max().unwrap_or(0) as f64;
        let peak = vars.add(variable().min(0.0).max(top.max(floor)));
        let objective: Expression = match goal {
            Goal::Budget(_) => total_cost.clone(),
            // The peak first; the cost only breaks ties (scaled below one byte).
            Goal::LeastPeak(_) => {
                let scale = 0.5 / candidates.iter().map(|c| c.cost).sum::<f64>().max(1.0);
                peak + scale * total_cost.clone()
            }
        };
        let mut model = vars.minimise(objective).using(highs);
        for (&(i, j), &y) in self.pairs.iter().zip(&products) {
            let (xi, xj) = (x[i], x[j]);
            model.add_constraint((Expression::from(y) - xi - xj).geq(-1.0));
            model.add_constraint((Expression::from(y) - xi).leq(0.0));
            model.add_constraint((Expression::from(y) - xj).leq(0.0));
        }
        x.extend(products);
        match goal {
            Goal::Budget(b) => {
                for r in rows {
                    let lhs: Expression = r.terms.iter().map(|&(i, coef)| coef * x[i]).sum();
                    model.add_constraint((lhs + r.value).leq(b as f64));
                }
            }
            Goal::LeastPeak(allowance) => {
                model.add_constraint(Expression::from(peak).geq(floor));
                for r in rows {
                    let lhs: Expression = r.terms.iter().map(|&(i, coef)| coef * x[i]).sum();
                    model.add_constraint((lhs + r.value - peak).leq(0.0));
                }
                if let Some(a) = allowance {
                    model.add_constraint(total_cost.leq(a));
                }
            }
        }
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, c) in candidates.iter().enumerate() {
            groups.entry(c.group).or_default().push(i);
        }
        for members in groups.values().filter(|m| m.len() > 1) {
            let sum: Expression = members.iter().map(|&i| x[i]).sum();
            model.add_constraint(sum.leq(1.0));
        }
        for (i, c) in candidates.iter().enumerate() {
            for &j in &c.excludes {
                model.add_constraint((x[i] + x[j]).leq(1.0));
            }
        }
        let mut hm = model
            .try_into_inner()
            .map_err(|e| SelectError::Solver(format!("the model was refused: {e}")))?;
        for (name, value) in [
            ("time_limit", time_limit.as_secs_f64().max(0.01)),
            ("mip_rel_gap", 1e-6),
        ] {
            hm.try_set_option(name, value)
                .map_err(|_| SelectError::Solver(format!("option {name} refused")))?;
        }
        hm.try_set_option("output_flag", false)
            .map_err(|_| SelectError::Solver("option output_flag refused".into()))?;
        hm.try_set_option("threads", 1)
            .map_err(|_| SelectError::Solver("option threads refused".into()))?;
        let solved = hm
            .try_solve()
            .map_err(|e| SelectError::Solver(format!("{e:?}")))?;
        let status = solved.status();
        if status == HighsModelStatus::Infeasible {
            return Ok(None);
        }
        if solved.primal_solution_status() != HighsSolutionStatus::Feasible {
            // Nothing found in time: no choice yet (the budget may still be met by one).
            let selection = self.nothing(Status::TimeLimit);
            return Ok(Some(Solved {
                objective_peak: top,
                selection,
            }));
        }
        let solution = solved.get_solution();
        let cols = solution.columns();
        let chosen: Vec<usize> = (0..candidates.len()).filter(|&i| cols[i] > 0.5).collect();
        let live = apply(self.profile, candidates, &chosen);
        let cost = chosen.iter().map(|&i| candidates[i].cost).sum();
        let dual = solved
            .double_info_value(c"mip_dual_bound")
            .ok()
            .filter(|d| d.is_finite())
            .unwrap_or(0.0);
        let bound = match goal {
            Goal::Budget(_) => dual,
            // The objective adds less than half a byte of cost to a whole number of bytes.
            Goal::LeastPeak(_) => (dual - 0.5).ceil().max(0.0),
        };
        Ok(Some(Solved {
            objective_peak: cols[candidates.len() + self.pairs.len()],
            selection: Selection {
                chosen,
                peak: live.iter().copied().max().unwrap_or(0).max(0) as u64,
                cost,
                bound,
                status: match status {
                    HighsModelStatus::Optimal => Status::Optimal,
                    HighsModelStatus::ReachedTimeLimit => Status::TimeLimit,
                    _ => Status::Feasible,
                },
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(cost: f64, group: usize, effects: &[(usize, usize, i64)]) -> Candidate {
        Candidate {
            cost,
            group,
            effects: effects
                .iter()
                .map(|&(start, end, bytes)| Effect { start, end, bytes })
                .collect(),
            excludes: Vec::new(),
            joint: Vec::new(),
        }
    }

    /// The live bytes of each step with `chosen` applied, by the definition (an oracle for `apply`).
    fn live(profile: &[u64], candidates: &[Candidate], chosen: &[usize]) -> Vec<i64> {
        (0..profile.len())
            .map(|t| {
                let mut v = profile[t] as i64;
                let covers = |e: &&Effect| e.start <= t && t < e.end;
                for &c in chosen {
                    v += candidates[c]
                        .effects
                        .iter()
                        .filter(covers)
                        .map(|e| e.bytes)
                        .sum::<i64>();
                    for (other, effects) in &candidates[c].joint {
                        if chosen.contains(other) {
                            v += effects.iter().filter(covers).map(|e| e.bytes).sum::<i64>();
                        }
                    }
                }
                v
            })
            .collect()
    }

    /// Every subset that keeps at most one candidate per group, by brute force.
    fn subsets(candidates: &[Candidate]) -> Vec<Vec<usize>> {
        (0u32..1 << candidates.len())
            .map(|m| {
                (0..candidates.len())
                    .filter(|i| m >> i & 1 == 1)
                    .collect::<Vec<_>>()
            })
            .filter(|s| {
                let mut g: Vec<usize> = s.iter().map(|&i| candidates[i].group).collect();
                g.sort_unstable();
                g.windows(2).all(|w| w[0] != w[1])
            })
            .filter(|s| {
                s.iter()
                    .all(|&i| candidates[i].excludes.iter().all(|j| !s.contains(j)))
            })
            .collect()
    }

    fn random_instance(seed: u64) -> (Vec<u64>, Vec<Candidate>) {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = |n: u64| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 33) % n
        };
        let steps = 4 + next(10) as usize;
        let profile: Vec<u64> = (0..steps).map(|_| 100 + next(400)).collect();
        let candidates = (0..1 + next(9) as usize)
            .map(|i| {
                let start = next(steps as u64 - 1) as usize;
                let end = start + 1 + next((steps - start - 1) as u64 + 1) as usize;
                let mut effects = vec![(start, end.min(steps), -(10 + next(150) as i64))];
                if next(2) == 0 && start > 0 {
                    let k = next(start as u64) as usize;
                    effects.push((k, start, 5 + next(60) as i64)); // an input kept alive
                }
                let mut c = cand((1 + next(50)) as f64, i / 2, &effects);
                if i > 0 && next(3) == 0 {
                    c.excludes.push(next(i as u64) as usize);
                }
                if i > 0 && next(2) == 0 {
                    // Together with an earlier candidate: a copy made earlier (more bytes for a while).
                    let s = next(steps as u64 - 1) as usize;
                    let e = Effect {
                        start: s,
                        end: s + 1 + next((steps - s - 1) as u64 + 1) as usize,
                        bytes: 30 + next(150) as i64,
                    };
                    c.joint.push((
                        next(i as u64) as usize,
                        vec![Effect {
                            end: e.end.min(steps),
                            ..e
                        }],
                    ));
                }
                c
            })
            .collect();
        (profile, candidates)
    }

    #[test]
    fn the_least_cost_under_a_budget_matches_brute_force() {
        for seed in 0..100 {
            let (profile, candidates) = random_instance(seed);
            let top = *profile.iter().max().unwrap();
            let budget = top - top / 5;
            let best = subsets(&candidates)
                .into_iter()
                .filter(|s| {
                    apply(&profile, &candidates, s)
                        .iter()
                        .all(|&v| v <= budget as i64)
                })
                .map(|s| s.iter().map(|&i| candidates[i].cost).sum::<f64>())
                .fold(f64::INFINITY, f64::min);
            // Rows generated from one (most are added as solutions violate them), and all at once.
            let first = 1 + seed as usize % 2 * FIRST_ROWS;
            let got = select_rows(
                &profile,
                &candidates,
                Goal::Budget(budget),
                Duration::from_secs(10),
                first,
            )
            .unwrap();
            if best.is_infinite() {
                assert_eq!(got.status, Status::Infeasible, "seed {seed}");
                continue;
            }
            assert_eq!(got.status, Status::Optimal, "seed {seed}");
            assert!(
                (got.cost - best).abs() < 1e-6,
                "seed {seed}: {} vs {best}",
                got.cost
            );
            assert!(got.peak <= budget, "seed {seed}");
            let modeled = *live(&profile, &candidates, &got.chosen)
                .iter()
                .max()
                .unwrap();
            assert_eq!(got.peak as i64, modeled, "seed {seed}");
            assert!(got.bound <= got.cost + 1e-6);
        }
    }

    #[test]
    fn the_least_peak_within_an_allowance_matches_brute_force() {
        for seed in 0..100 {
            let (profile, candidates) = random_instance(seed);
            let allowance = 40.0;
            let best = subsets(&candidates)
                .into_iter()
                .filter(|s| s.iter().map(|&i| candidates[i].cost).sum::<f64>() <= allowance)
                .map(|s| *live(&profile, &candidates, &s).iter().max().unwrap())
                .min()
                .unwrap();
            let first = 1 + seed as usize % 2 * FIRST_ROWS;
            let got = select_rows(
                &profile,
                &candidates,
                Goal::LeastPeak(Some(allowance)),
                Duration::from_secs(10),
                first,
            )
            .unwrap();
            assert_eq!(got.status, Status::Optimal, "seed {seed}");
            assert_eq!(got.peak as i64, best, "seed {seed}");
            assert!(got.cost <= allowance + 1e-9);
            assert!(got.bound <= got.peak as f64 + 1e-6);
        }
    }

    #[test]
    fn one_candidate_per_group_at_most() {
        // Two ways to free the same bytes: taking both would free them twice.
        let profile = [100, 500, 500, 100];
        let candidates = [cand(1.0, 7, &[(1, 3, -300)]), cand(2.0, 7, &[(1, 3, -300)])];
        let got = select(
            &profile,
            &candidates,
            Goal::LeastPeak(None),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(got.chosen, vec![0]);
        assert_eq!(got.peak, 200);
    }

    #[test]
    fn bad_input_is_refused_with_what_was_wrong() {
        let profile = [1, 2, 3];
        let e = select(
            &profile,
            &[cand(1.0, 0, &[(2, 5, -1)])],
            Goal::Budget(2),
            Duration::from_secs(1),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "candidate 0: effect 2..5 is empty or past the 3 steps"
        );
        let e = select(
            &profile,
            &[cand(f64::NAN, 0, &[(0, 1, -1)])],
            Goal::Budget(2),
            Duration::from_secs(1),
        );
        assert!(matches!(e, Err(SelectError::BadCost { index: 0, .. })));
        let e = select(
            &profile,
            &[],
            Goal::LeastPeak(Some(-1.0)),
            Duration::from_secs(1),
        );
        assert_eq!(e.unwrap_err(), SelectError::BadAllowance(-1.0));
        let mut c = cand(1.0, 0, &[(0, 1, -1)]);
        c.excludes.push(3);
        let e = select(&profile, &[c], Goal::Budget(2), Duration::from_secs(1));
        assert_eq!(
            e.unwrap_err().to_string(),
            "candidate 0: it names candidate 3, which does not exist"
        );
    }
}
