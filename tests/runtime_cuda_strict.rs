//! The CUDA backend and the runtime against the strict stub driver (`runtime_support/stub_libcuda.c`):
//! per-thread current contexts on two devices, calls before `cuInit` and bad ordinals refused, each
//! driver call failing on demand with known, unknown and sticky codes, out of memory on demand, and
//! streams capturing a CUDA graph. Its own test binary; the tests share one stub (its faults are
//! process-wide), so they take turns.

mod runtime_support;

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard};

use model_opt::ffi::{
    model_opt_alloc, model_opt_clear_last_error, model_opt_free, model_opt_set_memory_fraction,
    model_opt_set_memory_limit, model_opt_try_alloc, ALLOC_OK, ALLOC_OUT_OF_MEMORY, ALLOC_REFUSED,
};
use model_opt::placement::PlanOptions;
use model_opt::runtime::backend::cuda::preload_driver;
use model_opt::runtime::global::{clear_last_error, cuda_preflight, memory_limit};
use model_opt::runtime::{Backend, BackendError, CudaBackend, Runtime, RuntimeConfig};
use runtime_support::c_abi::last_error;
use runtime_support::stub_driver::{build_stub, stub_fn};
use runtime_support::{random_program, Driver, Op, Rng};

static TURN: Mutex<()> = Mutex::new(());

/// The stub, loaded once, with no fault left over from another test.
fn stub() -> MutexGuard<'static, ()> {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    static LOADED: std::sync::Once = std::sync::Once::new();
    LOADED.call_once(|| preload_driver(build_stub().to_str().unwrap()).unwrap());
    Stub::get().reset();
    turn
}

/// The stub's controls and observations.
struct Stub {
    fail: extern "C" fn(*const libc::c_char, c_int, c_int),
    clear_faults: extern "C" fn(),
    set_sticky: extern "C" fn(c_int),
    set_capacity: extern "C" fn(c_int, usize),
    set_capturing: extern "C" fn(usize, c_int),
    device_of: extern "C" fn(u64) -> c_int,
    current_device: extern "C" fn() -> c_int,
    context_depth: extern "C" fn() -> c_int,
    refcount: extern "C" fn(c_int) -> c_int,
    retain: extern "C" fn(*mut *mut c_void, c_int) -> c_int,
    set_current: extern "C" fn(*mut c_void) -> c_int,
    init: extern "C" fn(u32) -> c_int,
}

impl Stub {
    fn get() -> Stub {
        Stub {
            fail: stub_fn("stub_fail"),
            clear_faults: stub_fn("stub_clear_faults"),
            set_sticky: stub_fn("stub_set_sticky"),
            set_capacity: stub_fn("stub_set_capacity"),
            set_capturing: stub_fn("stub_set_capturing"),
            device_of: stub_fn("stub_device_of"),
            current_device: stub_fn("stub_current_device"),
            context_depth: stub_fn("stub_context_depth"),
            refcount: stub_fn("stub_primary_refcount"),
            retain: stub_fn("cuDevicePrimaryCtxRetain"),
            set_current: stub_fn("cuCtxSetCurrent"),
            init: stub_fn("cuInit"),
        }
    }

    fn reset(&self) {
        (self.clear_faults)();
        (self.set_sticky)(0);
        for d in 0..2 {
            (self.set_capacity)(d, 256 << 20);
        }
        for s in [0x5000usize, 0x6000] {
            (self.set_capturing)(s, 0);
        }
    }

    /// The next `times` calls of `call` return `code` (-1: every call).
    fn fail(&self, call: &str, code: c_int, times: c_int) {
        let c = std::ffi::CString::new(call).unwrap();
        (self.fail)(c.as_ptr(), code, times);
    }

    /// Makes `device`'s primary context current on this thread, as PyTorch does for its device.
    fn bind(&self, device: c_int) {
        assert_eq!((self.init)(0), 0);
        let mut ctx = std::ptr::null_mut();
        assert_eq!((self.retain)(&mut ctx, device), 0);
        assert_eq!((self.set_current)(ctx), 0);
    }
}

