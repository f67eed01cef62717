//! `record_stream` on the CUDA backend against the strict stub driver (issue 17, item 5): a record on
//! the allocation's own stream is ignored (no quarantine, no plan entry lost); memory other streams
//! used is released as their events complete at each request, outside `step()` too, one query per
//! stream; a request the pool cannot serve waits for the quarantine before it fails; and
//! `empty_cache` waits for the streams' events with the runtime's lock released.
//!
//! Its own test binary, so the stub's counters see only these tests; the tests take turns (they share
//! the stub's events and capacity).

mod runtime_support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use model_opt::placement::PlanOptions;
use model_opt::runtime::backend::cuda::preload_driver;
use model_opt::runtime::{CudaBackend, Runtime, RuntimeConfig};
use runtime_support::stub_driver::{build_stub, stub_fn};
use runtime_support::{Driver, Op};

const SIDE: usize = 0x5157;
const MIB: usize = 1 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

/// The stub's controls and counters.
struct Stub {
    complete: extern "C" fn(),
    live_events: extern "C" fn() -> libc::c_long,
    used_bytes: extern "C" fn() -> libc::size_t,
    set_capacity: extern "C" fn(libc::c_int, libc::size_t),
    hold_waits: extern "C" fn(libc::c_int),
    fail: extern "C" fn(*const libc::c_char, libc::c_int, libc::c_int),
    clear_faults: extern "C" fn(),
    _serial: MutexGuard<'static, ()>,
}

impl Stub {
    fn new() -> Stub {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        preload_driver(build_stub().to_str().unwrap()).unwrap();
        Stub {
            complete: stub_fn("stub_complete_events"),
            live_events: stub_fn("stub_live_events"),
            used_bytes: stub_fn("stub_used_bytes"),
            set_capacity: stub_fn("stub_set_capacity"),
            hold_waits: stub_fn("stub_hold_event_waits"),
            fail: stub_fn("stub_fail"),
            clear_faults: stub_fn("stub_clear_faults"),
            _serial: serial,
        }
    }

    fn counter(name: &str) -> i32 {
        // SAFETY: a plain int the stub exports, only ever incremented.
        unsafe { std::ptr::read_volatile(stub_fn::<*const libc::c_int>(name)) }
    }
    fn queries() -> i32 {
        Stub::counter("stub_event_queries")
    }
    fn waits() -> i32 {
        Stub::counter("stub_event_waits")
    }
    fn syncs() -> i32 {
        Stub::counter("stub_synchronize_calls")
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        (self.hold_waits)(0);
        (self.clear_faults)();
        (self.set_capacity)(0, 256 * MIB);
        (self.complete)();
    }
}

fn runtime() -> Runtime {
    Runtime::new(Arc::new(CudaBackend::new()), RuntimeConfig::default())
}

fn two_buffers() -> Vec<Op> {
    vec![
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
    ]
}

