//! The dataflow graph of one training step: operators, the tensors between them, and resident bytes.
//!
//! Memory model (the convention every scheduler and the simulator share; it reproduces MODel's
//! diamond example exactly):
//! - A tensor is one storage. Its bytes are allocated when its producer runs; while an operator runs,
//!   its inputs are still live, so an operator needs its inputs and its outputs at the same time.
//! - A tensor is freed right after its last consumer has run; a tensor with no consumer is freed right
//!   after its producer. A tensor marked `output` is kept until the end of the step.
//! - Resident bytes (parameters, buffers, optimizer state, the step's inputs) are live throughout.
//!
//! Views share their base's storage, so they are consumers of the base tensor, not tensors of their own;
//! the capture side (`python/model_opt/capture.py`) does that mapping.

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};

use super::ScheduleError;
use crate::placement::Bytes;

/// Index of an operator in its [`Graph`] (also its position in the captured order).
pub type OpId = usize;

/// One tensor (storage) of the step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub size: Bytes,
    /// The operator that allocates it.
    pub producer: OpId,
    /// Every operator that reads or writes it (views of it included); order does not matter.
    pub consumers: Vec<OpId>,
    /// Kept live until the end of the step (a returned value such as the loss).
    pub output: bool,
}

/// Operators `0..num_ops`, tensors between them, extra ordering edges (mutations), resident bytes.
#[derive(Clone, Debug)]
pub struct Graph {
    num_ops: usize,
    tensors: Vec<Tensor>,
    resident: Bytes,
    /// Operators as nodes (node index == op id); an edge `u -> v` means `u` must run before `v`.
    dag: DiGraph<(), ()>,
    /// Per operator: the tensors it produces and the tensors it reads (both deduplicated).
    produces: Vec<Vec<usize>>,
    uses: Vec<Vec<usize>>,
}

impl Graph {
    /// Builds and checks a graph. `edges` are ordering constraints beyond producer -> consumer (for
    /// example, a read of a parameter must precede the in-place update of that parameter).
    pub fn new(
        num_ops: usize,
        tensors: Vec<Tensor>,
        edges: &[(OpId, OpId)],
        resident: Bytes,
    ) -> Result<Graph, ScheduleError> {
        let mut dag = DiGraph::<(), ()>::with_capacity(num_ops, tensors.len() + edges.len());
        for _ in 0..num_ops {
            dag.add_node(());
        }
        let check = |op: OpId, what: &str| {
            if op < num_ops {
                Ok(())
            } else {
                Err(ScheduleError::UnknownOp {
                    op,
                    num_ops,
                    context: what.to_string(),
                })
            }
        };
        let mut produces = vec![Vec::new(); num_ops];
        let mut uses = vec![Vec::new(); num_ops];
        for (t, tensor) in tensors.iter().enumerate() {
            check(tensor.producer, &format!("producer of tensor {t}"))?;
            produces[tensor.producer].push(t);
            for &c in &tensor.consumers {
                check(c, &format!("consumer of tensor {t}"))?;
                if c == tensor.producer {
                    // An op that writes its own output again (e.g. a fused in-place tail) adds no constraint.
                    continue;
                }
                if !uses[c].contains(&t) {
                    uses[c].push(t);
                    dag.update_edge(NodeIndex::new(tensor.producer), NodeIndex::new(c), ());
                }
            }
        }
        for &(u, v) in edges {
            check(u, "edge source")?;
            check(v, "edge target")?;
            if u == v {
                return Err(ScheduleError::Cycle { op: u });
            }
            dag.update_edge(NodeIndex::new(u), NodeIndex::new(v), ());
        }
        if let Err(cycle) = toposort(&dag, None) {
            return Err(ScheduleError::Cycle {
                op: cycle.node_id().index(),
            });
        }
        Ok(Graph {
            num_ops,
            tensors,
            resident,
            dag,
            produces,
            uses,
        })
    }

    pub fn num_ops(&self) -> usize {
        self.num_ops
    }

    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    pub fn resident(&self) -> Bytes {
        self.resident
    }

    /// Tensors produced by `op`.
    pub fn produces(&self, op: OpId) -> &[usize] {
        &self.produces[op]
    }

    /// Tensors read (or written in place) by `op`, excluding its own outputs.
    pub fn uses(&self, op: OpId) -> &[usize] {
        &self.uses[op]
    }