/// `model_opt_try_alloc` through the process-wide runtime: (status, address).
fn try_alloc(size: usize, device: c_int, stream: usize) -> (c_int, usize) {
    // Not NULL before the call, so a failure must write the NULL.
    let mut out: *mut c_void = std::ptr::NonNull::<c_void>::dangling().as_ptr();
    // SAFETY: `out` is a writable pointer.
    let status = unsafe { model_opt_try_alloc(size, device, stream as *mut c_void, &mut out) };
    (status, out as usize)
}

#[test]
fn calls_leave_the_callers_context_alone_on_every_thread_and_land_on_the_named_device() {
    let _turn = stub();
    let s = Stub::get();
    let rt = Arc::new(Runtime::new(
        Arc::new(CudaBackend::new()),
        RuntimeConfig::default(),
    ));
    // The main thread on device 1, as after torch.cuda.set_device(1).
    s.bind(1);
    let a = rt.alloc(0, 1 << 20, 0).unwrap();
    assert_eq!((s.device_of)(a as u64), 0, "served from the wrong device");
    assert_eq!((s.current_device)(), 1, "the caller's device changed");
    assert_eq!(
        (s.context_depth)(),
        1,
        "a pushed context was left on the stack"
    );
    rt.free(0, a).unwrap();

    // Autograd-like workers: each thread bound to a device (or to none), allocating on one of the
    // two devices; a profiled step, plan() on this thread, planned steps, and empty_cache() on
    // another thread. Every byte lands on the device named, and no thread's context changes.
    let program = random_program(&mut Rng::new(5), 80, 2);
    let workers = |rt: &Runtime| {
        std::thread::scope(|scope| {
            for (bound, device) in [(Some(0), 1), (Some(1), 0), (None, 0), (None, 1)] {
                let program = &program;
                let s = &s;
                scope.spawn(move || {
                    if let Some(b) = bound {
                        s.bind(b);
                    }
                    let mut d = Driver::new(rt, device);
                    d.run_step(program, true);
                    for l in d.live.values() {
                        assert_eq!((s.device_of)(l.addr as u64), device, "wrong device");
                    }
                    d.free_all();
                    assert_eq!((s.current_device)(), bound.unwrap_or(-1));
                    assert_eq!((s.context_depth)(), i32::from(bound.is_some()));
                });
            }
        })
    };
    rt.begin_profile().unwrap();
    workers(&rt);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    assert_eq!(
        (s.current_device)(),
        1,
        "plan() moved the caller to another device"
    );
    assert_eq!((s.context_depth)(), 1);
    for _ in 0..3 {
        rt.begin_step(None).unwrap();
        workers(&rt);
        rt.end_step().unwrap();
    }
    assert!(
        rt.stats().counters.planned_hits > 0,
        "the planned steps used no plan"
    );
    std::thread::spawn({
        let rt = rt.clone();
        move || {
            let s = Stub::get();
            s.bind(0);
            rt.empty_cache().unwrap();
            assert_eq!((s.current_device)(), 0, "empty_cache() moved the caller");
            assert_eq!((s.context_depth)(), 1);
        }
    })
    .join()
    .unwrap();
    rt.empty_cache().unwrap();
    assert_eq!((s.current_device)(), 1);
    assert_eq!((s.context_depth)(), 1);
    // A thread with the device's context current already switches nothing.
    let cuda = CudaBackend::new();
    assert!(!cuda.switches_context(1).unwrap());
    assert!(cuda.switches_context(0).unwrap());
}

