//! The long soak: `cargo bench --bench soak -- [STEPS] [THREADS]` (default 1,000,000 steps on 2
//! threads) runs perturbed replay steps on the host backend with every byte checked (see
//! `tests/runtime_support/soak.rs`), prints progress to stderr and a summary with steps/s. It panics
//! at the first overlap or corrupted byte.

#[path = "../tests/runtime_support/mod.rs"]
mod runtime_support;

use std::sync::Arc;
use std::time::Duration;

use model_opt::runtime::{HostBackend, Runtime, RuntimeConfig};
use runtime_support::soak::{run_soak, SoakConfig};

fn main() {
    // `cargo bench` passes `--bench`; numbers are the positional arguments.
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace('_', "").parse().ok())
        .collect();
    let cfg = SoakConfig {
        steps: numbers.first().copied().unwrap_or(1_000_000),
        threads: numbers.get(1).copied().unwrap_or(2) as usize,
        signatures: 4,
        seed: 2026,
        replan_every: 5_000,
        progress_every: Some(Duration::from_secs(15)),
    };
    let rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    let r = run_soak(&rt, cfg);
    let st = rt.stats();
    println!(
        "soak: {} steps on {} threads in {:.1} s ({:.0} steps/s): {} allocations ({:.2} GB filled and \
         checked), {} planned hits, {} divergences, {} fallback allocations, {} record_stream, {} \
         empty_cache, {} profiles+plans, {} automatic re-plans, {} double/unknown frees refused, {} \
         abandoned steps; no overlap, no corrupted byte, 0 bytes left allocated",
        r.steps,
        cfg.threads,
        r.elapsed.as_secs_f64(),
        r.steps_per_second(),
        r.allocations,
        r.bytes_checked as f64 / 1e9,
        r.planned_hits,
        r.divergences,
        r.fallback_allocations,
        r.record_streams,
        r.empty_caches,
        r.replans,
        r.auto_replans,
        r.refused_frees,
        st.counters.abandoned_steps,
    );
}
