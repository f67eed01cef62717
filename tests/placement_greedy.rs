//! The greedy planners on the shared instances and on random ones.

mod common;

use common::{instances, number_in_name, problem_of};
use model_opt::placement::greedy::{conflict_counts, order, place, Fit, Rule};
use model_opt::placement::{
    max_load, plan, validate, BufferId, Bytes, InvalidPlan, Method, PlanOptions, Problem, Solution,
};
use proptest::prelude::*;

#[test]
fn every_rule_gives_a_valid_plan_on_every_shared_instance() {
    for folder in ["examples", "challenging"] {
        for (name, problem) in instances(folder) {
            let bound = max_load(&problem);
            for rule in Rule::ALL {
                let s = place(&problem, rule);
                validate(&problem, &s).unwrap_or_else(|e| panic!("{name} {rule}: {e}"));
                assert!(s.peak >= bound, "{name} {rule}: peak below the lower bound");
            }
        }
    }
}

#[test]
fn challenging_instances_have_the_published_lower_bounds() {
    // From the data set's README: A, B, E–I, K at capacity; C 1039360; D 986112; J 989184.
    let expected = |name: &str| match &name[..1] {
        "C" => 1039360,
        "D" => 986112,
        "J" => 989184,
        _ => number_in_name(name),
    };
    for (name, problem) in instances("challenging") {
        assert_eq!(max_load(&problem), Bytes(expected(&name)), "{name}");
    }
}

/// Which examples the greedy portfolio solves at their optimum. The others need the exact search.
#[test]
fn examples_reach_their_known_optimum_where_greedy_can() {
    let mut missed = Vec::new();
    for (name, problem) in instances("examples") {
        let optimum = Bytes(number_in_name(&name));
        assert_eq!(
            max_load(&problem),
            optimum,
            "{name}: the optimum equals the lower bound"
        );
        let report = plan(&problem, &greedy_only()).unwrap();
        assert!(report.solution.peak >= optimum);
        if report.solution.peak != optimum {
            missed.push(name);
        }
    }
    // These small instances are built to defeat greedy rules: in small_a, for instance, size order
    // stacks both 3-byte buffers at 0, pushes the 2-byte pair to 3 and 5, and the 1-byte buffer that
    // spans them all lands at 7 (optimum 6). The exact search (issue 4) reaches all of them.
    let expected = [
        "small_a.6.csv",
        "small_b.6.csv",
        "small_c.8.csv",
        "small_d.9.csv",
        "small_f.14.csv",
    ];
    assert_eq!(missed, expected, "which examples greedy misses changed");
}

/// The default method is `auto` (issue 4); these tests are about the greedy portfolio alone.
fn greedy_only() -> PlanOptions {
    PlanOptions {
        method: Method::Greedy,
        ..Default::default()
    }
}