#[test]
fn the_stub_is_strict_before_cuinit_and_about_devices() {
    let _turn = stub();
    let s = Stub::get();
    let cuda = CudaBackend::new();
    // cuInit itself failing: no device is usable, and the reason is the driver's.
    s.fail("cuInit", 4, 1);
    let e = CudaBackend::new().alloc(0, 512).unwrap_err();
    assert!(
        e.to_string()
            .contains("cuInit failed with CUDA_ERROR_DEINITIALIZED (4)"),
        "{e}"
    );
    assert_eq!(cuda.device_count().unwrap(), 2);
    for device in [-1, 2, 3] {
        assert!(matches!(
            cuda.alloc(device, 512),
            Err(BackendError::InvalidDevice { .. })
        ));
    }
    // The stub refuses what the real driver refuses: a call without a current context.
    let alloc: extern "C" fn(*mut u64, usize) -> c_int = stub_fn("cuMemAlloc_v2");
    let mut p = 0u64;
    std::thread::spawn(move || assert_eq!(alloc(&mut p, 512), 201))
        .join()
        .unwrap();
}

#[test]
fn each_failing_driver_call_is_an_error_that_names_it_and_the_runtime_goes_on() {
    let _turn = stub();
    let s = Stub::get();
    let cuda = CudaBackend::new();
    let a = cuda.alloc(0, 4096).unwrap();
    // (call, what the backend does that makes it)
    let event = cuda.record_event(0, 0x5000).unwrap().unwrap();
    type Op<'a> = Box<dyn Fn() -> Result<(), BackendError> + 'a>;
    let ops: Vec<(&str, &str, Op)> = vec![
        (
            "cuMemAlloc_v2",
            "cuMemAlloc",
            Box::new(|| cuda.alloc(0, 512).map(|p| cuda.free(0, p, 512).unwrap())),
        ),
        (
            "cuMemFree_v2",
            "cuMemFree",
            Box::new(|| cuda.free(0, a, 4096)),
        ),
        (
            "cuCtxSynchronize",
            "cuCtxSynchronize",
            Box::new(|| cuda.synchronize(0)),
        ),
        (
            "cuMemGetInfo_v2",
            "cuMemGetInfo",
            Box::new(|| cuda.mem_info(0).map(|_| ())),
        ),
        (
            "cuCtxGetCurrent",
            "cuCtxGetCurrent",
            Box::new(|| cuda.synchronize(1)),
        ),
        (
            "cuCtxPushCurrent_v2",
            "cuCtxPushCurrent",
            Box::new(|| cuda.synchronize(1)),
        ),
        (
            "cuStreamIsCapturing",
            "cuStreamIsCapturing",
            Box::new(|| cuda.check_stream(0, 0x5000)),
        ),
        (
            "cuEventCreate",
            "cuEventCreate",
            Box::new(|| cuda.record_event(0, 0x5000).map(|_| ())),
        ),
        (
            "cuEventRecord",
            "cuEventRecord",
            Box::new(|| cuda.record_event(0, 0x5000).map(|_| ())),
        ),
        (
            "cuEventQuery",
            "cuEventQuery",
            Box::new(|| cuda.event_done(0, event).map(|_| ())),
        ),
        (
            "cuDevicePrimaryCtxRetain",
            "cuDevicePrimaryCtxRetain",
            Box::new(|| CudaBackend::new().synchronize(0)),
        ),
    ];
    for (code, name) in [
        (4, "CUDA_ERROR_DEINITIALIZED (4)"),
        (999_999, "unknown CUDA error 999999"),
        (-7, "unknown CUDA error -7"),
    ] {
        for (symbol, call, op) in &ops {
            s.fail(symbol, code, 1);
            let e = op().expect_err(symbol);
            let text = e.to_string();
            assert!(
                text.contains(&format!("{call} failed with {name}")),
                "{symbol}: {text}"
            );
            assert!(!e.is_out_of_memory());
            if *symbol != "cuMemFree_v2" {
                op().unwrap_or_else(|e| panic!("{symbol} still failing: {e}"));
            }
            // A context pushed before the failing call was popped again.
            assert_eq!((s.context_depth)(), 0, "{symbol}");
        }
    }
    cuda.free(0, a, 4096).unwrap();
    cuda.destroy_event(0, event);
}

