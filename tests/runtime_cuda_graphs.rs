//! CUDA graph captures served from private pools (PyTorch's pool hooks, `graph_pools.rs`), against the
//! strict stub driver: during a capture in the default (global) mode the stub refuses `cuMemAlloc`
//! unless the thread relaxed its capture mode, refuses `cuMemFree` and `cuCtxSynchronize`, and
//! invalidates the capture when it refuses, as the driver does. Its own test binary; the tests share
//! the stub's process-wide state, so they take turns.

mod runtime_support;

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard};

use model_opt::ffi::{
    model_opt_graph_capture_begin, model_opt_graph_capture_end, model_opt_graph_pool_release,
    model_opt_try_alloc_for_graph, ALLOC_OK, ALLOC_REFUSED,
};
use model_opt::runtime::backend::cuda::preload_driver;
use model_opt::runtime::graph_pools::PoolId;
use model_opt::runtime::{BackendError, CudaBackend, Runtime, RuntimeConfig, RuntimeError};
use runtime_support::c_abi::last_error;
use runtime_support::stub_driver::{build_stub, stub_fn};

static TURN: Mutex<()> = Mutex::new(());

const CAPTURE: usize = 0x5000; // the stream torch.cuda.graph captures on (its own side stream)
const OTHER: usize = 0x6000;

fn stub() -> MutexGuard<'static, ()> {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    static LOADED: std::sync::Once = std::sync::Once::new();
    LOADED.call_once(|| preload_driver(build_stub().to_str().unwrap()).unwrap());
    set_capturing(CAPTURE, 0);
    turn
}

fn set_capturing(stream: usize, status: c_int) {
    let f: extern "C" fn(usize, c_int) = stub_fn("stub_set_capturing");
    f(stream, status);
}

fn capture_status(stream: usize) -> c_int {
    let f: extern "C" fn(usize) -> c_int = stub_fn("stub_capture_status");
    f(stream)
}

/// Calls the stub refused because a capture was under way (each one broke the capture).
fn violations() -> c_int {
    // SAFETY: the stub's counter, read while no test thread of this binary runs driver calls.
    unsafe { *stub_fn::<*const c_int>("stub_capture_violations") }
}

fn device_of(addr: usize) -> c_int {
    let f: extern "C" fn(u64) -> c_int = stub_fn("stub_device_of");
    f(addr as u64)
}

fn cuda_runtime() -> Runtime {
    Runtime::new(Arc::new(CudaBackend::new()), RuntimeConfig::default())
}

/// Requests outside the graph, on both streams and of both pool classes, none of them over `[addr,
/// addr + len)`; freed again.
fn outside_never_over(rt: &Runtime, kept: &[(usize, usize)]) {
    let mut got = Vec::new();
    for size in [512, 4096, 1 << 20, 3 << 20] {
        for stream in [CAPTURE, OTHER] {
            for _ in 0..4 {
                let a = rt.alloc(0, size, stream).unwrap();
                for &(addr, len) in kept {
                    assert!(
                        a + size <= addr || addr + len <= a,
                        "{a:#x}+{size} handed out over a graph's memory at {addr:#x}+{len}"
                    );
                }
                got.push((a, stream));
            }
        }
    }
    for (a, stream) in got.into_iter().rev() {
        rt.free_on(0, a, stream).unwrap();
    }
}

#[test]
fn a_capture_is_served_from_its_own_pool_and_its_memory_stays_the_graphs() {
    let _turn = stub();
    let rt = cuda_runtime();
    let pool = PoolId(0, 1);
    let violations_before = violations();
    // A tensor from before the capture, on a stream that is not capturing.
    let before = rt.alloc(0, 8192, OTHER).unwrap();
    // torch.cuda.graph: the capture begins on its stream, then PyTorch calls beginAllocateToPool.
    set_capturing(CAPTURE, 1);
    rt.begin_graph_capture(0, pool);
    // The capture's requests (the front's filter picked them): a new segment is allocated during
    // the capture, which the driver allows only in the relaxed mode.
    let big = rt.alloc_for_graph(0, pool, 1 << 20, CAPTURE).unwrap();
    let small = rt.alloc_for_graph(0, pool, 4096, CAPTURE).unwrap();
    assert_eq!(device_of(big), 0);
    // Freed inside the capture, it goes back to the graph's pool and serves the capture again.
    rt.free_on(0, small, CAPTURE).unwrap();
    assert_eq!(rt.alloc_for_graph(0, pool, 4096, CAPTURE).unwrap(), small);
    // A request on the capturing stream that no capture's filter took is still refused.
    assert!(matches!(
        rt.alloc(0, 4096, CAPTURE),
        Err(RuntimeError::Backend(BackendError::Capturing { .. }))
    ));
    // The tensor from before freed during the capture (on a stream the driver says is not
    // capturing): the graph may read it, so it is held for good, never handed out again.
    rt.free_on(0, before, OTHER).unwrap();
    let st = rt.stats();
    assert_eq!(
        (st.counters.graph_held_frees, st.counters.graph_held_bytes),
        (1, 8192)
    );
    // empty_cache during the capture gives nothing back and neither waits nor frees.
    assert_eq!(rt.empty_cache().unwrap(), 0);
    assert!(last_error().contains("being captured"), "{}", last_error());
    assert_eq!(capture_status(CAPTURE), 1, "the capture was broken");
    assert_eq!(violations(), violations_before);
    // The capture ends (the stream's capture first, then endAllocateToPool, as in PyTorch).
    set_capturing(CAPTURE, 0);
    rt.end_graph_capture(0, pool).unwrap();
    assert!(rt.end_graph_capture(0, pool).is_err(), "no capture left");
    let st = rt.stats();
    assert_eq!(st.counters.graph_pool_allocations, 3);
    assert!(st.graph_pool_bytes >= (1 << 20) + 4096);
    assert!(st.reserved_bytes >= st.graph_pool_bytes + st.fallback_reserved_bytes);
    // Everything outside the graph keeps off its memory, held or pooled, live or freed.
    outside_never_over(&rt, &[(big, 1 << 20), (small, 4096), (before, 8192)]);
    rt.free_on(0, big, CAPTURE).unwrap(); // the graph's output, freed by its user
    outside_never_over(&rt, &[(big, 1 << 20), (small, 4096), (before, 8192)]);
    assert!(rt.empty_cache().is_ok());
    assert_eq!(device_of(big), 0, "empty_cache gave a graph's segment back");
    // Released while a block is in use: kept until the last one goes.
    rt.release_graph_pool(0, pool).unwrap();
    assert_eq!(device_of(small), 0);
    rt.free_on(0, small, CAPTURE).unwrap();
    assert_eq!(device_of(small), -1, "released and empty: given back");
    assert_eq!(device_of(big), -1);
    assert_eq!(rt.stats().graph_pool_bytes, 0);
    assert!(rt.release_graph_pool(0, pool).is_err(), "gone");
    assert_eq!(violations(), violations_before);
}

