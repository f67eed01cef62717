//! Window decomposition: for graphs too large for one ILP, re-solve consecutive windows of the
//! current order around its peak, with everything outside the window fixed.
//!
//! Fixing the operators outside a window fixes the set of tensors live at its two borders, so the
//! memory of every step outside the window is unchanged and the window's ILP only has to lower the
//! window's own peak. Inside, a window is a small graph: its operators, a virtual first operator that
//! "produces" the tensors already live when the window starts, tensors still needed after the window
//! marked as outputs, and everything live across the whole window folded into resident bytes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::graph::{Graph, OpId, Tensor};
use super::ilp::{self, IlpOptions};
use super::simulate::{last_step, lower_bound, peak_unchecked, profile_unchecked};
use super::ScheduleError;
use crate::placement::Bytes;

/// Improves `order` window by window until no window at the peak improves or time runs out.
/// Returns the improved order and whether every peak window was solved to optimality.
pub fn improve(
    graph: &Graph,
    order: Vec<OpId>,
    window: usize,
    deadline: Instant,
    gap: f64,
) -> Result<(Vec<OpId>, bool), ScheduleError> {
    improve_limited(graph, order, window, deadline, usize::MAX, gap).map(|w| (w.order, w.proven))
}

/// What [`improve_limited`] did.
#[derive(Clone, Debug)]
pub struct Windows {
    /// The improved order.
    pub order: Vec<OpId>,
    /// Every peak window was solved to optimality, and nothing was left to try.
    pub proven: bool,
    /// How many windows were solved (one ILP each).
    pub solved: usize,
}

/// [`improve`], solving at most `max_windows` windows: a limit on work, which unlike the deadline
/// ends the same way on any machine when each window's ILP finishes within its share of time.
pub fn improve_limited(
    graph: &Graph,
    mut order: Vec<OpId>,
    window: usize,
    deadline: Instant,
    max_windows: usize,
    gap: f64,
) -> Result<Windows, ScheduleError> {
    let n = graph.num_ops();
    let window = window.clamp(2, n.max(2));
    let mut tried: HashSet<(usize, u64)> = HashSet::new();
    let mut all_proven = true;
    let mut solved = 0;
    loop {
        let now = Instant::now();
        if now >= deadline || solved >= max_windows {
            return Ok(Windows {
                order,
                proven: false,
                solved,
            });
        }
        let profile = profile_unchecked(graph, &order);
        let peak = profile.iter().copied().max().unwrap_or(0);
        // Candidate windows: centred on each peak step, then shifted by half a window either way.
        let mut candidate = None;
        'find: for (step, _) in profile.iter().enumerate().filter(|&(_, &m)| m == peak) {
            for shift in [0i64, -(window as i64) / 2 + 1, (window as i64) / 2 - 1] {
                let start = (step as i64 - window as i64 / 2 + shift)
                    .clamp(0, (n - window.min(n)) as i64) as usize;
                if tried.insert((start, peak)) {
                    candidate = Some(start);
                    break 'find;
                }
            }
        }
        let Some(start) = candidate else {
            return Ok(Windows {
                order,
                proven: all_proven,
                solved,
            });
        };
        solved += 1;
        let end = (start + window).min(n);
        let remaining = deadline.saturating_duration_since(now);
        // Give one window at most a fifth of what is left, so several peaks get a chance.
        let budget = (remaining / 5)
            .max(Duration::from_millis(200))
            .min(remaining);
        let (sub, ops) = subgraph(graph, &order, start, end)?;
        let local: Vec<OpId> = (0..sub.num_ops()).collect();
        let local_peak = peak_unchecked(&sub, &local);
        let (warm, warm_peak, _) = super::heuristics::best_heuristic(&sub);
        let warm = if warm_peak <= local_peak { warm } else { local };
        let solved = ilp::solve(
            &sub,
            &warm,
            IlpOptions {
                time_limit: budget,
                gap,
                lower_bound: lower_bound(&sub),
            },
        )
        // A failed window keeps the current order of that window.
        .unwrap_or(None);
        let (best, proven) = match solved {
            Some(r) if r.peak < peak_unchecked(&sub, &warm) => (r.order, r.proven),
            Some(r) => (warm, r.proven),
            None => (warm, false),
        };
        all_proven &= proven;
        // Op 0 of the subgraph is the virtual source; it always comes first.
        let rewritten: Vec<OpId> = best
            .into_iter()
            .filter(|&v| v != 0)
            .map(|v| ops[v - 1])
            .collect();
        let mut candidate_order = order[..start].to_vec();
        candidate_order.extend(rewritten);
        candidate_order.extend_from_slice(&order[end..]);
        if graph.check_order(&candidate_order).is_ok()
            && peak_unchecked(graph, &candidate_order) <= Bytes(peak)
        {
            order = candidate_order;
        }
    }
}

/// The window `order[start..end]` as a graph: op 0 is a virtual source, op `i + 1` is `ops[i]`.
fn subgraph(
    graph: &Graph,
    order: &[OpId],
    start: usize,
    end: usize,
) -> Result<(Graph, Vec<OpId>), ScheduleError> {
    let n = graph.num_ops();
    let mut pos = vec![0usize; n];
    for (i, &v) in order.iter().enumerate() {
        pos[v] = i;
    }
    let ops: Vec<OpId> = order[start..end].to_vec();
    let local = |v: OpId| pos[v] - start + 1;
    let inside = |v: OpId| (start..end).contains(&pos[v]);
    let mut resident = graph.resident();
    let mut tensors = Vec::new();
    for t in graph.tensors() {
        let created = pos[t.producer];
        let last = last_step(t, &pos, n);
        if last < start || created >= end {
            continue; // not live in the window
        }
        let consumers: Vec<OpId> = t
            .consumers
            .iter()
            .copied()
            .filter(|&c| inside(c))
            .map(local)
            .collect();
        let needed_after = last >= end;
        if created < start {
            if consumers.is_empty() {
                // Live across the whole window and untouched by it: a constant.
                resident = resident + t.size;
                continue;
            }
            tensors.push(Tensor {
                size: t.size,
                producer: 0,
                consumers,
                output: needed_after,
            });
        } else {
            tensors.push(Tensor {
                size: t.size,
                producer: local(t.producer),
                consumers,
                output: needed_after,
            });
        }
    }
    let mut edges: Vec<(OpId, OpId)> = Vec::new();
    for &v in &ops {
        edges.push((0, local(v)));
        for p in graph.preds(v) {
            if inside(p) {
                edges.push((local(p), local(v)));
            }
        }
    }
    let sub = Graph::new(ops.len() + 1, tensors, &edges, resident)?;
    Ok((sub, ops))
}