#[test]
fn a_sticky_error_fails_every_request_with_its_name_and_nothing_panics() {
    let _turn = stub();
    let s = Stub::get();
    let (status, kept) = try_alloc(1 << 20, 0, 0);
    assert_eq!(status, ALLOC_OK);
    (s.set_sticky)(700);
    // Every request asks the driver about its stream first, so even a cached block is refused.
    let (status, addr) = try_alloc(1 << 20, 0, 0);
    assert_eq!((status, addr), (ALLOC_REFUSED, 0));
    let text = last_error();
    assert!(text.contains("CUDA_ERROR_ILLEGAL_ADDRESS (700)"), "{text}");
    // Frees go on, but the driver cannot say whether a CUDA graph is capturing: the memory is held
    // for good, not cached (held memory is only memory; memory a replay writes to is corruption).
    let rt = model_opt::runtime::global::global();
    let held = rt.stats().counters.graph_held_frees;
    model_opt_free(kept as *mut c_void, 1 << 20, 0, std::ptr::null_mut());
    assert_eq!(rt.stats().counters.graph_held_frees, held + 1);
    // A failed cuMemFree keeps a segment rather than losing it.
    assert_eq!(rt.empty_cache().unwrap(), 0);
    (s.set_sticky)(0);
    rt.empty_cache().unwrap();
    assert_eq!((s.device_of)(kept as u64), 0, "held memory was released");
}

#[test]
fn the_plain_alloc_serves_device_memory_and_free_gives_it_back_for_reuse() {
    // `model_opt_alloc` is what a raw CUDAPluggableAllocator calls: an address on the named device,
    // NULL only on failure; `model_opt_free` returns it, so the same request is served from it again.
    let _turn = stub();
    let s = Stub::get();
    let a = model_opt_alloc(1 << 20, 1, std::ptr::null_mut());
    assert!(!a.is_null(), "{}", last_error());
    assert_eq!((s.device_of)(a as u64), 1);
    model_opt_free(a, 1 << 20, 1, std::ptr::null_mut());
    let b = model_opt_alloc(1 << 20, 1, std::ptr::null_mut());
    assert_eq!(b, a, "the freed block serves the same request");
    let c = model_opt_alloc(1 << 20, 1, std::ptr::null_mut());
    assert!(
        !c.is_null() && c != b,
        "a live block is never handed out twice"
    );
    model_opt_free(b, 1 << 20, 1, std::ptr::null_mut());
    model_opt_free(c, 1 << 20, 1, std::ptr::null_mut());
}

