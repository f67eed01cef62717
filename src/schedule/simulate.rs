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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(size: u64, producer: OpId, consumers: &[OpId], output: bool) -> Tensor {
        Tensor {
            size: Bytes(size),
            producer,
            consumers: consumers.to_vec(),
            output,
        }
    }

    /// Live bytes at each step by the definition, one tensor and one step at a time: a tensor is live
    /// from its producer's step through its last reader's (its producer's alone when nobody reads
    /// it), or to the end when it is an output.
    fn profile_by_definition(graph: &Graph, order: &[OpId]) -> Vec<u64> {
        let at = |op: OpId| order.iter().position(|&o| o == op).unwrap();
        (0..order.len())
            .map(|step| {
                let live: u64 = graph
                    .tensors()
                    .iter()
                    .filter(|t| {
                        let born = at(t.producer);
                        let mut dies = born;
                        for &c in &t.consumers {
                            dies = dies.max(at(c));
                        }
                        if t.output {
                            dies = order.len() - 1;
                        }
                        born <= step && step <= dies
                    })
                    .map(|t| t.size.0)
                    .sum();
                graph.resident().0 + live
            })
            .collect()
    }

    #[test]
    fn a_tensor_nobody_reads_lives_only_while_its_producer_runs() {
        // op 0 makes 100 unread bytes and 1 byte for op 1; op 2 runs alone.
        let g = Graph::new(
            3,
            vec![t(100, 0, &[], false), t(1, 0, &[1], false)],
            &[(1, 2)],
            Bytes(0),
        )
        .unwrap();
        assert_eq!(memory_profile(&g, &[0, 1, 2]).unwrap(), vec![101, 1, 0]);
        assert_eq!(peak(&g, &[0, 1, 2]).unwrap(), Bytes(101));
    }

    #[test]
    fn outputs_live_to_the_end_and_resident_bytes_throughout() {
        let g = Graph::new(
            3,
            vec![t(8, 0, &[], true), t(4, 1, &[2], false)],
            &[],
            Bytes(1000),
        )
        .unwrap();
        assert_eq!(
            memory_profile(&g, &[0, 1, 2]).unwrap(),
            vec![1008, 1012, 1012]
        );
        assert_eq!(
            memory_profile(&g, &[1, 2, 0]).unwrap(),
            vec![1004, 1004, 1008]
        );
        // No operators: the resident bytes are the peak.
        let empty = Graph::new(0, vec![], &[], Bytes(7)).unwrap();
        assert_eq!(peak(&empty, &[]).unwrap(), Bytes(7));
    }

    #[test]
    fn an_order_that_breaks_a_dependency_is_refused() {
        let g = Graph::new(2, vec![t(4, 0, &[1], false)], &[], Bytes(0)).unwrap();
        assert!(memory_profile(&g, &[1, 0]).is_err());
        assert!(peak(&g, &[0]).is_err(), "an operator is missing");
        assert!(peak(&g, &[0, 0]).is_err(), "an operator runs twice");
    }

    #[test]
    fn the_bound_counts_what_is_saved_across_an_operator() {
        // 0 -> 1 -> 2 -> 3, and op 0 also saves 50 bytes for op 3 (an activation kept for the
        // backward pass): every order holds them while ops 1 and 2 run.
        let g = Graph::new(
            4,
            vec![
                t(10, 0, &[1], false),
                t(10, 1, &[2], false),
                t(10, 2, &[3], false),
                t(50, 0, &[3], false),
            ],
            &[],
            Bytes(0),
        )
        .unwrap();
        assert_eq!(lower_bound(&g), Bytes(70));
        assert_eq!(peak(&g, &[0, 1, 2, 3]).unwrap(), Bytes(70));
    }

    /// A random DAG: operator i's tensors are read by later operators only, so 0..n is an order.
    fn random_graph() -> impl Strategy<Value = Graph> {
        (1usize..7).prop_flat_map(|n| {
            let tensor = (
                0..n,
                1u64..64,
                proptest::collection::vec(0..n, 0..3),
                any::<bool>(),
            );
            (Just(n), proptest::collection::vec(tensor, 0..10), 0u64..16).prop_map(
                |(n, raw, resident)| {
                    let tensors = raw
                        .into_iter()
                        .map(|(p, size, readers, output)| {
                            let consumers: Vec<OpId> =
                                readers.into_iter().filter(|&c| c > p).collect();
                            t(size, p, &consumers, output)
                        })
                        .collect();
                    Graph::new(n, tensors, &[], Bytes(resident)).unwrap()
                },
            )
        })
    }

    /// Every topological order of a small graph.
    fn orders(g: &Graph) -> Vec<Vec<OpId>> {
        fn go(g: &Graph, order: &mut Vec<OpId>, out: &mut Vec<Vec<OpId>>) {
            if order.len() == g.num_ops() {
                out.push(order.clone());
                return;
            }
            for op in 0..g.num_ops() {
                if !order.contains(&op) && g.preds(op).all(|p| order.contains(&p)) {
                    order.push(op);
                    go(g, order, out);
                    order.pop();
                }
            }
        }
        let mut out = Vec::new();
        go(g, &mut Vec::new(), &mut out);
        out
    }

    proptest! {
        #[test]
        fn profiles_and_peaks_follow_the_definition_and_the_bound_holds(g in random_graph()) {
            for order in orders(&g) {
                let by_definition = profile_by_definition(&g, &order);
                prop_assert_eq!(memory_profile(&g, &order).unwrap(), by_definition.clone());
                let max = by_definition.iter().copied().max().unwrap_or(g.resident().0);
                prop_assert_eq!(peak(&g, &order).unwrap(), Bytes(max));
                prop_assert_eq!(peak_unchecked(&g, &order), Bytes(max));
                prop_assert!(lower_bound(&g) <= Bytes(max), "bound {:?} above a peak {}", lower_bound(&g), max);
            }
        }
    }
}
