//! Plans per step signature, all in one arena: loops whose steps differ (dynamic padding, gradient
//! accumulation, a short last batch) are served with zero divergences once each kind of step has
//! been seen, with every byte checked (see `runtime_support`).

mod runtime_support;

use std::sync::Arc;

use model_opt::placement::PlanOptions;
use model_opt::runtime::{HostBackend, Runtime, RuntimeConfig, HOST_DEVICE};
use runtime_support::{padded_step, persistent_ids, Driver, Op};

fn runtime() -> Runtime {
    Runtime::new(Arc::new(HostBackend::new()), RuntimeConfig::default())
}

/// Transient requests of a step (what a planned step serves from the arena).
fn transient(program: &[Op]) -> u64 {
    let allocs = program
        .iter()
        .filter(|o| matches!(o, Op::Alloc { .. }))
        .count();
    (allocs - persistent_ids(program).len()) as u64
}

fn profile_and_plan<'r>(rt: &'r Runtime, program: &[Op]) -> Driver<'r> {
    let mut d = Driver::new(rt, HOST_DEVICE);
    d.run_step(program, true); // warm-up
    rt.begin_profile().unwrap();
    d.run_step(program, true);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    d
}

#[test]
fn dynamic_padding_is_served_without_divergence_once_each_length_was_seen() {
    let rt = runtime();
    let mut d = profile_and_plan(&rt, &padded_step(64));
    let lengths = [64, 48, 64, 80, 32, 48, 80, 64, 32, 32, 80, 48];
    let mut seen = vec![64];
    let mut largest_bound = 0;
    for (k, &len) in lengths.iter().enumerate() {
        let program = padded_step(len);
        rt.begin_step(None).unwrap();
        d.run_step(&program, true);
        let s = rt.end_step().unwrap();
        assert_eq!(s.divergences, 0, "step {k} (length {len}): {s:?}");
        assert!(!s.abandoned);
        if seen.contains(&len) {
            assert!(!s.new_signature, "step {k} (length {len}) was seen: {s:?}");
            assert_eq!(s.planned_hits, transient(&program), "step {k}: {s:?}");
            assert_eq!(s.transient_fallbacks, 0);
        } else {
            assert!(s.new_signature, "step {k} (length {len}) is new: {s:?}");
            // The beginning common to every length is served by a plan; the rest is recorded.
            assert_eq!(s.planned_hits, 3, "step {k}: {s:?}");
            assert_eq!(s.unplanned_allocations, s.allocations - 3);
            seen.push(len);
        }
        largest_bound = largest_bound.max(rt.stats().lower_bound_bytes);
    }
    let st = rt.stats();
    assert_eq!(st.plans, 4, "one plan per length");
    assert_eq!(st.counters.new_signatures, 3);
    assert!(
        st.counters.signature_switches > 0,
        "steps begin alike, so they switch part-way"
    );
    // One arena for all: the largest plan's, close to its lower bound, not the sum of the plans
    // (about 3.3 times as much here).
    assert_eq!(st.lower_bound_bytes, largest_bound);
    assert!(
        st.arena_bytes >= largest_bound && st.arena_bytes * 100 <= largest_bound * 105,
        "arena {} against the largest lower bound {largest_bound}",
        st.arena_bytes
    );
    d.free_all();
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}

#[test]
fn the_warm_up_and_recorded_steps_leave_no_cached_memory_once_planned() {
    let rt = runtime();
    let program = padded_step(64);
    let mut d = profile_and_plan(&rt, &program);
    let st = rt.stats();
    // What the pool still holds is the gradients that outlive the step (3 blocks, one 2 MiB
    // segment), not the step's activations of the warm-up and the recording.
    assert!(st.fallback_reserved_bytes <= 2 << 20, "{st:?}");
    assert!(st.reserved_bytes <= st.arena_bytes + (2 << 20));
    for len in [48, 80, 64] {
        rt.begin_step(None).unwrap();
        d.run_step(&padded_step(len), true);
        rt.end_step().unwrap();
        let st = rt.stats();
        assert!(
            st.fallback_reserved_bytes <= 2 << 20,
            "after length {len}: {st:?}"
        );
    }
    d.free_all();
}

#[test]
fn gradient_accumulation_plans_the_optimizer_step_as_its_own_signature() {
    // Four micro-batches; the fourth also runs the optimizer (extra requests at the end).
    let micro = padded_step(64);
    let mut last = micro.clone();
    let next = 1000;
    for (i, size) in [40_000, 40_000, 9_000].into_iter().enumerate() {
        last.push(Op::Alloc {
            id: next + i,
            size,
            stream: 0,
        });
        last.push(Op::Free { id: next + i });
    }
    let rt = runtime();
    let mut d = profile_and_plan(&rt, &micro);
    for i in 0..16 {
        let program = if (i + 1) % 4 == 0 { &last } else { &micro };
        rt.begin_step(None).unwrap();
        d.run_step(program, true);
        let s = rt.end_step().unwrap();
        assert_eq!(s.divergences, 0, "iteration {i}: {s:?}");
        assert_eq!(s.new_signature, i == 3, "iteration {i}: {s:?}");
        if i > 3 {
            assert_eq!(s.planned_hits, transient(program), "iteration {i}: {s:?}");
        }
    }
    assert_eq!(rt.stats().plans, 2);
    d.free_all();
}

#[test]
fn a_key_names_the_signature() {
    let rt = runtime();
    let mut d = profile_and_plan(&rt, &padded_step(64));
    for (k, len) in [48, 80, 48, 80, 48].into_iter().enumerate() {
        let key = format!("len{len}");
        rt.begin_step(Some(&key)).unwrap();
        let program = padded_step(len);
        d.run_step(&program, true);
        let s = rt.end_step().unwrap();
        assert_eq!(s.divergences, 0, "step {k}: {s:?}");
        assert_eq!(s.new_signature, k < 2, "step {k}: {s:?}");
        if k >= 2 {
            assert_eq!(s.planned_hits, transient(&program));
            assert_eq!(
                rt.stats().counters.signature_switches,
                0,
                "a key never switches"
            );
        }
    }
    assert_eq!(rt.stats().plans, 3);
    d.free_all();
}

#[test]
fn past_the_plan_limit_the_least_recently_used_signature_is_dropped() {
    let rt = Runtime::new(
        Arc::new(HostBackend::new()),
        RuntimeConfig {
            max_plans: 2,
            ..RuntimeConfig::default()
        },
    );
    let mut d = profile_and_plan(&rt, &padded_step(64));
    // Three lengths in turn with room for two plans: every step is new again, and still correct.
    for (k, len) in [48, 80, 64, 48, 80, 64].into_iter().enumerate() {
        rt.begin_step(None).unwrap();
        d.run_step(&padded_step(len), true);
        let s = rt.end_step().unwrap();
        assert_eq!(s.divergences, 0);
        assert!(s.new_signature || k == 0, "step {k}: {s:?}");
        assert!(rt.stats().plans <= 2);
    }
    // Two lengths fit: both are served from then on.
    for len in [48, 64, 48, 64] {
        rt.begin_step(None).unwrap();
        d.run_step(&padded_step(len), true);
        rt.end_step().unwrap();
    }
    rt.begin_step(None).unwrap();
    d.run_step(&padded_step(48), true);
    let s = rt.end_step().unwrap();
    assert!(!s.new_signature && s.divergences == 0, "{s:?}");
    d.free_all();
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}