#[test]
fn out_of_memory_on_demand_is_reported_as_out_of_memory() {
    let _turn = stub();
    let s = Stub::get();
    (s.set_capacity)(1, 4 << 20);
    let (status, addr) = try_alloc(8 << 20, 1, 0);
    assert_eq!((status, addr), (ALLOC_OUT_OF_MEMORY, 0));
    assert!(last_error().contains("out of memory"), "{}", last_error());
    // An injected CUDA_ERROR_OUT_OF_MEMORY is the same; the next request is served again.
    (s.set_capacity)(1, 256 << 20);
    s.fail("cuMemAlloc_v2", 2, -1);
    assert_eq!(try_alloc(40 << 20, 1, 0).0, ALLOC_OUT_OF_MEMORY);
    (s.clear_faults)();
    let (status, addr) = try_alloc(40 << 20, 1, 0);
    assert_eq!(status, ALLOC_OK);
    model_opt_free(addr as *mut c_void, 40 << 20, 1, std::ptr::null_mut());

    // A memory limit on a CUDA device: past it, out of memory, and lifting it serves again.
    assert_eq!(model_opt_set_memory_limit(1, 1 << 20), 0);
    assert_eq!(try_alloc(64 << 20, 1, 0).0, ALLOC_OUT_OF_MEMORY);
    assert!(
        last_error().contains("out of memory on cuda device 1")
            && last_error().contains("memory limit"),
        "{}",
        last_error()
    );
    assert_eq!(model_opt_set_memory_limit(1, -1), 0);
    let (status, addr) = try_alloc(64 << 20, 1, 0);
    assert_eq!(status, ALLOC_OK);
    model_opt_free(addr as *mut c_void, 64 << 20, 1, std::ptr::null_mut());

    // A memory fraction (torch.cuda.set_per_process_memory_fraction) is that share of the device's
    // size as the driver reports it; a fraction outside [0, 1] is refused and changes nothing.
    model_opt_set_memory_fraction(0.25, 1);
    assert_eq!(memory_limit(1).1, Some(64 << 20), "{}", last_error());
    model_opt_clear_last_error();
    model_opt_set_memory_fraction(1.5, 1);
    assert_eq!(
        last_error(),
        "set_memory_fraction: memory fraction 1.5 is not between 0 and 1"
    );
    assert_eq!(memory_limit(1).1, Some(64 << 20));
    assert_eq!(model_opt_set_memory_limit(1, -1), 0);
}

#[test]
fn a_stream_capturing_a_cuda_graph_is_refused_never_served() {
    let _turn = stub();
    let s = Stub::get();
    let before = model_opt::runtime::global::global()
        .stats()
        .counters
        .allocations;
    for status in [1, 2] {
        (s.set_capturing)(0x5000, status);
        let (r, addr) = try_alloc(4096, 0, 0x5000);
        assert_eq!((r, addr), (ALLOC_REFUSED, 0), "capture status {status}");
        let text = last_error();
        assert!(
            text.contains("is capturing a CUDA graph") && text.contains("reduce-overhead"),
            "{text}"
        );
    }
    assert_eq!(
        model_opt::runtime::global::global()
            .stats()
            .counters
            .allocations,
        before,
        "a refused request was counted as served"
    );
    // Other streams, and the legacy stream (which the driver says is never part of the capture),
    // are served while the capture goes on. Freed, the legacy stream's memory is held (it may be
    // what the capture reads: see memory_freed_during_a_capture_is_held_for_good...), the other
    // stream's is not.
    let rt = model_opt::runtime::global::global();
    for (stream, held) in [(0x6000usize, 0), (0, 1)] {
        let (r, addr) = try_alloc(4096, 0, stream);
        assert_eq!(r, ALLOC_OK, "stream {stream:#x}: {}", last_error());
        let before = rt.stats().counters.graph_held_frees;
        model_opt_free(addr as *mut c_void, 4096, 0, stream as *mut c_void);
        assert_eq!(
            rt.stats().counters.graph_held_frees - before,
            held,
            "stream {stream:#x}"
        );
    }
    (s.set_capturing)(0x5000, 0);
    let (r, addr) = try_alloc(4096, 0, 0x5000);
    assert_eq!(r, ALLOC_OK);
    model_opt_free(addr as *mut c_void, 4096, 0, 0x5000 as *mut c_void);
}

#[test]
fn the_preflight_checks_the_device_and_leaves_nothing_behind() {
    let _turn = stub();
    let s = Stub::get();
    let refs = (s.refcount)(1);
    let live: extern "C" fn() -> libc::c_long = stub_fn("stub_live_allocations");
    let allocations = live();
    assert_eq!(cuda_preflight(1).unwrap(), 2);
    assert_eq!((s.refcount)(1), refs, "the preflight kept a context");
    assert_eq!(
        (s.context_depth)(),
        0,
        "the preflight left a context current"
    );
    assert_eq!(live(), allocations);
    s.fail("cuMemAlloc_v2", 999, 1);
    let e = cuda_preflight(1).unwrap_err().to_string();
    assert!(
        e.contains("cuMemAlloc failed with unknown CUDA error 999"),
        "{e}"
    );
    assert_eq!((s.refcount)(1), refs);
    assert_eq!((s.context_depth)(), 0);
    assert!(matches!(
        cuda_preflight(2),
        Err(BackendError::InvalidDevice { device: 2, .. })
    ));
}

