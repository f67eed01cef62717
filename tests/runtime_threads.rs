//! Several threads allocating and freeing at once (as autograd's worker threads do on GPU), while the
//! runtime records, plans and replays. The interleaving differs every run; correctness must not.

mod runtime_support;

use std::sync::{Arc, Barrier};

use model_opt::placement::PlanOptions;
use model_opt::runtime::{HostBackend, Runtime, RuntimeConfig, StepStats, HOST_DEVICE};
use runtime_support::{persistent_ids, random_program, Driver, Op, Rng};

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
        rt.begin_step(None).unwrap();
        run_threads(&rt, &programs, &barrier);
        let s = rt.end_step().unwrap();
        // Every request is accounted for once. (The threads interleave differently every step, so
        // most steps are new signatures: recorded, served unplanned, and planned.)
        assert_eq!(
            s.planned_hits
                + s.persistent_allocations
                + s.transient_fallbacks
                + s.unplanned_allocations,
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

/// `program` with every allocation moved to `stream`.
fn on_stream(program: &[Op], stream: usize) -> Vec<Op> {
    program
        .iter()
        .map(|op| match *op {
            Op::Alloc { id, size, .. } => Op::Alloc { id, size, stream },
            free => free,
        })
        .collect()
}

/// Runs one step: `noise` programs on their own threads while this thread runs `main_program`.
fn step_with_noise(
    rt: &Runtime,
    d: &mut Driver<'_>,
    main_program: &[Op],
    noise: &[Vec<Op>],
    barrier: &Barrier,
) -> StepStats {
    rt.begin_step(None).unwrap();
    std::thread::scope(|s| {
        for program in noise {
            s.spawn(move || {
                let mut n = Driver::new(rt, HOST_DEVICE);
                barrier.wait();
                n.run_step(program, true);
                n.free_all();
            });
        }
        barrier.wait();
        d.run_step(main_program, true);
    });
    rt.end_step().unwrap()
}

#[test]
fn one_thread_planned_while_others_allocate_outside_the_plan() {
    // A single-threaded step is profiled; during replay other threads allocate in between. The
    // stepping thread's pattern checks prove nobody overlapped.
    let rt = Runtime::new(
        Arc::new(HostBackend::new()),
        RuntimeConfig {
            // Noise diverges on purpose: keep the plan for the whole step and do not re-plan from
            // a noisy step, so what the planned thread gets can be counted exactly.
            max_divergences: 10_000,
            auto_replan: false,
            ..RuntimeConfig::default()
        },
    );
    let main_program = random_program(&mut Rng::new(42), 200, 1);
    let main_allocs = main_program
        .iter()
        .filter(|op| matches!(op, Op::Alloc { .. }))
        .count() as u64;
    let persistent = persistent_ids(&main_program).len() as u64;
    assert!(persistent > 0 && persistent < main_allocs);
    let mut d = Driver::new(&rt, HOST_DEVICE);
    rt.begin_profile().unwrap();
    d.run_step(&main_program, true);
    rt.end_profile().unwrap();
    let summary = rt.plan(&PlanOptions::default()).unwrap();
    assert_eq!(summary.buffers as u64, main_allocs - persistent);
    assert_eq!(summary.persistent_buffers as u64, persistent);
    let barrier = Barrier::new(4);

    // Noise on another stream is never matched to a plan entry (the plan has stream 0 only): each
    // noise request is one divergence served by the fallback, and the planned thread gets every
    // transient buffer at its planned address, however the threads interleave.
    let noise: Vec<_> = (0..3)
        .map(|t| on_stream(&random_program(&mut Rng::new(900 + t), 100, 1), 1))
        .collect();
    for i in 0..5 {
        let s = step_with_noise(&rt, &mut d, &main_program, &noise, &barrier);
        assert_eq!(s.allocations, main_allocs + 300, "step {i}");
        assert_eq!(s.planned_hits, main_allocs - persistent, "step {i}: {s:?}");
        assert_eq!(s.persistent_allocations, persistent, "step {i}: {s:?}");
        assert_eq!(s.divergences, 300, "step {i}: {s:?}");
        assert_eq!(s.transient_fallbacks, 300, "step {i}: {s:?}");
        assert!(!s.abandoned, "step {i}");
    }
    let st = rt.stats();
    assert_eq!(st.counters.planned_hits, 5 * (main_allocs - persistent));
    assert_eq!(st.counters.divergences, 5 * 300);
    assert_eq!(st.counters.abandoned_steps, 0);
    assert_eq!(st.counters.auto_replans, 0);

    // Noise on the plan's own stream competes for its entries: who gets which entry depends on the
    // interleaving, but every request is counted once, a planned address is handed out only when
    // its bytes are free (the pattern checks), and the plan still serves most of the step.
    let noise: Vec<_> = noise.iter().map(|p| on_stream(p, 0)).collect();
    for i in 0..5 {
        let s = step_with_noise(&rt, &mut d, &main_program, &noise, &barrier);
        assert_eq!(s.allocations, main_allocs + 300, "step {i}");
        assert_eq!(
            s.planned_hits + s.persistent_allocations + s.transient_fallbacks,
            s.allocations,
            "step {i}: {s:?}"
        );
        assert_eq!(s.transient_fallbacks, s.divergences, "step {i}: {s:?}");
        assert!(s.planned_hits > 0, "step {i}: {s:?}");
    }
    d.free_all();
    let st = rt.stats();
    assert_eq!(st.counters.allocated_bytes, 0);
    assert_eq!(st.counters.unknown_frees, 0);
    assert_eq!(st.counters.allocations, st.counters.frees);
}
