//! A short soak (see `runtime_support/soak.rs`; `cargo bench --bench soak` runs the long one): perturbed
//! steps from two threads, every byte checked, nothing left allocated.

mod runtime_support;

use std::sync::Arc;

use model_opt::runtime::{HostBackend, Runtime, RuntimeConfig};
use runtime_support::soak::{run_soak, SoakConfig};

#[test]
fn perturbed_steps_from_several_threads_never_share_memory() {
    let rt = Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default());
    let report = run_soak(
        &rt,
        SoakConfig {
            steps: 4_000,
            threads: 2,
            signatures: 3,
            seed: 7,
            replan_every: 1_000,
            progress_every: None,
        },
    );
    eprintln!("{report:?}");
    // Every kind of event the soak is there for actually happened.
    // The share of planned hits depends on how the two threads interleave (26% to 52% of requests
    // in runs of this test): plans must serve a real share of them.
    assert!(report.planned_hits > report.allocations / 5, "{report:?}");
    assert!(report.divergences > 0, "{report:?}");
    assert!(
        report.record_streams > 0 && report.empty_caches > 0,
        "{report:?}"
    );
    assert!(
        report.refused_frees > 0 && report.replans >= 4,
        "{report:?}"
    );
    let st = rt.stats();
    assert_eq!(st.counters.unknown_frees, report.refused_frees);
}
