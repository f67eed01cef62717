//! Several threads allocating and freeing at once (as autograd's worker threads do on GPU), while the
//! runtime records, plans and replays. The interleaving differs every run; correctness must not.

mod runtime_support;

use std::sync::{Arc, Barrier};

use model_opt::placement::PlanOptions;
use model_opt::runtime::{HostBackend, Runtime, RuntimeConfig, HOST_DEVICE};
use runtime_support::{random_program, Driver, Rng};

const THREADS: usize = 4;

fn run_threads(rt: &Runtime, programs: &[Vec<runtime_support::Op>], step_barrier: &Barrier) {
    std::thread::scope(|s| {
        for program in programs {
            s.spawn(move || {
                let mut d = Driver::new(rt, HOST_DEVICE);
                step_barrier.wait();
                d.run_step(program, true);
                d.free_all();
            });
        }
    });
}

#[test]
fn concurrent_threads_never_share_memory() {
    let rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    let programs: Vec<_> = (0..THREADS)
        .map(|t| random_program(&mut Rng::new(500 + t as u64), 150, 2))
        .collect();
    let barrier = Barrier::new(THREADS);

    run_threads(&rt, &programs, &barrier); // passthrough
    rt.begin_profile().unwrap();
    run_threads(&rt, &programs, &barrier);
    rt.end_profile().unwrap();
    let summary = rt
        .plan(&PlanOptions {
            time_limit: std::time::Duration::from_millis(500),
            ..Default::default()
        })
        .unwrap();
    assert!(summary.buffers > 0);

    let mut hits = 0;
    for _ in 0..10 {
        rt.begin_step().unwrap();
        run_threads(&rt, &programs, &barrier);
        let s = rt.end_step().unwrap();
        assert_eq!(
            s.planned_hits + s.persistent_allocations + s.transient_fallbacks,
            s.allocations
        );
        hits += s.planned_hits;
    }
    let st = rt.stats();
    assert_eq!(st.counters.allocated_bytes, 0);
    assert_eq!(st.counters.unknown_frees, 0);
    assert_eq!(st.counters.allocations, st.counters.frees);
    assert!(hits > 0, "some requests should still follow the plan");
}

#[test]
fn one_thread_planned_while_others_allocate_outside_the_plan() {
    // A single-threaded step is profiled; during replay other threads allocate in between. Their
    // requests take planned addresses only when those are free, and the stepping thread's pattern
    // checks prove nobody overlapped.
    let rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    let main_program = random_program(&mut Rng::new(42), 200, 1);
    let mut d = Driver::new(&rt, HOST_DEVICE);
    rt.begin_profile().unwrap();
    d.run_step(&main_program, true);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    let noise: Vec<_> = (0..3)
        .map(|t| random_program(&mut Rng::new(900 + t), 100, 1))
        .collect();
    let barrier = Barrier::new(4);
    for _ in 0..5 {
        rt.begin_step().unwrap();
        std::thread::scope(|s| {
            for program in &noise {
                let (rt, barrier) = (&rt, &barrier);
                s.spawn(move || {
                    let mut n = Driver::new(rt, HOST_DEVICE);
                    barrier.wait();
                    n.run_step(program, true);
                    n.free_all();
                });
            }
            barrier.wait();
            d.run_step(&main_program, true);
        });
        rt.end_step().unwrap();
    }
    d.free_all();
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}
