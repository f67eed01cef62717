//! The soak: many perturbed training steps against one runtime on the host backend, from several
//! threads at once, with every byte handed out checked. Used by `tests/runtime_soak.rs` (a short run
//! in CI) and `benches/soak.rs` (a million steps, for BENCHMARKS.md).
//!
//! Each step follows one of a few step *signatures* (random programs), perturbed the way real loops
//! drift: extra, missing and resized requests, blocks kept for a few steps (a stored loss), buffers
//! passed to `record_stream`, `empty_cache` in the middle of a step, steps outside `step()`, double
//! and unknown frees, and every so often a fresh profile and plan. Every block is filled with a
//! pattern of its own when handed out and checked when freed; an independent map of the live ranges
//! checks each new block against every live one. Any overlap panics with the addresses.

use std::collections::BTreeMap;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use model_opt::placement::PlanOptions;
use model_opt::runtime::{Runtime, HOST_DEVICE};

use super::{check, fill, Live, Op, Rng};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct SoakConfig {
    pub steps: u64,
    pub threads: usize,
    pub signatures: usize,
    pub seed: u64,
    /// Profile and plan afresh every this many steps (and at the first).
    pub replan_every: u64,
    /// Print a progress line this often (None: quiet).
    pub progress_every: Option<Duration>,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub steps: u64,
    pub allocations: u64,
    pub bytes_checked: u64,
    pub planned_hits: u64,
    pub divergences: u64,
    pub fallback_allocations: u64,
    pub record_streams: u64,
    pub empty_caches: u64,
    pub replans: u64,
    pub auto_replans: u64,
    pub refused_frees: u64,
    pub elapsed: Duration,
}