#[test]
fn a_record_on_the_allocations_own_stream_changes_nothing() {
    let stub = Stub::new();
    let rt = runtime();

    // Fallback memory, on the legacy stream and on a side stream.
    for stream in [0, SIDE] {
        let p = rt.alloc(0, 4096, stream).unwrap();
        assert!(rt.record_stream(p, stream), "a live allocation of ours");
        rt.free(0, p).unwrap();
        assert_eq!((stub.live_events)(), 0, "no event for its own stream");
        let q = rt.alloc(0, 4096, stream).unwrap();
        assert_eq!(q, p, "reusable at once");
        rt.free(0, q).unwrap();
    }
    // Another stream still quarantines it.
    let p = rt.alloc(0, 4096, SIDE).unwrap();
    assert!(rt.record_stream(p, 0));
    rt.free(0, p).unwrap();
    assert_eq!((stub.live_events)(), 1);
    let q = rt.alloc(0, 4096, SIDE).unwrap();
    assert_ne!(q, p, "stream 0 may still be using p");
    rt.free(0, q).unwrap();

    // Planned memory: records on its own stream in every step leave the plan whole.
    let mut d = Driver::new(&rt, 0);
    rt.begin_profile().unwrap();
    d.run_step(&two_buffers(), true);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    for step in 0..4 {
        rt.begin_step(None).unwrap();
        let a = rt.alloc(0, 8192, 0).unwrap();
        assert!(rt.record_stream(a, 0));
        let b = rt.alloc(0, 8192, 0).unwrap();
        rt.free(0, a).unwrap();
        rt.free(0, b).unwrap();
        let s = rt.end_step().unwrap();
        assert_eq!(
            (s.planned_hits, s.divergences, s.transient_fallbacks),
            (2, 0, 0),
            "step {step}: {s:?}"
        );
    }
    assert_eq!(rt.stats().counters.record_stream_fallbacks, 0);
    assert_eq!(
        (stub.live_events)(),
        1,
        "only the cross-stream record above"
    );

    // A record on another stream still takes the entry out of the plan.
    rt.begin_step(None).unwrap();
    let a = rt.alloc(0, 8192, 0).unwrap();
    assert!(rt.record_stream(a, SIDE));
    let b = rt.alloc(0, 8192, 0).unwrap();
    rt.free(0, a).unwrap();
    rt.free(0, b).unwrap();
    rt.end_step().unwrap();
    rt.begin_step(None).unwrap();
    d.run_step(&two_buffers(), true);
    rt.end_step().unwrap();
    assert_eq!(rt.stats().counters.record_stream_fallbacks, 1);
    rt.empty_cache().unwrap();
    assert_eq!((stub.live_events)(), 0);
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}

#[test]
fn outside_step_completed_quarantine_is_reused_and_stays_bounded() {
    let stub = Stub::new();
    let rt = runtime();
    let mut most_events = 0;
    let mut most_reserved = 0;
    for i in 0..600 {
        let p = rt.alloc(0, MIB, 0).unwrap();
        assert!(rt.record_stream(p, SIDE));
        rt.free(0, p).unwrap();
        if i % 10 == 9 {
            (stub.complete)(); // the side stream catches up now and then
        }
        most_events = most_events.max((stub.live_events)());
        most_reserved = most_reserved.max(rt.stats().reserved_bytes);
    }
    // 600 MiB freed; never more than the ten blocks between completions (and the one in use) held.
    assert!(most_events <= 11, "{most_events} events live at once");
    assert!(
        most_reserved <= 12 * MIB as u64,
        "{most_reserved} bytes reserved at once"
    );

    // One query per stream, however much is quarantined.
    (stub.complete)();
    let p = rt.alloc(0, 4096, 0).unwrap();
    rt.free(0, p).unwrap();
    for i in 0..100 {
        let p = rt.alloc(0, 4096, 0).unwrap();
        assert!(rt.record_stream(p, if i % 2 == 0 { SIDE } else { SIDE + 1 }));
        rt.free(0, p).unwrap();
    }
    assert_eq!((stub.live_events)(), 100);
    let before = Stub::queries();
    let p = rt.alloc(0, 4096, 0).unwrap();
    assert_eq!(
        Stub::queries() - before,
        2,
        "the oldest event of each stream"
    );
    rt.free(0, p).unwrap();
    (stub.complete)();
    let p = rt.alloc(0, 4096, 0).unwrap();
    assert_eq!((stub.live_events)(), 0, "all done: all released");
    rt.free(0, p).unwrap();
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}

