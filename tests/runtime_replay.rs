//! Random steps profiled, planned and replayed on the host backend; then perturbed replays. Every
//! allocation carries a pattern checked at its free, so an overlap anywhere fails the test.

mod runtime_support;

use std::sync::Arc;

use model_opt::placement::PlanOptions;
use model_opt::runtime::{HostBackend, Mode, Runtime, RuntimeConfig, HOST_DEVICE};
use runtime_support::{persistent_ids, random_program, Driver, Op, Rng};

fn runtime() -> Runtime {
    runtime_with(RuntimeConfig::default())
}

fn runtime_with(config: RuntimeConfig) -> Runtime {
    Runtime::new(Arc::new(HostBackend::new()), config)
}

fn quick() -> PlanOptions {
    PlanOptions {
        time_limit: std::time::Duration::from_millis(500),
        ..Default::default()
    }
}

/// Profiles `program`, plans it, and returns the driver positioned after the profiled step.
fn profile_and_plan<'r>(rt: &'r Runtime, program: &[Op]) -> Driver<'r> {
    let mut d = Driver::new(rt, HOST_DEVICE);
    rt.begin_profile().unwrap();
    d.run_step(program, true);
    rt.end_profile().unwrap();
    let summary = rt.plan(&quick()).unwrap();
    let persistent = persistent_ids(program);
    assert_eq!(summary.persistent_buffers, persistent.len());
    // The summary's sums against a direct count: the persistent bytes, and a bound that holds the
    // largest transient buffer at least.
    let sizes: Vec<(usize, u64)> = program
        .iter()
        .filter_map(|op| match *op {
            Op::Alloc { id, size, .. } => Some((id, size as u64)),
            Op::Free { .. } => None,
        })
        .collect();
    let (kept, transient): (Vec<_>, Vec<_>) =
        sizes.iter().partition(|(id, _)| persistent.contains(id));
    let persistent_bytes: u64 = kept.iter().map(|(_, size)| size).sum();
    assert_eq!(summary.persistent_bytes, persistent_bytes);
    let largest_transient = transient.iter().map(|(_, size)| *size).max().unwrap_or(0);
    assert!(
        summary.lower_bound_bytes >= largest_transient,
        "{summary:?}"
    );
    assert!(summary.arena_bytes >= summary.lower_bound_bytes);
    d
}

#[test]
fn exact_replays_serve_every_transient_allocation_from_the_arena() {
    for seed in 0..12 {
        let mut rng = Rng::new(seed);
        let streams = 1 + (seed % 3) as usize;
        let n = 60 + rng.below(120) as usize;
        let program = random_program(&mut rng, n, streams);
        let rt = runtime();
        let mut d = profile_and_plan(&rt, &program);
        let transient = program
            .iter()
            .filter(|o| matches!(o, Op::Alloc { .. }))
            .count()
            - persistent_ids(&program).len();
        for _ in 0..15 {
            rt.begin_step(None).unwrap();
            d.run_step(&program, true);
            let s = rt.end_step().unwrap();
            assert_eq!(s.divergences, 0, "seed {seed}");
            assert_eq!(s.transient_fallbacks, 0, "seed {seed}");
            assert_eq!(s.planned_hits as usize, transient, "seed {seed}");
            assert_eq!(
                s.persistent_allocations as usize,
                persistent_ids(&program).len()
            );
        }
        d.free_all();
        let st = rt.stats();
        assert_eq!(st.counters.allocated_bytes, 0);
        assert_eq!(st.counters.unknown_frees, 0);
        assert_eq!(st.mode, "planned");
    }
}

