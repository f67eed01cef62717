//! The max-load lower bound: no placement can use fewer bytes than are live at the busiest moment.

use super::problem::{Bytes, Problem};

/// The largest sum of sizes live at one moment, found by a sweep over lifetime endpoints.
///
/// Ends sort before starts at the same time because lifetimes are half-open.
pub fn max_load(problem: &Problem) -> Bytes {
    let mut events: Vec<(u64, bool, u64)> = Vec::with_capacity(problem.len() * 2);
    for b in &problem.buffers {
        events.push((b.lifetime.start, true, b.size.0));
        events.push((b.lifetime.end, false, b.size.0));
    }
    // (time, is_start): `false < true`, so at equal times the ends come first.
    events.sort_unstable_by_key(|&(t, is_start, _)| (t, is_start));
    let (mut live, mut best) = (0u64, 0u64);
    for (_, is_start, size) in events {
        if is_start {
            live += size;
            best = best.max(live);
        } else {
            live -= size;
        }
    }
    Bytes(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::problem::{Buffer, Interval};

    fn buf(start: u64, end: u64, size: u64) -> Buffer {
        Buffer::new("b", Interval::new(start, end).unwrap(), Bytes(size))
    }

    #[test]
    fn touching_lifetimes_do_not_add_up() {
        let p = Problem::new(vec![buf(0, 2, 4), buf(2, 4, 4)]);
        assert_eq!(max_load(&p), Bytes(4));
    }

    #[test]
    fn overlapping_lifetimes_add_up() {
        let p = Problem::new(vec![buf(0, 3, 4), buf(2, 4, 5), buf(3, 5, 1)]);
        assert_eq!(max_load(&p), Bytes(9));
    }

    #[test]
    fn empty_problem_has_zero_bound() {
        assert_eq!(max_load(&Problem::default()), Bytes(0));
    }
}
