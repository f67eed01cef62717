//! The validator every plan passes before it leaves the planner.

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

/// Sweep in order of start time, checking each buffer against those still live when it starts.
fn check_no_overlap(problem: &Problem, solution: &Solution) -> Result<(), InvalidPlan> {
    let bufs = &problem.buffers;
    let mut order: Vec<usize> = (0..bufs.len()).collect();
    order.sort_unstable_by_key(|&i| bufs[i].lifetime.start);
    let mut live: Vec<usize> = Vec::new();
    for &i in &order {
        let bi = &bufs[i];
        live.retain(|&j| bufs[j].lifetime.end > bi.lifetime.start);
        let (lo_i, hi_i) = (solution.offsets[i], solution.offsets[i] + bi.size);
        for &j in &live {
            let (lo_j, hi_j) = (solution.offsets[j], solution.offsets[j] + bufs[j].size);
            if lo_i < hi_j && lo_j < hi_i {
                let bj = &bufs[j];
                return Err(InvalidPlan::Overlap {
                    a: bj.name.clone(),
                    b: bi.name.clone(),
                    time_start: bi.lifetime.start.max(bj.lifetime.start),
                    time_end: bi.lifetime.end.min(bj.lifetime.end),
                    byte_start: lo_i.max(lo_j),
                    byte_end: hi_i.min(hi_j),
                });
            }
        }
        live.push(i);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::{Buffer, Interval};

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
}