    /// Operators that must run right before `op` (its direct predecessors).
    pub fn preds(&self, op: OpId) -> impl Iterator<Item = OpId> + '_ {
        self.dag
            .neighbors_directed(NodeIndex::new(op), petgraph::Direction::Incoming)
            .map(|n| n.index())
    }

    /// Direct successors of `op`.
    pub fn succs(&self, op: OpId) -> impl Iterator<Item = OpId> + '_ {
        self.dag
            .neighbors_directed(NodeIndex::new(op), petgraph::Direction::Outgoing)
            .map(|n| n.index())
    }

    pub fn in_degrees(&self) -> Vec<usize> {
        (0..self.num_ops).map(|v| self.preds(v).count()).collect()
    }

    /// Checks that `order` runs every operator once and respects every edge.
    pub fn check_order(&self, order: &[OpId]) -> Result<(), ScheduleError> {
        if order.len() != self.num_ops {
            return Err(ScheduleError::BadOrder(format!(
                "the order has {} operators, the graph {}",
                order.len(),
                self.num_ops
            )));
        }
        let mut pos = vec![usize::MAX; self.num_ops];
        for (i, &op) in order.iter().enumerate() {
            if op >= self.num_ops || pos[op] != usize::MAX {
                return Err(ScheduleError::BadOrder(format!(
                    "operator {op} is unknown or repeated"
                )));
            }
            pos[op] = i;
        }
        for e in self.dag.raw_edges() {
            let (u, v) = (e.source().index(), e.target().index());
            if pos[u] > pos[v] {
                return Err(ScheduleError::BadOrder(format!(
                    "operator {v} runs before its predecessor {u}"
                )));
            }
        }
        Ok(())
    }

    /// True when the captured order `0..n` is itself valid.
    pub fn identity_is_topological(&self) -> bool {
        self.dag
            .raw_edges()
            .iter()
            .all(|e| e.source().index() < e.target().index())
    }

    /// A topological order that prefers lower op ids (the captured order when it is valid).
    pub fn stable_topological_order(&self) -> Vec<OpId> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut indeg = self.in_degrees();
        let mut ready: BinaryHeap<Reverse<OpId>> = (0..self.num_ops)
            .filter(|&v| indeg[v] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(self.num_ops);
        while let Some(Reverse(v)) = ready.pop() {
            order.push(v);
            for s in self.succs(v) {
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    ready.push(Reverse(s));
                }
            }
        }
        order
    }

    /// Ancestor and descendant sets of every operator, as bitsets.
    pub fn reachability(&self) -> Reachability {
        let order = self.stable_topological_order();
        let n = self.num_ops;
        let words = n.div_ceil(64);
        let mut anc = vec![0u64; n * words];
        for &v in &order {
            let preds: Vec<OpId> = self.preds(v).collect();
            for p in preds {
                for w in 0..words {
                    let bits = anc[p * words + w];
                    anc[v * words + w] |= bits;
                }
                anc[v * words + p / 64] |= 1 << (p % 64);
            }
        }
        let mut desc = vec![0u64; n * words];
        for &v in order.iter().rev() {
            let succs: Vec<OpId> = self.succs(v).collect();
            for s in succs {
                for w in 0..words {
                    let bits = desc[s * words + w];
                    desc[v * words + w] |= bits;
                }
                desc[v * words + s / 64] |= 1 << (s % 64);
            }
        }
        Reachability { words, anc, desc }
    }

    /// Per operator, the number of ancestors and of descendants (bounds the step at which it can run:
    /// its ASAP and ALAP positions in any order).
    pub fn ancestor_descendant_counts(&self) -> (Vec<usize>, Vec<usize>) {
        let r = self.reachability();
        let n = self.num_ops;
        (
            (0..n).map(|v| r.count_ancestors(v)).collect(),
            (0..n).map(|v| r.count_descendants(v)).collect(),
        )
    }
}

/// Ancestor and descendant bitsets (`n * ceil(n / 64)` words each; fine for a few tens of thousands of
/// operators).
pub struct Reachability {
    words: usize,
    anc: Vec<u64>,
    desc: Vec<u64>,
}

impl Reachability {
    fn row(bits: &[u64], words: usize, v: OpId) -> &[u64] {
        &bits[v * words..(v + 1) * words]
    }

    /// True when `a` must run before `v`.
    pub fn is_ancestor(&self, a: OpId, v: OpId) -> bool {
        Self::row(&self.anc, self.words, v)[a / 64] & (1 << (a % 64)) != 0
    }

    /// True when `d` must run after `v`.
    pub fn is_descendant(&self, d: OpId, v: OpId) -> bool {
        Self::row(&self.desc, self.words, v)[d / 64] & (1 << (d % 64)) != 0
    }

    pub fn count_ancestors(&self, v: OpId) -> usize {
        Self::row(&self.anc, self.words, v)
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum()
    }

    pub fn count_descendants(&self, v: OpId) -> usize {
        Self::row(&self.desc, self.words, v)
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum()
    }
}