/// A runtime of its own over the stub (its counters start at 0).
fn cuda_runtime() -> Runtime {
    Runtime::new(Arc::new(CudaBackend::new()), RuntimeConfig::default())
}

/// Requests of `size` on `stream`, each checked not to overlap the held `[addr, addr + len)`, freed
/// in reverse.
fn never_over(rt: &Runtime, held: (usize, usize), size: usize, stream: usize, n: usize) {
    let (addr, len) = held;
    let mut got = Vec::new();
    for _ in 0..n {
        let a = rt.alloc(0, size, stream).unwrap();
        assert!(
            a + size <= addr || addr + len <= a,
            "{a:#x}+{size} handed out over memory held for a CUDA graph at {addr:#x}+{len}"
        );
        got.push(a);
    }
    for a in got.into_iter().rev() {
        rt.free_on(0, a, stream).unwrap();
    }
}

#[test]
fn memory_freed_during_a_capture_is_held_for_good_and_never_handed_out_again() {
    let _turn = stub();
    let s = Stub::get();
    let rt = cuda_runtime();
    // A free on a stream that is not capturing is reused at once.
    let a = rt.alloc(0, 4096, 0x5000).unwrap();
    rt.free_on(0, a, 0x5000).unwrap();
    assert_eq!(rt.alloc(0, 4096, 0x5000).unwrap(), a, "reused at once");
    // Allocated before the capture, freed inside it: held.
    (s.set_capturing)(0x5000, 1);
    rt.free_on(0, a, 0x5000).unwrap();
    (s.set_capturing)(0x5000, 0);
    let st = rt.stats();
    assert_eq!(
        (st.counters.graph_held_frees, st.counters.graph_held_bytes),
        (1, 4096)
    );
    // Said once, as this thread's last error (the free hook cannot raise); not again.
    assert!(last_error().contains("held for good"), "{}", last_error());
    assert_eq!(st.counters.allocated_bytes, 0, "freed for its user");
    never_over(&rt, (a, 4096), 4096, 0x5000, 8);
    // A second free of it is refused; empty_cache keeps it allocated.
    assert!(rt.free_on(0, a, 0x5000).is_err());
    rt.empty_cache().unwrap();
    assert_eq!((s.device_of)(a as u64), 0, "empty_cache released it");
    assert!(rt.stats().fallback_reserved_bytes >= 4096);
    never_over(&rt, (a, 4096), 4096, 0x5000, 8);
    // The legacy stream while a blocking stream captures (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT):
    // the tensor from before the capture may be what the capture reads.
    let b = rt.alloc(0, 8192, 0).unwrap();
    (s.set_capturing)(0x5000, 1);
    rt.free_on(0, b, 0).unwrap();
    // Another stream, not capturing, is reused at once meanwhile.
    let c = rt.alloc(0, 8192, 0x6000).unwrap();
    rt.free_on(0, c, 0x6000).unwrap();
    assert_eq!(rt.alloc(0, 8192, 0x6000).unwrap(), c);
    rt.free_on(0, c, 0x6000).unwrap();
    (s.set_capturing)(0x5000, 0);
    never_over(&rt, (b, 8192), 8192, 0, 8);
    // The driver cannot answer: counted as capturing, never as safe.
    clear_last_error();
    let d = rt.alloc(0, 16384, 0x6000).unwrap();
    s.fail("cuStreamIsCapturing", 999, 1);
    rt.free_on(0, d, 0x6000).unwrap();
    never_over(&rt, (d, 16384), 16384, 0x6000, 8);
    assert!(!last_error().contains("held for good"), "said twice");
    let st = rt.stats();
    assert_eq!(
        (st.counters.graph_held_frees, st.counters.graph_held_bytes),
        (3, 4096 + 8192 + 16384)
    );
    rt.empty_cache().unwrap();
    for x in [a, b, d] {
        assert_eq!((s.device_of)(x as u64), 0);
    }
}

