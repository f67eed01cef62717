//! The search's view of a problem: lifetimes cut into time sections, bytes divided by their common
//! divisor, and a static rank per buffer that orders the branching.

use crate::placement::problem::{Bytes, Problem};

/// One buffer, in scaled units, covering sections `lo..hi`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub size: u64,
    pub align: u64,
    pub fixed: Option<u64>,
    pub lo: u32,
    pub hi: u32,
    /// Lifetime length in event time (for the branching orders).
    pub len: u64,
}

/// A problem in the search's units. Offsets found here times `unit` are byte offsets.
#[derive(Clone, Debug)]
pub(crate) struct Instance {
    pub items: Vec<Item>,
    pub sections: usize,
    /// Every size, alignment and fixed offset is a multiple of `unit`, so every canonical placement
    /// (each buffer at its lowest aligned floor) is too: dividing by it shrinks the numbers without
    /// losing solutions.
    pub unit: u64,
    /// For each buffer, the largest total of sizes in any section it spans.
    pub total: Vec<u64>,
    /// From the first birth to the last death, in event time.
    span: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Instance {
    pub fn new(problem: &Problem) -> Instance {
        let mut times: Vec<u64> = problem
            .buffers
            .iter()
            .flat_map(|b| [b.lifetime.start, b.lifetime.end])
            .collect();
        times.sort_unstable();
        times.dedup();
        let section_of = |t: u64| times.partition_point(|&x| x < t) as u32;
        let unit = problem.buffers.iter().fold(0u64, |g, b| {
            // Alignment 1 is no constraint, so it must not pull the unit down to 1.
            let g = gcd(g, b.size.0);
            let g = if b.alignment.0 > 1 {
                gcd(g, b.alignment.0)
            } else {
                g
            };
            b.fixed_offset.map_or(g, |f| gcd(g, f.0))
        });
        let unit = unit.max(1);
        let items: Vec<Item> = problem
            .buffers
            .iter()
            .map(|b| Item {
                size: b.size.0 / unit,
                align: (b.alignment.0.max(1) / unit).max(1),
                fixed: b.fixed_offset.map(|f| f.0 / unit),
                lo: section_of(b.lifetime.start),
                hi: section_of(b.lifetime.end),
                len: b.lifetime.len(),
            })
            .collect();
        let sections = times.len().saturating_sub(1);
        let span = match (times.first(), times.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        };
        let mut load = vec![0u64; sections];
        for it in &items {
            for s in it.lo..it.hi {
                load[s as usize] += it.size;
            }
        }
        let total = items
            .iter()
            .map(|it| (it.lo..it.hi).map(|s| load[s as usize]).max().unwrap_or(0))
            .collect();
        Instance {
            items,
            sections,
            unit,
            total,
            span,
        }
    }

    /// The capacity in units: canonical placements have tops that are multiples of `unit`, so a
    /// capacity between two multiples is as good as the lower one.
    pub fn units(&self, capacity: Bytes) -> u64 {
        capacity.0 / self.unit
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// From the first birth to the last death, in event time.
    pub fn time_span(&self) -> u64 {
        self.span
    }
}

/// A static order of the buffers, which breaks ties between buffers that can go to the same offset.
/// Letters after MiniMalloc: W = lifetime width, A = area, T = the largest section total spanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Heuristic {
    Wat,
    Taw,
    Twa,
    /// TWA with each buffer's section total scaled by a pseudo-random factor between 1 and 1.25
    /// drawn from the seed: the orders of the restarts. On instances with no room to spare the
    /// search is heavy-tailed (one order settles a perfect packing in a millisecond, the next
    /// thrashes for minutes), and many short runs under different orders beat a few long ones.
    Shuffled(u64),
}

impl Heuristic {
    /// Tried in turn with growing node budgets: on hard instances one order often finishes where
    /// the others thrash (MiniMalloc's round robin).
    pub const ALL: [Heuristic; 3] = [Heuristic::Twa, Heuristic::Taw, Heuristic::Wat];
}

/// The branching order: a rank per buffer, and for buffers identical to an earlier-ranked one (same
/// sections, size and alignment, not fixed) that one. Identical buffers are placed in rank order,
/// which removes their permutations.
#[derive(Clone, Debug)]
pub(crate) struct Ordering {
    pub heuristic: Heuristic,
    pub rank: Vec<u32>,
    pub twin_before: Vec<Option<u32>>,
}

impl Instance {
    /// Fixed buffers lead every order: they have no choice to make.
    pub fn ordering(&self, heuristic: Heuristic) -> Ordering {
        let items = &self.items;
        let mut order: Vec<usize> = (0..items.len()).collect();
        let key = |i: usize| self.sort_key(heuristic, i, self.total[i]);
        order.sort_by_key(|&i| key(i));
        let mut rank = vec![0u32; items.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r as u32;
        }
        let mut last: std::collections::HashMap<(u32, u32, u64, u64), u32> = Default::default();
        let mut twin_before = vec![None; items.len()];
        for i in order {
            let it = &items[i];
            if it.fixed.is_none() {
                twin_before[i] = last.insert((it.lo, it.hi, it.size, it.align), i as u32);
            }
        }
        Ordering {
            heuristic,
            rank,
            twin_before,
        }
    }

    /// The key buffer `i` sorts by (smallest first) under `heuristic`, given the largest section
    /// total it spans. Identical buffers get equal keys up to their index, so every order sorts
    /// twins alike.
    pub fn sort_key(&self, heuristic: Heuristic, i: usize, total: u64) -> impl Ord {
        let it = &self.items[i];
        let width = u128::from(it.len);
        let area = width * u128::from(it.size);
        let total = u128::from(total);
        let (a, b, c) = match heuristic {
            Heuristic::Wat => (width, area, total),
            Heuristic::Taw => (total, area, width),
            Heuristic::Twa => (total, width, area),
            Heuristic::Shuffled(seed) => {
                let noise = u128::from(splitmix(seed ^ (i as u64).wrapping_mul(0x9e37_79b9)) % 257);
                (total * (1024 + noise) / 1024, width, area)
            }
        };
        (it.fixed.is_none(), std::cmp::Reverse((a, b, c)), i)
    }
}

/// SplitMix64's finalizer: a well-mixed 64-bit hash of `x`.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::{Buffer, Interval};

    fn buf(start: u64, end: u64, size: u64) -> Buffer {
        Buffer::new("b", Interval::new(start, end).unwrap(), Bytes(size))
    }

    #[test]
    fn sections_and_units() {
        let p = Problem::new(vec![buf(0, 10, 512), buf(5, 20, 1024), buf(5, 20, 1024)]);
        let inst = Instance::new(&p);
        assert_eq!(inst.unit, 512);
        assert_eq!(inst.sections, 3);
        assert_eq!((inst.items[0].lo, inst.items[0].hi), (0, 2));
        assert_eq!((inst.items[1].lo, inst.items[1].hi), (1, 3));
        assert_eq!(inst.items[1].size, 2);
        assert_eq!(inst.units(Bytes(2047)), 3);
        // The two identical buffers are twins; the later-ranked one waits for the other.
        let ord = inst.ordering(Heuristic::Taw);
        assert_eq!(ord.twin_before[2], Some(1));
        assert_eq!(ord.twin_before[1], None);
    }
}