/// A perturbation of a step program.
fn perturb(program: &[Op], kind: u64, rng: &mut Rng) -> Vec<Op> {
    let mut p = program.to_vec();
    let max_id = p
        .iter()
        .filter_map(|o| {
            if let Op::Alloc { id, .. } = o {
                Some(*id)
            } else {
                None
            }
        })
        .max()
        .unwrap_or(0);
    match kind {
        // Sizes grown.
        0 => {
            for o in p.iter_mut() {
                if let Op::Alloc { size, .. } = o {
                    if rng.chance(20) {
                        *size = *size * 2 + 4096;
                    }
                }
            }
        }
        // Extra allocations, freed a little later.
        1 => {
            let mut extra = max_id + 1;
            let mut out = Vec::new();
            for o in p {
                out.push(o);
                if rng.chance(15) {
                    out.push(Op::Alloc {
                        id: extra,
                        size: 1 + rng.below(100_000) as usize,
                        stream: 0,
                    });
                    out.push(Op::Free { id: extra });
                    extra += 1;
                }
            }
            p = out;
        }
        // Allocations removed (with their frees).
        2 => {
            let removed: Vec<usize> = p
                .iter()
                .filter_map(|o| {
                    if let Op::Alloc { id, .. } = o {
                        Some(*id)
                    } else {
                        None
                    }
                })
                .filter(|_| rng.chance(15))
                .collect();
            p.retain(|o| match o {
                Op::Alloc { id, .. } | Op::Free { id } => !removed.contains(id),
            });
        }
        // Frees delayed: to the end of the step, or past it.
        3 => {
            let mut delayed = Vec::new();
            p.retain(|o| match o {
                Op::Free { id } if rng.chance(20) => {
                    delayed.push(*id);
                    false
                }
                _ => true,
            });
            for id in delayed {
                if rng.chance(50) {
                    p.push(Op::Free { id });
                }
            }
        }
        // Order changed: neighbouring allocations swapped.
        _ => {
            for i in 1..p.len() {
                if matches!(p[i], Op::Alloc { .. })
                    && matches!(p[i - 1], Op::Alloc { .. })
                    && rng.chance(30)
                {
                    p.swap(i, i - 1);
                }
            }
        }
    }
    p
}

#[test]
fn perturbed_replays_stay_correct() {
    for seed in 0..10 {
        let mut rng = Rng::new(100 + seed);
        let streams = 1 + (seed % 2) as usize;
        let program = random_program(&mut rng, 120, streams);
        // Without the automatic re-plan, so that the plan stays the one of `program` throughout.
        let rt = runtime_with(RuntimeConfig {
            auto_replan: false,
            ..RuntimeConfig::default()
        });
        let mut d = profile_and_plan(&rt, &program);
        let mut total_divergences = 0;
        for step in 0..25 {
            let kind = step % 6;
            let p = if kind == 5 {
                program.clone()
            } else {
                perturb(&program, kind, &mut rng)
            };
            rt.begin_step(None).unwrap();
            d.run_step(&p, true);
            // Unknown pointers freed: refused, counted, nothing breaks.
            assert!(rt.free(HOST_DEVICE, 0xdead_b000).is_err());
            let s = rt.end_step().unwrap();
            total_divergences += s.divergences;
            assert_eq!(
                s.allocations as usize,
                p.iter().filter(|o| matches!(o, Op::Alloc { .. })).count()
            );
            // A step after one whose frees were delayed past its end may be served first-fit
            // (unplanned): the kept memory sits where its plan would put it.
            assert_eq!(
                s.planned_hits
                    + s.persistent_allocations
                    + s.transient_fallbacks
                    + s.unplanned_allocations,
                s.allocations
            );
            assert_eq!(s.first_fit, s.unplanned_allocations > 0, "{s:?}");
        }
        d.free_all();
        let st = rt.stats();
        assert!(
            total_divergences > 0,
            "perturbations should diverge somewhere"
        );
        assert_eq!(st.counters.divergences, total_divergences);
        assert_eq!(st.counters.unknown_frees, 25);
        assert_eq!(st.counters.allocated_bytes, 0);
        // After all that, the exact program still replays perfectly.
        rt.begin_step(None).unwrap();
        d.run_step(&program, true);
        let s = rt.end_step().unwrap();
        assert_eq!(s.divergences, 0, "seed {seed}");
        d.free_all();
    }
}