#[test]
fn a_planned_buffer_freed_during_a_capture_is_never_served_by_its_plan_slot_again() {
    let _turn = stub();
    let s = Stub::get();
    let rt = cuda_runtime();
    let (size, stream) = (1 << 20, 0x5000);
    // Profiled: its first buffer is freed during a capture.
    rt.begin_profile().unwrap();
    let x = rt.alloc(0, size, stream).unwrap();
    let y = rt.alloc(0, size, stream).unwrap();
    (s.set_capturing)(stream, 2);
    rt.free_on(0, x, stream).unwrap();
    (s.set_capturing)(stream, 0);
    rt.free_on(0, y, stream).unwrap();
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();

    // A planned step: its first buffer, served at its plan's slot, is freed during a capture.
    rt.begin_step(None).unwrap();
    let a = rt.alloc(0, size, stream).unwrap();
    let b = rt.alloc(0, size, stream).unwrap();
    assert_eq!(rt.stats().last_step.planned_hits, 2);
    (s.set_capturing)(stream, 1);
    rt.free_on(0, a, stream).unwrap();
    (s.set_capturing)(stream, 0);
    rt.free_on(0, b, stream).unwrap();
    rt.end_step().unwrap();
    let p = x;
    // Later steps never get its memory, whichever way they are served.
    for _ in 0..4 {
        rt.begin_step(None).unwrap();
        never_over(&rt, (a, size), size, stream, 2);
        never_over(&rt, (p, size), size, stream, 2);
        rt.end_step().unwrap();
    }
    // A new plan (a larger arena) retires the old arena, which stays while it holds `a`.
    rt.begin_profile().unwrap();
    never_over(&rt, (a, size), 4 * size, stream, 2);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    rt.empty_cache().unwrap();
    assert_eq!((s.device_of)(a as u64), 0, "the old arena was freed");
    assert_eq!((s.device_of)(p as u64), 0, "the pool block was freed");
    for _ in 0..2 {
        rt.begin_step(None).unwrap();
        never_over(&rt, (a, size), 4 * size, stream, 2);
        rt.end_step().unwrap();
    }
    let st = rt.stats();
    assert_eq!(
        (st.counters.graph_held_frees, st.counters.graph_held_bytes),
        (2, 2 * size as u64)
    );
    assert_eq!(st.counters.allocated_bytes, 0);
}

#[test]
fn a_driver_error_in_the_pool_keeps_the_idle_arena() {
    // Only an out-of-memory gives the idle arena back to make room (as PyTorch frees its cache only
    // for that): any other driver error is the caller's, and the arena stays for the next step.
    let _turn = stub();
    let s = Stub::get();
    let rt = cuda_runtime();
    let mut d = Driver::new(&rt, 0);
    let step = [
        Op::Alloc {
            id: 0,
            size: 1 << 20,
            stream: 0,
        },
        Op::Free { id: 0 },
    ];
    d.run_step(&step, true);
    rt.begin_profile().unwrap();
    d.run_step(&step, true);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    rt.empty_cache().unwrap(); // the pool holds nothing: its next request needs a segment
    let arena = rt.stats().arena_bytes;
    assert!(arena > 0);
    s.fail("cuMemAlloc_v2", 999, 1);
    let err = rt.alloc(0, 4096, 0x6000).unwrap_err();
    assert!(err.to_string().contains("cuMemAlloc"), "{err}");
    let st = rt.stats();
    assert_eq!((st.counters.arenas_returned, st.arena_bytes), (0, arena));
    d.free_all();
}