impl SoakReport {
    pub fn steps_per_second(&self) -> f64 {
        self.steps as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A small step program: allocations of mostly small sizes (so a million steps stay cheap to fill
/// and check), each freed later in the step unless it persists.
fn signature_program(rng: &mut Rng) -> Vec<Op> {
    let n = 8 + rng.below(24) as usize;
    let mut ops = Vec::new();
    let mut live: Vec<usize> = Vec::new();
    for id in 0..n {
        let size = match rng.below(20) {
            0 => 1 + rng.below(63) as usize,
            1..=15 => 64 + rng.below(4096) as usize,
            16..=18 => (1 + rng.below(16)) as usize * 1024,
            _ => 64 << 10,
        };
        ops.push(Op::Alloc {
            id,
            size,
            stream: rng.below(2) as usize,
        });
        live.push(id);
        while !live.is_empty() && rng.chance(50) {
            let k = rng.below(live.len() as u64) as usize;
            ops.push(Op::Free {
                id: live.swap_remove(k),
            });
        }
    }
    for id in live {
        if !rng.chance(15) {
            ops.push(Op::Free { id });
        }
    }
    ops
}

/// One step's drift from its signature.
fn perturb(program: &[Op], rng: &mut Rng) -> Vec<Op> {
    let mut p = program.to_vec();
    let mut next_id = p.len() + 1;
    for _ in 0..rng.below(3) {
        match rng.below(4) {
            // An extra request somewhere, freed a little later.
            0 => {
                let at = rng.below(p.len() as u64 + 1) as usize;
                let size = 1 + rng.below(8192) as usize;
                p.insert(
                    at,
                    Op::Alloc {
                        id: next_id,
                        size,
                        stream: 0,
                    },
                );
                let free_at = (at + 1 + rng.below(4) as usize).min(p.len());
                p.insert(free_at, Op::Free { id: next_id });
                next_id += 1;
            }
            // A request that does not happen this time.
            1 => {
                if let Some(&Op::Alloc { id, .. }) = p
                    .iter()
                    .filter(|o| matches!(o, Op::Alloc { .. }))
                    .nth(rng.below(p.len() as u64) as usize)
                {
                    p.retain(
                        |o| !matches!(o, Op::Alloc { id: i, .. } | Op::Free { id: i } if *i == id),
                    );
                }
            }
            // A different size (a shorter or longer batch).
            2 => {
                if let Some(Op::Alloc { size, .. }) = p
                    .iter_mut()
                    .filter(|o| matches!(o, Op::Alloc { .. }))
                    .nth(rng.below(8) as usize)
                {
                    *size = match rng.below(3) {
                        0 => (*size / 2).max(1),
                        1 => *size + 1,
                        _ => *size * 2,
                    };
                }
            }
            // A block the program keeps past the step (handled by the runner: frees dropped).
            _ => {
                if let Some(k) = p.iter().position(|o| matches!(o, Op::Free { .. })) {
                    p.remove(k);
                }
            }
        }
    }
    p
}

/// Live ranges of every thread, independent of the runtime: start -> (end, tag).
struct LiveMap(Mutex<BTreeMap<usize, (usize, u64)>>);

impl LiveMap {
    fn insert(&self, l: &Live) {
        let mut m = self.0.lock().unwrap();
        let end = l.addr + l.size.max(1);
        if let Some((&start, &(other_end, tag))) = m.range(..end).next_back() {
            assert!(
                other_end <= l.addr,
                "block [{:#x}, {end:#x}) handed out over live block [{start:#x}, {other_end:#x}) (tag {tag:#x})",
                l.addr
            );
        }
        m.insert(l.addr, (end, l.tag));
    }

    fn remove(&self, l: &Live) {
        let removed = self.0.lock().unwrap().remove(&l.addr);
        assert_eq!(
            removed.map(|r| r.1),
            Some(l.tag),
            "live map lost {:#x}",
            l.addr
        );
    }
}

/// Shared between the soak's threads.
struct Shared<'r> {
    rt: &'r Runtime,
    live: LiveMap,
    /// Blocks kept past their step: (step to free them at, block).
    kept: Mutex<Vec<(u64, Live)>>,
    counts: Mutex<SoakReport>,
    barrier: Barrier,
}

impl Shared<'_> {
    fn alloc(&self, size: usize, stream: usize, tag: u64) -> Live {
        let addr = self
            .rt
            .alloc(HOST_DEVICE, size, stream)
            .unwrap_or_else(|e| panic!("alloc({size}) failed: {e}"));
        assert!(
            addr != 0 && addr.is_multiple_of(512),
            "bad address {addr:#x}"
        );
        let l = Live { addr, size, tag };
        self.live.insert(&l);
        fill(&l);
        l
    }

    fn free(&self, l: &Live) {
        check(l);
        self.live.remove(l);
        self.rt
            .free(HOST_DEVICE, l.addr)
            .unwrap_or_else(|e| panic!("free of live {:#x} refused: {e}", l.addr));
    }
}

/// The per-step decisions every thread derives identically from the step number.
struct StepPlan {
    program: Vec<Op>,
    in_step: bool,
    profile: bool,
    empty_cache_at: Option<usize>,
}

fn step_plan(cfg: &SoakConfig, signatures: &[Vec<Op>], step: u64) -> StepPlan {
    let mut rng = Rng::new(cfg.seed ^ step.wrapping_mul(0x9E37_79B9));
    // Signatures come in runs, as epochs and accumulation windows do, with strays.
    let n = signatures.len() as u64;
    let sig = if rng.chance(10) {
        rng.below(n)
    } else {
        (step / 40) % n
    } as usize;
    let program = if rng.chance(70) {
        signatures[sig].clone()
    } else {
        perturb(&signatures[sig], &mut rng)
    };
    let profile = step == 1 || step.is_multiple_of(cfg.replan_every.max(1));
    StepPlan {
        in_step: !profile && !rng.chance(3),
        profile,
        empty_cache_at: rng
            .chance(2)
            .then(|| rng.below(program.len() as u64) as usize),
        program,
    }
}

/// Runs the soak; panics at the first corrupted byte or overlap.
pub fn run_soak(rt: &Runtime, cfg: SoakConfig) -> SoakReport {
    let mut rng = Rng::new(cfg.seed);
    let signatures: Vec<Vec<Op>> = (0..cfg.signatures.max(1))
        .map(|_| signature_program(&mut rng))
        .collect();
    let shared = Shared {
        rt,
        live: LiveMap(Mutex::new(BTreeMap::new())),
        kept: Mutex::new(Vec::new()),
        counts: Mutex::new(SoakReport::default()),
        barrier: Barrier::new(cfg.threads.max(1)),
    };
    let threads = cfg.threads.max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let shared = &shared;
            let signatures = &signatures;
            scope.spawn(move || worker(shared, signatures, cfg, t, threads, started));
        }
    });
    let mut report = shared.counts.into_inner().unwrap();
    // What is still kept is freed (and checked) last.
    for (_, l) in shared.kept.into_inner().unwrap() {
        check(&l);
        rt.free(HOST_DEVICE, l.addr).unwrap();
    }
    let st = rt.stats();
    assert_eq!(
        st.counters.allocated_bytes, 0,
        "bytes still allocated at the end"
    );
    report.steps = cfg.steps;
    report.planned_hits = st.counters.planned_hits;
    report.divergences = st.counters.divergences;
    report.fallback_allocations = st.counters.fallback_allocations;
    report.auto_replans = st.counters.auto_replans;
    report.elapsed = started.elapsed();
    report
}

