//! Near a full GPU (the stub driver's 256 MiB): the runtime never holds the pool's cache and the arena
//! at once when planning, and a step longer than any planned one gets the idle arena's memory back
//! (as PyTorch's allocator returns its cache before failing), with the arena reserved again, at the
//! new size, when that step is planned.
//!
//! Its own test binary, so the stub's memory holds only this test's allocations.

mod runtime_support;

use std::sync::Arc;

use model_opt::placement::PlanOptions;
use model_opt::runtime::backend::cuda::preload_driver;
use model_opt::runtime::{CudaBackend, Runtime, RuntimeConfig};
use runtime_support::stub_driver::{build_stub, stub_fn};
use runtime_support::{Driver, Op};

const MIB: usize = 1 << 20;

/// One step: a kept 1 MiB buffer (the loss, say) and a temporary of `mib` MiB.
fn step(mib: usize) -> Vec<Op> {
    vec![
        Op::Alloc {
            id: 0,
            size: MIB,
            stream: 0,
        },
        Op::Alloc {
            id: 1,
            size: mib * MIB,
            stream: 0,
        },
        Op::Free { id: 1 },
    ]
}

#[test]
fn a_longer_step_on_a_full_gpu_gets_the_idle_arena_back() {
    preload_driver(build_stub().to_str().unwrap()).unwrap();
    let used: extern "C" fn() -> usize = stub_fn("stub_used_bytes");
    let rt = Runtime::new(Arc::new(CudaBackend::new()), RuntimeConfig::default());
    let mut d = Driver::new(&rt, 0);

    d.run_step(&step(100), true); // warm-up: the pool caches 100 MiB
    rt.begin_profile().unwrap();
    d.run_step(&step(100), true);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    let st = rt.stats();
    assert_eq!(st.arena_bytes, 100 * MIB as u64);
    // The pool's cached 100 MiB went back before the arena was reserved: never 200 MiB at once.
    assert!(
        st.peak_reserved_bytes <= 104 * MIB as u64,
        "peak reserved {} MiB",
        st.peak_reserved_bytes / MIB as u64
    );

    // 170 MiB does not fit beside the idle 100 MiB arena on a 256 MiB device: the arena goes.
    rt.begin_step(None).unwrap();
    d.run_step(&step(170), true);
    let s = rt.end_step().unwrap();
    assert!(s.new_signature, "{s:?}");
    let st = rt.stats();
    assert_eq!(st.counters.arenas_returned, 1);
    assert_eq!(st.counters.out_of_memory, 0);
    assert_eq!(st.plans, 2);
    // Planned at its end: the pool's 170 MiB went back and the arena came back at 170 MiB.
    assert_eq!(st.arena_bytes, 170 * MIB as u64);
    assert!(used() <= 176 * MIB, "stub holds {} MiB", used() / MIB);

    // Both signatures are served from the one arena from then on.
    for (k, mib) in [100, 170, 100, 170].into_iter().enumerate() {
        rt.begin_step(None).unwrap();
        d.run_step(&step(mib), true);
        let s = rt.end_step().unwrap();
        assert_eq!(
            (s.divergences, s.new_signature),
            (0, false),
            "step {k}: {s:?}"
        );
        assert_eq!(s.planned_hits, 1, "step {k}: {s:?}");
    }
    assert_eq!(rt.stats().counters.arenas_returned, 1);
    d.free_all();
}
