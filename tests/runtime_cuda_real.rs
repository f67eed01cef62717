//! The CUDA backend and the runtime on the real driver and a real GPU: device memory allocated and
//! freed through `CudaBackend`, written and read back with `cuMemcpy`, and a whole runtime recording,
//! planning and replaying random steps whose every buffer is filled with its own pattern on the device
//! and checked when it is freed (so two live buffers sharing a byte fail the test).
//!
//! Without a usable driver or device (libcuda missing, `cuInit` failing, no device) each test prints
//! `skipped: no CUDA driver ...` and passes, unless `MODEL_OPT_REQUIRE_CUDA=1` (set by
//! `scripts/gpu_check.sh`), where that is a failure. Its own test binary, so no stub driver is loaded.

mod runtime_support;

use std::collections::HashMap;
use std::sync::Arc;

use model_opt::placement::PlanOptions;
use model_opt::runtime::backend::driver;
use model_opt::runtime::{
    Backend, BackendError, CudaBackend, Runtime, RuntimeConfig, RuntimeError,
};
use runtime_support::{assert_disjoint, persistent_ids, random_program, Live, Op, Rng};

/// The backend when a device is usable; `None` (after saying why) when the test should skip.
fn gpu() -> Option<Arc<CudaBackend>> {
    let cuda = Arc::new(CudaBackend::new());
    let reason = match cuda.device_count() {
        Ok(n) if n > 0 => return Some(cuda),
        Ok(_) => "the driver reports no device".to_string(),
        Err(e) => e.to_string(),
    };
    let required = std::env::var("MODEL_OPT_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "MODEL_OPT_REQUIRE_CUDA=1 but no CUDA device is usable: {reason}"
    );
    println!("skipped: no CUDA driver or device: {reason}");
    None
}

fn cu(call: &str, r: libc::c_int) {
    assert_eq!(r, driver::CUDA_SUCCESS, "{call} failed with {r}");
}

/// A copy function of the driver the backend loaded (the same library, never a second one).
fn copy_fn<T: Copy>(name: &str) -> T {
    let p = driver::symbol(name).unwrap_or_else(|| panic!("the driver lacks {name}"));
    // SAFETY: T is the fn pointer type of `name` at each call site below.
    unsafe { std::mem::transmute_copy::<*mut libc::c_void, T>(&p) }
}

/// Makes device 0's primary context current on this thread, as PyTorch does for its current device:
/// the backend leaves the caller's context as it found it, so the copies need their own.
fn bind_device_0() {
    type Retain = unsafe extern "C" fn(*mut *mut libc::c_void, libc::c_int) -> libc::c_int;
    type SetCurrent = unsafe extern "C" fn(*mut libc::c_void) -> libc::c_int;
    let retain: Retain = copy_fn("cuDevicePrimaryCtxRetain");
    let set_current: SetCurrent = copy_fn("cuCtxSetCurrent");
    let mut ctx = std::ptr::null_mut();
    // SAFETY: the driver is initialised (the backend ran cuInit); valid out-pointer; device 0 exists.
    unsafe {
        cu("cuDevicePrimaryCtxRetain", retain(&mut ctx, 0));
        cu("cuCtxSetCurrent", set_current(ctx));
    }
}

/// Host-to-device copy, in the context `bind_device_0` made current.
fn upload(addr: usize, bytes: &[u8]) {
    type HtoD = unsafe extern "C" fn(u64, *const libc::c_void, usize) -> libc::c_int;
    let f: HtoD = copy_fn("cuMemcpyHtoD_v2");
    // SAFETY: `addr` is device memory of at least `bytes.len()` bytes handed out by the runtime.
    cu("cuMemcpyHtoD", unsafe {
        f(addr as u64, bytes.as_ptr().cast(), bytes.len())
    });
}

fn download(addr: usize, len: usize) -> Vec<u8> {
    type DtoH = unsafe extern "C" fn(*mut libc::c_void, u64, usize) -> libc::c_int;
    let f: DtoH = copy_fn("cuMemcpyDtoH_v2");
    let mut out = vec![0u8; len];
    // SAFETY: as in `upload`; `out` has `len` writable bytes.
    cu("cuMemcpyDtoH", unsafe {
        f(out.as_mut_ptr().cast(), addr as u64, len)
    });
    out
}