#[test]
fn pools_are_kept_apart_and_a_release_waits_for_every_capture_to_end() {
    let _turn = stub();
    let rt = cuda_runtime();
    let (first, second) = (PoolId(0, 7), PoolId(0, 8));
    let violations_before = violations();
    rt.begin_graph_capture(0, first);
    let a = rt.alloc_for_graph(0, first, 4096, CAPTURE).unwrap();
    rt.free_on(0, a, CAPTURE).unwrap();
    rt.end_graph_capture(0, first).unwrap();
    // A second graph with a pool of its own never gets the first one's free block.
    set_capturing(CAPTURE, 1);
    rt.begin_graph_capture(0, second);
    let b = rt.alloc_for_graph(0, second, 4096, CAPTURE).unwrap();
    assert!(b + 4096 <= a || a + 4096 <= b);
    // The first pool released during the second capture: nothing freed until it ends.
    rt.release_graph_pool(0, first).unwrap();
    assert_eq!(device_of(a), 0);
    assert_eq!(capture_status(CAPTURE), 1);
    set_capturing(CAPTURE, 0);
    rt.end_graph_capture(0, second).unwrap();
    assert_eq!(device_of(a), -1, "given back once no capture was left");
    // A pool shared by two graphs (torch.cuda.graph(pool=...)): the second capture reuses what the
    // first freed.
    rt.begin_graph_capture(0, second);
    rt.free_on(0, b, CAPTURE).unwrap();
    rt.end_graph_capture(0, second).unwrap();
    rt.begin_graph_capture(0, second);
    assert_eq!(rt.alloc_for_graph(0, second, 4096, CAPTURE).unwrap(), b);
    rt.end_graph_capture(0, second).unwrap();
    // A pool nobody began is refused.
    let err = rt
        .alloc_for_graph(0, PoolId(0, 99), 4096, CAPTURE)
        .unwrap_err();
    assert!(err.to_string().contains("no capture began"), "{err}");
    assert_eq!(violations(), violations_before);
}

#[test]
fn the_c_abi_serves_a_capture_and_says_what_it_refuses() {
    let _turn = stub();
    let (a, b) = (0u64, 42u64);
    model_opt_graph_capture_begin(0, a, b);
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `out` is a writable pointer.
    let status =
        unsafe { model_opt_try_alloc_for_graph(4096, 0, CAPTURE as *mut c_void, a, b, &mut out) };
    assert_eq!(status, ALLOC_OK);
    assert_eq!(device_of(out as usize), 0);
    // SAFETY: as above.
    let refused =
        unsafe { model_opt_try_alloc_for_graph(4096, 0, CAPTURE as *mut c_void, a, 43, &mut out) };
    assert_eq!(refused, ALLOC_REFUSED);
    assert!(out.is_null());
    assert!(last_error().contains("(0, 43)"), "{}", last_error());
    assert_eq!(model_opt_graph_capture_end(0, a, b), 0);
    assert_ne!(model_opt_graph_capture_end(0, a, b), 0);
    assert!(
        last_error().contains("had none under way"),
        "{}",
        last_error()
    );
    assert_eq!(model_opt_graph_pool_release(0, a, b), 0);
    assert_ne!(model_opt_graph_pool_release(0, a, 43), 0);
}

#[test]
fn empty_cache_waits_for_a_capture_on_any_device() {
    // The driver's default capture mode forbids freeing memory on every device while any capture
    // runs: a capture on device 1 keeps device 0's cache too.
    let _turn = stub();
    let rt = cuda_runtime();
    let pool = PoolId(0, 11);
    let a = rt.alloc(0, 4096, OTHER).unwrap();
    rt.free_on(0, a, OTHER).unwrap();
    rt.begin_graph_capture(1, pool);
    model_opt::runtime::global::clear_last_error();
    assert_eq!(rt.empty_cache().unwrap(), 0);
    // It says why, since the call itself cannot.
    let why = model_opt::runtime::global::last_error().unwrap_or_default();
    assert!(
        why.starts_with("empty_cache() gave nothing back: a CUDA graph is being captured"),
        "{why}"
    );
    assert_eq!(
        device_of(a),
        0,
        "device 0's cache was freed during device 1's capture"
    );
    rt.end_graph_capture(1, pool).unwrap();
    assert!(rt.empty_cache().unwrap() >= 4096);
    assert_eq!(device_of(a), -1);
    rt.release_graph_pool(1, pool).unwrap();
}