#[test]
fn a_request_the_pool_cannot_serve_waits_for_the_quarantine_first() {
    let stub = Stub::new();
    let rt = runtime();
    // Room for two small segments (2 MiB each): four 1 MiB blocks.
    (stub.set_capacity)(0, (stub.used_bytes)() + 4 * MIB);
    let blocks: Vec<usize> = (0..4).map(|_| rt.alloc(0, MIB, 0).unwrap()).collect();
    for &p in &blocks {
        assert!(rt.record_stream(p, SIDE));
        rt.free(0, p).unwrap();
    }
    assert_eq!((stub.live_events)(), 4);
    let (waits, syncs) = (Stub::waits(), Stub::syncs());
    let p = rt
        .alloc(0, MIB, 0)
        .expect("quarantined memory is waited for before out of memory");
    assert!(blocks.contains(&p));
    assert_eq!(
        Stub::waits() - waits,
        1,
        "the newest event of the one stream"
    );
    assert_eq!(Stub::syncs(), syncs, "not the whole device");
    assert_eq!((stub.live_events)(), 0);
    rt.free(0, p).unwrap();
    // Memory that really is in use still runs out.
    let held: Vec<usize> = (0..4).map(|_| rt.alloc(0, MIB, 0).unwrap()).collect();
    assert!(rt.alloc(0, MIB, 0).is_err());
    for p in held {
        rt.free(0, p).unwrap();
    }
}

#[test]
fn empty_cache_waits_for_the_streams_with_the_lock_released() {
    let stub = Stub::new();
    let rt = runtime();
    let p = rt.alloc(0, 4096, 0).unwrap();
    assert!(rt.record_stream(p, SIDE));
    rt.free(0, p).unwrap();

    (stub.hold_waits)(1);
    let waits = Stub::waits();
    std::thread::scope(|s| {
        let flusher = s.spawn(|| rt.empty_cache());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Stub::waits() == waits {
            assert!(Instant::now() < deadline, "empty_cache never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The flusher is blocked in cuEventSynchronize: another thread allocates meanwhile.
        let (tx, rx) = mpsc::channel();
        let rt = &rt;
        s.spawn(move || {
            let q = rt.alloc(0, 4096, 0).unwrap();
            rt.free(0, q).unwrap();
            tx.send(q).unwrap();
        });
        let q = rx.recv_timeout(Duration::from_secs(10));
        (stub.hold_waits)(0); // let everything finish before judging
        let q = q.expect("an allocation waited for empty_cache's wait: the lock was held");
        assert_ne!(q, p, "still quarantined while the wait runs");
        flusher.join().unwrap().unwrap();
    });
    assert_eq!((stub.live_events)(), 0);
    assert_eq!(
        rt.stats().reserved_bytes,
        0,
        "p released, and its segment returned"
    );

    // A wait that fails leaves the memory quarantined, and a later empty_cache releases it.
    let p = rt.alloc(0, 4096, 0).unwrap();
    assert!(rt.record_stream(p, SIDE));
    rt.free(0, p).unwrap();
    (stub.fail)(c"cuEventSynchronize".as_ptr(), 999, 1);
    assert!(rt.empty_cache().is_err());
    assert_eq!((stub.live_events)(), 1);
    let q = rt.alloc(0, 4096, 0).unwrap();
    assert_ne!(q, p, "still quarantined after the failed wait");
    rt.free(0, q).unwrap();
    rt.empty_cache().unwrap();
    assert_eq!((stub.live_events)(), 0);
    assert_eq!(rt.stats().reserved_bytes, 0);

    // An event that could not be recorded: only a device synchronization releases the memory.
    let p = rt.alloc(0, 4096, 0).unwrap();
    assert!(rt.record_stream(p, SIDE));
    (stub.fail)(c"cuEventRecord".as_ptr(), 999, 1);
    rt.free(0, p).unwrap();
    let q = rt.alloc(0, 4096, 0).unwrap();
    assert_ne!(q, p);
    rt.free(0, q).unwrap();
    let syncs = Stub::syncs();
    rt.empty_cache().unwrap();
    assert_eq!(Stub::syncs(), syncs + 1);
    assert_eq!(rt.stats().reserved_bytes, 0);
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}
