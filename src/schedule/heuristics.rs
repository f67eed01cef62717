//! Fast schedulers: memory-aware greedy list scheduling, and DFS-/BFS-style orders (after the
//! "DFS" and "list" memory schedulers of XLA's `hlo_memory_scheduler`). Each returns a valid order;
//! [`best_heuristic`] simulates all of them and keeps the one with the lowest peak.

use std::collections::VecDeque;

use super::graph::{Graph, OpId};
use super::simulate::peak_unchecked;
use crate::placement::Bytes;

/// Which quantity the greedy list scheduler minimises first when it picks the next ready operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GreedyKey {
    /// Net change of live bytes after the operator (allocated minus freed), then the transient peak.
    Delta,
    /// The live bytes while the operator runs, then the net change.
    Transient,
}

/// Greedy list scheduling: among the ready operators, run the one that is cheapest for memory now.
/// Ties go to the operator captured first, which keeps the result close to the eager order.
pub fn greedy(graph: &Graph, key: GreedyKey) -> Vec<OpId> {
    let n = graph.num_ops();
    let tensors = graph.tensors();
    // Consumers not yet run, per tensor (the producer is not its own consumer).
    let mut remaining: Vec<usize> = tensors
        .iter()
        .map(|t| {
            let mut cs: Vec<OpId> = t
                .consumers
                .iter()
                .copied()
                .filter(|&c| c != t.producer)
                .collect();
            cs.sort_unstable();
            cs.dedup();
            cs.len()
        })
        .collect();
    let mut indeg = graph.in_degrees();
    let mut ready: Vec<OpId> = (0..n).filter(|&v| indeg[v] == 0).collect();
    let mut order = Vec::with_capacity(n);
    let mut live: i128 = 0;
    let cost = |v: OpId, remaining: &[usize], live: i128| -> (i128, i128) {
        let mut alloc = 0i128;
        let mut freed = 0i128;
        for &t in graph.produces(v) {
            alloc += tensors[t].size.0 as i128;
            if remaining[t] == 0 && !tensors[t].output {
                freed += tensors[t].size.0 as i128;
            }
        }
        for &t in graph.uses(v) {
            if remaining[t] == 1 && !tensors[t].output {
                freed += tensors[t].size.0 as i128;
            }
        }
        (alloc - freed, live + alloc)
    };
    // Loop ends when nothing is ready: the graph is acyclic, so every operator has been placed.
    while let Some((best_idx, _)) = {
        ready
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (delta, transient) = cost(v, &remaining, live);
                let k = match key {
                    GreedyKey::Delta => (delta, transient),
                    GreedyKey::Transient => (transient, delta),
                };
                (i, (k, v))
            })
            .min_by_key(|&(_, k)| k)
    } {
        let v = ready.swap_remove(best_idx);
        let (delta, _) = cost(v, &remaining, live);
        live += delta;
        for &t in graph.uses(v) {
            remaining[t] -= 1;
        }
        order.push(v);
        for s in graph.succs(v) {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.push(s);
            }
        }
    }
    order
}

/// Breadth-first (Kahn with a FIFO queue, captured order among equals): runs wide layers together.
pub fn bfs(graph: &Graph) -> Vec<OpId> {
    let n = graph.num_ops();
    let mut indeg = graph.in_degrees();
    let mut queue: VecDeque<OpId> = (0..n).filter(|&v| indeg[v] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(v) = queue.pop_front() {
        order.push(v);
        let mut succs: Vec<OpId> = graph.succs(v).collect();
        succs.sort_unstable();
        for s in succs {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                queue.push_back(s);
            }
        }
    }
    order
}

/// Depth-first post-order from the sinks, visiting the heaviest operand subtree first (XLA's DFS
/// memory scheduler; Sethi–Ullman's idea): finishing a large subtree before starting the next keeps
/// fewer partial results live. Subtree sizes double-count shared ancestors; they only rank operands.
pub fn dfs(graph: &Graph) -> Vec<OpId> {
    let n = graph.num_ops();
    let topo = graph.stable_topological_order();
    let tensors = graph.tensors();
    let mut subtree = vec![0u64; n];
    for &v in &topo {
        let own: u64 = graph.produces(v).iter().map(|&t| tensors[t].size.0).sum();
        let below: u64 = graph
            .preds(v)
            .map(|p| subtree[p])
            .fold(0u64, u64::saturating_add);
        subtree[v] = own.saturating_add(below);
    }
    let mut visited = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let sinks: Vec<OpId> = (0..n)
        .filter(|&v| graph.succs(v).next().is_none())
        .collect();
    // Iterative post-order: (op, children pushed?) frames, so deep graphs do not overflow the stack.
    let mut stack: Vec<(OpId, bool)> = Vec::new();
    for &root in &sinks {
        stack.push((root, false));
        while let Some((v, expanded)) = stack.pop() {
            if expanded {
                order.push(v);
                continue;
            }
            if visited[v] {
                continue;
            }
            visited[v] = true;
            stack.push((v, true));
            let mut preds: Vec<OpId> = graph.preds(v).filter(|&p| !visited[p]).collect();
            // Pushed last = visited first: the heaviest subtree, then the earliest captured.
            preds.sort_by_key(|&p| (subtree[p], std::cmp::Reverse(p)));
            for p in preds {
                stack.push((p, false));
            }
        }
    }
    order
}

/// The captured order when it is valid, otherwise the closest valid order to it.
pub fn eager(graph: &Graph) -> Vec<OpId> {
    if graph.identity_is_topological() {
        (0..graph.num_ops()).collect()
    } else {
        graph.stable_topological_order()
    }
}

/// Runs every heuristic and returns (order, peak, name) of the best.
pub fn best_heuristic(graph: &Graph) -> (Vec<OpId>, Bytes, &'static str) {
    let candidates: [(&'static str, Vec<OpId>); 5] = [
        ("eager", eager(graph)),
        ("greedy", greedy(graph, GreedyKey::Delta)),
        ("greedy-transient", greedy(graph, GreedyKey::Transient)),
        ("dfs", dfs(graph)),
        ("bfs", bfs(graph)),
    ];
    let mut best: Option<(Vec<OpId>, Bytes, &'static str)> = None;
    for (name, order) in candidates {
        let p = peak_unchecked(graph, &order);
        if best.as_ref().is_none_or(|(_, bp, _)| p < *bp) {
            best = Some((order, p, name));
        }
    }
    best.unwrap_or((Vec::new(), graph.resident(), "eager"))
}