#[test]
fn kept_outputs_of_earlier_steps_block_their_slots() {
    let mut rng = Rng::new(7);
    let program = random_program(&mut rng, 80, 1);
    let rt = runtime();
    let mut d = profile_and_plan(&rt, &program);
    // Step 1 keeps everything it allocates alive (no frees at all): every later request that would
    // reuse those bytes must go elsewhere.
    let allocs_only: Vec<Op> = program
        .iter()
        .copied()
        .filter(|o| matches!(o, Op::Alloc { .. }))
        .collect();
    rt.begin_step(None).unwrap();
    d.run_step(&allocs_only, true);
    let first = rt.end_step().unwrap();
    assert!(first.divergences > 0);
    rt.begin_step(None).unwrap();
    d.run_step(&program, false);
    let second = rt.end_step().unwrap();
    assert_eq!(second.planned_hits, 0, "every slot is still held by step 1");
    d.free_all();
    rt.begin_step(None).unwrap();
    d.run_step(&program, true);
    assert_eq!(rt.end_step().unwrap().divergences, 0);
    d.free_all();
}

#[test]
fn too_many_divergences_abandon_the_step_plan() {
    let mut rng = Rng::new(3);
    let program = random_program(&mut rng, 100, 1);
    // Without automatic planning a step unlike the plan follows it as best it can (with it, the
    // step would be recorded as a new signature instead).
    let rt = runtime_with(RuntimeConfig {
        max_divergences: 5,
        auto_replan: false,
        ..RuntimeConfig::default()
    });
    let mut d = profile_and_plan(&rt, &program);
    let grown: Vec<Op> = program
        .iter()
        .map(|o| match *o {
            Op::Alloc { id, size, stream } => Op::Alloc {
                id,
                size: size * 3 + 8192,
                stream,
            },
            f => f,
        })
        .collect();
    rt.begin_step(None).unwrap();
    d.run_step(&grown, true);
    let stats_in_step = rt.stats();
    assert!(!stats_in_step.plan_active);
    let s = rt.end_step().unwrap();
    assert!(s.abandoned);
    assert_eq!(s.divergences, 6);
    assert_eq!(rt.stats().counters.abandoned_steps, 1);
    // The next step starts following the plan again.
    rt.begin_step(None).unwrap();
    d.run_step(&program, true);
    let s = rt.end_step().unwrap();
    assert!(!s.abandoned && s.divergences == 0);
    d.free_all();
}

#[test]
fn state_machine_refuses_out_of_order_calls_with_explanations() {
    let rt = runtime();
    assert_eq!(rt.mode(), Mode::Passthrough);
    let e = rt.begin_step(None).unwrap_err().to_string();
    assert!(e.contains("profile()") && e.contains("plan()"), "{e}");
    let e = rt.plan(&quick()).unwrap_err().to_string();
    assert!(e.contains("profile()"), "{e}");
    rt.begin_profile().unwrap();
    assert!(rt.begin_profile().is_err());
    let a = rt.alloc(HOST_DEVICE, 1000, 0).unwrap();
    rt.free(HOST_DEVICE, a).unwrap();
    rt.end_profile().unwrap();
    assert!(rt.end_profile().is_err());
    rt.plan(&quick()).unwrap();
    rt.begin_step(None).unwrap();
    assert!(rt.begin_step(None).is_err());
    assert!(rt.begin_profile().is_err());
    rt.end_step().unwrap();
    assert!(rt.end_step().is_err());
    assert_eq!(
        rt.alloc(HOST_DEVICE, 0, 0).unwrap(),
        0,
        "size 0 is NULL, not an error"
    );
    rt.free(HOST_DEVICE, 0).unwrap();
    let (transient, persistent) = rt.trace_csv().unwrap();
    assert_eq!(transient, "id,lower,upper,size\nhost_0,0,1,1000\n");
    assert_eq!(persistent, "id,lower,size,stream\n");
}