/// A pattern unique to `tag` (and to each byte position within a buffer).
fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn the_backend_allocates_writes_reads_and_frees_device_memory() {
    let Some(cuda) = gpu() else { return };
    let devices = cuda.device_count().unwrap();
    println!("{devices} CUDA device(s)");
    let size = 3 << 20;
    let a = cuda.alloc(0, size).unwrap();
    bind_device_0();
    // The backend switched to device 0's context for nothing now: it is current already.
    assert!(!cuda.switches_context(0).unwrap());
    assert_ne!(a, 0);
    assert_eq!(a % 512, 0, "cuMemAlloc returned a misaligned address");
    let (free, total) = cuda
        .mem_info(0)
        .unwrap()
        .expect("the real driver has cuMemGetInfo");
    assert!(free > 0 && free < total, "free {free} total {total}");
    println!("device 0: {free} of {total} bytes free");
    let data = pattern(7, size);
    upload(a, &data);
    cuda.synchronize(0).unwrap();
    assert!(
        download(a, size) == data,
        "device memory did not read back what was written"
    );
    cuda.free(0, a, size).unwrap();

    // More than the device has: an out-of-memory error value, and the backend keeps working.
    let oom = cuda
        .alloc(0, (total as usize).saturating_mul(2))
        .unwrap_err();
    assert!(oom.is_out_of_memory(), "{oom}");
    assert!(matches!(
        cuda.alloc(devices, 16),
        Err(BackendError::InvalidDevice { .. })
    ));
    let b = cuda.alloc(0, 4096).unwrap();
    cuda.free(0, b, 4096).unwrap();
    cuda.synchronize(0).unwrap();
}

/// Runs step programs against a runtime on one CUDA device, checking every buffer's bytes on the device.
struct GpuDriver<'r> {
    rt: &'r Runtime,
    device: i32,
    next_tag: u64,
    live: HashMap<(u64, usize), Live>,
    step: u64,
}

impl<'r> GpuDriver<'r> {
    fn alloc(&mut self, key: (u64, usize), size: usize, stream: usize) {
        let addr = self
            .rt
            .alloc(self.device, size, stream)
            .expect("allocation failed");
        assert_ne!(addr, 0);
        assert_eq!(addr % 512, 0, "misaligned allocation");
        assert_disjoint(addr, size, self.live.values());
        self.next_tag += 1;
        let l = Live {
            addr,
            size,
            tag: self.next_tag,
        };
        upload(addr, &pattern(l.tag, size));
        self.live.insert(key, l);
    }

    fn free(&mut self, key: (u64, usize)) {
        if let Some(l) = self.live.remove(&key) {
            assert!(
                download(l.addr, l.size) == pattern(l.tag, l.size),
                "allocation {:#x} of {} bytes was overwritten on the device: two live allocations shared memory",
                l.addr,
                l.size
            );
            self.rt.free(self.device, l.addr).expect("free failed");
        }
    }

    fn run_step(&mut self, program: &[Op]) {
        self.step += 1;
        let old: Vec<_> = self
            .live
            .keys()
            .copied()
            .filter(|k| k.0 < self.step)
            .collect();
        for k in old {
            self.free(k);
        }
        for op in program {
            match *op {
                Op::Alloc { id, size, stream } => self.alloc((self.step, id), size, stream),
                Op::Free { id } => self.free((self.step, id)),
            }
        }
    }

    fn free_all(&mut self) {
        let keys: Vec<_> = self.live.keys().copied().collect();
        for k in keys {
            self.free(k);
        }
    }
}

#[test]
fn the_runtime_records_plans_and_replays_on_the_gpu() {
    let Some(cuda) = gpu() else { return };
    cuda.synchronize(0).unwrap();
    bind_device_0();
    let rt = Runtime::new(cuda.clone(), RuntimeConfig::default());
    let program = random_program(&mut Rng::new(11), 300, 2);
    let transient = program
        .iter()
        .filter(|o| matches!(o, Op::Alloc { .. }))
        .count()
        - persistent_ids(&program).len();
    let mut d = GpuDriver {
        rt: &rt,
        device: 0,
        next_tag: 1 << 40,
        live: HashMap::new(),
        step: 0,
    };
    d.run_step(&program); // warm-up: fills the fallback pool
    rt.begin_profile().unwrap();
    d.run_step(&program);
    rt.end_profile().unwrap();
    let summary = rt.plan(&PlanOptions::default()).unwrap();
    assert_eq!(summary.devices, vec![0]);
    assert_eq!(summary.buffers, transient);
    assert!(summary.arena_bytes >= summary.lower_bound_bytes);
    println!(
        "plan: {} buffers, arena {} bytes, lower bound {} bytes, {}",
        summary.buffers, summary.arena_bytes, summary.lower_bound_bytes, summary.method
    );
    for _ in 0..5 {
        rt.begin_step(None).unwrap();
        d.run_step(&program);
        let s = rt.end_step().unwrap();
        assert_eq!(s.divergences, 0);
        assert_eq!(s.planned_hits as usize, transient);
    }
    cuda.synchronize(0).unwrap();
    d.free_all();
    let st = rt.stats();
    assert_eq!(st.counters.allocated_bytes, 0);
    assert_eq!(st.counters.divergences, 0);
    assert_eq!(st.arena_bytes, summary.arena_bytes);
    assert!(st.reserved_bytes >= st.arena_bytes);
    println!(
        "runtime: {} planned hits, reserved {} bytes",
        st.counters.planned_hits, st.reserved_bytes
    );

    // Asking for more than the device has is an error value; the runtime keeps serving.
    let (_, total) = cuda.mem_info(0).unwrap().unwrap();
    let err = rt
        .alloc(0, (total as usize).saturating_mul(2), 0)
        .unwrap_err();
    assert!(err.to_string().contains("out of memory"), "{err}");
    let ok = rt.alloc(0, 1 << 20, 0).unwrap();
    upload(ok, &pattern(1, 1 << 20));
    rt.free(0, ok).unwrap();
    rt.empty_cache().unwrap();
    assert_eq!(rt.stats().reserved_bytes, summary.arena_bytes);
    drop(rt);
    cuda.synchronize(0).unwrap();
}

