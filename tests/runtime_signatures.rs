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
        let before = rt.stats();
        rt.begin_step(None).unwrap();
        d.run_step(&program, true);
        let s = rt.end_step().unwrap();
        let in_arena = rt.stats().counters.unplanned_arena_allocations
            - before.counters.unplanned_arena_allocations;
        if s.new_signature && seen.iter().any(|&l| l > len) {
            // A new length shorter than a planned one: its temporaries come first-fit from the arena's
            // free space (the plan it followed says which are temporaries); only the gradients it
            // keeps go to the pool.
            assert_eq!(in_arena, s.unplanned_allocations - 3, "step {k}: {s:?}");
        }
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
    assert_eq!(rt.stats().plans, 2, "exactly the bound");
    rt.begin_step(None).unwrap();
    d.run_step(&padded_step(48), true);
    let s = rt.end_step().unwrap();
    assert!(!s.new_signature && s.divergences == 0, "{s:?}");
    d.free_all();
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}

/// Backward of a small model in flat gradient accumulation: activations, then one gradient per
/// parameter. With `keep` (the first micro-batch: gradients were set to None) each gradient is kept
/// as `.grad`; else (`.grad` exists) it is added in and freed. Same requests either way: only the
/// lifetimes differ.
fn micro_batch(keep: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    let acts: Vec<usize> = (0..12).collect();
    for (i, &a) in acts.iter().enumerate() {
        ops.push(Op::Alloc {
            id: a,
            size: (i % 4 + 1) * 6000,
            stream: 0,
        });
    }
    for (g, &a) in acts.iter().rev().enumerate() {
        let grad = 100 + g;
        ops.push(Op::Alloc {
            id: grad,
            size: (g % 3 + 1) * 5000,
            stream: 0,
        });
        ops.push(Op::Free { id: a });
        if !keep {
            ops.push(Op::Free { id: grad });
        }
    }
    ops
}

/// The optimizer part of the fourth micro-batch: state on the first update (kept for ever), then
/// temporaries.
fn optimizer(first: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    if first {
        for s in 0..4 {
            ops.push(Op::Alloc {
                id: 500 + s,
                size: 7000,
                stream: 0,
            });
        }
    }
    for t in 0..4 {
        ops.push(Op::Alloc {
            id: 600 + t,
            size: 3000 * (t + 1),
            stream: 0,
        });
        ops.push(Op::Free { id: 600 + t });
    }
    ops
}

#[test]
fn gradient_accumulation_tells_the_first_micro_batch_by_what_the_device_holds() {
    let rt = runtime();
    let mut d = Driver::new(&rt, HOST_DEVICE);
    // `.grad` of the first micro-batch, live until the fourth one's `zero_grad()`.
    let run = |d: &mut Driver, phase: usize, first_update: bool| {
        d.run_step(&micro_batch(phase == 0), false);
        if phase == 3 {
            d.run_ops(&optimizer(first_update));
            let grads: Vec<_> = d
                .live
                .keys()
                .copied()
                .filter(|k| (100..200).contains(&k.1))
                .collect();
            for k in grads {
                d.free(k);
            }
        }
    };
    run(&mut d, 0, false); // warm-up
    rt.begin_profile().unwrap();
    run(&mut d, 1, false);
    rt.end_profile().unwrap();
    rt.plan(&PlanOptions::default()).unwrap();
    let mut steps = Vec::new();
    let mut switches_from_8 = 0;
    for i in 2..30 {
        let phase = i % 4;
        let switches = rt.stats().counters.signature_switches;
        rt.begin_step(None).unwrap();
        run(&mut d, phase, i == 3);
        let s = rt.end_step().unwrap();
        if i >= 8 {
            switches_from_8 += rt.stats().counters.signature_switches - switches;
        }
        steps.push((i, s));
    }
    // Each step begins on its own signature, told by what the device holds when it begins: none has
    // to switch to another part-way.
    assert_eq!(switches_from_8, 0);
    for (i, s) in &steps {
        assert!(!s.abandoned, "iteration {i}: {s:?}");
        // The first micro-batch under a plan (iteration 4) cannot be told apart before its
        // gradients are kept: it diverges once, and is then planned as its own signature.
        if *i != 4 {
            assert_eq!(s.divergences, 0, "iteration {i}: {s:?}");
        }
        // From the second cycle after the first update on, every step follows a plan exactly.
        if *i >= 8 {
            assert!(!s.new_signature && !s.first_fit, "iteration {i}: {s:?}");
            assert_eq!(
                s.unplanned_allocations + s.transient_fallbacks,
                0,
                "iteration {i}: {s:?}"
            );
            assert!(s.planned_hits > 0, "iteration {i}: {s:?}");
        }
    }
    let st = rt.stats();
    assert!(st.plans <= 5, "{st:?}");
    d.free_all();
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}

#[test]
fn a_step_that_follows_its_plan_never_switches() {
    let rt = runtime();
    let program = padded_step(64);
    let mut d = profile_and_plan(&rt, &program);
    for k in 0..3 {
        rt.begin_step(None).unwrap();
        d.run_step(&program, true);
        let s = rt.end_step().unwrap();
        assert_eq!(s.planned_hits, transient(&program), "step {k}: {s:?}");
    }
    assert_eq!(rt.stats().counters.signature_switches, 0);
    d.free_all();
}

#[test]
fn profiling_without_a_plan_leaves_steps_refused_and_re_profiling_keeps_the_plans() {
    let rt = runtime();
    let program = padded_step(64);
    let mut d = Driver::new(&rt, HOST_DEVICE);
    rt.begin_profile().unwrap();
    d.run_step(&program, true);
    rt.end_profile().unwrap();
    assert_eq!(
        rt.mode().as_str(),
        "passthrough",
        "recorded, not planned yet"
    );
    let err = rt.begin_step(None).unwrap_err().to_string();
    assert!(err.contains("call model_opt.plan() first"), "{err}");
    rt.plan(&PlanOptions::default()).unwrap();
    // A second recording while planned: the plans keep serving steps once it ends.
    rt.begin_profile().unwrap();
    d.run_step(&padded_step(48), true);
    rt.end_profile().unwrap();
    assert_eq!(rt.mode().as_str(), "planned");
    rt.begin_step(None).unwrap();
    d.run_step(&program, true);
    let s = rt.end_step().unwrap();
    assert_eq!(s.planned_hits, transient(&program), "{s:?}");
    d.free_all();
}