#[test]
fn record_stream_sends_the_buffer_to_the_fallback() {
    let program = vec![
        Op::Alloc {
            id: 0,
            size: 4096,
            stream: 0,
        },
        Op::Alloc {
            id: 1,
            size: 4096,
            stream: 0,
        },
        Op::Free { id: 0 },
        Op::Free { id: 1 },
    ];
    let rt = runtime();
    let mut d = profile_and_plan(&rt, &program);
    rt.begin_step(None).unwrap();
    d.step += 1;
    let step = d.step;
    let a = d.alloc((step, 0), 4096, 0);
    assert!(rt.record_stream(a.addr, 1));
    d.alloc((step, 1), 4096, 0);
    d.free((step, 0));
    d.free((step, 1));
    let s = rt.end_step().unwrap();
    assert_eq!(s.planned_hits, 2);
    rt.begin_step(None).unwrap();
    d.run_step(&program, true);
    let s = rt.end_step().unwrap();
    assert_eq!(
        (s.planned_hits, s.transient_fallbacks, s.divergences),
        (1, 1, 0)
    );
    assert_eq!(rt.stats().counters.record_stream_fallbacks, 1);
    assert!(!rt.record_stream(0x1000, 1), "unknown pointer");
}

#[test]
fn a_second_free_after_record_stream_is_refused_and_frees_nothing() {
    // alloc p, record_stream(p), free p, free p again: the second free must be reported like any
    // double free, and no later allocation may be handed memory that is still live.
    for planned in [false, true] {
        let rt = runtime();
        let mut d = Driver::new(&rt, HOST_DEVICE);
        let program = vec![
            Op::Alloc {
                id: 0,
                size: 4096,
                stream: 0,
            },
            Op::Free { id: 0 },
        ];
        if planned {
            d = profile_and_plan(&rt, &program);
            rt.begin_step(None).unwrap();
        }
        let p = rt.alloc(HOST_DEVICE, 4096, 0).unwrap();
        assert!(rt.record_stream(p, 7));
        rt.free(HOST_DEVICE, p).unwrap();
        let err = rt.free(HOST_DEVICE, p).unwrap_err();
        assert!(err.to_string().contains("already freed"), "{err}");
        assert_eq!(rt.stats().counters.unknown_frees, 1);
        assert!(!rt.record_stream(p, 7), "a freed pointer is not live");
        let q = d.alloc((100, 0), 4096, 0);
        rt.empty_cache().unwrap();
        let r = d.alloc((100, 1), 4096, 0);
        assert!(r.addr + r.size <= q.addr || q.addr + q.size <= r.addr);
        d.free_all(); // checks q's and r's fill patterns
        if planned {
            rt.end_step().unwrap();
        }
        assert_eq!(rt.stats().counters.allocated_bytes, 0);
    }
}

#[test]
fn replanning_retires_the_old_arena_until_its_last_allocation_is_freed() {
    let mut rng = Rng::new(21);
    let program = random_program(&mut rng, 60, 1);
    let rt = runtime();
    let mut d = profile_and_plan(&rt, &program);
    let first_arena = rt.stats().arena_bytes;
    // A step that keeps everything it allocates (outputs held by the program).
    let allocs_only: Vec<Op> = program
        .iter()
        .copied()
        .filter(|o| matches!(o, Op::Alloc { .. }))
        .collect();
    rt.begin_step(None).unwrap();
    d.run_step(&allocs_only, true);
    rt.end_step().unwrap();
    // Re-profile a larger step and plan it while the old arena still holds live allocations: the
    // arena must grow, so a new one is reserved.
    let other: Vec<Op> = random_program(&mut Rng::new(22), 40, 1)
        .into_iter()
        .map(|o| match o {
            Op::Alloc { id, size, stream } => Op::Alloc {
                id,
                size: size * 8,
                stream,
            },
            f => f,
        })
        .collect();
    let mut d2 = Driver::new(&rt, HOST_DEVICE);
    rt.begin_profile().unwrap();
    d2.run_step(&other, true);
    rt.end_profile().unwrap();
    rt.plan(&quick()).unwrap();
    let both = rt.stats().arena_bytes;
    assert!(both > first_arena, "the old arena stays while in use");
    d.free_all();
    let after = rt.stats().arena_bytes;
    assert_eq!(
        after,
        both - first_arena,
        "the old arena is released with its last allocation"
    );
    rt.begin_step(None).unwrap();
    d2.run_step(&other, true);
    assert_eq!(rt.end_step().unwrap().divergences, 0);
    d2.free_all();
    assert_eq!(rt.stats().counters.allocated_bytes, 0);
}

