//! The CUDA backend against a stub driver built here: host memory behind the driver functions the
//! backend uses, loaded through the backend's own loading (`preload_driver` names the file).
//!
//! This file is its own test binary (its own process), so the stub never meets a real driver.

mod runtime_support;

use std::sync::Arc;

use model_opt::placement::PlanOptions;
use model_opt::runtime::backend::cuda::preload_driver;
use model_opt::runtime::{Backend, BackendError, CudaBackend, Runtime, RuntimeConfig};
use runtime_support::stub_driver::{build_stub, stub_fn};
use runtime_support::{random_program, Driver, Op, Rng};

#[test]
fn cuda_backend_runs_on_the_stub_driver() {
    let stub = build_stub();
    preload_driver(stub.to_str().unwrap()).unwrap();
    let live: extern "C" fn() -> libc::c_long = stub_fn("stub_live_allocations");
    let used: extern "C" fn() -> usize = stub_fn("stub_used_bytes");

    // The backend alone.
    let cuda = CudaBackend::new();
    assert_eq!(cuda.device_count().unwrap(), 2);
    let a = cuda.alloc(0, 1 << 20).unwrap();
    assert_eq!(a % 512, 0);
    assert_eq!(used(), 1 << 20);
    assert_eq!(
        cuda.mem_info(0).unwrap(),
        Some(((255u64) << 20, 256u64 << 20))
    );
    cuda.free(0, a, 1 << 20).unwrap();
    assert_eq!(live(), 0);
    let oom = cuda.alloc(1, 1 << 30).unwrap_err();
    assert!(oom.is_out_of_memory(), "{oom}");
    assert!(matches!(
        cuda.alloc(5, 16),
        Err(BackendError::InvalidDevice { device: 5, .. })
    ));
    cuda.synchronize(1).unwrap();

    // The whole runtime on it: profile, plan, replay, on two devices.
    let rt = Runtime::new(Arc::new(CudaBackend::new()), RuntimeConfig::default());
    let program = random_program(&mut Rng::new(11), 120, 2);
    let transient = program
        .iter()
        .filter(|o| matches!(o, Op::Alloc { .. }))
        .count()
        - runtime_support::persistent_ids(&program).len();
    let mut d0 = Driver::new(&rt, 0);
    let mut d1 = Driver::new(&rt, 1);
    rt.begin_profile().unwrap();
    d0.run_step(&program, true);
    d1.run_step(&program, true);
    rt.end_profile().unwrap();
    let summary = rt.plan(&PlanOptions::default()).unwrap();
    assert_eq!(summary.devices.len(), 2);
    for _ in 0..5 {
        rt.begin_step(None).unwrap();
        d0.run_step(&program, true);
        d1.run_step(&program, true);
        let s = rt.end_step().unwrap();
        assert_eq!(s.divergences, 0);
        assert_eq!(s.planned_hits as usize, 2 * transient);
    }
    d0.free_all();
    d1.free_all();
    let st = rt.stats();
    assert_eq!(st.counters.allocated_bytes, 0);
    assert_eq!(st.arena_bytes, summary.arena_bytes);
    assert_eq!(
        used() as u64,
        st.reserved_bytes,
        "the driver holds exactly what the runtime reserved"
    );

    // Out of memory surfaces as an error value, and the runtime keeps working.
    let err = rt.alloc(0, 300 << 20, 0).unwrap_err();
    assert!(err.to_string().contains("out of memory"), "{err}");
    assert_eq!(rt.stats().counters.out_of_memory, 1);
    let ok = rt.alloc(0, 1 << 20, 0).unwrap();
    rt.free(0, ok).unwrap();

    rt.empty_cache().unwrap();
    assert_eq!(
        used() as u64,
        st.arena_bytes,
        "empty_cache leaves only the arenas"
    );
    drop(rt);
    assert_eq!(
        live(),
        0,
        "dropping the runtime returns everything to the driver"
    );
}
