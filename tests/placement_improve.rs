//! `auto` on instances too large for the exact methods: the greedy answer, then the anytime
//! improvement (iterated greedy around the peak) until the time limit.

use std::time::Duration;

use model_opt::placement::random::{self, Shape};
use model_opt::placement::{plan, validate, Method, PlanOptions, Problem, Status};

fn random_problem(n: usize, seed: u64) -> Problem {
    random::random_problem(n, seed, Shape::Sparse)
}

fn options(method: Method, seconds: f64) -> PlanOptions {
    PlanOptions {
        method,
        time_limit: Duration::from_secs_f64(seconds),
        ..Default::default()
    }
}

/// Above the exact search's size limit `auto` is greedy plus the improvement: never worse than the
/// greedy portfolio, always valid, and strictly better on instances where greedy leaves a gap.
#[test]
fn auto_improves_on_greedy_above_the_exact_methods_limit() {
    let mut improved = 0;
    for seed in [0u64, 4] {
        let n = 12_000;
        let p = random_problem(n, 0x9e37_79b9_7f4a_7c15 ^ n as u64 ^ seed);
        let greedy = plan(&p, &options(Method::Greedy, 60.0)).expect("greedy plans");
        let auto = plan(&p, &options(Method::Auto, 5.0)).expect("auto plans");
        validate(&p, &auto.solution).expect("auto's plan is valid");
        assert!(
            auto.solution.peak <= greedy.solution.peak,
            "seed {seed}: auto {} worse than greedy {}",
            auto.solution.peak,
            greedy.solution.peak
        );
        assert!(auto.solution.peak >= auto.lower_bound);
        if auto.solution.peak < greedy.solution.peak {
            improved += 1;
            assert!(
                auto.method.contains("improve("),
                "seed {seed}: {}",
                auto.method
            );
        }
    }
    assert!(improved >= 1, "auto improved on greedy on no instance");
}

/// With a capacity, `auto` stops as soon as a plan fits: here the greedy plan already does.
#[test]
fn auto_stops_once_a_plan_fits_the_capacity() {
    let n = 12_000;
    let p = random_problem(n, 0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let greedy = plan(&p, &options(Method::Greedy, 60.0)).expect("greedy plans");
    let p = p.with_capacity(Some(greedy.solution.peak));
    let auto = plan(&p, &options(Method::Auto, 60.0)).expect("the greedy plan fits");
    assert!(auto.solution.peak <= greedy.solution.peak);
    assert_ne!(auto.status, Status::Timeout);
    validate(&p, &auto.solution).expect("valid");
}
