//! The validator every plan passes before it leaves the planner.

use std::collections::BTreeMap;

use thiserror::Error;

use super::problem::{Bytes, Problem, Solution};

/// Why a plan is not valid for its problem. Buffers are named by their user-facing ids.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidPlan {
    #[error("the plan has {found} offsets for {expected} buffers")]
    WrongLength { expected: usize, found: usize },
    #[error("buffer {buffer}: offset {offset} is not a multiple of its alignment {alignment}")]
    Misaligned {
        buffer: String,
        offset: Bytes,
        alignment: Bytes,
    },
    #[error("buffer {buffer}: fixed at offset {fixed} but placed at {offset}")]
    FixedOffsetMoved {
        buffer: String,
        fixed: Bytes,
        offset: Bytes,
    },
    #[error(
        "buffers {a} and {b} are live at the same time (in [{time_start}, {time_end})) and share bytes [{byte_start}, {byte_end})"
    )]
    Overlap {
        a: String,
        b: String,
        time_start: u64,
        time_end: u64,
        byte_start: Bytes,
        byte_end: Bytes,
    },
    #[error("the plan's peak is recorded as {recorded} but its buffers reach {actual}")]
    WrongPeak { recorded: Bytes, actual: Bytes },
    #[error("the plan needs {peak} bytes, more than the capacity {capacity}")]
    OverCapacity { peak: Bytes, capacity: Bytes },
}

/// Checks that `solution` places every buffer of `problem` once, aligned, at its fixed offset if it has
/// one, with no two buffers live at the same time sharing a byte, within the capacity if one is given.
pub fn validate(problem: &Problem, solution: &Solution) -> Result<(), InvalidPlan> {
    let n = problem.len();
    if solution.offsets.len() != n {
        return Err(InvalidPlan::WrongLength {
            expected: n,
            found: solution.offsets.len(),
        });
    }
    for (b, &offset) in problem.buffers.iter().zip(&solution.offsets) {
        if !offset.is_aligned(b.alignment) {
            return Err(InvalidPlan::Misaligned {
                buffer: b.name.clone(),
                offset,
                alignment: b.alignment,
            });
        }
        if let Some(fixed) = b.fixed_offset {
            if fixed != offset {
                return Err(InvalidPlan::FixedOffsetMoved {
                    buffer: b.name.clone(),
                    fixed,
                    offset,
                });
            }
        }
    }
    check_no_overlap(problem, solution)?;
    let actual = Solution::from_offsets(problem, solution.offsets.clone()).peak;
    if actual != solution.peak {
        return Err(InvalidPlan::WrongPeak {
            recorded: solution.peak,
            actual,
        });
    }
    if let Some(capacity) = problem.capacity {
        if actual > capacity {
            return Err(InvalidPlan::OverCapacity {
                peak: actual,
                capacity,
            });
        }
    }
    Ok(())
}

