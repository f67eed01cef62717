//! The runtime's memory statistics against a direct count: bytes served by the fallback pool, and the
//! peak of reserved bytes, which only grows (an `empty_cache` lowers what is reserved, not the peak).

mod runtime_support;

use std::sync::Arc;

use model_opt::placement::PlanOptions;
use model_opt::runtime::{
    Backend, BackendError, Counters, HostBackend, Runtime, RuntimeConfig, HOST_DEVICE,
};
use runtime_support::{random_program, Driver, Op, Rng};

#[test]
fn fallback_bytes_and_the_reserved_peak_match_a_direct_count() {
    let rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    // Small, medium and large requests: three segment classes of the pool.
    let sizes = [1000usize, 3 << 20, 12 << 20, 700];
    let mut live = Vec::new();
    let mut peak = 0u64;
    for (k, &size) in sizes.iter().enumerate() {
        live.push(rt.alloc(HOST_DEVICE, size, 0).unwrap());
        let st = rt.stats();
        assert_eq!(st.counters.fallback_allocations, k as u64 + 1);
        assert_eq!(
            st.counters.fallback_bytes,
            sizes[..=k].iter().map(|&s| s as u64).sum::<u64>()
        );
        assert_eq!(st.reserved_bytes, st.fallback_reserved_bytes);
        // Every request is live: allocated bytes (and their peak) are the sizes' sum.
        let live = sizes[..=k].iter().map(|&s| s as u64).sum::<u64>();
        assert_eq!(st.counters.allocated_bytes, live);
        assert_eq!(st.counters.peak_allocated_bytes, live);
        assert!(st.reserved_bytes >= st.counters.allocated_bytes);
        peak = peak.max(st.reserved_bytes);
        assert_eq!(st.peak_reserved_bytes, peak, "after request {k}");
    }
    assert!(peak >= sizes.iter().sum::<usize>() as u64);
    for addr in live {
        rt.free(HOST_DEVICE, addr).unwrap();
    }
    // Nothing live: every byte the pool holds is cached, and all of it is given back.
    let cached = rt.stats().fallback_reserved_bytes;
    assert!(cached > 0);
    assert_eq!(rt.empty_cache().unwrap() as u64, cached);
    let st = rt.stats();
    assert_eq!(st.reserved_bytes, 0);
    assert_eq!(st.peak_reserved_bytes, peak, "the peak stays");
    let a = rt.alloc(HOST_DEVICE, 512, 0).unwrap();
    assert_eq!(rt.stats().peak_reserved_bytes, peak);
    rt.free(HOST_DEVICE, a).unwrap();
}

/// Plans quickly: these tests check counts, not the plans' quality.
fn quick() -> PlanOptions {
    PlanOptions {
        time_limit: std::time::Duration::from_millis(300),
        ..Default::default()
    }
}

/// A counter of [`Counters`].
type Field = fn(&Counters) -> u64;