#[test]
fn an_unrepresentative_profile_heals_by_replanning() {
    let steady = random_program(&mut Rng::new(31), 120, 2);
    // The profiled step is not like the others (think of the first step of training).
    let first = random_program(&mut Rng::new(32), 90, 2);
    for auto in [true, false] {
        let rt = runtime_with(RuntimeConfig {
            auto_replan: auto,
            ..RuntimeConfig::default()
        });
        let mut d = profile_and_plan(&rt, &first);
        let mut divergences = Vec::new();
        for _ in 0..6 {
            rt.begin_step(None).unwrap();
            d.run_step(&steady, true);
            divergences.push(rt.end_step().unwrap().divergences);
        }
        if auto {
            // Step 1 follows no plan: it is recorded (not diverging) and planned at its end, as a
            // second signature; every later step follows that plan.
            assert_eq!(divergences, [0; 6], "{divergences:?}");
            let st = rt.stats();
            assert_eq!(st.counters.new_signatures, 1);
            assert_eq!(st.plans, 2);
            assert!(st.counters.unplanned_allocations > 0);
            assert_eq!(st.counters.auto_replans, 0);
        } else {
            assert!(divergences[0] > 0 && divergences[1] > 0);
            assert!(divergences.iter().all(|&n| n > 0), "{divergences:?}");
            assert_eq!(rt.stats().counters.auto_replans, 0);
        }
        d.free_all();
        assert_eq!(rt.stats().counters.allocated_bytes, 0);
    }
}

#[test]
fn a_step_whose_plan_slots_hold_memory_an_earlier_step_kept_is_served_first_fit() {
    // Three 64 KiB temporaries, two live at once: the plan puts them in two slots. A step that keeps
    // one past its end leaves memory in a slot the next step's plan uses: that step is served
    // first-fit from the arena's free space (not request by request into occupied slots, each a
    // divergence); the step after, with the memory gone, follows the plan again. Kept in turn: buffer
    // 1 (one slot) and buffer 2 (the other), so that the kept memory lies once below and once above
    // the other slot, whichever way the plan orders them.
    for kept in [1, 2] {
        a_kept_buffer_makes_the_next_step_first_fit(kept);
    }
}

fn a_kept_buffer_makes_the_next_step_first_fit(kept: usize) {
    const K64: usize = 64 << 10;
    let alloc = |id| Op::Alloc {
        id,
        size: K64,
        stream: 0,
    };
    let step = vec![
        alloc(0),
        alloc(1),
        Op::Free { id: 0 },
        alloc(2),
        Op::Free { id: 1 },
        Op::Free { id: 2 },
    ];
    let rt = runtime_with(RuntimeConfig {
        auto_replan: false,
        ..RuntimeConfig::default()
    });
    let mut d = profile_and_plan(&rt, &step);
    let keeps: Vec<Op> = step
        .iter()
        .filter(|op| !matches!(op, Op::Free { id } if *id == kept))
        .copied()
        .collect();
    rt.begin_step(None).unwrap();
    d.run_step(&keeps, true);
    let s = rt.end_step().unwrap();
    assert!(!s.first_fit && s.divergences == 0, "kept {kept}: {s:?}");
    rt.begin_step(None).unwrap();
    d.run_step(&step, false); // the kept buffer of the step before is still live
    let s = rt.end_step().unwrap();
    assert!(s.first_fit, "kept {kept}: {s:?}");
    assert_eq!(s.divergences, 0, "kept {kept}: {s:?}");
    d.free_all();
    rt.begin_step(None).unwrap();
    d.run_step(&step, true);
    let s = rt.end_step().unwrap();
    assert!(!s.first_fit && s.divergences == 0, "kept {kept}: {s:?}");
    assert_eq!(s.planned_hits, 3, "kept {kept}: {s:?}");
}
