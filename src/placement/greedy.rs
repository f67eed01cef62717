//! Greedy placement: take buffers in some order and put each at a gap among the buffers already placed
//! that live at the same time. A rule is an order plus a fit; the portfolio runs every rule and keeps
//! the lowest peak.
//!
//! Greedy-by-size with first fit is TFLite-Micro's GreedyMemoryPlanner; with best fit (smallest gap
//! that fits) it is TFLite GPU's GreedyBySizeAssignment. The other orders are the ones the MiniMalloc
//! and TelaMalloc papers compare against.

use std::fmt;

use super::problem::{BufferId, Bytes, Problem, Solution};

/// The order in which buffers are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// Largest size first.
    Size,
    /// Longest lifetime first.
    Lifetime,
    /// Largest size × lifetime first.
    Area,
    /// Most buffers live at the same time first.
    Conflicts,
}

/// Which gap a buffer takes among those it fits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fit {
    /// The lowest gap that fits.
    First,
    /// The smallest gap that fits; above everything when none does.
    Best,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub order: Order,
    pub fit: Fit,
}

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule { order: Order::Size, fit: Fit::First },
        Rule { order: Order::Size, fit: Fit::Best },
        Rule { order: Order::Lifetime, fit: Fit::First },
        Rule { order: Order::Lifetime, fit: Fit::Best },
        Rule { order: Order::Area, fit: Fit::First },
        Rule { order: Order::Area, fit: Fit::Best },
        Rule { order: Order::Conflicts, fit: Fit::First },
        Rule { order: Order::Conflicts, fit: Fit::Best },
    ];
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = match self.order {
            Order::Size => "size",
            Order::Lifetime => "lifetime",
            Order::Area => "area",
            Order::Conflicts => "conflicts",
        };
        let fit = match self.fit {
            Fit::First => "first-fit",
            Fit::Best => "best-fit",
        };
        write!(f, "{order}/{fit}")
    }
}

/// Runs every rule and returns the best plan with the rule that found it.
pub fn greedy(problem: &Problem) -> (Solution, Rule) {
    let conflicts = conflict_counts(problem);
    let mut best: Option<(Solution, Rule)> = None;
    for rule in Rule::ALL {
        let solution = place_with(problem, rule, &conflicts);
        if best.as_ref().is_none_or(|(b, _)| solution.peak < b.peak) {
            best = Some((solution, rule));
        }
    }
    // `Rule::ALL` is not empty, so there is always a best.
    best.unwrap_or_else(|| (Solution::from_offsets(problem, vec![Bytes::ZERO; problem.len()]), Rule::ALL[0]))
}

/// Places the problem's buffers with one rule.
pub fn place(problem: &Problem, rule: Rule) -> Solution {
    let conflicts = if rule.order == Order::Conflicts {
        conflict_counts(problem)
    } else {
        Vec::new()
    };
    place_with(problem, rule, &conflicts)
}

/// The order of a rule; ties broken by the other keys, then by id, so every run is deterministic.
pub fn order(problem: &Problem, order: Order, conflicts: &[usize]) -> Vec<BufferId> {
    let b = &problem.buffers;
    let mut ids: Vec<BufferId> = problem.ids().collect();
    let size = |i: &BufferId| std::cmp::Reverse(b[i.0].size);
    let life = |i: &BufferId| std::cmp::Reverse(b[i.0].lifetime.len());
    let start = |i: &BufferId| b[i.0].lifetime.start;
    match order {
        Order::Size => ids.sort_by_key(|i| (size(i), life(i), start(i), *i)),
        Order::Lifetime => ids.sort_by_key(|i| (life(i), size(i), start(i), *i)),
        Order::Area => ids.sort_by_key(|i| (std::cmp::Reverse(b[i.0].area()), size(i), start(i), *i)),
        Order::Conflicts => {
            ids.sort_by_key(|i| (std::cmp::Reverse(conflicts[i.0]), size(i), start(i), *i))
        }
    }
    ids
}

/// For each buffer, how many others are live at the same time: all others, less those that end by its
/// start and those that start at or after its end. Two binary searches per buffer.
pub fn conflict_counts(problem: &Problem) -> Vec<usize> {
    let mut starts: Vec<u64> = problem.buffers.iter().map(|b| b.lifetime.start).collect();
    let mut ends: Vec<u64> = problem.buffers.iter().map(|b| b.lifetime.end).collect();
    starts.sort_unstable();
    ends.sort_unstable();
    let n = problem.len();
    problem
        .buffers
        .iter()
        .map(|b| {
            let ended_before = ends.partition_point(|&e| e <= b.lifetime.start);
            let start_after = n - starts.partition_point(|&s| s < b.lifetime.end);
            n - ended_before - start_after - 1
        })
        .collect()
}