/// Each request of a step is served one way: at its plan's offset, by the pool as a persistent
/// entry, by the pool as a transient the plan could not serve, or without a plan's offsets. So the
/// four counts add up to the step's requests, and the process-wide counters grow by the step's own.
/// Random steps, replayed as planned, changed (other sizes, requests added: divergences, then a new
/// signature planned), and keeping memory past their end (first-fit steps).
#[test]
fn every_request_is_counted_once_and_the_counters_sum_the_steps() {
    let mut kinds = [0u32; 4]; // steps with hits, persistent, transient fallbacks, unplanned requests
    for seed in 0..8 {
        let mut rng = Rng::new(seed);
        let rt = Runtime::new(
            Arc::new(HostBackend::new()),
            RuntimeConfig {
                max_divergences: 3,
                ..RuntimeConfig::default()
            },
        );
        let program = random_program(&mut rng, 40, 1);
        let mut d = Driver::new(&rt, HOST_DEVICE);
        rt.begin_profile().unwrap();
        d.run_step(&program, true);
        rt.end_profile().unwrap();
        rt.plan(&quick()).unwrap();
        for round in 0..12 {
            let step: Vec<Op> = match rng.below(4) {
                0 | 1 => program.clone(),
                2 => program
                    .iter()
                    .map(|op| match *op {
                        Op::Alloc { id, size, stream } if rng.chance(15) => Op::Alloc {
                            id,
                            size: size * 2 + 512,
                            stream,
                        },
                        op => op,
                    })
                    .collect(),
                _ => random_program(&mut rng, 30, 1),
            };
            let keep_some = rng.chance(30);
            let ran: Vec<Op> = if keep_some {
                // One temporary kept past the end of the step (freed with the next step's survivors).
                let victim = step.iter().find_map(|op| match *op {
                    Op::Free { id } => Some(id),
                    _ => None,
                });
                step.iter()
                    .copied()
                    .filter(|op| !matches!(op, Op::Free { id } if Some(*id) == victim))
                    .collect()
            } else {
                step
            };
            let before = rt.stats().counters;
            rt.begin_step(None).unwrap();
            d.run_step(&ran, true);
            let s = rt.end_step().unwrap();
            let after = rt.stats().counters;
            let allocs = ran
                .iter()
                .filter(|op| matches!(op, Op::Alloc { .. }))
                .count() as u64;
            let ctx = format!("seed {seed} round {round}: {s:?}");
            assert_eq!(s.allocations, allocs, "{ctx}");
            assert_eq!(
                s.planned_hits
                    + s.persistent_allocations
                    + s.transient_fallbacks
                    + s.unplanned_allocations,
                s.allocations,
                "{ctx}"
            );
            assert!(s.divergences <= s.transient_fallbacks, "{ctx}");
            assert_eq!(after.steps - before.steps, 1, "{ctx}");
            // Each process-wide counter grows by the step's own count.
            let grew = |f: Field| f(&after) - f(&before);
            let pairs: [(&str, Field, u64); 6] = [
                ("allocations", |c| c.allocations, s.allocations),
                ("planned_hits", |c| c.planned_hits, s.planned_hits),
                (
                    "persistent",
                    |c| c.persistent_allocations,
                    s.persistent_allocations,
                ),
                (
                    "transient_fallbacks",
                    |c| c.transient_fallbacks,
                    s.transient_fallbacks,
                ),
                ("divergences", |c| c.divergences, s.divergences),
                (
                    "unplanned",
                    |c| c.unplanned_allocations,
                    s.unplanned_allocations,
                ),
            ];
            for (name, field, step_count) in pairs {
                assert_eq!(grew(field), step_count, "{name}, {ctx}");
            }
            // What did not come from the arena came from the pool.
            let arena = s.planned_hits
                + (after.unplanned_arena_allocations - before.unplanned_arena_allocations);
            assert_eq!(
                after.fallback_allocations - before.fallback_allocations,
                s.allocations - arena,
                "{ctx}"
            );
            for (k, n) in [
                s.planned_hits,
                s.persistent_allocations,
                s.transient_fallbacks,
                s.unplanned_allocations,
            ]
            .into_iter()
            .enumerate()
            {
                kinds[k] += u32::from(n > 0);
            }
        }
        d.free_all();
    }
    assert!(
        kinds.iter().all(|&k| k > 0),
        "some way never taken: {kinds:?}"
    );
}

/// The host backend, counting what it hands out by size, and refusing device 0's requests of
/// `refuse_from` bytes or more.
struct Counting {
    host: HostBackend,
    sizes: std::sync::Mutex<Vec<usize>>,
    refuse_from: std::sync::atomic::AtomicUsize,
}

impl Counting {
    fn new() -> Counting {
        Counting {
            host: HostBackend::new(),
            sizes: Default::default(),
            refuse_from: usize::MAX.into(),
        }
    }
}

impl Backend for Counting {
    fn name(&self) -> &'static str {
        "counting host"
    }
    fn alloc(&self, device: i32, size: usize) -> Result<usize, BackendError> {
        if device == 0 && size >= self.refuse_from.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BackendError::OutOfMemory {
                backend: "counting host",
                device,
                size,
                detail: "refused by the test".to_string(),
            });
        }
        self.sizes.lock().unwrap().push(size);
        self.host.alloc(device, size)
    }
    fn free(&self, device: i32, addr: usize, size: usize) -> Result<(), BackendError> {
        self.host.free(device, addr, size)
    }
    fn synchronize(&self, device: i32) -> Result<(), BackendError> {
        self.host.synchronize(device)
    }
    fn mem_info(&self, device: i32) -> Result<Option<(u64, u64)>, BackendError> {
        self.host.mem_info(device)
    }
}