fn random_problem() -> impl Strategy<Value = Vec<(u64, u64, u64)>> {
    prop::collection::vec((0u64..50, 1u64..20, 1u64..100), 1..60).prop_map(|v| {
        v.into_iter()
            .map(|(s, len, size)| (s, s + len, size))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn planners_are_valid_and_above_the_bound(triples in random_problem()) {
        let problem = problem_of(&triples);
        let bound = max_load(&problem);
        for rule in Rule::ALL {
            let s = place(&problem, rule);
            prop_assert_eq!(validate(&problem, &s), Ok(()));
            prop_assert!(s.peak >= bound);
        }
        let report = plan(&problem, &greedy_only()).unwrap();
        prop_assert!(report.solution.peak >= report.lower_bound);
    }

    #[test]
    fn validator_rejects_corrupted_plans(
        triples in random_problem(),
        pick in any::<prop::sample::Index>(),
        how in 0u8..3,
    ) {
        let problem = problem_of(&triples);
        let s = plan(&problem, &greedy_only()).unwrap().solution;
        // Move one buffer onto another that lives at the same time, if any pair does: onto the same
        // offset, or overlapping it by one byte from above or from below (a validator that looks
        // only at one neighbour, or compares starts only, misses those).
        let n = problem.len();
        let i = pick.index(n);
        let partner = (0..n).find(|&j| {
            j != i && problem.buffers[i].lifetime.intersects(&problem.buffers[j].lifetime)
        });
        if let Some(j) = partner {
            let (size_i, size_j) = (problem.buffers[i].size.0, problem.buffers[j].size.0);
            let at_j = s.offsets[j].0;
            let moved = match how {
                0 => Some(at_j),
                1 => Some(at_j + size_j - 1),
                _ => (at_j + 1).checked_sub(size_i),
            };
            if let Some(moved) = moved {
                let mut offsets = s.offsets.clone();
                offsets[i] = Bytes(moved);
                let corrupted = Solution::from_offsets(&problem, offsets);
                let verdict = validate(&problem, &corrupted);
                prop_assert!(
                    matches!(verdict, Err(InvalidPlan::Overlap { .. })),
                    "buffer {} moved to {} over {} at [{}, {}): {:?}", i, moved, j, at_j, at_j + size_j, verdict
                );
            }
        }
        // A peak that lies is caught too.
        let lying = Solution { peak: Bytes(s.peak.0 + 1), offsets: s.offsets.clone() };
        let rejected = matches!(validate(&problem, &lying), Err(InvalidPlan::WrongPeak { .. }));
        prop_assert!(rejected);
    }
}

/// Greedy placement written from the definitions, pair by pair: a buffer may go at 0 or just above
/// (aligned) a placed buffer it meets; first fit takes the lowest such offset where it overlaps
/// nothing, best fit the one with the least free room above it (ties to the lowest), or the top.
fn reference_place(problem: &Problem, rule: Rule) -> Vec<Bytes> {
    let b = &problem.buffers;
    let ids = order(problem, rule.order, &conflict_counts(problem));
    let fixed = ids.iter().filter(|i| b[i.0].fixed_offset.is_some());
    let free = ids.iter().filter(|i| b[i.0].fixed_offset.is_none());
    let mut offsets: Vec<Option<u64>> = vec![None; problem.len()];
    for &BufferId(i) in fixed.chain(free) {
        let meets: Vec<(u64, u64)> = (0..problem.len())
            .filter(|&j| b[j].lifetime.intersects(&b[i].lifetime) && b[j].size.0 > 0)
            .filter_map(|j| offsets[j].map(|o| (o, o + b[j].size.0)))
            .collect();
        let size = b[i].size.0;
        let fits = |y: u64| meets.iter().all(|&(lo, hi)| hi <= y || y + size <= lo);
        let room = |y: u64| {
            meets
                .iter()
                .filter(|&&(lo, _)| lo >= y)
                .map(|&(lo, _)| lo - y)
                .min()
        };
        let align = |y: u64| Bytes(y).align_up(b[i].alignment).0;
        let mut candidates: Vec<u64> = std::iter::once(0)
            .chain(meets.iter().map(|&(_, hi)| align(hi)))
            .filter(|&y| fits(y))
            .collect();
        candidates.sort_unstable();
        let chosen = match (b[i].fixed_offset, rule.fit) {
            (Some(f), _) => f.0,
            (None, Fit::First) => candidates[0],
            (None, Fit::Best) => candidates
                .iter()
                .filter_map(|&y| room(y).map(|r| (r, y)))
                .min()
                .map_or(*candidates.last().expect("the top always fits"), |(_, y)| y),
        };
        offsets[i] = Some(chosen);
    }
    offsets
        .into_iter()
        .map(|o| Bytes(o.expect("placed")))
        .collect()
}

fn aligned_problem() -> impl Strategy<Value = Problem> {
    let buffer = (0u64..40, 1u64..25, 1u64..64, 0usize..4, any::<bool>());
    prop::collection::vec(buffer, 1..50).prop_map(|v| {
        let triples: Vec<(u64, u64, u64)> =
            v.iter().map(|&(s, l, z, _, _)| (s, s + l, z)).collect();
        let mut problem = problem_of(&triples);
        for (i, (b, &(_, _, _, align, pinned))) in problem.buffers.iter_mut().zip(&v).enumerate() {
            b.alignment = Bytes([1, 1, 8, 16][align]);
            // A few buffers pinned, stacked apart so that they never collide.
            if pinned && b.lifetime.start % 7 == 0 {
                b.fixed_offset = Some(Bytes(1024 + 64 * i as u64));
            }
        }
        problem
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The fast placement (merged free space, leapfrog first fit) places every buffer exactly where
    /// the definition does, for every rule, with alignment and fixed offsets.
    #[test]
    fn every_rule_places_as_the_definition_says(problem in aligned_problem()) {
        for rule in Rule::ALL {
            let fast = place(&problem, rule);
            prop_assert_eq!(&fast.offsets, &reference_place(&problem, rule), "{}", rule);
            prop_assert_eq!(validate(&problem, &fast), Ok(()));
        }
    }
}
