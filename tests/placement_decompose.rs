//! Problems that fall apart in time are planned part by part (`placement::decompose`), and a plan
//! within a capacity can keep minimizing (`minimize_below_capacity`). The answers are checked
//! against the parts planned alone and against optima known by construction.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use model_opt::placement::instances::tiled;
use model_opt::placement::random::{random_problem, Shape};
use model_opt::placement::{
    max_load, plan, validate, Buffer, Bytes, Interval, Method, PlanError, PlanOptions, Problem,
    Progress, Status,
};

/// A time limit none of these plans comes near: it only stops a hang.
fn options() -> PlanOptions {
    PlanOptions {
        time_limit: Duration::from_secs(60),
        ..Default::default()
    }
}

fn buf(name: &str, start: u64, end: u64, size: u64) -> Buffer {
    Buffer::new(name, Interval::new(start, end).unwrap(), Bytes(size))
}

#[test]
fn a_step_recorded_several_times_is_planned_in_parts_at_the_single_steps_peak() {
    for seed in [3u64, 11] {
        let step = random_problem(800, seed, Shape::Sparse);
        let alone = plan(&step, &options()).expect("one step plans");
        let steps = tiled(&step, 6);
        let all = plan(&steps, &options()).expect("six steps plan");
        validate(&steps, &all.solution).expect("a valid plan");
        assert!(all.method.contains("parts("), "{}", all.method);
        assert_eq!(all.lower_bound, alone.lower_bound);
        if alone.status == Status::Optimal {
            assert_eq!(all.solution.peak, alone.solution.peak, "seed {seed}");
            assert_eq!(all.status, Status::Optimal);
        } else {
            assert!(all.solution.peak <= alone.solution.peak.max(all.proven_bound));
        }
    }
}

/// A few hundred easy buffers, then seven whose optimum is one unit above their max load (scaled
/// by `scale`), placed after them in time: the second part decides the arena.
fn easy_then_tight() -> (Problem, Bytes, Bytes) {
    let easy = random_problem(700, 5, Shape::Sparse);
    let easy_end = easy.buffers.iter().map(|b| b.lifetime.end).max().unwrap();
    let tight = common::FRAGMENTED;
    let tight_load = max_load(&Problem::new(
        tight.iter().map(|&(s, e, z)| buf("t", s, e, z)).collect(),
    ));
    // The tight part's load is twice the easy part's, so the easy part always fits the target.
    let scale = (2 * max_load(&easy).0).div_ceil(tight_load.0);
    let mut buffers = easy.buffers;
    buffers.extend(
        tight
            .iter()
            .enumerate()
            .map(|(i, &(s, e, z))| buf(&format!("t{i}"), easy_end + s, easy_end + e, z * scale)),
    );
    let lower = Bytes(tight_load.0 * scale);
    let optimum = Bytes((tight_load.0 + 1) * scale);
    (Problem::new(buffers), lower, optimum)
}

#[test]
fn the_part_that_needs_more_than_its_load_sets_the_arena_and_the_proof() {
    let (p, lower, optimum) = easy_then_tight();
    // (incumbent, bound) as the progress callback saw them.
    type Seen = Vec<(Option<Bytes>, Bytes)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = seen.clone();
    let report = plan(
        &p,
        &PlanOptions {
            progress: Some(Arc::new(move |pr: &Progress| {
                sink.lock().unwrap().push((pr.incumbent, pr.bound));
            })),
            ..options()
        },
    )
    .expect("it plans");
    validate(&p, &report.solution).unwrap();
    assert!(report.method.contains("parts(2)"), "{}", report.method);
    assert_eq!(report.lower_bound, lower);
    assert_eq!(report.solution.peak, optimum);
    assert_eq!(report.proven_bound, optimum);
    assert_eq!(report.status, Status::Optimal);
    // Progress: incumbents only go down, bounds only up, never past each other; it ends at the
    // answer.
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    for w in seen.windows(2) {
        assert!(w[1].1 >= w[0].1, "{seen:?}");
        if let (Some(a), Some(b)) = (w[0].0, w[1].0) {
            assert!(b <= a, "{seen:?}");
        }
    }
    assert!(seen.iter().all(|(i, b)| i.is_none_or(|i| *b <= i)));
    assert_eq!(seen.last().unwrap().0, Some(optimum));
}