#[test]
fn a_fresh_threads_context_is_left_alone_and_a_capturing_stream_is_refused() {
    let Some(cuda) = gpu() else { return };
    type Ptr = *mut libc::c_void;
    // A thread with no current context (an autograd worker before PyTorch sets its device) has none
    // after the backend's calls either.
    let backend = cuda.clone();
    std::thread::spawn(move || {
        let get_current: unsafe extern "C" fn(*mut Ptr) -> libc::c_int = copy_fn("cuCtxGetCurrent");
        let current = || {
            let mut ctx: Ptr = std::ptr::null_mut();
            // SAFETY: a valid out-pointer.
            cu("cuCtxGetCurrent", unsafe { get_current(&mut ctx) });
            ctx
        };
        assert!(current().is_null());
        let a = backend.alloc(0, 1 << 20).unwrap();
        backend.synchronize(0).unwrap();
        backend.free(0, a, 1 << 20).unwrap();
        assert!(current().is_null(), "the backend left a context current");
    })
    .join()
    .unwrap();

    // A stream capturing a CUDA graph (relaxed mode, so nothing else stops the allocation) is refused
    // by the runtime; once the capture ends it is served.
    bind_device_0();
    let create: unsafe extern "C" fn(*mut Ptr, libc::c_uint) -> libc::c_int =
        copy_fn("cuStreamCreate");
    let begin: unsafe extern "C" fn(Ptr, libc::c_int) -> libc::c_int =
        copy_fn("cuStreamBeginCapture_v2");
    let end: unsafe extern "C" fn(Ptr, *mut Ptr) -> libc::c_int = copy_fn("cuStreamEndCapture");
    let destroy_graph: unsafe extern "C" fn(Ptr) -> libc::c_int = copy_fn("cuGraphDestroy");
    let destroy_stream: unsafe extern "C" fn(Ptr) -> libc::c_int = copy_fn("cuStreamDestroy_v2");
    let rt = Runtime::new(cuda.clone(), RuntimeConfig::default());
    let mut stream: Ptr = std::ptr::null_mut();
    let mut graph: Ptr = std::ptr::null_mut();
    // SAFETY: device 0's context is current; valid out-pointers; the stream and graph are destroyed
    // once below. Flags 1: CU_STREAM_NON_BLOCKING; mode 2: CU_STREAM_CAPTURE_MODE_RELAXED.
    unsafe {
        cu("cuStreamCreate", create(&mut stream, 1));
        cu("cuStreamBeginCapture", begin(stream, 2));
    }
    let refused = rt.alloc(0, 4096, stream as usize).unwrap_err();
    assert!(
        matches!(
            refused,
            RuntimeError::Backend(BackendError::Capturing { device: 0, .. })
        ),
        "{refused}"
    );
    // SAFETY: as above.
    unsafe {
        cu("cuStreamEndCapture", end(stream, &mut graph));
        cu("cuGraphDestroy", destroy_graph(graph));
    }
    let served = rt.alloc(0, 4096, stream as usize).unwrap();
    rt.free(0, served).unwrap();
    drop(rt);
    cuda.synchronize(0).unwrap();
    // SAFETY: the stream is idle and destroyed once.
    cu("cuStreamDestroy", unsafe { destroy_stream(stream) });
}
