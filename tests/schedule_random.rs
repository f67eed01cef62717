//! Random small DAGs checked against brute force: the ILP finds the true optimum, the lower bound
//! never exceeds it, and every scheduler returns a valid order no worse than the captured one.

use std::time::Duration;

use model_opt::placement::Bytes;
use model_opt::schedule::{
    heuristics, lower_bound, peak, schedule, Graph, Method, ScheduleOptions, Status, Tensor,
};

/// A tiny deterministic generator (no extra dependency): 64-bit LCG, high bits.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound.max(1)
    }
}

/// Ops `0..n`; each op except the last produces one or two tensors read by one to three later ops;
/// some tensors are outputs; a few extra ordering edges; some resident bytes.
fn random_graph(seed: u64, n: usize) -> Graph {
    random_graph_with_unread(seed, n, false)
}

/// [`random_graph`], where with `unread` some tensors have no reader at all (a result nobody uses,
/// freed right after its producer runs).
fn random_graph_with_unread(seed: u64, n: usize, unread: bool) -> Graph {
    let mut rng = Lcg(seed);
    let mut tensors = Vec::new();
    for v in 0..n - 1 {
        for _ in 0..1 + rng.next(2) {
            let k = 1 + rng.next(3) as usize;
            let mut consumers: Vec<usize> = (0..k)
                .map(|_| v + 1 + rng.next((n - v - 1) as u64) as usize)
                .collect();
            consumers.sort_unstable();
            consumers.dedup();
            if unread && rng.next(6) == 0 {
                consumers.clear();
            }
            tensors.push(Tensor {
                size: Bytes(1 + rng.next(100)),
                producer: v,
                consumers,
                output: rng.next(10) == 0,
            });
        }
    }
    let mut edges = Vec::new();
    for _ in 0..rng.next(3) {
        let u = rng.next(n as u64 - 1) as usize;
        let v = u + 1 + rng.next((n - u - 1) as u64) as usize;
        edges.push((u, v));
    }
    Graph::new(n, tensors, &edges, Bytes(rng.next(50))).expect("generated graphs are acyclic")
}

/// The live bytes at the peak of `order`, counted step by step from the definition, independently of
/// the simulator: while step `i` runs, a tensor is live from its producer's step to its last reader's
/// step (to the end for an output; only at its producer's step when nothing reads it), plus the
/// resident bytes.
fn peak_by_definition(graph: &Graph, order: &[usize]) -> Bytes {
    let step_of = |op: usize| order.iter().position(|&o| o == op).unwrap();
    (0..order.len())
        .map(|i| {
            let live: u64 = graph
                .tensors()
                .iter()
                .filter(|t| {
                    let born = step_of(t.producer);
                    let dies = if t.output {
                        order.len() - 1
                    } else {
                        t.consumers
                            .iter()
                            .map(|&c| step_of(c))
                            .fold(born, usize::max)
                    };
                    born <= i && i <= dies
                })
                .map(|t| t.size.0)
                .sum();
            graph.resident().0 + live
        })
        .max()
        .map_or(graph.resident(), Bytes)
}

/// The lowest peak over every topological order (exhaustive; fine up to ~8 operators), each order
/// scored by [`peak_by_definition`]; the simulator's `peak` must agree on every one.
fn brute_force(graph: &Graph) -> Bytes {
    fn go(g: &Graph, order: &mut Vec<usize>, placed: &mut Vec<bool>, best: &mut Bytes) {
        if order.len() == g.num_ops() {
            let p = peak_by_definition(g, order);
            assert_eq!(
                peak(g, order).expect("complete orders built here are valid"),
                p,
                "order {order:?}"
            );
            *best = (*best).min(p);
            return;
        }
        for v in 0..g.num_ops() {
            if !placed[v] && g.preds(v).all(|p| placed[p]) {
                placed[v] = true;
                order.push(v);
                go(g, order, placed, best);
                order.pop();
                placed[v] = false;
            }
        }
    }
    let mut best = Bytes(u64::MAX);
    go(
        graph,
        &mut Vec::new(),
        &mut vec![false; graph.num_ops()],
        &mut best,
    );
    best
}

