//! The peak of an order, and a lower bound on the peak of every order.

use super::graph::{Graph, OpId, Tensor};
use super::ScheduleError;
use crate::placement::Bytes;

/// Live bytes while each step of `order` runs (resident bytes included). Step `i` counts the tensors
/// allocated at or before `i` and freed at or after `i`: an operator's inputs and outputs together.
pub fn memory_profile(graph: &Graph, order: &[OpId]) -> Result<Vec<u64>, ScheduleError> {
    graph.check_order(order)?;
    Ok(profile_unchecked(graph, order))
}

/// The last step (position in an order of `n` operators, `pos[op]` = its step) at which tensor `t` is
/// live: the end for outputs, else its last consumer, else its producer (a tensor nobody reads).
pub(crate) fn last_step(t: &Tensor, pos: &[usize], n: usize) -> usize {
    let created = pos[t.producer];
    if t.output {
        n - 1
    } else {
        t.consumers
            .iter()
            .map(|&c| pos[c])
            .max()
            .unwrap_or(created)
            .max(created)
    }
}

/// [`memory_profile`] for an order already known to be valid (the schedulers' inner loops).
pub(crate) fn profile_unchecked(graph: &Graph, order: &[OpId]) -> Vec<u64> {
    let n = order.len();
    let mut pos = vec![0usize; graph.num_ops()];
    for (i, &op) in order.iter().enumerate() {
        pos[op] = i;
    }
    // delta[i] is the change of live bytes when step i begins.
    let mut delta = vec![0i128; n + 1];
    for t in graph.tensors() {
        let start = pos[t.producer];
        let last = last_step(t, &pos, n);
        delta[start] += t.size.0 as i128;
        delta[last + 1] -= t.size.0 as i128;
    }
    let mut live = graph.resident().0 as i128;
    delta[..n]
        .iter()
        .map(|d| {
            live += d;
            live as u64
        })
        .collect()
}

/// The largest number of bytes live at one step of `order`.
pub fn peak(graph: &Graph, order: &[OpId]) -> Result<Bytes, ScheduleError> {
    Ok(peak_of_profile(graph, &memory_profile(graph, order)?))
}

pub(crate) fn peak_unchecked(graph: &Graph, order: &[OpId]) -> Bytes {
    peak_of_profile(graph, &profile_unchecked(graph, order))
}

fn peak_of_profile(graph: &Graph, profile: &[u64]) -> Bytes {
    Bytes(profile.iter().copied().max().unwrap_or(graph.resident().0))
}

/// Beyond this many operators [`lower_bound`] skips the reachability part (its bitsets grow as n²).
const REACHABILITY_LIMIT: usize = 40_000;

/// A bound no order can beat: resident bytes plus, for the operator where it is largest, every byte
/// that must be live while that operator runs:
/// - its inputs and outputs (an operator holds both), and
/// - every tensor produced by one of its ancestors and read by one of its descendants (it is created
///   before and still needed after: in a training step, the activations saved for the backward pass),
///   or produced by an ancestor and kept to the end (an output).
///
/// All `output` tensors are also live together at the last step.
pub fn lower_bound(graph: &Graph) -> Bytes {
    let tensors = graph.tensors();
    let n = graph.num_ops();
    let reach = (n <= REACHABILITY_LIMIT).then(|| graph.reachability());
    let per_op = (0..n)
        .map(|op| {
            let touched: Vec<usize> = graph
                .uses(op)
                .iter()
                .chain(graph.produces(op))
                .copied()
                .collect();
            let mut live: u64 = touched.iter().map(|&t| tensors[t].size.0).sum();
            if let Some(r) = &reach {
                live += tensors
                    .iter()
                    .enumerate()
                    .filter(|(i, t)| {
                        !touched.contains(i)
                            && r.is_ancestor(t.producer, op)
                            && (t.output || t.consumers.iter().any(|&c| r.is_descendant(c, op)))
                    })
                    .map(|(_, t)| t.size.0)
                    .sum::<u64>();
            }
            live
        })
        .max()
        .unwrap_or(0);
    let outputs: u64 = tensors.iter().filter(|t| t.output).map(|t| t.size.0).sum();
    graph.resident() + Bytes(per_op.max(outputs))
}