/// Sweep over time keeping the live buffers in a map ordered by offset. Live buffers never overlap
/// (else the sweep has already stopped), so a starting buffer overlaps one of them exactly when it
/// overlaps its neighbour below or above in offset order: O(n log n), however dense the plan.
/// Buffers of size zero hold no byte and cannot overlap anything.
fn check_no_overlap(problem: &Problem, solution: &Solution) -> Result<(), InvalidPlan> {
    let bufs = &problem.buffers;
    let span = |i: usize| {
        (
            solution.offsets[i].0,
            solution.offsets[i].0 + bufs[i].size.0,
        )
    };
    // (time, is_start, buffer): at equal times ends come first, lifetimes being half-open.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * bufs.len());
    for (i, b) in bufs.iter().enumerate() {
        if b.size.0 > 0 {
            events.push((b.lifetime.start, true, i));
            events.push((b.lifetime.end, false, i));
        }
    }
    events.sort_unstable();
    // Live buffers by offset: offset -> buffer.
    let mut live: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, is_start, i) in events {
        let (lo, hi) = span(i);
        if !is_start {
            live.remove(&lo);
            continue;
        }
        let below = live.range(..=lo).next_back().map(|(_, &j)| j);
        let above = live.range(lo..).next().map(|(_, &j)| j);
        for j in below.into_iter().chain(above) {
            let (lo_j, hi_j) = span(j);
            if lo < hi_j && lo_j < hi {
                let (bi, bj) = (&bufs[i], &bufs[j]);
                return Err(InvalidPlan::Overlap {
                    a: bj.name.clone(),
                    b: bi.name.clone(),
                    time_start: bi.lifetime.start.max(bj.lifetime.start),
                    time_end: bi.lifetime.end.min(bj.lifetime.end),
                    byte_start: Bytes(lo.max(lo_j)),
                    byte_end: Bytes(hi.min(hi_j)),
                });
            }
        }
        live.insert(lo, i);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::{Buffer, Interval};
    use crate::placement::random::XorShift;

    fn problem() -> Problem {
        Problem::new(vec![
            Buffer::new("x", Interval::new(0, 4).unwrap(), Bytes(8)),
            Buffer::new("y", Interval::new(2, 6).unwrap(), Bytes(8)),
            Buffer::new("z", Interval::new(4, 8).unwrap(), Bytes(8)),
        ])
    }

    #[test]
    fn accepts_a_valid_plan() {
        let p = problem();
        let s = Solution::from_offsets(&p, vec![Bytes(0), Bytes(8), Bytes(0)]);
        assert_eq!(validate(&p, &s), Ok(()));
        assert_eq!(s.peak, Bytes(16));
    }

    #[test]
    fn names_both_overlapping_buffers() {
        let p = problem();
        let s = Solution::from_offsets(&p, vec![Bytes(0), Bytes(4), Bytes(0)]);
        let err = validate(&p, &s).unwrap_err();
        assert!(matches!(&err, InvalidPlan::Overlap { a, b, .. } if a == "x" && b == "y"));
        assert!(err.to_string().contains("x and y"));
    }

    #[test]
    fn rejects_over_capacity_misaligned_and_wrong_peak() {
        let mut p = problem().with_capacity(Some(Bytes(12)));
        let s = Solution::from_offsets(&p, vec![Bytes(0), Bytes(8), Bytes(0)]);
        assert!(matches!(
            validate(&p, &s),
            Err(InvalidPlan::OverCapacity { .. })
        ));
        p.capacity = None;
        p.buffers[1].alignment = Bytes(16);
        assert!(matches!(
            validate(&p, &s),
            Err(InvalidPlan::Misaligned { .. })
        ));
        p.buffers[1].alignment = Bytes(1);
        let wrong = Solution {
            peak: Bytes(8),
            ..s
        };
        assert!(matches!(
            validate(&p, &wrong),
            Err(InvalidPlan::WrongPeak { .. })
        ));
    }

    /// The sweep finds an overlap exactly when some pair of buffers overlaps (checked pair by pair),
    /// on random plans dense enough that about half of them have one.
    #[test]
    fn sweep_agrees_with_checking_every_pair() {
        let mut rng = XorShift(0x853c_49e6_748f_ea9bu64);
        let mut next = move |m: u64| rng.next_u64() % m;
        let (mut overlapping, mut clean) = (0, 0);
        for _ in 0..400 {
            let n = 1 + next(12) as usize;
            let buffers: Vec<Buffer> = (0..n)
                .map(|i| {
                    let start = next(20);
                    let end = start + 1 + next(8);
                    Buffer::new(
                        format!("b{i}"),
                        Interval::new(start, end).unwrap(),
                        Bytes(next(6)),
                    )
                })
                .collect();
            let p = Problem::new(buffers);
            let offsets = (0..n).map(|_| Bytes(next(3 * n as u64))).collect();
            let s = Solution::from_offsets(&p, offsets);
            let pairwise = (0..n).any(|i| {
                (0..i).any(|j| {
                    let (bi, bj) = (&p.buffers[i], &p.buffers[j]);
                    bi.lifetime.intersects(&bj.lifetime)
                        && s.offsets[i] < s.offsets[j] + bj.size
                        && s.offsets[j] < s.offsets[i] + bi.size
                        && bi.size.0 > 0
                        && bj.size.0 > 0
                })
            });
            let found = matches!(validate(&p, &s), Err(InvalidPlan::Overlap { .. }));
            assert_eq!(found, pairwise, "{:?} at {:?}", p.buffers, s.offsets);
            if pairwise {
                overlapping += 1;
            } else {
                clean += 1;
            }
        }
        assert!(overlapping > 50 && clean > 50, "{overlapping} / {clean}");
    }
}