#[test]
fn an_arena_is_reserved_again_only_when_it_must_grow() {
    let backend = Arc::new(Counting::new());
    let rt = Runtime::new(backend.clone(), RuntimeConfig::default());
    let mut d = Driver::new(&rt, HOST_DEVICE);
    let program = random_program(&mut Rng::new(7), 30, 1);
    let mut arena_sizes = Vec::new();
    // The same step planned twice (the same arena bytes), then a step of half its requests.
    let half: Vec<Op> = program[..program.len() / 2].to_vec();
    for step in [&program, &program, &half] {
        rt.begin_profile().unwrap();
        d.run_step(step, true);
        rt.end_profile().unwrap();
        arena_sizes.push(rt.plan(&quick()).unwrap().arena_bytes);
        rt.begin_step(None).unwrap();
        d.run_step(step, true);
        rt.end_step().unwrap();
    }
    assert!(arena_sizes[2] <= arena_sizes[0], "{arena_sizes:?}");
    let reserved = |n: usize| {
        backend
            .sizes
            .lock()
            .unwrap()
            .iter()
            .filter(|&&s| s == n)
            .count()
    };
    assert_eq!(reserved(arena_sizes[0] as usize), 1, "{arena_sizes:?}");
    d.free_all();
}

#[test]
fn a_free_naming_the_wrong_device_is_found_on_the_right_one_and_an_unknown_free_is_refused() {
    let rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    let host = rt.alloc(HOST_DEVICE, 4096, 0).unwrap();
    let other = rt.alloc(0, 4096, 0).unwrap();
    assert_eq!(rt.stats().devices.len(), 2);
    // Each named as the other device: found where it was allocated, and freed.
    rt.free(0, host).unwrap();
    rt.free(HOST_DEVICE, other).unwrap();
    let st = rt.stats();
    assert_eq!((st.counters.frees, st.counters.unknown_frees), (2, 0));
    assert_eq!(st.counters.allocated_bytes, 0);
    // An address neither device handed out: refused and counted, on either name.
    assert!(rt.free(0, host + 64).is_err());
    assert!(
        rt.free(HOST_DEVICE, host).is_err(),
        "a second free is refused"
    );
    assert_eq!(rt.stats().counters.unknown_frees, 2);
}

#[test]
fn plain_frees_leave_no_error_message() {
    // The message about memory held for good (frees during a CUDA graph's capture) is for those
    // frees only: a plain free on this thread leaves its last error empty.
    let rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    model_opt::runtime::global::clear_last_error();
    for size in [512, 4096, 3 << 20] {
        let a = rt.alloc(HOST_DEVICE, size, 0).unwrap();
        rt.free(HOST_DEVICE, a).unwrap();
    }
    assert_eq!(model_opt::runtime::global::last_error(), None);
    assert_eq!(rt.stats().counters.graph_held_frees, 0);
}

/// A step of `n` buffers of `size` bytes, each freed after the next one is made.
fn chain(n: usize, size: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    for id in 0..n {
        ops.push(Op::Alloc {
            id,
            size,
            stream: 0,
        });
        if id > 0 {
            ops.push(Op::Free { id: id - 1 });
        }
    }
    ops.push(Op::Free { id: n - 1 });
    ops
}