fn place_with(problem: &Problem, rule: Rule, conflicts: &[usize]) -> Solution {
    let mut placed = Placed::default();
    let mut offsets = vec![Bytes::ZERO; problem.len()];
    // Buffers with fixed offsets go first, where they must be; the rest fit around them.
    for (i, b) in problem.buffers.iter().enumerate() {
        if let Some(fixed) = b.fixed_offset {
            offsets[i] = fixed;
            placed.insert(b.lifetime.start, b.lifetime.end, fixed.0, b.size.0);
        }
    }
    for id in order(problem, rule.order, conflicts) {
        let b = problem.buffer(id);
        if b.fixed_offset.is_some() {
            continue;
        }
        let offset = placed.find_gap(b.lifetime.start, b.lifetime.end, b.size.0, b.alignment.0, rule.fit);
        offsets[id.0] = Bytes(offset);
        placed.insert(b.lifetime.start, b.lifetime.end, offset, b.size.0);
    }
    Solution::from_offsets(problem, offsets)
}

/// Buffers placed so far, sorted by offset, one array per field so the scan stays in cache.
#[derive(Default)]
struct Placed {
    offset: Vec<u64>,
    top: Vec<u64>,
    start: Vec<u64>,
    end: Vec<u64>,
}

impl Placed {
    fn insert(&mut self, start: u64, end: u64, offset: u64, size: u64) {
        let at = self.offset.partition_point(|&o| o <= offset);
        self.offset.insert(at, offset);
        self.top.insert(at, offset + size);
        self.start.insert(at, start);
        self.end.insert(at, end);
    }

    /// The offset a buffer live in `[start, end)` takes. Scanning placed buffers by offset, `cursor` is
    /// the lowest aligned address above every conflicting buffer seen so far; a conflicting buffer
    /// starting at or above `cursor + size` closes a free gap `[cursor, its offset)`.
    fn find_gap(&self, start: u64, end: u64, size: u64, alignment: u64, fit: Fit) -> u64 {
        let align = |x: u64| if alignment <= 1 { x } else { x.div_ceil(alignment) * alignment };
        let mut top = 0u64;
        let mut cursor = 0u64;
        let mut best: Option<(u64, u64)> = None; // (gap length, offset)
        for k in 0..self.offset.len() {
            if self.start[k] >= end || self.end[k] <= start {
                continue;
            }
            let o = self.offset[k];
            if o >= cursor + size {
                let gap = o - cursor;
                match fit {
                    Fit::First => return cursor,
                    Fit::Best => {
                        if best.is_none_or(|(g, _)| gap < g) {
                            best = Some((gap, cursor));
                        }
                    }
                }
            }
            if self.top[k] > top {
                top = self.top[k];
                cursor = align(top);
            }
        }
        best.map_or(cursor, |(_, offset)| offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::lower_bound::max_load;
    use crate::placement::problem::{Buffer, Interval};
    use crate::placement::validate::validate;

    fn buf(name: &str, start: u64, end: u64, size: u64) -> Buffer {
        Buffer::new(name, Interval::new(start, end).unwrap(), Bytes(size))
    }

    #[test]
    fn conflict_counts_follow_half_open_lifetimes() {
        let p = Problem::new(vec![buf("a", 0, 2, 1), buf("b", 1, 3, 1), buf("c", 2, 4, 1), buf("d", 9, 10, 1)]);
        assert_eq!(conflict_counts(&p), vec![1, 2, 1, 0]);
    }

    #[test]
    fn best_fit_takes_the_smallest_gap_first_fit_the_lowest() {
        // Fixed buffers leave gaps [0,10) of 10 bytes and [14,18) of 4 bytes while t in [0,4).
        let mut a = buf("a", 0, 4, 4);
        a.fixed_offset = Some(Bytes(10));
        let mut b = buf("b", 0, 4, 2);
        b.fixed_offset = Some(Bytes(18));
        let p = Problem::new(vec![a, b, buf("c", 1, 3, 4)]);
        let first = place(&p, Rule { order: Order::Size, fit: Fit::First });
        let best = place(&p, Rule { order: Order::Size, fit: Fit::Best });
        assert_eq!(first.offsets[2], Bytes(0));
        assert_eq!(best.offsets[2], Bytes(14));
        validate(&p, &first).unwrap();
        validate(&p, &best).unwrap();
    }

    #[test]
    fn alignment_is_respected() {
        let mut c = buf("c", 0, 4, 8);
        c.alignment = Bytes(16);
        let p = Problem::new(vec![buf("a", 0, 4, 3), c]);
        for rule in Rule::ALL {
            let s = place(&p, rule);
            validate(&p, &s).unwrap();
        }
    }

    #[test]
    fn portfolio_reaches_the_bound_on_a_staircase() {
        let p = Problem::new(vec![buf("a", 0, 10, 4), buf("b", 0, 5, 4), buf("c", 5, 10, 4)]);
        let (s, _) = greedy(&p);
        validate(&p, &s).unwrap();
        assert_eq!(s.peak, max_load(&p));
    }
}
