//! `auto` on instances too large for the exact methods: the greedy answer, then the anytime
//! improvement (iterated greedy around the peak) until the time limit.

use std::time::Duration;

use model_opt::placement::{
    plan, validate, Buffer, Bytes, Interval, Method, PlanOptions, Problem, Status,
};

/// The random instances of `benches/placement.rs`: most buffers short-lived, a few living long,
/// sizes skewed towards small, multiples of 512 bytes.
fn random_problem(n: usize, seed: u64) -> Problem {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let horizon = 2 * n as u64;
    let buffers = (0..n)
        .map(|i| {
            let start = next() % horizon;
            let len = if next() % 10 == 0 {
                1 + next() % (horizon / 4).max(1)
            } else {
                1 + next() % 32
            };
            let size = 512 * (1 + (next() % 64) * (next() % 64) / 8);
            Buffer::new(
                format!("r{i}"),
                Interval::new(start, start + len).expect("len >= 1"),
                Bytes(size),
            )
        })
        .collect();
    Problem::new(buffers)
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
