//! `auto` on instances too large for the exact methods: the greedy answer, then the anytime
//! improvement (iterated greedy around the peak) until its budget of tries is spent.
//!
//! The improvement is given a number of tries (`max_improve_tries`), not of seconds, and a time
//! limit that is only a guard against a hang: what it finds does not depend on how fast or busy
//! the machine is (tries run one per core, up to four at a time; the budgets below are checked
//! with 1, 2, 3 and 4 at a time).

use std::time::Duration;

use model_opt::placement::random::{self, Shape};
use model_opt::placement::{plan, validate, Limit, Method, PlanOptions, Problem, Status};

fn random_problem(n: usize, seed: u64) -> Problem {
    random::random_problem(n, seed, Shape::Sparse)
}

/// A time limit no plan here comes near: it only stops a hang.
const GUARD: Duration = Duration::from_secs(120);

fn options(method: Method, max_improve_tries: Option<u64>) -> PlanOptions {
    PlanOptions {
        method,
        time_limit: GUARD,
        max_improve_tries,
        ..Default::default()
    }
}

/// Above the exact search's size limit `auto` is greedy plus the improvement: never worse than the
/// greedy portfolio, always valid, stopped by its budget of tries, and strictly better on
/// instances where greedy leaves a gap (both of these improve within 16 tries, about 0.6 s here).
#[test]
fn auto_improves_on_greedy_above_the_exact_methods_limit() {
    const TRIES: u64 = 16;
    let mut improved = 0;
    for seed in [0u64, 4] {
        let n = 12_000;
        let p = random_problem(n, 0x9e37_79b9_7f4a_7c15 ^ n as u64 ^ seed);
        let greedy = plan(&p, &options(Method::Greedy, None)).expect("greedy plans");
        let auto = plan(&p, &options(Method::Auto, Some(TRIES))).expect("auto plans");
        validate(&p, &auto.solution).expect("auto's plan is valid");
        assert!(
            auto.solution.peak <= greedy.solution.peak,
            "seed {seed}: auto {} worse than greedy {}",
            auto.solution.peak,
            greedy.solution.peak
        );
        assert!(auto.solution.peak >= auto.lower_bound);
        assert_eq!(
            auto.search_nodes, 0,
            "seed {seed}: too large for the search"
        );
        if auto.status != Status::Optimal {
            assert_eq!(auto.status, Status::TimeLimit, "seed {seed}");
            assert_eq!(auto.stopped_by, Some(Limit::ImproveTries), "seed {seed}");
            assert_eq!(auto.improve_tries, TRIES, "seed {seed}");
        }
        if auto.solution.peak < greedy.solution.peak {
            improved += 1;
            assert!(
                auto.method.contains("improve("),
                "seed {seed}: {}",
                auto.method
            );
        }
    }
    assert_eq!(
        improved, 2,
        "auto improved on greedy on {improved} instances of 2"
    );
}

/// With a capacity, `auto` stops as soon as a plan fits: here the greedy plan already does.
#[test]
fn auto_stops_once_a_plan_fits_the_capacity() {
    let n = 12_000;
    let p = random_problem(n, 0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let greedy = plan(&p, &options(Method::Greedy, None)).expect("greedy plans");
    let p = p.with_capacity(Some(greedy.solution.peak));
    let auto = plan(&p, &options(Method::Auto, None)).expect("the greedy plan fits");
    assert!(auto.solution.peak <= greedy.solution.peak);
    // It stopped at the first plan that fits: no search, no improvement, the greedy answer.
    assert_eq!(auto.status, Status::Feasible);
    assert!(auto.method.starts_with("auto/greedy("), "{}", auto.method);
    assert_eq!(
        (auto.search_nodes, auto.improve_tries),
        (0, 0),
        "work after a plan fit"
    );
    validate(&p, &auto.solution).expect("valid");
}
