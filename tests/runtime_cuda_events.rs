//! `record_stream` on the CUDA backend, against the stub driver (whose events complete only when the
//! test says so, or the device synchronizes): memory another stream used is reused only after the
//! event recorded on that stream at the free has completed, a second free is refused, and no step
//! waits for the whole device.
//!
//! Its own test binary, so the stub's counters see only this test.

mod runtime_support;

use std::sync::Arc;

use model_opt::placement::PlanOptions;
use model_opt::runtime::backend::cuda::preload_driver;
use model_opt::runtime::{CudaBackend, Runtime, RuntimeConfig};
use runtime_support::stub_driver::{build_stub, stub_fn};
use runtime_support::{Driver, Op};

const SIDE_STREAM: usize = 0x5157;

#[test]
fn record_stream_memory_waits_for_the_streams_event_not_for_the_device() {
    preload_driver(build_stub().to_str().unwrap()).unwrap();
    let complete: extern "C" fn() = stub_fn("stub_complete_events");
    let live_events: extern "C" fn() -> libc::c_long = stub_fn("stub_live_events");
    // SAFETY: a plain int the stub exports.
    let syncs = || unsafe { *stub_fn::<*const libc::c_int>("stub_synchronize_calls") };
    // SAFETY: as above.
    let event_waits = || unsafe { *stub_fn::<*const libc::c_int>("stub_event_waits") };

    let rt = Runtime::new(Arc::new(CudaBackend::new()), RuntimeConfig::default());
    let mut d = Driver::new(&rt, 0);

    // Fallback memory (no plan yet).
    let p = rt.alloc(0, 4096, 0).unwrap();
    assert!(rt.record_stream(p, SIDE_STREAM));
    rt.free(0, p).unwrap();
    assert_eq!(live_events(), 1, "one event, on the stream that used it");
    let err = rt.free(0, p).unwrap_err();
    assert!(err.to_string().contains("already freed"), "{err}");
    let q = d.alloc((0, 0), 4096, 0);
    assert_ne!(q.addr, p, "the side stream may still be using p's memory");
    complete();
    let r = d.alloc((0, 1), 4096, 0);
    assert_eq!(live_events(), 0, "completed events are destroyed");
    assert_eq!(r.addr, p, "reused once the side stream is done");
    d.free_all();

    // Planned memory, over steps: the end of a step does not synchronize the device.
    let program = vec![
        Op::Alloc {
            id: 0,
            size: 8192,
            stream: 0,
        },
        Op::Alloc {
            id: 1,
            size: 8192,
            stream: 0,
        },
        Op::Free { id: 0 },
        Op::Free { id: 1 },
    ];
    rt.begin_profile().unwrap();
    d.run_step(&program, true);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    let syncs_before = syncs();
    rt.begin_step(None).unwrap();
    let a = rt.alloc(0, 8192, 0).unwrap();
    assert!(rt.record_stream(a, SIDE_STREAM));
    rt.free(0, a).unwrap();
    assert!(rt.free(0, a).is_err(), "second free of a planned block");
    d.step += 1;
    let b = d.alloc((d.step, 1), 8192, 0);
    assert!(b.addr + b.size <= a || a + 8192 <= b.addr);
    d.free((d.step, 1));
    rt.end_step().unwrap();
    assert_eq!(syncs(), syncs_before, "no step waits for the whole device");
    // The next step's first request cannot have `a`'s slot while the event is pending.
    rt.begin_step(None).unwrap();
    d.step += 1;
    let c = d.alloc((d.step, 0), 8192, 0);
    assert!(c.addr + c.size <= a || a + 8192 <= c.addr);
    d.free((d.step, 0));
    rt.end_step().unwrap();
    // empty_cache waits for the side stream's event, not for the device, and releases everything
    // quarantined.
    let waits_before = event_waits();
    rt.empty_cache().unwrap();
    assert_eq!(syncs(), syncs_before);
    assert_eq!(
        event_waits(),
        waits_before + 1,
        "one wait: the newest event of the one stream"
    );
    assert_eq!(live_events(), 0);
    let st = rt.stats();
    assert_eq!(st.counters.unknown_frees, 2);
    assert_eq!(st.counters.allocated_bytes, 0);
    drop(rt);
}

#[test]
fn step_signatures_work_on_the_cuda_backend_too() {
    preload_driver(build_stub().to_str().unwrap()).unwrap();
    let rt = Runtime::new(Arc::new(CudaBackend::new()), RuntimeConfig::default());
    let mut d = Driver::new(&rt, 1);
    let first = runtime_support::padded_step(64);
    d.run_step(&first, true);
    rt.begin_profile().unwrap();
    d.run_step(&first, true);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    for (k, len) in [48, 64, 48, 80, 64, 80].into_iter().enumerate() {
        rt.begin_step(None).unwrap();
        d.run_step(&runtime_support::padded_step(len), true);
        let s = rt.end_step().unwrap();
        assert_eq!(s.divergences, 0, "step {k}: {s:?}");
        assert_eq!(s.new_signature, k == 0 || k == 3, "step {k}: {s:?}");
    }
    let st = rt.stats();
    assert_eq!(st.plans, 3);
    assert!(st.counters.signature_switches > 0);
    d.free_all();
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}