#[test]
fn a_capacity_one_part_cannot_meet_is_proven_infeasible_for_the_whole() {
    let (p, lower, optimum) = easy_then_tight();
    for minimize_below_capacity in [false, true] {
        let err = plan(
            &p.clone().with_capacity(Some(lower)),
            &PlanOptions {
                minimize_below_capacity,
                ..options()
            },
        )
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::Infeasible {
                capacity: lower,
                bound: optimum
            }
        );
    }
    // Room to spare: the first plan that fits, or the optimum when asked to keep minimizing.
    let room = Bytes(optimum.0 + 3 * (optimum.0 - lower.0));
    let first = plan(&p.clone().with_capacity(Some(room)), &options()).unwrap();
    assert!(first.solution.peak <= room);
    let best = plan(
        &p.clone().with_capacity(Some(room)),
        &PlanOptions {
            minimize_below_capacity: true,
            ..options()
        },
    )
    .unwrap();
    validate(&p.clone().with_capacity(Some(room)), &best.solution).unwrap();
    assert_eq!(best.solution.peak, optimum);
    assert_eq!(best.status, Status::Optimal);
}

/// One problem that does not split: with a capacity the greedy plan meets, the planner stops at
/// it; asked to keep minimizing, it goes on to the optimum.
#[test]
fn minimizing_below_a_capacity_goes_past_the_first_plan_that_fits() {
    let mut checked = 0;
    for seed in 0..12u64 {
        let p = random_problem(300, 0x5eed ^ seed, Shape::Dense);
        let greedy = plan(
            &p,
            &PlanOptions {
                method: Method::Greedy,
                ..options()
            },
        )
        .unwrap();
        let best = plan(&p, &options()).unwrap();
        if best.status != Status::Optimal || best.solution.peak >= greedy.solution.peak {
            continue; // Greedy is optimal already, or the optimum is not proven: nothing to see.
        }
        assert!(!best.method.contains("parts("), "{}", best.method);
        let capped = p.clone().with_capacity(Some(greedy.solution.peak));
        let first = plan(&capped, &options()).unwrap();
        assert_eq!(first.solution.peak, greedy.solution.peak, "seed {seed}");
        let kept_on = plan(
            &capped,
            &PlanOptions {
                minimize_below_capacity: true,
                ..options()
            },
        )
        .unwrap();
        validate(&capped, &kept_on.solution).unwrap();
        assert_eq!(kept_on.solution.peak, best.solution.peak, "seed {seed}");
        assert_eq!(kept_on.status, Status::Optimal);
        checked += 1;
        if checked == 3 {
            break;
        }
    }
    assert!(
        checked > 0,
        "no instance where greedy leaves a gap that auto closes"
    );
}

/// Several steps held together by state that lives through all of them (weights, gradients,
/// optimizer state): nothing splits in time, but once the long-lived buffers are stacked the steps
/// are planned apart, and identical steps once.
#[test]
fn steps_held_together_by_long_lived_state_are_planned_around_it() {
    let step = random_problem(800, 21, Shape::Sparse);
    let mut steps = tiled(&step, 8);
    let end = steps.buffers.iter().map(|b| b.lifetime.end).max().unwrap();
    for k in 0..12u64 {
        // Born in the first step (as optimizer state is), alive to the end.
        steps.buffers.push(buf(
            &format!("state{k}"),
            5 + 10 * k,
            end + 1,
            4096 * (k + 1),
        ));
    }
    assert_eq!(
        model_opt::placement::decompose::parts(&steps).len(),
        1,
        "the state joins everything"
    );
    let report = plan(&steps, &options()).expect("it plans");
    validate(&steps, &report.solution).unwrap();
    assert!(report.method.contains("parts("), "{}", report.method);
    assert_eq!(report.status, Status::Optimal);
    assert_eq!(report.solution.peak, report.lower_bound);
    // With a capacity at the bound, the same plan is the first that fits.
    let capped = steps.clone().with_capacity(Some(report.lower_bound));
    let decided = plan(&capped, &options()).expect("it fits its bound");
    validate(&capped, &decided.solution).unwrap();
}