fn worker(
    shared: &Shared,
    signatures: &[Vec<Op>],
    cfg: SoakConfig,
    t: usize,
    threads: usize,
    started: Instant,
) {
    let rt = shared.rt;
    let mut local = SoakReport::default();
    let mut last_progress = Instant::now();
    let mut mine: BTreeMap<usize, Live> = BTreeMap::new();
    for step in 1..=cfg.steps {
        let plan = step_plan(&cfg, signatures, step);
        let mut rng = Rng::new(cfg.seed ^ step ^ ((t as u64 + 1) << 40));
        if t == 0 {
            // Blocks kept by earlier steps whose time has come; then open the step.
            let due: Vec<Live> = {
                let mut kept = shared.kept.lock().unwrap();
                let (due, keep): (Vec<_>, Vec<_>) = kept.drain(..).partition(|k| k.0 <= step);
                *kept = keep;
                due.into_iter().map(|k| k.1).collect()
            };
            for l in &due {
                shared.free(l);
            }
            if plan.profile {
                rt.begin_profile().unwrap();
            } else if plan.in_step {
                rt.begin_step(None).unwrap();
            }
        }
        shared.barrier.wait();
        // This thread's share of the step: the ids congruent to t, in program order.
        for (k, op) in plan.program.iter().enumerate() {
            if t == 0 && plan.empty_cache_at == Some(k) {
                rt.empty_cache().unwrap();
                local.empty_caches += 1;
            }
            match *op {
                Op::Alloc { id, size, stream } if id % threads == t => {
                    let tag = (step << 24) ^ ((id as u64) << 8) ^ t as u64;
                    let l = shared.alloc(size, stream, tag);
                    local.allocations += 1;
                    local.bytes_checked += size as u64;
                    if rng.chance(3) && rt.record_stream(l.addr, 1 + rng.below(3) as usize) {
                        local.record_streams += 1;
                    }
                    assert!(mine.insert(id, l).is_none(), "program reuses id {id}");
                }
                Op::Free { id } if id % threads == t => {
                    if let Some(l) = mine.remove(&id) {
                        shared.free(&l);
                    }
                }
                _ => {}
            }
        }
        // Survivors are persistent (gradients, a stored loss): most die next step, a few later.
        let survivors: Vec<Live> = std::mem::take(&mut mine).into_values().collect();
        {
            let mut kept = shared.kept.lock().unwrap();
            for l in survivors {
                let due = step + 1 + if rng.chance(10) { rng.below(6) } else { 0 };
                kept.push((due, l));
            }
        }
        shared.barrier.wait();
        if t == 0 {
            if plan.profile {
                rt.end_profile().unwrap();
                let options = PlanOptions {
                    time_limit: Duration::from_millis(100),
                    ..Default::default()
                };
                rt.plan(&options).unwrap();
                local.replans += 1;
            } else if plan.in_step {
                rt.end_step().unwrap();
            }
            // Alone now: a double free and a free of foreign memory are refused and change nothing.
            if rng.chance(5) {
                let l = shared.alloc(100 + rng.below(5000) as usize, 0, step << 24 | 0xFF);
                shared.free(&l);
                assert!(
                    rt.free(HOST_DEVICE, l.addr).is_err(),
                    "double free accepted"
                );
                let foreign = [0u64; 8];
                assert!(rt.free(HOST_DEVICE, foreign.as_ptr() as usize).is_err());
                local.refused_frees += 2;
            }
            if let Some(every) = cfg.progress_every {
                if last_progress.elapsed() >= every {
                    last_progress = Instant::now();
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "soak: {step}/{} steps, {:.0} steps/s, {} planned hits, {} divergences",
                        cfg.steps,
                        step as f64 / secs,
                        rt.stats().counters.planned_hits,
                        rt.stats().counters.divergences,
                    );
                }
            }
        }
        shared.barrier.wait();
    }
    let mut c = shared.counts.lock().unwrap();
    c.allocations += local.allocations;
    c.bytes_checked += local.bytes_checked;
    c.record_streams += local.record_streams;
    c.empty_caches += local.empty_caches;
    c.replans += local.replans;
    c.refused_frees += local.refused_frees;
}