fn opts(method: Method) -> ScheduleOptions {
    ScheduleOptions {
        method,
        time_limit: Duration::from_secs(30),
        ..ScheduleOptions::default()
    }
}

#[test]
fn ilp_matches_brute_force_and_bound_is_valid() {
    for seed in 0..40 {
        let n = 4 + (seed as usize % 5); // 4..=8 operators
        let g = random_graph_with_unread(seed, n, seed % 2 == 1);
        let optimum = brute_force(&g);
        assert!(
            lower_bound(&g) <= optimum,
            "seed {seed}: bound above the optimum"
        );
        let r = schedule(&g, &opts(Method::Ilp)).unwrap();
        g.check_order(&r.order).unwrap();
        assert_eq!(r.peak, optimum, "seed {seed}: ILP peak is not the optimum");
        assert_eq!(r.status, Status::Optimal, "seed {seed}");
    }
}

#[test]
fn every_method_returns_a_valid_order_never_worse_than_eager() {
    for seed in 100..130 {
        let g = random_graph(seed, 12 + seed as usize % 20);
        let eager_peak = peak(&g, &heuristics::eager(&g)).unwrap();
        for m in [
            Method::Eager,
            Method::Greedy,
            Method::Dfs,
            Method::Bfs,
            Method::Heuristic,
            Method::Auto,
        ] {
            let r = schedule(
                &g,
                &ScheduleOptions {
                    time_limit: Duration::from_secs(2),
                    ..opts(m)
                },
            )
            .unwrap();
            g.check_order(&r.order).unwrap();
            assert_eq!(peak(&g, &r.order).unwrap(), r.peak, "seed {seed} {m:?}");
            assert!(r.peak >= r.lower_bound, "seed {seed} {m:?}");
            if !matches!(m, Method::Greedy | Method::Dfs | Method::Bfs) {
                assert!(r.peak <= eager_peak, "seed {seed} {m:?}");
            }
        }
    }
}

/// The decomposition stopped by its budget of windows, not by the clock: each window's ILP has
/// far more time than it needs (the ten windows take about 1.2 s here), so the order it reaches is
/// the same on any machine.
#[test]
fn windows_improve_large_graphs_within_their_budget_of_windows() {
    let g = random_graph(7, 300);
    let heuristic = schedule(&g, &opts(Method::Heuristic)).unwrap();
    let r = schedule(
        &g,
        &ScheduleOptions {
            window: 16,
            max_windows: Some(10),
            time_limit: Duration::from_secs(120),
            ..opts(Method::Window)
        },
    )
    .unwrap();
    g.check_order(&r.order).unwrap();
    assert_eq!(r.windows, 10, "stopped by its budget");
    assert_eq!(r.status, Status::TimeLimit);
    assert!(r.peak < heuristic.peak, "{} >= {}", r.peak, heuristic.peak);
    assert_eq!(r.method, "ilp-window");
}

/// Without a budget of windows the time limit stops the decomposition (35 windows, 33 s here,
/// before it runs out of windows to try); only a decomposition that ignored the clock could miss
/// the generous bound on the elapsed time.
#[test]
fn windows_obey_the_time_limit() {
    let g = random_graph(7, 300);
    let heuristic = schedule(&g, &opts(Method::Heuristic)).unwrap();
    let limit = Duration::from_secs(1);
    let r = schedule(
        &g,
        &ScheduleOptions {
            window: 16,
            time_limit: limit,
            ..opts(Method::Window)
        },
    )
    .unwrap();
    assert!(r.elapsed < limit * 10, "{:?}", r.elapsed);
    assert_eq!(r.status, Status::TimeLimit);
    g.check_order(&r.order).unwrap();
    assert!(r.peak <= heuristic.peak);
}