/// `plan()` reserves every arena that must grow before it installs any, so that a refusal on one
/// device leaves the others as they were: the first device's new arena is given back when it has no
/// plan to serve, and kept (it is larger than the one it replaced) when its old arena was returned
/// to make room for it.
#[test]
fn a_plan_refused_on_a_second_device_leaves_the_first_as_it_was() {
    let backend = Arc::new(Counting::new());
    let rt = Runtime::new(backend.clone(), RuntimeConfig::default());
    let mut host = Driver::new(&rt, HOST_DEVICE);
    let mut dev = Driver::new(&rt, 0);
    let small = chain(4, 64 << 10);
    let large = chain(4, 8 << 20);
    let profile = |host: &mut Driver, dev: &mut Driver, steps: [&[Op]; 2]| {
        rt.begin_profile().unwrap();
        host.run_step(steps[0], true);
        dev.run_step(steps[1], true);
        rt.end_profile().unwrap();
    };
    let arm = |from: usize| {
        backend
            .refuse_from
            .store(from, std::sync::atomic::Ordering::SeqCst)
    };

    // No plan yet: device 0's arena refused, the host's reserved meanwhile is given back.
    profile(&mut host, &mut dev, [&small, &large]);
    arm(1 << 20);
    let err = rt.plan(&quick()).unwrap_err().to_string();
    assert!(
        err.contains("out of memory on counting host device 0"),
        "{err}"
    );
    let st = rt.stats();
    assert_eq!((st.arena_bytes, st.plans), (0, 0), "{st:?}");
    arm(usize::MAX);

    // Both devices planned on small steps; then a larger step on each, refused on device 0.
    profile(&mut host, &mut dev, [&small, &small]);
    let summary = rt.plan(&quick()).unwrap();
    // Both devices' steps are planned alike: the summary names each method once.
    let methods: Vec<&str> = summary.method.split(", ").collect();
    assert!(!summary.method.is_empty(), "{summary:?}");
    let mut unique = methods.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), methods.len(), "{summary:?}");
    profile(&mut host, &mut dev, [&large, &large]);
    arm(1 << 20);
    assert!(rt.plan(&quick()).is_err());
    arm(usize::MAX);
    let st = rt.stats();
    assert_eq!(st.plans, 2, "only the small steps' plans: {st:?}");
    assert!(
        st.arena_bytes >= 2 * (8 << 20),
        "the host keeps the larger arena it got: {st:?}"
    );
    // The old plans still serve their steps at their offsets, on both devices.
    for _ in 0..2 {
        rt.begin_step(None).unwrap();
        host.run_step(&small, true);
        dev.run_step(&small, true);
        let step = rt.end_step().unwrap();
        assert_eq!((step.planned_hits, step.divergences), (8, 0), "{step:?}");
    }
    host.free_all();
    dev.free_all();
}

/// A named step is recorded and planned at its end; when its last request grows, it diverges
/// there, and the second such step in a row has its signature planned again (one automatic re-plan,
/// no new signature); the third follows the new plan. The plan summary, the plan as served and the
/// peaks read back as they are.
#[test]
fn a_signature_diverging_twice_is_planned_again_and_the_plan_reads_back() {
    let rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    let mut d = Driver::new(&rt, HOST_DEVICE);
    let step = chain(6, 64 << 10);
    let mut grown = step.clone();
    if let Some(Op::Alloc { size, .. }) = grown
        .iter_mut()
        .rev()
        .find(|op| matches!(op, Op::Alloc { .. }))
    {
        *size = 256 << 10;
    }
    rt.begin_profile().unwrap();
    d.run_step(&step, true);
    rt.end_profile().unwrap();
    let profiled = rt.plan(&quick()).unwrap();
    assert_eq!(rt.last_plan(), Some(profiled));
    rt.begin_step(Some("train")).unwrap();
    d.run_step(&step, true);
    assert!(rt.end_step().unwrap().new_signature);
    let summary = rt
        .last_plan()
        .expect("the named step was planned at its end");
    assert_eq!(summary.buffers, 6, "{summary:?}");
    // The plans as served: the most recently used first (the named one), a row per planned buffer
    // after the header.
    let csvs = rt.plan_csvs().unwrap();
    let keys: Vec<_> = csvs.iter().map(|(d, k, _)| (*d, k.as_deref())).collect();
    assert_eq!(keys, [(HOST_DEVICE, Some("train")), (HOST_DEVICE, None)]);
    assert_eq!(
        csvs[0].2.lines().count(),
        1 + summary.buffers,
        "{}",
        csvs[0].2
    );

    let mut divergences = Vec::new();
    for _ in 0..3 {
        rt.begin_step(Some("train")).unwrap();
        d.run_step(&grown, true);
        divergences.push(rt.end_step().unwrap().divergences);
    }
    assert!(divergences[0] > 0 && divergences[1] > 0, "{divergences:?}");
    assert_eq!(divergences[2], 0, "the re-planned signature is followed");
    let st = rt.stats();
    assert_eq!(
        (st.counters.auto_replans, st.counters.new_signatures),
        (1, 1)
    );
    assert_eq!(st.plans, 2, "the named signature's plan was replaced");
    assert_ne!(
        rt.last_plan(),
        Some(summary),
        "the re-plan's summary is the last"
    );

    // Peaks: the reset brings them down to what is held now.
    d.free_all();
    let st = rt.stats();
    assert!(st.counters.peak_allocated_bytes > st.counters.allocated_bytes);
    rt.reset_peak_stats();
    let st = rt.stats();
    assert_eq!(
        st.counters.peak_allocated_bytes,
        st.counters.allocated_bytes
    );
    assert_eq!(st.peak_reserved_bytes, st.reserved_bytes);
}
