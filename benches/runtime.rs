//! Replay latency of the allocator runtime on a recorded real trace (resnet18, batch 2 at 64x64, one
//! CPU training step: `benches/data/resnet18_b2_64px.csv`), against the fallback pool and against libc
//! malloc/free of the same sizes in the same order, in one run.
//!
//! `cargo bench --bench runtime` prints, per allocator, the median (and p10/p90) time of one
//! alloc+free pair over many replays of the whole step, and the ratios. A plain harness (not
//! criterion) because the numbers wanted are medians of whole-step replays.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use model_opt::placement::csv::read_csv_file;
use model_opt::placement::PlanOptions;
use model_opt::runtime::{HostBackend, Runtime, RuntimeConfig, HOST_DEVICE};

#[derive(Clone, Copy)]
enum Ev {
    Alloc(usize, usize),
    Free(usize),
}

fn events(path: &Path) -> (Vec<Ev>, usize) {
    let parsed = read_csv_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let buffers = &parsed.problem.buffers;
    let mut evs: Vec<(u64, Ev)> = Vec::with_capacity(buffers.len() * 2);
    for (i, b) in buffers.iter().enumerate() {
        evs.push((b.lifetime.start, Ev::Alloc(i, b.size.0 as usize)));
        evs.push((b.lifetime.end, Ev::Free(i)));
    }
    evs.sort_by_key(|e| e.0);
    (evs.into_iter().map(|e| e.1).collect(), buffers.len())
}

fn run_runtime(rt: &Runtime, evs: &[Ev], addrs: &mut [usize]) {
    for e in evs {
        match *e {
            Ev::Alloc(i, size) => addrs[i] = rt.alloc(HOST_DEVICE, size, 0).expect("alloc"),
            Ev::Free(i) => rt.free(HOST_DEVICE, addrs[i]).expect("free"),
        }
    }
}

fn run_malloc(evs: &[Ev], addrs: &mut [usize]) {
    for e in evs {
        match *e {
            // SAFETY: plain malloc/free of the trace's sizes; every pointer is freed once.
            Ev::Alloc(i, size) => addrs[i] = unsafe { libc::malloc(size) } as usize,
            Ev::Free(i) => unsafe { libc::free(addrs[i] as *mut libc::c_void) },
        }
        std::hint::black_box(&addrs);
    }
}

/// Nanoseconds per alloc+free pair for each of `rounds` runs of `f` (one whole step each).
fn measure(rounds: usize, pairs: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..rounds / 10 + 1 {
        f(); // warm-up
    }
    let mut out: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64 / pairs as f64
        })
        .collect();
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data/resnet18_b2_64px.csv");
    let (evs, n) = events(&path);
    let rounds = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut addrs = vec![0usize; n];

    // Replay: record the step once, plan it, then replay it inside steps.
    let replay_rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    replay_rt.begin_profile().expect("profile");
    run_runtime(&replay_rt, &evs, &mut addrs);
    replay_rt.end_profile().expect("profile");
    let summary = replay_rt.plan(&PlanOptions::default()).expect("plan");
    replay_rt.begin_step(None).expect("step");
    run_runtime(&replay_rt, &evs, &mut addrs);
    let s = replay_rt.end_step().expect("step");
    assert_eq!(
        (s.planned_hits as usize, s.divergences),
        (n, 0),
        "the replay must hit the plan"
    );
    let replay = measure(rounds, n, || {
        replay_rt.begin_step(None).expect("step");
        run_runtime(&replay_rt, &evs, &mut addrs);
        replay_rt.end_step().expect("step");
    });

    // Fallback pool only (passthrough mode), warmed up by the first round.
    let pool_rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    let fallback = measure(rounds, n, || run_runtime(&pool_rt, &evs, &mut addrs));

    let malloc = measure(rounds, n, || run_malloc(&evs, &mut addrs));

    println!(
        "trace: {} ({n} buffers, {} events)",
        path.display(),
        evs.len()
    );
    println!(
        "plan: arena {} bytes, lower bound {} bytes, method {}",
        summary.arena_bytes, summary.lower_bound_bytes, summary.method
    );
    println!("rounds: {rounds} whole-step replays per allocator; ns per alloc+free pair");
    println!(
        "{:<22} {:>8} {:>8} {:>8}",
        "allocator", "p10", "median", "p90"
    );
    for (name, v) in [
        ("model_opt replay", &replay),
        ("model_opt fallback", &fallback),
        ("libc malloc/free", &malloc),
    ] {
        println!(
            "{name:<22} {:>8.1} {:>8.1} {:>8.1}",
            pct(v, 0.1),
            pct(v, 0.5),
            pct(v, 0.9)
        );
    }
    let (r, f, m) = (pct(&replay, 0.5), pct(&fallback, 0.5), pct(&malloc, 0.5));
    println!(
        "ratio replay/fallback {:.2}, replay/malloc {:.2}",
        r / f,
        r / m
    );
}
